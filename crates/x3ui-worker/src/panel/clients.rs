//! `/panel/api/clients/*`: panels v3.1 and later, where clients are panel-wide records
//! attached to inbounds and addressed by email.

use reqwest::Method;
use serde::Deserialize;
use serde_json::{Value, json};

use super::PanelApi;
use super::legacy::{fetch_inbound, fetch_listed};
use super::session::Session;
use crate::config::PanelConfig;
use crate::error::{Operation, PanelError, Refusal};
use crate::model::{Inbound, InboundClients, PanelClient};

#[derive(Debug)]
pub struct ClientsApi {
    session: Session,
}

/// A row of `clients/list`: the numeric record `id`, the VLESS UUID in `uuid`, and the
/// inbounds it is attached to.
#[derive(Debug, Deserialize)]
struct ClientRow {
    #[serde(default)]
    uuid: String,
    #[serde(default, rename = "inboundIds")]
    inbound_ids: Option<Vec<i64>>,
    #[serde(flatten)]
    rest: serde_json::Map<String, Value>,
}

impl ClientRow {
    fn into_client(mut self) -> Result<PanelClient, serde_json::Error> {
        for key in [
            "id",
            "traffic",
            "createdAt",
            "updatedAt",
            "password",
            "auth",
            "security",
            "reverse",
        ] {
            self.rest.remove(key);
        }
        self.rest.insert("id".into(), Value::String(self.uuid));
        serde_json::from_value(Value::Object(self.rest))
    }
}

impl ClientsApi {
    pub fn new(config: PanelConfig) -> Result<Self, PanelError> {
        Ok(Self {
            session: Session::new(config)?,
        })
    }

    async fn post(
        &self,
        operation: Operation,
        path: &str,
        body: Option<&Value>,
        email: &str,
    ) -> Result<(), PanelError> {
        let envelope = self
            .session
            .call(operation, Method::POST, path, body)
            .await?;
        if envelope.success {
            return Ok(());
        }
        let mut error = self.session.refused(operation, email, &envelope);
        // Addressed by email, "record not found" here is the client, not the inbound.
        if let PanelError::Refused { refusal, .. } = &mut error
            && *refusal == Refusal::InboundNotFound
            && operation != Operation::AddClients
        {
            *refusal = Refusal::ClientNotFound;
        }
        Err(error)
    }

    /// `clients/{action}/{email}`, the email checked and percent-encoded as one segment.
    fn email_path(
        &self,
        operation: Operation,
        action: &str,
        email: &str,
    ) -> Result<String, PanelError> {
        let segment = super::email_segment(&self.session, operation, email)?;
        Ok(format!("panel/api/clients/{action}/{segment}"))
    }

    /// `snapshot` with its clients replaced by the inbound's client records.
    async fn with_records(
        &self,
        mut snapshot: InboundClients,
        operation: Operation,
    ) -> Result<InboundClients, PanelError> {
        let envelope = self
            .session
            .call(operation, Method::GET, "panel/api/clients/list", None)
            .await?;
        if !envelope.success {
            return Err(self.session.refused(operation, "", &envelope));
        }
        let rows: Vec<ClientRow> = serde_json::from_value(envelope.obj).map_err(|e| {
            self.session
                .protocol(operation, format!("clients/list: {e}"))
        })?;
        let inbound_id = self.inbound_id();
        snapshot.clients = rows
            .into_iter()
            .filter(|row| {
                row.inbound_ids
                    .as_ref()
                    .is_some_and(|ids| ids.contains(&inbound_id))
            })
            .map(ClientRow::into_client)
            .collect::<Result<_, _>>()
            .map_err(|e| {
                self.session
                    .protocol(operation, format!("clients/list row: {e}"))
            })?;
        Ok(snapshot)
    }
}

impl PanelApi for ClientsApi {
    super::session_basics!();

    async fn list_clients(&self) -> Result<InboundClients, PanelError> {
        let operation = Operation::ListClients;
        let snapshot = fetch_inbound(&self.session, operation).await?;
        self.with_records(snapshot, operation).await
    }

    async fn list_with_traffic(&self) -> Result<InboundClients, PanelError> {
        // The inbound list still carries `clientStats` on v3.1; the clients themselves
        // come from the client records, as in every other read.
        let operation = Operation::ListTraffic;
        let snapshot = fetch_listed(&self.session, operation).await?;
        self.with_records(snapshot, operation).await
    }

    async fn reset_client_traffic(&self, email: &str) -> Result<(), PanelError> {
        let path = self.email_path(Operation::ResetTraffic, "resetTraffic", email)?;
        super::legacy::reset_traffic(&self.session, &path, email).await
    }

    async fn add_clients(&self, clients: &[PanelClient]) -> Result<(), PanelError> {
        for client in clients {
            super::checked_email(&self.session, Operation::AddClients, &client.email)?;
        }
        // No batch route here: one client per request.
        for client in clients {
            let body = json!({ "client": client, "inboundIds": [self.inbound_id()] });
            self.post(
                Operation::AddClients,
                "panel/api/clients/add",
                Some(&body),
                &client.email,
            )
            .await?;
            // The panel switches every new client on; make a disabled one disabled.
            if !client.enable {
                let body = serde_json::to_value(client).map_err(|e| {
                    self.session
                        .protocol(Operation::UpdateClient, e.to_string())
                })?;
                self.post(
                    Operation::UpdateClient,
                    &self.email_path(Operation::UpdateClient, "update", &client.email)?,
                    Some(&body),
                    &client.email,
                )
                .await?;
            }
        }
        Ok(())
    }

    async fn update_client(
        &self,
        current: &PanelClient,
        new: &PanelClient,
    ) -> Result<(), PanelError> {
        let path = self.email_path(Operation::UpdateClient, "update", &current.email)?;
        super::checked_email(&self.session, Operation::UpdateClient, &new.email)?;
        let body = serde_json::to_value(new).map_err(|e| {
            self.session
                .protocol(Operation::UpdateClient, e.to_string())
        })?;
        self.post(Operation::UpdateClient, &path, Some(&body), &current.email)
            .await
    }

    async fn delete_client(&self, current: &PanelClient) -> Result<(), PanelError> {
        self.post(
            Operation::DeleteClient,
            &self.email_path(Operation::DeleteClient, "del", &current.email)?,
            None,
            &current.email,
        )
        .await
    }
}
