//! What the client needs to talk to one panel: its URL, credentials, inbound, API family and
//! timeouts. The type is this crate's own rather than the service's configuration so that the
//! worker does not depend on the crate that wires it; `service` maps each configured location
//! onto a [`PanelConfig`] (docs/configuration.md).

use std::time::Duration;

use url::Url;

/// Secrets are the domain's type, one redacting `Debug` for every password and token;
/// named here too so `crate::config::Secret` paths keep working.
pub(crate) use domain::Secret;

/// How we prove who we are to the panel.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Credentials {
    /// Cookie session from `POST {base}login`.
    Password { username: String, password: Secret },
    /// `Authorization: Bearer` (v3.0+): no cookie, no CSRF, no login.
    ApiToken(Secret),
}

/// Which route family the panel speaks (docs/panel.md "Versions that matter"); a
/// location's `api` setting in the configuration file (`legacy` or `clients`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ApiKind {
    /// `/panel/api/inbounds/*`, panels v2.x to v3.0.
    #[default]
    Legacy,
    /// `/panel/api/clients/*`, panels v3.1 and later.
    Clients,
}

/// Everything needed to talk to one panel. Kept local to this crate so the worker does
/// not depend on the binary's configuration types; the binary maps its `Location` here.
#[derive(Debug, Clone)]
pub struct PanelConfig {
    /// The location id, only used to give errors and logs their context.
    pub location: String,
    /// Base URL including the web base path; a missing trailing `/` is added.
    pub base_url: Url,
    pub credentials: Credentials,
    pub inbound_id: i64,
    /// Accept self-signed certificates; off unless the operator says so.
    pub accept_invalid_certs: bool,
    pub api: ApiKind,
    /// The host put into `vless://` links (config `public_host`); without it no links
    /// are rendered for this location.
    pub public_host: Option<String>,
    /// The `flow` of this location's clients (config `flow`: `""` or
    /// [`crate::FLOW_VISION`]); `None` picks it from the inbound's stream settings.
    pub flow: Option<String>,
    /// Upper bound for one HTTP exchange, connect included.
    pub request_timeout: Duration,
    pub connect_timeout: Duration,
    /// The largest answer read from the panel; a larger one is refused before it is all
    /// in memory (a broken or hostile panel could otherwise answer gigabytes).
    pub max_response_bytes: usize,
}

/// Default [`PanelConfig::max_response_bytes`]: ten thousand clients with their traffic
/// rows come to about 10 MiB.
pub const DEFAULT_MAX_RESPONSE_BYTES: usize = 64 * 1024 * 1024;

impl PanelConfig {
    pub fn new(
        location: impl Into<String>,
        base_url: Url,
        credentials: Credentials,
        inbound_id: i64,
    ) -> Self {
        Self {
            location: location.into(),
            base_url,
            credentials,
            inbound_id,
            accept_invalid_certs: false,
            api: ApiKind::Legacy,
            public_host: None,
            flow: None,
            request_timeout: Duration::from_secs(15),
            connect_timeout: Duration::from_secs(5),
            max_response_bytes: DEFAULT_MAX_RESPONSE_BYTES,
        }
    }

    pub fn with_max_response_bytes(mut self, limit: usize) -> Self {
        self.max_response_bytes = limit;
        self
    }

    pub fn with_api(mut self, api: ApiKind) -> Self {
        self.api = api;
        self
    }

    pub fn with_public_host(mut self, host: impl Into<String>) -> Self {
        self.public_host = Some(host.into());
        self
    }

    pub fn with_flow(mut self, flow: impl Into<String>) -> Self {
        self.flow = Some(flow.into());
        self
    }

    pub fn with_timeouts(mut self, connect: Duration, request: Duration) -> Self {
        self.connect_timeout = connect;
        self.request_timeout = request;
        self
    }

    /// The base with a trailing slash, so relative joins stay under the web base path.
    pub(crate) fn base(&self) -> Url {
        let mut base = self.base_url.clone();
        if !base.path().ends_with('/') {
            let path = format!("{}/", base.path());
            base.set_path(&path);
        }
        base
    }
}
