//! Every location this process serves: its panel, the inbound keys live in, and a batcher
//! that folds the concurrent "ensure this client" calls of many keys into one addClient.

use std::collections::{BTreeMap, HashSet};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use domain::{DesiredClient, InboundLinkSettings, render_vless_link};
use serde::Serialize;
use serde_json::Value;
use time::OffsetDateTime;
use tokio::sync::oneshot;
use uuid::Uuid;

use crate::config::PanelConfig;
use crate::ensure::{Ensured, Panel};
use crate::error::{LinkUnavailable, PanelError};
use crate::model::ClientSpec;
use crate::resilience::{BreakerState, ResiliencePolicy};

/// A panel error shared by every key of the batch it failed.
pub type SharedPanelError = Arc<PanelError>;

/// One location: its panel and how its clients look.
#[derive(Debug)]
pub struct PanelLocation {
    id: String,
    panel: Panel,
    inbound_id: i64,
    /// The `flow` every client of this location gets (`""` or [`crate::FLOW_VISION`]), as
    /// configured; `None`: the inbound's default ([`crate::Inbound::default_flow`]).
    flow: Option<String>,
    /// The host in this location's `vless://` links; no links without it.
    public_host: Option<String>,
    batcher: Batcher,
    /// How long the writer of a batch waits for more keys to join it.
    batch_window: Duration,
    /// What reconcile passes over this location left, for health reports.
    passes: Mutex<Passes>,
}

/// The newest completed reconcile pass at one location, and the newest failure.
#[derive(Debug, Clone, Default)]
struct Passes {
    completed_at: Option<OffsetDateTime>,
    drift_found: Option<usize>,
    /// Why the newest pass failed; cleared by the next one that completes.
    error: Option<String>,
}

/// One location's health, as `GET /v1/locations` and `/readyz` show it. Reading it costs
/// no panel call.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct LocationHealth {
    pub location: String,
    pub breaker: BreakerState,
    /// When the panel last answered a call successfully (any call, probes included).
    #[serde(with = "time::serde::rfc3339::option")]
    pub last_success_at: Option<OffsetDateTime>,
    /// When the newest completed reconcile pass over this location ended.
    #[serde(with = "time::serde::rfc3339::option")]
    pub last_reconcile_at: Option<OffsetDateTime>,
    /// Drift that pass found; `None` before the first completed pass.
    pub drift_found_last_pass: Option<usize>,
    /// Why the newest pass failed, if it did (it could not list the panel).
    pub last_reconcile_error: Option<String>,
}

/// One location's answer to [`Panels::probe`].
#[derive(Debug)]
pub struct LocationProbe {
    pub location: String,
    /// How long the panel took, or why it did not answer in time.
    pub outcome: Result<Duration, PanelError>,
}

/// Default [`Location::with_batch_window`]: short next to a panel's own answer times.
pub const DEFAULT_BATCH_WINDOW: Duration = Duration::from_millis(10);

impl PanelLocation {
    pub fn new(id: impl Into<String>, panel: Panel, inbound_id: i64) -> Self {
        Self {
            id: id.into(),
            panel,
            inbound_id,
            flow: None,
            public_host: None,
            batcher: Batcher::default(),
            batch_window: DEFAULT_BATCH_WINDOW,
            passes: Mutex::default(),
        }
    }

    /// How long the writer of a batch waits for concurrent requests to join it before
    /// writing; zero writes at once.
    pub fn with_batch_window(mut self, window: Duration) -> Self {
        self.batch_window = window;
        self
    }

    /// Clients of this location get `flow` (e.g. [`crate::FLOW_VISION`] on tcp + reality).
    pub fn with_flow(mut self, flow: impl Into<String>) -> Self {
        self.flow = Some(flow.into());
        self
    }

    /// The flow this location's clients get now: the configured one, or the default of the
    /// inbound as last listed (`""` before any list; a list precedes every write, and
    /// [`PanelLocation::desired_spec`] reads the inbound first).
    pub fn flow(&self) -> String {
        if let Some(flow) = &self.flow {
            return flow.clone();
        }
        self.panel
            .cached_inbound()
            .map(|inbound| inbound.default_flow().to_owned())
            .unwrap_or_default()
    }

    /// The host put into this location's `vless://` links (config `public_host`).
    pub fn with_public_host(mut self, host: impl Into<String>) -> Self {
        self.public_host = Some(host.into());
        self
    }

    pub fn id(&self) -> &str {
        &self.id
    }

    /// The `vless://` link the panel's own "copy link" gives for this location's client
    /// `client_uuid` with `email`: from the inbound's settings as last listed (read once
    /// when none were seen yet) and the configured public host. Deterministic: the same
    /// client and inbound always give the same link.
    pub async fn link_for(
        &self,
        client_uuid: Uuid,
        email: &str,
    ) -> Result<String, LinkUnavailable> {
        let public_host =
            self.public_host
                .as_deref()
                .ok_or_else(|| LinkUnavailable::NoPublicHost {
                    location: self.id.clone(),
                })?;
        let inbound = self
            .panel
            .inbound()
            .await
            .map_err(|source| LinkUnavailable::Panel {
                location: self.id.clone(),
                source,
            })?;
        let settings = InboundLinkSettings {
            public_host: public_host.to_owned(),
            port: inbound.port,
            remark: inbound.remark.clone(),
            settings: Value::Object(inbound.settings.clone()),
            stream_settings: inbound.stream_settings.clone(),
        };
        let flow = self
            .flow
            .clone()
            .unwrap_or_else(|| inbound.default_flow().to_owned());
        render_vless_link(&settings, client_uuid, &flow, email).map_err(|source| {
            LinkUnavailable::Render {
                location: self.id.clone(),
                inbound_id: inbound.id,
                source,
            }
        })
    }

    pub fn panel(&self) -> &Panel {
        &self.panel
    }

    pub fn inbound_id(&self) -> i64 {
        self.inbound_id
    }

    /// This location's health, from what its calls and reconcile passes left behind.
    pub fn health(&self) -> LocationHealth {
        let passes = self.passes().clone();
        LocationHealth {
            location: self.id.clone(),
            breaker: self.panel.breaker_state(),
            last_success_at: self.panel.last_success(),
            last_reconcile_at: passes.completed_at,
            drift_found_last_pass: passes.drift_found,
            last_reconcile_error: passes.error,
        }
    }

    pub(crate) fn record_pass(&self, at: OffsetDateTime, drift_found: usize) {
        *self.passes() = Passes {
            completed_at: Some(at),
            drift_found: Some(drift_found),
            error: None,
        };
    }

    pub(crate) fn record_failed_pass(&self, error: String) {
        self.passes().error = Some(error);
    }

    fn passes(&self) -> std::sync::MutexGuard<'_, Passes> {
        self.passes.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// [`PanelLocation::spec_for`] once the inbound is known, so that a default flow is
    /// the inbound's: without a configured flow, reads the inbound first (once; it is
    /// cached). A panel that cannot be read fails here as the write would.
    pub async fn desired_spec(&self, desired: &DesiredClient) -> Result<ClientSpec, PanelError> {
        if self.flow.is_none() {
            self.panel.inbound().await?;
        }
        Ok(self.spec_for(desired))
    }

    /// The panel client that holds `desired`, in this location's shape.
    pub fn spec_for(&self, desired: &DesiredClient) -> ClientSpec {
        ClientSpec {
            enable: desired.enable,
            flow: self.flow(),
            total_bytes: i64::try_from(desired.total_bytes).unwrap_or(i64::MAX),
            expiry_time_ms: desired.expiry_time_ms,
            tg_id: desired.telegram_id,
            ..ClientSpec::new(desired.client_uuid, desired.email.clone())
        }
    }

    /// [`Panel::ensure_client`], batched with whatever other keys of this location ask at
    /// the same time: while one batch is being written, new requests queue up, and the
    /// next caller writes them all with one [`Panel::ensure_clients`].
    pub async fn ensure(&self, spec: ClientSpec) -> Result<Ensured, SharedPanelError> {
        self.ensure_many(vec![spec])
            .await
            .pop()
            .unwrap_or_else(|| Err(self.abandoned()))
    }

    /// [`Location::ensure`] for many clients; outcomes in the order of `specs`.
    pub async fn ensure_many(
        &self,
        specs: Vec<ClientSpec>,
    ) -> Vec<Result<Ensured, SharedPanelError>> {
        let mut answers: Vec<_> = {
            let mut queue = self.batcher.queue();
            specs
                .into_iter()
                .map(|spec| {
                    let (reply, answer) = oneshot::channel();
                    queue.push(Waiting { spec, reply });
                    Answer::Waiting(answer)
                })
                .collect()
        };
        let _flushing = self.batcher.flush.lock().await;
        loop {
            // Earlier callers may have taken our requests into their batches.
            let mut pending = false;
            for answer in &mut answers {
                if let Answer::Waiting(receiver) = answer {
                    match receiver.try_recv() {
                        Ok(outcome) => *answer = Answer::Done(outcome),
                        Err(oneshot::error::TryRecvError::Closed) => {
                            *answer = Answer::Done(Err(self.abandoned()));
                        }
                        Err(oneshot::error::TryRecvError::Empty) => pending = true,
                    }
                }
            }
            if !pending {
                break;
            }
            if !self.batch_window.is_zero() {
                // Keys handled at the same time arrive a moment apart: let them join.
                tokio::time::sleep(self.batch_window).await;
            }
            let batch = self.batcher.take_batch();
            if batch.is_empty() {
                break;
            }
            self.write_batch(batch).await;
        }
        answers
            .into_iter()
            .map(|answer| match answer {
                Answer::Done(outcome) => outcome,
                Answer::Waiting(_) => Err(self.abandoned()),
            })
            .collect()
    }

    fn abandoned(&self) -> SharedPanelError {
        Arc::new(PanelError::Protocol {
            location: self.id.clone(),
            operation: crate::Operation::AddClients,
            detail: "the batch holding this client was abandoned".into(),
        })
    }

    async fn write_batch(&self, batch: Vec<Waiting>) {
        if batch.is_empty() {
            return;
        }
        let specs: Vec<ClientSpec> = batch.iter().map(|w| w.spec.clone()).collect();
        tracing::debug!(location = %self.id, clients = specs.len(), "writing a batch of clients");
        match self.panel.ensure_clients(&specs).await {
            Ok(outcomes) => {
                for (waiting, outcome) in batch.into_iter().zip(outcomes) {
                    // The caller may have given up; then nobody needs the answer.
                    let _ = waiting.reply.send(Ok(outcome));
                }
            }
            Err(error) if batch.len() == 1 => {
                let error = Arc::new(error);
                for waiting in batch {
                    let _ = waiting.reply.send(Err(error.clone()));
                }
            }
            Err(error) => {
                // One bad client (say, an email taken in another inbound) must not fail
                // its batch-mates: each gets a try of its own.
                tracing::debug!(location = %self.id, %error, "batch failed; writing its clients one by one");
                for waiting in batch {
                    let outcome = self.panel.ensure_client(&waiting.spec).await;
                    let _ = waiting.reply.send(outcome.map_err(Arc::new));
                }
            }
        }
    }
}

enum Answer {
    Waiting(oneshot::Receiver<Result<Ensured, SharedPanelError>>),
    Done(Result<Ensured, SharedPanelError>),
}

struct Waiting {
    spec: ClientSpec,
    reply: oneshot::Sender<Result<Ensured, SharedPanelError>>,
}

#[derive(Default)]
struct Batcher {
    queue: Mutex<Vec<Waiting>>,
    /// Held by the caller writing a batch; tokio's mutex is fair, so callers queued
    /// behind it find their answers ready or write the next batch.
    flush: tokio::sync::Mutex<()>,
}

impl std::fmt::Debug for Batcher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Batcher")
            .field("queued", &self.queue().len())
            .finish()
    }
}

impl Batcher {
    fn queue(&self) -> std::sync::MutexGuard<'_, Vec<Waiting>> {
        self.queue.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The queued requests, at most one per email (a second one for the same client
    /// waits for the next batch, so one batch never holds two versions of a client).
    fn take_batch(&self) -> Vec<Waiting> {
        let mut queue = self.queue();
        let mut seen = HashSet::new();
        let (batch, later): (Vec<Waiting>, Vec<Waiting>) = std::mem::take(&mut *queue)
            .into_iter()
            .partition(|w| seen.insert(w.spec.email.to_ascii_lowercase()));
        *queue = later;
        batch
    }
}

/// Every location this process serves, by location id.
#[derive(Debug, Default)]
pub struct Panels {
    locations: BTreeMap<String, PanelLocation>,
}

impl Panels {
    /// A panel per configuration, each with `policy` for its breaker and retries.
    pub fn from_configs(
        configs: impl IntoIterator<Item = PanelConfig>,
        policy: &ResiliencePolicy,
    ) -> Result<Self, PanelError> {
        let mut panels = Self::default();
        for config in configs {
            let (id, inbound_id) = (config.location.clone(), config.inbound_id);
            let public_host = config.public_host.clone();
            let flow = config.flow.clone();
            let panel = Panel::connect(config, policy.clone())?;
            let mut location = PanelLocation::new(id, panel, inbound_id);
            location.public_host = public_host;
            location.flow = flow;
            panels.insert(location);
        }
        Ok(panels)
    }

    /// Adds (or replaces) a location.
    pub fn insert(&mut self, location: PanelLocation) {
        self.locations.insert(location.id.clone(), location);
    }

    pub fn get(&self, location: &str) -> Option<&PanelLocation> {
        self.locations.get(location)
    }

    pub fn iter(&self) -> impl Iterator<Item = &PanelLocation> {
        self.locations.values()
    }

    pub fn ids(&self) -> impl Iterator<Item = &str> {
        self.locations.keys().map(String::as_str)
    }

    /// Every location's health, by location id; cheap (no panel call), for
    /// `GET /v1/locations`.
    pub fn health(&self) -> Vec<LocationHealth> {
        self.iter().map(PanelLocation::health).collect()
    }

    /// Probes every location's panel at once ([`Panel::probe`]), each bounded by
    /// `timeout`, for `/readyz`: the whole call takes at most about `timeout`.
    pub async fn probe(&self, timeout: Duration) -> Vec<LocationProbe> {
        futures::future::join_all(self.iter().map(|location| async move {
            LocationProbe {
                location: location.id.clone(),
                outcome: location.panel.probe(timeout).await,
            }
        }))
        .await
    }
}
