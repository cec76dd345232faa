//! [`Ledger`]: a domain command run against a stream — a key's ([`KeyLedger`]), a
//! subscription's ([`SubscriptionLedger`]) or a user's access ([`UserAccessLedger`]): load and fold its events, `decide`, append at the
//! version that was loaded. When another writer appended first, the
//! append fails on the version and the command is decided again on the new state (a few times
//! at most) instead of being appended blindly; a command id already in the log is answered
//! from the log, so a retried command acts once.

use std::marker::PhantomData;

use domain::{Aggregate, DomainError, Key, Subscription, UserAccess};
use uuid::Uuid;

use crate::error::{AppendError, StoreError};
use crate::model::{EventMetadata, NewEvent, RecordedEvent};
use crate::{AppendOutcome, EventStore};

/// How often a command is re-decided when another writer appended to the key first.
const MAX_ATTEMPTS: u32 = 5;

/// Runs domain commands against the streams of one aggregate: load, decide, append.
#[derive(Debug)]
pub struct Ledger<A> {
    store: EventStore,
    aggregate: PhantomData<fn() -> A>,
}

impl<A> Clone for Ledger<A> {
    fn clone(&self) -> Self {
        Self {
            store: self.store.clone(),
            aggregate: PhantomData,
        }
    }
}

/// Runs commands against keys' streams.
pub type KeyLedger = Ledger<Key>;
/// Runs commands against subscriptions' streams.
pub type SubscriptionLedger = Ledger<Subscription>;
/// Runs commands against users' access streams.
pub type UserAccessLedger = Ledger<UserAccess>;

/// What a command did.
#[derive(Debug, Clone)]
pub struct CommandOutcome<A: Aggregate = Key> {
    /// The stream's state after the command.
    pub state: A::State,
    /// The events this command recorded; empty when it was already satisfied.
    pub recorded: Vec<A::Event>,
    /// Set when the events are in the log (now or by an earlier run of the same command).
    pub append: Option<AppendOutcome>,
}

#[derive(Debug, thiserror::Error)]
pub enum ExecuteError {
    #[error("refused: {0}")]
    Refused(#[from] DomainError),
    #[error("stream {stream_id} kept changing under {attempts} attempts; try again")]
    Contention { stream_id: Uuid, attempts: u32 },
    #[error(transparent)]
    Append(AppendError),
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl<A: Aggregate> Ledger<A> {
    pub fn new(store: EventStore) -> Self {
        Self {
            store,
            aggregate: PhantomData,
        }
    }

    pub fn store(&self) -> &EventStore {
        &self.store
    }

    /// A stream's state and its recorded events.
    pub async fn load(&self, id: A::Id) -> Result<(A::State, Vec<RecordedEvent>), StoreError> {
        let recorded = self.store.read_stream(A::stream_id(id)).await?;
        let mut state = A::State::default();
        for event in &recorded {
            let decoded = A::decode(&event.event_type, &event.data).map_err(|e| {
                StoreError::CorruptEvent {
                    position: event.position,
                    reason: e.to_string(),
                }
            })?;
            state = A::evolve(state, &decoded);
        }
        Ok((state, recorded))
    }

    /// Decides `command` against the key's current state and records the outcome. A
    /// command whose id was already applied is answered from the log without deciding
    /// again, so a retried rotation does not rotate twice.
    pub async fn execute(
        &self,
        id: A::Id,
        command: &A::Command,
        metadata: &EventMetadata,
    ) -> Result<CommandOutcome<A>, ExecuteError> {
        if let Some(outcome) = self.already_applied(id, metadata.command_id).await? {
            return Ok(outcome);
        }
        for _ in 0..MAX_ATTEMPTS {
            let (state, _) = self.load(id).await?;
            let events = match A::decide(&state, command) {
                Ok(events) => events,
                Err(refusal) => {
                    // A twin of this command (same id) may have been recorded since the
                    // check above, and be why the key refuses it now: its outcome is
                    // this command's answer.
                    if let Some(outcome) = self.already_applied(id, metadata.command_id).await? {
                        return Ok(outcome);
                    }
                    return Err(refusal.into());
                }
            };
            if events.is_empty() {
                return Ok(CommandOutcome {
                    state,
                    recorded: vec![],
                    append: None,
                });
            }
            let new_events: Vec<NewEvent> = events
                .iter()
                .map(|event| NewEvent::new(A::event_type(event), A::event_data(event)))
                .collect();
            let appended = self
                .store
                .append(A::stream_id(id), A::version(&state), &new_events, metadata)
                .await;
            match appended {
                Ok(AppendOutcome::Appended(range)) => {
                    let state = events.iter().fold(state, A::evolve);
                    return Ok(CommandOutcome {
                        state,
                        recorded: events,
                        append: Some(AppendOutcome::Appended(range)),
                    });
                }
                Ok(AppendOutcome::AlreadyAppended(_)) => {
                    if let Some(outcome) = self.already_applied(id, metadata.command_id).await? {
                        return Ok(outcome);
                    }
                }
                Err(AppendError::VersionConflict { .. }) => continue,
                Err(other) => return Err(ExecuteError::Append(other)),
            }
        }
        Err(ExecuteError::Contention {
            stream_id: A::stream_id(id),
            attempts: MAX_ATTEMPTS,
        })
    }

    async fn already_applied(
        &self,
        id: A::Id,
        command_id: Option<Uuid>,
    ) -> Result<Option<CommandOutcome<A>>, ExecuteError> {
        let Some(command_id) = command_id else {
            return Ok(None);
        };
        let Some(range) = self.store.command_range(command_id).await? else {
            return Ok(None);
        };
        let stream_id = A::stream_id(id);
        if range.stream_id != stream_id {
            return Err(ExecuteError::Append(AppendError::CommandIdTaken {
                command_id,
                stream_id: range.stream_id,
                requested: stream_id,
            }));
        }
        let (state, recorded) = self.load(id).await?;
        let own = recorded
            .iter()
            .filter(|e| (range.first_version..=range.last_version).contains(&(e.version as u32)))
            .filter_map(|e| A::decode(&e.event_type, &e.data).ok())
            .collect();
        Ok(Some(CommandOutcome {
            state,
            recorded: own,
            append: Some(AppendOutcome::AlreadyAppended(range)),
        }))
    }
}
