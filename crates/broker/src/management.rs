//! A small client of RabbitMQ's management HTTP API (port 15672): what operators see, and
//! the policies the code applies. Tests use it to look at queues the way operators do.

use std::time::Duration;

use serde::Deserialize;
use serde_json::{Value, json};
use url::Url;

#[derive(Debug, thiserror::Error)]
pub enum ManagementError {
    #[error("management API {method} {path}: {source}")]
    Transport {
        method: &'static str,
        path: String,
        source: reqwest::Error,
    },
    #[error("management API {method} {path} answered {status}: {body}")]
    Status {
        method: &'static str,
        path: String,
        status: u16,
        body: String,
    },
    #[error("AMQP URL cannot be turned into a management URL: {0}")]
    Url(String),
    /// The configured management URL (`RABBITMQ_MANAGEMENT_URL`) cannot be used.
    #[error("management URL: {0}")]
    ManagementUrl(String),
}

/// A queue as the management API reports it.
#[derive(Debug, Clone, Deserialize)]
pub struct QueueInfo {
    pub name: String,
    #[serde(default)]
    pub messages: u64,
    #[serde(default)]
    pub messages_ready: u64,
    #[serde(default)]
    pub messages_unacknowledged: u64,
    #[serde(default)]
    pub consumers: u64,
    #[serde(default)]
    pub arguments: Value,
    #[serde(default)]
    pub policy: Option<String>,
}

/// A message fetched through the management API.
#[derive(Debug, Clone, Deserialize)]
pub struct PeekedMessage {
    pub payload: String,
    pub routing_key: String,
    #[serde(default)]
    pub properties: Value,
}

/// The management API of one broker, with one user's credentials.
#[derive(Clone)]
pub struct Management {
    base: Url,
    user: String,
    password: String,
    http: reqwest::Client,
}

impl std::fmt::Debug for Management {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Management")
            .field("base", &self.base.as_str())
            .field("user", &self.user)
            .finish_non_exhaustive()
    }
}

/// `/` must be sent as `%2F` in paths of the management API.
fn segment(value: &str) -> String {
    percent_encoding::utf8_percent_encode(value, percent_encoding::NON_ALPHANUMERIC).to_string()
}

impl Management {
    pub fn new(base: Url, user: impl Into<String>, password: impl Into<String>) -> Self {
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(10))
            .build()
            .unwrap_or_default();
        Self {
            base,
            user: user.into(),
            password: password.into(),
            http,
        }
    }

    /// The same API and credentials with a client of its own, for use on another runtime
    /// (a reqwest client's connections belong to the runtime that made them).
    pub fn fresh(&self) -> Self {
        Self::new(self.base.clone(), self.user.clone(), self.password.clone())
    }

    /// The management API on the AMQP URL's host with its credentials: plain http on port
    /// 15672 for `amqp://`, https on 15671 for `amqps://`, so a broker reached over TLS never
    /// gets its password sent in clear to the management API.
    pub fn for_amqp_url(amqp_url: &str) -> Result<Self, ManagementError> {
        Self::for_broker(amqp_url, None)
    }

    /// The management API of the broker at `amqp_url`: at `management_url` when one is
    /// configured (`RABBITMQ_MANAGEMENT_URL`, e.g. behind a proxy or on another port),
    /// otherwise as [`Management::for_amqp_url`] derives it.
    ///
    /// The credentials are the management URL's own when it names a user (then it must
    /// carry the password too), and the AMQP URL's otherwise. A plain `http://` management
    /// URL is refused for a broker reached over `amqps://`: the password would cross the
    /// network in clear on one of its two ways.
    pub fn for_broker(
        amqp_url: &str,
        management_url: Option<&Url>,
    ) -> Result<Self, ManagementError> {
        let amqp = Url::parse(amqp_url).map_err(|e| ManagementError::Url(e.to_string()))?;
        let host = amqp
            .host_str()
            .ok_or_else(|| ManagementError::Url("no host".into()))?;
        let Some(configured) = management_url else {
            let (scheme, port) = match amqp.scheme() {
                "amqps" => ("https", 15671),
                _ => ("http", 15672),
            };
            let base = Url::parse(&format!("{scheme}://{host}:{port}/"))
                .map_err(|e| ManagementError::Url(e.to_string()))?;
            let (user, password) = credentials(&amqp);
            return Ok(Self::new(base, user, password));
        };
        let refuse = |why: &str| Err(ManagementError::ManagementUrl(why.to_owned()));
        match configured.scheme() {
            "https" => {}
            "http" if amqp.scheme() == "amqps" => {
                return refuse(
                    "is plain http:// while AMQP_URL is amqps://; use https:// so the password is not sent in clear",
                );
            }
            "http" => {}
            _ => return refuse("must be an http:// or https:// URL"),
        }
        if configured.host_str().is_none() {
            return refuse("has no host");
        }
        let (user, password) = if configured.username().is_empty() {
            if configured.password().is_some() {
                return refuse("carries a password but no user");
            }
            credentials(&amqp)
        } else {
            if configured.password().is_none() {
                return refuse("names a user but no password");
            }
            credentials(configured)
        };
        // Credentials travel as basic auth, never in the URL the client logs or shows.
        let mut base = configured.clone();
        let _ = base.set_username("");
        let _ = base.set_password(None);
        base.set_query(None);
        base.set_fragment(None);
        if !base.path().ends_with('/') {
            let path = format!("{}/", base.path());
            base.set_path(&path);
        }
        Ok(Self::new(base, user, password))
    }

    async fn call(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<Value>,
    ) -> Result<Option<Value>, ManagementError> {
        let name: &'static str = match method {
            reqwest::Method::GET => "GET",
            reqwest::Method::PUT => "PUT",
            reqwest::Method::POST => "POST",
            reqwest::Method::DELETE => "DELETE",
            _ => "request",
        };
        let url = format!("{}api/{path}", self.base);
        let mut request = self
            .http
            .request(method, &url)
            .basic_auth(&self.user, Some(&self.password));
        if let Some(body) = body {
            request = request.json(&body);
        }
        let transport = |source| ManagementError::Transport {
            method: name,
            path: path.to_owned(),
            source,
        };
        let response = request.send().await.map_err(transport)?;
        let status = response.status();
        let text = response.text().await.map_err(transport)?;
        if !status.is_success() {
            return Err(ManagementError::Status {
                method: name,
                path: path.to_owned(),
                status: status.as_u16(),
                body: text,
            });
        }
        if text.trim().is_empty() {
            return Ok(None);
        }
        Ok(serde_json::from_str(&text).ok())
    }

    pub async fn create_vhost(&self, vhost: &str) -> Result<(), ManagementError> {
        let path = format!("vhosts/{}", segment(vhost));
        self.call(reqwest::Method::PUT, &path, Some(json!({})))
            .await?;
        let path = format!("permissions/{}/{}", segment(vhost), segment(&self.user));
        let all = json!({"configure": ".*", "write": ".*", "read": ".*"});
        self.call(reqwest::Method::PUT, &path, Some(all)).await?;
        Ok(())
    }

    pub async fn delete_vhost(&self, vhost: &str) -> Result<(), ManagementError> {
        let path = format!("vhosts/{}", segment(vhost));
        self.call(reqwest::Method::DELETE, &path, None).await?;
        Ok(())
    }

    pub async fn vhosts(&self) -> Result<Vec<String>, ManagementError> {
        let answer = self.call(reqwest::Method::GET, "vhosts", None).await?;
        Ok(names(answer))
    }

    /// Creates or replaces the policies of [`crate::topology::policies`].
    pub async fn apply_policies(&self, vhost: &str) -> Result<(), ManagementError> {
        let policies = crate::topology::policies(vhost);
        for policy in policies.as_array().into_iter().flatten() {
            let name = policy["name"].as_str().unwrap_or_default();
            let path = format!("policies/{}/{}", segment(vhost), segment(name));
            let body = json!({
                "pattern": policy["pattern"], "apply-to": policy["apply-to"],
                "priority": policy["priority"], "definition": policy["definition"],
            });
            self.call(reqwest::Method::PUT, &path, Some(body)).await?;
        }
        Ok(())
    }

    /// The broker's own definitions of `vhost` (exchanges, queues, bindings, policies, …),
    /// in the format of `deploy/rabbitmq/definitions.json`, as the UI's export shows them.
    pub async fn definitions(&self, vhost: &str) -> Result<Value, ManagementError> {
        let path = format!("definitions/{}", segment(vhost));
        let answer = self.call(reqwest::Method::GET, &path, None).await?;
        Ok(answer.unwrap_or_default())
    }

    pub async fn queue(&self, vhost: &str, queue: &str) -> Result<QueueInfo, ManagementError> {
        let path = format!("queues/{}/{}", segment(vhost), segment(queue));
        let answer = self.call(reqwest::Method::GET, &path, None).await?;
        serde_json::from_value(answer.unwrap_or_default())
            .map_err(|e| ManagementError::Url(e.to_string()))
    }

    /// Takes up to `count` messages off a queue (they are removed), as the UI's "Get
    /// messages" with "Reject requeue false" does.
    pub async fn take_messages(
        &self,
        vhost: &str,
        queue: &str,
        count: u32,
    ) -> Result<Vec<PeekedMessage>, ManagementError> {
        self.get_messages(vhost, queue, count, "ack_requeue_false")
            .await
    }

    /// Looks at up to `count` messages and puts them back.
    pub async fn peek_messages(
        &self,
        vhost: &str,
        queue: &str,
        count: u32,
    ) -> Result<Vec<PeekedMessage>, ManagementError> {
        self.get_messages(vhost, queue, count, "ack_requeue_true")
            .await
    }

    async fn get_messages(
        &self,
        vhost: &str,
        queue: &str,
        count: u32,
        ackmode: &str,
    ) -> Result<Vec<PeekedMessage>, ManagementError> {
        let path = format!("queues/{}/{}/get", segment(vhost), segment(queue));
        let body = json!({"count": count, "ackmode": ackmode, "encoding": "auto"});
        let answer = self.call(reqwest::Method::POST, &path, Some(body)).await?;
        serde_json::from_value(answer.unwrap_or(json!([])))
            .map_err(|e| ManagementError::Url(e.to_string()))
    }

    /// Moves every message of `from` to `to`, as the UI's "Move messages" does: a
    /// dynamic shovel that deletes itself once `from` is drained (needs the
    /// rabbitmq_shovel plugin, which `.ci/run` enables).
    pub async fn move_messages(
        &self,
        vhost: &str,
        from: &str,
        to: &str,
    ) -> Result<(), ManagementError> {
        let name = format!("move-{from}-to-{to}");
        // A shovel's bare "amqp://" means the default vhost, not the shovel's own.
        let here = format!("amqp:///{}", segment(vhost));
        let path = format!("parameters/shovel/{}/{}", segment(vhost), segment(&name));
        let body = json!({"value": {
            "src-protocol": "amqp091", "src-uri": here, "src-queue": from,
            "src-delete-after": "queue-length",
            "dest-protocol": "amqp091", "dest-uri": here, "dest-queue": to,
            "ack-mode": "on-confirm",
        }});
        self.call(reqwest::Method::PUT, &path, Some(body)).await?;
        Ok(())
    }

    /// Names of the client connections open on `vhost`.
    pub async fn connections(&self, vhost: &str) -> Result<Vec<String>, ManagementError> {
        let path = format!("vhosts/{}/connections", segment(vhost));
        let answer = self.call(reqwest::Method::GET, &path, None).await?;
        Ok(names(answer))
    }

    /// Closes a client connection from the broker's side, as a broker restart does.
    pub async fn close_connection(&self, name: &str) -> Result<(), ManagementError> {
        let path = format!("connections/{}", segment(name));
        match self.call(reqwest::Method::DELETE, &path, None).await {
            Err(ManagementError::Status { status: 404, .. }) => Ok(()),
            other => other.map(|_| ()),
        }
    }
}

/// The vhost an AMQP URL names (`/` when its path is empty).
pub fn vhost_of(amqp_url: &str) -> Result<String, ManagementError> {
    let url = Url::parse(amqp_url).map_err(|e| ManagementError::Url(e.to_string()))?;
    let path = url.path().trim_start_matches('/');
    Ok(if path.is_empty() {
        "/".to_owned()
    } else {
        decode(path)
    })
}

fn names(answer: Option<Value>) -> Vec<String> {
    answer
        .and_then(|value| value.as_array().cloned())
        .unwrap_or_default()
        .iter()
        .filter_map(|item| item["name"].as_str().map(str::to_owned))
        .collect()
}

/// The user and password a URL carries, `guest` for what it leaves out.
fn credentials(url: &Url) -> (String, String) {
    let user = if url.username().is_empty() {
        "guest".to_owned()
    } else {
        decode(url.username())
    };
    (user, decode(url.password().unwrap_or("guest")))
}

fn decode(value: &str) -> String {
    percent_encoding::percent_decode_str(value)
        .decode_utf8_lossy()
        .into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_broker_over_tls_is_managed_over_tls_too() {
        let plain = Management::for_amqp_url("amqp://u:p@rabbit:5672/%2f").expect("valid");
        assert_eq!(plain.base.as_str(), "http://rabbit:15672/");
        let tls = Management::for_amqp_url("amqps://u:p@rabbit:5671/%2f").expect("valid");
        assert_eq!(tls.base.as_str(), "https://rabbit:15671/");
        assert_eq!(tls.user, "u");
    }

    fn url(text: &str) -> Url {
        Url::parse(text).expect("valid URL")
    }

    #[test]
    fn a_configured_management_url_is_used_instead_of_the_derived_one() {
        let amqp = "amqps://svc:amqp-pw@rabbit:5671/keyledger";
        let configured = url("https://rabbit.internal:15671/rabbitmq?x=1");
        let management = Management::for_broker(amqp, Some(&configured)).expect("valid");
        assert_eq!(
            management.base.as_str(),
            "https://rabbit.internal:15671/rabbitmq/"
        );
        // No user in it: the broker's credentials.
        assert_eq!(
            (management.user.as_str(), management.password.as_str()),
            ("svc", "amqp-pw")
        );

        let own = url("https://admin:mgmt%2Fpw@rabbit.internal/");
        let management = Management::for_broker(amqp, Some(&own)).expect("valid");
        assert_eq!(
            (management.user.as_str(), management.password.as_str()),
            ("admin", "mgmt/pw")
        );
        assert_eq!(management.base.as_str(), "https://rabbit.internal/");
        let shown = format!("{management:?}");
        assert!(
            !shown.contains("mgmt") && !shown.contains("amqp-pw"),
            "{shown}"
        );

        let derived = Management::for_broker(amqp, None).expect("valid");
        assert_eq!(derived.base.as_str(), "https://rabbit:15671/");
    }

    #[test]
    fn a_management_url_that_would_leak_or_lacks_credentials_is_refused() {
        let tls = "amqps://svc:pw@rabbit:5671/keyledger";
        let plain = "amqp://svc:pw@rabbit:5672/keyledger";
        let refused = |amqp: &str, management: &str| {
            Management::for_broker(amqp, Some(&url(management)))
                .expect_err("refused")
                .to_string()
        };
        assert!(refused(tls, "http://rabbit:15672/").contains("in clear"));
        assert!(refused(plain, "https://admin@rabbit/").contains("no password"));
        assert!(refused(plain, "https://:pw@rabbit/").contains("no user"));
        assert!(refused(plain, "ftp://rabbit/").contains("http://"));
        // Plain http for a plain broker is what the derived URL is too.
        let local =
            Management::for_broker(plain, Some(&url("http://127.0.0.1:15672"))).expect("valid");
        assert_eq!(local.base.as_str(), "http://127.0.0.1:15672/");
    }
}
