//! The simulated panel's data: inbounds whose `settings` is a JSON string, as the real
//! panel stores it, sessions, and the counters tests read.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde_json::{Map, Value, json};

use super::traffic::TrafficRow;
use super::{Faults, SimConfig};

/// What the panel did so far, for tests to assert on.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SimStats {
    pub requests: u64,
    pub logins: u64,
    pub failed_logins: u64,
    /// addClient / clients/add requests that reached a handler.
    pub add_calls: u64,
    pub injected_errors: u64,
    /// Writes that overwrote a write they had not seen (lost concurrent writes).
    pub lost_writes: u64,
    /// Connections closed without an answer by the drop faults.
    pub dropped_connections: u64,
    /// Passes of the panel's traffic job, timed or on demand.
    pub traffic_job_runs: u64,
    /// Xray restarts: after the traffic job disabled clients (v2.9.4+), or on demand.
    pub xray_restarts: u64,
}

#[derive(Default)]
pub(crate) struct Counters {
    pub requests: AtomicU64,
    pub logins: AtomicU64,
    pub failed_logins: AtomicU64,
    pub add_calls: AtomicU64,
    pub injected_errors: AtomicU64,
    pub lost_writes: AtomicU64,
    pub dropped_connections: AtomicU64,
    pub traffic_job_runs: AtomicU64,
    pub xray_restarts: AtomicU64,
}

impl Counters {
    pub(crate) fn snapshot(&self) -> SimStats {
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        SimStats {
            requests: get(&self.requests),
            logins: get(&self.logins),
            failed_logins: get(&self.failed_logins),
            add_calls: get(&self.add_calls),
            injected_errors: get(&self.injected_errors),
            lost_writes: get(&self.lost_writes),
            dropped_connections: get(&self.dropped_connections),
            traffic_job_runs: get(&self.traffic_job_runs),
            xray_restarts: get(&self.xray_restarts),
        }
    }

    pub(crate) fn bump(counter: &AtomicU64) {
        counter.fetch_add(1, Ordering::Relaxed);
    }
}

pub(crate) struct Shared {
    pub config: SimConfig,
    pub stats: Counters,
    data: Mutex<Data>,
    faults: Mutex<Faults>,
    dice: Mutex<fastrand::Rng>,
    /// The traffic job's passes so far, bumped while the data is still locked, so a
    /// waiter that saw a change knows the pass saw everything done before it waited.
    pub passes: tokio::sync::watch::Sender<u64>,
    /// The newest requests as `METHOD path?query`, oldest first.
    requests: Mutex<VecDeque<String>>,
}

/// Requests kept for [`Shared::requests_seen`]: enough for any test, bounded for a
/// simulator that runs for days (`keyledger panel-sim`).
const KEPT_REQUESTS: usize = 10_000;

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    // Handlers never leave data half-written across a panic point.
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

impl Shared {
    pub(crate) fn new(config: SimConfig) -> Self {
        Self {
            dice: Mutex::new(fastrand::Rng::with_seed(config.seed)),
            config,
            stats: Counters::default(),
            data: Mutex::new(Data::default()),
            faults: Mutex::new(Faults::default()),
            passes: tokio::sync::watch::Sender::new(0),
            requests: Mutex::new(VecDeque::new()),
        }
    }

    /// Notes a request as it arrived, before any fault or route sees it.
    pub(crate) fn record_request(&self, method: &axum::http::Method, uri: &axum::http::Uri) {
        let line = match uri.path_and_query() {
            Some(path) => format!("{method} {path}"),
            None => format!("{method} {uri}"),
        };
        let mut requests = lock(&self.requests);
        if requests.len() == KEPT_REQUESTS {
            requests.pop_front();
        }
        requests.push_back(line);
    }

    pub(crate) fn requests_seen(&self) -> Vec<String> {
        lock(&self.requests).iter().cloned().collect()
    }

    pub(crate) fn data(&self) -> MutexGuard<'_, Data> {
        lock(&self.data)
    }

    pub(crate) fn faults(&self) -> MutexGuard<'_, Faults> {
        lock(&self.faults)
    }

    pub(crate) fn roll(&self, probability: f64) -> bool {
        probability > 0.0 && lock(&self.dice).f64() < probability
    }

    pub(crate) fn random_token(&self) -> String {
        let mut dice = lock(&self.dice);
        (0..32).map(|_| dice.alphanumeric()).collect()
    }

    /// A read-modify-write of one inbound's clients, as the panel does it: read the
    /// settings, change them, write them back whole. With the lost-write fault on, the
    /// read and the write are apart in time and nothing stops another write in between.
    pub(crate) async fn write_clients<T>(
        &self,
        inbound_id: i64,
        change: impl FnOnce(&Data, &mut Vec<Map<String, Value>>) -> Result<T, String>,
    ) -> Result<T, String> {
        let window = self.faults().lost_write_window;
        let Some(window) = window else {
            let mut data = self.data();
            let (clients, version) = data.read_for_write(inbound_id)?;
            let (out, clients) = apply(&data, clients, change)?;
            data.store(inbound_id, clients, version);
            return Ok(out);
        };
        let (out, clients, version) = {
            let data = self.data();
            let (clients, version) = data.read_for_write(inbound_id)?;
            let (out, clients) = apply(&data, clients, change)?;
            (out, clients, version)
        };
        tokio::time::sleep(window).await;
        if !self.data().store(inbound_id, clients, version) {
            Counters::bump(&self.stats.lost_writes);
        }
        Ok(out)
    }
}

fn apply<T>(
    data: &Data,
    mut clients: Vec<Map<String, Value>>,
    change: impl FnOnce(&Data, &mut Vec<Map<String, Value>>) -> Result<T, String>,
) -> Result<(T, Vec<Map<String, Value>>), String> {
    let out = change(data, &mut clients)?;
    Ok((out, clients))
}

pub(crate) struct SimInbound {
    pub id: i64,
    pub remark: String,
    pub port: u16,
    /// A JSON string, re-serialised sorted and pretty on every write.
    pub settings: String,
    pub stream_settings: String,
    pub sniffing: String,
    /// Bumped on every write; a write based on an older version lost someone's change.
    pub version: u64,
}

pub(crate) struct SimSession {
    pub csrf: String,
    pub logged_in_at: Option<Instant>,
}

#[derive(Default)]
pub(crate) struct Data {
    pub inbounds: BTreeMap<i64, SimInbound>,
    pub sessions: HashMap<String, SimSession>,
    pub login_failures: Vec<Instant>,
    /// The clients API's numeric record ids, by lower-case email.
    pub record_ids: HashMap<String, i64>,
    /// The `client_traffics` table, in id order.
    pub traffic: Vec<TrafficRow>,
    pub last_traffic_id: i64,
    /// Bytes Xray counted since the traffic job's last pass, by lower-case email.
    pub xray_counted: HashMap<String, (i64, i64)>,
    /// The emails that moved traffic in the job's last pass; `None` when none did or
    /// Xray restarted since (the panel answers `null`, not `[]`).
    pub onlines: Option<Vec<String>>,
}

/// A client as stored inside an inbound's settings.
pub(crate) type Client = Map<String, Value>;

pub(crate) fn email_of(client: &Map<String, Value>) -> &str {
    client.get("email").and_then(Value::as_str).unwrap_or("")
}

pub(crate) fn id_of(client: &Map<String, Value>) -> &str {
    client.get("id").and_then(Value::as_str).unwrap_or("")
}

pub(crate) fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

/// Go's error text for `common.NewError(a, b)`: the parts joined by a space, with a
/// newline at the end (fmt.Sprintln).
pub(crate) fn go_error(parts: &[&str]) -> String {
    format!("{}\n", parts.join(" "))
}

fn settings_text(clients: &[Map<String, Value>], rest: &Map<String, Value>) -> String {
    let mut settings = rest.clone();
    settings.insert(
        "clients".into(),
        Value::Array(clients.iter().cloned().map(Value::Object).collect()),
    );
    // serde_json's map is ordered by key, so this is the panel's sorted, indented form.
    serde_json::to_string_pretty(&Value::Object(settings)).unwrap_or_default()
}

impl Data {
    pub(crate) fn add_inbound(&mut self, remark: &str, port: u16) -> i64 {
        let stream = json!({
            "network": "tcp",
            "security": "reality",
            "externalProxy": [],
            "realitySettings": {
                "show": false, "xver": 0, "dest": "www.example.com:443",
                "serverNames": ["www.example.com", "example.com"],
                "privateKey": "sim-private-key", "shortIds": ["6ba85179e30d4fc2", "2f"],
                "settings": {"publicKey": "sim-public-key", "fingerprint": "chrome", "spiderX": "/"}
            },
            "tcpSettings": {"acceptProxyProtocol": false, "header": {"type": "none"}}
        });
        self.add_inbound_with_stream(remark, port, &stream)
    }

    /// Adds a VLESS inbound with the given `streamSettings`, no clients; returns its id.
    pub(crate) fn add_inbound_with_stream(
        &mut self,
        remark: &str,
        port: u16,
        stream: &Value,
    ) -> i64 {
        let id = self.inbounds.keys().next_back().map_or(1, |last| last + 1);
        let rest = json!({"decryption": "none", "encryption": "none", "fallbacks": []});
        let rest = rest.as_object().cloned().unwrap_or_default();
        self.inbounds.insert(
            id,
            SimInbound {
                id,
                remark: remark.to_owned(),
                port,
                settings: settings_text(&[], &rest),
                stream_settings: serde_json::to_string_pretty(stream).unwrap_or_default(),
                sniffing: r#"{"enabled":false,"destOverride":["http","tls"]}"#.into(),
                version: 0,
            },
        );
        id
    }

    pub(crate) fn inbound_ids(&self) -> Vec<i64> {
        self.inbounds.keys().copied().collect()
    }

    fn parsed(&self, inbound_id: i64) -> Option<(Vec<Client>, Client)> {
        let inbound = self.inbounds.get(&inbound_id)?;
        let Ok(Value::Object(mut settings)) = serde_json::from_str(&inbound.settings) else {
            return None;
        };
        let clients = match settings.remove("clients") {
            Some(Value::Array(list)) => list
                .into_iter()
                .filter_map(|c| match c {
                    Value::Object(map) => Some(map),
                    _ => None,
                })
                .collect(),
            _ => Vec::new(),
        };
        Some((clients, settings))
    }

    pub(crate) fn clients(&self, inbound_id: i64) -> Option<Vec<Map<String, Value>>> {
        self.parsed(inbound_id).map(|(clients, _)| clients)
    }

    pub(crate) fn settings_text(&self, inbound_id: i64) -> Option<String> {
        self.inbounds.get(&inbound_id).map(|i| i.settings.clone())
    }

    /// Every client of every inbound, with the inbound it sits in.
    pub(crate) fn all_clients(&self) -> Vec<(i64, Map<String, Value>)> {
        self.inbound_ids()
            .into_iter()
            .flat_map(|id| {
                self.clients(id)
                    .unwrap_or_default()
                    .into_iter()
                    .map(move |c| (id, c))
            })
            .collect()
    }

    /// The panel's duplicate check: against every client of every inbound,
    /// case-insensitively, minus the client being replaced.
    pub(crate) fn email_taken(&self, email: &str, except: Option<(i64, &str)>) -> bool {
        self.all_clients().iter().any(|(inbound, c)| {
            email_of(c).eq_ignore_ascii_case(email)
                && except.is_none_or(|(ex_inbound, ex_id)| {
                    !(*inbound == ex_inbound && id_of(c) == ex_id)
                })
        })
    }

    fn read_for_write(&self, inbound_id: i64) -> Result<(Vec<Map<String, Value>>, u64), String> {
        let inbound = self
            .inbounds
            .get(&inbound_id)
            .ok_or_else(|| "record not found".to_owned())?;
        let clients = self.clients(inbound_id).unwrap_or_default();
        Ok((clients, inbound.version))
    }

    /// Writes the clients back; false if someone else wrote since `seen_version`.
    fn store(
        &mut self,
        inbound_id: i64,
        clients: Vec<Map<String, Value>>,
        seen_version: u64,
    ) -> bool {
        let rest = self
            .parsed(inbound_id)
            .map(|(_, rest)| rest)
            .unwrap_or_default();
        let Some(inbound) = self.inbounds.get_mut(&inbound_id) else {
            return true;
        };
        let clean = inbound.version == seen_version;
        inbound.settings = settings_text(&clients, &rest);
        inbound.version += 1;
        clean
    }

    /// A direct edit, as through the panel's UI or database.
    pub(crate) fn edit_clients(
        &mut self,
        inbound_id: i64,
        edit: impl FnOnce(&mut Vec<Map<String, Value>>),
    ) {
        if let Some((mut clients, _)) = self.parsed(inbound_id) {
            let version = self.inbounds.get(&inbound_id).map_or(0, |i| i.version);
            edit(&mut clients);
            self.store(inbound_id, clients, version);
        }
    }

    pub(crate) fn record_id(&mut self, email: &str) -> i64 {
        let next = i64::try_from(self.record_ids.len()).unwrap_or(i64::MAX - 1) + 1;
        *self
            .record_ids
            .entry(email.to_ascii_lowercase())
            .or_insert(next)
    }

    /// Five failed logins within five minutes block logins for fifteen minutes.
    pub(crate) fn login_blocked(&mut self) -> bool {
        let now = Instant::now();
        self.login_failures
            .retain(|at| now.duration_since(*at) < Duration::from_secs(15 * 60));
        let recent = self
            .login_failures
            .iter()
            .filter(|at| now.duration_since(**at) < Duration::from_secs(5 * 60))
            .count();
        recent >= 5
    }
}
