//! Callback data of inline buttons comes back from Telegram as the user's client sends it,
//! so anyone can forge it. Every input is decoded as raw text (nothing may panic, and what
//! decodes must re-encode within Telegram's 64 bytes to an action that decodes to itself),
//! and the same bytes also build well-formed data of every kind the bot writes, which must
//! decode, and encode back to exactly the same text.

#![no_main]

use arbitrary::{Arbitrary, Unstructured};
use bot::Action;
use libfuzzer_sys::fuzz_target;
use uuid::Uuid;

/// Telegram's limit on a button's callback data, in bytes.
const TELEGRAM_CALLBACK_LIMIT: usize = 64;

fuzz_target!(|data: &[u8]| {
    if let Ok(text) = std::str::from_utf8(data) {
        check_forged(text);
    }
    if let Ok(canonical) = Canonical::arbitrary(&mut Unstructured::new(data)) {
        check_canonical(&canonical.data());
    }
});

fn check_forged(text: &str) {
    let Some(action) = Action::decode(text) else {
        return;
    };
    let encoded = action.encode();
    assert!(
        encoded.len() <= TELEGRAM_CALLBACK_LIMIT,
        "{text:?} decoded to {action:?}, which encodes to {} bytes",
        encoded.len()
    );
    assert_eq!(
        Action::decode(&encoded),
        Some(action),
        "{text:?} re-encoded as {encoded:?}"
    );
}

fn check_canonical(data: &str) {
    assert!(data.len() <= TELEGRAM_CALLBACK_LIMIT, "{data:?}");
    let Some(action) = Action::decode(data) else {
        panic!("well-formed callback data {data:?} did not decode");
    };
    assert_eq!(action.encode(), data, "decoded as {action:?}");
}

/// Callback data as the bot itself writes it, one variant per kind of button.
#[derive(Debug, Arbitrary)]
enum Canonical {
    MyKey,
    KeyAt(LocationText),
    History,
    Help,
    Cancel,
    /// `r`, `R`, `x`, `X`: refresh or revoke, asked or confirmed.
    Key {
        tag: KeyTag,
        key_id: u128,
        version: u32,
    },
    /// `n`, `N`: a new subscription link, asked or confirmed.
    NewLink {
        confirm: bool,
        subscription_id: u128,
        generation: u32,
    },
}

#[derive(Debug, Arbitrary)]
enum KeyTag {
    AskRefresh,
    ConfirmRefresh,
    AskRevoke,
    ConfirmRevoke,
}

/// A location id the domain accepts: 1 to 32 of `[a-z0-9_-]`, not starting with `-` or `_`.
#[derive(Debug)]
struct LocationText(String);

impl<'a> Arbitrary<'a> for LocationText {
    fn arbitrary(u: &mut Unstructured<'a>) -> arbitrary::Result<Self> {
        const FIRST: &[u8] = b"abcdefghijklmnopqrstuvwxyz0123456789";
        const REST: &[u8] = b"abcdefghijklmnopqrstuvwxyz0123456789-_";
        let mut text = String::from(char::from(*u.choose(FIRST)?));
        for _ in 0..u.int_in_range(0..=31)? {
            text.push(char::from(*u.choose(REST)?));
        }
        Ok(Self(text))
    }
}

impl Canonical {
    fn data(&self) -> String {
        let reference = |tag: &str, id: u128, number: u32| {
            format!("{tag}:{}:{number}", Uuid::from_u128(id).simple())
        };
        match self {
            Self::MyKey => "k".to_owned(),
            Self::KeyAt(location) => format!("k:{}", location.0),
            Self::History => "h".to_owned(),
            Self::Help => "?".to_owned(),
            Self::Cancel => "c".to_owned(),
            Self::Key {
                tag,
                key_id,
                version,
            } => {
                let tag = match tag {
                    KeyTag::AskRefresh => "r",
                    KeyTag::ConfirmRefresh => "R",
                    KeyTag::AskRevoke => "x",
                    KeyTag::ConfirmRevoke => "X",
                };
                reference(tag, *key_id, *version)
            }
            Self::NewLink {
                confirm,
                subscription_id,
                generation,
            } => reference(
                if *confirm { "N" } else { "n" },
                *subscription_id,
                *generation,
            ),
        }
    }
}
