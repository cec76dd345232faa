//! Tests of the bot's texts: every locale file parses, has exactly the messages and attributes
//! of English, and renders every text the bot says without a Fluent error. They are what makes
//! adding a language safe, since a missing or broken message would otherwise only show as a
//! wrong text in front of a user. Fluent errors are collected per test thread
//! ([`fluent_error`]) so that a test can assert there were none.

use std::cell::RefCell;
use std::collections::{BTreeMap, BTreeSet};

use fluent_bundle::{FluentArgs, FluentResource};
use fluent_syntax::ast::Entry;
use time::macros::datetime;
use unic_langid::LanguageIdentifier;

use super::*;

thread_local! {
    /// Fluent errors this test thread's texts ran into.
    static FLUENT_ERRORS: RefCell<Vec<String>> = const { RefCell::new(Vec::new()) };
}

pub(super) fn fluent_error(error: String) {
    FLUENT_ERRORS.with(|errors| errors.borrow_mut().push(error));
}

fn take_fluent_errors() -> Vec<String> {
    FLUENT_ERRORS.with(|errors| errors.take())
}

fn russian() -> Lang {
    Lang::from_stored("ru")
}

/// Each locale file, parsed; any parse error fails the test.
fn parsed() -> Vec<(&'static str, FluentResource)> {
    LOCALES
        .iter()
        .map(
            |&(code, source)| match FluentResource::try_new(source.to_owned()) {
                Ok(resource) => (code, resource),
                Err((_, errors)) => panic!("locales/{code}.ftl does not parse: {errors:#?}"),
            },
        )
        .collect()
}

/// A file's messages and terms (terms as `-name`), each with its attributes.
fn ids(resource: &FluentResource) -> BTreeMap<String, BTreeSet<String>> {
    let mut ids = BTreeMap::new();
    for entry in resource.entries() {
        let (id, attributes) = match entry {
            Entry::Message(message) => (message.id.name.to_owned(), &message.attributes),
            Entry::Term(term) => (format!("-{}", term.id.name), &term.attributes),
            _ => continue,
        };
        let attributes = attributes.iter().map(|a| a.id.name.to_owned()).collect();
        assert!(
            ids.insert(id.clone(), attributes).is_none(),
            "{id} is defined twice"
        );
    }
    ids
}

#[test]
fn locales_are_listed_once_english_first() {
    assert_eq!(LOCALES[0].0, "en", "English is the fallback");
    let mut seen = BTreeSet::new();
    for (code, _) in LOCALES {
        assert!(seen.insert(*code), "{code} listed twice");
        assert_eq!(*code, code.to_ascii_lowercase(), "codes are lowercase");
        assert!(
            code.parse::<LanguageIdentifier>().is_ok(),
            "{code} is a language code"
        );
    }
    assert_eq!(Lang::all().count(), LOCALES.len());
    assert_eq!(CATALOG.len(), LOCALES.len());
}

#[test]
fn every_language_has_exactly_the_messages_of_english() {
    let files = parsed();
    let (_, english) = &files[0];
    let english = ids(english);
    assert!(english.contains_key("greeting"), "{english:?}");
    for (code, resource) in &files[1..] {
        let theirs = ids(resource);
        for (id, attributes) in &english {
            match theirs.get(id) {
                None => panic!("locales/{code}.ftl lacks {id}"),
                Some(their) => assert_eq!(
                    their, attributes,
                    "locales/{code}.ftl: {id} has other attributes than in English"
                ),
            }
        }
        for id in theirs.keys() {
            assert!(
                english.contains_key(id),
                "locales/{code}.ftl has {id}, which English lacks"
            );
        }
    }
}

#[test]
fn every_message_renders_in_every_language() {
    let files = parsed();
    for ((code, resource), lang) in files.iter().zip(Lang::all()) {
        assert_eq!(*code, lang.code());
        let bundle = &CATALOG[lang.0].bundle;
        for (id, attributes) in ids(resource) {
            let Some(message) = id
                .strip_prefix('-')
                .is_none()
                .then(|| bundle.get_message(&id))
            else {
                continue; // terms render where messages use them
            };
            let message = message.unwrap_or_else(|| panic!("{code}: {id} is not in the bundle"));
            let mut patterns: Vec<_> = message.value().into_iter().map(|p| (None, p)).collect();
            for attribute in &attributes {
                let value = message
                    .get_attribute(attribute)
                    .unwrap_or_else(|| panic!("{code}: {id}.{attribute} is not in the bundle"))
                    .value();
                patterns.push((Some(attribute.as_str()), value));
            }
            assert!(!patterns.is_empty(), "{code}: {id} says nothing");
            for (attribute, pattern) in patterns {
                for after_failure in ["yes", "no"] {
                    let mut args = FluentArgs::new();
                    for (name, value) in [
                        ("location", "Amsterdam"),
                        ("name", "Ann"),
                        ("url", "vless://x@h:1#a"),
                        ("validity", "Valid until: soon"),
                        ("link", "<code>vless://x@h:1#a</code>"),
                        ("date", "2030-01-31 14:05 UTC"),
                        ("year", "2030"),
                        ("month", "01"),
                        ("day", "31"),
                        ("hour", "14"),
                        ("minute", "05"),
                        ("after-failure", after_failure),
                    ] {
                        args.set(name, value);
                    }
                    let mut errors = Vec::new();
                    let text = bundle.format_pattern(pattern, Some(&args), &mut errors);
                    assert!(errors.is_empty(), "{code}: {id} {attribute:?}: {errors:?}");
                    assert!(
                        !text.trim().is_empty(),
                        "{code}: {id} {attribute:?} is empty"
                    );
                    assert!(
                        !text.contains(['\u{2068}', '\u{2069}']),
                        "{code}: {id} {attribute:?} has isolation marks: {text:?}"
                    );
                }
            }
        }
    }
}

/// Every text of every language, through the API the bot uses.
fn everything(texts: &dyn Texts) -> Vec<String> {
    let at = datetime!(2030-01-05 04:07 UTC);
    let mut out: Vec<String> = [
        texts.command_start(),
        texts.command_key(),
        texts.command_history(),
        texts.command_help(),
        texts.button_get_key(),
        texts.button_history(),
        texts.button_help(),
        texts.button_refresh(),
        texts.button_revoke(),
        texts.button_confirm_refresh(),
        texts.button_confirm_revoke(),
        texts.button_cancel(),
    ]
    .map(str::to_owned)
    .to_vec();
    for milestone in [
        Milestone::Issued,
        Milestone::Ready,
        Milestone::Refreshed,
        Milestone::Revoked,
        Milestone::Expired,
        Milestone::Renewed,
        Milestone::Repaired,
        Milestone::Failed,
    ] {
        out.push(texts.milestone(milestone).to_owned());
    }
    for state in [
        CardState::Active,
        CardState::Provisioning,
        CardState::Rotating,
        CardState::Revoking,
        CardState::Revoked,
        CardState::Expired,
        CardState::Depleted,
        CardState::Failed,
    ] {
        for (link, expires_at) in [(None, None), (Some("vless://x"), Some(at))] {
            out.push(texts.key_card("Ams", state, link, expires_at));
        }
    }
    for (link, expires_at, after_failure) in
        [(None, None, false), (Some("vless://x"), Some(at), true)]
    {
        out.push(texts.notify_ready("Ams", link, expires_at, after_failure));
        out.push(texts.notify_refreshed("Ams", link, expires_at, after_failure));
    }
    out.extend([
        texts.greeting("Ann"),
        texts.help(),
        texts.choose_location(),
        texts.key_requested("Ams"),
        texts.confirm_refresh("Ams"),
        texts.confirm_revoke("Ams"),
        texts.refresh_started("Ams"),
        texts.refresh_already_running("Ams"),
        texts.revoke_started("Ams"),
        texts.cancelled(),
        texts.not_your_key(),
        texts.stale_button(),
        texts.no_keys(),
        texts.history_title("Ams"),
        texts.unknown_input(),
        texts.try_again_later(),
        texts.unknown_location(),
        texts.notify_revoked("Ams"),
        texts.notify_expired("Ams"),
        texts.notify_renewed("Ams", at),
        texts.notify_failed("Ams"),
        texts.expiry_warning("Ams", at),
        texts.date(at),
    ]);
    out
}

#[test]
fn every_text_the_bot_says_renders_in_every_language() {
    take_fluent_errors();
    for lang in Lang::all() {
        for text in everything(lang.texts()) {
            assert!(!text.is_empty(), "{lang:?}: an empty text");
            assert!(
                !text.contains(['\u{2068}', '\u{2069}', '{', '}']),
                "{lang:?}: {text:?}"
            );
        }
        assert_eq!(take_fluent_errors(), Vec::<String>::new(), "{lang:?}");
    }
}

#[test]
fn a_message_a_language_lacks_is_said_in_english() {
    let english = Lang::ENGLISH.texts().not_your_key();
    take_fluent_errors();
    let partial = Locale::load("xx", "cancelled = Nope.\n");
    assert_eq!(partial.cancelled(), "Nope.");
    assert_eq!(partial.not_your_key(), english);
    assert_eq!(partial.button_get_key(), "🔑 My key");
    assert_eq!(take_fluent_errors(), Vec::<String>::new());
}

#[test]
fn language_follows_the_telegram_code() {
    assert_eq!(Lang::from_code(Some("ru")), russian());
    assert_eq!(Lang::from_code(Some("ru-RU")), russian());
    assert_eq!(Lang::from_code(Some("RU")), russian());
    assert_eq!(Lang::from_code(Some("en")), Lang::ENGLISH);
    assert_eq!(Lang::from_code(Some("de")), Lang::ENGLISH);
    assert_eq!(Lang::from_code(Some("rus")), Lang::ENGLISH);
    assert_eq!(Lang::from_code(None), Lang::ENGLISH);
    assert_eq!(russian().code(), "ru");
    assert_eq!(Lang::from_stored("ru-RU"), Lang::ENGLISH);
    for lang in Lang::all() {
        assert_eq!(Lang::from_stored(lang.code()), lang);
        assert_eq!(Lang::from_code(Some(lang.code())), lang);
    }
}

#[test]
fn outside_values_are_escaped() {
    for lang in Lang::all() {
        let texts = lang.texts();
        let card = texts.key_card(
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
        let greeting = texts.greeting("<i>\"Ann\"</i>");
        assert!(
            greeting.contains("&lt;i&gt;&quot;Ann&quot;&lt;/i&gt;"),
            "{greeting}"
        );
    }
}

#[test]
fn both_languages_differ_and_date_formats_are_their_own() {
    let (english, russian) = (Lang::ENGLISH.texts(), russian().texts());
    let at = datetime!(2030-01-31 14:05 UTC);
    assert_eq!(english.date(at), "2030-01-31 14:05 UTC");
    assert_eq!(russian.date(at), "31.01.2030 14:05 UTC");
    let moscow = datetime!(2030-01-01 01:02 +03:00);
    assert_eq!(english.date(moscow), "2029-12-31 22:02 UTC");
    assert_ne!(english.help(), russian.help());
    assert_ne!(english.not_your_key(), russian.not_your_key());
}

#[test]
fn layout_survives_the_files() {
    let english = Lang::ENGLISH.texts();
    assert_eq!(
        english.notify_ready(
            "Ams",
            Some("vless://x"),
            Some(datetime!(2030-01-31 14:05 UTC)),
            true
        ),
        "The server is answering again — sorry for the wait.\n\
         ✅ <b>Your key for Ams is ready.</b>\n\
         Valid until: 2030-01-31 14:05 UTC\n\n\
         <code>vless://x</code>\n\n\
         Tap the link to copy it, or scan the QR code in v2rayNG, Hiddify or Streisand."
    );
    assert_eq!(
        russian()
            .texts()
            .key_card("Ams", CardState::Revoked, None, None),
        "Ваш ключ (Ams) отозван. Нажмите «🔑 Мой ключ», чтобы получить новый."
    );
}
