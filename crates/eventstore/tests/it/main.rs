//! The eventstore crate's integration tests, one binary for all of them (one link instead of one per file); each module is one area.

mod append_and_read;
mod checkpoints;
mod integrity;
mod jsonb_text;
mod ledger;
mod subscriptions;
mod user_access;
