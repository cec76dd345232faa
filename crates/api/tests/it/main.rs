//! The api crate's integration tests, one binary for all of them (one link instead of one per file); each module is one area.

mod document;
mod http;
