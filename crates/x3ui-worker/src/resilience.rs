//! A circuit breaker per panel and retries with exponential backoff and full jitter.
//! Small enough to read in one go, so no crate for it.

use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Tuning for one panel's breaker and retries.
#[derive(Debug, Clone)]
pub struct ResiliencePolicy {
    /// Attempts per operation, the first included.
    pub max_attempts: u32,
    pub backoff_base: Duration,
    pub backoff_cap: Duration,
    /// Consecutive failed panel calls (each retry is a call) that open the breaker.
    pub failure_threshold: u32,
    /// How long an open breaker refuses calls before letting one probe through.
    pub open_for: Duration,
}

impl Default for ResiliencePolicy {
    fn default() -> Self {
        Self {
            max_attempts: 4,
            backoff_base: Duration::from_millis(200),
            backoff_cap: Duration::from_secs(5),
            // Well above the runs of failures a flaky panel gives by chance (one
            // operation alone makes up to `max_attempts` calls; at a 20% error rate a
            // run of 12 comes once in ~4e8 calls), well below what a panel that is down
            // gives within a second. At 5, one unlucky operation and one more 500 opened
            // it for 30 s, and every failed half-open probe (20%) for 30 s more.
            failure_threshold: 12,
            open_for: Duration::from_secs(30),
        }
    }
}

impl ResiliencePolicy {
    /// Pause before retry number `retry` (0-based): a random point in
    /// `[0, min(cap, base * 2^retry)]`, so workers that failed together do not come back
    /// together.
    pub fn backoff(&self, retry: u32) -> Duration {
        let ceiling = self
            .backoff_base
            .saturating_mul(1_u32.checked_shl(retry).unwrap_or(u32::MAX))
            .min(self.backoff_cap);
        ceiling.mul_f64(fastrand::f64())
    }
}

/// What `/v1/locations` shows about a panel's breaker.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum BreakerState {
    Closed,
    Open,
    HalfOpen,
}

#[derive(Debug)]
enum State {
    Closed {
        failures: u32,
    },
    Open {
        until: Instant,
    },
    /// One probe call is out; everyone else waits for its outcome.
    HalfOpen {
        probing: bool,
    },
}

#[derive(Debug)]
pub struct CircuitBreaker {
    threshold: u32,
    open_for: Duration,
    state: Mutex<State>,
}

/// Leave to call the panel. Dropped without an outcome (the call was cancelled), a
/// half-open probe hands its turn back.
#[derive(Debug)]
pub(crate) struct Permit<'a> {
    breaker: &'a CircuitBreaker,
    probe: bool,
    settled: bool,
}

impl CircuitBreaker {
    pub fn new(threshold: u32, open_for: Duration) -> Self {
        Self {
            threshold: threshold.max(1),
            open_for,
            state: Mutex::new(State::Closed { failures: 0 }),
        }
    }

    pub fn state(&self) -> BreakerState {
        match *self.lock() {
            State::Closed { .. } => BreakerState::Closed,
            State::Open { until } if Instant::now() < until => BreakerState::Open,
            State::Open { .. } | State::HalfOpen { .. } => BreakerState::HalfOpen,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        // A panic while holding this lock cannot leave the state half-written.
        self.state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// `Err(wait)` while open, or while another call is the half-open probe.
    pub(crate) fn acquire(&self) -> Result<Permit<'_>, Duration> {
        let mut state = self.lock();
        let probe = match *state {
            State::Closed { .. } => false,
            State::Open { until } => {
                let now = Instant::now();
                if now < until {
                    return Err(until - now);
                }
                *state = State::HalfOpen { probing: true };
                true
            }
            State::HalfOpen { probing: true } => return Err(self.open_for / 10),
            State::HalfOpen { probing: false } => {
                *state = State::HalfOpen { probing: true };
                true
            }
        };
        Ok(Permit {
            breaker: self,
            probe,
            settled: false,
        })
    }
}

impl Permit<'_> {
    pub(crate) fn success(mut self) {
        self.settled = true;
        *self.breaker.lock() = State::Closed { failures: 0 };
    }

    pub(crate) fn failure(mut self) {
        self.settled = true;
        let breaker = self.breaker;
        let mut state = breaker.lock();
        let open = match *state {
            State::Closed { failures } if failures + 1 < breaker.threshold => {
                *state = State::Closed {
                    failures: failures + 1,
                };
                false
            }
            _ => true,
        };
        if open {
            *state = State::Open {
                until: Instant::now() + breaker.open_for,
            };
        }
    }
}

impl Drop for Permit<'_> {
    fn drop(&mut self) {
        if self.probe && !self.settled {
            let mut state = self.breaker.lock();
            if matches!(*state, State::HalfOpen { probing: true }) {
                *state = State::HalfOpen { probing: false };
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn opens_after_threshold_then_lets_one_probe_through() {
        let breaker = CircuitBreaker::new(2, Duration::ZERO);
        breaker.acquire().expect("closed").failure();
        assert_eq!(breaker.state(), BreakerState::Closed);
        breaker.acquire().expect("closed").failure();
        // open_for is zero, so the breaker is due for a probe at once.
        let probe = breaker.acquire().expect("probe allowed");
        assert!(breaker.acquire().is_err(), "only one probe at a time");
        probe.success();
        assert_eq!(breaker.state(), BreakerState::Closed);
    }

    #[test]
    fn an_open_breaker_refuses_and_a_cancelled_probe_hands_back_its_turn() {
        let breaker = CircuitBreaker::new(1, Duration::from_secs(60));
        breaker.acquire().expect("closed").failure();
        let wait = breaker.acquire().expect_err("open");
        assert!(wait > Duration::from_secs(50));
        assert_eq!(breaker.state(), BreakerState::Open);

        let zero = CircuitBreaker::new(1, Duration::ZERO);
        zero.acquire().expect("closed").failure();
        drop(zero.acquire().expect("probe"));
        zero.acquire()
            .expect("the probe's turn came back")
            .failure();
        assert_ne!(zero.state(), BreakerState::Closed);
    }

    #[test]
    fn a_panel_failing_a_fifth_of_its_calls_does_not_open_the_default_breaker() {
        let policy = ResiliencePolicy::default();
        let breaker = CircuitBreaker::new(policy.failure_threshold, policy.open_for);
        let mut dice = fastrand::Rng::with_seed(7);
        for call in 0..200_000 {
            let permit = breaker
                .acquire()
                .unwrap_or_else(|_| panic!("opened by chance at call {call}"));
            if dice.f64() < 0.2 {
                permit.failure();
            } else {
                permit.success();
            }
        }
        // A panel that is down opens it within a few operations' retries.
        breaker.acquire().expect("closed").success();
        for _ in 0..policy.failure_threshold {
            breaker.acquire().expect("closed").failure();
        }
        assert_eq!(breaker.state(), BreakerState::Open);
        assert!(policy.failure_threshold <= 4 * policy.max_attempts);
    }

    #[test]
    fn backoff_grows_but_stays_under_the_cap() {
        let policy = ResiliencePolicy {
            backoff_base: Duration::from_millis(100),
            backoff_cap: Duration::from_millis(350),
            ..ResiliencePolicy::default()
        };
        for retry in 0..40 {
            let pause = policy.backoff(retry);
            let ceiling = Duration::from_millis(100 * (1 << retry.min(10))).min(policy.backoff_cap);
            assert!(pause <= ceiling, "retry {retry}: {pause:?} > {ceiling:?}");
        }
    }
}
