//! The console over HTTP against a real database, without a browser: the headers every
//! page carries, the session cookie, wrong tokens and their limit, CSRF, escaping, the
//! Swagger UI; and (ignored, run by hand) the render times with 10,000 keys in the log.

use std::time::{Duration, Instant};

use api::{ApiConfig, Secret, Tokens};
use domain::{KeyCommand, KeyId, Location, LocationId, RevokeKey, UserId};
use eventstore::{ActorKind, KeyLedger};
use reqwest::StatusCode;
use reqwest::header::{CACHE_CONTROL, CONTENT_SECURITY_POLICY, LOCATION, SET_COOKIE};
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

const ADMIN: &str = "admin-token-for-the-console-pages";
const AUDITOR: &str = "auditor-token-for-the-console-pages";
const SERVICE: &str = "service-token-for-the-console-pages";

/// The API and the console on one listener, as `start_api` mounts them.
struct Served {
    base: String,
    stop: CancellationToken,
}

impl Drop for Served {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

async fn serve(db: &testkit::TestDatabase) -> Served {
    let config = ApiConfig {
        tokens: Tokens::new(
            Some(&Secret::new(ADMIN)),
            Some(&Secret::new(SERVICE)),
            Some(&Secret::new(AUDITOR)),
        ),
        locations: vec![Location {
            id: LocationId::new("ams").expect("location"),
            name: "Amsterdam".into(),
        }],
        amqp_url: None,
        panels: None,
        subscription_urls: None,
    };
    let console = console::router(db.store.clone(), config.clone());
    let router = api::router(db.store.clone(), config, api::metrics::recorder()).merge(console);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let base = format!("http://{}", listener.local_addr().expect("address"));
    let stop = CancellationToken::new();
    tokio::spawn(api::serve(listener, router, stop.clone()));
    Served { base, stop }
}

fn browser() -> reqwest::Client {
    reqwest::Client::builder()
        .cookie_store(true)
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .expect("client")
}

/// The value of the first `name="csrf"` field in a page.
fn csrf_in(html: &str) -> String {
    let marker = "name=\"csrf\" value=\"";
    let start = html.find(marker).expect("a csrf field") + marker.len();
    let end = html[start..].find('"').expect("end of value") + start;
    html[start..end].to_owned()
}

/// Signs `client` in with `token`; returns the answer to the form's POST.
async fn sign_in(client: &reqwest::Client, base: &str, token: &str) -> reqwest::Response {
    let form = client
        .get(format!("{base}/console/signin"))
        .send()
        .await
        .expect("form")
        .text()
        .await
        .expect("html");
    client
        .post(format!("{base}/console/signin"))
        .form(&[("token", token), ("csrf", &csrf_in(&form))])
        .send()
        .await
        .expect("sign in")
}

/// A key requested at ams for `user`, and then revoked with `reason` if given.
async fn seed_key(db: &testkit::TestDatabase, user: i64, reason: Option<&str>) -> Uuid {
    let ledger = KeyLedger::new(db.store.clone());
    let meta = || testkit::command_metadata(ActorKind::Admin);
    let (key, request) = testkit::key_request(user, "ams");
    ledger
        .execute(key, &request, &meta())
        .await
        .expect("request");
    if let Some(reason) = reason {
        let revoke = KeyCommand::Revoke(RevokeKey {
            reason: reason.to_owned(),
        });
        ledger.execute(key, &revoke, &meta()).await.expect("revoke");
    }
    key.as_uuid()
}

#[tokio::test]
async fn every_page_needs_a_session_and_carries_strict_headers() {
    let db = testkit::TestDatabase::create().await;
    let served = serve(&db).await;
    let client = browser();
    let answer = client
        .get(format!("{}/console/keys", served.base))
        .send()
        .await
        .expect("page");
    assert_eq!(answer.status(), StatusCode::SEE_OTHER);
    assert_eq!(answer.headers()[LOCATION], "/console/signin");
    let headers = answer.headers();
    let policy = headers[CONTENT_SECURITY_POLICY].to_str().expect("text");
    assert!(
        policy.contains("default-src 'none'") && !policy.contains("script-src"),
        "{policy}"
    );
    assert_eq!(headers["x-frame-options"], "DENY");
    assert_eq!(headers["referrer-policy"], "no-referrer");
    assert_eq!(headers[CACHE_CONTROL], "no-store");

    let docs = client
        .get(format!("{}/docs/", served.base))
        .send()
        .await
        .expect("docs");
    assert_eq!(docs.status(), StatusCode::OK);
    let policy = docs.headers()[CONTENT_SECURITY_POLICY]
        .to_str()
        .expect("text")
        .to_owned();
    assert!(policy.contains("script-src 'self'"), "{policy}");
    assert!(docs.text().await.expect("html").contains("swagger-ui"));
    let bundle = client
        .get(format!("{}/docs/swagger-ui-bundle.js", served.base))
        .send()
        .await
        .expect("bundle");
    assert_eq!(bundle.status(), StatusCode::OK);
    assert!(
        bundle.bytes().await.expect("body").len() > 100_000,
        "the bundle is served from the binary"
    );
}

#[tokio::test]
async fn a_session_cookie_is_signed_http_only_and_strict_and_never_the_token() {
    let db = testkit::TestDatabase::create().await;
    let served = serve(&db).await;
    let client = browser();
    let answer = sign_in(&client, &served.base, AUDITOR).await;
    assert_eq!(answer.status(), StatusCode::SEE_OTHER);
    let cookies: Vec<String> = answer
        .headers()
        .get_all(SET_COOKIE)
        .iter()
        .map(|v| v.to_str().expect("text").to_owned())
        .collect();
    let session = cookies
        .iter()
        .find(|c| c.starts_with("kl_console="))
        .expect("a session cookie");
    for attribute in ["HttpOnly", "SameSite=Strict", "Path=/console"] {
        assert!(session.contains(attribute), "{session}");
    }
    assert!(!session.contains(AUDITOR), "{session}");
    let page = client
        .get(format!("{}/console/keys", served.base))
        .send()
        .await
        .expect("page");
    assert_eq!(page.status(), StatusCode::OK);
    assert!(page.text().await.expect("html").contains(">auditor<"));
}

#[tokio::test]
async fn wrong_tokens_are_refused_and_then_the_address_waits() {
    let db = testkit::TestDatabase::create().await;
    let served = serve(&db).await;
    let client = browser();
    for attempt in 0..10 {
        let answer = sign_in(&client, &served.base, "a-guess").await;
        assert_eq!(
            answer.status(),
            StatusCode::UNAUTHORIZED,
            "attempt {attempt}"
        );
        assert!(answer.text().await.expect("html").contains("not valid"));
    }
    let blocked = sign_in(&client, &served.base, ADMIN).await;
    assert_eq!(blocked.status(), StatusCode::TOO_MANY_REQUESTS);
    let service = sign_in(&browser(), &served.base, SERVICE).await;
    assert_eq!(service.status(), StatusCode::TOO_MANY_REQUESTS);
}

#[tokio::test]
async fn the_service_role_has_no_console_and_a_post_needs_the_sessions_csrf_token() {
    let db = testkit::TestDatabase::create().await;
    let key = seed_key(&db, 42, None).await;
    let served = serve(&db).await;
    let service = sign_in(&browser(), &served.base, SERVICE).await;
    assert_eq!(service.status(), StatusCode::UNAUTHORIZED);
    assert!(
        service
            .text()
            .await
            .expect("html")
            .contains("has no console")
    );

    let admin = browser();
    sign_in(&admin, &served.base, ADMIN).await;
    let revoke = format!("{}/console/keys/{key}/revoke", served.base);
    let confirm = admin
        .get(&revoke)
        .send()
        .await
        .expect("confirm")
        .text()
        .await
        .expect("html");
    let forged = admin
        .post(&revoke)
        .form(&[("csrf", "0000"), ("reason", "forged")])
        .send()
        .await
        .expect("post");
    assert_eq!(forged.status(), StatusCode::FORBIDDEN);
    assert_eq!(db.store.read_stream(key).await.expect("log").len(), 1);
    let confirmed = admin
        .post(&revoke)
        .form(&[
            ("csrf", csrf_in(&confirm).as_str()),
            ("reason", "left the team"),
        ])
        .send()
        .await
        .expect("post");
    assert_eq!(confirmed.status(), StatusCode::SEE_OTHER);
    let log = db.store.read_stream(key).await.expect("log");
    assert_eq!(log.len(), 2);
    assert_eq!(log[1].metadata["actor"]["id"], "console");
    assert_eq!(log[1].data["reason"], "left the team");
}

#[tokio::test]
async fn blocking_from_the_console_records_the_block_and_revokes_the_users_keys() {
    let db = testkit::TestDatabase::create().await;
    let key = seed_key(&db, 43, None).await;
    let served = serve(&db).await;
    let admin = browser();
    sign_in(&admin, &served.base, ADMIN).await;
    let block = format!("{}/console/users/43/block", served.base);
    let confirm = admin
        .get(&block)
        .send()
        .await
        .expect("confirm")
        .text()
        .await
        .expect("html");
    assert!(confirm.contains("Block user 43?"), "{confirm}");
    let done = admin
        .post(&block)
        .form(&[
            ("csrf", csrf_in(&confirm).as_str()),
            ("reason", "abuse reported"),
        ])
        .send()
        .await
        .expect("post");
    assert_eq!(done.status(), StatusCode::SEE_OTHER);
    let user = domain::UserId::new(43).expect("user");
    let status = eventstore::AccessControl::new(db.store.clone())
        .status(user)
        .await
        .expect("status");
    assert!(status.state.blocked, "the block is recorded: {status:?}");
    let log = db.store.read_stream(key).await.expect("log");
    let revoke = log.last().expect("events");
    assert_eq!(revoke.event_type, "key.revocation_requested");
    assert_eq!(revoke.data["reason"], "user blocked: abuse reported");
}

#[tokio::test]
async fn values_from_the_log_are_escaped() {
    let db = testkit::TestDatabase::create().await;
    let key = seed_key(&db, 42, Some("<script>alert(1)</script>")).await;
    let served = serve(&db).await;
    let client = browser();
    sign_in(&client, &served.base, AUDITOR).await;
    let page = client
        .get(format!("{}/console/keys/{key}", served.base))
        .send()
        .await
        .expect("page")
        .text()
        .await
        .expect("html");
    assert!(
        page.contains("&lt;script&gt;alert(1)&lt;/script&gt;"),
        "{page}"
    );
    assert!(!page.contains("<script>"), "{page}");
}

/// Median time of `runs` GETs of `path`.
async fn median_get(client: &reqwest::Client, url: &str, runs: usize) -> Duration {
    let mut times = Vec::with_capacity(runs);
    for _ in 0..runs {
        let started = Instant::now();
        let answer = client.get(url).send().await.expect("page");
        assert_eq!(answer.status(), StatusCode::OK, "{url}");
        answer.bytes().await.expect("body");
        times.push(started.elapsed());
    }
    times.sort();
    times[runs / 2]
}

/// Fills the log with 10,000 keys (each requested, half of them revoked) and prints the
/// median render time of the pages; docs/console.md quotes the figures. Run with
/// `cargo nextest run -p console --run-ignored only --no-capture`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "a measurement: fills a database with 10,000 keys (about a minute)"]
async fn render_times_with_ten_thousand_keys() {
    use futures::StreamExt;
    const KEYS: i64 = 10_000;
    let db = testkit::TestDatabase::create().await;
    let filled = Instant::now();
    futures::stream::iter(1..=KEYS)
        .for_each_concurrent(8, |user| {
            let db = &db;
            async move {
                let reason = (user % 2 == 0).then_some("measured");
                seed_key(db, user, reason).await;
            }
        })
        .await;
    projector::rebuild(&db.store).await.expect("views");
    eprintln!("filled {KEYS} keys in {:?}", filled.elapsed());
    let key = KeyId::for_user_at(
        UserId::new(4242).expect("user"),
        &LocationId::new("ams").expect("location"),
    )
    .as_uuid();
    let client_uuid = projector::load_view(db.pool(), key)
        .await
        .expect("view")
        .expect("a view")
        .client_uuid;
    let served = serve(&db).await;
    let client = browser();
    sign_in(&client, &served.base, ADMIN).await;
    let base = &served.base;
    for (what, path) in [
        ("key page (timeline)", format!("/console/keys/{key}")),
        ("search by user id", "/console/keys?q=4242".to_owned()),
        (
            "search by client UUID",
            format!("/console/keys?q={client_uuid}"),
        ),
        ("locations page", "/console/locations".to_owned()),
        ("audit page (checkpoints)", "/console/audit".to_owned()),
    ] {
        let median = median_get(&client, &format!("{base}{path}"), 21).await;
        eprintln!("{what}: median {median:?} over 21 requests");
    }
    let verify = median_get(&client, &format!("{base}/console/audit?verify=1"), 3).await;
    eprintln!("audit verify (whole log): median {verify:?} over 3 requests");
}
