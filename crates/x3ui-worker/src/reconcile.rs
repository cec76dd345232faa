//! The reconciler: compares every client of a location's inbound with what the log says
//! the location should hold, repairs the differences both ways, and records each one as
//! `key.drift_detected` followed by `key.drift_repaired`.
//!
//! One pass lists each panel once, *then* reads the log, so the log is at least as new as
//! anything the worker had written to the panel before the list; keys still waiting for
//! the worker (provisioning, rotating, revoking) are left to it. Before repairing a key the
//! reconciler reloads it, and a repair that finds the panel already right (the worker got
//! there first) is not recorded as drift. Clients whose email is not one of ours for the
//! location are reported and never touched.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use domain::{DriftKind, KeyCommand, KeyId, KeyState, RecordDrift, RecordDriftRepaired, evolve};
use eventstore::{Actor, ActorKind, EventMetadata, EventStore, KeyLedger, StoreError};
use serde::Serialize;
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use crate::error::PanelError;
use crate::model::{ClientSpec, InboundClients, PanelClient};
use crate::ops::{Absence, Ensured};
use crate::panels::{Location, Panels};
use crate::worker::command_id;

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
}

impl FindingKind {
    fn drift(self) -> Option<DriftKind> {
        match self {
            Self::MissingOnPanel => Some(DriftKind::MissingOnPanel),
            Self::SettingsDiffer => Some(DriftKind::SettingsDiffer),
            Self::UnknownOnPanel => Some(DriftKind::UnknownOnPanel),
            Self::Foreign => None,
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
}

#[derive(Debug, Clone, Serialize)]
pub struct Finding {
    pub kind: FindingKind,
    pub email: String,
    /// The key behind the email, when the log has one.
    pub key_id: Option<KeyId>,
    /// The client the log wants (null: none).
    pub expected: Value,
    /// The client the panel holds (null: none).
    pub observed: Value,
    /// For `settings_differ`: the fields that differ.
    pub fields: Vec<&'static str>,
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
    /// Keys waiting for the worker, left to it.
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
}

impl ReconcileReport {
    /// Findings that are drift (ours), not foreign clients.
    pub fn drift(&self) -> impl Iterator<Item = &Finding> {
        self.findings
            .iter()
            .filter(|f| f.kind != FindingKind::Foreign)
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

/// Runs reconcile passes over the configured locations.
#[derive(Debug, Clone)]
pub struct Reconciler {
    ledger: KeyLedger,
    panels: Arc<Panels>,
    actor_id: String,
}

/// A key as the log has it, with the client the panel should hold for it.
struct LoggedKey {
    key_id: KeyId,
    state: KeyState,
}

impl Reconciler {
    pub fn new(store: EventStore, panels: Arc<Panels>) -> Self {
        Self {
            ledger: KeyLedger::new(store),
            panels,
            actor_id: "reconciler".to_owned(),
        }
    }

    /// One pass over `only` or every location. With `dry_run`, nothing is changed or
    /// recorded: the report says what would be.
    pub async fn reconcile(
        &self,
        only: Option<&str>,
        dry_run: bool,
    ) -> Result<PassReport, ReconcileError> {
        let locations: Vec<&Location> = match only {
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
            match location.panel().list_clients().await {
                Ok(clients) => listed.push((location, clients, started.elapsed())),
                Err(error) => {
                    tracing::warn!(location = location.id(), %error, "reconcile: cannot list the panel's clients");
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
            let (mut findings, in_flight) = compare(location, &clients, &location_keys);
            let compared = started.elapsed();
            let started = Instant::now();
            let repaired = if dry_run {
                0
            } else {
                self.repair(location, pass_id, &mut findings).await
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
            };
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
        let mut states: HashMap<Uuid, KeyState> = HashMap::new();
        for event in &events {
            let decoded = match event.key_event() {
                Ok(decoded) => decoded,
                Err(error) => {
                    tracing::warn!(key_id = %event.stream_id, position = event.position, %error, "reconcile: skipping an event that is not a key event");
                    continue;
                }
            };
            let state = states.entry(event.stream_id).or_default();
            *state = evolve(std::mem::take(state), &decoded);
        }
        let mut by_location: HashMap<String, Vec<LoggedKey>> = HashMap::new();
        for (stream_id, state) in states {
            if let Some(details) = &state.details {
                by_location
                    .entry(details.location.to_string())
                    .or_default()
                    .push(LoggedKey {
                        key_id: KeyId::from_uuid(stream_id),
                        state,
                    });
            }
        }
        Ok(by_location)
    }

    /// Repairs the findings and records them; returns how many were repaired.
    async fn repair(&self, location: &Location, pass_id: Uuid, findings: &mut [Finding]) -> usize {
        // Clients to add or update go to the panel together, one addClient for all.
        let mut to_ensure: Vec<(usize, ClientSpec)> = Vec::new();
        for (i, finding) in findings.iter_mut().enumerate() {
            finding.resolution = Resolution::Reported;
            match finding.kind {
                FindingKind::Foreign => {}
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
        let mut repaired = 0;
        for finding in findings.iter() {
            if self.record(location, pass_id, finding).await {
                repaired += 1;
            }
        }
        repaired
    }

    /// The spec to write for a missing or differing client, if the key still wants it
    /// after a fresh look at the log.
    async fn still_wanted(&self, location: &Location, finding: &Finding) -> Option<ClientSpec> {
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

    /// Records a finding's drift (and its repair); true if it was repaired.
    async fn record(&self, location: &Location, pass_id: Uuid, finding: &Finding) -> bool {
        let (Some(kind), Some(key_id)) = (finding.kind.drift(), finding.key_id) else {
            if finding.kind != FindingKind::Foreign {
                // An email of ours with no key in the log (an older system's client):
                // there is no stream to record it on.
                tracing::warn!(location = location.id(), email = %finding.email, resolution = ?finding.resolution, "reconcile: client with our email pattern but no key in the log");
            }
            return finding.resolution == Resolution::Repaired;
        };
        let failed = match &finding.resolution {
            Resolution::Repaired => false,
            Resolution::Failed(_) => true,
            Resolution::Reported | Resolution::Settled => return false,
        };
        let detected = KeyCommand::RecordDrift(RecordDrift {
            kind,
            expected: finding.expected.clone(),
            observed: finding.observed.clone(),
        });
        if !self
            .execute(key_id, &detected, pass_id, "drift_detected")
            .await
        {
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
    location: &Location,
    listed: &InboundClients,
    keys: &[LoggedKey],
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
    let mut in_flight = 0;
    for key in keys {
        let Some(details) = &key.state.details else {
            continue;
        };
        let email = details.email.to_ascii_lowercase();
        let observed = on_panel.get(&email).copied();
        accounted.insert(email);
        if key.state.phase.awaits_panel() {
            in_flight += 1;
            continue;
        }
        let finding = |kind, expected, fields| Finding {
            kind,
            email: details.email.clone(),
            key_id: Some(key.key_id),
            expected,
            observed: observed.map_or(Value::Null, client_json),
            fields,
            resolution: Resolution::Reported,
        };
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
            email: client.email.clone(),
            key_id: None,
            expected: Value::Null,
            observed: client_json(client),
            fields: vec![],
            resolution: Resolution::Reported,
        });
    }
    (findings, in_flight)
}

/// `tg<digits>-<location>`: the emails keyledger gives this location's clients.
fn is_our_email(lowercase_email: &str, location: &str) -> bool {
    lowercase_email
        .strip_prefix("tg")
        .and_then(|rest| rest.strip_suffix(location))
        .and_then(|rest| rest.strip_suffix('-'))
        .is_some_and(|user| !user.is_empty() && user.bytes().all(|b| b.is_ascii_digit()))
}

fn spec_json(spec: &ClientSpec) -> Value {
    json!({
        "id": spec.id, "email": spec.email, "enable": spec.enable, "flow": spec.flow,
        "limitIp": spec.limit_ip, "totalGB": spec.total_bytes,
        "expiryTime": spec.expiry_time_ms, "tgId": spec.tg_id,
    })
}

/// The fields of a panel client we own; never its traffic or other panel data.
fn client_json(client: &PanelClient) -> Value {
    json!({
        "id": client.id, "email": client.email, "enable": client.enable, "flow": client.flow,
        "limitIp": client.limit_ip, "totalGB": client.total_bytes,
        "expiryTime": client.expiry_time_ms, "tgId": client.tg_id,
    })
}

/// Runs a pass over every location every `interval` until `stop` is cancelled.
pub async fn run_reconciler(
    store: EventStore,
    panels: Arc<Panels>,
    interval: Duration,
    stop: CancellationToken,
) {
    let reconciler = Reconciler::new(store, panels);
    loop {
        match reconciler.reconcile(None, false).await {
            Ok(pass) => {
                for failure in &pass.failures {
                    tracing::warn!(error = %failure, "reconcile pass incomplete");
                }
            }
            Err(error) => tracing::warn!(%error, "reconcile pass failed"),
        }
        tokio::select! {
            _ = stop.cancelled() => break,
            _ = tokio::time::sleep(interval) => {}
        }
    }
    tracing::info!("reconciler stopped");
}

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
