//! The pipeline builder: the one place keyledger's roles are started and wired together.
//!
//! `serve` builds a [`Pipeline`] from the configuration ([`Pipeline::from_config`]); the
//! lab's demo and benchmarks and the tests of every crate build one by hand, with a test
//! database, a test vhost, simulated panels and a fake Bot API, and start the same roles
//! the same way. What may differ between them is stated in the builder's methods (faster
//! retries for tests, no broker policies on a scratch vhost), not in a second copy of the
//! wiring.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use broker::management::vhost_of;
use broker::{ConsumerConfig, ConsumerStats, Management, Relay, RelayConfig};
use domain::Location;
use eventstore::{EventStore, KeyLedger};
use scheduler::Scheduler;
use tokio_util::sync::CancellationToken;
use x3ui_worker::Panels;

use crate::Failure;
use crate::Role;
use crate::config::{Config, ReconcileSettings};

/// How often the scheduler looks for keys whose time has passed.
const SCHEDULER_TICK: Duration = Duration::from_secs(5);

/// What the `api` role needs beyond the store: where to listen and whom to admit.
pub struct ApiSettings {
    pub listen: SocketAddr,
    pub tokens: api::Tokens,
}

/// The redelivery timing of the worker's consumer; production uses the worker's own
/// defaults, tests shorten them so a failure is retried in milliseconds.
#[derive(Debug, Clone, Copy)]
pub struct WorkerRetry {
    pub base: Duration,
    pub max: Duration,
    pub max_deliveries: i64,
}

/// The roles of one process, wired to one event store and one broker.
pub struct Pipeline {
    store: EventStore,
    amqp_url: String,
    locations: Vec<Location>,
    panels: Option<Arc<Panels>>,
    api: Option<ApiSettings>,
    bot: Option<bot::BotConfig>,
    reconcile: ReconcileSettings,
    periodic_reconcile: bool,
    worker_retry: Option<WorkerRetry>,
    scheduler_tick: Duration,
    broker_policies: bool,
    /// `RABBITMQ_MANAGEMENT_URL`; `None`: derived from the AMQP URL.
    management_url: Option<url::Url>,
    notary: Option<crate::notary::Notary>,
    sub: Option<SubRole>,
    subscription_urls: Option<domain::SubscriptionUrls>,
}

/// What the `sub` role needs: where to listen and how to answer.
#[derive(Debug, Clone)]
pub struct SubRole {
    pub listen: SocketAddr,
    pub settings: subscription::SubSettings,
}

impl Pipeline {
    /// Roles on `store` (already migrated) and the broker at `amqp_url`, with no location,
    /// no API listener and no bot until the builder methods add them.
    pub fn new(store: EventStore, amqp_url: impl Into<String>) -> Self {
        Self {
            store,
            amqp_url: amqp_url.into(),
            locations: Vec::new(),
            panels: None,
            api: None,
            bot: None,
            reconcile: ReconcileSettings::default(),
            periodic_reconcile: true,
            worker_retry: None,
            scheduler_tick: SCHEDULER_TICK,
            broker_policies: false,
            management_url: None,
            notary: None,
            sub: None,
            subscription_urls: None,
        }
    }

    /// Everything `serve` runs, from the configuration.
    pub fn from_config(config: &Config, store: &EventStore) -> Result<Self, Failure> {
        let locations = config
            .locations
            .iter()
            .map(|location| Location {
                id: location.id.clone(),
                name: location.name.clone(),
            })
            .collect();
        let mut pipeline = Self::new(store.clone(), config.amqp_url.as_str())
            .with_locations(locations)
            .with_api(ApiSettings {
                listen: config.http_addr,
                tokens: api::Tokens::new(
                    config.admin_token.as_ref(),
                    config.service_token.as_ref(),
                    config.auditor_token.as_ref(),
                ),
            })
            .with_reconcile(config.reconcile)
            .with_broker_policies();
        if let Some(url) = &config.management_url {
            pipeline = pipeline.with_management_url(url.url().clone());
        }
        if !config.locations.is_empty() {
            pipeline = pipeline.with_panels(crate::panels::panels(config)?);
        }
        if let Some(key) = crate::notary::key_from_config(config)? {
            let settings = &config.notary;
            pipeline = pipeline.with_notary(key, settings.interval, settings.file.clone());
        }
        if let Some(urls) = &config.subscription_urls {
            let mut settings =
                subscription::SubSettings::new(urls.clone(), pipeline.locations.clone());
            settings.web_page_url = config.sub_web_page_url.clone();
            settings.support_url = config.sub_support_url.clone();
            settings.trusted_proxies = config.sub_trusted_proxies.clone();
            pipeline = pipeline.with_sub(SubRole {
                listen: config.sub_addr,
                settings,
            });
        }
        if let Some(token) = &config.telegram_bot_token {
            let bot = bot::BotConfig::new(
                token.clone(),
                config.telegram_api_url.clone(),
                pipeline.locations.clone(),
            )
            .with_subscription_urls(config.subscription_urls.clone());
            let bot = bot::BotConfig {
                limits: config.user_limits,
                ingress: config.bot_ingress.clone(),
                request_policy: config.request_policy.clone(),
                ..bot
            };
            pipeline = pipeline.with_bot(bot);
        }
        Ok(pipeline)
    }

    pub fn with_locations(mut self, locations: Vec<Location>) -> Self {
        self.locations = locations;
        self
    }

    /// The panels the worker writes to; the API's `/readyz` and `/v1/locations` read the
    /// same ones, so they see the breakers the worker trips.
    pub fn with_panels(mut self, panels: Arc<Panels>) -> Self {
        self.panels = Some(panels);
        self
    }

    pub fn with_api(mut self, api: ApiSettings) -> Self {
        self.api = Some(api);
        self
    }

    /// The `sub` role's listener and settings; the API shows URLs with the same base and
    /// secret.
    pub fn with_sub(mut self, sub: SubRole) -> Self {
        self.subscription_urls = Some(sub.settings.urls.clone());
        self.sub = Some(sub);
        self
    }

    pub fn with_bot(mut self, bot: bot::BotConfig) -> Self {
        self.bot = Some(bot);
        self
    }

    pub fn with_reconcile(mut self, reconcile: ReconcileSettings) -> Self {
        self.reconcile = reconcile;
        self
    }

    /// The worker role without its periodic reconcile passes (the first one runs at
    /// start): for tests of the worker alone, where a pass would interleave its own panel
    /// calls, and trip the same breaker, at moments the test does not choose.
    pub fn without_periodic_reconcile(mut self) -> Self {
        self.periodic_reconcile = false;
        self
    }

    pub fn with_worker_retry(mut self, retry: WorkerRetry) -> Self {
        self.worker_retry = Some(retry);
        self
    }

    pub fn with_scheduler_tick(mut self, tick: Duration) -> Self {
        self.scheduler_tick = tick;
        self
    }

    /// The notary role signs checkpoints with `key` every `interval` (and at start),
    /// appending each to `file` too when one is named.
    pub fn with_notary(
        mut self,
        key: eventstore::NotaryKey,
        interval: Duration,
        file: Option<std::path::PathBuf>,
    ) -> Self {
        self.notary = Some(crate::notary::Notary::new(
            self.store.clone(),
            key,
            interval,
            file,
        ));
        self
    }

    /// Sets the broker's policies through its management API before starting.
    pub fn with_broker_policies(mut self) -> Self {
        self.broker_policies = true;
        self
    }

    /// Reaches the management API at `url` instead of the one derived from the AMQP URL
    /// (`RABBITMQ_MANAGEMENT_URL`).
    pub fn with_management_url(mut self, url: url::Url) -> Self {
        self.management_url = Some(url);
        self
    }

    /// Starts `roles` in this process.
    pub async fn start(self, roles: &[Role]) -> Result<RunningRoles, Failure> {
        if self.broker_policies && roles.iter().any(|role| role.uses_broker()) {
            apply_broker_policies(&self.amqp_url, self.management_url.as_ref()).await;
        }
        // One recorder for every role, before any of them records.
        let metrics = api::metrics::recorder();
        let mut running = RunningRoles {
            tasks: tokio::task::JoinSet::new(),
            stop: CancellationToken::new(),
            http_addr: None,
            sub_addr: None,
            worker_stats: None,
        };
        for role in roles {
            match role {
                Role::Api => self.start_api(&mut running, metrics.clone()).await?,
                Role::Relay => {
                    let relay = Relay::new(self.store.clone(), RelayConfig::new(&self.amqp_url));
                    running.tasks.spawn(relay.run(running.stop.clone()));
                }
                Role::Projector => {
                    let (store, url) = (self.store.clone(), self.amqp_url.clone());
                    let stop = running.stop.clone();
                    running
                        .tasks
                        .spawn(async move { projector::run_projector(store, &url, stop).await });
                }
                Role::Worker => self.start_worker(&mut running),
                Role::Sub => self.start_sub(&mut running).await?,
                Role::Bot => self.start_bot(&mut running),
                Role::Scheduler => {
                    let scheduler =
                        Scheduler::new(KeyLedger::new(self.store.clone()), self.scheduler_tick);
                    running.tasks.spawn(scheduler.run(running.stop.clone()));
                }
                Role::Notary => match self.notary.clone() {
                    Some(notary) => {
                        running.tasks.spawn(notary.run(running.stop.clone()));
                    }
                    None => tracing::info!("notary role off: KEYLEDGER_NOTARY_KEY not set"),
                },
            }
        }
        Ok(running)
    }

    async fn start_api(
        &self,
        running: &mut RunningRoles,
        metrics: metrics_exporter_prometheus::PrometheusHandle,
    ) -> Result<(), Failure> {
        let Some(settings) = &self.api else {
            tracing::warn!("api role not started: no listen address was given");
            return Ok(());
        };
        let listener = tokio::net::TcpListener::bind(settings.listen)
            .await
            .map_err(|e| {
                Failure::Runtime(anyhow::anyhow!(
                    "cannot listen on {} (KEYLEDGER_HTTP_ADDR): {e}",
                    settings.listen
                ))
            })?;
        running.http_addr = listener.local_addr().ok();
        let config = api::ApiConfig {
            tokens: settings.tokens.clone(),
            locations: self.locations.clone(),
            amqp_url: Some(self.amqp_url.clone()),
            subscription_urls: self.subscription_urls.clone(),
            panels: self.panels.clone().map(|panels| {
                Arc::new(crate::panels::PanelsStatus::new(panels)) as Arc<dyn api::PanelStatus>
            }),
        };
        let console = console::router(self.store.clone(), config.clone());
        let router = api::router(self.store.clone(), config, metrics).merge(console);
        let stop = running.stop.clone();
        running.tasks.spawn(async move {
            if let Err(error) = api::serve(listener, router, stop).await {
                tracing::error!(%error, "HTTP API stopped");
            }
        });
        running.tasks.spawn(api::metrics::sample_backlog(
            self.store.clone(),
            Some(self.amqp_url.clone()),
            running.stop.clone(),
        ));
        Ok(())
    }

    async fn start_sub(&self, running: &mut RunningRoles) -> Result<(), Failure> {
        let Some(sub) = &self.sub else {
            tracing::info!(
                "sub role off: KEYLEDGER_SUB_PUBLIC_URL and KEYLEDGER_SUB_SECRET not set"
            );
            return Ok(());
        };
        let listener = tokio::net::TcpListener::bind(sub.listen)
            .await
            .map_err(|e| {
                Failure::Runtime(anyhow::anyhow!(
                    "cannot listen on {} (KEYLEDGER_SUB_ADDR): {e}",
                    sub.listen
                ))
            })?;
        running.sub_addr = listener.local_addr().ok();
        let stop = running.stop.clone();
        let router = subscription::router(self.store.clone(), sub.settings.clone(), stop.clone());
        running.tasks.spawn(async move {
            if let Err(error) = subscription::serve(listener, router, stop).await {
                tracing::error!(%error, "subscription server stopped");
            }
        });
        Ok(())
    }

    fn start_worker(&self, running: &mut RunningRoles) {
        let Some(panels) = self.panels.clone() else {
            tracing::warn!("worker role not started: no locations are configured");
            return;
        };
        let mut consumer = x3ui_worker::consumer_config(&self.amqp_url);
        if let Some(retry) = self.worker_retry {
            consumer = ConsumerConfig {
                retry_base: retry.base,
                retry_max: retry.max,
                max_deliveries: retry.max_deliveries,
                ..consumer
            };
        }
        let worker = x3ui_worker::worker_consumer(self.store.clone(), consumer, panels.clone());
        running.worker_stats = Some(worker.stats());
        running.tasks.spawn(worker.run(running.stop.clone()));
        if !self.periodic_reconcile {
            return;
        }
        let reconciler = x3ui_worker::Reconciler::new(self.store.clone(), panels)
            .with_in_flight_grace(self.reconcile.stuck_after)
            .with_usage_interval(self.reconcile.usage_interval);
        running
            .tasks
            .spawn(reconciler.run(self.reconcile.interval, running.stop.clone()));
    }

    fn start_bot(&self, running: &mut RunningRoles) {
        let Some(config) = self.bot.clone() else {
            tracing::info!("bot role off: TELEGRAM_BOT_TOKEN not set");
            return;
        };
        let (store, url) = (self.store.clone(), self.amqp_url.clone());
        let stop = running.stop.clone();
        running.tasks.spawn(async move {
            if let Err(error) = bot::run_bot(store, &url, config, stop).await {
                tracing::error!(%error, "bot role could not start");
            }
        });
    }
}

/// Roles started by [`Pipeline::start`], until [`RunningRoles::stop`].
pub struct RunningRoles {
    tasks: tokio::task::JoinSet<()>,
    stop: CancellationToken,
    /// Where the API listens, when the `api` role runs.
    pub http_addr: Option<SocketAddr>,
    /// Where the subscription server listens, when the `sub` role runs.
    pub sub_addr: Option<SocketAddr>,
    /// The worker's consumer counters, when the `worker` role runs.
    pub worker_stats: Option<Arc<ConsumerStats>>,
}

impl RunningRoles {
    /// Stops taking work and waits for every role to finish what it has in hand.
    pub async fn stop(mut self) {
        self.stop.cancel();
        while self.tasks.join_next().await.is_some() {}
    }
}

/// Sets the broker's tunables (the policies of docs/queues.md) through the management API
/// (on the AMQP host, or at `management_url`). Best effort: the topology itself is declared over AMQP by each role,
/// and the consumer runtime keeps its own delivery limit, so a broker without the
/// management API still works, with the backstop missing; the log line says so.
async fn apply_broker_policies(url: &str, management_url: Option<&url::Url>) {
    let vhost = vhost_of(url).unwrap_or_else(|_| "/".to_owned());
    let applied = match Management::for_broker(url, management_url) {
        Ok(management) => management
            .apply_policies(&vhost)
            .await
            .map_err(|e| e.to_string()),
        Err(error) => Err(error.to_string()),
    };
    match applied {
        Ok(()) => tracing::info!(%vhost, "broker policies applied"),
        Err(error) => {
            tracing::warn!(%vhost, %error, "cannot apply broker policies through the management API; the broker-side delivery limit may be missing")
        }
    }
}
