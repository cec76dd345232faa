//! Callback data of inline buttons. Telegram allows 64 bytes and hands the data back as
//! the user's client sends it, so it is short, carries no secret and is never trusted:
//! a key named in it is checked against the presser, and the version it was shown at
//! against the log, before anything happens. A subscription named in it is checked the same
//! way: it must be the presser's own, at the generation the button was shown for.

use domain::{KeyId, SubscriptionId};
use uuid::Uuid;

/// What a button asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// Show the user's key (or the choice of locations).
    MyKey,
    /// Get or show the key at a location.
    KeyAt(String),
    History,
    Help,
    /// Ask to refresh the key shown at `version`.
    AskRefresh(KeyRef),
    ConfirmRefresh(KeyRef),
    AskRevoke(KeyRef),
    ConfirmRevoke(KeyRef),
    /// Ask to replace the subscription link shown at a generation.
    AskNewLink(SubRef),
    ConfirmNewLink(SubRef),
    Cancel,
}

/// A key as a button names it: its id and the version of the key it was shown for, so a
/// button pressed after the key changed is recognised as stale.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KeyRef {
    pub key_id: KeyId,
    pub version: u32,
}

/// A subscription as a button names it: its id and the generation of the link shown, so a
/// button pressed after the link changed is recognised as stale.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SubRef {
    pub subscription_id: SubscriptionId,
    pub generation: u32,
}

/// `<32 hex digits>:<number>`, the shape both references take in callback data.
fn parse_ref(rest: Option<&str>) -> Option<(Uuid, u32)> {
    let (id, number) = rest?.split_once(':')?;
    if id.len() != 32 {
        return None;
    }
    Some((Uuid::try_parse(id).ok()?, number.parse().ok()?))
}

impl Action {
    pub fn encode(&self) -> String {
        let keyed = |tag: &str, key: &KeyRef| {
            format!("{tag}:{}:{}", key.key_id.as_uuid().simple(), key.version)
        };
        let subscription = |tag: &str, sub: &SubRef| {
            format!(
                "{tag}:{}:{}",
                sub.subscription_id.as_uuid().simple(),
                sub.generation
            )
        };
        match self {
            Self::MyKey => "k".to_owned(),
            Self::KeyAt(location) => format!("k:{location}"),
            Self::History => "h".to_owned(),
            Self::Help => "?".to_owned(),
            Self::AskRefresh(key) => keyed("r", key),
            Self::ConfirmRefresh(key) => keyed("R", key),
            Self::AskRevoke(key) => keyed("x", key),
            Self::ConfirmRevoke(key) => keyed("X", key),
            Self::AskNewLink(sub) => subscription("n", sub),
            Self::ConfirmNewLink(sub) => subscription("N", sub),
            Self::Cancel => "c".to_owned(),
        }
    }

    /// `None` for anything this bot did not make (forged, truncated, from an old build).
    pub fn decode(data: &str) -> Option<Self> {
        if data.len() > 64 {
            return None;
        }
        let (tag, rest) = match data.split_once(':') {
            Some((tag, rest)) => (tag, Some(rest)),
            None => (data, None),
        };
        let key = |rest: Option<&str>| -> Option<KeyRef> {
            let (id, version) = parse_ref(rest)?;
            Some(KeyRef {
                key_id: KeyId::from_uuid(id),
                version,
            })
        };
        let subscription = |rest: Option<&str>| -> Option<SubRef> {
            let (id, generation) = parse_ref(rest)?;
            Some(SubRef {
                subscription_id: SubscriptionId::from_uuid(id),
                generation,
            })
        };
        match (tag, rest) {
            ("k", None) => Some(Self::MyKey),
            ("k", Some(location)) => {
                domain::LocationId::new(location).ok()?;
                Some(Self::KeyAt(location.to_owned()))
            }
            ("h", None) => Some(Self::History),
            ("?", None) => Some(Self::Help),
            ("c", None) => Some(Self::Cancel),
            ("r", rest) => Some(Self::AskRefresh(key(rest)?)),
            ("R", rest) => Some(Self::ConfirmRefresh(key(rest)?)),
            ("x", rest) => Some(Self::AskRevoke(key(rest)?)),
            ("X", rest) => Some(Self::ConfirmRevoke(key(rest)?)),
            ("n", rest) => Some(Self::AskNewLink(subscription(rest)?)),
            ("N", rest) => Some(Self::ConfirmNewLink(subscription(rest)?)),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_action_round_trips_within_telegrams_limit() {
        let key = KeyRef {
            key_id: KeyId::from_uuid(Uuid::new_v4()),
            version: u32::MAX,
        };
        let sub = SubRef {
            subscription_id: SubscriptionId::from_uuid(Uuid::new_v4()),
            generation: u32::MAX,
        };
        let actions = [
            Action::MyKey,
            Action::KeyAt("a".repeat(32)),
            Action::History,
            Action::Help,
            Action::AskRefresh(key),
            Action::ConfirmRefresh(key),
            Action::AskRevoke(key),
            Action::ConfirmRevoke(key),
            Action::AskNewLink(sub),
            Action::ConfirmNewLink(sub),
            Action::Cancel,
        ];
        for action in actions {
            let data = action.encode();
            assert!(data.len() <= 64, "{data} is {} bytes", data.len());
            assert_eq!(Action::decode(&data), Some(action));
        }
    }

    #[test]
    fn forged_data_is_refused() {
        for data in [
            "",
            "R",
            "R:",
            "R:zz:1",
            "R:0123456789abcdef0123456789abcdef",
            "R:0123456789abcdef0123456789abcdef:-1",
            "R:0123456789abcdef0123456789abcdef:1:2",
            "N:0123456789abcdef0123456789abcdef",
            "n:0123456789abcdef0123456789abcdef:x",
            "k:AMS",
            "k:../x",
            "h:1",
            "drop table",
            &"k".repeat(65),
        ] {
            assert_eq!(Action::decode(data), None, "{data:?}");
        }
    }
}
