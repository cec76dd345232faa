//! Everything the bot says lives in Fluent translation files, one per language, so a
//! translator edits a language in one plain-text file without reading Rust. Fluent
//! (<https://projectfluent.org>) is made for this: each message is a whole sentence the
//! translator may reorder freely, with named variables, attributes for families of texts
//! (buttons, card states) and selectors (plural forms among them) where a language needs
//! them. The files are `crates/bot/locales/<code>.ftl`, built into the binary; [`LOCALES`]
//! lists them, English first, and English is the fallback for a message a file lacks.
//!
//! To add a language, write `locales/<code>.ftl` with the same messages and attributes as
//! `en.ftl` and add one line to [`LOCALES`]; the tests fail until every message is there
//! and renders. Users whose Telegram language is `<code>` or `<code>-*` get it.
//!
//! Texts are Telegram HTML: every value that comes from outside (names, location names,
//! links) is escaped with [`escape`] here before it goes into a message, and Fluent's
//! Unicode isolation marks are off, since Telegram shows them as stray characters.

use std::collections::HashMap;
use std::fmt;
use std::sync::LazyLock;

use fluent_bundle::concurrent::FluentBundle;
use fluent_bundle::{FluentArgs, FluentResource};
use time::OffsetDateTime;
use unic_langid::LanguageIdentifier;

/// The languages the bot speaks: the language's code and its Fluent file. The code is the
/// Telegram `language_code` it serves (with any region) and what the bot's tables store.
/// English comes first: it is the fallback.
pub const LOCALES: &[(&str, &str)] = &[
    ("en", include_str!("../../locales/en.ftl")),
    ("ru", include_str!("../../locales/ru.ftl")),
];

const _: () = assert!(!LOCALES.is_empty(), "English at least");

/// A language the bot speaks: one of [`LOCALES`].
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct Lang(usize);

impl Lang {
    /// The fallback language.
    pub const ENGLISH: Self = Self(0);

    /// Every language, English first.
    pub fn all() -> impl Iterator<Item = Self> {
        (0..LOCALES.len()).map(Self)
    }

    /// The language of a Telegram `language_code` (`ru`, `ru-RU` → Russian), English for a
    /// language the bot does not speak.
    pub fn from_code(code: Option<&str>) -> Self {
        let Some(code) = code.map(str::to_ascii_lowercase) else {
            return Self::ENGLISH;
        };
        let serves = |locale: &str| {
            code == locale
                || code
                    .strip_prefix(locale)
                    .is_some_and(|region| region.starts_with('-'))
        };
        LOCALES
            .iter()
            .position(|(locale, _)| serves(locale))
            .map_or(Self::ENGLISH, Self)
    }

    pub fn code(self) -> &'static str {
        LOCALES.get(self.0).map_or("en", |(code, _)| code)
    }

    /// The language stored under `code` in the bot's tables; English for anything else.
    pub fn from_stored(code: &str) -> Self {
        LOCALES
            .iter()
            .position(|(locale, _)| *locale == code)
            .map_or(Self::ENGLISH, Self)
    }

    pub fn texts(self) -> &'static dyn Texts {
        let catalog = &*CATALOG;
        catalog
            .get(self.0)
            .or_else(|| catalog.first())
            .expect("LOCALES is not empty: asserted at compile time")
    }
}

impl fmt::Debug for Lang {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.code())
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

impl Milestone {
    /// Its attribute of the `milestone` message.
    fn attribute(self) -> &'static str {
        match self {
            Self::Issued => "issued",
            Self::Ready => "ready",
            Self::Refreshed => "refreshed",
            Self::Revoked => "revoked",
            Self::Expired => "expired",
            Self::Renewed => "renewed",
            Self::Repaired => "repaired",
            Self::Failed => "failed",
        }
    }
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
    Depleted,
    Failed,
}

impl CardState {
    /// Its attribute of the `key-card` message.
    fn attribute(self) -> &'static str {
        match self {
            Self::Active => "active",
            Self::Provisioning => "provisioning",
            Self::Rotating => "rotating",
            Self::Revoking => "revoking",
            Self::Revoked => "revoked",
            Self::Expired => "expired",
            Self::Depleted => "depleted",
            Self::Failed => "failed",
        }
    }
}

/// One language's texts. Arguments are plain values; the implementation escapes them.
pub trait Texts: Send + Sync {
    // Commands as registered with Telegram (setMyCommands).
    fn command_start(&self) -> &str;
    fn command_key(&self) -> &str;
    fn command_history(&self) -> &str;
    fn command_help(&self) -> &str;

    // Buttons.
    fn button_get_key(&self) -> &str;
    fn button_history(&self) -> &str;
    fn button_help(&self) -> &str;
    fn button_refresh(&self) -> &str;
    fn button_revoke(&self) -> &str;
    fn button_confirm_refresh(&self) -> &str;
    fn button_confirm_revoke(&self) -> &str;
    fn button_cancel(&self) -> &str;

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
    fn milestone(&self, milestone: Milestone) -> &str;
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

/// Every language, loaded once.
static CATALOG: LazyLock<Vec<Locale>> = LazyLock::new(|| {
    LOCALES
        .iter()
        .map(|&(code, source)| Locale::load(code, source))
        .collect()
});

/// Texts that take no arguments, formatted once so callers can borrow them:
/// `(message, attribute)`.
const FIXED: &[(&str, &str)] = &[
    ("command", "start"),
    ("command", "key"),
    ("command", "history"),
    ("command", "help"),
    ("button", "get-key"),
    ("button", "history"),
    ("button", "help"),
    ("button", "refresh"),
    ("button", "revoke"),
    ("button", "confirm-refresh"),
    ("button", "confirm-revoke"),
    ("button", "cancel"),
    ("milestone", "issued"),
    ("milestone", "ready"),
    ("milestone", "refreshed"),
    ("milestone", "revoked"),
    ("milestone", "expired"),
    ("milestone", "renewed"),
    ("milestone", "repaired"),
    ("milestone", "failed"),
];

/// One language: its Fluent bundle (its own file over English's, so a message its file
/// lacks is said in English) and its [`FIXED`] texts.
struct Locale {
    code: &'static str,
    bundle: FluentBundle<FluentResource>,
    fixed: HashMap<(&'static str, &'static str), String>,
}

impl Locale {
    fn load(code: &'static str, source: &str) -> Self {
        let language = code.parse::<LanguageIdentifier>().unwrap_or_else(|error| {
            tracing::error!(code, %error, "not a language code; texts use generic rules");
            LanguageIdentifier::default()
        });
        let mut bundle = FluentBundle::new_concurrent(vec![language]);
        bundle.set_use_isolating(false);
        let english = LOCALES.first().map_or("", |(_, source)| source);
        let layers = if source == english {
            vec![source]
        } else {
            vec![english, source]
        };
        for layer in layers {
            let resource =
                FluentResource::try_new(layer.to_owned()).unwrap_or_else(|(resource, errors)| {
                    tracing::error!(
                        code,
                        ?errors,
                        "a locale file does not parse; using what does"
                    );
                    resource
                });
            bundle.add_resource_overriding(resource);
        }
        let mut locale = Self {
            code,
            bundle,
            fixed: HashMap::new(),
        };
        locale.fixed = FIXED
            .iter()
            .map(|&(id, attribute)| {
                let text = locale.format(id, Some(attribute), &FluentArgs::new());
                ((id, attribute), text)
            })
            .collect();
        locale
    }

    /// A message, or one of its attributes, with `args`. A missing message or a Fluent
    /// error (which the tests rule out) is logged; the text is then as good as it gets.
    fn format(&self, id: &str, attribute: Option<&str>, args: &FluentArgs) -> String {
        let message = self.bundle.get_message(id);
        let pattern = match attribute {
            Some(attribute) => message
                .as_ref()
                .and_then(|message| message.get_attribute(attribute))
                .map(|attribute| attribute.value()),
            None => message.as_ref().and_then(|message| message.value()),
        };
        let Some(pattern) = pattern else {
            tracing::error!(lang = self.code, id, attribute, "no such message");
            #[cfg(test)]
            tests::fluent_error(format!("{}: no message {id} {attribute:?}", self.code));
            return attribute.unwrap_or(id).to_owned();
        };
        let mut errors = Vec::new();
        let text = self
            .bundle
            .format_pattern(pattern, Some(args), &mut errors)
            .into_owned();
        if !errors.is_empty() {
            tracing::error!(
                lang = self.code,
                id,
                attribute,
                ?errors,
                "message does not format"
            );
            #[cfg(test)]
            tests::fluent_error(format!("{}: {id} {attribute:?}: {errors:?}", self.code));
        }
        text
    }

    fn message(&self, id: &str, args: &FluentArgs) -> String {
        self.format(id, None, args)
    }

    fn fixed(&self, id: &'static str, attribute: &'static str) -> &str {
        self.fixed
            .get(&(id, attribute))
            .map_or(attribute, String::as_str)
    }

    /// `location`'s message `id`, the only argument most messages take.
    fn about(&self, id: &str, location: &str) -> String {
        self.message(id, &args([("location", escape(location))]))
    }

    /// The `validity` line of a card.
    fn validity(&self, expires_at: Option<OffsetDateTime>) -> String {
        match expires_at {
            Some(at) => self.format("validity", Some("until"), &args([("date", self.date(at))])),
            None => self.format("validity", Some("forever"), &FluentArgs::new()),
        }
    }

    /// The `link` block of a card.
    fn link(&self, link: Option<&str>) -> String {
        match link {
            Some(link) => self.format("link", Some("copy"), &args([("url", escape(link))])),
            None => self.format("link", Some("missing"), &FluentArgs::new()),
        }
    }

    /// A notification that hands out a key: `notify-ready` or `notify-refreshed`.
    fn key_notification(
        &self,
        id: &str,
        location: &str,
        link: Option<&str>,
        expires_at: Option<OffsetDateTime>,
        after_failure: bool,
    ) -> String {
        self.message(
            id,
            &args([
                ("location", escape(location)),
                ("validity", self.validity(expires_at)),
                ("link", self.link(link)),
                (
                    "after-failure",
                    if after_failure { "yes" } else { "no" }.to_owned(),
                ),
            ]),
        )
    }
}

/// Fluent arguments, all strings: numbers and dates are formatted before they get here.
fn args<const N: usize>(values: [(&'static str, String); N]) -> FluentArgs<'static> {
    let mut args = FluentArgs::with_capacity(N);
    for (name, value) in values {
        args.set(name, value);
    }
    args
}

impl Texts for Locale {
    fn command_start(&self) -> &str {
        self.fixed("command", "start")
    }
    fn command_key(&self) -> &str {
        self.fixed("command", "key")
    }
    fn command_history(&self) -> &str {
        self.fixed("command", "history")
    }
    fn command_help(&self) -> &str {
        self.fixed("command", "help")
    }

    fn button_get_key(&self) -> &str {
        self.fixed("button", "get-key")
    }
    fn button_history(&self) -> &str {
        self.fixed("button", "history")
    }
    fn button_help(&self) -> &str {
        self.fixed("button", "help")
    }
    fn button_refresh(&self) -> &str {
        self.fixed("button", "refresh")
    }
    fn button_revoke(&self) -> &str {
        self.fixed("button", "revoke")
    }
    fn button_confirm_refresh(&self) -> &str {
        self.fixed("button", "confirm-refresh")
    }
    fn button_confirm_revoke(&self) -> &str {
        self.fixed("button", "confirm-revoke")
    }
    fn button_cancel(&self) -> &str {
        self.fixed("button", "cancel")
    }

    fn greeting(&self, first_name: &str) -> String {
        self.message("greeting", &args([("name", escape(first_name))]))
    }

    fn help(&self) -> String {
        self.message("help", &FluentArgs::new())
    }

    fn choose_location(&self) -> String {
        self.message("choose-location", &FluentArgs::new())
    }

    fn key_card(
        &self,
        location: &str,
        state: CardState,
        link: Option<&str>,
        expires_at: Option<OffsetDateTime>,
    ) -> String {
        let mut values = args([("location", escape(location))]);
        if state == CardState::Active {
            values.set("validity", self.validity(expires_at));
            values.set("link", self.link(link));
        }
        self.format("key-card", Some(state.attribute()), &values)
    }

    fn key_requested(&self, location: &str) -> String {
        self.about("key-requested", location)
    }

    fn confirm_refresh(&self, location: &str) -> String {
        self.about("confirm-refresh", location)
    }

    fn confirm_revoke(&self, location: &str) -> String {
        self.about("confirm-revoke", location)
    }

    fn refresh_started(&self, location: &str) -> String {
        self.about("refresh-started", location)
    }

    fn refresh_already_running(&self, location: &str) -> String {
        self.about("refresh-already-running", location)
    }

    fn revoke_started(&self, location: &str) -> String {
        self.about("revoke-started", location)
    }

    fn cancelled(&self) -> String {
        self.message("cancelled", &FluentArgs::new())
    }

    fn not_your_key(&self) -> String {
        self.message("not-your-key", &FluentArgs::new())
    }

    fn stale_button(&self) -> String {
        self.message("stale-button", &FluentArgs::new())
    }

    fn no_keys(&self) -> String {
        self.message("no-keys", &FluentArgs::new())
    }

    fn history_title(&self, location: &str) -> String {
        self.about("history-title", location)
    }

    fn milestone(&self, milestone: Milestone) -> &str {
        self.fixed("milestone", milestone.attribute())
    }

    fn unknown_input(&self) -> String {
        self.message("unknown-input", &FluentArgs::new())
    }

    fn try_again_later(&self) -> String {
        self.message("try-again-later", &FluentArgs::new())
    }

    fn unknown_location(&self) -> String {
        self.message("unknown-location", &FluentArgs::new())
    }

    fn notify_ready(
        &self,
        location: &str,
        link: Option<&str>,
        expires_at: Option<OffsetDateTime>,
        after_failure: bool,
    ) -> String {
        self.key_notification("notify-ready", location, link, expires_at, after_failure)
    }

    fn notify_refreshed(
        &self,
        location: &str,
        link: Option<&str>,
        expires_at: Option<OffsetDateTime>,
        after_failure: bool,
    ) -> String {
        self.key_notification(
            "notify-refreshed",
            location,
            link,
            expires_at,
            after_failure,
        )
    }

    fn notify_revoked(&self, location: &str) -> String {
        self.about("notify-revoked", location)
    }

    fn notify_expired(&self, location: &str) -> String {
        self.about("notify-expired", location)
    }

    fn notify_renewed(&self, location: &str, expires_at: OffsetDateTime) -> String {
        self.message(
            "notify-renewed",
            &args([
                ("location", escape(location)),
                ("date", self.date(expires_at)),
            ]),
        )
    }

    fn notify_failed(&self, location: &str) -> String {
        self.about("notify-failed", location)
    }

    fn expiry_warning(&self, location: &str, expires_at: OffsetDateTime) -> String {
        self.message(
            "expiry-warning",
            &args([
                ("location", escape(location)),
                ("date", self.date(expires_at)),
            ]),
        )
    }

    /// In UTC: users are everywhere, and a date with its zone named is never misread. The
    /// parts are zero-padded here (Fluent's NUMBER does not pad); the file orders them.
    fn date(&self, at: OffsetDateTime) -> String {
        let at = at.to_offset(time::UtcOffset::UTC);
        self.message(
            "date",
            &args([
                ("year", format!("{:04}", at.year())),
                ("month", format!("{:02}", u8::from(at.month()))),
                ("day", format!("{:02}", at.day())),
                ("hour", format!("{:02}", at.hour())),
                ("minute", format!("{:02}", at.minute())),
            ]),
        )
    }
}

#[cfg(test)]
mod tests;
