//! Configuration: an optional TOML file, overridden by environment variables
//! (docs/configuration.md). Secrets are only ever read from the environment and never printed.

use std::collections::HashSet;
use std::fmt;
use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use domain::LocationId;
use serde::Deserialize;
use url::Url;
use x3ui_worker::{ApiKind, Credentials};

pub const DEFAULT_DATABASE_URL: &str = "postgres://postgres@127.0.0.1:5432/keyledger";
pub const DEFAULT_AMQP_URL: &str = "amqp://guest:guest@127.0.0.1:5672/%2f";
pub const DEFAULT_HTTP_ADDR: &str = "127.0.0.1:8080";
pub const DEFAULT_SUB_ADDR: &str = "127.0.0.1:8090";
/// The bot's doors, as this configuration names them.
pub use bot::{Ingress as BotIngress, WebhookConfig as BotWebhook};

pub const DEFAULT_BOT_WEBHOOK_ADDR: &str = "127.0.0.1:8443";
pub const DEFAULT_TELEGRAM_API_URL: &str = "https://api.telegram.org";
/// Bearer tokens shorter than this are refused: they could be guessed.
pub const MIN_TOKEN_CHARS: usize = 16;

/// A configuration problem, naming the field (file key or environment variable).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("configuration error in {field}: {message}")]
pub struct ConfigError {
    pub field: String,
    pub message: String,
}

impl ConfigError {
    pub(crate) fn new(field: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            field: field.into(),
            message: message.into(),
        }
    }
}

/// Secrets are the domain's type: one redacting `Debug` for every password and token.
pub use domain::Secret;

/// A connection URL that may carry a password; shown with the password masked.
#[derive(Clone, PartialEq, Eq)]
pub struct ServiceUrl(Url);

impl ServiceUrl {
    pub fn new(url: Url) -> Self {
        Self(url)
    }

    pub fn as_str(&self) -> &str {
        self.0.as_str()
    }

    pub fn url(&self) -> &Url {
        &self.0
    }
}

impl fmt::Display for ServiceUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut shown = self.0.clone();
        if shown.password().is_some() {
            let _ = shown.set_password(Some("***"));
        }
        f.write_str(shown.as_str())
    }
}

impl fmt::Debug for ServiceUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ServiceUrl({self})")
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    Json,
    Pretty,
}

/// One location's entry in the configuration: its 3x-ui panel and how to reach it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LocationConfig {
    pub id: LocationId,
    pub name: String,
    /// The panel's base URL including its web base path, always ending in `/`.
    pub panel_url: Url,
    pub credentials: Credentials,
    pub inbound_id: i64,
    pub public_host: String,
    pub accept_invalid_certs: bool,
    pub api: ApiKind,
    /// The clients' `flow` (`""` or `xtls-rprx-vision`); `None`: the worker picks the
    /// inbound's default (Vision on tcp with tls or reality, none otherwise).
    pub flow: Option<String>,
    /// The largest answer read from this panel (`max_response_mib`).
    pub max_response_bytes: usize,
}

/// The resolved configuration every role runs with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Config {
    pub database_url: ServiceUrl,
    /// The owner role's URL (`DATABASE_OWNER_URL`, environment only: it carries the
    /// owner's password), used to migrate; `database_url` when not set.
    pub database_owner_url: ServiceUrl,
    pub amqp_url: ServiceUrl,
    /// `RABBITMQ_MANAGEMENT_URL` (environment only): the management API's base URL, used
    /// instead of the one derived from `amqp_url`; checked by [`broker::Management::for_broker`].
    pub management_url: Option<ServiceUrl>,
    pub http_addr: SocketAddr,
    pub admin_token: Option<Secret>,
    pub auditor_token: Option<Secret>,
    pub service_token: Option<Secret>,
    pub telegram_bot_token: Option<Secret>,
    pub telegram_api_url: Url,
    pub log_filter: String,
    /// `None`: pretty on a terminal, JSON otherwise.
    pub log_format: Option<LogFormat>,
    pub locations: Vec<LocationConfig>,
    pub reconcile: ReconcileSettings,
    /// `KEYLEDGER_NOTARY_KEY`: base64 of the notary's 32-byte Ed25519 seed (checked).
    pub notary_key: Option<Secret>,
    pub notary: crate::notary::NotarySettings,
    /// `KEYLEDGER_SUB_ADDR`: where the `sub` role listens.
    pub sub_addr: SocketAddr,
    /// `KEYLEDGER_SUB_PUBLIC_URL` and `KEYLEDGER_SUB_SECRET`: both set, or the `sub` role is
    /// off and nobody is shown a subscription URL.
    pub subscription_urls: Option<domain::SubscriptionUrls>,
    /// Per-user limits of the bot (file section `[limits]`).
    pub user_limits: bot::UserLimits,
    /// Who may ask the bot for keys (file section `[access]`).
    pub request_policy: bot::RequestPolicy,
    /// `KEYLEDGER_SUB_WEB_PAGE_URL`: the bot's t.me link, sent to apps as
    /// `Profile-Web-Page-Url`.
    pub sub_web_page_url: Option<Url>,
    /// `KEYLEDGER_SUB_SUPPORT_URL`: sent to apps as `Support-Url`.
    pub sub_support_url: Option<Url>,
    /// `KEYLEDGER_SUB_TRUSTED_PROXIES`: reverse proxies whose `X-Forwarded-For` names the
    /// subscription's client.
    pub sub_trusted_proxies: Vec<std::net::IpAddr>,
    /// How the bot takes updates: long polling, or a webhook when
    /// `KEYLEDGER_BOT_WEBHOOK_URL` is set (with `KEYLEDGER_BOT_WEBHOOK_SECRET`, listening on
    /// `KEYLEDGER_BOT_WEBHOOK_ADDR`).
    pub bot_ingress: bot::Ingress,
}

/// When the worker role's reconciler runs (file section `[reconcile]`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReconcileSettings {
    /// Between the starts of two passes over every location.
    pub interval: Duration,
    /// A key still waiting for the worker this long after its newest event is applied by
    /// the reconciler (its message was dead-lettered or lost). Longer than the worker's
    /// own retries (about four minutes before dead-lettering), so the two rarely overlap.
    pub stuck_after: Duration,
    /// Between two reads of the panels' traffic counters for the usage view
    /// (`usage_interval_seconds`); full passes read them too.
    pub usage_interval: Duration,
}

impl Default for ReconcileSettings {
    fn default() -> Self {
        Self {
            interval: Duration::from_secs(300),
            stuck_after: Duration::from_secs(300),
            usage_interval: x3ui_worker::DEFAULT_USAGE_INTERVAL,
        }
    }
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileReconcile {
    interval_seconds: Option<u64>,
    stuck_after_seconds: Option<u64>,
    usage_interval_seconds: Option<u64>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileConfig {
    database_url: Option<String>,
    amqp_url: Option<String>,
    http_addr: Option<String>,
    telegram_api_url: Option<String>,
    log_format: Option<LogFormat>,
    #[serde(default)]
    locations: Vec<FileLocation>,
    #[serde(default)]
    reconcile: FileReconcile,
    #[serde(default)]
    notary: crate::notary::FileNotary,
    #[serde(default)]
    limits: FileLimits,
    #[serde(default)]
    access: FileAccess,
}

/// `[access]`: who may ask the bot for keys by themselves.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileAccess {
    /// `anyone` (the default) or `allowlist`.
    request_policy: Option<String>,
    /// The Telegram user ids of `allowlist`.
    allowlist: Option<Vec<i64>>,
}

/// `[limits]`: how much of each costly thing one Telegram user may do.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileLimits {
    messages_per_minute: Option<u32>,
    key_requests_per_hour: Option<u32>,
    rotations_per_hour: Option<u32>,
    revocations_per_hour: Option<u32>,
    history_per_minute: Option<u32>,
    new_links_per_day: Option<u32>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileLocation {
    id: String,
    name: String,
    panel_url: String,
    username: Option<String>,
    password_env: Option<String>,
    inbound_id: i64,
    public_host: String,
    #[serde(default)]
    accept_invalid_certs: bool,
    #[serde(default)]
    api: ApiKind,
    api_token_env: Option<String>,
    /// Lets `panel_url` be plain `http://`, for a panel on the same host: the panel's
    /// password (or token) would otherwise cross the network in clear.
    #[serde(default)]
    allow_plain_http: bool,
    /// The largest answer read from the panel, in MiB; larger ones are refused.
    max_response_mib: Option<u32>,
    flow: Option<String>,
}

impl Config {
    /// Reads the file at `path` (if any) and applies the process environment over it.
    pub fn load(path: Option<&Path>) -> Result<Self, ConfigError> {
        let text = match path {
            Some(path) => Some(std::fs::read_to_string(path).map_err(|e| {
                ConfigError::new("--config", format!("cannot read {}: {e}", path.display()))
            })?),
            None => None,
        };
        Self::from_sources(text.as_deref(), |name| std::env::var(name).ok())
    }

    /// Builds the configuration from file text and an environment lookup.
    pub fn from_sources(
        file: Option<&str>,
        env: impl Fn(&str) -> Option<String>,
    ) -> Result<Self, ConfigError> {
        let file: FileConfig = match file {
            Some(text) => toml::from_str(text).map_err(|e| {
                let message = e.message().to_owned();
                let field = unknown_field_name(&message).unwrap_or_else(|| "config file".into());
                ConfigError::new(field, message)
            })?,
            None => FileConfig::default(),
        };
        let env = |name: &str| env(name).filter(|v| !v.trim().is_empty());

        refuse_password_in_file("database_url", file.database_url.as_deref(), "DATABASE_URL")?;
        refuse_password_in_file("amqp_url", file.amqp_url.as_deref(), "AMQP_URL")?;
        let database_url = service_url(
            "DATABASE_URL",
            env("DATABASE_URL").or(file.database_url),
            DEFAULT_DATABASE_URL,
            &["postgres", "postgresql"],
        )?;
        let database_owner_url = match env("DATABASE_OWNER_URL") {
            Some(raw) => owner_url(raw, &database_url)?,
            None => database_url.clone(),
        };
        let amqp_url = service_url(
            "AMQP_URL",
            env("AMQP_URL").or(file.amqp_url),
            DEFAULT_AMQP_URL,
            &["amqp", "amqps"],
        )?;
        let management_url = management_url(env("RABBITMQ_MANAGEMENT_URL"), &amqp_url)?;
        let http_addr = env("KEYLEDGER_HTTP_ADDR")
            .or(file.http_addr)
            .unwrap_or_else(|| DEFAULT_HTTP_ADDR.into());
        let http_addr = http_addr.parse().map_err(|_| {
            ConfigError::new(
                "KEYLEDGER_HTTP_ADDR",
                format!("{http_addr:?} is not an address like 127.0.0.1:8080"),
            )
        })?;
        let telegram_api_url = env("TELEGRAM_API_URL")
            .or(file.telegram_api_url)
            .unwrap_or_else(|| DEFAULT_TELEGRAM_API_URL.into());
        let telegram_api_url = http_url("TELEGRAM_API_URL", &telegram_api_url)?;
        let log_format = match env("KEYLEDGER_LOG_FORMAT") {
            Some(raw) => Some(match raw.as_str() {
                "json" => LogFormat::Json,
                "pretty" => LogFormat::Pretty,
                other => {
                    return Err(ConfigError::new(
                        "KEYLEDGER_LOG_FORMAT",
                        format!("{other:?} is neither \"json\" nor \"pretty\""),
                    ));
                }
            }),
            None => file.log_format,
        };
        let locations = file
            .locations
            .into_iter()
            .enumerate()
            .map(|(index, location)| resolve_location(index, location, &env))
            .collect::<Result<Vec<_>, _>>()?;
        ensure_unique_ids(&locations)?;
        let reconcile = reconcile_settings(&file.reconcile)?;
        let sub_addr = env("KEYLEDGER_SUB_ADDR").unwrap_or_else(|| DEFAULT_SUB_ADDR.into());
        let sub_addr = sub_addr.parse().map_err(|_| {
            ConfigError::new(
                "KEYLEDGER_SUB_ADDR",
                format!("{sub_addr:?} is not an address like 127.0.0.1:8090"),
            )
        })?;
        let subscription_urls = subscription_urls(&env)?;
        let user_limits = user_limits(&file.limits)?;
        let request_policy = request_policy(&file.access)?;

        let admin_token = token(&env, "KEYLEDGER_ADMIN_TOKEN")?;
        let auditor_token = token(&env, "KEYLEDGER_AUDITOR_TOKEN")?;
        let service_token = token(&env, "KEYLEDGER_SERVICE_TOKEN")?;
        ensure_distinct_tokens(&[
            ("KEYLEDGER_ADMIN_TOKEN", &admin_token),
            ("KEYLEDGER_AUDITOR_TOKEN", &auditor_token),
            ("KEYLEDGER_SERVICE_TOKEN", &service_token),
        ])?;
        let optional_url = |name: &str| env(name).map(|raw| http_url(name, &raw)).transpose();
        let sub_web_page_url = optional_url("KEYLEDGER_SUB_WEB_PAGE_URL")?;
        let sub_support_url = optional_url("KEYLEDGER_SUB_SUPPORT_URL")?;
        let sub_trusted_proxies = trusted_proxies(env("KEYLEDGER_SUB_TRUSTED_PROXIES"))?;
        let bot_ingress = bot_ingress(&env)?;

        Ok(Self {
            database_url,
            database_owner_url,
            amqp_url,
            management_url,
            http_addr,
            admin_token,
            auditor_token,
            service_token,
            telegram_bot_token: env("TELEGRAM_BOT_TOKEN").map(Secret::new),
            telegram_api_url,
            log_filter: env("RUST_LOG").unwrap_or_else(|| "info".into()),
            log_format,
            locations,
            reconcile,
            notary_key: crate::notary::notary_key(&env)?,
            notary: crate::notary::notary_settings(&file.notary)?,
            sub_addr,
            subscription_urls,
            user_limits,
            request_policy,
            sub_web_page_url,
            sub_support_url,
            sub_trusted_proxies,
            bot_ingress,
        })
    }
}

fn user_limits(file: &FileLimits) -> Result<bot::UserLimits, ConfigError> {
    const MINUTE: Duration = Duration::from_secs(60);
    const HOUR: Duration = Duration::from_secs(3600);
    const DAY: Duration = Duration::from_secs(24 * 3600);
    let defaults = bot::UserLimits::default();
    let limit = |field: &str, value: Option<u32>, per: Duration, default: bot::Limit| match value {
        None => Ok(default),
        Some(count) if (1..=10_000).contains(&count) => Ok(bot::Limit { count, per }),
        Some(count) => Err(ConfigError::new(
            format!("limits.{field}"),
            format!("{count} is outside 1 to 10000"),
        )),
    };
    Ok(bot::UserLimits {
        messages: limit(
            "messages_per_minute",
            file.messages_per_minute,
            MINUTE,
            defaults.messages,
        )?,
        key_requests: limit(
            "key_requests_per_hour",
            file.key_requests_per_hour,
            HOUR,
            defaults.key_requests,
        )?,
        rotations: limit(
            "rotations_per_hour",
            file.rotations_per_hour,
            HOUR,
            defaults.rotations,
        )?,
        revocations: limit(
            "revocations_per_hour",
            file.revocations_per_hour,
            HOUR,
            defaults.revocations,
        )?,
        history: limit(
            "history_per_minute",
            file.history_per_minute,
            MINUTE,
            defaults.history,
        )?,
        new_links: limit(
            "new_links_per_day",
            file.new_links_per_day,
            DAY,
            defaults.new_links,
        )?,
    })
}

/// `[access]`, checked: an allowlist names at least one valid user id, and a list is given
/// only with the policy that reads it, so a forgotten `request_policy` is not taken for one.
fn request_policy(file: &FileAccess) -> Result<bot::RequestPolicy, ConfigError> {
    match (file.request_policy.as_deref(), file.allowlist.as_deref()) {
        (None | Some("anyone"), None) => Ok(bot::RequestPolicy::Anyone),
        (None | Some("anyone"), Some(_)) => Err(ConfigError::new(
            "access.allowlist",
            "is only read with request_policy = \"allowlist\"",
        )),
        (Some("allowlist"), None | Some([])) => Err(ConfigError::new(
            "access.allowlist",
            "request_policy = \"allowlist\" needs at least one Telegram user id",
        )),
        (Some("allowlist"), Some(ids)) => ids
            .iter()
            .map(|&id| {
                domain::UserId::new(id)
                    .map_err(|e| ConfigError::new("access.allowlist", e.to_string()))
            })
            .collect::<Result<_, _>>()
            .map(bot::RequestPolicy::Allowlist),
        (Some(other), _) => Err(ConfigError::new(
            "access.request_policy",
            format!("{other:?} is neither \"anyone\" nor \"allowlist\""),
        )),
    }
}

/// Files are read by more people and tools than the environment is: a URL in one may name
/// a host and a user, never a password.
fn refuse_password_in_file(
    field: &str,
    raw: Option<&str>,
    variable: &str,
) -> Result<(), ConfigError> {
    let Some(url) = raw.and_then(|raw| Url::parse(raw).ok()) else {
        return Ok(());
    };
    if url.password().is_some() {
        return Err(ConfigError::new(
            field,
            format!("carries a password; give this URL in the environment ({variable}) instead"),
        ));
    }
    Ok(())
}

/// A comma-separated list of IP addresses.
fn trusted_proxies(raw: Option<String>) -> Result<Vec<std::net::IpAddr>, ConfigError> {
    let Some(raw) = raw else {
        return Ok(Vec::new());
    };
    raw.split(',')
        .map(str::trim)
        .filter(|entry| !entry.is_empty())
        .map(|entry| {
            entry.parse().map_err(|_| {
                ConfigError::new(
                    "KEYLEDGER_SUB_TRUSTED_PROXIES",
                    format!("{entry:?} is not an IP address"),
                )
            })
        })
        .collect()
}

/// `KEYLEDGER_SUB_PUBLIC_URL` with `KEYLEDGER_SUB_SECRET`: one without the other is a
/// mistake worth stopping for, not a silently disabled role.
fn subscription_urls(
    env: &impl Fn(&str) -> Option<String>,
) -> Result<Option<domain::SubscriptionUrls>, ConfigError> {
    const URL: &str = "KEYLEDGER_SUB_PUBLIC_URL";
    const SECRET: &str = "KEYLEDGER_SUB_SECRET";
    let (raw_url, secret) = match (env(URL), env(SECRET)) {
        (None, None) => return Ok(None),
        (Some(_), None) => {
            return Err(ConfigError::new(
                SECRET,
                format!("must be set when {URL} is"),
            ));
        }
        (None, Some(_)) => {
            return Err(ConfigError::new(
                URL,
                format!("must be set when {SECRET} is"),
            ));
        }
        (Some(url), Some(secret)) => (url, Secret::new(secret)),
    };
    let base = http_url(URL, &raw_url)?;
    let urls = domain::SubscriptionUrls::new(base, secret).map_err(|e| match e {
        domain::SubscriptionUrlError::ShortSecret => ConfigError::new(SECRET, e.to_string()),
        domain::SubscriptionUrlError::InvalidBase => ConfigError::new(URL, e.to_string()),
    })?;
    Ok(Some(urls))
}

/// The bot's door: a webhook when its public URL is set, long polling otherwise.
fn bot_ingress(env: &impl Fn(&str) -> Option<String>) -> Result<bot::Ingress, ConfigError> {
    const URL: &str = "KEYLEDGER_BOT_WEBHOOK_URL";
    const SECRET: &str = "KEYLEDGER_BOT_WEBHOOK_SECRET";
    const ADDR: &str = "KEYLEDGER_BOT_WEBHOOK_ADDR";
    let Some(raw_url) = env(URL) else {
        if env(SECRET).is_some() {
            return Err(ConfigError::new(
                URL,
                format!("must be set when {SECRET} is"),
            ));
        }
        return Ok(bot::Ingress::Polling);
    };
    let url = http_url(URL, &raw_url)?;
    if url.scheme() != "https" {
        return Err(ConfigError::new(
            URL,
            "Telegram calls webhooks over https only",
        ));
    }
    let secret = env(SECRET)
        .ok_or_else(|| ConfigError::new(SECRET, format!("must be set when {URL} is")))?;
    // Telegram's rule for `secret_token`.
    let valid = (1..=256).contains(&secret.len())
        && secret
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
    if !valid || secret.len() < 32 {
        return Err(ConfigError::new(
            SECRET,
            "must be 32 to 256 characters of A-Z, a-z, 0-9, _ and -",
        ));
    }
    let listen = env(ADDR).unwrap_or_else(|| DEFAULT_BOT_WEBHOOK_ADDR.into());
    let listen = listen.parse().map_err(|_| {
        ConfigError::new(
            ADDR,
            format!("{listen:?} is not an address like 127.0.0.1:8443"),
        )
    })?;
    Ok(bot::Ingress::Webhook(bot::WebhookConfig {
        listen,
        url,
        secret: Secret::new(secret),
    }))
}

fn reconcile_settings(file: &FileReconcile) -> Result<ReconcileSettings, ConfigError> {
    let defaults = ReconcileSettings::default();
    let seconds = |field: &str, value: Option<u64>, default: Duration| match value {
        None => Ok(default),
        Some(s) if (5..=86_400).contains(&s) => Ok(Duration::from_secs(s)),
        Some(s) => Err(ConfigError::new(
            format!("reconcile.{field}"),
            format!("{s} is outside 5 to 86400 seconds"),
        )),
    };
    Ok(ReconcileSettings {
        interval: seconds("interval_seconds", file.interval_seconds, defaults.interval)?,
        stuck_after: seconds(
            "stuck_after_seconds",
            file.stuck_after_seconds,
            defaults.stuck_after,
        )?,
        usage_interval: seconds(
            "usage_interval_seconds",
            file.usage_interval_seconds,
            defaults.usage_interval,
        )?,
    })
}

/// serde's message for an unknown key is "unknown field `x`, expected ...".
fn unknown_field_name(message: &str) -> Option<String> {
    let rest = message.strip_prefix("unknown field `")?;
    Some(rest.split('`').next()?.to_owned())
}

fn service_url(
    field: &str,
    raw: Option<String>,
    default: &str,
    schemes: &[&str],
) -> Result<ServiceUrl, ConfigError> {
    let raw = raw.unwrap_or_else(|| default.to_owned());
    let url =
        Url::parse(&raw).map_err(|e| ConfigError::new(field, format!("not a valid URL: {e}")))?;
    if !schemes.contains(&url.scheme()) {
        return Err(ConfigError::new(
            field,
            format!("scheme must be one of {schemes:?}, not {:?}", url.scheme()),
        ));
    }
    Ok(ServiceUrl(url))
}

/// `RABBITMQ_MANAGEMENT_URL`, refused here for what the broker crate would refuse at start.
fn management_url(
    raw: Option<String>,
    amqp_url: &ServiceUrl,
) -> Result<Option<ServiceUrl>, ConfigError> {
    const FIELD: &str = "RABBITMQ_MANAGEMENT_URL";
    let Some(raw) = raw else {
        return Ok(None);
    };
    let url =
        Url::parse(&raw).map_err(|e| ConfigError::new(FIELD, format!("not a valid URL: {e}")))?;
    broker::Management::for_broker(amqp_url.as_str(), Some(&url))
        .map_err(|e| ConfigError::new(FIELD, e.to_string()))?;
    Ok(Some(ServiceUrl(url)))
}

/// `DATABASE_OWNER_URL`: a PostgreSQL URL naming the same database as `DATABASE_URL`.
fn owner_url(raw: String, database_url: &ServiceUrl) -> Result<ServiceUrl, ConfigError> {
    const FIELD: &str = "DATABASE_OWNER_URL";
    let url = service_url(
        FIELD,
        Some(raw),
        DEFAULT_DATABASE_URL,
        &["postgres", "postgresql"],
    )?;
    if url.url().path() != database_url.url().path() {
        return Err(ConfigError::new(
            FIELD,
            format!(
                "names database {:?}, DATABASE_URL names {:?}",
                url.url().path(),
                database_url.url().path()
            ),
        ));
    }
    Ok(url)
}

fn http_url(field: &str, raw: &str) -> Result<Url, ConfigError> {
    let url =
        Url::parse(raw).map_err(|e| ConfigError::new(field, format!("not a valid URL: {e}")))?;
    if !matches!(url.scheme(), "http" | "https") || url.host().is_none() {
        return Err(ConfigError::new(
            field,
            "must be an http:// or https:// URL with a host",
        ));
    }
    Ok(url)
}

/// One token for two roles would make the caller whichever role is checked first: an
/// auditor's token that is also the admin's grants the admin's writes.
fn ensure_distinct_tokens(tokens: &[(&str, &Option<Secret>)]) -> Result<(), ConfigError> {
    for (index, (name, token)) in tokens.iter().enumerate() {
        let Some(token) = token else { continue };
        let shared = tokens[..index]
            .iter()
            .find(|(_, other)| other.as_ref() == Some(token));
        if let Some((other, _)) = shared {
            return Err(ConfigError::new(
                *name,
                format!("must differ from {other}: each role needs a token of its own"),
            ));
        }
    }
    Ok(())
}

fn token(env: &impl Fn(&str) -> Option<String>, name: &str) -> Result<Option<Secret>, ConfigError> {
    let Some(value) = env(name) else {
        return Ok(None);
    };
    if value.chars().count() < MIN_TOKEN_CHARS {
        return Err(ConfigError::new(
            name,
            format!("a bearer token needs at least {MIN_TOKEN_CHARS} characters"),
        ));
    }
    Ok(Some(Secret::new(value)))
}

fn secret_from_env(
    env: &impl Fn(&str) -> Option<String>,
    field: String,
    variable: &str,
) -> Result<Secret, ConfigError> {
    env(variable).map(Secret::new).ok_or_else(|| {
        ConfigError::new(field, format!("environment variable {variable} is not set"))
    })
}

fn resolve_location(
    index: usize,
    raw: FileLocation,
    env: &impl Fn(&str) -> Option<String>,
) -> Result<LocationConfig, ConfigError> {
    let field = |name: &str| format!("locations[{index}].{name}");
    let id = LocationId::new(raw.id).map_err(|e| ConfigError::new(field("id"), e.to_string()))?;
    if raw.name.trim().is_empty() {
        return Err(ConfigError::new(field("name"), "must not be empty"));
    }
    let mut panel_url = http_url(&field("panel_url"), &raw.panel_url)?;
    if !panel_url.username().is_empty() || panel_url.password().is_some() {
        return Err(ConfigError::new(
            field("panel_url"),
            "must not carry credentials; use username with password_env, or api_token_env",
        ));
    }
    if panel_url.scheme() == "http" && !raw.allow_plain_http {
        return Err(ConfigError::new(
            field("panel_url"),
            "is plain http, which would send the panel password in clear; use https, or set allow_plain_http = true for a panel on this host",
        ));
    }
    if !panel_url.path().ends_with('/') {
        let path = format!("{}/", panel_url.path());
        panel_url.set_path(&path);
    }
    if raw.inbound_id <= 0 {
        return Err(ConfigError::new(
            field("inbound_id"),
            "must be a positive inbound id",
        ));
    }
    let public_host = raw.public_host.trim().to_owned();
    // An IPv6 address with its brackets or without, but not with one alone: a link
    // cannot carry `[::1` (domain::render_vless_link refuses it).
    let host_ok = !public_host.is_empty()
        && (url::Host::parse(&public_host).is_ok()
            || (!public_host.contains(['[', ']'])
                && url::Host::parse(&format!("[{public_host}]")).is_ok()));
    if !host_ok {
        return Err(ConfigError::new(
            field("public_host"),
            format!("{public_host:?} is not a host name or IP address"),
        ));
    }
    let credentials = match (raw.api_token_env, raw.username, raw.password_env) {
        (Some(variable), _, _) => {
            Credentials::ApiToken(secret_from_env(env, field("api_token_env"), &variable)?)
        }
        (None, Some(username), Some(variable)) if !username.trim().is_empty() => {
            Credentials::Password {
                username,
                password: secret_from_env(env, field("password_env"), &variable)?,
            }
        }
        (None, Some(username), _) if !username.trim().is_empty() => {
            return Err(ConfigError::new(
                field("password_env"),
                "names the environment variable holding the panel password; it is required with username",
            ));
        }
        (None, _, _) => {
            return Err(ConfigError::new(
                field("username"),
                "a location needs username and password_env, or api_token_env",
            ));
        }
    };
    let flow = match raw.flow {
        None => None,
        Some(flow) if flow.is_empty() || flow == x3ui_worker::FLOW_VISION => Some(flow),
        Some(other) => {
            return Err(ConfigError::new(
                field("flow"),
                format!(
                    "{other:?} is not a flow keyledger sets: \"\" or {:?}",
                    x3ui_worker::FLOW_VISION
                ),
            ));
        }
    };
    let max_response_bytes = match raw.max_response_mib {
        None => x3ui_worker::DEFAULT_MAX_RESPONSE_BYTES,
        Some(mib) if (1..=1024).contains(&mib) => mib as usize * 1024 * 1024,
        Some(other) => {
            return Err(ConfigError::new(
                field("max_response_mib"),
                format!("{other} is outside 1 to 1024"),
            ));
        }
    };
    Ok(LocationConfig {
        flow,
        max_response_bytes,
        id,
        name: raw.name,
        panel_url,
        credentials,
        inbound_id: raw.inbound_id,
        public_host,
        accept_invalid_certs: raw.accept_invalid_certs,
        api: raw.api,
    })
}

fn ensure_unique_ids(locations: &[LocationConfig]) -> Result<(), ConfigError> {
    let mut seen = HashSet::new();
    for (index, location) in locations.iter().enumerate() {
        if !seen.insert(location.id.clone()) {
            return Err(ConfigError::new(
                format!("locations[{index}].id"),
                format!("location id {:?} is used twice", location.id.as_str()),
            ));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy_of(file: &str) -> Result<bot::RequestPolicy, ConfigError> {
        Config::from_sources(Some(file), |_| None).map(|config| config.request_policy)
    }

    #[test]
    fn the_access_section_sets_who_may_ask_for_keys_and_is_checked_at_start() {
        assert_eq!(policy_of(""), Ok(bot::RequestPolicy::Anyone));
        let listed = policy_of("[access]\nrequest_policy = \"allowlist\"\nallowlist = [123, 456]")
            .expect("an allowlist");
        let user = |id| domain::UserId::new(id).expect("valid");
        assert!(listed.admits(user(123)) && listed.admits(user(456)));
        assert!(!listed.admits(user(789)));
        for (file, field) in [
            (
                "[access]\nrequest_policy = \"allowlist\"",
                "access.allowlist",
            ),
            (
                "[access]\nrequest_policy = \"allowlist\"\nallowlist = []",
                "access.allowlist",
            ),
            (
                "[access]\nrequest_policy = \"allowlist\"\nallowlist = [0]",
                "access.allowlist",
            ),
            ("[access]\nallowlist = [123]", "access.allowlist"),
            (
                "[access]\nrequest_policy = \"friends\"",
                "access.request_policy",
            ),
        ] {
            let error = policy_of(file).expect_err(file);
            assert_eq!(error.field, field, "{file}: {error}");
        }
    }
}
