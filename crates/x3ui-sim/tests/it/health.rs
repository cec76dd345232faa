//! What operators see of the panels: the metrics every call and pass emits, and the
//! per-location health the HTTP API serves (`Panels::health`, `Panels::probe`).
#![allow(clippy::unwrap_used)]

use crate::common;

use std::time::Duration;

use common::stack::Base;
use metrics_util::CompositeKey;
use metrics_util::debugging::{DebugValue, DebuggingRecorder, Snapshotter};
use x3ui_sim::DownMode;
use x3ui_worker::{BreakerState, PanelError, Reconciler};

/// What was recorded since the previous snapshot (taking one drains the recorder).
pub(crate) struct Recorded(Vec<(CompositeKey, DebugValue)>);

impl Recorded {
    pub(crate) fn since_last(snapshotter: &Snapshotter) -> Self {
        let all = snapshotter.snapshot().into_vec();
        Self(
            all.into_iter()
                .map(|(key, _, _, value)| (key, value))
                .collect(),
        )
    }

    /// The value of the metric `name` whose labels include all of `labels`.
    fn value(&self, name: &str, labels: &[(&str, &str)]) -> Option<&DebugValue> {
        self.0
            .iter()
            .find(|(key, _)| {
                let key = key.key();
                key.name() == name
                    && labels
                        .iter()
                        .all(|(k, v)| key.labels().any(|l| l.key() == *k && l.value() == *v))
            })
            .map(|(_, value)| value)
    }

    pub(crate) fn counter(&self, name: &str, labels: &[(&str, &str)]) -> u64 {
        match self.value(name, labels) {
            Some(DebugValue::Counter(n)) => *n,
            None => 0,
            other => panic!("{name} is not a counter: {other:?}"),
        }
    }

    fn gauge(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        match self.value(name, labels) {
            Some(DebugValue::Gauge(v)) => v.into_inner(),
            other => panic!("{name} is not a set gauge: {other:?}"),
        }
    }
}

// The local recorder is per thread: the test runs on tokio's current-thread runtime, so
// the simulator, the panel client and the reconciler all record into it.
#[tokio::test(flavor = "current_thread")]
async fn calls_breakers_and_passes_are_measured_and_shown_in_health() {
    let recorder = DebuggingRecorder::new();
    let metrics = recorder.snapshotter();
    let _local = metrics::set_default_local_recorder(&recorder);
    let base = Base::new().await;
    let health = base.panels.health();
    assert_eq!(health.len(), 1);
    assert_eq!(health[0].location, "ams");
    assert_eq!(health[0].breaker, BreakerState::Closed);
    assert_eq!(
        (health[0].last_success_at, health[0].last_reconcile_at),
        (None, None)
    );

    let (key, _) = base.request(7).await;
    base.worker.sync_key(key, None).await.unwrap();
    let recorded = Recorded::since_last(&metrics);
    let ok = [
        ("location", "ams"),
        ("operation", "add_clients"),
        ("outcome", "ok"),
    ];
    assert_eq!(recorded.counter("keyledger_panel_calls_total", &ok), 1);
    let listed = [("operation", "list_clients"), ("outcome", "ok")];
    // The look before the write and the read-back after it.
    assert_eq!(recorded.counter("keyledger_panel_calls_total", &listed), 2);
    let durations = recorded.value(
        "keyledger_panel_call_duration_seconds",
        &[("operation", "add_clients")],
    );
    assert!(
        matches!(durations, Some(DebugValue::Histogram(samples)) if samples.len() == 1),
        "{durations:?}"
    );
    assert!(base.panels.health()[0].last_success_at.is_some());

    // A pass that finds and repairs one client deleted behind our back.
    assert!(base.sim.handle().remove_client("tg7-ams"));
    let reconciler = Reconciler::new(base.db.store.clone(), base.panels.clone());
    reconciler.reconcile_location("ams", false).await.unwrap();
    let recorded = Recorded::since_last(&metrics);
    let missing = [("location", "ams"), ("kind", "missing_on_panel")];
    assert_eq!(
        recorded.counter("keyledger_reconcile_drift_found_total", &missing),
        1
    );
    assert_eq!(
        recorded.counter("keyledger_reconcile_drift_repaired_total", &missing),
        1
    );
    let last_pass = recorded.gauge(
        "keyledger_reconcile_last_pass_timestamp_seconds",
        &[("location", "ams")],
    );
    assert!(last_pass > 1.7e9, "{last_pass}");
    let health = base.panels.health();
    assert_eq!(health[0].drift_found_last_pass, Some(1));
    let passed_at = health[0].last_reconcile_at.unwrap();
    assert_eq!(health[0].last_reconcile_error, None);
    let serialised = serde_json::to_value(&health[0]).unwrap();
    assert_eq!(serialised["breaker"], "closed");

    // Probes: a good one, and a slow panel cut short.
    let probes = base.panels.probe(Duration::from_secs(2)).await;
    assert!(probes[0].outcome.is_ok(), "{probes:?}");
    base.sim
        .handle()
        .update_faults(|f| f.latency = Duration::from_millis(400));
    let probes = base.panels.probe(Duration::from_millis(50)).await;
    assert!(
        matches!(probes[0].outcome, Err(PanelError::Timeout { .. })),
        "{probes:?}"
    );
    base.sim
        .handle()
        .update_faults(|f| f.latency = Duration::ZERO);

    // The panel goes down: the breaker opens, the pass fails, health says both.
    base.sim.go_down(DownMode::Refused).await.unwrap();
    assert!(reconciler.reconcile_location("ams", false).await.is_err());
    let panel = base.panels.get("ams").unwrap().panel();
    assert!(panel.list_clients().await.is_err());
    let recorded = Recorded::since_last(&metrics);
    assert_eq!(
        recorded.gauge("keyledger_breaker_open", &[("location", "ams")]),
        1.0
    );
    let refused = [("operation", "list_clients"), ("outcome", "breaker_open")];
    assert!(recorded.counter("keyledger_panel_calls_total", &refused) >= 1);
    // The pass lists with the traffic rows.
    let failed = [("operation", "list_traffic"), ("outcome", "error")];
    assert!(recorded.counter("keyledger_panel_calls_total", &failed) >= 1);
    let health = base.panels.health();
    assert_ne!(health[0].breaker, BreakerState::Closed);
    assert_eq!(
        health[0].last_reconcile_at,
        Some(passed_at),
        "the last completed pass"
    );
    let error = health[0].last_reconcile_error.as_deref().unwrap();
    assert!(error.contains("cannot reach the panel"), "{error}");
}
