//! Connecting to RabbitMQ, and waiting between attempts.

use std::time::Duration;

use lapin::{Connection, ConnectionProperties};

use crate::BrokerError;

/// How long a connection attempt may take before it counts as failed.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// Connects to `amqp_url` within [`CONNECT_TIMEOUT`].
pub async fn connect(amqp_url: &str) -> Result<Connection, BrokerError> {
    let properties = ConnectionProperties::default();
    match tokio::time::timeout(CONNECT_TIMEOUT, Connection::connect(amqp_url, properties)).await {
        Ok(Ok(connection)) => Ok(connection),
        Ok(Err(error)) => Err(BrokerError::Amqp(error)),
        Err(_) => Err(BrokerError::Timeout("connect")),
    }
}

/// How long one broker operation (opening a channel, declaring the topology, a publish,
/// an ack) may take before the session counts as lost.
pub const OPERATION_TIMEOUT: Duration = Duration::from_secs(10);

/// Runs one broker operation within [`OPERATION_TIMEOUT`]. A broker that accepted the
/// connection but never answers (one still recovering its queues after a restart, say)
/// must end the session so it is opened again, not hold it forever.
pub async fn within<T>(
    what: &'static str,
    operation: impl std::future::Future<Output = Result<T, lapin::Error>>,
) -> Result<T, BrokerError> {
    match tokio::time::timeout(OPERATION_TIMEOUT, operation).await {
        Ok(result) => Ok(result?),
        Err(_) => Err(BrokerError::Timeout(what)),
    }
}

/// Closes `connection` politely, but gives up after a moment: a connection the broker
/// already dropped may never answer.
pub async fn close(connection: &Connection, reason: &str) {
    let closing = connection.close(200, reason.into());
    let _ = tokio::time::timeout(Duration::from_secs(2), closing).await;
}

/// Exponential backoff with full jitter: attempt n waits a random time up to
/// `base * 2^n`, capped, so many clients reconnecting after one broker restart spread out.
#[derive(Debug, Clone)]
pub struct Backoff {
    base: Duration,
    max: Duration,
    attempt: u32,
}

impl Backoff {
    pub fn new(base: Duration, max: Duration) -> Self {
        Self {
            base,
            max,
            attempt: 0,
        }
    }

    /// The wait before the next attempt.
    pub fn next_delay(&mut self) -> Duration {
        let delay = Self::delay_for(self.base, self.max, self.attempt);
        self.attempt = self.attempt.saturating_add(1);
        delay
    }

    pub fn reset(&mut self) {
        self.attempt = 0;
    }

    /// The wait before retry number `attempt` (0-based), without state.
    pub fn delay_for(base: Duration, max: Duration, attempt: u32) -> Duration {
        let ceiling = base
            .saturating_mul(2u32.saturating_pow(attempt.min(16)))
            .min(max);
        // Never less than a tenth of the base, so a retry is not immediate.
        let floor = base / 10;
        floor + ceiling.saturating_sub(floor).mul_f64(fastrand::f64())
    }
}

impl Default for Backoff {
    fn default() -> Self {
        Self::new(Duration::from_millis(200), Duration::from_secs(10))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delays_grow_stay_within_the_cap_and_vary() {
        let (base, max) = (Duration::from_millis(100), Duration::from_secs(2));
        for attempt in 0..20 {
            let delay = Backoff::delay_for(base, max, attempt);
            assert!(
                delay >= base / 10 && delay <= max,
                "attempt {attempt}: {delay:?}"
            );
        }
        let late: Vec<_> = (0..50).map(|_| Backoff::delay_for(base, max, 10)).collect();
        assert!(late.iter().any(|d| *d > Duration::from_millis(400)));
        assert!(
            late.windows(2).any(|w| w[0] != w[1]),
            "jitter varies the delay"
        );
    }
}
