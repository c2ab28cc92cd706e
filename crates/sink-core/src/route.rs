//! Where a message goes: one S2 stream in one basin.

use serde::{Deserialize, Serialize};

use crate::{validate_basin, validate_stream, CoreError};

/// A (basin, stream) destination, from the sink's config or a routing function.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Route {
    pub basin: String,
    pub stream: String,
}

impl Route {
    /// Builds a route after checking both names against S2's rules.
    pub fn new(basin: impl Into<String>, stream: impl Into<String>) -> Result<Route, CoreError> {
        let route = Route {
            basin: basin.into(),
            stream: stream.into(),
        };
        validate_basin(&route.basin)?;
        validate_stream(&route.stream)?;
        Ok(route)
    }
}

impl std::fmt::Display for Route {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.basin, self.stream)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn validates_both_names() {
        assert_eq!(
            Route::new("test-basin-01", "orders").unwrap().to_string(),
            "test-basin-01/orders"
        );
        assert!(Route::new("bad", "orders").is_err());
        assert!(Route::new("test-basin-01", "").is_err());
    }
}
