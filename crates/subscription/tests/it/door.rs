//! The `/s/…` door against the real database, with the read models written directly: the
//! states table of docs/subscriptions.md (404s that look alike, an old generation, keys that
//! are provisioning or depleted, no key), 503 when the database is gone, the limits, the
//! formats by path and User-Agent, the page, and the fetch log.

use std::time::Duration;

use base64::Engine;
use domain::{Location, LocationId, Secret, SubscriptionId, SubscriptionUrls, UserId};
use subscription::{LimitSettings, SubSettings};
use testkit::{DEADLINE, TestDatabase, eventually};
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

const USER: i64 = 5_150_001;
const LINK: &str = "vless://11112222-3333-4444-5555-666677778888@ams.example.com:443?type=tcp&encryption=none&security=reality&pbk=Z84J&fp=chrome&sni=www.example.com&sid=6ba8&flow=xtls-rprx-vision#ams-tg5150001-ams";

fn urls() -> SubscriptionUrls {
    SubscriptionUrls::new(
        url::Url::parse("https://sub.example.com").expect("url"),
        Secret::new("door test secret, thirty-two bytes or more"),
    )
    .expect("urls")
}

fn locations() -> Vec<Location> {
    [("ams", "Amsterdam"), ("fra", "Frankfurt")]
        .into_iter()
        .map(|(id, name)| Location {
            id: LocationId::new(id).expect("id"),
            name: name.into(),
        })
        .collect()
}

struct Door {
    db: TestDatabase,
    base: String,
    stop: CancellationToken,
    client: reqwest::Client,
}

impl Door {
    async fn start(tune: impl FnOnce(&mut SubSettings)) -> Self {
        let db = TestDatabase::create().await;
        Self::on(db, tune).await
    }

    async fn on(db: TestDatabase, tune: impl FnOnce(&mut SubSettings)) -> Self {
        let mut settings = SubSettings::new(urls(), locations());
        settings.cache_ttl = Duration::ZERO;
        settings.limits = LimitSettings::unlimited();
        tune(&mut settings);
        let stop = CancellationToken::new();
        let router = subscription::router(db.store.clone(), settings, stop.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let base = format!("http://{}", listener.local_addr().expect("addr"));
        tokio::spawn(subscription::serve(listener, router, stop.clone()));
        Self {
            db,
            base,
            stop,
            client: reqwest::Client::new(),
        }
    }

    fn url(&self, generation: u32, suffix: &str) -> String {
        let user = UserId::new(USER).expect("user");
        let token = urls().token(SubscriptionId::for_user(user), generation);
        format!("{}/s/{token}{suffix}", self.base)
    }

    async fn subscription(&self, generation: i32) {
        let id = SubscriptionId::for_user(UserId::new(USER).expect("user")).as_uuid();
        sqlx::query(
            "INSERT INTO subscription_views VALUES ($1, $2, $3, $3, now())
             ON CONFLICT (subscription_id) DO UPDATE SET generation = $3, version = $3",
        )
        .bind(id)
        .bind(USER)
        .bind(generation)
        .execute(self.db.store.pool())
        .await
        .expect("subscription view");
    }

    async fn key(
        &self,
        location: &str,
        status: &str,
        link: Option<&str>,
        usage: Option<(i64, i64, i64)>,
    ) {
        let key_id = Uuid::new_v4();
        sqlx::query(
            "INSERT INTO key_views VALUES ($1, $2, $3, $4, $5, $6, now() + interval '30 days', 3, now())",
        )
        .bind(key_id)
        .bind(USER)
        .bind(location)
        .bind(status)
        .bind(Uuid::new_v4())
        .bind(link)
        .execute(self.db.store.pool())
        .await
        .expect("key view");
        if let Some((up, down, limit)) = usage {
            sqlx::query("INSERT INTO key_usage VALUES ($1, $2, $3, $4, NULL, true, now())")
                .bind(key_id)
                .bind(up)
                .bind(down)
                .bind(limit)
                .execute(self.db.store.pool())
                .await
                .expect("usage");
        }
    }

    async fn get(
        &self,
        url: &str,
        headers: &[(&str, &str)],
    ) -> (u16, reqwest::header::HeaderMap, String) {
        let mut request = self.client.get(url);
        for (name, value) in headers {
            request = request.header(*name, *value);
        }
        let response = request.send().await.expect("answer");
        let status = response.status().as_u16();
        let headers = response.headers().clone();
        (status, headers, response.text().await.expect("body"))
    }

    async fn plain(&self, generation: u32) -> Vec<String> {
        let (status, _, body) = self.get(&self.url(generation, "/plain"), &[]).await;
        assert_eq!(status, 200, "{body}");
        body.lines().map(str::to_owned).collect()
    }
}

impl Drop for Door {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

/// A row of `subscription_fetches`: id, generation, address hash, User-Agent, hwid, format,
/// status.
type FetchRow = (
    Option<Uuid>,
    Option<i32>,
    String,
    Option<String>,
    Option<String>,
    String,
    i16,
);

fn is_placeholder(link: &str) -> bool {
    link.starts_with("vless://00000000-0000-0000-0000-000000000000@0.0.0.0:1?")
}

#[tokio::test]
async fn unknown_malformed_and_wrong_format_all_get_the_same_empty_404() {
    let door = Door::start(|_| {}).await;
    door.subscription(1).await;
    let unknown = format!("{}/s/{}", door.base, "A".repeat(24));
    let cases = [
        unknown.clone(),
        format!("{}/s/short", door.base),
        format!("{}/s/{}", door.base, "%27%20OR%201=1--aaaaaaaaaaa"),
        door.url(1, "/yaml"),
        format!("{}/elsewhere", door.base),
    ];
    let mut answers = Vec::new();
    for url in cases {
        let (status, headers, body) = door.get(&url, &[]).await;
        answers.push((
            status,
            headers.get("content-type").cloned(),
            headers.get("content-length").cloned(),
            body,
        ));
    }
    assert!(answers.iter().all(|a| a == &answers[0]), "{answers:?}");
    assert_eq!(answers[0].0, 404);
    assert_eq!(answers[0].3, "");
}

#[tokio::test]
async fn states_show_placeholders_and_never_a_link_that_should_not_work() {
    let door = Door::start(|_| {}).await;
    door.subscription(1).await;
    // No key at all: one placeholder.
    let links = door.plain(1).await;
    assert_eq!(links.len(), 1);
    assert!(
        is_placeholder(&links[0]) && links[0].contains("no%20key"),
        "{links:?}"
    );

    // Frankfurt provisioning, Amsterdam active: in the configured order.
    door.key("fra", "provisioning", None, None).await;
    door.key("ams", "active", Some(LINK), Some((10, 20, 1_000)))
        .await;
    let links = door.plain(1).await;
    assert_eq!(links.len(), 2);
    assert!(
        links[0].starts_with("vless://11112222-") && links[0].ends_with("#Amsterdam"),
        "{links:?}"
    );
    assert!(
        is_placeholder(&links[1]) && links[1].contains("activating"),
        "{links:?}"
    );
    let (_, headers, _) = door.get(&door.url(1, ""), &[]).await;
    let userinfo = headers["subscription-userinfo"].to_str().expect("ascii");
    assert!(
        userinfo.starts_with("upload=10; download=20; total=0; expire="),
        "{userinfo}"
    );
    assert_ne!(userinfo, "upload=10; download=20; total=0; expire=0");

    // A depleted key keeps its view's link, and it is not served.
    sqlx::query("UPDATE key_views SET status = 'depleted' WHERE location = 'ams'")
        .execute(door.db.store.pool())
        .await
        .expect("deplete");
    let links = door.plain(1).await;
    assert!(links.iter().all(|l| is_placeholder(l)), "{links:?}");
    assert!(links[0].contains("traffic%20used%20up"), "{links:?}");

    // A newer generation: the old URL serves one "link replaced" placeholder.
    door.subscription(2).await;
    let old = door.plain(1).await;
    assert_eq!(old.len(), 1);
    assert!(
        is_placeholder(&old[0]) && old[0].contains("link%20replaced"),
        "{old:?}"
    );
    // The index reads the view again on a miss, at most once a second.
    let url = door.url(2, "/plain");
    eventually("the new generation is served", DEADLINE, || async {
        let (status, _, body) = door.get(&url, &[]).await;
        (status == 200 && body.lines().count() == 2).then_some(())
    })
    .await;
}

#[tokio::test]
async fn formats_follow_the_path_then_the_user_agent_then_accept() {
    let door = Door::start(|settings| {
        settings.title = "Мой VPN".into();
        settings.web_page_url = Some(url::Url::parse("https://t.me/keyledger_bot").expect("url"));
        settings.support_url = Some(url::Url::parse("https://t.me/keyledger_help").expect("url"));
    })
    .await;
    door.subscription(1).await;
    door.key("ams", "active", Some(LINK), None).await;
    let url = door.url(1, "");
    let content_type =
        |h: &reqwest::header::HeaderMap| h["content-type"].to_str().expect("ascii").to_owned();

    let (_, headers, body) = door.get(&url, &[("user-agent", "v2rayNG/1.8.5")]).await;
    assert_eq!(content_type(&headers), "text/plain; charset=utf-8");
    let decoded = base64::engine::general_purpose::STANDARD
        .decode(&body)
        .expect("base64");
    assert!(
        String::from_utf8(decoded)
            .expect("utf-8")
            .starts_with("vless://11112222-")
    );
    assert_eq!(
        headers["profile-web-page-url"],
        "https://t.me/keyledger_bot"
    );
    assert_eq!(headers["support-url"], "https://t.me/keyledger_help");
    assert_eq!(
        headers["profile-title"].to_str().expect("ascii"),
        format!(
            "base64:{}",
            base64::engine::general_purpose::STANDARD.encode("Мой VPN")
        )
    );

    let hiddify = "HiddifyNext/2.5.7 (android) like ClashMeta v2ray sing-box";
    let (_, headers, _) = door.get(&url, &[("user-agent", hiddify)]).await;
    assert_eq!(
        content_type(&headers),
        "text/plain; charset=utf-8",
        "Hiddify must not get YAML"
    );
    let (_, headers, body) = door.get(&url, &[("user-agent", "SFA/1.9.0")]).await;
    assert_eq!(content_type(&headers), "application/json; charset=utf-8");
    assert!(body.contains("\"type\": \"vless\""));
    let (_, headers, body) = door.get(&url, &[("user-agent", "clash-verge/v1.7")]).await;
    assert_eq!(content_type(&headers), "text/yaml; charset=utf-8");
    assert!(body.contains("proxy-groups:"));
    let (_, headers, body) = door
        .get(&door.url(1, "/clash"), &[("user-agent", "v2rayNG/1")])
        .await;
    assert_eq!(content_type(&headers), "text/yaml; charset=utf-8");
    assert!(body.contains("\"reality-opts\""));

    let (_, headers, page) = door
        .get(
            &url,
            &[("user-agent", "Mozilla/5.0"), ("accept", "text/html,*/*")],
        )
        .await;
    assert_eq!(content_type(&headers), "text/html; charset=utf-8");
    assert_eq!(headers["referrer-policy"], "no-referrer");
    assert!(
        page.contains("<svg") && page.contains("v2rayng://install-sub?url="),
        "{page}"
    );
    assert!(page.contains(&url.replace(&door.base, "https://sub.example.com")));

    let head = door.client.head(&url).send().await.expect("HEAD");
    assert_eq!(head.status(), 200);
    assert!(head.headers().contains_key("subscription-userinfo"));
    assert_eq!(head.text().await.expect("body"), "");
}

#[tokio::test]
async fn guessing_addresses_and_heavy_tokens_get_429_with_retry_after() {
    let door = Door::start(|settings| {
        settings.limits = LimitSettings {
            misses: 3,
            fetches_per_token: 2,
            ..LimitSettings::default()
        };
    })
    .await;
    door.subscription(1).await;
    let url = door.url(1, "");
    for _ in 0..2 {
        assert_eq!(door.get(&url, &[]).await.0, 200);
    }
    let (status, headers, _) = door.get(&url, &[]).await;
    assert_eq!(status, 429);
    let wait: u64 = headers["retry-after"]
        .to_str()
        .expect("ascii")
        .parse()
        .expect("seconds");
    assert!(wait > 0);

    for _ in 0..3 {
        assert_eq!(
            door.get(&format!("{}/s/{}", door.base, "B".repeat(24)), &[])
                .await
                .0,
            404
        );
    }
    let (status, headers, _) = door.get(&door.url(1, "/plain"), &[]).await;
    assert_eq!(
        status, 429,
        "a guessing address is refused even a valid token"
    );
    assert!(headers.contains_key("retry-after"));
}

#[tokio::test]
async fn behind_a_trusted_proxy_one_guessing_user_does_not_block_the_others() {
    let door = Door::start(|settings| {
        settings.limits = LimitSettings {
            misses: 3,
            ..LimitSettings::default()
        };
        settings.trusted_proxies = vec!["127.0.0.1".parse().expect("ip")];
    })
    .await;
    door.subscription(1).await;
    // Every request arrives from the proxy (127.0.0.1); the proxy names the client last,
    // after whatever the client itself claimed.
    let guesser = [("x-forwarded-for", "10.0.0.9, 203.0.113.7")];
    let honest = [("x-forwarded-for", "203.0.113.8")];
    for _ in 0..3 {
        let miss = format!("{}/s/{}", door.base, "B".repeat(24));
        assert_eq!(door.get(&miss, &guesser).await.0, 404);
    }
    assert_eq!(door.get(&door.url(1, "/plain"), &guesser).await.0, 429);
    assert_eq!(
        door.get(&door.url(1, "/plain"), &honest).await.0,
        200,
        "another user behind the same proxy is still served"
    );
    // A spoofed first entry does not escape the block: the proxy's entry is what counts.
    let spoofed = [("x-forwarded-for", "198.51.100.1, 203.0.113.7")];
    assert_eq!(door.get(&door.url(1, "/plain"), &spoofed).await.0, 429);
}

#[tokio::test]
async fn without_a_trusted_proxy_forwarded_headers_are_ignored() {
    let door = Door::start(|settings| {
        settings.limits = LimitSettings {
            misses: 3,
            ..LimitSettings::default()
        };
    })
    .await;
    door.subscription(1).await;
    for n in 0..3 {
        let miss = format!("{}/s/{}", door.base, "B".repeat(24));
        let claimed = format!("203.0.113.{n}");
        assert_eq!(
            door.get(&miss, &[("x-forwarded-for", &claimed)]).await.0,
            404
        );
    }
    let fresh = [("x-forwarded-for", "203.0.113.99")];
    assert_eq!(
        door.get(&door.url(1, "/plain"), &fresh).await.0,
        429,
        "a client cannot pick a new address by claiming one"
    );
}

#[tokio::test]
async fn fetches_are_recorded_without_the_address_or_the_token() {
    let door = Door::start(|_| {}).await;
    door.subscription(1).await;
    door.get(
        &door.url(1, "/singbox"),
        &[("user-agent", "SFA/1.9"), ("x-hwid", "device-1")],
    )
    .await;
    door.get(&format!("{}/s/{}", door.base, "C".repeat(24)), &[])
        .await;
    let rows: Vec<FetchRow> = eventually("two fetches recorded", DEADLINE, || async {
        let rows: Vec<_> = sqlx::query_as(
            "SELECT subscription_id, generation, address_hash, user_agent, hwid, format, status
                   FROM subscription_fetches ORDER BY id",
        )
        .fetch_all(door.db.store.pool())
        .await
        .ok()?;
        (rows.len() == 2).then_some(rows)
    })
    .await;
    let id = SubscriptionId::for_user(UserId::new(USER).expect("user")).as_uuid();
    assert_eq!(rows[0].0, Some(id));
    assert_eq!(rows[0].1, Some(1));
    assert_eq!(rows[0].3.as_deref(), Some("SFA/1.9"));
    assert_eq!(rows[0].4.as_deref(), Some("device-1"));
    assert_eq!((rows[0].5.as_str(), rows[0].6), ("singbox", 200));
    assert_eq!((rows[1].0, rows[1].6), (None, 404));
    assert_eq!(rows[0].2, rows[1].2, "one address, one hash");
    assert!(!rows[0].2.contains("127.0.0.1"));
}

#[tokio::test]
async fn an_unreachable_database_gives_503_with_retry_after_never_a_partial_200() {
    // A store whose server does not answer: port 1 on loopback refuses at once.
    let pool = sqlx::postgres::PgPoolOptions::new()
        .acquire_timeout(Duration::from_millis(500))
        .connect_lazy("postgres://postgres@127.0.0.1:1/none")
        .expect("lazy pool");
    let store = eventstore::EventStore::new(pool);
    let mut settings = SubSettings::new(urls(), locations());
    settings.query_timeout = Duration::from_secs(2);
    let stop = CancellationToken::new();
    let router = subscription::router(store, settings, stop.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let base = format!("http://{}", listener.local_addr().expect("addr"));
    tokio::spawn(subscription::serve(listener, router, stop.clone()));
    let user = UserId::new(USER).expect("user");
    let token = urls().token(SubscriptionId::for_user(user), 1);
    let response = reqwest::get(format!("{base}/s/{token}"))
        .await
        .expect("answer");
    assert_eq!(response.status(), 503);
    assert!(response.headers().contains_key("retry-after"));
    assert_eq!(response.text().await.expect("body"), "");
    stop.cancel();
}
