//! Placeholder: built by a later step.
