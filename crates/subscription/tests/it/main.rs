//! The subscription crate's integration tests.
