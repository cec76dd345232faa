//! Talking to a panel: one trait for what keyledger needs, one implementation per route
//! family. These calls do exactly one thing each; idempotency, serialising, retries and
//! the breaker live one level up, in [`crate::ensure`].

mod clients;
mod legacy;
mod session;

use std::future::Future;

pub use clients::ClientsApi;
pub use legacy::LegacyApi;

use crate::config::{ApiKind, PanelConfig};
use crate::error::PanelError;
use crate::model::{Inbound, InboundClients, PanelClient};

/// The operations keyledger needs from one panel, on the configured inbound.
pub trait PanelApi: Send + Sync {
    /// The location id, for error context.
    fn location(&self) -> &str;

    fn inbound_id(&self) -> i64;

    /// Logs in now (normally done lazily by the first call that needs it).
    fn login(&self) -> impl Future<Output = Result<(), PanelError>> + Send;

    fn get_inbound(&self) -> impl Future<Output = Result<Inbound, PanelError>> + Send;

    /// The inbound (with the stream settings links need) and all its clients.
    fn list_clients(&self) -> impl Future<Output = Result<InboundClients, PanelError>> + Send;

    /// [`PanelApi::list_clients`] with each client's traffic row: the counters and the
    /// panel's own `enable` (`InboundClients::traffic` is `Some`).
    fn list_with_traffic(&self) -> impl Future<Output = Result<InboundClients, PanelError>> + Send;

    /// Sets the client's `up`/`down` counters back to zero (`resetClientTraffic`).
    fn reset_client_traffic(
        &self,
        email: &str,
    ) -> impl Future<Output = Result<(), PanelError>> + Send;

    /// Adds all `clients`, in one request where the panel allows it.
    fn add_clients(
        &self,
        clients: &[PanelClient],
    ) -> impl Future<Output = Result<(), PanelError>> + Send;

    /// Replaces `current` with `new` entirely: every field of `new` is sent, and what it
    /// leaves out is gone afterwards.
    fn update_client(
        &self,
        current: &PanelClient,
        new: &PanelClient,
    ) -> impl Future<Output = Result<(), PanelError>> + Send;

    fn delete_client(
        &self,
        current: &PanelClient,
    ) -> impl Future<Output = Result<(), PanelError>> + Send;
}

/// A client id from the panel, as the path segment of `updateClient`/`delClient`. The ids
/// we write are UUIDs; anything else came from someone else, and `..` or a `?` in it would
/// send an authenticated POST elsewhere on the panel, so it is refused, not encoded.
pub(crate) fn client_id_segment(
    session: &session::Session,
    operation: crate::Operation,
    id: &str,
) -> Result<String, crate::PanelError> {
    // The panel compares ids as text, so the id goes into the path as it is, once it is
    // known to be nothing but a UUID's hex digits and dashes.
    let uuid_shaped =
        uuid::Uuid::parse_str(id).is_ok() && id.bytes().all(|b| b.is_ascii_hexdigit() || b == b'-');
    match uuid_shaped {
        true => Ok(id.to_owned()),
        false => Err(session.unaddressable(
            operation,
            format!("client id \"{}\" is not a UUID", shown(id)),
        )),
    }
}

/// A client email about to be sent in a path or a body. keyledger only ever writes
/// `tg<user id>-<location>` for a location ([`domain::client_email`]), compared ignoring
/// case as the panel does; anything else came from someone else and is refused before
/// any request is made.
pub(crate) fn checked_email<'a>(
    session: &session::Session,
    operation: crate::Operation,
    email: &'a str,
) -> Result<&'a str, crate::PanelError> {
    match crate::usage::our_user(email, session.location()) {
        Some(_) => Ok(email),
        None => Err(session.unaddressable(
            operation,
            format!(
                "client email \"{}\" is not one keyledger gives location {}",
                shown(email),
                session.location()
            ),
        )),
    }
}

/// A checked client email, percent-encoded as one path segment.
pub(crate) fn email_segment(
    session: &session::Session,
    operation: crate::Operation,
    email: &str,
) -> Result<String, crate::PanelError> {
    let email = checked_email(session, operation, email)?;
    let mut out = String::with_capacity(email.len());
    for byte in email.bytes() {
        if byte.is_ascii_alphanumeric() || b"-._~@".contains(&byte) {
            out.push(char::from(byte));
        } else {
            out.push_str(&format!("%{byte:02X}"));
        }
    }
    Ok(out)
}

/// A refused value as its error shows it: short and clean.
fn shown(value: &str) -> String {
    domain::bounded_text(value, 64)
}

/// Either route family, chosen by [`PanelConfig::api`]; lets one collection hold
/// locations of both kinds.
#[derive(Debug)]
pub enum AnyPanelApi {
    Legacy(LegacyApi),
    Clients(ClientsApi),
}

impl AnyPanelApi {
    pub fn new(config: PanelConfig) -> Result<Self, PanelError> {
        Ok(match config.api {
            ApiKind::Legacy => Self::Legacy(LegacyApi::new(config)?),
            ApiKind::Clients => Self::Clients(ClientsApi::new(config)?),
        })
    }
}

/// The four methods every route family answers the same way, from its `session` field
/// (a macro rather than trait defaults, so the trait stays implementable outside).
macro_rules! session_basics {
    () => {
        fn location(&self) -> &str {
            self.session.location()
        }

        fn inbound_id(&self) -> i64 {
            self.session.config().inbound_id
        }

        async fn login(&self) -> Result<(), PanelError> {
            self.session.login().await
        }

        async fn get_inbound(&self) -> Result<Inbound, PanelError> {
            Ok(crate::panel::legacy::fetch_inbound(
                &self.session,
                crate::error::Operation::GetInbound,
            )
            .await?
            .inbound)
        }
    };
}
use session_basics;

macro_rules! delegate {
    ($self:ident, $api:ident => $call:expr) => {
        match $self {
            AnyPanelApi::Legacy($api) => $call,
            AnyPanelApi::Clients($api) => $call,
        }
    };
}

impl PanelApi for AnyPanelApi {
    fn location(&self) -> &str {
        delegate!(self, api => api.location())
    }

    fn inbound_id(&self) -> i64 {
        delegate!(self, api => api.inbound_id())
    }

    async fn login(&self) -> Result<(), PanelError> {
        delegate!(self, api => api.login().await)
    }

    async fn get_inbound(&self) -> Result<Inbound, PanelError> {
        delegate!(self, api => api.get_inbound().await)
    }

    async fn list_clients(&self) -> Result<InboundClients, PanelError> {
        delegate!(self, api => api.list_clients().await)
    }

    async fn list_with_traffic(&self) -> Result<InboundClients, PanelError> {
        delegate!(self, api => api.list_with_traffic().await)
    }

    async fn reset_client_traffic(&self, email: &str) -> Result<(), PanelError> {
        delegate!(self, api => api.reset_client_traffic(email).await)
    }

    async fn add_clients(&self, clients: &[PanelClient]) -> Result<(), PanelError> {
        delegate!(self, api => api.add_clients(clients).await)
    }

    async fn update_client(
        &self,
        current: &PanelClient,
        new: &PanelClient,
    ) -> Result<(), PanelError> {
        delegate!(self, api => api.update_client(current, new).await)
    }

    async fn delete_client(&self, current: &PanelClient) -> Result<(), PanelError> {
        delegate!(self, api => api.delete_client(current).await)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Credentials, Operation, PanelConfig, Secret};

    fn session() -> session::Session {
        let config = PanelConfig::new(
            "ams",
            url::Url::parse("http://127.0.0.1:1/").expect("url"),
            Credentials::ApiToken(Secret::new("t")),
            1,
        );
        session::Session::new(config).expect("session")
    }

    /// Refused before sending, final, no panel failure, and said on one clean line.
    fn assert_unaddressable(error: &crate::PanelError, hostile: &str, says: &str) {
        assert!(
            matches!(error, crate::PanelError::Unaddressable { .. }),
            "{hostile}: {error:?}"
        );
        assert!(
            !error.is_transient() && !error.is_panel_failure(),
            "{error:?}"
        );
        let text = error.to_string();
        assert!(text.contains(says), "{hostile}: {text}");
        assert!(!text.chars().any(char::is_control), "{text:?}");
    }

    #[test]
    fn only_uuid_shaped_client_ids_go_into_paths() {
        let session = session();
        let id = "5f0c6a1e-8a4b-4d7e-9a43-2b3c4d5e6f70";
        assert_eq!(
            client_id_segment(&session, Operation::UpdateClient, id).expect("a UUID"),
            id
        );
        for hostile in [
            "../x",
            "..",
            "a?b=1",
            "x/../../login",
            "{5f0c6a1e-8a4b-4d7e-9a43-2b3c4d5e6f70}",
            "",
        ] {
            let error =
                client_id_segment(&session, Operation::DeleteClient, hostile).expect_err("refused");
            assert_unaddressable(&error, hostile, "not a UUID");
        }
    }

    #[test]
    fn only_our_emails_for_the_location_go_into_requests() {
        let session = session();
        assert_eq!(
            email_segment(&session, Operation::ResetTraffic, "tg42-ams").expect("ours"),
            "tg42-ams"
        );
        assert_eq!(
            email_segment(&session, Operation::DeleteClient, "TG42-ams").expect("any case"),
            "TG42-ams"
        );
        for hostile in [
            "../x?y",
            "a/b",
            "tg42-ams/../../login",
            "tg42-ams?x=1",
            "tg42-fra",
            "tg-ams",
            "tg4\n2-ams",
            "alice@example.org",
            "",
        ] {
            let error =
                email_segment(&session, Operation::DeleteClient, hostile).expect_err("refused");
            assert_unaddressable(&error, hostile, "is not one keyledger gives");
        }
    }
}
