//! Waiting on a condition with a deadline: the one way tests synchronise with the
//! pipeline. Nothing in a test sleeps a fixed time hoping work is done; it polls a
//! condition that could fail and names it when the deadline passes.

use std::future::Future;
use std::time::{Duration, Instant};

/// How long a test waits for the pipeline unless it says otherwise: long enough for a
/// loaded CI machine, short enough that a hung test fails on its own.
pub const DEADLINE: Duration = Duration::from_secs(30);

/// How often a condition is checked.
const POLL: Duration = Duration::from_millis(20);

/// Polls `check` until it yields `Some`, returning it, or panics naming `what` after
/// `deadline`.
pub async fn eventually<T, F, Fut>(what: &str, deadline: Duration, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let until = Instant::now() + deadline;
    loop {
        if let Some(value) = check().await {
            return value;
        }
        assert!(
            Instant::now() < until,
            "timed out after {deadline:?} waiting for {what}"
        );
        tokio::time::sleep(POLL).await;
    }
}

/// Polls `condition` until it holds, or panics naming `what` after `deadline`.
pub async fn wait_until<F, Fut>(what: &str, deadline: Duration, mut condition: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let condition = &mut condition;
    eventually(what, deadline, || {
        let holds = condition();
        async move { holds.await.then_some(()) }
    })
    .await;
}
