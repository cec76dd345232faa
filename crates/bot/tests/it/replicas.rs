//! The bot as a consumer of the broker: a chat Telegram rate-limits waits alone, a flood
//! from one chat is cut at its lane, and two replicas behind a webhook share the
//! partitions, keep each chat in order, and take over from each other.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use crate::common;

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use bot::{BotConfig, Ingress, LANE_BACKLOG, WEBHOOK_PATH, WebhookConfig};
use broker::partition_of;
use common::{Harness, handled_by};
use domain::Secret;
use telegram_fake::TestUser;
use tokio_util::sync::CancellationToken;
use url::Url;
use uuid::Uuid;

/// Two users whose chats share a partition, so only the lanes keep them apart.
fn neighbours() -> (TestUser, TestUser) {
    let first = 5_000_001;
    let second = (first + 1..first + 1_000)
        .find(|id| partition_of(*id) == partition_of(first))
        .unwrap();
    (
        TestUser::new(first, "Alice", Some("en")),
        TestUser::new(second, "Bob", Some("en")),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_chat_telegram_rate_limits_waits_alone_and_its_flood_is_cut() {
    let h = Harness::start().await;
    let (alice, bob) = neighbours();
    // Both talk once first, so their lanes and the partition are warm.
    let mark = h.say(&alice, "/help").await;
    h.expect(&alice, mark, "What I can do").await;
    let mark = h.say(&bob, "/help").await;
    h.expect(&bob, mark, "What I can do").await;

    // Telegram refuses every message to Alice for 8 s; she keeps writing.
    let limit = Duration::from_secs(8);
    h.telegram.rate_limit_chat(alice.id, limit);
    let limited_at = Instant::now();
    let alice_mark = h.telegram.mark();
    let mut alice_updates = Vec::new();
    for _ in 0..(LANE_BACKLOG * 3) {
        alice_updates.push(h.telegram.send_text(&alice, "/help"));
    }
    h.until("Telegram refused a message to Alice", || async {
        h.telegram
            .rate_limited()
            .iter()
            .any(|r| r.chat_id == Some(alice.id))
    })
    .await;

    // Bob, in the same partition, is answered at once.
    let asked = Instant::now();
    let mark = h.telegram.mark();
    h.telegram.send_text(&bob, "/help");
    h.expect(&bob, mark, "What I can do").await;
    let bob_waited = asked.elapsed();
    assert!(
        bob_waited < Duration::from_secs(3),
        "Bob waited {bob_waited:?} behind Alice's rate limit"
    );
    assert!(
        limited_at.elapsed() < limit,
        "Bob must be answered while Alice is still limited"
    );
    assert!(
        h.telegram.sent_to(alice.id, alice_mark).is_empty(),
        "nothing reached Alice while Telegram refused her chat"
    );

    // Alice is answered once her limit is over, and her flood was cut at the lane.
    h.expect(&alice, alice_mark, "What I can do").await;
    assert!(limited_at.elapsed() >= limit);
    for update in &alice_updates {
        h.telegram.wait_handled(*update).await;
    }
    h.until("Alice's lane drained", || async {
        let answered = h.telegram.sent_to(alice.id, alice_mark).len();
        let handled = count_handled(&h, &alice_updates).await;
        // Every update kept was handled and answered once.
        handled >= 1 && answered == handled
    })
    .await;
    let handled = count_handled(&h, &alice_updates).await;
    assert!(
        handled <= LANE_BACKLOG + 1,
        "a flooding chat keeps at most its lane's backlog ({LANE_BACKLOG}) and the one in hand; {handled} of {} were handled",
        alice_updates.len()
    );
}

async fn count_handled(h: &Harness, updates: &[i64]) -> usize {
    let mut handled = 0;
    for update in updates {
        if handled_by(h.db.pool(), *update).await.is_some() {
            handled += 1;
        }
    }
    handled
}

fn webhook_config(secret: &Secret) -> WebhookConfig {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let listen = listener.local_addr().unwrap();
    drop(listener);
    WebhookConfig {
        listen,
        url: Url::parse(&format!("https://bot.example.com{WEBHOOK_PATH}")).unwrap(),
        secret: secret.clone(),
    }
}

/// The replicas holding update partitions, with how many each holds.
async fn holders(h: &Harness) -> Vec<(Uuid, i64)> {
    sqlx::query_as(
        "SELECT holder, count(*) FROM bot_update_partitions
         WHERE holder IS NOT NULL AND lease_until > now() GROUP BY holder ORDER BY holder",
    )
    .fetch_all(h.db.pool())
    .await
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_webhook_replicas_share_the_load_keep_each_chat_in_order_and_take_over() {
    let secret = Secret::new("a-webhook-secret-of-at-least-32-characters");
    let first = webhook_config(&secret);
    let second = webhook_config(&secret);
    let mut second_config: Option<BotConfig> = None;
    let h = Harness::with(&[("ams", "Amsterdam")], |config| {
        config.ingress = Ingress::Webhook(first.clone());
        let mut other = config.clone();
        other.ingress = Ingress::Webhook(second.clone());
        second_config = Some(other);
    })
    .await;
    // A replica that died without leaving, long ago: forgotten by the next replica
    // to start, not counted.
    let ghost = Uuid::new_v4();
    sqlx::query(
        "INSERT INTO bot_replicas (replica_id, alive_until) VALUES ($1, now() - interval '2 hours')",
    )
    .bind(ghost)
    .execute(h.db.pool())
    .await
    .unwrap();
    let stop_second = CancellationToken::new();
    let second_bot = {
        let (store, amqp_url) = (h.db.store.clone(), h.broker.amqp_url.clone());
        let (config, stop) = (second_config.unwrap(), stop_second.clone());
        tokio::spawn(async move { bot::run_bot(store, &amqp_url, config, stop).await })
    };

    let (url, token) = h.telegram.wait_webhook().await;
    assert_eq!(url, first.url.as_str());
    assert_eq!(token, secret.expose());
    h.until("both replicas hold four partitions", || async {
        let held = holders(&h).await;
        held.len() == 2 && held.iter().all(|(_, n)| *n == 4)
    })
    .await;
    let ghosts: i64 = sqlx::query_scalar("SELECT count(*) FROM bot_replicas WHERE replica_id = $1")
        .bind(ghost)
        .fetch_one(h.db.pool())
        .await
        .unwrap();
    assert_eq!(ghosts, 0, "a long-dead replica's row is removed");

    let http = reqwest::Client::new();
    let replicas = [first.listen, second.listen];
    let post = |to: usize, body: Vec<u8>, secret: &str| {
        http.post(format!("http://{}{WEBHOOK_PATH}", replicas[to]))
            .header("X-Telegram-Bot-Api-Secret-Token", secret.to_owned())
            .header("Content-Type", "application/json")
            .body(body)
            .send()
    };
    // The door refuses strangers and junk before anything is queued.
    let update = serde_json::to_vec(&serde_json::json!({"update_id": 1})).unwrap();
    assert_eq!(
        post(0, update.clone(), "wrong").await.unwrap().status(),
        401
    );
    assert_eq!(
        post(1, vec![b'{'; bot::MAX_UPDATE_BYTES + 1], secret.expose())
            .await
            .unwrap()
            .status(),
        413
    );
    assert_eq!(
        post(0, b"not json".to_vec(), secret.expose())
            .await
            .unwrap()
            .status(),
        400
    );

    // Twelve users, each asking for help and then saying /start; a load balancer spreads
    // the POSTs over both replicas, so one user's two updates often reach different ones.
    let users: Vec<TestUser> = (0..12)
        .map(|i| TestUser::new(6_100_000 + i, "User", Some("en")))
        .collect();
    let mark = h.telegram.mark();
    let mut updates = Vec::new();
    for user in &users {
        updates.push(h.telegram.send_text(user, "/help"));
        updates.push(h.telegram.send_text(user, "/start"));
    }
    for (turn, update) in h.telegram.take_pending().into_iter().enumerate() {
        let body = serde_json::to_vec(&update).unwrap();
        let status = post(turn % 2, body, secret.expose())
            .await
            .unwrap()
            .status();
        assert_eq!(status, 200);
    }
    for update in &updates {
        h.handled(*update).await;
    }
    for user in &users {
        let help = h.expect(user, mark, "What I can do").await;
        let greeting = h.expect(user, mark, "Hello, User").await;
        assert!(
            help.seq < greeting.seq,
            "user {}: /help then /start must be answered in that order",
            user.id
        );
    }
    let mut by = BTreeSet::new();
    for update in &updates {
        by.insert(handled_by(h.db.pool(), *update).await.unwrap().unwrap());
    }
    assert_eq!(by.len(), 2, "both replicas handled updates");

    // The second replica stops: the first takes every partition and answers everyone.
    stop_second.cancel();
    second_bot.await.unwrap().unwrap();
    h.until("the first replica holds all eight partitions", || async {
        let held = holders(&h).await;
        held.len() == 1 && held[0].1 == 8
    })
    .await;
    let mark = h.telegram.mark();
    let mut after = Vec::new();
    for user in &users {
        after.push(h.telegram.send_text(user, "/help"));
    }
    // The load balancer now knows only the first replica.
    for update in h.telegram.take_pending() {
        let body = serde_json::to_vec(&update).unwrap();
        assert_eq!(post(0, body, secret.expose()).await.unwrap().status(), 200);
    }
    for user in &users {
        h.expect(user, mark, "What I can do").await;
    }
    for update in &after {
        h.handled(*update).await;
    }
}

/// The backend sessions holding the poller lock in the test's database.
async fn poller_sessions(h: &Harness) -> Vec<i32> {
    // The lock's bigint key shows as its high and low halves.
    sqlx::query_scalar(
        "SELECT pid FROM pg_locks
         WHERE locktype = 'advisory' AND granted AND objsubid = 1
           AND classid::bigint = $1 AND objid::bigint = $2
           AND database = (SELECT oid FROM pg_database WHERE datname = current_database())",
    )
    .bind(bot::POLLER_LOCK >> 32)
    .bind(bot::POLLER_LOCK & 0xffff_ffff)
    .fetch_all(h.db.pool())
    .await
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn with_long_polling_one_replica_polls_and_another_takes_over_when_its_session_dies() {
    let mut second_config: Option<BotConfig> = None;
    let h = Harness::with(&[("ams", "Amsterdam")], |config| {
        second_config = Some(config.clone());
    })
    .await;
    let stop_second = CancellationToken::new();
    let _second_bot = {
        let (store, amqp_url) = (h.db.store.clone(), h.broker.amqp_url.clone());
        let (config, stop) = (second_config.unwrap(), stop_second.clone());
        tokio::spawn(async move { bot::run_bot(store, &amqp_url, config, stop).await })
    };
    let user = TestUser::new(7_000_001, "Carol", Some("en"));
    let mark = h.say(&user, "/help").await;
    h.expect(&user, mark, "What I can do").await;
    let first = poller_sessions(&h).await;
    assert_eq!(first.len(), 1, "exactly one replica polls: {first:?}");

    // The poller's session dies (a restarted connection pooler, an operator's kill): the
    // lock is free, and a replica polls again.
    sqlx::query("SELECT pg_terminate_backend($1)")
        .bind(first[0])
        .execute(h.db.pool())
        .await
        .unwrap();
    h.until("another session polls", || async {
        let now = poller_sessions(&h).await;
        now.len() == 1 && now[0] != first[0]
    })
    .await;
    let mark = h.say(&user, "/help").await;
    h.expect(&user, mark, "What I can do").await;
    assert_eq!(poller_sessions(&h).await.len(), 1, "still one poller");
    stop_second.cancel();
}
