//! Scratch resources for the programs that run the pipeline for show or for measurement
//! (`demo`, `bench …`): a database and a RabbitMQ vhost of their own on the configured
//! servers, so they never touch a real deployment's log or queues, removed afterwards.

use anyhow::Context;
use domain::LocationId;
use eventstore::{create_database, drop_database, with_database};
use sqlx::PgPool;
use sqlx::postgres::PgPoolOptions;
use url::Url;
use uuid::Uuid;
use x3ui_sim::SimConfig;

use service::config::{Config, LocationConfig, Secret, ServiceUrl};
use x3ui_worker::{ApiKind, Credentials};

/// A fresh name for scratch resources, e.g. `keyledger_demo_<uuid>`.
pub(crate) fn scratch_name(purpose: &str) -> String {
    format!("keyledger_{purpose}_{}", Uuid::new_v4().simple())
}

/// A database of its own on the configured server.
pub(crate) struct ScratchDatabase {
    pub(crate) url: String,
    pub(crate) pool: PgPool,
}

impl ScratchDatabase {
    pub(crate) async fn create(
        config: &Config,
        name: &str,
        max_connections: u32,
    ) -> anyhow::Result<Self> {
        let url = with_database(config.database_url.as_str(), name)?;
        create_database(&url).await.with_context(|| {
            format!(
                "cannot create a scratch database on {}",
                config.database_url
            )
        })?;
        let pool = PgPoolOptions::new()
            .max_connections(max_connections)
            .connect(&url)
            .await?;
        Ok(Self { url, pool })
    }

    pub(crate) async fn drop(self) -> anyhow::Result<()> {
        self.pool.close().await;
        drop_database(&self.url).await?;
        Ok(())
    }
}

/// A vhost of its own on the configured broker, made through its management API.
pub(crate) struct ScratchVhost {
    pub(crate) vhost: String,
    pub(crate) amqp_url: String,
    management: broker::Management,
}

impl ScratchVhost {
    pub(crate) async fn create(config: &Config, name: &str) -> anyhow::Result<Self> {
        let mut url = config.amqp_url.url().clone();
        url.set_path(&format!("/{name}"));
        let management = broker::Management::for_amqp_url(url.as_str())?;
        management.create_vhost(name).await.with_context(|| {
            format!(
                "cannot create a scratch vhost through the management API of {} \
                 (is the management plugin on?)",
                config.amqp_url
            )
        })?;
        Ok(Self {
            vhost: name.to_owned(),
            amqp_url: url.to_string(),
            management,
        })
    }

    pub(crate) async fn delete(self) -> anyhow::Result<()> {
        self.management.delete_vhost(&self.vhost).await?;
        Ok(())
    }
}

/// A database and a vhost of the same name.
pub(crate) struct Scratch {
    pub(crate) database: ScratchDatabase,
    pub(crate) vhost: ScratchVhost,
}

impl Scratch {
    pub(crate) async fn create(
        config: &Config,
        purpose: &str,
        max_connections: u32,
    ) -> anyhow::Result<Self> {
        let name = scratch_name(purpose);
        let database = ScratchDatabase::create(config, &name, max_connections).await?;
        match ScratchVhost::create(config, &name).await {
            Ok(vhost) => Ok(Self { database, vhost }),
            Err(error) => {
                database.drop().await?;
                Err(error)
            }
        }
    }

    /// Removes both, trying both even if the first fails.
    pub(crate) async fn remove(self) -> anyhow::Result<()> {
        let dropped = self.database.drop().await;
        let deleted = self.vhost.delete().await;
        dropped.and(deleted)
    }

    /// `config` pointed at this database and vhost, with one location: a panel simulator
    /// at `panel_url`, logged into with the simulator's own fixed credentials.
    pub(crate) fn config_with_simulator(
        &self,
        config: &Config,
        location: &str,
        panel_url: Url,
    ) -> anyhow::Result<Config> {
        let mut scratch = config.clone();
        scratch.database_url = ServiceUrl::new(Url::parse(&self.database.url)?);
        scratch.database_owner_url = scratch.database_url.clone();
        scratch.amqp_url = ServiceUrl::new(Url::parse(&self.vhost.amqp_url)?);
        let sim = SimConfig::v2_9();
        scratch.locations = vec![LocationConfig {
            id: LocationId::new(location)?,
            name: format!("{location} (simulated panel)"),
            panel_url,
            credentials: Credentials::Password {
                username: sim.username,
                password: Secret::new(sim.password),
            },
            inbound_id: 1,
            public_host: format!("vpn.{location}.example"),
            accept_invalid_certs: false,
            api: ApiKind::Legacy,
            flow: None,
            max_response_bytes: x3ui_worker::DEFAULT_MAX_RESPONSE_BYTES,
        }];
        Ok(scratch)
    }
}
