//! `keyledger demo`: the whole pipeline in one process against the local PostgreSQL and
//! RabbitMQ and the built-in panel simulator, with a scripted user, told as it happens.
//! After each step it also shows what the user's subscription URL serves, as their VPN app
//! would see it.
//!
//! It works in a database and a RabbitMQ vhost of its own, both removed at the end, so it
//! can run beside a real deployment on the same servers without touching it.

use std::io::Write;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use domain::{EventType, KeyCommand, KeyId, LocationId, RequestKey, RevokeKey, RotateKey, UserId};
use eventstore::{Actor, ActorKind, EventMetadata, EventStore, KeyLedger, RecordedEvent};
use projector::KeyView;
use serde_json::{Map, Value};
use time::OffsetDateTime;
use url::Url;
use uuid::Uuid;
use x3ui_sim::{PanelSimulator, SimConfig, SimHandle};

use crate::scratch::Scratch;
use service::Failure;
use service::Role;
use service::config::Config;
use service::serve::start_roles;

/// How long one step of the story may take before the demo gives up and says where.
const STEP_DEADLINE: Duration = Duration::from_secs(60);
const POLL: Duration = Duration::from_millis(50);
const DEMO_USER: i64 = 123_456_789;
const DEMO_LOCATION: &str = "demo";
const INBOUND_ID: i64 = 1;

/// `keyledger demo`.
pub async fn run(config: &Config, out: &mut impl Write) -> Result<(), Failure> {
    let scratch = Scratch::create(config, "demo", 8).await?;
    // Interrupted, the demo still removes what it created.
    let outcome = tokio::select! {
        outcome = play(config, &scratch, out) => outcome,
        _ = tokio::signal::ctrl_c() => Err(anyhow::anyhow!("interrupted")),
    };
    if let Err(error) = scratch.remove().await {
        tracing::warn!(%error, "could not remove the demo's database or vhost");
    }
    outcome.map_err(Failure::Runtime)
}

async fn play(config: &Config, scratch: &Scratch, out: &mut impl Write) -> anyhow::Result<()> {
    let panel = PanelSimulator::start(SimConfig::v2_9())
        .await
        .context("cannot start the panel simulator")?;
    let demo = demo_config(config, scratch, panel.base_url())?;
    let store = EventStore::new(scratch.database.pool.clone());
    store.migrate().await?;
    writeln!(out, "keyledger demo")?;
    writeln!(out, "  database     {}", redacted(&scratch.database.url))?;
    writeln!(out, "  rabbitmq     vhost {}", scratch.vhost.vhost)?;
    writeln!(
        out,
        "  panel        {} (simulated 3x-ui v2.9)",
        panel.base_url()
    )?;
    let roles = [
        Role::Api,
        Role::Relay,
        Role::Projector,
        Role::Worker,
        Role::Scheduler,
        Role::Sub,
    ];
    let running = start_roles(&demo, &store, &roles)
        .await
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    if let Some(address) = running.http_addr {
        writeln!(
            out,
            "  http api     http://{address} (no tokens set: only probes and /metrics)"
        )?;
    }
    let user = UserId::new(DEMO_USER)?;
    let subscription = match &demo.subscription_urls {
        Some(urls) => {
            let metadata = EventMetadata::for_command(
                Uuid::new_v4(),
                Actor::new(ActorKind::TelegramUser, DEMO_USER.to_string()),
            );
            let state = eventstore::Subscriptions::new(store.clone())
                .ensure_issued(user, &metadata)
                .await?;
            let url = urls.url(domain::SubscriptionId::for_user(user), state.generation);
            writeln!(out, "  subscription {url}")?;
            Some(url)
        }
        None => None,
    };
    writeln!(out)?;
    let mut story = Story::new(store.clone(), panel.handle(), subscription);
    let told = tell(&mut story, out).await;
    running.stop().await;
    told
}

/// The configuration of the demo: the operator's, pointed at the scratch database and
/// vhost, with the simulator as its one location and a free port for the API.
fn demo_config(config: &Config, scratch: &Scratch, panel_url: Url) -> anyhow::Result<Config> {
    let mut demo = scratch.config_with_simulator(config, DEMO_LOCATION, panel_url)?;
    demo.http_addr = "127.0.0.1:0".parse()?;
    demo.telegram_bot_token = None;
    // The sub role on a free port, with a secret of this run only.
    let port = std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port();
    demo.sub_addr = ([127, 0, 0, 1], port).into();
    demo.subscription_urls = Some(domain::SubscriptionUrls::new(
        Url::parse(&format!("http://127.0.0.1:{port}"))?,
        domain::Secret::new(format!("{}{}", Uuid::new_v4(), Uuid::new_v4())),
    )?);
    Ok(demo)
}

fn redacted(url: &str) -> String {
    match Url::parse(url) {
        Ok(mut url) if url.password().is_some() => {
            let _ = url.set_password(Some("***"));
            url.to_string()
        }
        _ => url.to_owned(),
    }
}

/// The scripted user: request, refresh twice, revoke, then the audit.
async fn tell(story: &mut Story, out: &mut impl Write) -> anyhow::Result<()> {
    let user = UserId::new(DEMO_USER)?;
    let location = LocationId::new(DEMO_LOCATION)?;
    let key = KeyId::for_user_at(user, &location);
    let ledger = KeyLedger::new(story.store.clone());
    let by_user = || {
        EventMetadata::for_command(
            Uuid::new_v4(),
            Actor::new(ActorKind::TelegramUser, DEMO_USER.to_string()),
        )
    };

    writeln!(out, "1. user {DEMO_USER} asks for a key at {DEMO_LOCATION}")?;
    let request = KeyCommand::Request(RequestKey {
        user_id: user,
        location: location.clone(),
        fresh_client_uuid: Uuid::new_v4(),
        expires_at: Some(OffsetDateTime::now_utc() + time::Duration::days(30)),
        traffic_limit_bytes: 0,
        now: OffsetDateTime::now_utc(),
    });
    ledger.execute(key, &request, &by_user()).await?;
    let mut view = story
        .until(out, "the key to be active", |v| v.status == "active", key)
        .await?;
    story.show_key_and_panel(out, &view)?;
    story.show_subscription(out).await?;

    for round in 1..=2 {
        writeln!(
            out,
            "{}. the user presses 🔄 refresh ({round} of 2)",
            round + 1
        )?;
        let old = view.client_uuid;
        let rotate = KeyCommand::Rotate(RotateKey {
            fresh_client_uuid: Uuid::new_v4(),
        });
        ledger.execute(key, &rotate, &by_user()).await?;
        view = story
            .until(
                out,
                "the new key to be active",
                |v| v.status == "active" && v.client_uuid != old,
                key,
            )
            .await?;
        story.show_key_and_panel(out, &view)?;
        story.show_subscription(out).await?;
        if story
            .panel
            .clients(INBOUND_ID)
            .iter()
            .any(|c| c.get("id") == Some(&Value::String(old.to_string())))
        {
            bail!("the panel still holds the old client {old} after the refresh");
        }
    }

    writeln!(out, "4. the user revokes the key")?;
    let revoke = KeyCommand::Revoke(RevokeKey {
        reason: "demo: the user revoked it".into(),
    });
    ledger.execute(key, &revoke, &by_user()).await?;
    let view = story
        .until(out, "the key to be revoked", |v| v.status == "revoked", key)
        .await?;
    story.show_key_and_panel(out, &view)?;
    story.show_subscription(out).await?;

    writeln!(out, "5. audit verify")?;
    let chains = eventstore::verify_chains(story.store.pool()).await?;
    let views = projector::verify_views(&story.store).await?;
    let subscriptions = projector::verify_subscription_views(&story.store).await?;
    writeln!(
        out,
        "   {} events in {} streams: {}",
        chains.events,
        chains.streams,
        if chains.holds() {
            "every hash chain holds"
        } else {
            "THE LOG WAS ALTERED"
        }
    )?;
    writeln!(
        out,
        "   {} key views: {}",
        views.keys,
        if views.holds() {
            "each equals a replay of the log"
        } else {
            "VIEWS DIFFER FROM THE LOG"
        }
    )?;
    writeln!(
        out,
        "   {} subscription views: {}",
        subscriptions.subscriptions,
        if subscriptions.holds() {
            "each equals a replay of the log"
        } else {
            "VIEWS DIFFER FROM THE LOG"
        }
    )?;
    if !(chains.holds() && views.holds() && subscriptions.holds()) {
        bail!("audit verify failed");
    }
    writeln!(
        out,
        "\ndemo finished: everything the user saw is in the log, and the panel matches it"
    )?;
    Ok(())
}

/// Follows the log and the panel, printing what changes.
struct Story {
    store: EventStore,
    panel: SimHandle,
    after: i64,
    /// The user's subscription URL, when the sub role runs.
    subscription: Option<String>,
}

impl Story {
    fn new(store: EventStore, panel: SimHandle, subscription: Option<String>) -> Self {
        Self {
            store,
            panel,
            after: 0,
            subscription,
        }
    }

    /// Prints what the subscription URL serves (its `plain` format), as an app sees it.
    async fn show_subscription(&self, out: &mut impl Write) -> anyhow::Result<()> {
        let Some(url) = &self.subscription else {
            return Ok(());
        };
        // A subscription issued a moment ago is found within a second.
        let deadline = Instant::now() + Duration::from_secs(5);
        let body = loop {
            let response = reqwest::get(format!("{url}/plain")).await?;
            if response.status().is_success() {
                break response.text().await?;
            }
            if Instant::now() >= deadline {
                bail!("the subscription URL answered {}", response.status());
            }
            tokio::time::sleep(POLL).await;
        };
        writeln!(out, "   subscription serves:")?;
        for line in body.lines() {
            writeln!(out, "     {line}")?;
        }
        writeln!(out)?;
        Ok(())
    }

    /// Prints every event recorded since the last call.
    async fn catch_up(&mut self, out: &mut impl Write) -> anyhow::Result<()> {
        for event in self.store.read_all(self.after, 1000).await? {
            writeln!(out, "   {}", describe(&event))?;
            self.after = event.position;
        }
        Ok(())
    }

    /// Tells the log as it grows until the key's view satisfies `done`.
    async fn until(
        &mut self,
        out: &mut impl Write,
        what: &str,
        done: impl Fn(&KeyView) -> bool,
        key: KeyId,
    ) -> anyhow::Result<KeyView> {
        let deadline = Instant::now() + STEP_DEADLINE;
        loop {
            self.catch_up(out).await?;
            if let Some(view) = projector::load_view(self.store.pool(), key.as_uuid()).await?
                && done(&view)
            {
                self.catch_up(out).await?;
                return Ok(view);
            }
            if Instant::now() >= deadline {
                bail!("gave up waiting for {what} after {STEP_DEADLINE:?}");
            }
            tokio::time::sleep(POLL).await;
        }
    }

    fn show_key_and_panel(&self, out: &mut impl Write, view: &KeyView) -> anyhow::Result<()> {
        writeln!(out, "   view: {} (version {})", view.status, view.version)?;
        if let Some(link) = &view.link {
            writeln!(out, "   link: {link}")?;
        }
        let clients = self.panel.clients(INBOUND_ID);
        writeln!(
            out,
            "   panel inbound {INBOUND_ID} holds {} client(s):",
            clients.len()
        )?;
        for client in &clients {
            writeln!(out, "     {}", describe_client(client))?;
        }
        writeln!(out)?;
        Ok(())
    }
}

fn describe(event: &RecordedEvent) -> String {
    let actor = event.metadata["actor"]["kind"].as_str().unwrap_or("?");
    let detail = match EventType::parse(&event.event_type) {
        Some(EventType::Requested | EventType::Provisioned | EventType::Rotated) => {
            format!(
                "client {}",
                event.data["client_uuid"].as_str().unwrap_or("?")
            )
        }
        Some(EventType::RotationRequested) => format!(
            "{} -> {}",
            event.data["old_client_uuid"].as_str().unwrap_or("?"),
            event.data["new_client_uuid"].as_str().unwrap_or("?")
        ),
        Some(EventType::RevocationRequested) => {
            format!("reason {:?}", event.data["reason"].as_str().unwrap_or(""))
        }
        Some(EventType::ProvisioningFailed) => format!("error {}", event.data["error"]),
        Some(EventType::DriftDetected | EventType::DriftRepaired) => {
            format!("kind {}", event.data["kind"])
        }
        _ => String::new(),
    };
    format!(
        "#{:<3} {:<26} v{} by {:<10} {detail}  hash {}…",
        event.position,
        event.event_type,
        event.version,
        actor,
        &event.hash[..12.min(event.hash.len())]
    )
}

fn describe_client(client: &Map<String, Value>) -> String {
    format!(
        "{} id={} enable={}",
        client.get("email").and_then(Value::as_str).unwrap_or("?"),
        client.get("id").and_then(Value::as_str).unwrap_or("?"),
        client
            .get("enable")
            .map_or("?".to_owned(), Value::to_string),
    )
}
