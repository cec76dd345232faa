//! [`KeyLedger`]: a domain command run against a key's stream: load and fold its events,
//! `decide`, append at the version that was loaded. When another writer appended first, the
//! append fails on the version and the command is decided again on the new state (a few times
//! at most) instead of being appended blindly; a command id already in the log is answered
//! from the log, so a retried command acts once.

use domain::{DomainError, KeyCommand, KeyEvent, KeyId, KeyState, decide, evolve};
use uuid::Uuid;

use crate::error::{AppendError, StoreError};
use crate::model::{EventMetadata, NewEvent, RecordedEvent};
use crate::{AppendOutcome, EventStore};

/// How often a command is re-decided when another writer appended to the key first.
const MAX_ATTEMPTS: u32 = 5;

/// Runs domain commands against keys' streams: load, decide, append.
#[derive(Clone, Debug)]
pub struct KeyLedger {
    store: EventStore,
}

/// What a command did.
#[derive(Debug, Clone)]
pub struct CommandOutcome {
    /// The key after the command.
    pub state: KeyState,
    /// The events this command recorded; empty when it was already satisfied.
    pub recorded: Vec<KeyEvent>,
    /// Set when the events are in the log (now or by an earlier run of the same command).
    pub append: Option<AppendOutcome>,
}

#[derive(Debug, thiserror::Error)]
pub enum ExecuteError {
    #[error("refused: {0}")]
    Refused(#[from] DomainError),
    #[error("key {key_id} kept changing under {attempts} attempts; try again")]
    Contention { key_id: KeyId, attempts: u32 },
    #[error(transparent)]
    Append(AppendError),
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl KeyLedger {
    pub fn new(store: EventStore) -> Self {
        Self { store }
    }

    pub fn store(&self) -> &EventStore {
        &self.store
    }

    /// A key's state and its recorded events.
    pub async fn load(&self, key_id: KeyId) -> Result<(KeyState, Vec<RecordedEvent>), StoreError> {
        let recorded = self.store.read_stream(key_id.as_uuid()).await?;
        let mut state = KeyState::default();
        for event in &recorded {
            let decoded = event.key_event().map_err(|e| StoreError::CorruptEvent {
                position: event.position,
                reason: e.to_string(),
            })?;
            state = evolve(state, &decoded);
        }
        Ok((state, recorded))
    }

    /// Decides `command` against the key's current state and records the outcome. A
    /// command whose id was already applied is answered from the log without deciding
    /// again, so a retried rotation does not rotate twice.
    pub async fn execute(
        &self,
        key_id: KeyId,
        command: &KeyCommand,
        metadata: &EventMetadata,
    ) -> Result<CommandOutcome, ExecuteError> {
        if let Some(outcome) = self.already_applied(key_id, metadata.command_id).await? {
            return Ok(outcome);
        }
        for _ in 0..MAX_ATTEMPTS {
            let (state, _) = self.load(key_id).await?;
            let events = match decide(&state, command) {
                Ok(events) => events,
                Err(refusal) => {
                    // A twin of this command (same id) may have been recorded since the
                    // check above, and be why the key refuses it now: its outcome is
                    // this command's answer.
                    if let Some(outcome) = self.already_applied(key_id, metadata.command_id).await?
                    {
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
            let new_events: Vec<NewEvent> = events.iter().map(NewEvent::from_key_event).collect();
            let appended = self
                .store
                .append(key_id.as_uuid(), state.version, &new_events, metadata)
                .await;
            match appended {
                Ok(AppendOutcome::Appended(range)) => {
                    let state = events.iter().fold(state, evolve);
                    return Ok(CommandOutcome {
                        state,
                        recorded: events,
                        append: Some(AppendOutcome::Appended(range)),
                    });
                }
                Ok(AppendOutcome::AlreadyAppended(_)) => {
                    if let Some(outcome) = self.already_applied(key_id, metadata.command_id).await?
                    {
                        return Ok(outcome);
                    }
                }
                Err(AppendError::VersionConflict { .. }) => continue,
                Err(other) => return Err(ExecuteError::Append(other)),
            }
        }
        Err(ExecuteError::Contention {
            key_id,
            attempts: MAX_ATTEMPTS,
        })
    }

    async fn already_applied(
        &self,
        key_id: KeyId,
        command_id: Option<Uuid>,
    ) -> Result<Option<CommandOutcome>, ExecuteError> {
        let Some(command_id) = command_id else {
            return Ok(None);
        };
        let Some(range) = self.store.command_range(command_id).await? else {
            return Ok(None);
        };
        if range.stream_id != key_id.as_uuid() {
            return Err(ExecuteError::Append(AppendError::CommandIdTaken {
                command_id,
                stream_id: range.stream_id,
                requested: key_id.as_uuid(),
            }));
        }
        let (state, recorded) = self.load(key_id).await?;
        let own = recorded
            .iter()
            .filter(|e| (range.first_version..=range.last_version).contains(&(e.version as u32)))
            .filter_map(|e| e.key_event().ok())
            .collect();
        Ok(Some(CommandOutcome {
            state,
            recorded: own,
            append: Some(AppendOutcome::AlreadyAppended(range)),
        }))
    }
}
