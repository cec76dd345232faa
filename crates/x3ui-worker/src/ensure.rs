//! Idempotent operations on one panel: "make it so", whatever the panel holds now.
//! Every write is serialised per panel, followed by a read-back, retried with backoff
//! when transient, and guarded by the panel's circuit breaker.

use std::future::Future;
use std::sync::{Arc, PoisonError};
use std::time::{Duration, Instant};

use sqlx::PgPool;
use time::OffsetDateTime;
use tokio::sync::Mutex;

use crate::config::PanelConfig;
use crate::error::{Operation, PanelError, Refusal};
use crate::model::{ClientSpec, Inbound, InboundClients, PanelClient, random_sub_id};
use crate::panel::{AnyPanelApi, PanelApi};
use crate::resilience::{BreakerState, CircuitBreaker, ResiliencePolicy};
use crate::session_lock::SessionLock;

/// What [`Panel::ensure_client`] had to do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ensured {
    Unchanged,
    Added,
    Updated,
}

/// What [`Panel::ensure_client_absent`] had to do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Absence {
    AlreadyGone,
    Deleted,
    /// The client was the inbound's last one, which the panel will not delete; it is
    /// disabled instead (or already was). Calling again once the inbound has another
    /// client deletes it.
    Disabled,
}

/// The advisory lock key of a location's write turn, shared by every process.
fn write_turn_key(location: &str) -> String {
    format!("keyledger.panel-writes/{location}")
}

/// A turn to write to one panel: this process's lock and, when shared, every process's.
struct WriteTurn<'a> {
    _local: tokio::sync::MutexGuard<'a, ()>,
    shared: Option<SessionLock>,
}

impl WriteTurn<'_> {
    /// Hands the turn on.
    async fn end(self) {
        if let Some(shared) = self.shared {
            shared.release().await;
        }
    }
}

/// One panel (location) with its write lock, breaker and retry policy.
#[derive(Debug)]
pub struct Panel<A = AnyPanelApi> {
    api: A,
    policy: ResiliencePolicy,
    breaker: CircuitBreaker,
    /// The panel's read-modify-write of an inbound takes no lock (docs/panel.md "Data"):
    /// two of our writes at once could lose one, so we never send two at once.
    writes: Mutex<()>,
    /// Other processes (scaled-out workers, a reconcile run) write to the same panel, and
    /// the panel loses their concurrent writes just the same: with a database to share,
    /// every process takes its turn through a PostgreSQL advisory lock per location.
    shared_turns: std::sync::OnceLock<PgPool>,
    /// The inbound (port, remark, settings) as last listed: what links are made of.
    inbound: std::sync::Mutex<Option<Arc<Inbound>>>,
    last_success: std::sync::Mutex<Option<OffsetDateTime>>,
}

impl Panel<AnyPanelApi> {
    /// A panel client for `config`, speaking the configured API flavour.
    pub fn connect(config: PanelConfig, policy: ResiliencePolicy) -> Result<Self, PanelError> {
        Ok(Self::new(AnyPanelApi::new(config)?, policy))
    }
}

impl<A: PanelApi> Panel<A> {
    pub fn new(api: A, policy: ResiliencePolicy) -> Self {
        Self {
            breaker: CircuitBreaker::new(policy.failure_threshold, policy.open_for),
            api,
            policy,
            writes: Mutex::new(()),
            shared_turns: std::sync::OnceLock::new(),
            inbound: std::sync::Mutex::new(None),
            last_success: std::sync::Mutex::new(None),
        }
    }

    pub fn api(&self) -> &A {
        &self.api
    }

    pub fn location(&self) -> &str {
        self.api.location()
    }

    /// Serialises this panel's writes with every other process using `pool`'s database
    /// (the first pool given is kept).
    pub fn share_write_turns(&self, pool: &PgPool) {
        let _ = self.shared_turns.set(pool.clone());
    }

    /// This process's turn to write, and, when shared, every process's.
    async fn write_turn(&self) -> Result<WriteTurn<'_>, PanelError> {
        let local = self.writes.lock().await;
        let Some(pool) = self.shared_turns.get() else {
            return Ok(WriteTurn {
                _local: local,
                shared: None,
            });
        };
        let shared = SessionLock::acquire(pool, write_turn_key(self.location()))
            .await
            .map_err(|source| PanelError::WriteTurn {
                location: self.location().to_owned(),
                source,
            })?;
        Ok(WriteTurn {
            _local: local,
            shared: Some(shared),
        })
    }

    pub fn breaker_state(&self) -> BreakerState {
        self.breaker.state()
    }

    /// The inbound and its clients, as the panel holds them now.
    pub async fn list_clients(&self) -> Result<InboundClients, PanelError> {
        self.guarded(Operation::ListClients, || self.list()).await
    }

    /// The inbound and its clients with their traffic rows (`clientStats`): what usage
    /// and the panel's own decisions are read from.
    pub async fn list_with_traffic(&self) -> Result<InboundClients, PanelError> {
        self.guarded(Operation::ListTraffic, || self.list_with_traffic_once())
            .await
    }

    /// The inbound as last seen by any list of this panel (every ensure and every
    /// reconcile pass lists it), or `None` before the first.
    pub fn cached_inbound(&self) -> Option<Arc<Inbound>> {
        self.inbound
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// The inbound's settings: cached, or read from the panel when missing.
    pub async fn inbound(&self) -> Result<Arc<Inbound>, PanelError> {
        if let Some(inbound) = self.cached_inbound() {
            return Ok(inbound);
        }
        let inbound = Arc::new(
            self.guarded(Operation::GetInbound, || {
                self.observe(Operation::GetInbound, self.api.get_inbound())
            })
            .await?,
        );
        self.remember(&inbound);
        Ok(inbound)
    }

    /// One list call; keeps the inbound for links.
    async fn list(&self) -> Result<InboundClients, PanelError> {
        let listed = self
            .observe(Operation::ListClients, self.api.list_clients())
            .await?;
        self.remember(&listed.inbound);
        Ok(listed)
    }

    fn remember(&self, inbound: &Inbound) {
        let mut cached = self.inbound.lock().unwrap_or_else(PoisonError::into_inner);
        // Most lists show the same inbound: keep the Arc that readers may share.
        if cached.as_deref() != Some(inbound) {
            *cached = Some(Arc::new(inbound.clone()));
        }
    }

    /// Makes the panel hold a client with exactly `spec`'s settings.
    pub async fn ensure_client(&self, spec: &ClientSpec) -> Result<Ensured, PanelError> {
        let mut outcomes = self.ensure_clients(std::slice::from_ref(spec)).await?;
        Ok(outcomes.pop().unwrap_or(Ensured::Unchanged))
    }

    /// [`Panel::ensure_client`] for many at once: every missing client goes into one
    /// addClient request. Outcomes are in the order of `specs`.
    pub async fn ensure_clients(&self, specs: &[ClientSpec]) -> Result<Vec<Ensured>, PanelError> {
        let turn = self.write_turn().await?;
        // Kept across retries: an add whose read-back failed still was an add, even
        // though the retry then finds the client in place.
        let outcomes = std::sync::Mutex::new(vec![Ensured::Unchanged; specs.len()]);
        let written = self
            .guarded(Operation::AddClients, || self.ensure_once(specs, &outcomes))
            .await;
        turn.end().await;
        written?;
        Ok(outcomes
            .into_inner()
            .unwrap_or_else(std::sync::PoisonError::into_inner))
    }

    /// Brings a client back after a quota change: with `reset_usage`, first sets its
    /// counters to zero (so the panel's job does not disable it again at once), then makes
    /// the panel hold `spec`. Unlike [`Panel::ensure_client`], a client whose settings
    /// already match but whose traffic row the panel switched off is written again, since
    /// only an update puts it back into Xray (docs/panel.md "Traffic, limits and the
    /// panel's own decisions").
    pub async fn restore_client(
        &self,
        spec: &ClientSpec,
        reset_usage: bool,
    ) -> Result<Ensured, PanelError> {
        let turn = self.write_turn().await?;
        let outcomes = std::sync::Mutex::new(vec![Ensured::Unchanged]);
        let specs = std::slice::from_ref(spec);
        let written = self
            .guarded(Operation::UpdateClient, || async {
                if reset_usage {
                    self.reset_usage(&spec.email).await?;
                }
                self.ensure_with(specs, &outcomes, Wake::RowDisabled).await
            })
            .await;
        turn.end().await;
        written?;
        let mut outcomes = outcomes
            .into_inner()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        Ok(outcomes.pop().unwrap_or(Ensured::Unchanged))
    }

    /// `resetClientTraffic`; a client the panel does not know has no counters to reset
    /// (the ensure that follows adds it, with fresh ones).
    async fn reset_usage(&self, email: &str) -> Result<(), PanelError> {
        match self
            .observe(
                Operation::ResetTraffic,
                self.api.reset_client_traffic(email),
            )
            .await
        {
            Err(e)
                if matches!(
                    e.refusal(),
                    Some(Refusal::ClientNotFound | Refusal::InboundNotFound)
                ) =>
            {
                tracing::debug!(location = %self.location(), %email, error = %e, "no traffic row to reset");
                Ok(())
            }
            other => other,
        }
    }

    /// Makes the panel hold no client with this email. An unknown client is already gone;
    /// the inbound's last client is disabled instead, because the panel refuses to
    /// delete it.
    pub async fn ensure_client_absent(&self, email: &str) -> Result<Absence, PanelError> {
        let turn = self.write_turn().await?;
        let absence = self
            .guarded(Operation::DeleteClient, || self.absent_once(email))
            .await;
        turn.end().await;
        absence
    }

    async fn ensure_once(
        &self,
        specs: &[ClientSpec],
        outcomes: &std::sync::Mutex<Vec<Ensured>>,
    ) -> Result<(), PanelError> {
        self.ensure_with(specs, outcomes, Wake::SettingsOnly).await
    }

    async fn ensure_with(
        &self,
        specs: &[ClientSpec],
        outcomes: &std::sync::Mutex<Vec<Ensured>>,
        wake: Wake,
    ) -> Result<(), PanelError> {
        let record = |i: usize, outcome| {
            outcomes
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)[i] = outcome;
        };
        let mut snapshot = match wake {
            Wake::SettingsOnly => self.list().await?,
            Wake::RowDisabled => self.list_with_traffic_once().await?,
        };
        // A duplicate email on add means someone added it since we looked: look again,
        // then it is an update (or nothing); so at most one extra round.
        for round in 0..2 {
            let mut missing = Vec::new();
            for (i, spec) in specs.iter().enumerate() {
                match snapshot.by_email(&spec.email) {
                    // A client that should be on counts as on only when its row is too.
                    Some(observed)
                        if spec.matches(observed)
                            && (!spec.enable || snapshot.effectively_enabled(observed)) => {}
                    Some(observed) => {
                        let observed = observed.clone();
                        self.update(&observed, &with_sub_id(spec.apply_to(Some(&observed))))
                            .await?;
                        record(i, Ensured::Updated);
                    }
                    None => missing.push(i),
                }
            }
            let new: Vec<PanelClient> = missing
                .iter()
                .map(|&i| with_sub_id(specs[i].apply_to(None)))
                .collect();
            if new.is_empty() {
                break;
            }
            match self
                .observe(Operation::AddClients, self.api.add_clients(&new))
                .await
            {
                Ok(()) => {
                    for &i in &missing {
                        record(i, Ensured::Added);
                    }
                    break;
                }
                Err(e) if e.refusal() == Some(Refusal::DuplicateEmail) && round == 0 => {
                    tracing::debug!(location = %self.location(), error = %e, "duplicate email on add; looking again");
                    snapshot = self.list().await?;
                }
                Err(e) if e.refusal() == Some(Refusal::DuplicateEmail) => {
                    // Still missing from our inbound after a fresh look: another inbound
                    // holds it.
                    let email = clashing_email(&e)
                        .or_else(|| missing.first().map(|&i| specs[i].email.clone()))
                        .unwrap_or_default();
                    return Err(self.taken_elsewhere(&email));
                }
                Err(e) => return Err(e),
            }
        }
        let after = self.list().await?;
        for spec in specs {
            match after.by_email(&spec.email) {
                Some(observed) if spec.matches(observed) => {}
                Some(observed) => {
                    return Err(self.mismatch(
                        &spec.email,
                        format!("differs in {:?}", spec.differences(observed)),
                    ));
                }
                None => return Err(self.mismatch(&spec.email, "missing after the write".into())),
            }
        }
        Ok(())
    }

    /// One traffic list, measured; keeps the inbound for links.
    async fn list_with_traffic_once(&self) -> Result<InboundClients, PanelError> {
        let listed = self
            .observe(Operation::ListTraffic, self.api.list_with_traffic())
            .await?;
        self.remember(&listed.inbound);
        Ok(listed)
    }

    async fn update(&self, current: &PanelClient, new: &PanelClient) -> Result<(), PanelError> {
        match self
            .observe(
                Operation::UpdateClient,
                self.api.update_client(current, new),
            )
            .await
        {
            // It vanished between our read and our write: a retry reads afresh and adds.
            Err(e) if e.refusal() == Some(Refusal::ClientNotFound) => {
                Err(self.mismatch(&current.email, "client vanished during the update".into()))
            }
            other => other,
        }
    }

    async fn absent_once(&self, email: &str) -> Result<Absence, PanelError> {
        let snapshot = self.list().await?;
        let Some(observed) = snapshot.by_email(email).cloned() else {
            return Ok(Absence::AlreadyGone);
        };
        let outcome = match self
            .observe(Operation::DeleteClient, self.api.delete_client(&observed))
            .await
        {
            Ok(()) => Absence::Deleted,
            // Older panels answer success for an unknown id, newer ones this: both gone.
            Err(e) if e.refusal() == Some(Refusal::ClientNotFound) => Absence::AlreadyGone,
            Err(e) if e.refusal() == Some(Refusal::LastClient) => {
                if observed.enable {
                    let mut disabled = observed.clone();
                    disabled.enable = false;
                    self.update(&observed, &disabled).await?;
                }
                Absence::Disabled
            }
            Err(e) => return Err(e),
        };
        let after = self.list().await?;
        match (outcome, after.by_email(email)) {
            (Absence::Disabled, Some(c)) if !c.enable => Ok(outcome),
            (Absence::Disabled, _) => {
                Err(self.mismatch(email, "still enabled after disabling".into()))
            }
            (_, None) => Ok(outcome),
            (_, Some(_)) => Err(self.mismatch(email, "still present after deleting".into())),
        }
    }

    /// Runs `call` behind the breaker, retrying transient failures with backoff.
    /// `operation` names the whole step for the `breaker_open` outcome.
    async fn guarded<T, F, Fut>(&self, operation: Operation, mut call: F) -> Result<T, PanelError>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = Result<T, PanelError>>,
    {
        let mut retry = 0;
        loop {
            let permit = self.breaker.acquire().map_err(|retry_in| {
                self.count_call(operation, "breaker_open");
                self.open(retry_in)
            })?;
            let error = match call().await {
                Ok(value) => {
                    permit.success();
                    self.publish_breaker();
                    return Ok(value);
                }
                Err(error) => error,
            };
            if error.is_panel_failure() {
                permit.failure();
            } else {
                // A refusal or a lost write: the panel itself answered sensibly.
                permit.success();
            }
            self.publish_breaker();
            // An open breaker ends the retries with the failure that opened it, which says
            // more than "circuit open" would.
            if !error.is_transient()
                || retry + 1 >= self.policy.max_attempts
                || self.breaker.state() == BreakerState::Open
            {
                return Err(error);
            }
            let pause = self.policy.backoff(retry);
            tracing::debug!(location = %self.location(), %error, ?pause, retry, "retrying panel call");
            tokio::time::sleep(pause).await;
            retry += 1;
        }
    }

    /// One call to the panel API, measured: its duration, its outcome, and the time of
    /// the panel's last good answer for the health report.
    async fn observe<T>(
        &self,
        operation: Operation,
        call: impl Future<Output = Result<T, PanelError>>,
    ) -> Result<T, PanelError> {
        let started = Instant::now();
        let result = call.await;
        metrics::histogram!(
            "keyledger_panel_call_duration_seconds",
            "location" => self.location().to_owned(),
            "operation" => operation.label(),
        )
        .record(started.elapsed().as_secs_f64());
        let outcome = match &result {
            Ok(_) => {
                *self
                    .last_success
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner) = Some(OffsetDateTime::now_utc());
                "ok"
            }
            Err(PanelError::Timeout { .. }) => "timeout",
            // Not sent at all: the panel offered an id or email we would not address.
            Err(PanelError::Unaddressable { .. }) => "unaddressable",
            Err(_) => "error",
        };
        self.count_call(operation, outcome);
        result
    }

    fn count_call(&self, operation: Operation, outcome: &'static str) {
        metrics::counter!(
            "keyledger_panel_calls_total",
            "location" => self.location().to_owned(),
            "operation" => operation.label(),
            "outcome" => outcome,
        )
        .increment(1);
    }

    /// `keyledger_breaker_open`: 1 from the moment the breaker opens until a probe
    /// closes it again (half-open counts as open: calls are still held back).
    fn publish_breaker(&self) {
        let open = self.breaker.state() != BreakerState::Closed;
        metrics::gauge!("keyledger_breaker_open", "location" => self.location().to_owned())
            .set(if open { 1.0 } else { 0.0 });
    }

    /// When the panel last answered a call successfully.
    pub fn last_success(&self) -> Option<OffsetDateTime> {
        *self
            .last_success
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    /// A cheap readiness check: one read of the inbound (logging in first if there is no
    /// session), bounded by `timeout`. It bypasses the breaker and its retries — it
    /// observes the panel, it does not protect it — and changes nothing on the panel.
    /// Returns how long the panel took.
    pub async fn probe(&self, timeout: Duration) -> Result<Duration, PanelError> {
        let started = Instant::now();
        let read = self.observe(Operation::GetInbound, self.api.get_inbound());
        match tokio::time::timeout(timeout, read).await {
            Ok(Ok(inbound)) => {
                self.remember(&inbound);
                Ok(started.elapsed())
            }
            Ok(Err(error)) => Err(error),
            Err(_) => {
                self.count_call(Operation::GetInbound, "timeout");
                Err(PanelError::Timeout {
                    location: self.location().to_owned(),
                    operation: Operation::GetInbound,
                    after: timeout,
                })
            }
        }
    }

    fn open(&self, retry_in: Duration) -> PanelError {
        PanelError::CircuitOpen {
            location: self.location().to_owned(),
            retry_in,
        }
    }

    fn mismatch(&self, email: &str, detail: String) -> PanelError {
        PanelError::ReadBackMismatch {
            location: self.location().to_owned(),
            email: email.to_owned(),
            detail,
        }
    }

    fn taken_elsewhere(&self, email: &str) -> PanelError {
        PanelError::EmailTakenElsewhere {
            location: self.location().to_owned(),
            email: email.to_owned(),
            inbound_id: self.api.inbound_id(),
        }
    }
}

/// Which clients an ensure writes although their settings match.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Wake {
    /// None: the settings entry is all that counts.
    SettingsOnly,
    /// Also a client that should be on but whose traffic row the panel switched off.
    RowDisabled,
}

/// Every client we write carries a random `subId`: a new one gets a fresh id, an existing
/// one keeps its own (a rotation included), and one found without any gets one. The
/// panel's subscription server serves a client's links under its `subId`, so a guessable or
/// shared one would hand our credentials out (docs/panel.md "subId").
fn with_sub_id(mut client: PanelClient) -> PanelClient {
    if client.sub_id.trim().is_empty() {
        client.sub_id = random_sub_id();
    }
    client
}

/// The email in "Duplicate email: <email>\n" or "email already in use: <email>\n".
fn clashing_email(error: &PanelError) -> Option<String> {
    let PanelError::Refused { msg, .. } = error else {
        return None;
    };
    let lower = msg.to_ascii_lowercase();
    let start = ["duplicate email:", "email already in use:"]
        .iter()
        .find_map(|marker| lower.find(marker).map(|at| at + marker.len()))?;
    let rest = msg.get(start..)?;
    let email = rest.split([')', '\n']).next()?.trim();
    (!email.is_empty()).then(|| email.to_owned())
}
