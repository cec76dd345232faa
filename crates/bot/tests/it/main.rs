//! The bot crate's integration tests, one binary for all of them (one link instead of one per file); each module is one area.

mod access;
mod common;
mod conversation;
mod limits;
mod notifications;
mod replicas;
mod subscription;
