//! The `/s/<token>[/<format>]` handler: limits, lookup, render, record — in that order, so a
//! blocked or malformed request never reaches the database, and every answer is recorded.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::Router;
use axum::extract::{ConnectInfo, Path, State};
use axum::http::{Extensions, HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use domain::{SubscriptionId, is_token_shaped};
use eventstore::EventStore;
use hmac::{Hmac, Mac};
use sha2::Sha256;
use time::OffsetDateTime;
use uuid::Uuid;

use crate::entries;
use crate::fetches::{Fetch, FetchLog};
use crate::format::{Format, negotiate};
use crate::index::{Target, TokenIndex};
use crate::limits::Limits;
use crate::render::{Profile, Rendered};
use crate::{SubSettings, page, render, token_tag};

/// How long a client is told to wait when the database does not answer.
const RETRY_AFTER_UNAVAILABLE: u64 = 30;

/// Rendered answers kept before expired ones are swept.
const CACHE_SWEEP_AT: usize = 10_000;

type CacheKey = (Uuid, u32, Format);

pub(crate) struct SubState {
    store: EventStore,
    settings: SubSettings,
    index: TokenIndex,
    limits: Limits,
    cache: Mutex<HashMap<CacheKey, (Instant, Rendered)>>,
    fetch_log: FetchLog,
    /// Key of the addresses' hashes in the fetch log, derived from the secret.
    address_key: Vec<u8>,
}

impl SubState {
    pub(crate) fn new(store: EventStore, settings: SubSettings, fetch_log: FetchLog) -> Self {
        // Generation 0 of the nil subscription is never a real token (generations start at
        // 1), so this is a second secret derived from the first, used only for addresses.
        let address_key = settings
            .urls
            .token(SubscriptionId::from_uuid(Uuid::nil()), 0)
            .into_bytes();
        Self {
            index: TokenIndex::new(settings.urls.clone()),
            limits: Limits::new(settings.limits),
            cache: Mutex::default(),
            store,
            settings,
            fetch_log,
            address_key,
        }
    }

    fn address_hash(&self, address: IpAddr) -> String {
        let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(&self.address_key)
            .unwrap_or_else(|_| unreachable!("HMAC takes keys of any length"));
        mac.update(address.to_string().as_bytes());
        hex::encode(&mac.finalize().into_bytes()[..8])
    }

    fn cached(&self, key: &CacheKey) -> Option<Rendered> {
        let cache = self.cache.lock().unwrap_or_else(|e| e.into_inner());
        let (at, rendered) = cache.get(key)?;
        (at.elapsed() < self.settings.cache_ttl).then(|| rendered.clone())
    }

    fn remember(&self, key: CacheKey, rendered: &Rendered) {
        if self.settings.cache_ttl.is_zero() {
            return;
        }
        let mut cache = self.cache.lock().unwrap_or_else(|e| e.into_inner());
        if cache.len() >= CACHE_SWEEP_AT {
            let ttl = self.settings.cache_ttl;
            cache.retain(|_, (at, _)| at.elapsed() < ttl);
        }
        cache.insert(key, (Instant::now(), rendered.clone()));
    }
}

pub(crate) fn router(state: Arc<SubState>) -> Router {
    Router::new()
        .route("/s/{token}", get(fetch_default))
        .route("/s/{token}/{format}", get(fetch_in_format))
        .fallback(|| async { empty(StatusCode::NOT_FOUND) })
        .with_state(state)
}

/// What a fetch said about itself.
struct Request {
    address: IpAddr,
    user_agent: Option<String>,
    accept: Option<String>,
    hwid: Option<String>,
}

impl Request {
    fn new(headers: &HeaderMap, extensions: &Extensions, trusted_proxies: &[IpAddr]) -> Self {
        let text = |name: &str, max: usize| {
            headers
                .get(name)
                .and_then(|v| v.to_str().ok())
                .map(|v| v.chars().take(max).collect::<String>())
        };
        let peer = extensions
            .get::<ConnectInfo<SocketAddr>>()
            .map_or(IpAddr::V4(Ipv4Addr::UNSPECIFIED), |c| c.0.ip());
        let address = if trusted_proxies.contains(&peer) {
            forwarded_client(headers).unwrap_or(peer)
        } else {
            peer
        };
        Self {
            address,
            user_agent: text("user-agent", 256),
            accept: text("accept", 256),
            hwid: text("x-hwid", 128),
        }
    }
}

/// The client a trusted proxy names: the last address of `X-Forwarded-For`, the one the
/// proxy itself appended (earlier ones are whatever the client chose to send).
fn forwarded_client(headers: &HeaderMap) -> Option<IpAddr> {
    let forwarded = headers
        .get_all("x-forwarded-for")
        .iter()
        .next_back()?
        .to_str()
        .ok()?;
    forwarded.rsplit(',').next()?.trim().parse().ok()
}

async fn fetch_default(
    State(state): State<Arc<SubState>>,
    Path(token): Path<String>,
    headers: HeaderMap,
    extensions: Extensions,
) -> Response {
    let request = Request::new(&headers, &extensions, &state.settings.trusted_proxies);
    let format = negotiate(request.user_agent.as_deref(), request.accept.as_deref());
    answer(&state, &token, Some(format), request).await
}

async fn fetch_in_format(
    State(state): State<Arc<SubState>>,
    Path((token, format)): Path<(String, String)>,
    headers: HeaderMap,
    extensions: Extensions,
) -> Response {
    let request = Request::new(&headers, &extensions, &state.settings.trusted_proxies);
    answer(&state, &token, Format::from_path(&format), request).await
}

/// An answer with no body and no cache.
fn empty(status: StatusCode) -> Response {
    (status, [(header::CACHE_CONTROL, "no-store")]).into_response()
}

fn retry_after(status: StatusCode, wait: Duration) -> Response {
    let seconds = wait.as_secs().max(1).to_string();
    let mut response = empty(status);
    if let Ok(value) = HeaderValue::from_str(&seconds) {
        response.headers_mut().insert(header::RETRY_AFTER, value);
    }
    response
}

fn unavailable() -> Response {
    retry_after(
        StatusCode::SERVICE_UNAVAILABLE,
        Duration::from_secs(RETRY_AFTER_UNAVAILABLE),
    )
}

fn respond(rendered: Rendered) -> Response {
    let mut response = (rendered.status, rendered.body).into_response();
    let headers = response.headers_mut();
    for (name, value) in rendered.headers {
        headers.insert(name, value);
    }
    response
}

async fn answer(
    state: &SubState,
    token: &str,
    format: Option<Format>,
    request: Request,
) -> Response {
    let (response, target) = decide(state, token, format, &request).await;
    let status = response.status();
    tracing::debug!(
        token = %token_tag(token),
        format = format.map_or("unknown", Format::as_str),
        status = status.as_u16(),
        "subscription fetch"
    );
    state.fetch_log.record(Fetch {
        subscription_id: target.map(|t| t.id.as_uuid()),
        generation: target.map(|t| t.generation),
        fetched_at: OffsetDateTime::now_utc(),
        address_hash: state.address_hash(request.address),
        user_agent: request.user_agent,
        hwid: request.hwid,
        format: format.map_or("unknown", Format::as_str),
        status: status.as_u16(),
    });
    response
}

async fn decide(
    state: &SubState,
    token: &str,
    format: Option<Format>,
    request: &Request,
) -> (Response, Option<Target>) {
    if let Some(wait) = state.limits.blocked(request.address) {
        return (retry_after(StatusCode::TOO_MANY_REQUESTS, wait), None);
    }
    let miss = || {
        state.limits.miss(request.address);
        (empty(StatusCode::NOT_FOUND), None)
    };
    let Some(format) = format else {
        return miss();
    };
    if !is_token_shaped(token) {
        return miss();
    }
    let timeout = state.settings.query_timeout;
    let pool = state.store.pool();
    let target = match tokio::time::timeout(timeout, state.index.lookup(pool, token)).await {
        Ok(Ok(Some(target))) => target,
        Ok(Ok(None)) => return miss(),
        Ok(Err(error)) => {
            tracing::warn!(%error, "subscription index cannot be read");
            return (unavailable(), None);
        }
        Err(_) => {
            tracing::warn!("subscription index read timed out");
            return (unavailable(), None);
        }
    };
    if let Some(wait) = state.limits.fetch(&token_tag(token)) {
        return (
            retry_after(StatusCode::TOO_MANY_REQUESTS, wait),
            Some(target),
        );
    }
    let key = (target.id.as_uuid(), target.generation, format);
    if let Some(rendered) = state.cached(&key) {
        return (respond(rendered), Some(target));
    }
    let data = match tokio::time::timeout(timeout, entries::load(pool, target.id.as_uuid())).await {
        Ok(Ok(Some(data))) => data,
        // The index knew it, the view does not (a rebuild dropped it): nothing to show.
        Ok(Ok(None)) => return (empty(StatusCode::NOT_FOUND), Some(target)),
        Ok(Err(error)) => {
            tracing::warn!(%error, "subscription cannot be read");
            return (unavailable(), Some(target));
        }
        Err(_) => {
            tracing::warn!("subscription read timed out");
            return (unavailable(), Some(target));
        }
    };
    let settings = &state.settings;
    let contents = entries::contents(&data, target.generation, &settings.locations);
    let rendered = match format {
        Format::Html => {
            let url = format!(
                "{}/s/{token}",
                settings.urls.base().as_str().trim_end_matches('/')
            );
            page::render(&url, &settings.title, &contents)
        }
        other => render::render(
            &contents,
            other,
            &Profile {
                title: &settings.title,
                update_interval_hours: settings.update_interval_hours,
                web_page_url: settings.web_page_url.as_ref(),
                support_url: settings.support_url.as_ref(),
            },
        ),
    };
    state.remember(key, &rendered);
    (respond(rendered), Some(target))
}
