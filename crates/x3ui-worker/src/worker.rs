//! The `worker` role: consumes `keyledger.x3ui-worker`, makes each key's panel hold what
//! the key's events say, and records the panel's acknowledgement in the log.
//!
//! A message is only a trigger. The worker loads the key from the log and applies its
//! newest desired state, so a late or duplicated message never brings back an old one.
//! Acknowledgements carry a command id derived from the key and the version of the event
//! they answer, so a redelivery or a crash between the append and the broker's ack never
//! records one twice; one that no longer matches the key (it moved on) is dropped by the
//! domain, and the newer event's own delivery applies the newer state.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use broker::{Backoff, Consumer, ConsumerConfig, EventHandler, HandlerError, Queue};
use domain::{
    ConfirmProvisioned, ConfirmRevoked, ConfirmRotated, DomainError, EventType, KeyCommand,
    KeyDetails, KeyEvent, KeyId, KeyState, Phase, RecordProvisioningFailure,
};
use eventstore::{
    Actor, ActorKind, EventMetadata, EventStore, ExecuteError, KeyLedger, RecordedEvent,
};
use sqlx::PgConnection;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use crate::error::PanelError;
use crate::panels::{PanelLocation, Panels, SharedPanelError};

/// Namespace of the worker's deterministic command ids.
const COMMAND_NAMESPACE: Uuid = Uuid::from_u128(0x6b65_796c_6564_6765_8000_0000_0000_0003);

/// Event types that change what a panel should hold. The runtime also hands the worker
/// the other events of a stream (acknowledgements, failures, drift) when it fills a gap;
/// those change nothing on the panel.
const TRIGGERS: [&str; 6] = [
    EventType::Requested.as_str(),
    EventType::QuotaChanged.as_str(),
    EventType::RotationRequested.as_str(),
    EventType::RevocationRequested.as_str(),
    EventType::Expired.as_str(),
    EventType::Renewed.as_str(),
];

/// Event types that start a phase the worker acknowledges (or, for a renewal of an
/// expired key, restart provisioning).
const PHASE_STARTS: [&str; 4] = [
    EventType::Requested.as_str(),
    EventType::RotationRequested.as_str(),
    EventType::RevocationRequested.as_str(),
    EventType::Renewed.as_str(),
];

/// Why the worker could not bring a key's panel in line.
#[derive(Debug, thiserror::Error)]
pub enum SyncError {
    #[error("key {key_id}: reading the log: {source}")]
    Store {
        key_id: KeyId,
        #[source]
        source: eventstore::StoreError,
    },
    #[error("key {key_id}: the log holds no request for it")]
    NoSuchKey { key_id: KeyId },
    #[error("key {key_id}: location {location:?} is not served by this worker")]
    UnknownLocation { key_id: KeyId, location: String },
    #[error("key {key_id}: {source}")]
    Panel {
        key_id: KeyId,
        #[source]
        source: SharedPanelError,
    },
    #[error("key {key_id}: recording {what}: {source}")]
    Record {
        key_id: KeyId,
        what: &'static str,
        #[source]
        source: ExecuteError,
    },
}

impl From<SyncError> for HandlerError {
    fn from(error: SyncError) -> Self {
        match error {
            SyncError::NoSuchKey { .. } | SyncError::UnknownLocation { .. } => {
                Self::Reject(error.to_string())
            }
            other => Self::Retry(other.to_string()),
        }
    }
}

/// What one sync did for a key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Synced {
    pub key_id: KeyId,
    pub phase: Phase,
    /// The acknowledgement recorded, if one was due and still current.
    pub acknowledged: Option<&'static str>,
}

/// Tuning of the worker beyond its panels.
#[derive(Debug, Clone)]
pub struct WorkerConfig {
    /// Who the worker's events name as their actor: the worker, or the reconciler when
    /// it applies a key whose message never arrived.
    pub actor_kind: ActorKind,
    pub actor_id: String,
    /// The consumer's redelivery backoff, used to tell when a failed key is tried again.
    pub retry_base: Duration,
    pub retry_max: Duration,
}

impl Default for WorkerConfig {
    fn default() -> Self {
        Self {
            actor_kind: ActorKind::Worker,
            actor_id: "x3ui-worker".to_owned(),
            retry_base: Duration::from_millis(200),
            retry_max: Duration::from_secs(30),
        }
    }
}

/// The handler of `keyledger.x3ui-worker`.
#[derive(Debug, Clone)]
pub struct Worker {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    ledger: KeyLedger,
    panels: Arc<Panels>,
    config: WorkerConfig,
    /// Failed attempts per key since its last success, for `attempt` in failure events.
    attempts: Mutex<HashMap<KeyId, u32>>,
}

impl Worker {
    pub fn new(store: EventStore, panels: Arc<Panels>, config: WorkerConfig) -> Self {
        // Every process that writes to the panels shares this database: take write
        // turns through it, so scaled-out workers never lose each other's writes.
        for location in panels.iter() {
            location.panel().share_write_turns(store.pool());
        }
        Self {
            inner: Arc::new(Inner {
                ledger: KeyLedger::new(store),
                panels,
                config,
                attempts: Mutex::default(),
            }),
        }
    }

    /// Makes the key's panel match the key's newest state in the log and records the
    /// acknowledgement that state waits for. On a panel failure, records
    /// `key.provisioning_failed` (when it is new or different) and returns the error.
    pub async fn sync_key(
        &self,
        key_id: KeyId,
        cause: Option<&RecordedEvent>,
    ) -> Result<Synced, SyncError> {
        let inner = &self.inner;
        let (state, events) = inner
            .ledger
            .load(key_id)
            .await
            .map_err(|source| SyncError::Store { key_id, source })?;
        let details = state
            .details
            .as_ref()
            .ok_or(SyncError::NoSuchKey { key_id })?;
        let location = inner.panels.get(details.location.as_str()).ok_or_else(|| {
            SyncError::UnknownLocation {
                key_id,
                location: details.location.to_string(),
            }
        })?;
        let applied = match state.desired_client() {
            Some(desired) => match location.desired_spec(&desired).await {
                Ok(spec) => location.ensure(spec).await,
                Err(error) => Err(Arc::new(error)),
            }
            .map(|outcome| {
                tracing::debug!(%key_id, location = location.id(), ?outcome, enable = desired.enable, "panel holds the key's client");
            }),
            None => location
                .panel()
                .ensure_client_absent(&details.email)
                .await
                .map(|outcome| {
                    tracing::debug!(%key_id, location = location.id(), ?outcome, "panel holds no enabled client for the key");
                })
                .map_err(Arc::new),
        };
        if let Err(source) = applied {
            self.record_failure(key_id, &state, &source, cause).await;
            return Err(SyncError::Panel { key_id, source });
        }
        self.inner.attempts().remove(&key_id);
        let acknowledged = self
            .acknowledge(key_id, &state, &events, location, cause)
            .await?;
        Ok(Synced {
            key_id,
            phase: state.phase,
            acknowledged,
        })
    }

    /// Applies a `key.quota_changed`: with `reset_usage`, the panel's counters go back to
    /// zero first, then the client gets its new quota and is switched on again, in that
    /// order, so the panel's job does not disable it again at once (docs/panel.md). A key
    /// that waits for the panel for another reason, or holds no client, is synced as usual.
    pub async fn sync_quota(
        &self,
        key_id: KeyId,
        reset_usage: bool,
        cause: Option<&RecordedEvent>,
    ) -> Result<Synced, SyncError> {
        let (state, _) = self
            .inner
            .ledger
            .load(key_id)
            .await
            .map_err(|source| SyncError::Store { key_id, source })?;
        let desired = match state.desired_client() {
            Some(desired) if !state.phase.awaits_panel() => desired,
            _ => return self.sync_key(key_id, cause).await,
        };
        let location = self.location_of(key_id, &state)?;
        let restored = match location.desired_spec(&desired).await {
            Ok(spec) => location
                .panel()
                .restore_client(&spec, reset_usage)
                .await
                .map(|_| spec),
            Err(error) => Err(error),
        };
        let spec = match restored {
            Ok(spec) => spec,
            Err(error) => {
                self.record_failure(key_id, &state, &error, cause).await;
                return Err(SyncError::Panel {
                    key_id,
                    source: Arc::new(error),
                });
            }
        };
        tracing::info!(%key_id, location = location.id(), reset_usage, total_bytes = spec.total_bytes, enable = spec.enable, "quota applied on the panel");
        self.inner.attempts().remove(&key_id);
        Ok(Synced {
            key_id,
            phase: state.phase,
            acknowledged: None,
        })
    }

    fn location_of(&self, key_id: KeyId, state: &KeyState) -> Result<&PanelLocation, SyncError> {
        let details = state
            .details
            .as_ref()
            .ok_or(SyncError::NoSuchKey { key_id })?;
        self.inner
            .panels
            .get(details.location.as_str())
            .ok_or_else(|| SyncError::UnknownLocation {
                key_id,
                location: details.location.to_string(),
            })
    }

    /// Records the acknowledgement the key's phase waits for, once per phase.
    async fn acknowledge(
        &self,
        key_id: KeyId,
        state: &KeyState,
        events: &[RecordedEvent],
        location: &PanelLocation,
        cause: Option<&RecordedEvent>,
    ) -> Result<Option<&'static str>, SyncError> {
        let Some(details) = &state.details else {
            return Ok(None);
        };
        let client_uuid = details.client_uuid;
        let (command, what) = match state.phase {
            Phase::Provisioning => (
                KeyCommand::ConfirmProvisioned(ConfirmProvisioned {
                    client_uuid,
                    inbound_id: location.inbound_id(),
                    link: link(key_id, location, details).await,
                }),
                EventType::Provisioned.as_str(),
            ),
            Phase::Rotating => (
                KeyCommand::ConfirmRotated(ConfirmRotated {
                    client_uuid,
                    link: link(key_id, location, details).await,
                }),
                EventType::Rotated.as_str(),
            ),
            Phase::Revoking => (
                KeyCommand::ConfirmRevoked(ConfirmRevoked { client_uuid }),
                EventType::Revoked.as_str(),
            ),
            Phase::Absent | Phase::Active | Phase::Revoked | Phase::Expired | Phase::Depleted => {
                return Ok(None);
            }
        };
        // The version of the event that started the phase names the acknowledgement, so
        // failures recorded in between do not make a second one.
        let answers = events
            .iter()
            .rev()
            .find(|e| PHASE_STARTS.contains(&e.event_type.as_str()))
            .map_or(state.version, |e| e.version as u32);
        let command_id = command_id(key_id, &format!("ack/{answers}"));
        let metadata = self.metadata(command_id, cause);
        match self.inner.ledger.execute(key_id, &command, &metadata).await {
            Ok(outcome) if outcome.recorded.is_empty() && outcome.append.is_none() => {
                tracing::info!(%key_id, acknowledgement = what, "key moved on meanwhile; stale acknowledgement dropped");
                Ok(None)
            }
            Ok(_) => {
                tracing::info!(%key_id, acknowledgement = what, %client_uuid, "acknowledged");
                Ok(Some(what))
            }
            Err(ExecuteError::Refused(refusal)) => {
                tracing::info!(%key_id, acknowledgement = what, %refusal, "acknowledgement refused; dropped");
                Ok(None)
            }
            Err(source) => Err(SyncError::Record {
                key_id,
                what,
                source,
            }),
        }
    }

    /// `key.provisioning_failed`, on the first failure and when the error changes (the
    /// domain drops a repeat of the same text). Failing to record it is logged, not
    /// returned: the panel error is what the caller must retry on.
    async fn record_failure(
        &self,
        key_id: KeyId,
        state: &KeyState,
        error: &PanelError,
        cause: Option<&RecordedEvent>,
    ) {
        let attempt = {
            let mut attempts = self.inner.attempts();
            let count = attempts.entry(key_id).or_insert(0);
            *count += 1;
            *count
        };
        tracing::warn!(%key_id, attempt, %error, "panel failed for the key");
        if !state.phase.awaits_panel() && state.phase != Phase::Expired {
            // Active or revoked: there is nothing the user waits for; the retry and the
            // reconciler take care of it.
            return;
        }
        if matches!(error, PanelError::CircuitOpen { .. }) && state.failure.is_some() {
            // The breaker opened because of the failure already recorded.
            return;
        }
        let config = &self.inner.config;
        let pause = Backoff::delay_for(
            config.retry_base,
            config.retry_max,
            attempt.saturating_sub(1),
        );
        let retry_at = time::OffsetDateTime::now_utc() + pause;
        let text = failure_text(error);
        let command = KeyCommand::RecordProvisioningFailure(RecordProvisioningFailure {
            attempt,
            error: text.clone(),
            retry_at,
        });
        let command_id = command_id(key_id, &format!("failure/{}/{text}", state.version));
        match self
            .inner
            .ledger
            .execute(key_id, &command, &self.metadata(command_id, cause))
            .await
        {
            Ok(outcome) if !outcome.recorded.is_empty() => {
                tracing::info!(%key_id, attempt, error = %text, "recorded key.provisioning_failed");
            }
            Ok(_) | Err(ExecuteError::Refused(DomainError::WrongPhase(_))) => {}
            Err(other) => {
                tracing::warn!(%key_id, error = %other, "could not record key.provisioning_failed");
            }
        }
    }

    fn metadata(&self, command_id: Uuid, cause: Option<&RecordedEvent>) -> EventMetadata {
        let config = &self.inner.config;
        let actor = Actor::new(config.actor_kind, config.actor_id.clone());
        let mut metadata = EventMetadata::for_command(command_id, actor);
        if let Some(cause) = cause {
            metadata.causation_id = cause.event_id;
            metadata.correlation_id = cause
                .metadata
                .get("correlation_id")
                .and_then(|v| v.as_str())
                .and_then(|s| Uuid::parse_str(s).ok())
                .unwrap_or(cause.event_id);
        }
        metadata
    }
}

impl Inner {
    fn attempts(&self) -> std::sync::MutexGuard<'_, HashMap<KeyId, u32>> {
        self.attempts.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

impl EventHandler for Worker {
    async fn handle(
        &self,
        event: &RecordedEvent,
        _tx: &mut PgConnection,
    ) -> Result<(), HandlerError> {
        if !TRIGGERS.contains(&event.event_type.as_str()) {
            return Ok(());
        }
        let key_id = KeyId::from_uuid(event.stream_id);
        if let Ok(KeyEvent::QuotaChanged(change)) = event.key_event() {
            self.sync_quota(key_id, change.reset_usage, Some(event))
                .await?;
            return Ok(());
        }
        self.sync_key(key_id, Some(event)).await?;
        Ok(())
    }
}

/// The link to record with an acknowledgement. Without one the key is still acknowledged
/// (the panel does hold the client); the log line names the key and the cause, which is
/// a configuration matter (public_host, the inbound's stream settings).
async fn link(key_id: KeyId, location: &PanelLocation, details: &KeyDetails) -> Option<String> {
    location
        .link_for(details.client_uuid, &details.email)
        .await
        .inspect_err(|error| tracing::warn!(%key_id, %error, "acknowledging without a link"))
        .ok()
}

/// A deterministic command id for the worker's `what` about `key_id`.
pub(crate) fn command_id(key_id: KeyId, what: &str) -> Uuid {
    Uuid::new_v5(&COMMAND_NAMESPACE, format!("{key_id}/{what}").as_bytes())
}

/// The error as recorded in `key.provisioning_failed`: stable across retries of the same
/// failure (no durations, addresses or OS error texts), so that a panel that stays down
/// is recorded once, not once per retry.
fn failure_text(error: &PanelError) -> String {
    match error {
        PanelError::Transport {
            location,
            operation,
            ..
        } => format!("{location}: {operation}: cannot reach the panel"),
        PanelError::Timeout {
            location,
            operation,
            ..
        } => format!("{location}: {operation}: the panel did not answer in time"),
        PanelError::CircuitOpen { location, .. } => {
            format!("{location}: the panel kept failing; circuit breaker open")
        }
        other => other.to_string(),
    }
}

/// Deliveries of one message before the worker gives up on it: with the runtime's backoff
/// (200 ms doubling to 30 s) about four minutes of panel outage, and below the broker's own
/// delivery limit (20), which must stay the backstop.
pub const WORKER_MAX_DELIVERIES: i64 = 15;

/// The consumer configuration the worker runs with by default.
pub fn consumer_config(amqp_url: impl Into<String>) -> ConsumerConfig {
    ConsumerConfig {
        max_deliveries: WORKER_MAX_DELIVERIES,
        ..ConsumerConfig::new(amqp_url, Queue::X3uiWorker)
    }
}

/// The worker role as a consumer of `keyledger.x3ui-worker` under `consumer` (see
/// [`consumer_config`] for the production settings); its retry timing is the consumer's
/// own, so the worker knows when a failed key will be tried again.
pub fn worker_consumer(
    store: EventStore,
    consumer: ConsumerConfig,
    panels: Arc<Panels>,
) -> Consumer<Worker> {
    let config = WorkerConfig {
        retry_base: consumer.retry_base,
        retry_max: consumer.retry_max,
        ..WorkerConfig::default()
    };
    let worker = Worker::new(store.clone(), panels, config);
    Consumer::new(store, consumer, worker)
}

/// Runs the worker role until `stop` is cancelled.
pub async fn run_worker(
    store: EventStore,
    amqp_url: impl Into<String>,
    panels: Arc<Panels>,
    stop: CancellationToken,
) {
    worker_consumer(store, consumer_config(amqp_url), panels)
        .run(stop)
        .await;
}
