//! [`Aggregate`]: what the event store needs to run commands against any kind of stream — a
//! key's, a subscription's or a user's access — without knowing which: how to name the stream, fold its
//! events, decide a command and encode or decode an event. One ledger then serves them all.

use serde_json::Value;
use uuid::Uuid;

use crate::access::{
    UserAccessCommand, UserAccessEvent, UserAccessId, UserAccessState, decide_user_access,
    evolve_user_access,
};
use crate::command::KeyCommand;
use crate::decide::{decide, evolve};
use crate::error::DomainError;
use crate::event::{EventDecodeError, KeyEvent, data_of, from_type_and_data};
use crate::identity::KeyId;
use crate::state::KeyState;
use crate::subscription::{
    SubscriptionCommand, SubscriptionEvent, SubscriptionId, SubscriptionState, decide_subscription,
    evolve_subscription,
};

/// A kind of stream whose commands are decided from the state folded from its events.
pub trait Aggregate: Send + Sync + 'static {
    type Id: Copy + std::fmt::Display + std::fmt::Debug + Send + Sync;
    type State: Default + Clone + std::fmt::Debug + Send + Sync;
    type Command: std::fmt::Debug + Send + Sync;
    type Event: Clone + std::fmt::Debug + Send + Sync;

    fn stream_id(id: Self::Id) -> Uuid;
    /// How many events the state was folded from.
    fn version(state: &Self::State) -> u32;
    fn decide(
        state: &Self::State,
        command: &Self::Command,
    ) -> Result<Vec<Self::Event>, DomainError>;
    fn evolve(state: Self::State, event: &Self::Event) -> Self::State;
    fn event_type(event: &Self::Event) -> &'static str;
    fn event_data(event: &Self::Event) -> Value;
    fn decode(event_type: &str, data: &Value) -> Result<Self::Event, EventDecodeError>;
}

/// A VPN key's stream.
#[derive(Debug, Clone, Copy)]
pub struct Key;

impl Aggregate for Key {
    type Id = KeyId;
    type State = KeyState;
    type Command = KeyCommand;
    type Event = KeyEvent;

    fn stream_id(id: KeyId) -> Uuid {
        id.as_uuid()
    }
    fn version(state: &KeyState) -> u32 {
        state.version
    }
    fn decide(state: &KeyState, command: &KeyCommand) -> Result<Vec<KeyEvent>, DomainError> {
        decide(state, command)
    }
    fn evolve(state: KeyState, event: &KeyEvent) -> KeyState {
        evolve(state, event)
    }
    fn event_type(event: &KeyEvent) -> &'static str {
        event.event_type()
    }
    fn event_data(event: &KeyEvent) -> Value {
        event.data()
    }
    fn decode(event_type: &str, data: &Value) -> Result<KeyEvent, EventDecodeError> {
        KeyEvent::from_parts(event_type, data)
    }
}

/// A user's subscription stream.
#[derive(Debug, Clone, Copy)]
pub struct Subscription;

impl Aggregate for Subscription {
    type Id = SubscriptionId;
    type State = SubscriptionState;
    type Command = SubscriptionCommand;
    type Event = SubscriptionEvent;

    fn stream_id(id: SubscriptionId) -> Uuid {
        id.as_uuid()
    }
    fn version(state: &SubscriptionState) -> u32 {
        state.version
    }
    fn decide(
        state: &SubscriptionState,
        command: &SubscriptionCommand,
    ) -> Result<Vec<SubscriptionEvent>, DomainError> {
        decide_subscription(state, command)
    }
    fn evolve(state: SubscriptionState, event: &SubscriptionEvent) -> SubscriptionState {
        evolve_subscription(state, event)
    }
    fn event_type(event: &SubscriptionEvent) -> &'static str {
        event.event_type()
    }
    fn event_data(event: &SubscriptionEvent) -> Value {
        event.data()
    }
    fn decode(event_type: &str, data: &Value) -> Result<SubscriptionEvent, EventDecodeError> {
        SubscriptionEvent::from_parts(event_type, data)
    }
}

/// A user's access stream: blocked or not.
#[derive(Debug, Clone, Copy)]
pub struct UserAccess;

impl Aggregate for UserAccess {
    type Id = UserAccessId;
    type State = UserAccessState;
    type Command = UserAccessCommand;
    type Event = UserAccessEvent;

    fn stream_id(id: UserAccessId) -> Uuid {
        id.as_uuid()
    }
    fn version(state: &UserAccessState) -> u32 {
        state.version
    }
    fn decide(
        state: &UserAccessState,
        command: &UserAccessCommand,
    ) -> Result<Vec<UserAccessEvent>, DomainError> {
        decide_user_access(state, command)
    }
    fn evolve(state: UserAccessState, event: &UserAccessEvent) -> UserAccessState {
        evolve_user_access(state, event)
    }
    fn event_type(event: &UserAccessEvent) -> &'static str {
        event.event_type()
    }
    fn event_data(event: &UserAccessEvent) -> Value {
        data_of(event)
    }
    fn decode(event_type: &str, data: &Value) -> Result<UserAccessEvent, EventDecodeError> {
        from_type_and_data(event_type, data)
    }
}
