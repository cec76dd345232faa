//! What a subscription lists: one entry per location, in the configured order, each either
//! the working link the panel confirmed (from `key_views.link`) or a placeholder that cannot
//! connect and says why; and the `Subscription-Userinfo` figures from `key_usage`. A pure
//! function of the rows read, so the states table of docs/subscriptions.md is tested without
//! a server.

use domain::Location;
use time::OffsetDateTime;

use crate::vless;

/// The user id of a placeholder: no panel ever holds it.
const PLACEHOLDER_UUID: &str = "00000000-0000-0000-0000-000000000000";

/// A link that cannot connect (port 1 of 0.0.0.0), named `text`: apps show the text as the
/// server's name, so the user reads the state where they would see the server.
pub fn placeholder(text: &str) -> String {
    format!(
        "vless://{PLACEHOLDER_UUID}@0.0.0.0:1?type=tcp&encryption=none&security=none#{}",
        domain::encode_uri_component(text)
    )
}

/// One key of the user as the read models hold it.
#[derive(Debug, Clone, PartialEq, sqlx::FromRow)]
pub struct KeyRow {
    pub location: String,
    pub status: String,
    pub link: Option<String>,
    pub expires_at: Option<OffsetDateTime>,
    pub up_bytes: Option<i64>,
    pub down_bytes: Option<i64>,
    pub limit_bytes: Option<i64>,
}

/// A subscription and its user's keys, read in one statement.
#[derive(Debug, Clone, PartialEq)]
pub struct SubscriptionData {
    pub user_id: i64,
    /// The subscription's current generation.
    pub generation: u32,
    pub keys: Vec<KeyRow>,
}

#[derive(sqlx::FromRow)]
struct Row {
    user_id: i64,
    generation: i32,
    location: Option<String>,
    status: Option<String>,
    link: Option<String>,
    expires_at: Option<OffsetDateTime>,
    up_bytes: Option<i64>,
    down_bytes: Option<i64>,
    limit_bytes: Option<i64>,
}

/// The subscription `id` and its user's keys, in one round trip (one snapshot); `None` when
/// the view has no such subscription.
pub async fn load(
    pool: &sqlx::PgPool,
    id: uuid::Uuid,
) -> Result<Option<SubscriptionData>, sqlx::Error> {
    let rows: Vec<Row> = sqlx::query_as(
        "SELECT s.user_id, s.generation, k.location, k.status, k.link, k.expires_at,
                u.up_bytes, u.down_bytes, u.limit_bytes
           FROM subscription_views s
           LEFT JOIN key_views k ON k.user_id = s.user_id
           LEFT JOIN key_usage u ON u.key_id = k.key_id
          WHERE s.subscription_id = $1",
    )
    .bind(id)
    .fetch_all(pool)
    .await?;
    let Some(first) = rows.first() else {
        return Ok(None);
    };
    let (user_id, generation) = (first.user_id, u32::try_from(first.generation).unwrap_or(0));
    let keys = rows
        .into_iter()
        .filter_map(|row| {
            Some(KeyRow {
                location: row.location?,
                status: row.status?,
                link: row.link,
                expires_at: row.expires_at,
                up_bytes: row.up_bytes,
                down_bytes: row.down_bytes,
                limit_bytes: row.limit_bytes,
            })
        })
        .collect();
    Ok(Some(SubscriptionData {
        user_id,
        generation,
        keys,
    }))
}

/// One line of the subscription.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    /// The name apps show: the location's name, or the placeholder's text.
    pub remark: String,
    /// A `vless://` link with `remark` as its fragment.
    pub link: String,
    /// Whether the link can connect (false for placeholders).
    pub working: bool,
}

impl Entry {
    fn working(link: &str, remark: &str) -> Self {
        Self {
            remark: remark.to_owned(),
            link: vless::with_remark(link, remark),
            working: true,
        }
    }

    fn placeholder(text: String) -> Self {
        Self {
            link: placeholder(&text),
            remark: text,
            working: false,
        }
    }
}

/// `Subscription-Userinfo`: bytes used, the limit (0 = none) and the expiry (0 = none).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Userinfo {
    pub upload: u64,
    pub download: u64,
    pub total: u64,
    /// Unix seconds.
    pub expire: u64,
}

impl Userinfo {
    pub fn header(&self) -> String {
        format!(
            "upload={}; download={}; total={}; expire={}",
            self.upload, self.download, self.total, self.expire
        )
    }
}

/// What a fetch shows: its entries and userinfo.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Contents {
    pub entries: Vec<Entry>,
    pub userinfo: Userinfo,
}

/// Why a subscription shows no working link for a location, as its placeholder says.
fn placeholder_text(name: &str, status: &str) -> String {
    match status {
        "provisioning" | "rotating" => format!("⏳ {name}: activating"),
        "expired" => format!("⌛ {name}: expired — open the bot"),
        "depleted" => format!("📉 {name}: traffic used up — open the bot"),
        "revoked" | "revoking" => format!("🚫 {name}: revoked — open the bot"),
        "failed" => format!("⚠ {name}: not available yet — open the bot"),
        _ => format!("⚠ {name}: unavailable — open the bot"),
    }
}

/// The placeholder shown for a URL whose generation was replaced.
pub const REPLACED: &str = "🔒 link replaced — open the bot";
/// The placeholder shown when the user holds no key at all.
pub const NO_KEY: &str = "🔑 no key yet — open the bot";

/// The entries and userinfo for a fetch of generation `token_generation` of `data`.
pub fn contents(
    data: &SubscriptionData,
    token_generation: u32,
    locations: &[Location],
) -> Contents {
    if token_generation != data.generation {
        return Contents {
            entries: vec![Entry::placeholder(REPLACED.to_owned())],
            userinfo: Userinfo::default(),
        };
    }
    let mut keys: Vec<&KeyRow> = data.keys.iter().collect();
    // The configured order first; keys at locations no longer configured after, by id.
    let rank = |row: &KeyRow| {
        locations
            .iter()
            .position(|l| l.id.as_str() == row.location)
            .unwrap_or(usize::MAX)
    };
    keys.sort_by(|a, b| rank(a).cmp(&rank(b)).then(a.location.cmp(&b.location)));
    let names = unique_names(&keys, locations);
    let mut entries: Vec<Entry> = keys
        .iter()
        .zip(&names)
        .map(|(row, name)| match (&row.link, row.status.as_str()) {
            (Some(link), "active") => Entry::working(link, name),
            (_, status) => Entry::placeholder(placeholder_text(name, status)),
        })
        .collect();
    if entries.is_empty() {
        entries.push(Entry::placeholder(NO_KEY.to_owned()));
    }
    Contents {
        entries,
        userinfo: userinfo(&data.keys),
    }
}

/// Location names as remarks, made unique (an operator may give two locations one name) by
/// adding the id, so an app never merges two servers.
fn unique_names(keys: &[&KeyRow], locations: &[Location]) -> Vec<String> {
    let name_of = |id: &str| {
        locations
            .iter()
            .find(|l| l.id.as_str() == id)
            .map_or_else(|| id.to_owned(), |l| l.name.clone())
    };
    let names: Vec<String> = keys.iter().map(|row| name_of(&row.location)).collect();
    names
        .iter()
        .zip(keys)
        .map(|(name, row)| {
            if names.iter().filter(|n| *n == name).count() > 1 {
                format!("{name} ({})", row.location)
            } else {
                name.clone()
            }
        })
        .collect()
}

/// Usage summed over the user's keys; total the sum of their limits, or 0 if any key has
/// none (or has not been observed yet: an unknown limit is not a limit we can show); expire
/// the earliest expiry of a key that has one.
fn userinfo(keys: &[KeyRow]) -> Userinfo {
    let bytes = |v: Option<i64>| v.and_then(|b| u64::try_from(b).ok()).unwrap_or(0);
    let upload = keys.iter().map(|k| bytes(k.up_bytes)).sum();
    let download = keys.iter().map(|k| bytes(k.down_bytes)).sum();
    let limits: Vec<u64> = keys.iter().map(|k| bytes(k.limit_bytes)).collect();
    let total = if limits.is_empty() || limits.contains(&0) {
        0
    } else {
        limits.iter().sum()
    };
    let expire = keys
        .iter()
        .filter_map(|k| k.expires_at)
        .map(|at| u64::try_from(at.unix_timestamp()).unwrap_or(1))
        .min()
        .unwrap_or(0);
    Userinfo {
        upload,
        download,
        total,
        expire,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use domain::LocationId;

    fn location(id: &str, name: &str) -> Location {
        Location {
            id: LocationId::new(id).expect("id"),
            name: name.into(),
        }
    }

    fn key(location: &str, status: &str, link: Option<&str>) -> KeyRow {
        KeyRow {
            location: location.into(),
            status: status.into(),
            link: link.map(str::to_owned),
            expires_at: None,
            up_bytes: None,
            down_bytes: None,
            limit_bytes: None,
        }
    }

    const LINK: &str = "vless://11112222-3333-4444-5555-666677778888@h:443?type=tcp#x";

    #[test]
    fn entries_follow_the_configured_order_and_hide_what_does_not_work() {
        let locations = [location("fra", "Frankfurt"), location("ams", "Amsterdam")];
        let data = SubscriptionData {
            user_id: 1,
            generation: 2,
            keys: vec![
                key("ams", "active", Some(LINK)),
                key("fra", "provisioning", None),
                key("old", "depleted", Some(LINK)),
            ],
        };
        let contents = contents(&data, 2, &locations);
        let remarks: Vec<&str> = contents.entries.iter().map(|e| e.remark.as_str()).collect();
        assert_eq!(
            remarks,
            [
                "⏳ Frankfurt: activating",
                "Amsterdam",
                "📉 old: traffic used up — open the bot"
            ]
        );
        assert!(contents.entries[1].link.ends_with("#Amsterdam"));
        assert!(contents.entries[2].link.starts_with("vless://00000000-"));
        assert_eq!(
            contents.entries.iter().filter(|e| e.working).count(),
            1,
            "a depleted key's link is never served"
        );
    }

    #[test]
    fn an_old_generation_and_no_key_give_one_placeholder() {
        let data = SubscriptionData {
            user_id: 1,
            generation: 3,
            keys: vec![key("ams", "active", Some(LINK))],
        };
        let old = contents(&data, 2, &[]);
        assert_eq!(old.entries.len(), 1);
        assert_eq!(old.entries[0].remark, REPLACED);
        assert!(!old.entries[0].working);
        let empty = SubscriptionData {
            keys: vec![],
            ..data
        };
        assert_eq!(contents(&empty, 3, &[]).entries[0].remark, NO_KEY);
    }

    #[test]
    fn userinfo_sums_usage_and_reports_the_earliest_expiry() {
        let mut a = key("ams", "active", Some(LINK));
        a.up_bytes = Some(10);
        a.down_bytes = Some(20);
        a.limit_bytes = Some(100);
        a.expires_at = Some(OffsetDateTime::from_unix_timestamp(2_000).expect("time"));
        let mut b = key("fra", "active", Some(LINK));
        b.up_bytes = Some(1);
        b.down_bytes = Some(2);
        b.limit_bytes = Some(50);
        b.expires_at = Some(OffsetDateTime::from_unix_timestamp(1_000).expect("time"));
        assert_eq!(
            userinfo(&[a.clone(), b.clone()]).header(),
            "upload=11; download=22; total=150; expire=1000"
        );
        b.limit_bytes = Some(0);
        assert_eq!(userinfo(&[a, b]).total, 0, "one unlimited key: no total");
    }
}
