//! A stand-in 3x-ui panel: an HTTP server on 127.0.0.1 that answers like the real panel
//! (docs/panel.md), quirks included, for tests and for `keyledger demo`. Faults can be
//! switched on at run time, and a [`SimHandle`] reads and edits the panel's data
//! directly, the way an admin clicking in the panel's UI would behind our back.

mod conn;
mod routes;
mod state;
mod traffic;

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use serde_json::{Map, Value};
use tokio::net::TcpListener;
use tokio::sync::{Mutex, oneshot};
use tokio::task::JoinHandle;
use url::Url;

use state::Shared;
pub use state::SimStats;
pub use traffic::{TrafficPass, TrafficRow};
use x3ui_worker::{ApiKind, Credentials, PanelConfig, Secret};

/// Which route family the simulated panel serves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Flavour {
    /// `/panel/api/inbounds/*` client routes, settings as JSON strings (v2.x–v3.0).
    Legacy,
    /// `/panel/api/clients/*`, settings as objects, no per-inbound client routes (v3.1+).
    Clients,
}

/// How an API call without a valid session is answered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Unauthenticated {
    /// v1.5 – v2.8.3: 401 JSON with `X-Requested-With: XMLHttpRequest`, else a 307.
    Status401OrRedirect,
    /// v2.8.4 – v3.0: 404 with an empty body.
    NotFound,
    /// v3.1+: 401 empty with the XHR header, else 404.
    Status401OrNotFound,
}

/// A simulated panel's fixed behaviour: its version's quirks and its credentials.
#[derive(Debug, Clone)]
pub struct SimConfig {
    /// The web base path, starting and ending with `/`.
    pub base_path: String,
    pub username: String,
    pub password: String,
    /// Accepted as `Authorization: Bearer`, when set.
    pub api_token: Option<String>,
    pub flavour: Flavour,
    /// v3.0+: `GET csrf-token` and `X-CSRF-Token` on every POST, else 403.
    pub csrf: bool,
    pub unauthenticated: Unauthenticated,
    /// v2.6 – v2.9.3 answer success for delClient of an unknown UUID.
    pub unknown_delete_succeeds: bool,
    /// v3.1+ lets the last client of an inbound go; older panels refuse.
    pub last_client_deletable: bool,
    /// Seeds the fault dice, so a failing test can be replayed.
    pub seed: u64,
    /// How often the panel's traffic job runs: 10 s before v3.0, 5 s from v3.0. `None`:
    /// only when asked ([`SimHandle::run_traffic_job`]).
    pub traffic_job_period: Option<Duration>,
    /// v2.9.4+: the job disables a depleted or expired client in the inbound's settings
    /// too (`"enable": false`); before, only its traffic row (`clientStats`) shows it.
    pub disable_sets_settings_flag: bool,
    /// v2.9.4+ (`restartXrayOnClientDisable`, on by default): the job restarts Xray after
    /// disabling clients, which empties `onlines`.
    pub restart_xray_on_disable: bool,
}

impl SimConfig {
    /// v2.6 – v2.8.3: 401/307 without a session, unknown deletes succeed, and the
    /// traffic job disables clients in their traffic rows only.
    pub fn v2_6() -> Self {
        Self {
            unauthenticated: Unauthenticated::Status401OrRedirect,
            unknown_delete_succeeds: true,
            ..Self::v2_9()
        }
        .with_disable_before_v2_9_4()
    }

    /// v2.9.4: the most common panel; 404 without a session.
    pub fn v2_9() -> Self {
        Self {
            base_path: "/sim-base-path-0123/".into(),
            username: "admin".into(),
            password: "sim-password".into(),
            api_token: None,
            flavour: Flavour::Legacy,
            csrf: false,
            unauthenticated: Unauthenticated::NotFound,
            unknown_delete_succeeds: false,
            last_client_deletable: false,
            seed: 7,
            traffic_job_period: Some(Duration::from_secs(10)),
            disable_sets_settings_flag: true,
            restart_xray_on_disable: true,
        }
    }

    /// v3.0: CSRF tokens and Bearer API tokens; the traffic job every 5 s.
    pub fn v3_0() -> Self {
        Self {
            csrf: true,
            api_token: Some("sim-api-token".into()),
            traffic_job_period: Some(Duration::from_secs(5)),
            ..Self::v2_9()
        }
    }

    /// v3.1+: the clients API.
    pub fn v3_1() -> Self {
        Self {
            flavour: Flavour::Clients,
            unauthenticated: Unauthenticated::Status401OrNotFound,
            last_client_deletable: true,
            ..Self::v3_0()
        }
    }
}

impl SimConfig {
    /// The traffic job before v2.9.4: a depleted or expired client is disabled in its
    /// traffic row only (its settings entry keeps `"enable": true`), Xray not restarted.
    pub fn with_disable_before_v2_9_4(self) -> Self {
        Self {
            disable_sets_settings_flag: false,
            restart_xray_on_disable: false,
            ..self
        }
    }

    /// The traffic job from v2.9.4: disabled in the settings too, then Xray restarted.
    pub fn with_disable_from_v2_9_4(self) -> Self {
        Self {
            disable_sets_settings_flag: true,
            restart_xray_on_disable: true,
            ..self
        }
    }

    /// The traffic job's period; `None` runs it only on demand.
    pub fn with_traffic_job_period(self, period: Option<Duration>) -> Self {
        Self {
            traffic_job_period: period,
            ..self
        }
    }
}

impl Default for SimConfig {
    fn default() -> Self {
        Self::v2_9()
    }
}

/// How the panel looks when it is down.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DownMode {
    /// The listener is closed: connection refused.
    Refused,
    /// A reverse proxy in front answers 502.
    BadGateway,
}

/// Switchable faults; all off by default.
#[derive(Debug, Clone, Default)]
pub struct Faults {
    /// Fraction (0..=1) of API calls answered with an empty HTTP 500.
    pub error_rate: f64,
    /// Added before every answer.
    pub latency: Duration,
    /// Sessions die this long after login (the panel's `sessionMaxAge`); default 360 min.
    pub session_max_age: Option<Duration>,
    /// Writes read the inbound, wait this long, then write it back whole, like the
    /// panel's lock-free read-modify-write: a concurrent write in between is lost.
    pub lost_write_window: Option<Duration>,
    /// Fraction (0..=1) of requests whose connection is closed without an answer.
    pub drop_rate: f64,
    /// The next this many requests have their connection closed without an answer.
    pub drop_next: u32,
    /// Drops hit the connection only after the panel handled the request: the write
    /// happened, its answer is lost. Otherwise the request is dropped unhandled.
    pub drop_after_handling: bool,
    /// Drops hit only POST requests (the panel's writes), not reads or the login page.
    pub drop_writes_only: bool,
    /// Every write (a POST under `/panel/api/`) is refused, HTTP 200 `success: false`,
    /// with this `msg`, however long or strange: a broken or hostile panel's text.
    pub refusal_msg: Option<String>,
    pub(crate) bad_gateway: bool,
}

struct Running {
    stop: oneshot::Sender<()>,
    task: JoinHandle<io::Result<()>>,
}

/// A running simulated panel. Dropping it stops the server.
pub struct PanelSimulator {
    addr: SocketAddr,
    handle: SimHandle,
    running: Mutex<Option<Running>>,
    traffic_job: Option<JoinHandle<()>>,
}

impl PanelSimulator {
    /// Starts a panel on 127.0.0.1 with one VLESS + reality inbound (id 1, remark `ams`,
    /// port 443), no clients.
    pub async fn start(config: SimConfig) -> io::Result<Self> {
        Self::start_on(SocketAddr::from(([127, 0, 0, 1], 0)), config, "ams", 443).await
    }

    /// Starts a panel listening on `addr` (port 0: any free port) with one VLESS +
    /// reality inbound (id 1) named `remark` on `inbound_port`, no clients.
    pub async fn start_on(
        addr: SocketAddr,
        config: SimConfig,
        remark: &str,
        inbound_port: u16,
    ) -> io::Result<Self> {
        let listener = TcpListener::bind(addr).await?;
        let addr = listener.local_addr()?;
        let handle = SimHandle {
            shared: Arc::new(Shared::new(config)),
        };
        handle.add_inbound(remark, inbound_port);
        let running = serve(listener, &handle);
        let traffic_job = handle
            .shared
            .config
            .traffic_job_period
            .map(|period| tokio::spawn(traffic_job(handle.clone(), period)));
        Ok(Self {
            addr,
            handle,
            running: Mutex::new(Some(running)),
            traffic_job,
        })
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The panel URL including its web base path, as an operator would configure it.
    pub fn base_url(&self) -> Url {
        let text = format!(
            "http://{}{}",
            self.addr, self.handle.shared.config.base_path
        );
        Url::parse(&text).unwrap_or_else(|e| unreachable!("{text} is a valid URL: {e}"))
    }

    /// A client configuration that logs in with the panel's username and password.
    pub fn panel_config(&self, location: &str, inbound_id: i64) -> PanelConfig {
        let config = &self.handle.shared.config;
        let api = match config.flavour {
            Flavour::Legacy => ApiKind::Legacy,
            Flavour::Clients => ApiKind::Clients,
        };
        let credentials = Credentials::Password {
            username: config.username.clone(),
            password: Secret::new(config.password.clone()),
        };
        PanelConfig::new(location, self.base_url(), credentials, inbound_id)
            .with_api(api)
            .with_timeouts(Duration::from_secs(2), Duration::from_secs(5))
    }

    pub fn handle(&self) -> SimHandle {
        self.handle.clone()
    }

    /// Takes the panel down; in-flight answers still complete.
    pub async fn go_down(&self, mode: DownMode) -> io::Result<()> {
        match mode {
            DownMode::BadGateway => {
                self.handle.update_faults(|f| f.bad_gateway = true);
                Ok(())
            }
            DownMode::Refused => {
                let running = self.running.lock().await.take();
                if let Some(Running { stop, task }) = running {
                    // The server may have stopped already; then there is nobody to tell.
                    let _ = stop.send(());
                    task.await.map_err(io::Error::other)??;
                }
                Ok(())
            }
        }
    }

    /// Brings the panel back on the same address, with its data as it was.
    pub async fn come_up(&self) -> io::Result<()> {
        self.handle.update_faults(|f| f.bad_gateway = false);
        let mut running = self.running.lock().await;
        if running.is_none() {
            let listener = TcpListener::bind(self.addr).await?;
            *running = Some(serve(listener, &self.handle));
        }
        Ok(())
    }
}

impl Drop for PanelSimulator {
    fn drop(&mut self) {
        if let Some(running) = self.running.get_mut().take() {
            running.task.abort();
        }
        if let Some(job) = self.traffic_job.take() {
            job.abort();
        }
    }
}

/// The panel's cron entry for the traffic job. It runs while the panel's web server is
/// down too: that is a proxy or the listener, not the panel process.
async fn traffic_job(handle: SimHandle, period: Duration) {
    let mut ticks = tokio::time::interval(period.max(Duration::from_millis(1)));
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    // The first tick is immediate; the panel's first pass comes one period after start.
    ticks.tick().await;
    loop {
        ticks.tick().await;
        handle.run_traffic_job();
    }
}

fn serve(listener: TcpListener, handle: &SimHandle) -> Running {
    let (stop, stopped) = oneshot::channel::<()>();
    let app = routes::router(handle.shared.clone())
        .into_make_service_with_connect_info::<conn::ConnectionCutter>();
    let task = tokio::spawn(async move {
        axum::serve(conn::SimListener(listener), app)
            .with_graceful_shutdown(async {
                // A dropped sender also means "stop".
                let _ = stopped.await;
            })
            .await
    });
    Running { stop, task }
}

/// Direct access to the simulated panel's data and faults.
#[derive(Clone)]
pub struct SimHandle {
    shared: Arc<Shared>,
}

impl std::fmt::Debug for SimHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SimHandle").finish_non_exhaustive()
    }
}

impl SimHandle {
    /// Adds a VLESS + tcp + reality inbound with no clients; returns its id.
    pub fn add_inbound(&self, remark: &str, port: u16) -> i64 {
        self.shared.data().add_inbound(remark, port)
    }

    /// Adds a VLESS inbound with the given `streamSettings` (tls, ws, a real REALITY key
    /// pair…) and no clients; returns its id.
    pub fn add_inbound_with_stream(&self, remark: &str, port: u16, stream: &Value) -> i64 {
        self.shared
            .data()
            .add_inbound_with_stream(remark, port, stream)
    }

    /// The clients of an inbound, as stored in its settings.
    pub fn clients(&self, inbound_id: i64) -> Vec<Map<String, Value>> {
        self.shared.data().clients(inbound_id).unwrap_or_default()
    }

    /// The client with this email (case-insensitive) in any inbound.
    pub fn client(&self, email: &str) -> Option<Map<String, Value>> {
        let data = self.shared.data();
        data.inbound_ids()
            .into_iter()
            .flat_map(|id| data.clients(id).unwrap_or_default())
            .find(|c| state::email_of(c).eq_ignore_ascii_case(email))
    }

    /// The inbound's raw `settings` text, exactly as stored.
    pub fn settings_text(&self, inbound_id: i64) -> Option<String> {
        self.shared.data().settings_text(inbound_id)
    }

    /// Puts a client straight into an inbound, bypassing every check. Its traffic row is
    /// created as the panel's UI would.
    pub fn insert_client(&self, inbound_id: i64, client: Map<String, Value>) {
        self.insert_clients(inbound_id, vec![client]);
    }

    /// Puts many clients straight into an inbound at once, bypassing every check (one
    /// rewrite of the inbound's settings, however many clients), with their traffic rows.
    pub fn insert_clients(&self, inbound_id: i64, new: Vec<Map<String, Value>>) {
        let mut data = self.shared.data();
        if !data.inbounds.contains_key(&inbound_id) {
            return;
        }
        for client in &new {
            data.add_traffic_row(inbound_id, client);
        }
        data.edit_clients(inbound_id, |clients| clients.extend(new));
    }

    /// Removes a client behind our back, traffic row included; true if it was there.
    pub fn remove_client(&self, email: &str) -> bool {
        self.edit_client(email, |_| false)
    }

    /// Changes a client behind our back; true if it was there. Its traffic row follows,
    /// as after an updateClient: new fields, counters kept.
    pub fn modify_client(&self, email: &str, change: impl Fn(&mut Map<String, Value>)) -> bool {
        self.edit_client(email, |client| {
            change(client);
            true
        })
    }

    /// `keep` sees each matching client and says whether it stays.
    fn edit_client(&self, email: &str, keep: impl Fn(&mut Map<String, Value>) -> bool) -> bool {
        let mut data = self.shared.data();
        // Each matching client as it ended up: `None` when it went.
        let mut edited: Vec<Option<Map<String, Value>>> = Vec::new();
        for id in data.inbound_ids() {
            data.edit_clients(id, |clients| {
                clients.retain_mut(|c| {
                    if !state::email_of(c).eq_ignore_ascii_case(email) {
                        return true;
                    }
                    let stays = keep(c);
                    edited.push(stays.then(|| c.clone()));
                    stays
                });
            });
        }
        for client in &edited {
            match client {
                Some(client) => data.update_traffic_row(email, client),
                None => data.remove_traffic_row(email),
            }
        }
        !edited.is_empty()
    }

    /// Xray counts `up` and `down` bytes for the client with this email (any case). The
    /// traffic job adds them to its row at its next pass, which also marks the client
    /// online (`onlines`) and sets its `lastOnline`. Xray counts only clients it serves:
    /// false, and nothing counted, for a client that is unknown or disabled in its row or
    /// its settings entry.
    pub fn add_traffic(&self, email: &str, up: i64, down: i64) -> bool {
        self.shared.data().count_traffic(email, up, down)
    }

    /// The client's traffic row (`client_traffics`), if it has one.
    pub fn client_traffic(&self, email: &str) -> Option<TrafficRow> {
        self.shared.data().traffic_row(email).cloned()
    }

    /// Every traffic row, in id order.
    pub fn client_traffics(&self) -> Vec<TrafficRow> {
        self.shared.data().traffic.clone()
    }

    /// What `onlines` answers now: `None` is the panel's `null`.
    pub fn onlines(&self) -> Option<Vec<String>> {
        self.shared.data().onlines.clone()
    }

    /// One pass of the panel's traffic job, now: add the bytes Xray counted, start
    /// "after first use" expiries, renew clients with a `reset` period, disable clients
    /// over their quota or past their expiry (in their settings too, and then restart
    /// Xray, as `SimConfig` says). The timed job (`traffic_job_period`) runs the same.
    pub fn run_traffic_job(&self) -> TrafficPass {
        let shared = &self.shared;
        let mut data = shared.data();
        let pass = data.traffic_pass(&shared.config, state::now_ms());
        state::Counters::bump(&shared.stats.traffic_job_runs);
        if pass.restarted_xray {
            state::Counters::bump(&shared.stats.xray_restarts);
        }
        // Still under the data lock: whoever waits for a pass sees one that saw them.
        shared.passes.send_modify(|passes| *passes += 1);
        drop(data);
        pass
    }

    /// Resolves when the traffic job's next pass ends, timed or on demand. That pass saw
    /// every change made before this was called (not awaited: called).
    pub fn next_traffic_pass(&self) -> impl Future<Output = ()> + Send + 'static {
        let mut passes = self.shared.passes.subscribe();
        async move {
            // An error means the panel is gone: no pass will come, nothing to wait for.
            let _ = passes.changed().await;
        }
    }

    /// Restarts Xray, as the panel's "restart Xray" button does: `onlines` answers
    /// null until traffic moves again.
    pub fn restart_xray(&self) {
        self.shared.data().restart_xray();
        state::Counters::bump(&self.shared.stats.xray_restarts);
    }

    /// Xray restarts so far (also in [`SimStats`]).
    pub fn xray_restarts(&self) -> u64 {
        self.shared.stats.xray_restarts.load(Ordering::Relaxed)
    }

    pub fn faults(&self) -> Faults {
        self.shared.faults().clone()
    }

    pub fn update_faults(&self, change: impl FnOnce(&mut Faults)) {
        change(&mut self.shared.faults());
    }

    /// Ends every session now, as a panel restart with a new secret would.
    pub fn expire_sessions(&self) {
        self.shared.data().sessions.clear();
    }

    pub fn stats(&self) -> SimStats {
        self.shared.stats.snapshot()
    }

    /// Requests answered so far, faults included.
    pub fn requests(&self) -> u64 {
        self.shared.stats.requests.load(Ordering::Relaxed)
    }

    /// The newest requests (up to 10 000), oldest first, each as `METHOD path?query`
    /// exactly as it arrived, base path included.
    pub fn request_log(&self) -> Vec<String> {
        self.shared.requests_seen()
    }
}
