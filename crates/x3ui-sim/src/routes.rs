//! The simulated panel's HTTP surface: login, the legacy inbound routes and the v3.1+
//! clients routes, with the panel's answers and the switchable faults.

use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::Bytes;
use axum::extract::{ConnectInfo, Path, Request, State};
use axum::http::header::{CONTENT_TYPE, COOKIE, LOCATION, SET_COOKIE};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde_json::{Map, Value, json};

use super::conn::ConnectionCutter;
use super::state::{Client, Counters, Shared, email_of, go_error, id_of, now_ms};
use super::traffic::TrafficRow;
use super::{Flavour, Unauthenticated};

const COOKIE_NAME: &str = "3x-ui";
const WRONG: &str = "Something went wrong";
const DEFAULT_SESSION_MAX_AGE: Duration = Duration::from_secs(360 * 60);

type Shr = State<Arc<Shared>>;

pub(super) fn router(shared: Arc<Shared>) -> Router {
    let mut api = Router::new()
        .route("/login", post(login))
        .route("/csrf-token", get(csrf_token))
        .route("/panel/api/inbounds/list", get(list_inbounds))
        .route("/panel/api/inbounds/get/{id}", get(get_inbound));
    api = match shared.config.flavour {
        Flavour::Legacy => api
            .route("/panel/api/inbounds/addClient", post(add_client))
            .route(
                "/panel/api/inbounds/updateClient/{uuid}",
                post(update_client),
            )
            .route(
                "/panel/api/inbounds/{id}/delClient/{uuid}",
                post(del_client),
            )
            .route(
                "/panel/api/inbounds/{id}/delClientByEmail/{email}",
                post(del_client_by_email),
            )
            .route(
                "/panel/api/inbounds/getClientTraffics/{email}",
                get(client_traffics),
            )
            .route(
                "/panel/api/inbounds/{id}/resetClientTraffic/{email}",
                post(reset_client_traffic),
            )
            .route("/panel/api/inbounds/onlines", post(onlines))
            .route("/panel/api/inbounds/lastOnline", post(last_online)),
        Flavour::Clients => api
            .route("/panel/api/clients/list", get(records_list))
            .route("/panel/api/clients/get/{email}", get(record_get))
            .route("/panel/api/clients/add", post(record_add))
            .route("/panel/api/clients/update/{email}", post(record_update))
            .route("/panel/api/clients/del/{email}", post(record_delete))
            .route("/panel/api/clients/traffic/{email}", get(client_traffics))
            .route(
                "/panel/api/clients/resetTraffic/{email}",
                post(record_reset_traffic),
            )
            .route("/panel/api/clients/onlines", post(onlines))
            .route("/panel/api/clients/lastOnline", post(last_online)),
    };
    // The panel answers unknown routes and wrong methods alike: 404, empty.
    api = api
        .fallback(not_found)
        .method_not_allowed_fallback(not_found);
    let base = shared.config.base_path.trim_end_matches('/').to_owned();
    let app = if base.is_empty() {
        api
    } else {
        Router::new().nest(&base, api).fallback(not_found)
    };
    app.layer(middleware::from_fn_with_state(shared.clone(), faults))
        .with_state(shared)
}

async fn not_found() -> Response {
    StatusCode::NOT_FOUND.into_response()
}

async fn faults(State(shared): Shr, request: Request, next: Next) -> Response {
    Counters::bump(&shared.stats.requests);
    shared.record_request(request.method(), request.uri());
    let (latency, bad_gateway, error_rate, refusal_msg) = {
        let f = shared.faults();
        (
            f.latency,
            f.bad_gateway,
            f.error_rate,
            f.refusal_msg.clone(),
        )
    };
    if !latency.is_zero() {
        tokio::time::sleep(latency).await;
    }
    if bad_gateway {
        return StatusCode::BAD_GATEWAY.into_response();
    }
    if let Some(msg) = refusal_msg
        && request.method() == Method::POST
        && request.uri().path().contains("/panel/api/")
    {
        return envelope(false, &msg, Value::Null);
    }
    if request.uri().path().contains("/panel/api/") && shared.roll(error_rate) {
        Counters::bump(&shared.stats.injected_errors);
        return StatusCode::INTERNAL_SERVER_ERROR.into_response();
    }
    let Some(drop) = connection_drop(&shared, &request) else {
        return next.run(request).await;
    };
    Counters::bump(&shared.stats.dropped_connections);
    let response = if drop.after_handling {
        next.run(request).await
    } else {
        StatusCode::INTERNAL_SERVER_ERROR.into_response()
    };
    // Cut before the server writes a byte of the response: the client sees the
    // connection close with no answer at all.
    drop.cutter.cut();
    response
}

struct ConnectionDrop {
    cutter: ConnectionCutter,
    after_handling: bool,
}

/// Whether this request's connection is to be dropped, by the `drop_*` faults.
fn connection_drop(shared: &Shared, request: &Request) -> Option<ConnectionDrop> {
    let (rate, after_handling) = {
        let mut faults = shared.faults();
        if faults.drop_writes_only && request.method() != Method::POST {
            return None;
        }
        if faults.drop_next > 0 {
            faults.drop_next -= 1;
            (1.0, faults.drop_after_handling)
        } else {
            (faults.drop_rate, faults.drop_after_handling)
        }
    };
    if !shared.roll(rate) {
        return None;
    }
    let cutter = request
        .extensions()
        .get::<ConnectInfo<ConnectionCutter>>()
        .map(|info| info.0.clone())?;
    Some(ConnectionDrop {
        cutter,
        after_handling,
    })
}

fn envelope(success: bool, msg: &str, obj: Value) -> Response {
    axum::Json(json!({"success": success, "msg": msg, "obj": obj})).into_response()
}

fn ok(msg: &str) -> Response {
    envelope(true, msg, Value::Null)
}

/// `"<prefix> (<error>)"`, the panel's business error, with HTTP 200.
fn refuse(prefix: &str, error: &str) -> Response {
    envelope(false, &format!("{prefix} ({error})"), Value::Null)
}

fn empty_now(status: StatusCode) -> Response {
    status.into_response()
}

// ---- sessions ----

fn cookie_value(headers: &HeaderMap) -> Option<String> {
    headers
        .get_all(COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(name, _)| *name == COOKIE_NAME)
        .map(|(_, value)| value.to_owned())
}

fn set_cookie(response: &mut Response, value: &str, max_age: Duration) {
    let cookie = format!(
        "{COOKIE_NAME}={value}; Path=/; Max-Age={}; HttpOnly; SameSite=Lax",
        // Rounded up: Max-Age=0 would tell the client to drop the cookie at once.
        max_age.as_millis().div_ceil(1000)
    );
    if let Ok(header) = HeaderValue::from_str(&cookie) {
        response.headers_mut().append(SET_COOKIE, header);
    }
}

fn max_age(shared: &Shared) -> Duration {
    shared
        .faults()
        .session_max_age
        .unwrap_or(DEFAULT_SESSION_MAX_AGE)
}

fn is_xhr(headers: &HeaderMap) -> bool {
    headers
        .get("X-Requested-With")
        .is_some_and(|v| v.as_bytes() == b"XMLHttpRequest")
}

fn unauthenticated(shared: &Shared, headers: &HeaderMap) -> Response {
    match shared.config.unauthenticated {
        Unauthenticated::NotFound => empty_now(StatusCode::NOT_FOUND),
        Unauthenticated::Status401OrRedirect if is_xhr(headers) => {
            let mut r = envelope(
                false,
                "Your session has expired, please log in again",
                Value::Null,
            );
            *r.status_mut() = StatusCode::UNAUTHORIZED;
            r
        }
        Unauthenticated::Status401OrRedirect => {
            let mut r = empty_now(StatusCode::TEMPORARY_REDIRECT);
            if let Ok(to) = HeaderValue::from_str(&shared.config.base_path) {
                r.headers_mut().insert(LOCATION, to);
            }
            r
        }
        Unauthenticated::Status401OrNotFound if is_xhr(headers) => {
            empty_now(StatusCode::UNAUTHORIZED)
        }
        Unauthenticated::Status401OrNotFound => empty_now(StatusCode::NOT_FOUND),
    }
}

/// The panel's checkLogin (plus CSRF on POST): Bearer token, or a live cookie session.
/// `Some` is the rejection to answer with.
fn authorize(shared: &Shared, headers: &HeaderMap, method: &Method) -> Option<Response> {
    if let (Some(token), Some(sent)) = (
        &shared.config.api_token,
        headers
            .get("Authorization")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer ")),
    ) && sent == token
    {
        return None;
    }
    let max_age = max_age(shared);
    let data = shared.data();
    let session = cookie_value(headers).and_then(|c| data.sessions.get(&c));
    let Some(session) = session.filter(|s| s.logged_in_at.is_some_and(|at| at.elapsed() < max_age))
    else {
        drop(data);
        return Some(unauthenticated(shared, headers));
    };
    if shared.config.csrf && *method == Method::POST && !csrf_ok(headers, &session.csrf) {
        return Some(empty_now(StatusCode::FORBIDDEN));
    }
    None
}

fn csrf_ok(headers: &HeaderMap, expected: &str) -> bool {
    headers
        .get("X-CSRF-Token")
        .is_some_and(|v| v.as_bytes() == expected.as_bytes())
}

async fn csrf_token(State(shared): Shr, headers: HeaderMap) -> Response {
    if !shared.config.csrf {
        return empty_now(StatusCode::NOT_FOUND);
    }
    let existing = cookie_value(&headers);
    let mut data = shared.data();
    let (cookie, token) =
        match existing.and_then(|c| data.sessions.get(&c).map(|s| (c, s.csrf.clone()))) {
            Some(found) => found,
            None => {
                let cookie = shared.random_token();
                let token = shared.random_token();
                data.sessions.insert(
                    cookie.clone(),
                    super::state::SimSession {
                        csrf: token.clone(),
                        logged_in_at: None,
                    },
                );
                (cookie, token)
            }
        };
    drop(data);
    let mut response = envelope(true, "", Value::String(token));
    set_cookie(&mut response, &cookie, max_age(&shared));
    response
}

/// A request body, JSON or form-encoded, as the panel's binding accepts either.
fn body_fields(headers: &HeaderMap, body: &Bytes) -> Option<Map<String, Value>> {
    let form = headers
        .get(CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/x-www-form-urlencoded"));
    if form {
        let pairs = url::form_urlencoded::parse(body);
        return Some(
            pairs
                .map(|(k, v)| (k.into_owned(), Value::String(v.into_owned())))
                .collect(),
        );
    }
    match serde_json::from_slice(body) {
        Ok(Value::Object(map)) => Some(map),
        _ => None,
    }
}

async fn login(State(shared): Shr, headers: HeaderMap, body: Bytes) -> Response {
    let cookie = cookie_value(&headers);
    if shared.config.csrf {
        let data = shared.data();
        let valid = cookie
            .as_ref()
            .and_then(|c| data.sessions.get(c))
            .is_some_and(|s| csrf_ok(&headers, &s.csrf));
        if !valid {
            return empty_now(StatusCode::FORBIDDEN);
        }
    }
    let fields = body_fields(&headers, &body).unwrap_or_default();
    let field = |name: &str| fields.get(name).and_then(Value::as_str).unwrap_or("");
    let matches =
        field("username") == shared.config.username && field("password") == shared.config.password;
    let mut data = shared.data();
    // The limiter's block looks exactly like a wrong password.
    if data.login_blocked() || !matches {
        data.login_failures.push(Instant::now());
        Counters::bump(&shared.stats.failed_logins);
        return envelope(
            false,
            "Invalid username or password or two-factor code.",
            Value::Null,
        );
    }
    Counters::bump(&shared.stats.logins);
    let cookie = cookie
        .filter(|c| data.sessions.contains_key(c))
        .unwrap_or_else(|| shared.random_token());
    let csrf = data
        .sessions
        .get(&cookie)
        .map_or_else(|| shared.random_token(), |s| s.csrf.clone());
    data.sessions.insert(
        cookie.clone(),
        super::state::SimSession {
            csrf,
            logged_in_at: Some(Instant::now()),
        },
    );
    drop(data);
    let mut response = ok(" You have successfully logged into your account.");
    set_cookie(&mut response, &cookie, max_age(&shared));
    response
}

macro_rules! authorized {
    ($shared:expr, $headers:expr, $method:expr) => {
        if let Some(response) = authorize(&$shared, &$headers, &$method) {
            return response;
        }
    };
}

// ---- inbounds ----

/// An inbound as the panel sends it: JSON-text columns as strings on legacy panels,
/// as objects from v3.1 on.
fn inbound_json(shared: &Shared, id: i64, with_stats: bool) -> Option<Value> {
    let data = shared.data();
    let inbound = data.inbounds.get(&id)?;
    let column = |text: &str| match shared.config.flavour {
        Flavour::Legacy => Value::String(text.to_owned()),
        Flavour::Clients => serde_json::from_str(text).unwrap_or(Value::String(text.to_owned())),
    };
    let stats = if with_stats {
        Value::Array(data.inbound_traffic(id))
    } else {
        Value::Null
    };
    Some(json!({
        "id": inbound.id, "up": 0, "down": 0, "total": 0, "remark": inbound.remark,
        "enable": true, "expiryTime": 0, "clientStats": stats, "listen": "",
        "port": inbound.port, "protocol": "vless",
        "settings": column(&inbound.settings),
        "streamSettings": column(&inbound.stream_settings),
        "tag": format!("inbound-{}", inbound.port),
        "sniffing": column(&inbound.sniffing),
    }))
}

async fn list_inbounds(State(shared): Shr, headers: HeaderMap) -> Response {
    authorized!(shared, headers, Method::GET);
    let ids = shared.data().inbound_ids();
    let all: Vec<Value> = ids
        .into_iter()
        .filter_map(|id| inbound_json(&shared, id, true))
        .collect();
    envelope(true, "", Value::Array(all))
}

async fn get_inbound(State(shared): Shr, headers: HeaderMap, Path(id): Path<String>) -> Response {
    authorized!(shared, headers, Method::GET);
    // `clientStats` is null here, unlike in `list`.
    match id
        .parse()
        .ok()
        .and_then(|id| inbound_json(&shared, id, false))
    {
        Some(inbound) => envelope(true, "", inbound),
        None => refuse("Obtain Failed", "record not found"),
    }
}

// ---- legacy client routes ----

/// `{"id": inboundId, "settings": "<JSON string>"}`; `Err` is the response to give.
fn settings_clients(
    headers: &HeaderMap,
    body: &Bytes,
) -> Result<(i64, Vec<Client>), Box<Response>> {
    // A body the panel cannot bind crashes the handler: HTTP 500, empty.
    let fields = body_fields(headers, body)
        .ok_or_else(|| Box::new(empty_now(StatusCode::INTERNAL_SERVER_ERROR)))?;
    let inbound_id = match fields.get("id") {
        Some(Value::Number(n)) => n.as_i64(),
        Some(Value::String(s)) => s.parse().ok(),
        _ => None,
    }
    .unwrap_or(0);
    let Some(Value::String(text)) = fields.get("settings") else {
        return Err(Box::new(refuse(
            WRONG,
            "json: cannot unmarshal object into Go struct field Inbound.settings of type string",
        )));
    };
    let parsed: Value =
        serde_json::from_str(text).map_err(|e| Box::new(refuse(WRONG, &e.to_string())))?;
    let clients = parsed
        .get("clients")
        .and_then(Value::as_array)
        .map(|list| list.iter().filter_map(|c| c.as_object().cloned()).collect())
        .unwrap_or_default();
    Ok((inbound_id, clients))
}

/// The panel's order: emails first (request and whole panel), then the inbound, then ids.
fn check_new_clients(
    shared: &Shared,
    inbound_id: i64,
    clients: &[Map<String, Value>],
) -> Result<(), String> {
    let data = shared.data();
    for (i, client) in clients.iter().enumerate() {
        let email = email_of(client);
        let twice = clients[..i]
            .iter()
            .any(|c| email_of(c).eq_ignore_ascii_case(email));
        if !email.is_empty() && (twice || data.email_taken(email, None)) {
            return Err(go_error(&["Duplicate email:", email]));
        }
    }
    if !data.inbounds.contains_key(&inbound_id) {
        return Err("record not found".into());
    }
    if clients.iter().any(|c| id_of(c).is_empty()) {
        return Err(go_error(&["empty client ID"]));
    }
    Ok(())
}

fn stamp(client: &mut Map<String, Value>, created: Option<&Value>) {
    let now = now_ms();
    let created = created.cloned().unwrap_or(json!(now));
    client.entry("created_at").or_insert(created);
    client.insert("updated_at".into(), json!(now));
}

async fn add_client(State(shared): Shr, headers: HeaderMap, body: Bytes) -> Response {
    authorized!(shared, headers, Method::POST);
    Counters::bump(&shared.stats.add_calls);
    let (inbound_id, mut clients) = match settings_clients(&headers, &body) {
        Ok(parsed) => parsed,
        Err(response) => return *response,
    };
    if let Err(e) = check_new_clients(&shared, inbound_id, &clients) {
        return refuse(WRONG, &e);
    }
    for client in &mut clients {
        stamp(client, None);
    }
    let added = clients.clone();
    match shared
        .write_clients(inbound_id, |_, existing| {
            existing.extend(clients);
            Ok(())
        })
        .await
    {
        Ok(()) => {
            let mut data = shared.data();
            for client in &added {
                data.add_traffic_row(inbound_id, client);
            }
            ok("Inbound client(s) have been added.")
        }
        Err(e) => refuse(WRONG, &e),
    }
}

async fn update_client(
    State(shared): Shr,
    headers: HeaderMap,
    Path(old_id): Path<String>,
    body: Bytes,
) -> Response {
    authorized!(shared, headers, Method::POST);
    let (inbound_id, clients) = match settings_clients(&headers, &body) {
        Ok(parsed) => parsed,
        Err(response) => return *response,
    };
    let Some(mut new) = clients.into_iter().next() else {
        return refuse(WRONG, &go_error(&["empty client ID"]));
    };
    let result = shared
        .write_clients(inbound_id, |data, existing| {
            replace_client(data, inbound_id, existing, &old_id, &mut new)
        })
        .await;
    match result {
        Ok(old_email) => {
            shared.data().update_traffic_row(&old_email, &new);
            ok("Inbound client has been updated.")
        }
        Err(e) => refuse(WRONG, &e),
    }
}

/// updateClient's core: a full replace of the client whose id is `old_id`; the replaced
/// client's email.
fn replace_client(
    data: &super::state::Data,
    inbound_id: i64,
    existing: &mut [Map<String, Value>],
    old_id: &str,
    new: &mut Map<String, Value>,
) -> Result<String, String> {
    // An unknown old id and an empty new id give the same text.
    let slot = existing
        .iter()
        .position(|c| id_of(c) == old_id)
        .ok_or_else(|| go_error(&["empty client ID"]))?;
    if id_of(new).is_empty() {
        return Err(go_error(&["empty client ID"]));
    }
    let email = email_of(new).to_owned();
    if !email.eq_ignore_ascii_case(email_of(&existing[slot]))
        && data.email_taken(&email, Some((inbound_id, old_id)))
    {
        return Err(go_error(&["Duplicate email:", &email]));
    }
    stamp(new, existing[slot].get("created_at"));
    let old_email = email_of(&existing[slot]).to_owned();
    existing[slot] = new.clone();
    Ok(old_email)
}

async fn del_client(
    State(shared): Shr,
    headers: HeaderMap,
    Path((inbound, uuid)): Path<(String, String)>,
) -> Response {
    authorized!(shared, headers, Method::POST);
    deleted(delete_where(&shared, &inbound, &ClientKey::Id(uuid)).await)
}

async fn del_client_by_email(
    State(shared): Shr,
    headers: HeaderMap,
    Path((inbound, email)): Path<(String, String)>,
) -> Response {
    authorized!(shared, headers, Method::POST);
    deleted(delete_where(&shared, &inbound, &ClientKey::Email(email)).await)
}

/// How a delete names its client.
enum ClientKey {
    Id(String),
    Email(String),
}

impl ClientKey {
    fn matches(&self, client: &Client) -> bool {
        match self {
            Self::Id(id) => id_of(client) == id,
            Self::Email(email) => email_of(client).eq_ignore_ascii_case(email),
        }
    }

    fn not_found(&self) -> String {
        match self {
            Self::Id(id) => go_error(&["Client Not Found In Inbound For ID:", id]),
            Self::Email(email) => go_error(&["Client Not Found In Inbound For Email:", email]),
        }
    }
}

/// Deletes the matching clients of an inbound and their traffic rows.
async fn delete_where(shared: &Shared, inbound: &str, key: &ClientKey) -> Result<(), String> {
    let inbound_id: i64 = inbound.parse().unwrap_or(0);
    let unknown_ok = shared.config.unknown_delete_succeeds;
    let last_ok = shared.config.last_client_deletable;
    let removed = shared
        .write_clients(inbound_id, |_, clients| {
            let removed: Vec<String> = clients
                .iter()
                .filter(|c| key.matches(c))
                .map(|c| email_of(c).to_owned())
                .collect();
            clients.retain(|c| !key.matches(c));
            if removed.is_empty() && !unknown_ok {
                return Err(key.not_found());
            }
            if !removed.is_empty() && clients.is_empty() && !last_ok {
                return Err(go_error(&["no client remained in Inbound"]));
            }
            Ok(removed)
        })
        .await?;
    let mut data = shared.data();
    for email in removed {
        data.remove_traffic_row(&email);
    }
    Ok(())
}

fn deleted(result: Result<(), String>) -> Response {
    match result {
        Ok(()) => ok("Inbound client has been deleted."),
        Err(e) => refuse(WRONG, &e),
    }
}

async fn client_traffics(
    State(shared): Shr,
    headers: HeaderMap,
    Path(email): Path<String>,
) -> Response {
    authorized!(shared, headers, Method::GET);
    let row = shared.data().traffic_row(&email).map(TrafficRow::to_json);
    match row {
        Some(row) => envelope(true, "", row),
        None => refuse(
            "Error getting traffics",
            &go_error(&["Inbound Not Found For Email:", &email]),
        ),
    }
}

/// resetClientTraffic: up and down to 0 and the traffic row enabled; the settings entry
/// keeps its `enable`, so a client the job disabled there stays off until an update.
async fn reset_client_traffic(
    State(shared): Shr,
    headers: HeaderMap,
    Path((_inbound, email)): Path<(String, String)>,
) -> Response {
    authorized!(shared, headers, Method::POST);
    reset_traffic(&shared, &email)
}

async fn record_reset_traffic(
    State(shared): Shr,
    headers: HeaderMap,
    Path(email): Path<String>,
) -> Response {
    authorized!(shared, headers, Method::POST);
    reset_traffic(&shared, &email)
}

fn reset_traffic(shared: &Shared, email: &str) -> Response {
    if shared.data().reset_traffic(email) {
        ok("Traffic has been reset.")
    } else {
        refuse(WRONG, &go_error(&["Inbound Not Found For Email:", email]))
    }
}

async fn onlines(State(shared): Shr, headers: HeaderMap) -> Response {
    authorized!(shared, headers, Method::POST);
    // Nobody moved traffic in the job's last pass, or Xray restarted since: null, not [].
    let onlines = shared.data().onlines.clone();
    envelope(
        true,
        "",
        onlines.map_or(Value::Null, |emails| json!(emails)),
    )
}

async fn last_online(State(shared): Shr, headers: HeaderMap) -> Response {
    authorized!(shared, headers, Method::POST);
    let last = shared.data().last_online();
    envelope(true, "", last)
}

// ---- v3.1+ clients routes ----

fn record_json(shared: &Shared, email: &str) -> Option<Value> {
    let mut data = shared.data();
    let attached: Vec<(i64, Map<String, Value>)> = data
        .all_clients()
        .into_iter()
        .filter(|(_, c)| email_of(c).eq_ignore_ascii_case(email))
        .collect();
    let (_, client) = attached.first()?.clone();
    let field = |name: &str, default: Value| client.get(name).cloned().unwrap_or(default);
    Some(json!({
        "id": data.record_id(email),
        "email": email_of(&client), "subId": field("subId", json!("")), "uuid": id_of(&client),
        "password": "", "auth": "", "flow": field("flow", json!("")), "security": "", "reverse": null,
        "limitIp": field("limitIp", json!(0)), "totalGB": field("totalGB", json!(0)),
        "expiryTime": field("expiryTime", json!(0)), "enable": field("enable", json!(true)),
        "tgId": field("tgId", json!(0)), "comment": field("comment", json!("")),
        "reset": field("reset", json!(0)),
        "createdAt": field("created_at", json!(0)), "updatedAt": field("updated_at", json!(0)),
        "inboundIds": attached.iter().map(|(id, _)| *id).collect::<Vec<_>>(),
    }))
}

async fn records_list(State(shared): Shr, headers: HeaderMap) -> Response {
    authorized!(shared, headers, Method::GET);
    let mut emails: Vec<String> = shared
        .data()
        .all_clients()
        .iter()
        .map(|(_, c)| email_of(c).to_owned())
        .collect();
    emails.dedup_by(|a, b| a.eq_ignore_ascii_case(b));
    let rows: Vec<Value> = emails
        .iter()
        .filter_map(|e| record_json(&shared, e))
        .collect();
    envelope(true, "", Value::Array(rows))
}

async fn record_get(State(shared): Shr, headers: HeaderMap, Path(email): Path<String>) -> Response {
    authorized!(shared, headers, Method::GET);
    match record_json(&shared, &email) {
        Some(mut record) => {
            let ids = record.get("inboundIds").cloned().unwrap_or(Value::Null);
            if let Value::Object(map) = &mut record {
                map.remove("inboundIds");
            }
            envelope(true, "", json!({"client": record, "inboundIds": ids}))
        }
        None => refuse("get", "record not found"),
    }
}

/// The v3.1 record's wire shape back into an inbound client: `uuid` is the VLESS id.
fn client_from_record(mut body: Map<String, Value>) -> Map<String, Value> {
    if let Some(uuid) = body.remove("uuid") {
        body.insert("id".into(), uuid);
    }
    body.remove("inboundIds");
    body
}

async fn record_add(State(shared): Shr, headers: HeaderMap, body: Bytes) -> Response {
    authorized!(shared, headers, Method::POST);
    Counters::bump(&shared.stats.add_calls);
    let Ok(Value::Object(payload)) = serde_json::from_slice::<Value>(&body) else {
        return refuse(WRONG, "invalid request");
    };
    let Some(Value::Object(client)) = payload.get("client").cloned() else {
        return refuse(WRONG, "invalid request");
    };
    let inbound_ids: Vec<i64> = payload
        .get("inboundIds")
        .and_then(Value::as_array)
        .map(|ids| ids.iter().filter_map(Value::as_i64).collect())
        .unwrap_or_default();
    let mut client = client_from_record(client);
    let email = email_of(&client).trim().to_owned();
    if email.is_empty() {
        return refuse(WRONG, &go_error(&["client email is required"]));
    }
    if inbound_ids.is_empty() {
        return refuse(WRONG, &go_error(&["at least one inbound is required"]));
    }
    if shared.data().email_taken(&email, None) {
        return refuse(WRONG, &go_error(&["email already in use:", &email]));
    }
    if client
        .get("subId")
        .and_then(Value::as_str)
        .unwrap_or("")
        .is_empty()
    {
        client.insert("subId".into(), json!(uuid::Uuid::new_v4().to_string()));
    }
    if id_of(&client).is_empty() {
        client.insert("id".into(), json!(uuid::Uuid::new_v4().to_string()));
    }
    // v3.1's create switches every new client on, whatever was sent.
    client.insert("enable".into(), Value::Bool(true));
    stamp(&mut client, None);
    for inbound_id in inbound_ids {
        if let Err(e) = check_new_clients(&shared, inbound_id, std::slice::from_ref(&client)) {
            return refuse(WRONG, &e);
        }
        let added = client.clone();
        if let Err(e) = shared
            .write_clients(inbound_id, |_, existing| {
                existing.push(added);
                Ok(())
            })
            .await
        {
            return refuse(WRONG, &e);
        }
        shared.data().add_traffic_row(inbound_id, &client);
    }
    ok("Inbound client(s) have been added.")
}

fn attachments(shared: &Shared, email: &str) -> Vec<(i64, Map<String, Value>)> {
    shared
        .data()
        .all_clients()
        .into_iter()
        .filter(|(_, c)| email_of(c).eq_ignore_ascii_case(email))
        .collect()
}

async fn record_update(
    State(shared): Shr,
    headers: HeaderMap,
    Path(email): Path<String>,
    body: Bytes,
) -> Response {
    authorized!(shared, headers, Method::POST);
    let Ok(Value::Object(new)) = serde_json::from_slice::<Value>(&body) else {
        return refuse(WRONG, "invalid request");
    };
    let new = client_from_record(new);
    let attached = attachments(&shared, &email);
    if attached.is_empty() {
        return refuse(WRONG, "record not found");
    }
    if email_of(&new).trim().is_empty() {
        return refuse(WRONG, &go_error(&["client email is required"]));
    }
    for (inbound_id, old) in attached {
        let mut new = new.clone();
        // An empty subId keeps the old one.
        if new
            .get("subId")
            .and_then(Value::as_str)
            .unwrap_or("")
            .is_empty()
            && let Some(sub) = old.get("subId")
        {
            new.insert("subId".into(), sub.clone());
        }
        let old_id = id_of(&old).to_owned();
        match shared
            .write_clients(inbound_id, |data, existing| {
                replace_client(data, inbound_id, existing, &old_id, &mut new)
            })
            .await
        {
            Ok(old_email) => shared.data().update_traffic_row(&old_email, &new),
            Err(e) => return refuse(WRONG, &e),
        }
    }
    ok("Inbound client has been updated.")
}

async fn record_delete(
    State(shared): Shr,
    headers: HeaderMap,
    Path(email): Path<String>,
) -> Response {
    authorized!(shared, headers, Method::POST);
    let attached = attachments(&shared, &email);
    if attached.is_empty() {
        return refuse(WRONG, "record not found");
    }
    for (inbound_id, _) in attached {
        let result = delete_where(
            &shared,
            &inbound_id.to_string(),
            &ClientKey::Email(email.clone()),
        )
        .await;
        if result.is_err() {
            return deleted(result);
        }
    }
    ok("Inbound client has been deleted.")
}
