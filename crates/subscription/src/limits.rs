//! Limits on the public door. An address that keeps presenting unknown tokens is guessing:
//! after `misses` misses within `miss_window` it is refused (429) for `block_for`, before any
//! lookup. A token fetched more than `fetches_per_token` times within `token_window` has
//! leaked or is polled by a broken client; it is refused until the window moves on. Apps poll
//! every few hours, so neither limit touches a real user. Counters live in the process (each
//! `sub` instance limits on its own), in fixed windows, which is enough to turn a scan into a
//! trickle.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// The limits' settings.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LimitSettings {
    pub misses: u32,
    pub miss_window: Duration,
    pub block_for: Duration,
    pub fetches_per_token: u32,
    pub token_window: Duration,
}

impl Default for LimitSettings {
    fn default() -> Self {
        Self {
            misses: 20,
            miss_window: Duration::from_secs(600),
            block_for: Duration::from_secs(600),
            fetches_per_token: 60,
            token_window: Duration::from_secs(3600),
        }
    }
}

impl LimitSettings {
    /// No limit that a benchmark would hit.
    pub fn unlimited() -> Self {
        Self {
            misses: u32::MAX,
            fetches_per_token: u32::MAX,
            ..Self::default()
        }
    }
}

/// A count within a window that started at `since`.
#[derive(Debug, Clone, Copy)]
struct Window {
    since: Instant,
    count: u32,
}

impl Window {
    /// Counts one more within `length`; returns the count.
    fn hit(&mut self, now: Instant, length: Duration) -> u32 {
        if now.duration_since(self.since) >= length {
            *self = Window {
                since: now,
                count: 0,
            };
        }
        self.count = self.count.saturating_add(1);
        self.count
    }

    fn remaining(&self, now: Instant, length: Duration) -> Duration {
        length.saturating_sub(now.duration_since(self.since))
    }
}

/// Entries kept before old ones are swept.
const SWEEP_AT: usize = 100_000;

/// The limits' state.
pub struct Limits {
    settings: LimitSettings,
    misses: Mutex<HashMap<IpAddr, (Window, Option<Instant>)>>,
    fetches: Mutex<HashMap<String, Window>>,
}

impl Limits {
    pub fn new(settings: LimitSettings) -> Self {
        Self {
            settings,
            misses: Mutex::default(),
            fetches: Mutex::default(),
        }
    }

    /// `Some(retry_after)` while `address` is blocked for guessing.
    pub fn blocked(&self, address: IpAddr) -> Option<Duration> {
        let now = Instant::now();
        let misses = self.misses.lock().unwrap_or_else(|e| e.into_inner());
        let until = misses.get(&address)?.1?;
        (until > now).then(|| until - now)
    }

    /// Counts a miss from `address`, blocking it when it has too many.
    pub fn miss(&self, address: IpAddr) {
        let now = Instant::now();
        let s = self.settings;
        let mut misses = self.misses.lock().unwrap_or_else(|e| e.into_inner());
        if misses.len() > SWEEP_AT {
            misses.retain(|_, (w, until)| {
                w.remaining(now, s.miss_window) > Duration::ZERO || until.is_some_and(|u| u > now)
            });
        }
        let (window, until) = misses.entry(address).or_insert((
            Window {
                since: now,
                count: 0,
            },
            None,
        ));
        if window.hit(now, s.miss_window) >= s.misses {
            *until = Some(now + s.block_for);
            tracing::warn!(%address, "address blocked for guessing subscription tokens");
        }
    }

    /// Counts a fetch of `token` (`key`: its short tag); `Some(retry_after)` if over the limit.
    pub fn fetch(&self, key: &str) -> Option<Duration> {
        let now = Instant::now();
        let s = self.settings;
        let mut fetches = self.fetches.lock().unwrap_or_else(|e| e.into_inner());
        if fetches.len() > SWEEP_AT {
            fetches.retain(|_, w| w.remaining(now, s.token_window) > Duration::ZERO);
        }
        let window = fetches.entry(key.to_owned()).or_insert(Window {
            since: now,
            count: 0,
        });
        (window.hit(now, s.token_window) > s.fetches_per_token)
            .then(|| window.remaining(now, s.token_window))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn guessing_blocks_the_address_and_heavy_polling_the_token() {
        let limits = Limits::new(LimitSettings {
            misses: 3,
            fetches_per_token: 2,
            ..LimitSettings::default()
        });
        let address: IpAddr = [127, 0, 0, 9].into();
        limits.miss(address);
        limits.miss(address);
        assert_eq!(limits.blocked(address), None);
        limits.miss(address);
        assert!(limits.blocked(address).is_some());
        assert_eq!(limits.blocked([127, 0, 0, 8].into()), None);
        assert_eq!(limits.fetch("t"), None);
        assert_eq!(limits.fetch("t"), None);
        assert!(limits.fetch("t").is_some_and(|d| d > Duration::ZERO));
        assert_eq!(limits.fetch("u"), None);
    }
}
