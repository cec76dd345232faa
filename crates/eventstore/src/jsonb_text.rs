//! PostgreSQL's `jsonb` text rendering, reproduced in Rust.

use serde_json::{Map, Number, Value};

/// The exact text PostgreSQL 15 gives for `value::jsonb::text` once `value` is bound as
/// `jsonb` (sqlx serialises it with serde_json, the server parses it into `jsonb`).
///
/// It matters byte for byte: the hash chain's content digest is computed by the writer in
/// Rust from this text and recomputed by plain SQL from the stored `jsonb`, so any
/// difference would show up as a broken chain.
///
/// The rendering follows `jsonb_out`:
/// - object members are ordered the `jsonb` way, shorter keys (in bytes) first and equal
///   lengths byte-wise, and written as `{"k": v, "k2": v2}`; arrays as `[a, b]`;
/// - strings and keys are escaped like PostgreSQL's `escape_json`: `\"`, `\\`, `\b`, `\f`,
///   `\n`, `\r`, `\t`, other bytes below 0x20 as `\u00xx` (lower-case hex), everything else,
///   DEL and non-ASCII included, verbatim;
/// - numbers are stored as `numeric`, so they come out as `numeric_out` prints them: plain
///   digits without an exponent, the display scale kept (`1.0` stays `1.0`, `1e21` becomes
///   `1000000000000000000000`, `1.5e-7` becomes `0.00000015`) and zero never negative.
///
/// A string containing NUL is rendered with `\u0000`, but PostgreSQL refuses to store it
/// in `jsonb` at all, so such a value has no server-side text to match.
pub fn jsonb_text(value: &Value) -> String {
    let mut out = String::new();
    push_value(&mut out, value);
    out
}

fn push_value(out: &mut String, value: &Value) {
    match value {
        Value::Null => out.push_str("null"),
        Value::Bool(true) => out.push_str("true"),
        Value::Bool(false) => out.push_str("false"),
        Value::Number(number) => push_number(out, number),
        Value::String(text) => push_string(out, text),
        Value::Array(items) => push_array(out, items),
        Value::Object(members) => push_object(out, members),
    }
}

fn push_array(out: &mut String, items: &[Value]) {
    out.push('[');
    for (i, item) in items.iter().enumerate() {
        if i > 0 {
            out.push_str(", ");
        }
        push_value(out, item);
    }
    out.push(']');
}

fn push_object(out: &mut String, members: &Map<String, Value>) {
    // jsonb keeps object keys sorted by length, then memcmp, whatever order they came in.
    let mut sorted: Vec<(&String, &Value)> = members.iter().collect();
    sorted.sort_unstable_by_key(|&(key, _)| (key.len(), key.as_bytes()));
    out.push('{');
    for (i, (key, value)) in sorted.into_iter().enumerate() {
        if i > 0 {
            out.push_str(", ");
        }
        push_string(out, key);
        out.push_str(": ");
        push_value(out, value);
    }
    out.push('}');
}

fn push_string(out: &mut String, text: &str) {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    out.push('"');
    for c in text.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\u{08}' => out.push_str("\\b"),
            '\u{0c}' => out.push_str("\\f"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            // Below 0x20 the char is a single byte, so u8::try_from always succeeds here.
            c if c < ' ' => {
                let byte = u8::try_from(c).unwrap_or_default();
                out.push_str("\\u00");
                out.push(char::from(HEX[usize::from(byte >> 4)]));
                out.push(char::from(HEX[usize::from(byte & 0x0f)]));
            }
            c => out.push(c),
        }
    }
    out.push('"');
}

fn push_number(out: &mut String, number: &Number) {
    let text = number.to_string();
    match Decimal::parse(&text) {
        Some(decimal) => decimal.push_numeric(out),
        // serde_json only prints JSON numbers, which always parse; keep the text regardless.
        None => out.push_str(&text),
    }
}

/// A JSON number's text taken apart: `-int.frac e exponent`.
struct Decimal<'a> {
    negative: bool,
    int: &'a str,
    frac: &'a str,
    exponent: isize,
}

impl<'a> Decimal<'a> {
    fn parse(text: &'a str) -> Option<Self> {
        let (negative, unsigned) = match text.strip_prefix('-') {
            Some(rest) => (true, rest),
            None => (false, text),
        };
        let (mantissa, exponent) = match unsigned.split_once(['e', 'E']) {
            Some((mantissa, exponent)) => {
                let exponent = exponent.strip_prefix('+').unwrap_or(exponent);
                (mantissa, exponent.parse().ok()?)
            }
            None => (unsigned, 0),
        };
        let (int, frac) = mantissa.split_once('.').unwrap_or((mantissa, ""));
        let is_digits = |s: &str| s.bytes().all(|b| b.is_ascii_digit());
        if int.is_empty() || !is_digits(int) || !is_digits(frac) {
            return None;
        }
        Some(Self {
            negative,
            int,
            frac,
            exponent,
        })
    }

    /// All mantissa digits, as if the point were not there.
    fn digits(&self) -> impl Iterator<Item = char> + '_ {
        self.int.chars().chain(self.frac.chars())
    }

    /// Writes the number the way `numeric_out(numeric_in(text))` does: numeric_in keeps
    /// the display scale `frac digits - exponent` (never below 0), numeric_out writes the
    /// integer part without leading zeros, then exactly that many fractional digits.
    fn push_numeric(&self, out: &mut String) {
        let digit_count = self.int.len() + self.frac.len();
        // Where the point falls among the digits once the exponent has moved it; a point
        // before the first digit leaves no integer digits and that many zeros after it.
        let int_digits = self.int.len().saturating_add_signed(self.exponent);
        let zeros_after_point = if self.exponent < 0 {
            self.exponent.unsigned_abs().saturating_sub(self.int.len())
        } else {
            0
        };

        // numeric has no negative zero.
        if self.negative && self.digits().any(|d| d != '0') {
            out.push('-');
        }
        let start = out.len();
        out.extend(
            self.digits()
                .chain(std::iter::repeat('0'))
                .take(int_digits)
                .skip_while(|&d| d == '0'),
        );
        if out.len() == start {
            out.push('0');
        }
        // The scale is positive exactly when some digits are left after the point.
        if digit_count > int_digits {
            out.push('.');
            out.extend(std::iter::repeat_n('0', zeros_after_point));
            out.extend(self.digits().skip(int_digits));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn numeric(text: &str) -> String {
        let mut out = String::new();
        match Decimal::parse(text) {
            Some(decimal) => decimal.push_numeric(&mut out),
            None => panic!("not a JSON number: {text}"),
        }
        out
    }

    #[test]
    fn jsonb_orders_keys_by_length_then_bytes() {
        let value = json!({"bb": 1, "a": 2, "ab": 3, "": 4, "é": 5, "z": 6, "ccc": 7});
        // "é" is two bytes, so it sorts with the two-letter keys, after ASCII ones.
        assert_eq!(
            jsonb_text(&value),
            r#"{"": 4, "a": 2, "z": 6, "ab": 3, "bb": 1, "é": 5, "ccc": 7}"#
        );
    }

    #[test]
    fn jsonb_nests_with_spaced_separators() {
        let value = json!([{"k": [1, {}], "j": []}, null, true, false, "s"]);
        assert_eq!(
            jsonb_text(&value),
            r#"[{"j": [], "k": [1, {}]}, null, true, false, "s"]"#
        );
    }

    #[test]
    fn jsonb_escapes_like_postgres() {
        let value = json!("\"\\\u{08}\u{0c}\n\r\t\u{01}\u{1f}\u{7f}ж😀\u{0}");
        assert_eq!(
            jsonb_text(&value),
            "\"\\\"\\\\\\b\\f\\n\\r\\t\\u0001\\u001f\u{7f}ж😀\\u0000\""
        );
    }

    #[test]
    fn jsonb_numbers_take_numeric_form() {
        let cases = [
            ("0", "0"),
            ("-0.0", "0.0"),
            ("-0", "0"),
            ("1.0", "1.0"),
            ("100.0", "100.0"),
            ("2.50", "2.50"),
            ("0.1", "0.1"),
            ("1e21", "1000000000000000000000"),
            ("1E+3", "1000"),
            ("1.5e-7", "0.00000015"),
            ("1e-7", "0.0000001"),
            ("-2.5e-3", "-0.0025"),
            ("1.2345678901234568e20", "123456789012345680000"),
            ("1.25e1", "12.5"),
            ("1.250e1", "12.50"),
            ("12.5e-1", "1.25"),
            ("0.00e1", "0.0"),
            ("0e-2", "0.00"),
            ("-9223372036854775808", "-9223372036854775808"),
        ];
        for (text, expected) in cases {
            assert_eq!(numeric(text), expected, "for {text}");
        }
    }

    #[test]
    fn jsonb_numbers_from_serde_json_values() {
        assert_eq!(jsonb_text(&json!(u64::MAX)), "18446744073709551615");
        assert_eq!(jsonb_text(&json!(-0.0)), "0.0");
        assert_eq!(
            jsonb_text(&json!(5e-324)),
            format!("0.{}5", "0".repeat(323))
        );
    }
}
