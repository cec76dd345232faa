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
                    // Every yes/no selector of the files follows `after_failure` here.
                    let selector = after_failure;
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
                        ("details", "Valid until: soon\nTraffic: 1 GB used"),
                        ("subscription", selector),
                        ("subscription-url", "https://sub.example.com/s/abc"),
                        ("used", "1.5 GB"),
                        ("limit", "10 GB"),
                        ("left", "8.5 GB"),
                        ("value", "1.5"),
                        ("quota", "new traffic limit 10 GB"),
                    ] {
                        args.set(name, value);
                    }
                    args.set("minutes", 3);
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
        texts.button_open_subscription(),
        texts.button_new_link(),
        texts.button_confirm_new_link(),
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
        Milestone::Depleted,
        Milestone::QuotaChanged,
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
        for (link, expires_at, usage, subscription) in [
            (None, None, None, false),
            (Some("vless://x"), Some(at), Some(usage(5, 0)), true),
            (
                Some("vless://x"),
                None,
                Some(usage(5 << 30, 10 << 30)),
                false,
            ),
        ] {
            out.push(texts.key_card(&KeyCard {
                location: "Ams",
                state,
                link,
                expires_at,
                usage,
                subscription,
            }));
        }
    }
    for (link, expires_at, after_failure, subscription_url) in [
        (None, None, false, None),
        (
            Some("vless://x"),
            Some(at),
            true,
            Some("https://s.example/s/t"),
        ),
    ] {
        let notice = KeyNotice {
            location: "Ams",
            link,
            expires_at,
            after_failure,
            subscription_url,
        };
        out.push(texts.notify_ready(&notice));
        out.push(texts.notify_refreshed(&notice));
    }
    for subscription in [false, true] {
        out.extend([
            texts.key_requested("Ams", subscription),
            texts.confirm_refresh("Ams", subscription),
            texts.refresh_started("Ams", subscription),
        ]);
    }
    out.extend([
        texts.greeting("Ann"),
        texts.help(false),
        texts.help(true),
        texts.choose_location(),
        texts.confirm_revoke("Ams"),
        texts.refresh_already_running("Ams"),
        texts.subscription("https://s.example/s/t"),
        texts.confirm_new_link(),
        texts.new_link_done(),
        texts.notify_depleted("Ams", 10 << 30, 10 << 30),
        texts.notify_restored("Ams", 0),
        texts.notify_restored("Ams", 20 << 30),
        texts.size(0),
        texts.size(u64::MAX),
        texts.revoke_started("Ams"),
        texts.cancelled(),
        texts.not_your_key(),
        texts.stale_button(),
        texts.no_keys(),
        texts.history_title("Ams"),
        texts.unknown_input(),
        texts.try_again_later(),
        texts.unknown_location(),
        texts.limit_reached(1),
        texts.limit_reached(3),
        texts.limit_reached(25),
        texts.revoked_by_admin("Ams"),
        texts.user_blocked(),
        texts.not_allowed(),
        texts.notify_revoked("Ams"),
        texts.notify_expired("Ams"),
        texts.notify_renewed("Ams", at),
        texts.notify_failed("Ams"),
        texts.expiry_warning("Ams", at),
        texts.date(at),
    ]);
    out
}

fn usage(used_bytes: u64, limit_bytes: u64) -> Usage {
    Usage {
        used_bytes,
        limit_bytes,
    }
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
        let card = texts.key_card(&KeyCard {
            location: "<b>Ams & co</b>",
            state: CardState::Active,
            link: Some("vless://x@h:1?a=1&b=2#tg<1>"),
            expires_at: Some(datetime!(2030-01-31 14:05 UTC)),
            usage: None,
            subscription: false,
        });
        assert!(card.contains("&lt;b&gt;Ams &amp; co&lt;/b&gt;"), "{card}");
        assert!(
            card.contains("<code>vless://x@h:1?a=1&amp;b=2#tg&lt;1&gt;</code>"),
            "{card}"
        );
        assert!(card.contains("2030"), "{card}");
        let subscription = texts.subscription("https://s.example/s/a&b<");
        assert!(
            subscription.contains("<code>https://s.example/s/a&amp;b&lt;</code>"),
            "{subscription}"
        );
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
    assert_ne!(english.help(false), russian.help(false));
    assert_ne!(english.help(true), english.help(false));
    for lang in Lang::all() {
        let help = lang.texts().help(false);
        assert!(
            !help.contains("\n\n"),
            "{lang:?}: no gap where a line is left out: {help}"
        );
        assert!(!help.contains("🔁"), "{lang:?}: {help}");
    }
    assert_ne!(english.not_your_key(), russian.not_your_key());
}

#[test]
fn layout_survives_the_files() {
    let english = Lang::ENGLISH.texts();
    assert_eq!(
        english.notify_ready(&KeyNotice {
            location: "Ams",
            link: Some("vless://x"),
            expires_at: Some(datetime!(2030-01-31 14:05 UTC)),
            after_failure: true,
            subscription_url: None,
        }),
        "The server is answering again — sorry for the wait.\n\
         ✅ <b>Your key for Ams is ready.</b>\n\
         Valid until: 2030-01-31 14:05 UTC\n\n\
         <code>vless://x</code>\n\n\
         Tap the link to copy it, or scan the QR code in v2rayNG, Hiddify or Streisand."
    );
    assert_eq!(
        russian().texts().key_card(&KeyCard {
            location: "Ams",
            state: CardState::Revoked,
            link: None,
            expires_at: None,
            usage: None,
            subscription: false,
        }),
        "Ваш ключ (Ams) отозван. Нажмите «🔑 Мой ключ», чтобы получить новый."
    );
}

#[test]
fn a_card_shows_traffic_and_expiry_with_the_subscription_above_it() {
    let english = Lang::ENGLISH.texts();
    let card = KeyCard {
        location: "Ams",
        state: CardState::Active,
        link: Some("vless://x"),
        expires_at: Some(datetime!(2030-01-31 14:05 UTC)),
        usage: Some(usage(1536 << 20, 10 << 30)),
        subscription: true,
    };
    assert_eq!(
        english.key_card(&card),
        "🔧 <b>Manual set-up: your key for Ams</b>\n\
         Valid until: 2030-01-31 14:05 UTC\n\
         Traffic: 1.5 GB of 10 GB used, 8.5 GB left\n\n\
         <code>vless://x</code>\n\n\
         Only for an app that takes no subscription: tap the link to copy it, or scan the QR code."
    );
    let unlimited = KeyCard {
        usage: Some(usage(0, 0)),
        ..card
    };
    assert!(
        english
            .key_card(&unlimited)
            .contains("Traffic: 0 B used, no limit")
    );
    let depleted = KeyCard {
        state: CardState::Depleted,
        usage: Some(usage(10 << 30, 10 << 30)),
        ..card
    };
    let russian_card = russian().texts().key_card(&depleted);
    assert!(
        russian_card.contains("израсходовано 10 ГБ из 10 ГБ, осталось 0 Б"),
        "{russian_card}"
    );
    assert!(russian_card.contains("31.01.2030"), "{russian_card}");
    let unreported = KeyCard {
        usage: None,
        ..card
    };
    assert!(!english.key_card(&unreported).contains("Traffic"));
}

#[test]
fn sizes_read_naturally_in_each_language() {
    let (english, russian) = (Lang::ENGLISH.texts(), russian().texts());
    assert_eq!(english.size(0), "0 B");
    assert_eq!(english.size(1023), "1023 B");
    assert_eq!(english.size(1024), "1 KB");
    assert_eq!(english.size(1536), "1.5 KB");
    assert_eq!(english.size(1024 * 1024 - 1), "1024 KB");
    assert_eq!(english.size(250 << 20), "250 MB");
    assert_eq!(english.size((10 << 30) - (1 << 20)), "10 GB");
    assert_eq!(russian.size(1536 << 20), "1,5 ГБ");
    assert_eq!(russian.size(3 << 40), "3 ТБ");
    assert_eq!(english.size(u64::MAX), "16777216 TB");
}

#[test]
fn the_refreshed_key_keeps_the_subscription_url() {
    for lang in Lang::all() {
        let text = lang.texts().notify_refreshed(&KeyNotice {
            location: "Ams",
            link: Some("vless://x"),
            expires_at: None,
            after_failure: false,
            subscription_url: Some("https://s.example/s/tok"),
        });
        assert!(
            text.contains("<code>https://s.example/s/tok</code>"),
            "{lang:?}: {text}"
        );
        assert!(text.contains("<code>vless://x</code>"), "{lang:?}: {text}");
    }
}

/// What Telegram counts of an HTML text: the characters left once tags and entities are
/// read (UTF-16 units, as its limits are stated in).
fn telegram_length(html: &str) -> usize {
    let mut text = String::new();
    let mut in_tag = false;
    for c in html.chars() {
        match c {
            '<' => in_tag = true,
            '>' if in_tag => in_tag = false,
            c if !in_tag => text.push(c),
            _ => {}
        }
    }
    let text = text
        .replace("&lt;", "<")
        .replace("&gt;", ">")
        .replace("&quot;", "\"")
        .replace("&amp;", "&");
    text.encode_utf16().count()
}

#[test]
fn photo_captions_fit_telegrams_limit_in_every_language() {
    // Telegram refuses a photo whose caption is longer than 1024 characters. A long but
    // real link: REALITY with every parameter the panel's "copy link" gives.
    let link = format!(
        "vless://{}@ams-01.vpn.example.com:443?type=tcp&encryption=none&security=reality\
         &pbk={}&fp=chrome&sni=www.microsoft.com&sid=0123456789abcdef&spx=%2F\
         &flow=xtls-rprx-vision#Amsterdam%20%F0%9F%87%B3%F0%9F%87%B1-tg1234567890-ams",
        uuid::Uuid::nil(),
        "A".repeat(43)
    );
    let url = format!("https://subscriptions.vpn.example.com/s/{}", "t".repeat(24));
    let location = "Amsterdam 🇳🇱 (Equinix AM5)";
    let at = Some(datetime!(2030-01-31 14:05 UTC));
    for lang in Lang::all() {
        let texts = lang.texts();
        let notice = KeyNotice {
            location,
            link: Some(&link),
            expires_at: at,
            after_failure: true,
            subscription_url: Some(&url),
        };
        let card = KeyCard {
            location,
            state: CardState::Active,
            link: Some(&link),
            expires_at: at,
            usage: Some(usage(1 << 40, 2 << 40)),
            subscription: true,
        };
        for caption in [
            texts.notify_ready(&notice),
            texts.notify_refreshed(&notice),
            texts.key_card(&card),
            texts.subscription(&url),
        ] {
            let length = telegram_length(&caption);
            assert!(length <= 1024, "{lang:?}: {length} characters: {caption}");
        }
    }
}
