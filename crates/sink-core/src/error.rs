//! The one error enum of this crate.

/// Why a value was rejected by sink-core's validators.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CoreError {
    /// A basin name breaks S2's naming rules.
    #[error("invalid basin name {name:?}: {reason}")]
    InvalidBasin { name: String, reason: &'static str },
    /// A stream name breaks S2's naming rules.
    #[error("invalid stream name {name:?}: {reason}")]
    InvalidStream { name: String, reason: &'static str },
    /// A message is not a JSON object or has a field of the wrong type.
    #[error("invalid message: field `{field}`: {reason}")]
    InvalidEnvelope { field: String, reason: String },
    /// A configured number is out of its allowed range.
    #[error("invalid setting `{key}`: {reason}")]
    InvalidSetting { key: &'static str, reason: String },
}
