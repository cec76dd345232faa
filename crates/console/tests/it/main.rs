//! The console crate's integration tests, one binary for all of them; each module is one area.

mod pages;
