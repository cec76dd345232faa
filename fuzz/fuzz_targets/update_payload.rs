//! An update's bytes come from Telegram through the webhook door or long polling, and the
//! webhook can be reached by anyone who guesses its address. Every input goes through what
//! the doors and the partition consumers do with it: `bot::parse_update` and `bot::chat_of`
//! (and `bot::route_update`, both in one). Nothing may panic; bytes over the size limit are
//! refused as too large; a refusal names only the kind of error and its position, never a
//! piece of the input; routing agrees with parsing and finding the chat separately; and an
//! update that parses reads back with the same id and chat from its own serialisation.

#![no_main]

use bot::{MAX_UPDATE_BYTES, UpdateRejected, chat_of, parse_update, route_update};
use libfuzzer_sys::fuzz_target;

/// `not a Telegram update: <kind> error at line <n> column <n>`: nothing of the input.
fn names_only_kind_and_position(text: &str) -> bool {
    let Some(rest) = text.strip_prefix("not a Telegram update: ") else {
        return false;
    };
    let Some((kind, position)) = rest.split_once(" error at line ") else {
        return false;
    };
    let Some((line, column)) = position.split_once(" column ") else {
        return false;
    };
    let number = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
    matches!(kind, "Io" | "Syntax" | "Data" | "Eof") && number(line) && number(column)
}

fuzz_target!(|data: &[u8]| {
    let parsed = parse_update(data);
    let routed = route_update(data);
    match &parsed {
        Ok(update) => {
            let chat = chat_of(update);
            match (&routed, chat) {
                (Ok((_, routed_chat)), Some(chat)) => assert_eq!(*routed_chat, chat),
                (Err(UpdateRejected::NoChat(id)), None) => assert_eq!(*id, i64::from(update.id.0)),
                (other, chat) => panic!("routed {other:?}, but the chat is {chat:?}"),
            }
            let wire = serde_json::to_vec(update).expect("an update serialises");
            let again = parse_update(&wire).expect("a serialised update parses");
            assert_eq!(again.id, update.id);
            assert_eq!(chat_of(&again), chat);
        }
        Err(UpdateRejected::TooLarge(size)) => {
            assert_eq!(*size, data.len());
            assert!(data.len() > MAX_UPDATE_BYTES);
        }
        Err(rejected) => {
            assert!(data.len() <= MAX_UPDATE_BYTES, "{rejected}");
            assert!(routed.is_err(), "routed what does not parse");
            assert!(
                names_only_kind_and_position(&rejected.to_string()),
                "{rejected}"
            );
        }
    }
});
