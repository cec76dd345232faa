//! A key as the bot shows it: state and link from the log (and the key view for a link
//! the log does not carry), with the buttons that fit its state; and the user's
//! subscription, shown above the keys, with its own buttons.

use domain::{EventType, KeyId, KeyState, KeyStatus, Phase, SubscriptionId};
use eventstore::RecordedEvent;
use projector::KeyView;
use uuid::Uuid;

use crate::callback::{Action, KeyRef, SubRef};
use crate::telegram::{Button, Keyboard};
use crate::texts::{CardState, Milestone, Texts};

/// What the card says about the key: the domain's status, so the bot and the key views
/// never disagree about it.
pub fn card_state(state: &KeyState) -> Option<CardState> {
    Some(match state.status()? {
        KeyStatus::Provisioning => CardState::Provisioning,
        KeyStatus::Active => CardState::Active,
        KeyStatus::Rotating => CardState::Rotating,
        KeyStatus::Revoking => CardState::Revoking,
        KeyStatus::Revoked => CardState::Revoked,
        KeyStatus::Expired => CardState::Expired,
        KeyStatus::Depleted => CardState::Depleted,
        KeyStatus::Failed => CardState::Failed,
    })
}

/// The `vless://` link of the key's current client, if the key is active and a link for
/// exactly that client is known: from the panel's acknowledgement in the log, or else from
/// the key view. A link for any other client UUID is never shown — that would be handing
/// back a stale key.
pub fn current_link(
    state: &KeyState,
    events: &[RecordedEvent],
    view: Option<&KeyView>,
) -> Option<String> {
    if state.phase != Phase::Active {
        return None;
    }
    let client = state.details.as_ref()?.client_uuid;
    let from_log = events.iter().rev().find_map(|event| {
        if !matches!(
            EventType::parse(&event.event_type),
            Some(EventType::Provisioned | EventType::Rotated)
        ) {
            return None;
        }
        link_for(&event.data, client)
    });
    from_log.or_else(|| {
        view.filter(|v| v.client_uuid == client)
            .and_then(|v| v.link.clone())
    })
}

/// The `link` an acknowledgement's data carries, if it is for `client`.
pub fn link_for(data: &serde_json::Value, client: Uuid) -> Option<String> {
    let uuid = data.get("client_uuid")?.as_str()?;
    if Uuid::try_parse(uuid).ok()? != client {
        return None;
    }
    let link = data.get("link")?.as_str()?;
    link.starts_with("vless://").then(|| link.to_owned())
}

/// The buttons under a key card.
pub fn card_keyboard(
    texts: &dyn Texts,
    key_id: KeyId,
    state: &KeyState,
    location: &str,
) -> Keyboard {
    let key = KeyRef {
        key_id,
        version: state.version,
    };
    let history = Button::press(texts.button_history(), Action::History);
    match state.phase {
        Phase::Active => vec![
            vec![
                Button::press(texts.button_refresh(), Action::AskRefresh(key)),
                Button::press(texts.button_revoke(), Action::AskRevoke(key)),
            ],
            vec![history],
        ],
        Phase::Revoked | Phase::Expired => vec![
            vec![Button::press(
                texts.button_get_key(),
                Action::KeyAt(location.to_owned()),
            )],
            vec![history],
        ],
        // Nothing the user can do to a used-up key but wait for a new limit.
        Phase::Depleted => vec![vec![history]],
        _ => vec![vec![
            Button::press(texts.button_get_key(), Action::MyKey),
            history,
        ]],
    }
}

/// The buttons under the subscription: its page (the URL itself, which answers a browser
/// with the page's "add to app" buttons) and a new link.
pub fn subscription_keyboard(
    texts: &dyn Texts,
    url: &str,
    subscription_id: SubscriptionId,
    generation: u32,
) -> Keyboard {
    let new_link = Action::AskNewLink(SubRef {
        subscription_id,
        generation,
    });
    let mut rows = Vec::new();
    // Made from the configured http(s) base, so it always parses; a button is left out
    // rather than the message lost if it ever did not.
    if let Ok(page) = url::Url::parse(url) {
        rows.push(vec![Button::Open(
            texts.button_open_subscription().to_owned(),
            page,
        )]);
    }
    rows.push(vec![Button::press(texts.button_new_link(), new_link)]);
    rows
}

/// The main menu's buttons.
pub fn main_menu(texts: &dyn Texts) -> Keyboard {
    vec![
        vec![Button::press(texts.button_get_key(), Action::MyKey)],
        vec![
            Button::press(texts.button_history(), Action::History),
            Button::press(texts.button_help(), Action::Help),
        ],
    ]
}

/// What an event means in a key's timeline; `None` for bookkeeping users need not see.
pub fn milestone(event_type: &str) -> Option<Milestone> {
    Some(match EventType::parse(event_type)? {
        EventType::Requested => Milestone::Issued,
        EventType::Provisioned => Milestone::Ready,
        EventType::Rotated => Milestone::Refreshed,
        EventType::Revoked => Milestone::Revoked,
        EventType::Expired => Milestone::Expired,
        EventType::Renewed => Milestone::Renewed,
        EventType::DriftRepaired => Milestone::Repaired,
        EventType::ProvisioningFailed => Milestone::Failed,
        EventType::Depleted => Milestone::Depleted,
        EventType::QuotaChanged => Milestone::QuotaChanged,
        EventType::RotationRequested
        | EventType::RevocationRequested
        | EventType::DriftDetected
        | EventType::SubscriptionIssued
        | EventType::SubscriptionLinkRotated
        | EventType::UserBlocked
        | EventType::UserUnblocked => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn a_link_counts_only_for_its_own_client() {
        let client = Uuid::new_v4();
        let data = json!({"client_uuid": client, "inbound_id": 1, "link": "vless://x@h:1#a"});
        assert_eq!(link_for(&data, client).as_deref(), Some("vless://x@h:1#a"));
        assert_eq!(link_for(&data, Uuid::new_v4()), None);
        let not_a_link = json!({"client_uuid": client, "link": "javascript:alert(1)"});
        assert_eq!(link_for(&not_a_link, client), None);
    }

    #[test]
    fn every_history_milestone_of_the_issue_is_named() {
        for event_type in [
            EventType::Requested.as_str(),
            EventType::Rotated.as_str(),
            EventType::Revoked.as_str(),
            EventType::Expired.as_str(),
            EventType::DriftRepaired.as_str(),
            EventType::Depleted.as_str(),
            EventType::QuotaChanged.as_str(),
        ] {
            assert!(milestone(event_type).is_some(), "{event_type}");
        }
        assert_eq!(milestone(EventType::RotationRequested.as_str()), None);
    }
}
