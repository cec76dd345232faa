//! The test kit: what every crate's integration tests share, so tests read alike and
//! stand on the real services.
//!
//! Each test gets its own PostgreSQL database ([`TestDatabase`], cloned from a migrated
//! template) and its own RabbitMQ vhost ([`TestBroker`]), so tests run in parallel against
//! the real servers and clean up after themselves. [`eventually`] and [`wait_until`] are
//! the one way to wait for the pipeline; [`init_logs`] and the metadata builders remove
//! the rest of the boilerplate. This crate is a dev-dependency only: no production crate
//! may depend on it.

mod broker;
mod database;
mod logs;
mod metadata;
mod tamper;
mod wait;

pub use broker::{TestBroker, VHOST_PREFIX, broker_server_url};
pub use database::{DATABASE_PREFIX, TEMPLATE_PREFIX, TestDatabase, database_server_url};
pub use logs::init_logs;
pub use metadata::{command_metadata, key_request, metadata};
pub use tamper::{NOTARY_SEED, notary_key, rewrite_history};
pub use wait::{DEADLINE, eventually, wait_until};
