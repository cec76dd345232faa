//! `/panel/api/inbounds/*`: panels v2.x to v3.0.

use reqwest::Method;
use serde_json::{Value, json};

use super::PanelApi;
use super::session::{Envelope, Session};
use crate::config::PanelConfig;
use crate::error::{Operation, PanelError};
use crate::model::{Inbound, InboundClients, PanelClient, WireInbound};

#[derive(Debug)]
pub struct LegacyApi {
    session: Session,
}

impl LegacyApi {
    pub fn new(config: PanelConfig) -> Result<Self, PanelError> {
        Ok(Self {
            session: Session::new(config)?,
        })
    }

    /// `settings` must be a string holding JSON: an object is refused by the panel.
    fn settings_body(&self, clients: &[&PanelClient]) -> Value {
        json!({
            "id": self.inbound_id(),
            "settings": json!({ "clients": clients }).to_string(),
        })
    }

    async fn write(
        &self,
        operation: Operation,
        path: &str,
        body: Option<&Value>,
        email: &str,
    ) -> Result<Envelope, PanelError> {
        let envelope = self
            .session
            .call(operation, Method::POST, path, body)
            .await?;
        if envelope.success {
            Ok(envelope)
        } else {
            Err(self.session.refused(operation, email, &envelope))
        }
    }
}

pub(crate) async fn fetch_inbound(
    session: &Session,
    operation: Operation,
) -> Result<InboundClients, PanelError> {
    let inbound_id = session.config().inbound_id;
    let path = format!("panel/api/inbounds/get/{inbound_id}");
    let envelope = session.call(operation, Method::GET, &path, None).await?;
    if !envelope.success {
        return Err(session.refused(operation, "", &envelope));
    }
    let wire: WireInbound = serde_json::from_value(envelope.obj)
        .map_err(|e| session.protocol(operation, format!("inbound {inbound_id}: {e}")))?;
    wire.into_parts()
        .map_err(|detail| session.protocol(operation, format!("inbound {inbound_id}: {detail}")))
}

/// Our inbound from `list`, the one read that carries the traffic rows (`clientStats`).
pub(crate) async fn fetch_listed(
    session: &Session,
    operation: Operation,
) -> Result<InboundClients, PanelError> {
    let inbound_id = session.config().inbound_id;
    let envelope = session
        .call(operation, Method::GET, "panel/api/inbounds/list", None)
        .await?;
    if !envelope.success {
        return Err(session.refused(operation, "", &envelope));
    }
    InboundClients::from_list(envelope.obj, inbound_id)
        .map_err(|detail| session.protocol(operation, detail))
}

/// A reset of the client's counters at `path` (`POST`, no body).
pub(crate) async fn reset_traffic(
    session: &Session,
    path: &str,
    email: &str,
) -> Result<(), PanelError> {
    let operation = Operation::ResetTraffic;
    let envelope = session.call(operation, Method::POST, path, None).await?;
    if envelope.success {
        Ok(())
    } else {
        Err(session.refused(operation, email, &envelope))
    }
}

impl PanelApi for LegacyApi {
    super::session_basics!();

    async fn list_with_traffic(&self) -> Result<InboundClients, PanelError> {
        fetch_listed(&self.session, Operation::ListTraffic).await
    }

    async fn reset_client_traffic(&self, email: &str) -> Result<(), PanelError> {
        let segment = super::email_segment(&self.session, Operation::ResetTraffic, email)?;
        let path = format!(
            "panel/api/inbounds/{}/resetClientTraffic/{segment}",
            self.inbound_id(),
        );
        reset_traffic(&self.session, &path, email).await
    }

    async fn list_clients(&self) -> Result<InboundClients, PanelError> {
        fetch_inbound(&self.session, Operation::ListClients).await
    }

    async fn add_clients(&self, clients: &[PanelClient]) -> Result<(), PanelError> {
        if clients.is_empty() {
            return Ok(());
        }
        for client in clients {
            super::checked_email(&self.session, Operation::AddClients, &client.email)?;
        }
        let refs: Vec<&PanelClient> = clients.iter().collect();
        let body = self.settings_body(&refs);
        let emails = clients
            .iter()
            .map(|c| c.email.as_str())
            .collect::<Vec<_>>()
            .join(",");
        self.write(
            Operation::AddClients,
            "panel/api/inbounds/addClient",
            Some(&body),
            &emails,
        )
        .await
        .map(drop)
    }

    async fn update_client(
        &self,
        current: &PanelClient,
        new: &PanelClient,
    ) -> Result<(), PanelError> {
        // The path names the *old* UUID; the body holds the whole new client.
        let id = super::client_id_segment(&self.session, Operation::UpdateClient, &current.id)?;
        super::checked_email(&self.session, Operation::UpdateClient, &new.email)?;
        let path = format!("panel/api/inbounds/updateClient/{id}");
        let body = self.settings_body(&[new]);
        self.write(Operation::UpdateClient, &path, Some(&body), &current.email)
            .await
            .map(drop)
    }

    async fn delete_client(&self, current: &PanelClient) -> Result<(), PanelError> {
        let id = super::client_id_segment(&self.session, Operation::DeleteClient, &current.id)?;
        let path = format!("panel/api/inbounds/{}/delClient/{id}", self.inbound_id());
        self.write(Operation::DeleteClient, &path, None, &current.email)
            .await
            .map(drop)
    }
}
