//! The key lifecycle as pure functions: the functional core of keyledger.
//!
//! Every decision about a VPN key — minting a client UUID, rotating it, revoking, renewing,
//! expiring, acknowledging what a panel did — is taken here by [`decide`], from the key's
//! current [`KeyState`] and a [`KeyCommand`], and returned as [`KeyEvent`]s that the event
//! store records. [`evolve`] folds recorded events back into state. Nothing in this crate
//! performs I/O, reads the clock or draws random numbers: time and fresh UUIDs arrive inside
//! commands, so every outcome is reproducible from the log alone. The `vless://` share link
//! is rendered here too, because it is a deterministic function of key state and inbound
//! settings.
//!
//! The same holds for a user's subscription ([`decide_subscription`]) and a user's access
//! ([`decide_user_access`]: blocked by an administrator or not), each a stream of its own.

mod access;
mod aggregate;
mod command;
mod decide;
mod desired;
mod error;
mod event;
mod foreign_text;
mod identity;
#[cfg(test)]
mod lifecycle_tests;
mod link;
mod secret;
mod state;
mod subscription;

pub use access::{
    BLOCK_REVOCATION_PREFIX, BlockUser, UnblockUser, UserAccessChanged, UserAccessCommand,
    UserAccessEvent, UserAccessId, UserAccessState, block_revocation_reason, decide_user_access,
    evolve_user_access,
};
pub use aggregate::{Aggregate, Key, Subscription, UserAccess};
pub use command::*;
pub use decide::{MAX_REASON_CHARS, decide, evolve, replay};
pub use desired::DesiredClient;
pub use error::DomainError;
pub use event::*;
pub use foreign_text::{MAX_FOREIGN_TEXT_CHARS, bounded_json, bounded_text};
pub use identity::*;
pub use link::{InboundLinkSettings, LinkError, encode_uri_component, render_vless_link};
pub use secret::Secret;
pub use state::{FailureNote, KeyDetails, KeyState, KeyStatus, Phase};
pub use subscription::{
    MIN_SUBSCRIPTION_SECRET_BYTES, SubscriptionCommand, SubscriptionEvent, SubscriptionId,
    SubscriptionIssued, SubscriptionLinkRotated, SubscriptionState, SubscriptionUrlError,
    SubscriptionUrls, decide_subscription, evolve_subscription, is_token_shaped,
    subscription_token,
};
