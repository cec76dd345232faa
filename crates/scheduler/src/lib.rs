//! The scheduler role: records `key.expired` once a key's time has passed.
//!
//! It follows the log by position (gap-free, see the event store) and folds each key's
//! events with the domain's own `evolve`, so it judges expiry exactly as `decide` will. Expiring is an ordinary domain command with a command id derived from
//! the key and its expiry time, so several schedulers, or one restarted, expire a key once.

use std::collections::HashMap;
use std::time::Duration;

use domain::{ExpireKey, KeyCommand, KeyId, KeyState, evolve};
use eventstore::{
    Actor, ActorKind, AppendOutcome, EventMetadata, ExecuteError, KeyLedger, StoreError,
};
use time::OffsetDateTime;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

/// Namespace of expiry command ids (UUID v5 of key id and expiry time).
const EXPIRY_COMMAND_NAMESPACE: Uuid = Uuid::from_u128(0x6b65_796c_6564_6765_8000_0000_0000_0002);
const PAGE: i64 = 1000;

/// Follows the log and expires keys whose time has passed.
pub struct Scheduler {
    ledger: KeyLedger,
    tick: Duration,
    position: i64,
    keys: HashMap<Uuid, KeyState>,
}

impl Scheduler {
    pub fn new(ledger: KeyLedger, tick: Duration) -> Self {
        Self {
            ledger,
            tick,
            position: 0,
            keys: HashMap::new(),
        }
    }

    /// Runs until `stop` is cancelled.
    pub async fn run(mut self, stop: CancellationToken) {
        tracing::info!(tick_ms = self.tick.as_millis() as u64, "scheduler started");
        loop {
            if let Err(error) = self.pass().await {
                tracing::warn!(%error, "scheduler pass failed; retrying next tick");
            }
            tokio::select! {
                _ = stop.cancelled() => break,
                _ = tokio::time::sleep(self.tick) => {}
            }
        }
        tracing::info!("scheduler stopped");
    }

    /// Catches up with the log, then expires every key that is due.
    pub async fn pass(&mut self) -> Result<usize, StoreError> {
        self.catch_up().await?;
        let now = OffsetDateTime::now_utc();
        let due: Vec<(Uuid, OffsetDateTime)> = self
            .keys
            .iter()
            .filter(|(_, state)| state.phase.is_live())
            .filter_map(|(id, state)| {
                let expires_at = state.details.as_ref()?.expires_at?;
                (expires_at <= now).then_some((*id, expires_at))
            })
            .collect();
        let mut expired = 0;
        for (key_id, expires_at) in due {
            expired += usize::from(self.expire(key_id, expires_at, now).await);
        }
        Ok(expired)
    }

    async fn catch_up(&mut self) -> Result<(), StoreError> {
        loop {
            let page = self.ledger.store().read_all(self.position, PAGE).await?;
            let Some(last) = page.last() else {
                return Ok(());
            };
            self.position = last.position;
            for recorded in &page {
                // Subscriptions' and users' access streams share the log; nothing in them
                // expires.
                let kind = domain::EventType::parse(&recorded.event_type);
                if kind.is_some_and(|kind| kind.stream_kind() != domain::StreamKind::Key) {
                    continue;
                }
                let Ok(event) = recorded.key_event() else {
                    tracing::warn!(position = recorded.position, key_id = %recorded.stream_id, "undecodable event skipped by scheduler");
                    continue;
                };
                let state = self.keys.entry(recorded.stream_id).or_default();
                *state = evolve(std::mem::take(state), &event);
            }
        }
    }

    async fn expire(&self, key_id: Uuid, expires_at: OffsetDateTime, now: OffsetDateTime) -> bool {
        let name = format!("{key_id}/{}", expires_at.unix_timestamp_nanos());
        let command_id = Uuid::new_v5(&EXPIRY_COMMAND_NAMESPACE, name.as_bytes());
        let metadata =
            EventMetadata::for_command(command_id, Actor::new(ActorKind::Scheduler, "scheduler"));
        let command = KeyCommand::Expire(ExpireKey { now });
        match self
            .ledger
            .execute(KeyId::from_uuid(key_id), &command, &metadata)
            .await
        {
            Ok(outcome) => {
                // Counted only when written now: another scheduler (or an earlier pass whose
                // event readers cannot see yet) may have recorded this same command.
                let recorded = matches!(outcome.append, Some(AppendOutcome::Appended(_)));
                if recorded {
                    tracing::info!(%key_id, %expires_at, "key expired");
                }
                recorded
            }
            // Renewed meanwhile: the log will tell us the new time.
            Err(ExecuteError::Refused(reason)) => {
                tracing::debug!(%key_id, %reason, "expiry not recorded");
                false
            }
            Err(error) => {
                tracing::warn!(%key_id, %error, "could not record expiry");
                false
            }
        }
    }
}
