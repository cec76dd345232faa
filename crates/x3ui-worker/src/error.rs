//! How a panel call fails, in terms a caller can act on: [`PanelError`] names the location,
//! operation and client, and says whether another try may help ([`PanelError::is_transient`])
//! and whether it counts against the panel's circuit breaker
//! ([`PanelError::is_panel_failure`]). Refusals are classified from the bracketed English part
//! of the panel's message, the only part it does not translate (docs/panel.md, "Refusals").

use std::fmt;
use std::time::Duration;

/// What we were doing when a panel call failed; part of every error's context.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Operation {
    Login,
    GetInbound,
    ListClients,
    AddClients,
    UpdateClient,
    DeleteClient,
    /// The inbound list with its traffic rows (`clientStats`).
    ListTraffic,
    ResetTraffic,
}

impl Operation {
    /// The `operation` label of the panel call metrics.
    pub fn label(self) -> &'static str {
        match self {
            Self::Login => "login",
            Self::GetInbound => "get_inbound",
            Self::ListClients => "list_clients",
            Self::AddClients => "add_clients",
            Self::UpdateClient => "update_client",
            Self::DeleteClient => "delete_client",
            Self::ListTraffic => "list_traffic",
            Self::ResetTraffic => "reset_traffic",
        }
    }
}

impl fmt::Display for Operation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Login => "login",
            Self::GetInbound => "get inbound",
            Self::ListClients => "list clients",
            Self::AddClients => "add clients",
            Self::UpdateClient => "update client",
            Self::DeleteClient => "delete client",
            Self::ListTraffic => "list traffic",
            Self::ResetTraffic => "reset client traffic",
        })
    }
}

/// The panel's business refusals (HTTP 200, `success:false`), classified from the
/// English part of `msg` in brackets, which is not translated.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    DuplicateEmail,
    ClientNotFound,
    LastClient,
    InboundNotFound,
    Other,
}

impl Refusal {
    pub(crate) fn classify(msg: &str) -> Self {
        // Only the bracketed `<error>` is stable across languages; the prefix is not.
        let detail = msg
            .find('(')
            .map_or(msg, |start| &msg[start..])
            .to_ascii_lowercase();
        if detail.contains("duplicate email") || detail.contains("email already in use") {
            Self::DuplicateEmail
        } else if detail.contains("no client remained") {
            Self::LastClient
        } else if detail.contains("client not found")
            // v2.9.3 and older answer this for an updateClient whose old UUID is gone.
            || detail.contains("empty client id")
        {
            Self::ClientNotFound
        } else if detail.contains("record not found") {
            Self::InboundNotFound
        } else {
            Self::Other
        }
    }
}

/// Why a call to one panel failed, with the location, operation and client it was about.
#[derive(Debug, thiserror::Error)]
pub enum PanelError {
    #[error("{location}: {operation}: cannot reach the panel: {source}")]
    Transport {
        location: String,
        operation: Operation,
        #[source]
        source: reqwest::Error,
    },
    #[error("{location}: {operation}: no answer within {after:?}")]
    Timeout {
        location: String,
        operation: Operation,
        after: Duration,
    },
    #[error("{location}: {operation}: HTTP {status}")]
    Http {
        location: String,
        operation: Operation,
        status: u16,
    },
    #[error("{location}: cannot take the panel's write turn in PostgreSQL: {source}")]
    WriteTurn {
        location: String,
        #[source]
        source: sqlx::Error,
    },
    #[error("{location}: login refused: {msg}")]
    LoginRefused { location: String, msg: String },
    #[error(
        "{location}: {operation}: HTTP {status} right after a fresh login; check the web base path in panel_url"
    )]
    SessionRejected {
        location: String,
        operation: Operation,
        status: u16,
    },
    #[error("{location}: {operation} {email}: the panel refused: {msg}")]
    Refused {
        location: String,
        operation: Operation,
        email: String,
        refusal: Refusal,
        msg: String,
    },
    #[error("{location}: {operation}: unexpected answer: {detail}")]
    Protocol {
        location: String,
        operation: Operation,
        detail: String,
    },
    /// A value from the panel (a client id or email) that is not the shape keyledger
    /// writes, refused before it went into a request: nothing was sent.
    #[error("{location}: {operation}: {detail}; nothing was sent")]
    Unaddressable {
        location: String,
        operation: Operation,
        detail: String,
    },
    #[error("{location}: {email}: the panel still differs after writing it ({detail})")]
    ReadBackMismatch {
        location: String,
        email: String,
        detail: String,
    },
    #[error("{location}: {email}: email is taken by a client outside inbound {inbound_id}")]
    EmailTakenElsewhere {
        location: String,
        email: String,
        inbound_id: i64,
    },
    #[error("{location}: circuit breaker open, next try in {retry_in:?}")]
    CircuitOpen {
        location: String,
        retry_in: Duration,
    },
    #[error("{location}: bad configuration: {detail}")]
    Config { location: String, detail: String },
}

impl PanelError {
    /// Worth another try after a pause: the panel may answer differently next time.
    pub fn is_transient(&self) -> bool {
        match self {
            Self::Transport { .. }
            | Self::Timeout { .. }
            | Self::Protocol { .. }
            | Self::ReadBackMismatch { .. }
            | Self::WriteTurn { .. } => true,
            Self::Http { status, .. } => *status >= 500 || *status == 429,
            Self::LoginRefused { .. }
            | Self::SessionRejected { .. }
            | Self::Refused { .. }
            | Self::Unaddressable { .. }
            | Self::EmailTakenElsewhere { .. }
            | Self::CircuitOpen { .. }
            | Self::Config { .. } => false,
        }
    }

    /// Counts as the panel being unhealthy. A refusal is the panel working as designed,
    /// so it does not; a refused login does, so a wrong password opens the breaker
    /// instead of being retried in a loop (and tripping the panel's login limiter).
    pub fn is_panel_failure(&self) -> bool {
        match self {
            Self::LoginRefused { .. } | Self::SessionRejected { .. } => true,
            Self::ReadBackMismatch { .. } => false,
            other => other.is_transient(),
        }
    }

    pub fn refusal(&self) -> Option<Refusal> {
        match self {
            Self::Refused { refusal, .. } => Some(*refusal),
            _ => None,
        }
    }
}

/// Why no `vless://` link could be rendered for a client. The key is acknowledged
/// without one; the link follows with the next acknowledgement.
#[derive(Debug, thiserror::Error)]
pub enum LinkUnavailable {
    #[error("{location}: no public_host is configured for links")]
    NoPublicHost { location: String },
    #[error("{location}: reading the inbound's settings for links: {source}")]
    Panel {
        location: String,
        #[source]
        source: PanelError,
    },
    #[error("{location}: inbound {inbound_id} cannot give a link: {source}")]
    Render {
        location: String,
        inbound_id: i64,
        #[source]
        source: domain::LinkError,
    },
}

#[cfg(test)]
mod tests {
    use super::Refusal;

    #[test]
    fn refusals_are_classified_by_the_bracketed_english_part() {
        let cases = [
            (
                "Something went wrong (Duplicate email: tg1-ams\n)",
                Refusal::DuplicateEmail,
            ),
            (
                "Что-то пошло не так (no client remained in Inbound\n)",
                Refusal::LastClient,
            ),
            (
                "x (Client Not Found In Inbound For ID: 1\n)",
                Refusal::ClientNotFound,
            ),
            ("x (record not found)", Refusal::InboundNotFound),
            ("x (email already in use: a\n)", Refusal::DuplicateEmail),
            ("x (something else)", Refusal::Other),
        ];
        for (msg, want) in cases {
            assert_eq!(Refusal::classify(msg), want, "{msg}");
        }
    }
}
