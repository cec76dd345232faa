//! What an incoming Telegram update is, before anything is done with it: bounded bytes
//! that parse as an update, and the chat whose order it belongs to. Both doors (long
//! polling and the webhook) and the partition consumers go through here, so a payload too
//! large or not an update is refused the same way everywhere.

use teloxide::types::{Update, UpdateKind};

/// The largest update accepted. Telegram's own are far smaller (a message holds at most
/// 4,096 characters of text, entities and a few photo sizes); anything past this is not
/// from Telegram.
pub const MAX_UPDATE_BYTES: usize = 256 * 1024;

/// Why bytes are not an update the bot takes.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum UpdateRejected {
    #[error("an update of {0} bytes is over the {MAX_UPDATE_BYTES}-byte limit")]
    TooLarge(usize),
    #[error("not a Telegram update: {0}")]
    Malformed(String),
    #[error("update {0} carries no user or chat to answer")]
    NoChat(i64),
}

/// Parses an update as Telegram sends it (a `getUpdates` element or a webhook body).
pub fn parse_update(body: &[u8]) -> Result<Update, UpdateRejected> {
    if body.len() > MAX_UPDATE_BYTES {
        return Err(UpdateRejected::TooLarge(body.len()));
    }
    serde_json::from_slice(body).map_err(|error| {
        // serde's own message quotes the value it did not expect (a user's text, say), so
        // only its kind and position are kept.
        UpdateRejected::Malformed(format!(
            "{:?} error at line {} column {}",
            error.classify(),
            error.line(),
            error.column()
        ))
    })
}

/// The chat an update's order is kept in: the private chat of the message or of the
/// pressed button, or the presser's own id for a button without its message (Telegram
/// leaves the message out when it is too old). `None` for kinds the bot does not handle.
pub fn chat_of(update: &Update) -> Option<i64> {
    match &update.kind {
        UpdateKind::Message(message) | UpdateKind::EditedMessage(message) => {
            Some(message.chat.id.0)
        }
        UpdateKind::CallbackQuery(query) => Some(
            query
                .message
                .as_ref()
                .map(|m| m.chat().id.0)
                .unwrap_or(query.from.id.0 as i64),
        ),
        _ => None,
    }
}

/// Parses an update and finds its chat: what the doors need before publishing it.
pub fn route_update(body: &[u8]) -> Result<(Update, i64), UpdateRejected> {
    let update = parse_update(body)?;
    let id = i64::from(update.id.0);
    let chat = chat_of(&update).ok_or(UpdateRejected::NoChat(id))?;
    Ok((update, chat))
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;
    use serde_json::json;

    fn message(update_id: i64, chat: i64) -> Vec<u8> {
        json!({
            "update_id": update_id,
            "message": {
                "message_id": 7, "date": 1_700_000_000,
                "chat": {"id": chat, "type": "private", "first_name": "A"},
                "from": {"id": chat, "is_bot": false, "first_name": "A"},
                "text": "/help"
            }
        })
        .to_string()
        .into_bytes()
    }

    #[test]
    fn a_message_is_routed_by_its_chat() {
        let (update, chat) = route_update(&message(10, 4242)).unwrap();
        assert_eq!(update.id.0, 10);
        assert_eq!(chat, 4242);
    }

    #[test]
    fn a_button_without_its_message_is_routed_by_the_presser() {
        let body = json!({
            "update_id": 11,
            "callback_query": {
                "id": "q1", "chat_instance": "c",
                "from": {"id": 77, "is_bot": false, "first_name": "B"},
                "data": "x"
            }
        })
        .to_string();
        assert_eq!(route_update(body.as_bytes()).unwrap().1, 77);
    }

    #[test]
    fn oversized_odd_and_chatless_bytes_are_refused() {
        let huge = vec![b' '; MAX_UPDATE_BYTES + 1];
        assert_eq!(
            route_update(&huge).unwrap_err(),
            UpdateRejected::TooLarge(MAX_UPDATE_BYTES + 1)
        );
        assert!(matches!(
            route_update(b"\x00\xff{").unwrap_err(),
            UpdateRejected::Malformed(_)
        ));
        assert!(matches!(
            route_update(b"{\"update_id\": \"x\"}").unwrap_err(),
            UpdateRejected::Malformed(_)
        ));
        let poll = json!({"update_id": 12, "poll": {"id": "p", "question": "?", "options": [],
            "total_voter_count": 0, "is_closed": false, "is_anonymous": true,
            "type": "regular", "allows_multiple_answers": false}});
        match route_update(poll.to_string().as_bytes()) {
            Err(UpdateRejected::NoChat(12)) | Err(UpdateRejected::Malformed(_)) => {}
            other => panic!("a poll has no chat to answer: {other:?}"),
        }
    }

    /// Found by the `update_payload` fuzz target: serde's message for a string where an
    /// update belongs quoted the string.
    #[test]
    fn a_refusal_never_quotes_the_payload() {
        let body = br#""a user's private words""#;
        let refusal = parse_update(body).unwrap_err();
        assert!(matches!(refusal, UpdateRejected::Malformed(_)));
        assert!(!refusal.to_string().contains("private"), "{refusal}");
        assert!(
            refusal.to_string().contains("line 1 column 24"),
            "{refusal}"
        );
    }
}
