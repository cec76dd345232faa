//! Read models kept from the log: the key views of docs/http-api.md and the users'
//! subscription views ([`subscription_view`]).
//!
//! A view is a pure function of its key's events: [`view_of`] folds them with the domain's
//! own `evolve`, so a view always says what a replay says. The live projector
//! ([`KeyViewProjector`], a consumer of `keyledger.projector`) recomputes a key's view from
//! the log whenever one of its events arrives, in the consumer runtime's transaction, so
//! the view and the consumer's progress commit together. [`rebuild`] recomputes every view
//! from position 0 into a fresh table and swaps it in; [`verify_views`] compares the
//! stored views with a replay, for auditors.

mod projector;
mod rebuild;
pub mod subscription_view;
mod view;

pub use projector::{KeyViewProjector, run_projector};
pub use rebuild::{RebuildReport, rebuild};
pub use subscription_view::{
    SubscriptionView, SubscriptionViewReport, is_subscription_event, load_subscription_view,
    rebuild_subscription_views, subscription_view_of, verify_subscription_views,
};
pub use view::{
    KeyView, ViewDifference, ViewError, ViewReport, is_key_event, load_view, user_views,
    verify_views, view_of,
};
