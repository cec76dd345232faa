//! `eventstore::jsonb_text` must give, byte for byte, the text PostgreSQL gives for a value
//! stored as `jsonb`, or hash chains break. For any JSON that parses, its output is read
//! back here by a strict reader of that form, written from the function's documented rules
//! rather than from its code: `", "` and `": "` as the only separators, object keys once
//! each, shorter keys first and equal lengths byte-wise, PostgreSQL's escapes only
//! (lower-case `\u00xx` for the other control characters, everything else verbatim), no
//! NUL byte, and numbers as `numeric_out` writes them: plain digits without an exponent or
//! leading zeros, no negative zero, the same value, and the display scale
//! `max(0, fraction digits - exponent)` of the number's text.

#![no_main]

use libfuzzer_sys::fuzz_target;
use serde_json::{Map, Number, Value};

fuzz_target!(|data: &[u8]| {
    let Ok(value) = serde_json::from_slice::<Value>(data) else {
        return;
    };
    let text = eventstore::jsonb_text(&value);
    assert!(!text.contains('\0'), "NUL in {text:?}");
    let mut reader = Reader { rest: &text };
    reader.value(&value);
    assert!(
        reader.rest.is_empty(),
        "trailing {:?} in {text:?}",
        reader.rest
    );
});

/// Reads jsonb text while comparing it with the value it was made from; panics on the
/// first difference.
struct Reader<'a> {
    rest: &'a str,
}

impl Reader<'_> {
    fn expect(&mut self, literal: &str) {
        match self.rest.strip_prefix(literal) {
            Some(rest) => self.rest = rest,
            None => panic!("expected {literal:?} at {:?}", self.rest),
        }
    }

    fn next_char(&mut self) -> char {
        let mut chars = self.rest.chars();
        let c = chars.next().expect("text ends inside a value");
        self.rest = chars.as_str();
        c
    }

    fn value(&mut self, expected: &Value) {
        match expected {
            Value::Null => self.expect("null"),
            Value::Bool(true) => self.expect("true"),
            Value::Bool(false) => self.expect("false"),
            Value::Number(number) => self.number(number),
            Value::String(text) => assert_eq!(&self.string(), text),
            Value::Array(items) => {
                self.expect("[");
                for (i, item) in items.iter().enumerate() {
                    if i > 0 {
                        self.expect(", ");
                    }
                    self.value(item);
                }
                self.expect("]");
            }
            Value::Object(members) => self.object(members),
        }
    }

    fn object(&mut self, members: &Map<String, Value>) {
        self.expect("{");
        let mut previous: Option<String> = None;
        for i in 0..members.len() {
            if i > 0 {
                self.expect(", ");
            }
            let key = self.string();
            if let Some(previous) = &previous {
                let order = (previous.len(), previous.as_bytes());
                assert!(
                    order < (key.len(), key.as_bytes()),
                    "key {key:?} after {previous:?}: jsonb orders by length, then bytes"
                );
            }
            let Some(value) = members.get(&key) else {
                panic!("key {key:?} is not in the value");
            };
            self.expect(": ");
            self.value(value);
            previous = Some(key);
        }
        self.expect("}");
    }

    /// A string in PostgreSQL's `escape_json` form, decoded.
    fn string(&mut self) -> String {
        self.expect("\"");
        let mut out = String::new();
        loop {
            match self.next_char() {
                '"' => return out,
                '\\' => out.push(self.escape()),
                c => {
                    assert!(c >= ' ', "raw control character {c:?}");
                    out.push(c);
                }
            }
        }
    }

    fn escape(&mut self) -> char {
        match self.next_char() {
            '"' => '"',
            '\\' => '\\',
            'b' => '\u{08}',
            'f' => '\u{0c}',
            'n' => '\n',
            'r' => '\r',
            't' => '\t',
            'u' => {
                self.expect("00");
                let hex: String = [self.next_char(), self.next_char()].into_iter().collect();
                assert!(
                    hex.chars().all(|c| matches!(c, '0'..='9' | 'a'..='f')),
                    "\\u00{hex} is not lower-case hex"
                );
                let code = u8::from_str_radix(&hex, 16).expect("two hex digits");
                assert!(
                    code < 0x20,
                    "\\u00{hex} escapes a character jsonb writes verbatim"
                );
                assert!(
                    !matches!(code, 0x08 | 0x09 | 0x0a | 0x0c | 0x0d),
                    "\\u00{hex} has a short escape in jsonb"
                );
                char::from(code)
            }
            other => panic!("\\{other} is not an escape jsonb writes"),
        }
    }

    fn number(&mut self, expected: &Number) {
        let end = self
            .rest
            .find(|c: char| !matches!(c, '-' | '.' | '0'..='9'))
            .unwrap_or(self.rest.len());
        let (written, rest) = self.rest.split_at(end);
        self.rest = rest;
        let given = expected.to_string();
        let written_parts = Decimal::parse(written)
            .unwrap_or_else(|| panic!("{written:?} (for {given}) is not a number"));
        let given_parts =
            Decimal::parse(&given).unwrap_or_else(|| panic!("serde_json wrote {given:?}"));
        assert!(
            written_parts.is_numeric_out_form(),
            "{written:?} (for {given}) is not numeric_out's form"
        );
        assert_eq!(
            written_parts.normalized(),
            given_parts.normalized(),
            "{written:?} is not the value of {given}"
        );
        assert_eq!(
            written_parts.frac.len(),
            given_parts.display_scale(),
            "{written:?} has not the display scale of {given}"
        );
    }
}

/// A number's text taken apart as `[-]int[.frac][e[+-]exp]`.
struct Decimal<'a> {
    negative: bool,
    int: &'a str,
    frac: &'a str,
    exponent: Option<i64>,
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
                (mantissa, Some(exponent.parse().ok()?))
            }
            None => (unsigned, None),
        };
        let (int, frac, point) = match mantissa.split_once('.') {
            Some((int, frac)) => (int, frac, true),
            None => (mantissa, "", false),
        };
        let digits = |s: &str| s.bytes().all(|b| b.is_ascii_digit());
        if int.is_empty() || !digits(int) || !digits(frac) || (point && frac.is_empty()) {
            return None;
        }
        Some(Self {
            negative,
            int,
            frac,
            exponent,
        })
    }

    /// No exponent, no leading zero, no empty or negative zero.
    fn is_numeric_out_form(&self) -> bool {
        let leading_zero = self.int.len() > 1 && self.int.starts_with('0');
        let zero = self.int.bytes().chain(self.frac.bytes()).all(|b| b == b'0');
        self.exponent.is_none() && !leading_zero && !(self.negative && zero)
    }

    /// The value as (negative, significant digits, power of ten of the point before
    /// them): equal exactly when the numbers are.
    fn normalized(&self) -> (bool, String, i64) {
        let digits: String = self.int.chars().chain(self.frac.chars()).collect();
        let significant = digits.trim_start_matches('0');
        let leading_zeros = (digits.len() - significant.len()) as i64;
        let significant = significant.trim_end_matches('0');
        if significant.is_empty() {
            return (false, String::new(), 0);
        }
        let point = self.int.len() as i64 + self.exponent.unwrap_or(0) - leading_zeros;
        (self.negative, significant.to_owned(), point)
    }

    /// The scale `numeric_in` keeps: fraction digits less the exponent, never below 0.
    fn display_scale(&self) -> usize {
        let scale = self.frac.len() as i64 - self.exponent.unwrap_or(0);
        usize::try_from(scale.max(0)).expect("a small scale")
    }
}
