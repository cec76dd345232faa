//! [`PanelStatus`]: the narrow view of the 3x-ui panels this API needs, injected by the
//! binary.
//!
//! The API never talks to a panel and does not depend on the panel client. Two routes
//! want to know about panels: `/readyz` probes every location's panel, and
//! `/v1/locations` shows each location's health as this process has seen it (breaker,
//! last answer, last reconcile pass). The binary, which owns the panels the worker uses,
//! implements this trait over them and hands it to [`ApiConfig`](crate::ApiConfig) as a
//! trait object, as axum's dependency-injection example does; a process without a
//! worker passes `None`, and tests pass a fake.

use std::future::Future;
use std::pin::Pin;
use std::time::Duration;

use time::OffsetDateTime;

/// A boxed, sendable future: what an object-safe async trait method returns.
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// The panels of this process, as the API sees them.
pub trait PanelStatus: Send + Sync + 'static {
    /// Probes every location's panel at once, each bounded by `timeout`, so the whole
    /// call takes about `timeout` at most. One answer per location, in any order.
    fn probe(&self, timeout: Duration) -> BoxFuture<'_, Vec<PanelProbe>>;

    /// `location`'s panel health from what its calls and reconcile passes left behind;
    /// cheap (no panel call). `None` when this process does not serve that location.
    fn health(&self, location: &str) -> Option<PanelHealth>;
}

/// One location's answer to [`PanelStatus::probe`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PanelProbe {
    pub location: String,
    /// How long the panel took to answer, or why it did not in time. The text is shown
    /// to operators, so it must name the location and the call, never a password.
    pub outcome: Result<Duration, String>,
}

/// A panel client's circuit breaker, as `/v1/locations` names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Breaker {
    /// Calls go through.
    Closed,
    /// Calls are refused without trying: the panel failed too often.
    Open,
    /// One trial call decides whether to close again.
    HalfOpen,
}

impl Breaker {
    /// `closed`, `open` or `half_open`.
    pub fn as_str(self) -> &'static str {
        match self {
            Breaker::Closed => "closed",
            Breaker::Open => "open",
            Breaker::HalfOpen => "half_open",
        }
    }
}

/// One location's panel health, as this process has seen it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PanelHealth {
    pub breaker: Breaker,
    /// When the panel last answered a call successfully.
    pub last_success_at: Option<OffsetDateTime>,
    /// When the newest completed reconcile pass over this location ended.
    pub last_reconcile_at: Option<OffsetDateTime>,
    /// Drift that pass found; `None` before the first completed pass.
    pub drift_found_last_pass: Option<usize>,
    /// Why the newest pass failed, if it did.
    pub last_reconcile_error: Option<String>,
}
