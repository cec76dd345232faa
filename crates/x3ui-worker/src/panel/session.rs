//! One cookie session with one panel: login, CSRF, Bearer, and the "log in again once"
//! rule of docs/panel.md.

use std::fmt;

use reqwest::header::{ACCEPT, ACCEPT_LANGUAGE, AUTHORIZATION, HeaderValue};
use reqwest::{Method, StatusCode};
use serde::Deserialize;
use serde_json::Value;
use tokio::sync::Mutex;
use url::Url;

use crate::config::{Credentials, PanelConfig};
use crate::error::{Operation, PanelError, Refusal};

const CSRF_HEADER: &str = "X-CSRF-Token";

/// The panel's envelope; every JSON answer has all three keys.
#[derive(Debug, Deserialize)]
pub(crate) struct Envelope {
    pub success: bool,
    #[serde(default)]
    pub msg: String,
    #[serde(default)]
    pub obj: Value,
}

/// What one exchange gave, before deciding whether to log in again.
enum Exchange {
    Answer(Envelope),
    /// The panel's ways of saying "no valid session": 401/403/404, a 3xx to the login
    /// page, or a body that is not JSON (the login page itself).
    NeedsLogin(Unauthenticated),
}

#[derive(Debug)]
enum Unauthenticated {
    Status(StatusCode),
    NotJson(String),
}

#[derive(Default)]
struct SessionState {
    logged_in: bool,
    csrf: Option<String>,
    /// Bumped on every login, so concurrent callers that all saw an expired session
    /// log in once between them, not once each.
    generation: u64,
}

pub(crate) struct Session {
    config: PanelConfig,
    base: Url,
    http: reqwest::Client,
    state: Mutex<SessionState>,
}

impl fmt::Debug for Session {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Session")
            .field("location", &self.config.location)
            .field("base", &self.base.as_str())
            .finish_non_exhaustive()
    }
}

impl Session {
    pub(crate) fn new(config: PanelConfig) -> Result<Self, PanelError> {
        let http = reqwest::Client::builder()
            .cookie_store(true)
            // A 3xx to the login page means "session gone"; following it would hide that.
            .redirect(reqwest::redirect::Policy::none())
            .danger_accept_invalid_certs(config.accept_invalid_certs)
            .connect_timeout(config.connect_timeout)
            .timeout(config.request_timeout)
            .build()
            .map_err(|e| PanelError::Config {
                location: config.location.clone(),
                detail: format!("cannot build the HTTP client: {e}"),
            })?;
        Ok(Self {
            base: config.base(),
            config,
            http,
            state: Mutex::new(SessionState::default()),
        })
    }

    pub(crate) fn config(&self) -> &PanelConfig {
        &self.config
    }

    pub(crate) fn location(&self) -> &str {
        &self.config.location
    }

    /// Logs in now, replacing any session we had.
    pub(crate) async fn login(&self) -> Result<(), PanelError> {
        let mut state = self.state.lock().await;
        self.login_locked(&mut state).await
    }

    /// One API call with the re-login rule: lazily log in, and on a lost session log in
    /// again once and repeat the call once. A lost session right after a fresh login is
    /// not a session problem (docs/panel.md "Base path") and is reported as such.
    pub(crate) async fn call(
        &self,
        operation: Operation,
        method: Method,
        path: &str,
        body: Option<&Value>,
    ) -> Result<Envelope, PanelError> {
        let (generation, fresh) = self.ensure_login().await?;
        let why = match self.exchange(operation, method.clone(), path, body).await? {
            Exchange::Answer(envelope) => return Ok(envelope),
            Exchange::NeedsLogin(why) => why,
        };
        if fresh || matches!(self.config.credentials, Credentials::ApiToken(_)) {
            return Err(self.rejected(operation, why));
        }
        tracing::debug!(location = %self.location(), %operation, ?why, "session lost; logging in again");
        self.relogin(generation).await?;
        match self.exchange(operation, method, path, body).await? {
            Exchange::Answer(envelope) => Ok(envelope),
            Exchange::NeedsLogin(why) => Err(self.rejected(operation, why)),
        }
    }

    fn rejected(&self, operation: Operation, why: Unauthenticated) -> PanelError {
        match why {
            Unauthenticated::Status(status) => PanelError::SessionRejected {
                location: self.location().to_owned(),
                operation,
                status: status.as_u16(),
            },
            Unauthenticated::NotJson(detail) => self.protocol(operation, detail),
        }
    }

    /// Returns the session generation the caller works with, and whether it logged in
    /// just now.
    async fn ensure_login(&self) -> Result<(u64, bool), PanelError> {
        if matches!(self.config.credentials, Credentials::ApiToken(_)) {
            return Ok((0, false));
        }
        let mut state = self.state.lock().await;
        if state.logged_in {
            return Ok((state.generation, false));
        }
        self.login_locked(&mut state).await?;
        Ok((state.generation, true))
    }

    async fn relogin(&self, seen_generation: u64) -> Result<(), PanelError> {
        let mut state = self.state.lock().await;
        if state.logged_in && state.generation != seen_generation {
            return Ok(());
        }
        self.login_locked(&mut state).await
    }

    async fn login_locked(&self, state: &mut SessionState) -> Result<(), PanelError> {
        let Credentials::Password { username, password } = &self.config.credentials else {
            return Ok(());
        };
        state.logged_in = false;
        state.csrf = self.fetch_csrf_token().await?;
        let mut request = self
            .request(Method::POST, "login", state.csrf.as_deref())?
            .form(&[
                ("username", username.as_str()),
                ("password", password.expose()),
            ]);
        if let Some(token) = &state.csrf {
            request = request.header(CSRF_HEADER, token);
        }
        let response = request
            .send()
            .await
            .map_err(|e| self.transport(Operation::Login, e))?;
        let status = response.status();
        if status == StatusCode::NOT_FOUND {
            return Err(PanelError::SessionRejected {
                location: self.location().to_owned(),
                operation: Operation::Login,
                status: status.as_u16(),
            });
        }
        if !status.is_success() {
            return Err(self.http_error(Operation::Login, status));
        }
        let bytes = self.read_body(Operation::Login, response).await?;
        let envelope: Envelope = serde_json::from_slice(&bytes).map_err(|e| {
            self.protocol(
                Operation::Login,
                format!("login answer is not the JSON envelope: {e}"),
            )
        })?;
        // The wrong-password trap: HTTP 200 with success=false.
        if !envelope.success {
            return Err(PanelError::LoginRefused {
                location: self.location().to_owned(),
                msg: foreign(&envelope.msg),
            });
        }
        state.logged_in = true;
        state.generation += 1;
        tracing::debug!(location = %self.location(), "logged in to the panel");
        Ok(())
    }

    /// v3.0+ hands out a CSRF token before login; older panels answer 404 here, which
    /// simply means "no CSRF".
    async fn fetch_csrf_token(&self) -> Result<Option<String>, PanelError> {
        let response = self
            .request(Method::GET, "csrf-token", None)?
            .send()
            .await
            .map_err(|e| self.transport(Operation::Login, e))?;
        if !response.status().is_success() {
            return Ok(None);
        }
        let bytes = self.read_body(Operation::Login, response).await?;
        let Ok(envelope) = serde_json::from_slice::<Envelope>(&bytes) else {
            return Ok(None);
        };
        Ok(match envelope.obj {
            Value::String(token) if envelope.success && !token.is_empty() => Some(token),
            _ => None,
        })
    }

    async fn exchange(
        &self,
        operation: Operation,
        method: Method,
        path: &str,
        body: Option<&Value>,
    ) -> Result<Exchange, PanelError> {
        let csrf = if method == Method::POST {
            self.state.lock().await.csrf.clone()
        } else {
            None
        };
        let mut request = self.request(method, path, csrf.as_deref())?;
        if let Some(body) = body {
            request = request.json(body);
        }
        let response = request
            .send()
            .await
            .map_err(|e| self.transport(operation, e))?;
        let status = response.status();
        if status.is_redirection()
            || matches!(
                status,
                StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN | StatusCode::NOT_FOUND
            )
        {
            return Ok(Exchange::NeedsLogin(Unauthenticated::Status(status)));
        }
        if !status.is_success() {
            return Err(self.http_error(operation, status));
        }
        let bytes = self.read_body(operation, response).await?;
        match serde_json::from_slice::<Envelope>(&bytes) {
            Ok(envelope) => Ok(Exchange::Answer(envelope)),
            Err(e) => Ok(Exchange::NeedsLogin(Unauthenticated::NotJson(format!(
                "HTTP {status} with a body that is not the JSON envelope: {e}"
            )))),
        }
    }

    /// The answer's body, read chunk by chunk and refused as soon as it passes
    /// [`PanelConfig::max_response_bytes`], so a panel answering gigabytes costs us at most
    /// that much memory.
    async fn read_body(
        &self,
        operation: Operation,
        mut response: reqwest::Response,
    ) -> Result<Vec<u8>, PanelError> {
        let limit = self.config().max_response_bytes;
        let too_large = || {
            self.protocol(
                operation,
                format!("the answer is larger than {limit} bytes (max_response_bytes)"),
            )
        };
        if response
            .content_length()
            .is_some_and(|length| length > limit as u64)
        {
            return Err(too_large());
        }
        let mut body = Vec::new();
        while let Some(chunk) = response
            .chunk()
            .await
            .map_err(|e| self.transport(operation, e))?
        {
            if body.len() + chunk.len() > limit {
                return Err(too_large());
            }
            body.extend_from_slice(&chunk);
        }
        Ok(body)
    }

    fn request(
        &self,
        method: Method,
        path: &str,
        csrf: Option<&str>,
    ) -> Result<reqwest::RequestBuilder, PanelError> {
        let url = self.base.join(path).map_err(|e| PanelError::Config {
            location: self.location().to_owned(),
            detail: format!("bad panel path {path:?}: {e}"),
        })?;
        let mut request = self
            .http
            .request(method, url)
            .header(ACCEPT, "application/json")
            // Error texts are translated; the English form is what Refusal reads.
            .header(ACCEPT_LANGUAGE, "en-US")
            .header("X-Requested-With", "XMLHttpRequest");
        match (&self.config.credentials, csrf) {
            (Credentials::ApiToken(token), _) => {
                let mut value = HeaderValue::from_str(&format!("Bearer {}", token.expose()))
                    .map_err(|_| PanelError::Config {
                        location: self.location().to_owned(),
                        detail: "the API token is not a valid header value".into(),
                    })?;
                value.set_sensitive(true);
                request = request.header(AUTHORIZATION, value);
            }
            (Credentials::Password { .. }, Some(token)) => {
                request = request.header(CSRF_HEADER, token);
            }
            (Credentials::Password { .. }, None) => {}
        }
        Ok(request)
    }

    fn transport(&self, operation: Operation, source: reqwest::Error) -> PanelError {
        let location = self.location().to_owned();
        if source.is_timeout() {
            PanelError::Timeout {
                location,
                operation,
                after: self.config.request_timeout,
            }
        } else {
            PanelError::Transport {
                location,
                operation,
                // The URL carries no secret, but drop it anyway: errors end up in events.
                source: source.without_url(),
            }
        }
    }

    fn http_error(&self, operation: Operation, status: StatusCode) -> PanelError {
        PanelError::Http {
            location: self.location().to_owned(),
            operation,
            status: status.as_u16(),
        }
    }

    /// Turns `success:false` into a classified refusal about `email`. The refusal is read
    /// from the whole message; only its bounded, clean form is kept.
    pub(crate) fn refused(
        &self,
        operation: Operation,
        email: &str,
        envelope: &Envelope,
    ) -> PanelError {
        PanelError::Refused {
            location: self.location().to_owned(),
            operation,
            email: foreign(email),
            refusal: Refusal::classify(&envelope.msg),
            msg: foreign(&envelope.msg),
        }
    }

    /// An answer we cannot use. `detail` quotes the panel (serde's errors quote the
    /// offending value), so it is bounded and cleaned like any panel text.
    pub(crate) fn protocol(&self, operation: Operation, detail: impl AsRef<str>) -> PanelError {
        PanelError::Protocol {
            location: self.location().to_owned(),
            operation,
            detail: foreign(detail.as_ref()),
        }
    }

    /// A value from the panel refused before it went into a request.
    pub(crate) fn unaddressable(&self, operation: Operation, detail: String) -> PanelError {
        PanelError::Unaddressable {
            location: self.location().to_owned(),
            operation,
            detail,
        }
    }
}

/// Panel text as errors keep it: trimmed, cleaned and bounded (docs/panel.md "Hostile
/// panels"), since errors end up in logs, events and dead-letter headers.
fn foreign(text: &str) -> String {
    domain::bounded_text(text.trim(), domain::MAX_FOREIGN_TEXT_CHARS)
}
