//! Token → (subscription, generation): the index every fetch goes through.
//!
//! Tokens are derived (HMAC of the subscription id and generation with the secret), never
//! stored, so the lookup runs the derivation forwards: for every row of
//! `subscription_views` and every generation up to its current one, the token is computed
//! and kept in a map in memory. Older generations stay in the map because their URL must
//! still answer (one "link replaced" placeholder) rather than 404.
//!
//! Why in memory rather than a table of token hashes: the table would be a second read model
//! to project, rebuild and verify, written by a role (the projector) that otherwise never
//! needs the secret; the map is rebuilt from the one view in milliseconds (an HMAC is about a
//! microsecond, so 100 000 users with a few generations each cost a fraction of a second),
//! and it costs the request path nothing. It is refreshed when a token is not found — a
//! subscription issued since the last refresh — but at most once per
//! [`MIN_REFRESH_INTERVAL`], so a flood of made-up tokens cannot turn into a flood of full
//! reads (the per-address limits stop it sooner). Only rows not seen before are hashed on a
//! refresh.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use domain::{SubscriptionId, SubscriptionUrls};
use tokio::sync::{Mutex, RwLock};
use uuid::Uuid;

/// The least time between two reads of `subscription_views` for misses.
pub const MIN_REFRESH_INTERVAL: Duration = Duration::from_secs(1);

/// What a token names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Target {
    pub id: SubscriptionId,
    pub generation: u32,
}

#[derive(Default)]
struct Map {
    by_token: HashMap<String, Target>,
    /// Generations already hashed per subscription.
    known: HashMap<Uuid, u32>,
}

/// The in-memory token index.
pub struct TokenIndex {
    urls: SubscriptionUrls,
    map: RwLock<Map>,
    /// When the view was last read; held while reading so misses wait for one read.
    refreshed: Mutex<Option<Instant>>,
}

impl TokenIndex {
    pub fn new(urls: SubscriptionUrls) -> Self {
        Self {
            urls,
            map: RwLock::new(Map::default()),
            refreshed: Mutex::new(None),
        }
    }

    /// What `token` names, reading the view again on a miss (at most once a second).
    /// `Err` when the view cannot be read: the caller cannot tell a miss from a hit then.
    pub async fn lookup(
        &self,
        pool: &sqlx::PgPool,
        token: &str,
    ) -> Result<Option<Target>, sqlx::Error> {
        if let Some(target) = self.map.read().await.by_token.get(token) {
            return Ok(Some(*target));
        }
        let mut refreshed = self.refreshed.lock().await;
        // Someone else may have refreshed while this one waited.
        if let Some(target) = self.map.read().await.by_token.get(token) {
            return Ok(Some(*target));
        }
        if refreshed.is_some_and(|at| at.elapsed() < MIN_REFRESH_INTERVAL) {
            return Ok(None);
        }
        self.refresh(pool).await?;
        *refreshed = Some(Instant::now());
        Ok(self.map.read().await.by_token.get(token).copied())
    }

    /// Reads every subscription's generation and hashes the ones not seen yet.
    async fn refresh(&self, pool: &sqlx::PgPool) -> Result<(), sqlx::Error> {
        let rows: Vec<(Uuid, i32)> =
            sqlx::query_as("SELECT subscription_id, generation FROM subscription_views")
                .fetch_all(pool)
                .await?;
        let known = self.map.read().await.known.clone();
        let mut fresh = Vec::new();
        for (id, generation) in rows {
            let generation = u32::try_from(generation).unwrap_or(0);
            let from = known.get(&id).copied().unwrap_or(0) + 1;
            for g in from..=generation {
                let sid = SubscriptionId::from_uuid(id);
                fresh.push((
                    self.urls.token(sid, g),
                    Target {
                        id: sid,
                        generation: g,
                    },
                ));
            }
            if generation >= from {
                fresh.push((
                    String::new(),
                    Target {
                        id: SubscriptionId::from_uuid(id),
                        generation,
                    },
                ));
            }
        }
        let mut map = self.map.write().await;
        for (token, target) in fresh {
            if token.is_empty() {
                map.known.insert(target.id.as_uuid(), target.generation);
            } else {
                map.by_token.insert(token, target);
            }
        }
        Ok(())
    }
}
