//! Fault tests: a panel that is down, slow, flaky, or loses concurrent writes, and a
//! duplicate email that appears between our read and our write.
#![allow(clippy::unwrap_used)]

use crate::common;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use common::{eventually, fast_policy, spec, start};
use x3ui_sim::{DownMode, PanelSimulator, SimConfig};
use x3ui_worker::{
    AnyPanelApi, BreakerState, Ensured, Inbound, InboundClients, Panel, PanelApi, PanelClient,
    PanelError, ResiliencePolicy,
};

#[tokio::test]
async fn the_breaker_opens_while_the_panel_is_down_and_closes_after_a_good_probe() {
    let (sim, panel) = start(SimConfig::v2_9()).await;
    panel.list_clients().await.unwrap();

    sim.go_down(DownMode::Refused).await.unwrap();
    let error = panel.list_clients().await.unwrap_err();
    assert!(
        matches!(error, PanelError::Transport { .. }),
        "retries stop at the open breaker, with the failure that opened it: {error:?}"
    );
    assert_eq!(panel.breaker_state(), BreakerState::Open);
    assert!(matches!(
        panel.list_clients().await,
        Err(PanelError::CircuitOpen { .. })
    ));

    // A failed probe opens it again.
    eventually("half-open", Duration::from_secs(5), || async {
        (panel.breaker_state() == BreakerState::HalfOpen).then_some(())
    })
    .await;
    assert!(panel.list_clients().await.is_err());
    assert_eq!(panel.breaker_state(), BreakerState::Open);

    sim.come_up().await.unwrap();
    eventually("half-open again", Duration::from_secs(5), || async {
        (panel.breaker_state() == BreakerState::HalfOpen).then_some(())
    })
    .await;
    panel.ensure_client(&spec("tg1-ams")).await.unwrap();
    assert_eq!(panel.breaker_state(), BreakerState::Closed);
    assert!(sim.handle().client("tg1-ams").is_some());
}

#[tokio::test]
async fn a_502_from_the_proxy_counts_as_down() {
    let (sim, panel) = start(SimConfig::v2_9()).await;
    sim.go_down(DownMode::BadGateway).await.unwrap();
    let error = panel.list_clients().await.unwrap_err();
    assert!(
        matches!(error, PanelError::Http { status: 502, .. }),
        "{error:?}"
    );
    assert_eq!(panel.breaker_state(), BreakerState::Open);
    let requests = sim.handle().requests();
    assert!(matches!(
        panel.list_clients().await,
        Err(PanelError::CircuitOpen { .. })
    ));
    assert_eq!(
        sim.handle().requests(),
        requests,
        "an open breaker sends nothing"
    );

    sim.come_up().await.unwrap();
    eventually(
        "recovery through the half-open probe",
        Duration::from_secs(5),
        || async { panel.list_clients().await.ok() },
    )
    .await;
    assert_eq!(panel.breaker_state(), BreakerState::Closed);
}

#[tokio::test]
async fn retries_carry_ensures_through_a_twenty_percent_error_rate() {
    let sim = PanelSimulator::start(SimConfig::v2_9()).await.unwrap();
    let policy = ResiliencePolicy {
        max_attempts: 12,
        failure_threshold: 50,
        ..fast_policy()
    };
    let panel = Panel::connect(sim.panel_config("ams", 1), policy).unwrap();
    sim.handle().update_faults(|f| f.error_rate = 0.2);

    let specs: Vec<_> = (0..20).map(|i| spec(&format!("tg{i}-ams"))).collect();
    for wanted in &specs {
        assert_eq!(panel.ensure_client(wanted).await.unwrap(), Ensured::Added);
    }
    assert_eq!(sim.handle().clients(1).len(), 20);
    assert!(
        sim.handle().stats().injected_errors > 0,
        "the fault must have fired"
    );

    let gone = panel.ensure_client_absent("tg0-ams").await.unwrap();
    assert_eq!(gone, x3ui_worker::Absence::Deleted);
}

#[tokio::test]
async fn slow_answers_time_out_instead_of_hanging() {
    let sim = PanelSimulator::start(SimConfig::v2_9()).await.unwrap();
    let config = sim
        .panel_config("ams", 1)
        .with_timeouts(Duration::from_millis(500), Duration::from_millis(200));
    let policy = ResiliencePolicy {
        max_attempts: 1,
        ..fast_policy()
    };
    let panel = Panel::connect(config, policy).unwrap();
    panel.list_clients().await.unwrap();

    sim.handle()
        .update_faults(|f| f.latency = Duration::from_millis(1500));
    let error = panel.list_clients().await.unwrap_err();
    assert!(matches!(error, PanelError::Timeout { .. }), "{error:?}");
    assert!(error.is_transient());

    sim.handle().update_faults(|f| f.latency = Duration::ZERO);
    panel.list_clients().await.unwrap();
}

#[tokio::test]
async fn a_dropped_connection_is_retried_and_a_panel_that_keeps_dropping_is_a_clear_error() {
    let (sim, panel) = start(SimConfig::v2_9()).await;
    panel.list_clients().await.unwrap();

    sim.handle().update_faults(|f| f.drop_next = 2);
    assert_eq!(
        panel.ensure_client(&spec("tg1-ams")).await.unwrap(),
        Ensured::Added
    );
    assert_eq!(sim.handle().stats().dropped_connections, 2);
    assert_eq!(sim.handle().clients(1).len(), 1);

    sim.handle().update_faults(|f| f.drop_rate = 1.0);
    let error = panel.list_clients().await.unwrap_err();
    assert!(
        matches!(error, PanelError::Transport { .. }),
        "a connection closed without an answer is a transport failure: {error:?}"
    );
    assert!(
        error.to_string().contains("cannot reach the panel"),
        "{error}"
    );
    assert_eq!(
        panel.breaker_state(),
        BreakerState::Open,
        "retries end at the breaker, not in a loop"
    );

    sim.handle().update_faults(|f| f.drop_rate = 0.0);
    eventually(
        "recovery once connections hold",
        Duration::from_secs(5),
        || async { panel.list_clients().await.ok() },
    )
    .await;
}

#[tokio::test]
async fn a_write_whose_answer_is_lost_is_not_done_twice() {
    let (sim, panel) = start(SimConfig::v2_9()).await;
    panel.ensure_client(&spec("tg1-ams")).await.unwrap();
    sim.handle().update_faults(|f| {
        f.drop_next = 1;
        f.drop_writes_only = true;
        f.drop_after_handling = true;
    });
    let wanted = spec("tg2-ams");
    // The addClient went through and its answer was lost; the retry finds the client in
    // place instead of adding it again.
    panel.ensure_client(&wanted).await.unwrap();
    assert_eq!(sim.handle().stats().dropped_connections, 1);
    assert_eq!(sim.handle().stats().add_calls, 2, "one add each, no second");
    let clients = sim.handle().clients(1);
    assert_eq!(clients.len(), 2);
    assert_eq!(
        sim.handle().client("tg2-ams").unwrap()["id"],
        serde_json::json!(wanted.id.to_string())
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writes_lost_by_the_panel_are_caught_by_read_back_and_redone() {
    let sim = PanelSimulator::start(SimConfig::v2_9()).await.unwrap();
    // Every answer takes 100 ms, longer than the two writers are apart, so the second
    // write lands after the first one's write but before its read-back: the read-back
    // sees the loss. (A loss after the read-back is left to the periodic reconcile.)
    sim.handle().update_faults(|f| {
        f.lost_write_window = Some(Duration::from_millis(300));
        f.latency = Duration::from_millis(100);
    });
    // Two workers, each with its own per-panel lock: nothing serialises them.
    let first = Panel::connect(sim.panel_config("ams", 1), fast_policy()).unwrap();
    let second = Panel::connect(sim.panel_config("ams", 1), fast_policy()).unwrap();
    let (a, b) = (spec("tg906-ams"), spec("tg907-ams"));

    let (ra, rb) = tokio::join!(first.ensure_client(&a), second.ensure_client(&b));
    ra.unwrap();
    rb.unwrap();

    assert!(
        sim.handle().stats().lost_writes >= 1,
        "the panel must have lost a write"
    );
    assert!(sim.handle().client("tg906-ams").is_some());
    assert!(sim.handle().client("tg907-ams").is_some());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_panel_serialises_its_own_writes() {
    let sim = PanelSimulator::start(SimConfig::v2_9()).await.unwrap();
    sim.handle()
        .update_faults(|f| f.lost_write_window = Some(Duration::from_millis(50)));
    let panel = Arc::new(Panel::connect(sim.panel_config("ams", 1), fast_policy()).unwrap());

    let tasks: Vec<_> = (0..4)
        .map(|i| {
            let panel = panel.clone();
            tokio::spawn(async move { panel.ensure_client(&spec(&format!("tg{i}-ams"))).await })
        })
        .collect();
    for task in tasks {
        assert_eq!(task.await.unwrap().unwrap(), Ensured::Added);
    }
    assert_eq!(sim.handle().stats().lost_writes, 0);
    assert_eq!(sim.handle().clients(1).len(), 4);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn panel_clients_of_two_processes_take_turns_through_postgresql() {
    let db = testkit::TestDatabase::create().await;
    let sim = PanelSimulator::start(SimConfig::v2_9()).await.unwrap();
    // The same set-up that loses a write above: two clients, nothing serialising them in
    // memory; here they share the database, as every keyledger process does.
    sim.handle().update_faults(|f| {
        f.lost_write_window = Some(Duration::from_millis(300));
        f.latency = Duration::from_millis(100);
    });
    let first = Panel::connect(sim.panel_config("ams", 1), fast_policy()).unwrap();
    let second = Panel::connect(sim.panel_config("ams", 1), fast_policy()).unwrap();
    first.share_write_turns(db.pool());
    second.share_write_turns(db.pool());
    let (a, b) = (spec("tg906-ams"), spec("tg907-ams"));

    let (ra, rb) = tokio::join!(first.ensure_client(&a), second.ensure_client(&b));
    assert_eq!(ra.unwrap(), Ensured::Added);
    assert_eq!(rb.unwrap(), Ensured::Added);
    assert_eq!(sim.handle().stats().lost_writes, 0, "the writes overlapped");
    assert!(sim.handle().client("tg906-ams").is_some());
    assert!(sim.handle().client("tg907-ams").is_some());
    // The turn is handed on: nobody holds the lock afterwards.
    let held: i64 = sqlx::query_scalar("SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND database = (SELECT oid FROM pg_database WHERE datname = current_database())")
        .fetch_one(db.pool())
        .await
        .unwrap();
    assert_eq!(held, 0);
}

/// Hides one email from the first listing, as if someone added it between our read and
/// our write.
struct StaleFirstList {
    inner: AnyPanelApi,
    hide: String,
    hidden_once: AtomicBool,
}

impl PanelApi for StaleFirstList {
    fn location(&self) -> &str {
        self.inner.location()
    }
    fn inbound_id(&self) -> i64 {
        self.inner.inbound_id()
    }
    async fn login(&self) -> Result<(), PanelError> {
        self.inner.login().await
    }
    async fn get_inbound(&self) -> Result<Inbound, PanelError> {
        self.inner.get_inbound().await
    }
    async fn list_clients(&self) -> Result<InboundClients, PanelError> {
        let mut listed = self.inner.list_clients().await?;
        if !self.hidden_once.swap(true, Ordering::SeqCst) {
            listed
                .clients
                .retain(|c| !c.email.eq_ignore_ascii_case(&self.hide));
        }
        Ok(listed)
    }
    async fn list_with_traffic(&self) -> Result<InboundClients, PanelError> {
        self.inner.list_with_traffic().await
    }
    async fn reset_client_traffic(&self, email: &str) -> Result<(), PanelError> {
        self.inner.reset_client_traffic(email).await
    }
    async fn add_clients(&self, clients: &[PanelClient]) -> Result<(), PanelError> {
        self.inner.add_clients(clients).await
    }
    async fn update_client(
        &self,
        current: &PanelClient,
        new: &PanelClient,
    ) -> Result<(), PanelError> {
        self.inner.update_client(current, new).await
    }
    async fn delete_client(&self, current: &PanelClient) -> Result<(), PanelError> {
        self.inner.delete_client(current).await
    }
}

#[tokio::test]
async fn a_duplicate_email_on_add_means_look_and_compare() {
    for config in [SimConfig::v2_9(), SimConfig::v3_1()] {
        let flavour = config.flavour;
        let (sim, panel) = start(config).await;
        let mut wanted = spec("tg7-ams");
        panel.ensure_client(&wanted).await.unwrap();

        let stale = StaleFirstList {
            inner: AnyPanelApi::new(sim.panel_config("ams", 1)).unwrap(),
            hide: "tg7-ams".into(),
            hidden_once: AtomicBool::new(false),
        };
        let racing = Panel::new(stale, fast_policy());
        wanted.comment = "seen after the clash".into();
        let adds = sim.handle().stats().add_calls;
        assert_eq!(
            racing.ensure_client(&wanted).await.unwrap(),
            Ensured::Updated,
            "{flavour:?}"
        );
        assert_eq!(
            sim.handle().stats().add_calls,
            adds + 1,
            "{flavour:?}: one refused add"
        );
        assert_eq!(
            sim.handle().client("tg7-ams").unwrap()["comment"],
            "seen after the clash"
        );
        assert_eq!(sim.handle().clients(1).len(), 1);
    }
}
