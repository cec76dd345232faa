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
    Depleted,
    QuotaChanged,
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
            Self::Depleted => "depleted",
            Self::QuotaChanged => "quota-changed",
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

/// Traffic as the panel last reported it for a key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Usage {
    /// Up and down together.
    pub used_bytes: u64,
    /// 0: no limit.
    pub limit_bytes: u64,
}

/// Everything a key card says.
#[derive(Debug, Clone, Copy)]
pub struct KeyCard<'a> {
    pub location: &'a str,
    pub state: CardState,
    /// The `vless://` link, shown only on an active card.
    pub link: Option<&'a str>,
    pub expires_at: Option<OffsetDateTime>,
    /// `None` until the panel has reported the key's traffic.
    pub usage: Option<Usage>,
    /// The user has a subscription, shown above the card: the link is for manual set-up.
    pub subscription: bool,
}

/// A notification that hands out a key (ready or refreshed).
#[derive(Debug, Clone, Copy)]
pub struct KeyNotice<'a> {
    pub location: &'a str,
    pub link: Option<&'a str>,
    pub expires_at: Option<OffsetDateTime>,
    /// It follows a server problem, which it then says is over.
    pub after_failure: bool,
    /// The user's subscription URL, which keeps working across the change.
    pub subscription_url: Option<&'a str>,
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
    fn button_open_subscription(&self) -> &str;
    fn button_new_link(&self) -> &str;
    fn button_confirm_new_link(&self) -> &str;

    // Conversation.
    fn greeting(&self, first_name: &str) -> String;
    /// `subscription`: subscriptions are served, so the help tells of them.
    fn help(&self, subscription: bool) -> String;
    fn choose_location(&self) -> String;
    /// A key's card: the link (copyable), what state the key is in, its expiry and traffic.
    fn key_card(&self, card: &KeyCard<'_>) -> String;
    /// The user's subscription: its URL (copyable) and which apps take it.
    fn subscription(&self, url: &str) -> String;
    /// `subscription`: the new key goes into the user's subscription too.
    fn key_requested(&self, location: &str, subscription: bool) -> String;
    /// `subscription`: the user's app picks up the new key through the subscription.
    fn confirm_refresh(&self, location: &str, subscription: bool) -> String;
    fn confirm_revoke(&self, location: &str) -> String;
    fn refresh_started(&self, location: &str, subscription: bool) -> String;
    fn refresh_already_running(&self, location: &str) -> String;
    fn revoke_started(&self, location: &str) -> String;
    fn confirm_new_link(&self) -> String;
    fn new_link_done(&self) -> String;
    fn cancelled(&self) -> String;
    fn not_your_key(&self) -> String;
    fn stale_button(&self) -> String;
    fn no_keys(&self) -> String;
    fn history_title(&self, location: &str) -> String;
    fn milestone(&self, milestone: Milestone) -> &str;
    fn unknown_input(&self) -> String;
    fn try_again_later(&self) -> String;
    fn unknown_location(&self) -> String;
    /// The user did too much of something costly; they may again in `minutes` (at least 1).
    fn limit_reached(&self, minutes: u64) -> String;
    /// The user's key at `location` was revoked by an administrator: no new one by themselves.
    fn revoked_by_admin(&self, location: &str) -> String;
    /// An administrator blocked the user: no new key, no new link.
    fn user_blocked(&self) -> String;
    /// The request policy is an allowlist and the user is not on it.
    fn not_allowed(&self) -> String;

    // Notifications.
    fn notify_ready(&self, notice: &KeyNotice<'_>) -> String;
    fn notify_refreshed(&self, notice: &KeyNotice<'_>) -> String;
    fn notify_revoked(&self, location: &str) -> String;
    fn notify_expired(&self, location: &str) -> String;
    fn notify_renewed(&self, location: &str, expires_at: OffsetDateTime) -> String;
    fn notify_failed(&self, location: &str) -> String;
    fn expiry_warning(&self, location: &str, expires_at: OffsetDateTime) -> String;
    /// The panel paused the key: `used_bytes` of `limit_bytes` are used up.
    fn notify_depleted(&self, location: &str, used_bytes: u64, limit_bytes: u64) -> String;
    /// A new limit (0: none) brought the key back.
    fn notify_restored(&self, location: &str, limit_bytes: u64) -> String;

    fn date(&self, at: OffsetDateTime) -> String;
    /// An amount of traffic, in this language's units and decimal mark.
    fn size(&self, bytes: u64) -> String;
}

/// Units of [`Texts::size`], each its attribute of the `size` message, in steps of 1024.
const SIZE_UNITS: [&str; 5] = ["b", "kib", "mib", "gib", "tib"];

/// `bytes` in the largest unit that keeps the number at 1 or more: the unit's index in
/// [`SIZE_UNITS`], the whole part and the tenths (0–9). Numbers of 100 and more, and bytes,
/// have no tenths, which would only be noise.
fn scaled(bytes: u64) -> (usize, u64, Option<u64>) {
    let mut unit = 0;
    let mut scale: u64 = 1;
    while unit + 1 < SIZE_UNITS.len() && bytes >= scale * 1024 {
        unit += 1;
        scale *= 1024;
    }
    if unit == 0 {
        return (0, bytes, None);
    }
    // Rounded to tenths, in integers: no float ever shows 0.30000000000000004.
    let tenths = (u128::from(bytes) * 10 + u128::from(scale) / 2) / u128::from(scale);
    if tenths >= 1000 {
        let whole = (u128::from(bytes) + u128::from(scale) / 2) / u128::from(scale);
        return (unit, u64::try_from(whole).unwrap_or(u64::MAX), None);
    }
    let tenths = u64::try_from(tenths).unwrap_or(u64::MAX);
    let (whole, tenth) = (tenths / 10, tenths % 10);
    (unit, whole, (tenth != 0).then_some(tenth))
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
    ("button", "open-subscription"),
    ("button", "new-link"),
    ("button", "confirm-new-link"),
    ("number", "decimal-mark"),
    ("milestone", "issued"),
    ("milestone", "ready"),
    ("milestone", "refreshed"),
    ("milestone", "revoked"),
    ("milestone", "expired"),
    ("milestone", "renewed"),
    ("milestone", "repaired"),
    ("milestone", "failed"),
    ("milestone", "depleted"),
    ("milestone", "quota-changed"),
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

    /// The `usage` line of a card.
    fn usage(&self, usage: Usage) -> String {
        let used = self.size(usage.used_bytes);
        if usage.limit_bytes == 0 {
            return self.format("usage", Some("unlimited"), &args([("used", used)]));
        }
        let left = usage.limit_bytes.saturating_sub(usage.used_bytes);
        self.format(
            "usage",
            Some("limited"),
            &args([
                ("used", used),
                ("limit", self.size(usage.limit_bytes)),
                ("left", self.size(left)),
            ]),
        )
    }

    /// A card's `details`: the validity line, and the traffic line once there is one.
    fn details(&self, expires_at: Option<OffsetDateTime>, usage: Option<Usage>) -> String {
        let mut lines = vec![self.validity(expires_at)];
        lines.extend(usage.map(|usage| self.usage(usage)));
        lines.join("\n")
    }

    /// The `link` block of a card.
    fn link(&self, link: Option<&str>, subscription: bool) -> String {
        match link {
            Some(link) => self.format(
                "link",
                Some("copy"),
                &args([
                    ("url", escape(link)),
                    ("subscription", yes_no(subscription)),
                ]),
            ),
            None => self.format("link", Some("missing"), &FluentArgs::new()),
        }
    }

    /// A notification that hands out a key: `notify-ready` or `notify-refreshed`.
    fn key_notification(&self, id: &str, notice: &KeyNotice<'_>) -> String {
        let subscription = notice.subscription_url.is_some();
        self.message(
            id,
            &args([
                ("location", escape(notice.location)),
                ("validity", self.validity(notice.expires_at)),
                ("link", self.link(notice.link, subscription)),
                ("after-failure", yes_no(notice.after_failure)),
                ("subscription", yes_no(subscription)),
                (
                    "subscription-url",
                    escape(notice.subscription_url.unwrap_or_default()),
                ),
            ]),
        )
    }

    /// `location`'s message `id` with its `subscription` selector.
    fn about_with_subscription(&self, id: &str, location: &str, subscription: bool) -> String {
        self.message(
            id,
            &args([
                ("location", escape(location)),
                ("subscription", yes_no(subscription)),
            ]),
        )
    }
}

/// The value of a yes/no selector in the Fluent files.
fn yes_no(yes: bool) -> String {
    if yes { "yes" } else { "no" }.to_owned()
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
    fn button_open_subscription(&self) -> &str {
        self.fixed("button", "open-subscription")
    }
    fn button_new_link(&self) -> &str {
        self.fixed("button", "new-link")
    }
    fn button_confirm_new_link(&self) -> &str {
        self.fixed("button", "confirm-new-link")
    }

    fn greeting(&self, first_name: &str) -> String {
        self.message("greeting", &args([("name", escape(first_name))]))
    }

    fn help(&self, subscription: bool) -> String {
        self.message("help", &args([("subscription", yes_no(subscription))]))
    }

    fn choose_location(&self) -> String {
        self.message("choose-location", &FluentArgs::new())
    }

    fn key_card(&self, card: &KeyCard<'_>) -> String {
        let mut values = args([("location", escape(card.location))]);
        if matches!(card.state, CardState::Active | CardState::Depleted) {
            values.set("details", self.details(card.expires_at, card.usage));
            values.set("link", self.link(card.link, card.subscription));
            values.set("subscription", yes_no(card.subscription));
        }
        self.format("key-card", Some(card.state.attribute()), &values)
    }

    fn subscription(&self, url: &str) -> String {
        self.message("subscription", &args([("url", escape(url))]))
    }

    fn key_requested(&self, location: &str, subscription: bool) -> String {
        self.about_with_subscription("key-requested", location, subscription)
    }

    fn confirm_refresh(&self, location: &str, subscription: bool) -> String {
        self.about_with_subscription("confirm-refresh", location, subscription)
    }

    fn confirm_revoke(&self, location: &str) -> String {
        self.about("confirm-revoke", location)
    }

    fn refresh_started(&self, location: &str, subscription: bool) -> String {
        self.about_with_subscription("refresh-started", location, subscription)
    }

    fn refresh_already_running(&self, location: &str) -> String {
        self.about("refresh-already-running", location)
    }

    fn revoke_started(&self, location: &str) -> String {
        self.about("revoke-started", location)
    }

    fn confirm_new_link(&self) -> String {
        self.message("confirm-new-link", &FluentArgs::new())
    }

    fn new_link_done(&self) -> String {
        self.message("new-link-done", &FluentArgs::new())
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

    fn limit_reached(&self, minutes: u64) -> String {
        let mut args = FluentArgs::new();
        args.set("minutes", minutes.max(1));
        self.message("limit-reached", &args)
    }

    fn revoked_by_admin(&self, location: &str) -> String {
        self.about("revoked-by-admin", location)
    }

    fn user_blocked(&self) -> String {
        self.message("user-blocked", &FluentArgs::new())
    }

    fn not_allowed(&self) -> String {
        self.message("not-allowed", &FluentArgs::new())
    }

    fn notify_ready(&self, notice: &KeyNotice<'_>) -> String {
        self.key_notification("notify-ready", notice)
    }

    fn notify_refreshed(&self, notice: &KeyNotice<'_>) -> String {
        self.key_notification("notify-refreshed", notice)
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

    fn notify_depleted(&self, location: &str, used_bytes: u64, limit_bytes: u64) -> String {
        self.message(
            "notify-depleted",
            &args([
                ("location", escape(location)),
                ("used", self.size(used_bytes)),
                ("limit", self.size(limit_bytes)),
            ]),
        )
    }

    fn notify_restored(&self, location: &str, limit_bytes: u64) -> String {
        let quota = if limit_bytes == 0 {
            self.format("quota", Some("unlimited"), &FluentArgs::new())
        } else {
            self.format(
                "quota",
                Some("limited"),
                &args([("limit", self.size(limit_bytes))]),
            )
        };
        self.message(
            "notify-restored",
            &args([("location", escape(location)), ("quota", quota)]),
        )
    }

    /// In binary units (as the panels count), one decimal below 100, the number formatted
    /// here and the unit and decimal mark from the file.
    fn size(&self, bytes: u64) -> String {
        let (unit, whole, tenth) = scaled(bytes);
        let value = match tenth {
            Some(tenth) => format!("{whole}{}{tenth}", self.fixed("number", "decimal-mark")),
            None => whole.to_string(),
        };
        let unit = SIZE_UNITS.get(unit).copied().unwrap_or("b");
        self.format("size", Some(unit), &args([("value", value)]))
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
