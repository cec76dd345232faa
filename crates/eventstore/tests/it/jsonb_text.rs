//! `eventstore::jsonb_text` against the real PostgreSQL's `$1::jsonb::text`.

use eventstore::jsonb_text;
use serde_json::{Map, Number, Value, json};
use sqlx::PgPool;
use testkit::TestDatabase;

/// Compares our rendering of every value with the server's, sending them in batches.
async fn assert_same_as_postgres(pool: &PgPool, values: &[Value]) {
    for batch in values.chunks(500) {
        let texts: Vec<String> = sqlx::query_scalar(
            "SELECT t.v::text FROM unnest($1::jsonb[]) WITH ORDINALITY AS t(v, n) ORDER BY t.n",
        )
        .bind(batch)
        .fetch_all(pool)
        .await
        .expect("render values in PostgreSQL");
        assert_eq!(texts.len(), batch.len(), "one text per value");
        for (value, theirs) in batch.iter().zip(&texts) {
            let ours = jsonb_text(value);
            assert_eq!(
                &ours, theirs,
                "jsonb text differs\n value:      {value:?}\n ours:       {ours}\n PostgreSQL: {theirs}"
            );
        }
    }
}

fn all_control_bytes() -> String {
    (1u8..0x20).map(char::from).collect()
}

fn tricky_values() -> Vec<Value> {
    let mut values = vec![
        json!(null),
        json!(true),
        json!(false),
        json!(""),
        json!("\""),
        json!("\\"),
        json!("\u{08}"),
        json!("\u{0c}"),
        json!("\n"),
        json!("\r"),
        json!("\t"),
        json!("/"),
        json!(all_control_bytes()),
        json!("\u{7f}"),
        json!("Привет, мир"),
        json!("😀 🇺🇦 👩‍👩‍👧"),
        json!({"ключ": all_control_bytes(), "\"\\\n": "\u{7f}😀"}),
        json!({"b": 1, "a": 2, "aa": 3, "": 4, "é": 5, "ж": 6, "zz": 7, "ccc": 8, "😀": 9}),
        json!({"éa": 1, "aé": 2, "ée": 3, "ab": 4, "жж": 5, "ｗ": 6, "abc": 7}),
        json!({"": {"": [""]}}),
        json!([{"z": 1, "y": [{"b": {}, "a": []}]}, [], {}, [[[]]], [{}]]),
        json!({}),
        json!([]),
        json!({"list": [1, "two", null, true, {"three": 3.0}]}),
    ];
    let numbers = [
        json!(i64::MIN),
        json!(i64::MAX),
        json!(u64::MAX),
        json!(0),
        json!(-0.0),
        json!(0.0),
        json!(0.1),
        json!(1e21),
        json!(1e-7),
        json!(1.5e300),
        json!(5e-324),
        json!(1.7976931348623157e308),
        json!(-1.7976931348623157e308),
        json!(123.456),
        json!(-2.5e-3),
        json!(100.0),
        json!(1e16),
        json!(1e15),
        json!(12345678901234567890.0),
        json!(1.2345678901234568e20),
        json!(1.5e-7),
        json!(f64::EPSILON),
        json!(f64::MIN_POSITIVE),
    ];
    values.push(Value::Array(numbers.to_vec()));
    values.extend(numbers);
    values
}

#[tokio::test]
async fn tricky_values_render_as_postgres_renders_them() {
    let db = TestDatabase::create().await;
    let values = tricky_values();
    assert_same_as_postgres(db.pool(), &values).await;
}

#[tokio::test]
async fn single_bound_values_render_as_postgres_renders_them() {
    // The same path the writer takes: one value bound as jsonb, not an array of them.
    let db = TestDatabase::create().await;
    for value in tricky_values() {
        let theirs: String = sqlx::query_scalar("SELECT $1::jsonb::text")
            .bind(sqlx::types::Json(&value))
            .fetch_one(db.pool())
            .await
            .expect("render value in PostgreSQL");
        let ours = jsonb_text(&value);
        assert_eq!(
            ours, theirs,
            "jsonb text differs\n value:      {value:?}\n ours:       {ours}\n PostgreSQL: {theirs}"
        );
    }
}

#[tokio::test]
async fn random_values_render_as_postgres_renders_them() {
    let db = TestDatabase::create().await;
    let mut rng = XorShift(0x9e37_79b9_7f4a_7c15);
    let values: Vec<Value> = (0..RANDOM_VALUES).map(|_| rng.value(0)).collect();
    assert_same_as_postgres(db.pool(), &values).await;
}

const RANDOM_VALUES: usize = 5_000;
const MAX_DEPTH: u32 = 4;

/// A tiny seeded generator, so a failure reproduces on every run.
struct XorShift(u64);

impl XorShift {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }

    fn value(&mut self, depth: u32) -> Value {
        // Containers get rarer with depth so values stay small but still nest.
        let kinds = if depth >= MAX_DEPTH { 4 } else { 6 };
        match self.below(kinds) {
            0 => match self.below(3) {
                0 => Value::Null,
                _ => Value::Bool(self.below(2) == 0),
            },
            1 | 2 => Value::Number(self.number()),
            3 => Value::String(self.string()),
            4 => Value::Array((0..self.below(5)).map(|_| self.value(depth + 1)).collect()),
            _ => Value::Object(self.object(depth)),
        }
    }

    fn object(&mut self, depth: u32) -> Map<String, Value> {
        (0..self.below(6))
            .map(|_| (self.string(), self.value(depth + 1)))
            .collect()
    }

    fn number(&mut self) -> Number {
        match self.below(6) {
            0 => Number::from(self.next().cast_signed()),
            1 => Number::from(self.next()),
            2 => Number::from(self.below(2_001).cast_signed() - 1_000),
            3 => self.float_from_bits(),
            // Small decimals such as 12.34 or -0.5, as money or ratios would be.
            4 => {
                let cents = self.below(200_001) as f64 - 100_000.0;
                self.float(cents / 100.0)
            }
            // A few significant digits at scales from 1e-20 to 1e19.
            _ => {
                let mantissa = self.below(1_000) as f64;
                let exponent = self.below(40) as i32 - 20;
                self.float(mantissa * 10f64.powi(exponent))
            }
        }
    }

    fn float_from_bits(&mut self) -> Number {
        loop {
            if let Some(number) = Number::from_f64(f64::from_bits(self.next())) {
                return number;
            }
        }
    }

    fn float(&mut self, x: f64) -> Number {
        Number::from_f64(x).unwrap_or_else(|| self.float_from_bits())
    }

    fn string(&mut self) -> String {
        const PIECES: &[&str] = &[
            "a", "b", "Z", "0", " ", "key", "\"", "\\", "/", "\n", "\t", "\r", "\u{08}", "\u{0c}",
            "\u{01}", "\u{1b}", "\u{1f}", "\u{7f}", "ж", "Ё", "я", "😀", "🔑", "é", "\u{a0}",
        ];
        let len = self.below(6);
        (0..len)
            .map(|_| match self.below(4) {
                // Any control byte other than NUL, which jsonb refuses.
                0 => char::from(1 + self.below(0x1f) as u8).to_string(),
                _ => PIECES[self.below(PIECES.len() as u64) as usize].to_owned(),
            })
            .collect()
    }
}
