//! Event metadata as tests record it: who acted and under which command; and the most
//! common command tests record, a key request.

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

/// A user's request for a key at `location`, now, with a fresh client UUID, no expiry and
/// no traffic limit, and the key it is for.
pub fn key_request(user: i64, location: &str) -> (domain::KeyId, domain::KeyCommand) {
    let user = domain::UserId::new(user).expect("a valid Telegram user id");
    let location = domain::LocationId::new(location).expect("a valid location id");
    let key = domain::KeyId::for_user_at(user, &location);
    let command = domain::KeyCommand::Request(domain::RequestKey {
        user_id: user,
        location,
        fresh_client_uuid: Uuid::new_v4(),
        expires_at: None,
        traffic_limit_bytes: 0,
        now: time::OffsetDateTime::now_utc(),
    });
    (key, command)
}
