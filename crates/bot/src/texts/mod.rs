//! Everything the bot says, one module per language, so a reviewer or translator reads a
//! language in one file. Texts are Telegram HTML: every value that comes from outside
//! (location names, links) is escaped with [`escape`] before it is put in.

mod en;
mod ru;

use time::OffsetDateTime;

pub use en::English;
pub use ru::Russian;

/// The languages the bot speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Lang {
    En,
    Ru,
}

impl Lang {
    /// Russian for a Telegram `language_code` of Russian (`ru`, `ru-RU`), English otherwise.
    pub fn from_code(code: Option<&str>) -> Self {
        match code {
            Some(code)
                if code.eq_ignore_ascii_case("ru")
                    || code.to_ascii_lowercase().starts_with("ru-") =>
            {
                Self::Ru
            }
            _ => Self::En,
        }
    }

    pub fn code(self) -> &'static str {
        match self {
            Self::En => "en",
            Self::Ru => "ru",
        }
    }

    /// The language stored under `code` in the bot's tables; English for anything else.
    pub fn from_stored(code: &str) -> Self {
        if code == "ru" { Self::Ru } else { Self::En }
    }

    pub fn texts(self) -> &'static dyn Texts {
        match self {
            Self::En => &English,
            Self::Ru => &Russian,
        }
    }
}

/// An entry of a key's timeline, as the history shows it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Milestone {
    Issued,
    Ready,
    Refreshed,
    Revoked,
    Expired,
    Renewed,
    Repaired,
    Failed,
}

/// What a key card says about the key's state.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CardState {
    Active,
    Provisioning,
    Rotating,
    Revoking,
    Revoked,
    Expired,
    Failed,
}

/// One language's texts. Arguments are plain values; the implementation escapes them.
pub trait Texts: Send + Sync {
    // Commands as registered with Telegram (setMyCommands).
    fn command_start(&self) -> &'static str;
    fn command_key(&self) -> &'static str;
    fn command_history(&self) -> &'static str;
    fn command_help(&self) -> &'static str;

    // Buttons.
    fn button_get_key(&self) -> &'static str;
    fn button_history(&self) -> &'static str;
    fn button_help(&self) -> &'static str;
    fn button_refresh(&self) -> &'static str;
    fn button_revoke(&self) -> &'static str;
    fn button_confirm_refresh(&self) -> &'static str;
    fn button_confirm_revoke(&self) -> &'static str;
    fn button_cancel(&self) -> &'static str;

    // Conversation.
    fn greeting(&self, first_name: &str) -> String;
    fn help(&self) -> String;
    fn choose_location(&self) -> String;
    /// A key's card: the link (copyable) and what state the key is in.
    fn key_card(
        &self,
        location: &str,
        state: CardState,
        link: Option<&str>,
        expires_at: Option<OffsetDateTime>,
    ) -> String;
    fn key_requested(&self, location: &str) -> String;
    fn confirm_refresh(&self, location: &str) -> String;
    fn confirm_revoke(&self, location: &str) -> String;
    fn refresh_started(&self, location: &str) -> String;
    fn refresh_already_running(&self, location: &str) -> String;
    fn revoke_started(&self, location: &str) -> String;
    fn cancelled(&self) -> String;
    fn not_your_key(&self) -> String;
    fn stale_button(&self) -> String;
    fn no_keys(&self) -> String;
    fn history_title(&self, location: &str) -> String;
    fn milestone(&self, milestone: Milestone) -> &'static str;
    fn unknown_input(&self) -> String;
    fn try_again_later(&self) -> String;
    fn unknown_location(&self) -> String;

    // Notifications.
    fn notify_ready(
        &self,
        location: &str,
        link: Option<&str>,
        expires_at: Option<OffsetDateTime>,
        after_failure: bool,
    ) -> String;
    fn notify_refreshed(
        &self,
        location: &str,
        link: Option<&str>,
        expires_at: Option<OffsetDateTime>,
        after_failure: bool,
    ) -> String;
    fn notify_revoked(&self, location: &str) -> String;
    fn notify_expired(&self, location: &str) -> String;
    fn notify_renewed(&self, location: &str, expires_at: OffsetDateTime) -> String;
    fn notify_failed(&self, location: &str) -> String;
    fn expiry_warning(&self, location: &str, expires_at: OffsetDateTime) -> String;

    fn date(&self, at: OffsetDateTime) -> String;
}

/// Escapes text for Telegram's HTML parse mode.
pub fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            other => out.push(other),
        }
    }
    out
}

/// `2030-01-31 14:05` style parts, in UTC: users are everywhere, and a date with its zone
/// named is never misread.
pub(crate) fn utc_parts(at: OffsetDateTime) -> (i32, u8, u8, u8, u8) {
    let at = at.to_offset(time::UtcOffset::UTC);
    (
        at.year(),
        u8::from(at.month()),
        at.day(),
        at.hour(),
        at.minute(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use time::macros::datetime;

    #[test]
    fn language_follows_the_telegram_code() {
        assert_eq!(Lang::from_code(Some("ru")), Lang::Ru);
        assert_eq!(Lang::from_code(Some("ru-RU")), Lang::Ru);
        assert_eq!(Lang::from_code(Some("en")), Lang::En);
        assert_eq!(Lang::from_code(Some("de")), Lang::En);
        assert_eq!(Lang::from_code(Some("rus")), Lang::En);
        assert_eq!(Lang::from_code(None), Lang::En);
    }

    #[test]
    fn outside_values_are_escaped() {
        for lang in [Lang::En, Lang::Ru] {
            let card = lang.texts().key_card(
                "<b>Ams & co</b>",
                CardState::Active,
                Some("vless://x@h:1?a=1&b=2#tg<1>"),
                Some(datetime!(2030-01-31 14:05 UTC)),
            );
            assert!(card.contains("&lt;b&gt;Ams &amp; co&lt;/b&gt;"), "{card}");
            assert!(
                card.contains("<code>vless://x@h:1?a=1&amp;b=2#tg&lt;1&gt;</code>"),
                "{card}"
            );
            assert!(card.contains("2030"), "{card}");
        }
    }

    #[test]
    fn both_languages_differ_and_date_formats_are_their_own() {
        let at = datetime!(2030-01-31 14:05 UTC);
        assert_eq!(English.date(at), "2030-01-31 14:05 UTC");
        assert_eq!(Russian.date(at), "31.01.2030 14:05 UTC");
        assert_ne!(English.help(), Russian.help());
        assert_ne!(English.not_your_key(), Russian.not_your_key());
    }
}
