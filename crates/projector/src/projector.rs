//! The live projector: the `keyledger.projector` consumer that keeps `key_views` current. On
//! each event it reads the key's stream up to that event and recomputes the whole view rather
//! than patching the stored one, so a redelivered or repeated message cannot leave a view that
//! differs from a replay; the upsert only ever replaces a view with a newer version. Events of
//! a subscription's stream update its subscription view the same way.

use broker::{Consumer, ConsumerConfig, EventHandler, HandlerError, Queue};
use eventstore::{EventStore, RecordedEvent};
use sqlx::PgConnection;
use tokio_util::sync::CancellationToken;

use crate::subscription_view::{is_subscription_event, subscription_view_of, upsert_subscription};
use crate::view::{ViewError, is_key_event, upsert, view_of};

/// The live projector: on each event, recomputes the key's view from the log (up to that
/// event) and stores it, in the consumer runtime's transaction.
#[derive(Clone)]
pub struct KeyViewProjector {
    store: EventStore,
}

impl KeyViewProjector {
    pub fn new(store: EventStore) -> Self {
        Self { store }
    }
}

impl EventHandler for KeyViewProjector {
    async fn handle(
        &self,
        event: &RecordedEvent,
        tx: &mut PgConnection,
    ) -> Result<(), HandlerError> {
        if !is_key_event(event) && !is_subscription_event(event) {
            // A user's access stream: no view of it is kept; its readers read the log.
            return Ok(());
        }
        let events = self
            .store
            .read_stream_after_on(tx, event.stream_id, 0, event.version.max(0) as u32)
            .await
            .map_err(|e| HandlerError::Retry(format!("reading key {}: {e}", event.stream_id)))?;
        if is_subscription_event(event) {
            let view = subscription_view_of(event.stream_id, &events).map_err(handler_error)?;
            if let Some(view) = view {
                upsert_subscription(tx, &view).await?;
                tracing::debug!(subscription_id = %view.subscription_id, generation = view.generation, "subscription view updated");
            }
            return Ok(());
        }
        let view = view_of(event.stream_id, &events).map_err(handler_error)?;
        if let Some(view) = view {
            upsert(tx, "key_views", &view).await?;
            tracing::debug!(key_id = %view.key_id, version = view.version, status = %view.status, "key view updated");
        }
        Ok(())
    }
}

fn handler_error(error: ViewError) -> HandlerError {
    match error {
        // The log itself holds something this build cannot read: no retry fixes that.
        ViewError::UndecodableEvent { .. } => HandlerError::Reject(error.to_string()),
        other => HandlerError::Retry(other.to_string()),
    }
}

/// Runs the projector role until `stop` is cancelled.
pub async fn run_projector(store: EventStore, amqp_url: &str, stop: CancellationToken) {
    let config = ConsumerConfig::new(amqp_url, Queue::Projector);
    let projector = KeyViewProjector::new(store.clone());
    Consumer::new(store, config, projector).run(stop).await;
}
