//! Text that came from outside keyledger, made safe to keep. A panel's error message, a
//! client's fields as a panel lists them or a handler's error built from them can be
//! megabytes long and can hold newlines (a forged log line), ANSI escapes (a rewritten
//! terminal), NUL (which PostgreSQL refuses in `jsonb`, so the event could not be
//! recorded at all) or bidirectional overrides (text that reads differently than it is).
//! Every such text passes through [`bounded_text`] before it reaches a log line, an
//! event's data or an AMQP header; [`bounded_json`] does the same for every string of a
//! JSON value.

use serde_json::{Map, Value};

/// The default bound of one foreign text, in characters: enough for any real panel
/// message, far below what a log line, a header or an event should carry.
pub const MAX_FOREIGN_TEXT_CHARS: usize = 512;

/// Marks text that was cut.
const ELLIPSIS: char = '…';

/// `text` with every control character replaced and cut to at most `max_chars`
/// characters, the last of them `…` when anything was cut.
///
/// - tab, newline, carriage return and the other line breaks (vertical tab, form feed,
///   NEL, U+2028, U+2029) become a space, so the text stays on one line;
/// - an ANSI escape sequence (`ESC [` … final byte) is dropped whole;
/// - every other control character (C0 including NUL, DEL, C1) and the bidirectional
///   formatting characters become U+FFFD.
///
/// The cut falls on a character boundary, and the work done is bounded by the input's
/// length, never by what is kept.
pub fn bounded_text(text: &str, max_chars: usize) -> String {
    let mut out = String::with_capacity(text.len().min(max_chars.saturating_mul(4)));
    let mut kept = 0;
    let mut chars = text.chars().peekable();
    while let Some(c) = chars.next() {
        let replacement = match c {
            '\u{1b}' if chars.peek() == Some(&'[') => {
                chars.next();
                // Parameter and intermediate bytes, then one final byte in @..~.
                for next in chars.by_ref() {
                    if ('\u{40}'..='\u{7e}').contains(&next) {
                        break;
                    }
                }
                continue;
            }
            '\t' | '\n' | '\r' | '\u{0b}' | '\u{0c}' | '\u{85}' | '\u{2028}' | '\u{2029}' => ' ',
            c if c.is_control() || is_bidi_control(c) => '\u{fffd}',
            c => c,
        };
        if kept == max_chars {
            // One more character than fits: replace the last kept one with the marker.
            if out.pop().is_some() {
                out.push(ELLIPSIS);
            }
            return out;
        }
        out.push(replacement);
        kept += 1;
    }
    out
}

/// `value` with every string in it, object keys included, passed through
/// [`bounded_text`] with `max_chars`.
pub fn bounded_json(value: &Value, max_chars: usize) -> Value {
    match value {
        Value::String(text) => Value::String(bounded_text(text, max_chars)),
        Value::Array(items) => Value::Array(
            items
                .iter()
                .map(|item| bounded_json(item, max_chars))
                .collect(),
        ),
        Value::Object(members) => Value::Object(
            members
                .iter()
                .map(|(key, item)| (bounded_text(key, max_chars), bounded_json(item, max_chars)))
                .collect::<Map<String, Value>>(),
        ),
        other => other.clone(),
    }
}

/// The explicit bidirectional embeddings, overrides, isolates and marks.
fn is_bidi_control(c: char) -> bool {
    matches!(c, '\u{200e}' | '\u{200f}' | '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}' | '\u{061c}')
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn short_clean_text_is_kept_as_it_is() {
        assert_eq!(
            bounded_text("Что-то пошло не так (record not found)", 512),
            "Что-то пошло не так (record not found)"
        );
        assert_eq!(bounded_text("", 512), "");
    }

    #[test]
    fn control_characters_never_survive() {
        let hostile =
            "line1\nline2\r\n\tNUL\0 bell\u{7} del\u{7f} c1\u{9b} \u{202e}evil \u{2028}end";
        let clean = bounded_text(hostile, 512);
        assert!(
            !clean.chars().any(|c| c.is_control() || is_bidi_control(c)),
            "{clean:?}"
        );
        assert!(!clean.contains('\0'));
        assert!(
            clean.starts_with("line1 line2   NUL\u{fffd} bell"),
            "{clean:?}"
        );
    }

    #[test]
    fn ansi_escape_sequences_are_dropped_whole() {
        assert_eq!(
            bounded_text("\u{1b}[31;1mred\u{1b}[0m plain", 512),
            "red plain"
        );
        // A lone ESC is a control character like any other.
        assert_eq!(bounded_text("a\u{1b}b", 512), "a\u{fffd}b");
        // An unfinished sequence swallows the rest, never more.
        assert_eq!(bounded_text("ok\u{1b}[12", 512), "ok");
    }

    #[test]
    fn long_text_is_cut_on_a_character_boundary_with_a_marker() {
        let long = "ж".repeat(2000);
        let cut = bounded_text(&long, 512);
        assert_eq!(cut.chars().count(), 512);
        assert!(cut.ends_with('…'));
        assert!(cut.starts_with("жжж"));
        // Exactly at the bound: nothing is cut, so no marker.
        let exact = "x".repeat(512);
        assert_eq!(bounded_text(&exact, 512), exact);
        assert_eq!(bounded_text("abc", 0), "");
    }

    #[test]
    fn every_string_of_a_json_value_is_bounded() {
        let value = json!({"email": "a\nb", "n": 1, "list": ["x".repeat(600)], "k\0": true});
        let bounded = bounded_json(&value, 512);
        assert_eq!(bounded["email"], "a b");
        assert_eq!(bounded["n"], 1);
        assert_eq!(
            bounded["list"][0].as_str().map(|s| s.chars().count()),
            Some(512)
        );
        assert_eq!(bounded["k\u{fffd}"], true);
    }
}
