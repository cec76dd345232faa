//! The reconciler: compares every client of a location's inbound with what the log says
//! the location should hold, repairs the differences both ways, and records each one as
//! `key.drift_detected` followed by `key.drift_repaired`.
//!
//! One pass lists each panel once, *then* reads the log, so the log is at least as new as
//! anything the worker had written to the panel before the list; keys still waiting for
//! the worker (provisioning, rotating, revoking) are left to it for a grace period. A key
//! that waits longer (its message was dead-lettered or never delivered) is stuck: the
//! reconciler applies its desired state and records the acknowledgement the way the
//! worker would, and records how the panel differed. Before repairing a key the
//! reconciler reloads it, and a repair that finds the panel already right (the worker got
//! there first) is not recorded as drift. Clients whose email is not one of ours for the
//! location are reported and never touched.
//!
//! The panel also decides on its own: its traffic job switches off a client whose quota is
//! used up or whose expiry passed. Such an `enable: false` is not drift: a used-up quota is
//! recorded once as `key.depleted` (and from then on the log wants the client off), a
//! panel expiry is left to the scheduler's `key.expired`, and neither is undone, since
//! re-enabling makes the panel disable it again and restart Xray for everyone. What is
//! "enabled" is read from the settings entry *and* the traffic row, because panels before
//! v2.9.4 switch off only the row. Every pass also records the counters it listed in the
//! usage view; a shorter usage pass ([`Reconciler::usage_pass`]) does only that and the
//! depletions.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use domain::{
    DriftKind, EventType, KeyCommand, KeyId, KeyState, RecordDepletion, RecordDrift,
    RecordDriftRepaired, StreamKind, evolve,
};
use eventstore::{Actor, ActorKind, EventMetadata, EventStore, KeyLedger, StoreError};
use serde::Serialize;
use serde_json::{Value, json};
use time::OffsetDateTime;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use crate::ensure::{Absence, Ensured};
use crate::error::PanelError;
use crate::model::{ClientSpec, InboundClients, PanelClient};
use crate::panels::{PanelLocation, Panels};
use crate::session_lock::SessionLock;
use crate::usage::{PanelDecision, judge_panel_decision, our_user, record_usage, usage_rows};
use crate::worker::{Worker, WorkerConfig, command_id};

/// What a reconcile found about one panel client or one key.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum FindingKind {
    /// A key's client is not on the panel.
    MissingOnPanel,
    /// A key's client is on the panel with other settings.
    SettingsDiffer,
    /// One of our emails on the panel with no live key behind it.
    UnknownOnPanel,
    /// A client that is not ours (another email pattern): reported, never touched.
    Foreign,
    /// A stuck key whose client the panel already holds as wanted: only the
    /// acknowledgement was missing.
    Unacknowledged,
    /// The panel switched the client off because its quota is used up: recorded as
    /// `key.depleted`, not repaired.
    DepletedOnPanel,
    /// The panel switched the client off at its expiry time before the scheduler recorded
    /// `key.expired`: left to the scheduler, not repaired.
    ExpiredOnPanel,
}

impl FindingKind {
    fn drift(self) -> Option<DriftKind> {
        match self {
            Self::MissingOnPanel => Some(DriftKind::MissingOnPanel),
            Self::SettingsDiffer => Some(DriftKind::SettingsDiffer),
            Self::UnknownOnPanel => Some(DriftKind::UnknownOnPanel),
            Self::Foreign | Self::Unacknowledged | Self::DepletedOnPanel | Self::ExpiredOnPanel => {
                None
            }
        }
    }
}

/// What became of a finding.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case", tag = "outcome", content = "detail")]
pub enum Resolution {
    /// Dry run, or a foreign client: nothing was done.
    Reported,
    /// The panel was changed to match the log.
    Repaired,
    /// A fresh look found the panel right already (the worker got there first), or the
    /// key moved on since the log was read; nothing recorded.
    Settled,
    /// The repair failed; the drift is recorded, the next pass tries again.
    Failed(String),
    /// The panel's own decision was recorded in the log (`key.depleted`); the panel
    /// was left as it is.
    Recorded,
}

#[derive(Debug, Clone, Serialize)]
pub struct Finding {
    pub kind: FindingKind,
    pub email: String,
    /// The key behind the email, when the log has one.
    pub key_id: Option<KeyId>,
    /// The key's version when the pass read the log.
    #[serde(skip)]
    pub version: Option<u32>,
    /// The client the log wants (null: none).
    pub expected: Value,
    /// The client the panel holds (null: none).
    pub observed: Value,
    /// For `settings_differ`: the fields that differ.
    pub fields: Vec<&'static str>,
    /// The key has waited for the worker longer than the grace period; its repair
    /// includes the acknowledgement the worker never recorded.
    pub stuck: bool,
    /// For `depleted_on_panel`: the bytes used and the quota, as the traffic row says.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub depletion: Option<(u64, u64)>,
    pub resolution: Resolution,
}

/// One pass over one location.
#[derive(Debug, Clone, Serialize)]
pub struct ReconcileReport {
    pub location: String,
    pub dry_run: bool,
    pub clients_on_panel: usize,
    /// Keys of this location in the log, revoked ones included.
    pub keys: usize,
    /// Keys waiting for the worker within the grace period, left to it.
    pub in_flight: usize,
    pub findings: Vec<Finding>,
    /// Findings repaired and recorded.
    pub repaired: usize,
    /// The one list call.
    #[serde(serialize_with = "as_millis")]
    pub list_call: Duration,
    /// Reading and folding the whole log (shared by the locations of one pass).
    #[serde(serialize_with = "as_millis")]
    pub log_read: Duration,
    /// Our own work without any panel call: the log read plus the comparison.
    #[serde(serialize_with = "as_millis")]
    pub own_work: Duration,
    /// Repairs, their panel calls and their events.
    #[serde(serialize_with = "as_millis")]
    pub repair: Duration,
    /// Keys whose counters went into the usage view.
    pub usage_recorded: u64,
}

impl ReconcileReport {
    /// Findings that are drift (the panel differs from the log on one of ours); not
    /// foreign clients, nor stuck keys the panel already holds right.
    pub fn drift(&self) -> impl Iterator<Item = &Finding> {
        self.findings.iter().filter(|f| f.kind.drift().is_some())
    }

    pub fn count(&self, kind: FindingKind) -> usize {
        self.findings.iter().filter(|f| f.kind == kind).count()
    }
}

fn as_millis<S: serde::Serializer>(value: &Duration, serializer: S) -> Result<S::Ok, S::Error> {
    serializer.serialize_f64(value.as_secs_f64() * 1000.0)
}

/// Every location of one pass: the reports, and the locations that could not be listed.
#[derive(Debug, Default)]
pub struct PassReport {
    pub reports: Vec<ReconcileReport>,
    pub failures: Vec<ReconcileError>,
}

#[derive(Debug, thiserror::Error)]
pub enum ReconcileError {
    #[error("location {0:?} is not configured")]
    UnknownLocation(String),
    #[error("listing the panel's clients: {0}")]
    List(#[source] PanelError),
    #[error("reading the log: {0}")]
    Log(#[source] StoreError),
}

/// Default [`Reconciler::with_in_flight_grace`]: far longer than the worker takes with a
/// healthy broker and panel, far shorter than a user waits before giving up.
pub const DEFAULT_IN_FLIGHT_GRACE: Duration = Duration::from_secs(120);

/// Runs reconcile passes over the configured locations.
#[derive(Debug, Clone)]
pub struct Reconciler {
    ledger: KeyLedger,
    panels: Arc<Panels>,
    actor_id: String,
    /// Applies stuck keys exactly as the worker does, acknowledgement included.
    worker: Worker,
    in_flight_grace: Duration,
    usage_interval: Duration,
}

/// Default [`Reconciler::with_usage_interval`]: counters a minute old are fresh enough for a
/// user's card, and one list call a minute costs a panel little.
pub const DEFAULT_USAGE_INTERVAL: Duration = Duration::from_secs(60);

/// One usage pass over one location.
#[derive(Debug, Clone, Serialize)]
pub struct UsageReport {
    pub location: String,
    /// Keys whose counters went into the usage view.
    pub recorded: u64,
    /// Keys recorded as `key.depleted` by this pass.
    pub depleted: usize,
}

/// A key as the log has it, with the client the panel should hold for it.
struct LoggedKey {
    key_id: KeyId,
    state: KeyState,
    /// When its newest event was recorded.
    last_event_at: OffsetDateTime,
    /// Its newest event is a quota change: the worker applies it (counters reset, client
    /// switched on again); until then the panel shows the old quota's decision.
    quota_changed_last: bool,
}

impl Reconciler {
    pub fn new(store: EventStore, panels: Arc<Panels>) -> Self {
        let actor_id = "reconciler".to_owned();
        let worker_config = WorkerConfig {
            actor_kind: ActorKind::Reconciler,
            actor_id: actor_id.clone(),
            ..WorkerConfig::default()
        };
        Self {
            worker: Worker::new(store.clone(), panels.clone(), worker_config),
            ledger: KeyLedger::new(store),
            panels,
            actor_id,
            in_flight_grace: DEFAULT_IN_FLIGHT_GRACE,
            usage_interval: DEFAULT_USAGE_INTERVAL,
        }
    }

    /// How often [`Reconciler::run`] reads the panels' counters between full passes.
    pub fn with_usage_interval(mut self, interval: Duration) -> Self {
        self.usage_interval = interval;
        self
    }

    /// How long a key may wait for the worker (since its newest event) before a pass
    /// treats it as stuck and applies it itself.
    pub fn with_in_flight_grace(mut self, grace: Duration) -> Self {
        self.in_flight_grace = grace;
        self
    }

    /// One pass over `only` or every location. With `dry_run`, nothing is changed or
    /// recorded: the report says what would be.
    pub async fn reconcile(
        &self,
        only: Option<&str>,
        dry_run: bool,
    ) -> Result<PassReport, ReconcileError> {
        let locations: Vec<&PanelLocation> = match only {
            Some(id) => vec![
                self.panels
                    .get(id)
                    .ok_or_else(|| ReconcileError::UnknownLocation(id.to_owned()))?,
            ],
            None => self.panels.iter().collect(),
        };
        let mut pass = PassReport::default();
        // Panels first, log second: see the module's comment.
        let mut listed = Vec::new();
        for location in locations {
            let started = Instant::now();
            match location.panel().list_with_traffic().await {
                Ok(clients) => listed.push((location, clients, started.elapsed())),
                Err(error) => {
                    tracing::warn!(location = location.id(), %error, "reconcile: cannot list the panel's clients");
                    location.record_failed_pass(error.to_string());
                    pass.failures.push(ReconcileError::List(error));
                }
            }
        }
        if listed.is_empty() {
            return Ok(pass);
        }
        let started = Instant::now();
        let mut keys = self.keys_by_location().await?;
        let log_read = started.elapsed();
        let pass_id = Uuid::new_v4();
        for (location, clients, list_call) in listed {
            let started = Instant::now();
            let location_keys = keys.remove(location.id()).unwrap_or_default();
            let due = stuck_cutoff(self.in_flight_grace);
            let (mut findings, in_flight) = compare(location, &clients, &location_keys, due);
            let compared = started.elapsed();
            let started = Instant::now();
            let (repaired, usage_recorded) = if dry_run {
                (0, 0)
            } else {
                let repaired = self.repair(location, pass_id, &mut findings).await;
                (repaired, self.record_usage(location, &clients).await)
            };
            let report = ReconcileReport {
                location: location.id().to_owned(),
                dry_run,
                clients_on_panel: clients.clients.len(),
                keys: location_keys.len(),
                in_flight,
                findings,
                repaired,
                list_call,
                log_read,
                own_work: log_read + compared,
                repair: started.elapsed(),
                usage_recorded,
            };
            publish(location, &report);
            tracing::info!(
                location = %report.location, dry_run, clients = report.clients_on_panel,
                keys = report.keys, drift = report.drift().count(), foreign = report.count(FindingKind::Foreign),
                repaired, own_work_ms = report.own_work.as_millis() as u64, "reconcile pass"
            );
            pass.reports.push(report);
        }
        Ok(pass)
    }

    /// [`Reconciler::reconcile`] of one location.
    pub async fn reconcile_location(
        &self,
        location: &str,
        dry_run: bool,
    ) -> Result<ReconcileReport, ReconcileError> {
        let mut pass = self.reconcile(Some(location), dry_run).await?;
        if let Some(error) = pass.failures.pop() {
            return Err(error);
        }
        pass.reports
            .pop()
            .ok_or_else(|| ReconcileError::UnknownLocation(location.to_owned()))
    }

    /// Every key in the log, folded from its events, grouped by location.
    async fn keys_by_location(&self) -> Result<HashMap<String, Vec<LoggedKey>>, ReconcileError> {
        let events = self
            .ledger
            .store()
            .read_committed(0)
            .await
            .map_err(ReconcileError::Log)?;
        let mut states: HashMap<Uuid, (KeyState, OffsetDateTime, bool)> = HashMap::new();
        for event in &events {
            // Subscriptions' streams share the log; they hold nothing for a panel.
            let of_a_key = EventType::parse(&event.event_type)
                .is_none_or(|kind| kind.stream_kind() == StreamKind::Key);
            if !of_a_key {
                continue;
            }
            let decoded = match event.key_event() {
                Ok(decoded) => decoded,
                Err(error) => {
                    tracing::warn!(key_id = %event.stream_id, position = event.position, %error, "reconcile: skipping an event that is not a key event");
                    continue;
                }
            };
            let (state, last_event_at, quota_changed_last) = states
                .entry(event.stream_id)
                .or_insert_with(|| (KeyState::default(), event.recorded_at, false));
            *state = evolve(std::mem::take(state), &decoded);
            *last_event_at = event.recorded_at;
            *quota_changed_last = event.event_type == EventType::QuotaChanged.as_str();
        }
        let mut by_location: HashMap<String, Vec<LoggedKey>> = HashMap::new();
        for (stream_id, (state, last_event_at, quota_changed_last)) in states {
            if let Some(details) = &state.details {
                by_location
                    .entry(details.location.to_string())
                    .or_default()
                    .push(LoggedKey {
                        key_id: KeyId::from_uuid(stream_id),
                        state,
                        last_event_at,
                        quota_changed_last,
                    });
            }
        }
        Ok(by_location)
    }

    /// Repairs the findings and records them; returns how many were repaired.
    async fn repair(
        &self,
        location: &PanelLocation,
        pass_id: Uuid,
        findings: &mut [Finding],
    ) -> usize {
        // Clients to add or update go to the panel together, one addClient for all.
        let mut to_ensure: Vec<(usize, ClientSpec)> = Vec::new();
        let mut repaired = 0;
        for (i, finding) in findings.iter_mut().enumerate() {
            finding.resolution = Resolution::Reported;
            if finding.stuck {
                if self.repair_stuck(location, pass_id, finding).await {
                    repaired += 1;
                }
                continue;
            }
            match finding.kind {
                FindingKind::Foreign | FindingKind::Unacknowledged => {}
                FindingKind::ExpiredOnPanel => finding.resolution = Resolution::Settled,
                FindingKind::DepletedOnPanel => {
                    finding.resolution = self.record_depletion(finding).await;
                }
                FindingKind::MissingOnPanel | FindingKind::SettingsDiffer => {
                    match self.still_wanted(location, finding).await {
                        Some(spec) => to_ensure.push((i, spec)),
                        None => finding.resolution = Resolution::Settled,
                    }
                }
                FindingKind::UnknownOnPanel => {
                    finding.resolution = if self.still_unwanted(finding).await {
                        match location.panel().ensure_client_absent(&finding.email).await {
                            Ok(Absence::AlreadyGone) => Resolution::Settled,
                            Ok(Absence::Deleted | Absence::Disabled) => Resolution::Repaired,
                            Err(error) => Resolution::Failed(error.to_string()),
                        }
                    } else {
                        Resolution::Settled
                    };
                }
            }
        }
        let (indices, specs): (Vec<usize>, Vec<ClientSpec>) = to_ensure.into_iter().unzip();
        let outcomes = location.ensure_many(specs).await;
        for (i, outcome) in indices.into_iter().zip(outcomes) {
            findings[i].resolution = match outcome {
                Ok(Ensured::Unchanged) => Resolution::Settled,
                Ok(Ensured::Added | Ensured::Updated) => Resolution::Repaired,
                Err(error) => Resolution::Failed(error.to_string()),
            };
        }
        for finding in findings.iter().filter(|f| !f.stuck) {
            if self.record(location, pass_id, finding).await {
                repaired += 1;
            }
        }
        repaired
    }

    /// Applies a stuck key as the worker would have: records how the panel differed,
    /// makes the panel match and appends the acknowledgement (with the worker's command
    /// id, so a late worker records no second one), then records the repair. True if
    /// the key was brought in line.
    async fn repair_stuck(
        &self,
        location: &PanelLocation,
        pass_id: Uuid,
        finding: &mut Finding,
    ) -> bool {
        let Some(key_id) = finding.key_id else {
            return false;
        };
        // Still stuck where the pass saw it? Anything newer is the worker's to apply.
        match self.ledger.load(key_id).await {
            Ok((state, _))
                if state.phase.awaits_panel() && Some(state.version) == finding.version => {}
            Ok(_) => {
                finding.resolution = Resolution::Settled;
                return false;
            }
            Err(error) => {
                tracing::warn!(%key_id, %error, "reconcile: cannot reload a stuck key; left to the next pass");
                finding.resolution = Resolution::Failed(error.to_string());
                return false;
            }
        }
        let drift = finding.kind.drift();
        if let Some(kind) = drift
            && !self.record_detected(key_id, kind, finding, pass_id).await
        {
            finding.resolution = Resolution::Failed("recording the drift failed".into());
            return false;
        }
        match self.worker.sync_key(key_id, None).await {
            Ok(synced) => {
                tracing::info!(%key_id, location = location.id(), phase = ?synced.phase, acknowledged = ?synced.acknowledged, kind = ?finding.kind, "reconcile: applied a key stuck waiting for the worker");
            }
            Err(error) => {
                tracing::warn!(%key_id, location = location.id(), %error, "reconcile: a stuck key could not be applied; the next pass tries again");
                finding.resolution = Resolution::Failed(error.to_string());
                return false;
            }
        }
        finding.resolution = Resolution::Repaired;
        if let Some(kind) = drift {
            let repaired = KeyCommand::RecordDriftRepaired(RecordDriftRepaired { kind });
            self.execute(key_id, &repaired, pass_id, "drift_repaired")
                .await;
        }
        true
    }

    /// The spec to write for a missing or differing client, if the key still wants it
    /// after a fresh look at the log.
    async fn still_wanted(
        &self,
        location: &PanelLocation,
        finding: &Finding,
    ) -> Option<ClientSpec> {
        let key_id = finding.key_id?;
        let (state, _) = self
            .ledger
            .load(key_id)
            .await
            .inspect_err(|error| tracing::warn!(%key_id, %error, "reconcile: cannot reload the key; repair left to the next pass"))
            .ok()?;
        if state.phase.awaits_panel() {
            return None;
        }
        let spec = location.spec_for(&state.desired_client()?);
        (spec_json(&spec) == finding.expected).then_some(spec)
    }

    /// Whether an unknown client is still unwanted after a fresh look at the log.
    async fn still_unwanted(&self, finding: &Finding) -> bool {
        let Some(key_id) = finding.key_id else {
            return true;
        };
        match self.ledger.load(key_id).await {
            Ok((state, _)) => !state.phase.awaits_panel() && state.desired_client().is_none(),
            Err(error) => {
                tracing::warn!(%key_id, %error, "reconcile: cannot reload the key; repair left to the next pass");
                false
            }
        }
    }

    /// `key.depleted` for a client the panel switched off for its used-up quota, once per
    /// key version (the domain records it only for an active key, so a second pass, or the
    /// usage pass racing this one, records nothing more).
    async fn record_depletion(&self, finding: &Finding) -> Resolution {
        let (Some(key_id), Some(version), Some((used_bytes, limit_bytes))) =
            (finding.key_id, finding.version, finding.depletion)
        else {
            return Resolution::Reported;
        };
        self.deplete(key_id, version, used_bytes, limit_bytes).await
    }

    async fn deplete(
        &self,
        key_id: KeyId,
        version: u32,
        used_bytes: u64,
        limit_bytes: u64,
    ) -> Resolution {
        let command = KeyCommand::RecordDepletion(RecordDepletion {
            used_bytes,
            limit_bytes,
        });
        let id = command_id(key_id, &format!("depleted/{version}"));
        let metadata =
            EventMetadata::for_command(id, Actor::new(ActorKind::Reconciler, &self.actor_id));
        match self.ledger.execute(key_id, &command, &metadata).await {
            Ok(outcome) if outcome.recorded.is_empty() => Resolution::Settled,
            Ok(_) => {
                tracing::info!(%key_id, used_bytes, limit_bytes, "the panel disabled the client for its used-up quota; recorded key.depleted");
                Resolution::Recorded
            }
            Err(error) => {
                tracing::warn!(%key_id, %error, "reconcile: could not record key.depleted");
                Resolution::Failed(error.to_string())
            }
        }
    }

    /// The counters of `listed` into the usage view; how many keys were written. A failure
    /// is logged: the counters are an observation the next pass makes again.
    async fn record_usage(&self, location: &PanelLocation, listed: &InboundClients) -> u64 {
        let rows = usage_rows(location.id(), listed);
        match record_usage(self.ledger.store().pool(), &rows).await {
            Ok(written) => written,
            Err(error) => {
                tracing::warn!(location = location.id(), %error, "could not record usage");
                0
            }
        }
    }

    /// One usage pass over every location: lists each panel with its traffic rows, records
    /// the counters in the usage view, and records `key.depleted` for our clients the panel
    /// switched off for a used-up quota. Reads only the keys of such clients from the log,
    /// so it costs one list call per panel and one statement per location.
    pub async fn usage_pass(&self) -> Vec<UsageReport> {
        let mut reports = Vec::new();
        for location in self.panels.iter() {
            let listed = match location.panel().list_with_traffic().await {
                Ok(listed) => listed,
                Err(error) => {
                    tracing::warn!(location = location.id(), %error, "usage pass: cannot list the panel");
                    continue;
                }
            };
            let recorded = self.record_usage(location, &listed).await;
            let mut depleted = 0;
            for client in &listed.clients {
                let used_up = listed
                    .traffic_of(&client.email)
                    .is_some_and(|row| row.quota_used_up());
                if used_up && self.judge_depletion(location, &listed, &client.email).await {
                    depleted += 1;
                }
            }
            reports.push(UsageReport {
                location: location.id().to_owned(),
                recorded,
                depleted,
            });
        }
        reports
    }

    /// Records `key.depleted` for the key of `email` if the panel's `enable: false` is its
    /// quota decision about what the log wants now; true if it was recorded.
    async fn judge_depletion(
        &self,
        location: &PanelLocation,
        listed: &InboundClients,
        email: &str,
    ) -> bool {
        let (Some(row), Some(user)) = (listed.traffic_of(email), our_user(email, location.id()))
        else {
            return false;
        };
        let (Ok(user), Ok(location_id)) = (
            domain::UserId::new(user),
            domain::LocationId::new(location.id()),
        ) else {
            return false;
        };
        let key_id = KeyId::for_user_at(user, &location_id);
        let (state, events) = match self.ledger.load(key_id).await {
            Ok(loaded) => loaded,
            Err(error) => {
                tracing::warn!(%key_id, %error, "usage pass: cannot load the key");
                return false;
            }
        };
        // A quota change still on its way to the panel is the worker's.
        let pending = events.last().is_some_and(|e| {
            e.event_type == EventType::QuotaChanged.as_str()
                && e.recorded_at > stuck_cutoff(self.in_flight_grace)
        });
        let Some(desired) = state.desired_client() else {
            return false;
        };
        if pending {
            return false;
        }
        match judge_panel_decision(&state, &desired, row, OffsetDateTime::now_utc()) {
            Some(PanelDecision::Depleted {
                used_bytes,
                limit_bytes,
            }) => {
                self.deplete(key_id, state.version, used_bytes, limit_bytes)
                    .await
                    == Resolution::Recorded
            }
            Some(PanelDecision::Expired) | None => false,
        }
    }

    /// Records a finding's drift (and its repair); true if it was repaired.
    async fn record(&self, location: &PanelLocation, pass_id: Uuid, finding: &Finding) -> bool {
        let (Some(kind), Some(key_id)) = (finding.kind.drift(), finding.key_id) else {
            if finding.kind != FindingKind::Foreign && finding.key_id.is_none() {
                // An email of ours with no key in the log (an older system's client):
                // there is no stream to record it on.
                tracing::warn!(location = location.id(), email = %finding.email, resolution = ?finding.resolution, "reconcile: client with our email pattern but no key in the log");
            }
            return finding.resolution == Resolution::Repaired;
        };
        let failed = match &finding.resolution {
            Resolution::Repaired => false,
            Resolution::Failed(_) => true,
            Resolution::Reported | Resolution::Settled | Resolution::Recorded => return false,
        };
        if !self.record_detected(key_id, kind, finding, pass_id).await {
            return false;
        }
        if failed {
            tracing::warn!(%key_id, location = location.id(), ?kind, resolution = ?finding.resolution, "reconcile: drift found, repair failed");
            return false;
        }
        let repaired = KeyCommand::RecordDriftRepaired(RecordDriftRepaired { kind });
        let ok = self
            .execute(key_id, &repaired, pass_id, "drift_repaired")
            .await;
        if ok {
            tracing::info!(%key_id, location = location.id(), ?kind, fields = ?finding.fields, "reconcile: drift repaired");
        }
        ok
    }

    /// `key.drift_detected` for the finding; false if it could not be recorded.
    async fn record_detected(
        &self,
        key_id: KeyId,
        kind: DriftKind,
        finding: &Finding,
        pass_id: Uuid,
    ) -> bool {
        let detected = KeyCommand::RecordDrift(RecordDrift {
            kind,
            expected: finding.expected.clone(),
            observed: finding.observed.clone(),
        });
        self.execute(key_id, &detected, pass_id, "drift_detected")
            .await
    }

    async fn execute(
        &self,
        key_id: KeyId,
        command: &KeyCommand,
        pass_id: Uuid,
        what: &str,
    ) -> bool {
        let id = command_id(key_id, &format!("{what}/{pass_id}"));
        let mut metadata =
            EventMetadata::for_command(id, Actor::new(ActorKind::Reconciler, &self.actor_id));
        metadata.correlation_id = pass_id;
        match self.ledger.execute(key_id, command, &metadata).await {
            Ok(_) => true,
            Err(error) => {
                tracing::warn!(%key_id, %error, "reconcile: could not record {what}");
                false
            }
        }
    }
}

/// The findings for one location, and how many keys were left to the worker.
fn compare(
    location: &PanelLocation,
    listed: &InboundClients,
    keys: &[LoggedKey],
    stuck_before: OffsetDateTime,
) -> (Vec<Finding>, usize) {
    let on_panel: HashMap<String, &PanelClient> = listed
        .clients
        .iter()
        .map(|c| (c.email.to_ascii_lowercase(), c))
        .collect();
    let only_client = listed.clients.len() == 1;
    // A client the log wants gone, left disabled because the panel will not delete the
    // inbound's last client, is as good as gone.
    let settled_leftover = |client: &PanelClient| only_client && !client.enable;
    let mut accounted: HashSet<String> = HashSet::with_capacity(keys.len());
    let mut findings = Vec::new();
    let now = OffsetDateTime::now_utc();
    let mut in_flight = 0;
    for key in keys {
        let Some(details) = &key.state.details else {
            continue;
        };
        let email = details.email.to_ascii_lowercase();
        // What is on is what the settings entry *and* the traffic row say.
        let observed = on_panel.get(&email).map(|client| PanelClient {
            enable: listed.effectively_enabled(client),
            ..(*client).clone()
        });
        let observed = observed.as_ref();
        accounted.insert(email);
        let stuck = key.state.phase.awaits_panel();
        let quota_pending = key.quota_changed_last && key.last_event_at > stuck_before;
        if (stuck && key.last_event_at > stuck_before) || quota_pending {
            in_flight += 1;
            continue;
        }
        let finding = |kind, expected, fields| Finding {
            kind,
            email: details.email.clone(),
            key_id: Some(key.key_id),
            version: Some(key.state.version),
            expected,
            observed: observed.map_or(Value::Null, client_json),
            fields,
            stuck,
            depletion: None,
            resolution: Resolution::Reported,
        };
        let findings_before = findings.len();
        let decision = key.state.desired_client().and_then(|desired| {
            let row = listed.traffic_of(&details.email)?;
            observed?;
            judge_panel_decision(&key.state, &desired, row, now)
                .map(|decision| (decision, spec_json(&location.spec_for(&desired))))
        });
        if let Some((decision, expected)) = decision {
            // The panel's own decision, not drift: recorded or left to the scheduler.
            let mut found = match decision {
                PanelDecision::Depleted { .. } => {
                    finding(FindingKind::DepletedOnPanel, expected, vec!["enable"])
                }
                PanelDecision::Expired => {
                    finding(FindingKind::ExpiredOnPanel, expected, vec!["enable"])
                }
            };
            if let PanelDecision::Depleted {
                used_bytes,
                limit_bytes,
            } = decision
            {
                found.depletion = Some((used_bytes, limit_bytes));
            }
            findings.push(found);
            continue;
        }
        match (key.state.desired_client(), observed) {
            (Some(desired), None) => {
                let spec = location.spec_for(&desired);
                findings.push(finding(
                    FindingKind::MissingOnPanel,
                    spec_json(&spec),
                    vec![],
                ));
            }
            (Some(desired), Some(client)) => {
                let spec = location.spec_for(&desired);
                let fields = spec.differences(client);
                if !fields.is_empty() {
                    findings.push(finding(
                        FindingKind::SettingsDiffer,
                        spec_json(&spec),
                        fields,
                    ));
                }
            }
            (None, Some(client)) if !settled_leftover(client) => {
                findings.push(finding(FindingKind::UnknownOnPanel, Value::Null, vec![]));
            }
            (None, _) => {}
        }
        if stuck && findings.len() == findings_before {
            let expected = key.state.desired_client().map_or(Value::Null, |desired| {
                spec_json(&location.spec_for(&desired))
            });
            findings.push(finding(FindingKind::Unacknowledged, expected, vec![]));
        }
    }
    for client in &listed.clients {
        let email = client.email.to_ascii_lowercase();
        if accounted.contains(&email) {
            continue;
        }
        let kind = if is_our_email(&email, location.id()) {
            if settled_leftover(client) {
                continue;
            }
            FindingKind::UnknownOnPanel
        } else {
            FindingKind::Foreign
        };
        findings.push(Finding {
            kind,
            // A foreign email is any text the panel holds; ours pass unchanged.
            email: domain::bounded_text(&client.email, domain::MAX_FOREIGN_TEXT_CHARS),
            key_id: None,
            version: None,
            expected: Value::Null,
            observed: client_json(client),
            fields: vec![],
            stuck: false,
            depletion: None,
            resolution: Resolution::Reported,
        });
    }
    (findings, in_flight)
}

/// The pass's metrics and the location's health record.
fn publish(location: &PanelLocation, report: &ReconcileReport) {
    let now = OffsetDateTime::now_utc();
    for finding in report.drift() {
        let Some(kind) = finding.kind.drift() else {
            continue;
        };
        let labels = [
            ("location", location.id().to_owned()),
            ("kind", drift_label(kind).to_owned()),
        ];
        metrics::counter!("keyledger_reconcile_drift_found_total", &labels).increment(1);
        if finding.resolution == Resolution::Repaired {
            metrics::counter!("keyledger_reconcile_drift_repaired_total", &labels).increment(1);
        }
    }
    metrics::gauge!(
        "keyledger_reconcile_last_pass_timestamp_seconds",
        "location" => location.id().to_owned(),
    )
    .set(now.unix_timestamp() as f64);
    location.record_pass(now, report.drift().count());
}

/// The `kind` label: the name the drift events use.
fn drift_label(kind: DriftKind) -> &'static str {
    match kind {
        DriftKind::MissingOnPanel => "missing_on_panel",
        DriftKind::SettingsDiffer => "settings_differ",
        DriftKind::UnknownOnPanel => "unknown_on_panel",
    }
}

/// Keys whose newest event is older than this have waited too long for the worker.
fn stuck_cutoff(grace: Duration) -> OffsetDateTime {
    let grace = time::Duration::try_from(grace).unwrap_or(time::Duration::MAX);
    OffsetDateTime::now_utc()
        .checked_sub(grace)
        .unwrap_or(OffsetDateTime::UNIX_EPOCH)
}

/// `tg<digits>-<location>`: the emails keyledger gives this location's clients.
fn is_our_email(lowercase_email: &str, location: &str) -> bool {
    our_user(lowercase_email, location).is_some()
}

fn spec_json(spec: &ClientSpec) -> Value {
    json!({
        "id": spec.id, "email": spec.email, "enable": spec.enable, "flow": spec.flow,
        "limitIp": spec.limit_ip, "totalGB": spec.total_bytes,
        "expiryTime": spec.expiry_time_ms, "tgId": spec.tg_id,
    })
}

/// The fields of a panel client we own; never its traffic or other panel data. Its
/// strings are the panel's, so they are cleaned and bounded for reports and events.
fn client_json(client: &PanelClient) -> Value {
    let observed = json!({
        "id": client.id, "email": client.email, "enable": client.enable, "flow": client.flow,
        "limitIp": client.limit_ip, "totalGB": client.total_bytes,
        "expiryTime": client.expiry_time_ms, "tgId": client.tg_id,
    });
    domain::bounded_json(&observed, domain::MAX_FOREIGN_TEXT_CHARS)
}

/// Runs a pass over every location every `interval` until `stop` is cancelled, with the
/// default grace for keys in flight ([`Reconciler::run`] for another).
pub async fn run_reconciler(
    store: EventStore,
    panels: Arc<Panels>,
    interval: Duration,
    stop: CancellationToken,
) {
    Reconciler::new(store, panels).run(interval, stop).await;
}

/// The advisory lock a periodic pass holds: with workers scaled out, one pass at a time
/// lists the panels, instead of one per worker process, each recording the same drift.
const PERIODIC_PASS_LOCK: &str = "keyledger.reconcile-pass";

impl Reconciler {
    /// A full pass, unless another process's periodic pass is under way (then `None`).
    pub async fn reconcile_if_alone(&self) -> Result<Option<PassReport>, ReconcileError> {
        let pool = self.ledger.store().pool();
        let lock = SessionLock::try_acquire(pool, PERIODIC_PASS_LOCK.to_owned())
            .await
            .map_err(|e| ReconcileError::Log(e.into()))?;
        let Some(lock) = lock else {
            return Ok(None);
        };
        let pass = self.reconcile(None, false).await;
        lock.release().await;
        pass.map(Some)
    }

    /// Runs a pass over every location every `interval` until `stop` is cancelled; a
    /// process whose turn finds another pass under way skips it. Between full passes, a
    /// usage pass every usage interval ([`Reconciler::with_usage_interval`]) keeps the
    /// counters fresh (a full pass records them too).
    pub async fn run(self, interval: Duration, stop: CancellationToken) {
        let mut next_full = tokio::time::Instant::now();
        let mut next_usage = next_full + self.usage_interval;
        loop {
            let now = tokio::time::Instant::now();
            if now >= next_full {
                self.periodic_pass().await;
                next_full = now + interval;
                next_usage = now + self.usage_interval;
            } else if now >= next_usage {
                self.periodic_usage_pass().await;
                next_usage = now + self.usage_interval;
            }
            tokio::select! {
                _ = stop.cancelled() => break,
                _ = tokio::time::sleep_until(next_full.min(next_usage)) => {}
            }
        }
        tracing::info!("reconciler stopped");
    }

    async fn periodic_pass(&self) {
        match self.reconcile_if_alone().await {
            Ok(Some(pass)) => {
                for failure in &pass.failures {
                    tracing::warn!(error = %failure, "reconcile pass incomplete");
                }
            }
            Ok(None) => tracing::debug!("another process is reconciling; pass skipped"),
            Err(error) => tracing::warn!(%error, "reconcile pass failed"),
        }
    }

    /// A usage pass, unless another process's is under way.
    async fn periodic_usage_pass(&self) {
        let pool = self.ledger.store().pool();
        let lock = match SessionLock::try_acquire(pool, USAGE_PASS_LOCK.to_owned()).await {
            Ok(Some(lock)) => lock,
            Ok(None) => return,
            Err(error) => {
                tracing::warn!(%error, "usage pass: cannot take its turn");
                return;
            }
        };
        for report in self.usage_pass().await {
            tracing::debug!(location = %report.location, recorded = report.recorded, depleted = report.depleted, "usage pass");
        }
        lock.release().await;
    }
}

/// The advisory lock of a periodic usage pass: one process at a time reads the counters.
const USAGE_PASS_LOCK: &str = "keyledger.usage-pass";

#[cfg(test)]
mod tests {
    use super::is_our_email;

    #[test]
    fn our_emails_name_a_user_and_this_location() {
        assert!(is_our_email("tg42-ams", "ams"));
        assert!(is_our_email("tg123456789-de-fra", "de-fra"));
        assert!(!is_our_email("tg42-fra", "ams"));
        assert!(!is_our_email("tg-ams", "ams"));
        assert!(!is_our_email("tgx1-ams", "ams"));
        assert!(!is_our_email("alice@example.org", "ams"));
        assert!(!is_our_email("tg42ams", "ams"));
    }
}
