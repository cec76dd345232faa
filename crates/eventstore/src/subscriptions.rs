//! [`Subscriptions`]: the commands that touch a user's subscription and their keys together.
//! A new subscription link must also give every key of the user a new client UUID — a new
//! URL alone would leave working whatever was already pulled from the old one — so "new
//! link" is the subscription's `subscription.link_rotated` followed by a rotation of each
//! active key. Each step carries a command id derived from the caller's, so a retried
//! request finishes what a crash interrupted and repeats nothing.

use domain::{
    DomainError, KeyCommand, KeyId, LocationId, Phase, RotateKey, SubscriptionCommand,
    SubscriptionId, SubscriptionState, UserId,
};
use uuid::Uuid;

use crate::EventStore;
use crate::ledger::{ExecuteError, KeyLedger, SubscriptionLedger};
use crate::model::{Actor, EventMetadata};

/// The subscription's side of a user's keys.
#[derive(Clone, Debug)]
pub struct Subscriptions {
    keys: KeyLedger,
    subscriptions: SubscriptionLedger,
}

/// What replacing a subscription's link did.
#[derive(Debug, Clone)]
pub struct LinkReplaced {
    pub subscription: SubscriptionState,
    /// The keys that got a new client UUID.
    pub rotated: Vec<KeyId>,
    /// Keys that could not be rotated now (still provisioning, expired, depleted, …), with
    /// why: whatever they hand out is not yet working or no longer is.
    pub skipped: Vec<(KeyId, DomainError)>,
}

impl Subscriptions {
    pub fn new(store: EventStore) -> Self {
        Self {
            keys: KeyLedger::new(store.clone()),
            subscriptions: SubscriptionLedger::new(store),
        }
    }

    /// The user's subscription, issued now if they have none yet.
    pub async fn ensure_issued(
        &self,
        user_id: UserId,
        metadata: &EventMetadata,
    ) -> Result<SubscriptionState, ExecuteError> {
        let id = SubscriptionId::for_user(user_id);
        let (state, _) = self.subscriptions.load(id).await?;
        if state.user_id.is_some() {
            return Ok(state);
        }
        let outcome = self
            .subscriptions
            .execute(id, &SubscriptionCommand::Issue { user_id }, metadata)
            .await?;
        Ok(outcome.state)
    }

    /// The user's subscription as the log holds it (generation 0 when none was issued).
    pub async fn load(&self, user_id: UserId) -> Result<SubscriptionState, ExecuteError> {
        let (state, _) = self
            .subscriptions
            .load(SubscriptionId::for_user(user_id))
            .await?;
        Ok(state)
    }

    /// A new link: the next generation, and a new client UUID for every active key the user
    /// holds at `locations`.
    pub async fn replace_link(
        &self,
        user_id: UserId,
        reason: &str,
        locations: &[LocationId],
        command_id: Uuid,
        actor: Actor,
    ) -> Result<LinkReplaced, ExecuteError> {
        let step = |name: &str| {
            EventMetadata::for_command(Uuid::new_v5(&command_id, name.as_bytes()), actor.clone())
        };
        let id = SubscriptionId::for_user(user_id);
        self.ensure_issued(user_id, &step("issue")).await?;
        let rotate_link = SubscriptionCommand::RotateLink {
            reason: reason.to_owned(),
        };
        let subscription = self
            .subscriptions
            .execute(id, &rotate_link, &step("link"))
            .await?
            .state;
        let mut rotated = Vec::new();
        let mut skipped = Vec::new();
        for location in locations {
            let key_id = KeyId::for_user_at(user_id, location);
            let (state, _) = self.keys.load(key_id).await?;
            if state.details.is_none() || !state.phase.is_live() {
                continue;
            }
            let rotate = KeyCommand::Rotate(RotateKey {
                fresh_client_uuid: Uuid::new_v4(),
            });
            let metadata = step(&format!("rotate:{location}"));
            match self.keys.execute(key_id, &rotate, &metadata).await {
                Ok(_) => rotated.push(key_id),
                // A rotation already under way gives the key a new UUID anyway.
                Err(ExecuteError::Refused(DomainError::RotationInProgress))
                    if state.phase == Phase::Rotating =>
                {
                    rotated.push(key_id)
                }
                Err(ExecuteError::Refused(refusal)) => skipped.push((key_id, refusal)),
                Err(other) => return Err(other),
            }
        }
        Ok(LinkReplaced {
            subscription,
            rotated,
            skipped,
        })
    }
}
