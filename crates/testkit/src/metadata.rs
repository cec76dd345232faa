//! Event metadata as tests record it: who acted and under which command.

use eventstore::{Actor, ActorKind, EventMetadata};
use uuid::Uuid;

/// Metadata of an admin acting in a test, with no command id (every append is new).
pub fn metadata() -> EventMetadata {
    let id = Uuid::new_v4();
    EventMetadata {
        correlation_id: id,
        causation_id: id,
        actor: Actor::new(ActorKind::Admin, "test"),
        command_id: None,
    }
}

/// Metadata of `kind` acting under a fresh command id.
pub fn command_metadata(kind: ActorKind) -> EventMetadata {
    EventMetadata::for_command(Uuid::new_v4(), Actor::new(kind, "test"))
}
