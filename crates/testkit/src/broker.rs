//! A throwaway RabbitMQ vhost per test, so tests run in parallel against the real broker
//! with the contract's own queue names.

use uuid::Uuid;

use broker::Management;

/// The broker tests use: `KEYLEDGER_TEST_AMQP_URL` (its vhost is replaced), or the
/// machine's local RabbitMQ.
pub fn broker_server_url() -> String {
    std::env::var("KEYLEDGER_TEST_AMQP_URL")
        .unwrap_or_else(|_| "amqp://guest:guest@127.0.0.1:5672/%2f".to_owned())
}

/// Prefix of test vhosts; `.ci/run` deletes any left behind by an interrupted run.
pub const VHOST_PREFIX: &str = "keyledger_test_";

/// A fresh vhost, deleted (with everything in it) when this value is dropped.
pub struct TestBroker {
    pub vhost: String,
    pub amqp_url: String,
    pub management: Management,
}

impl TestBroker {
    pub async fn create() -> Self {
        let vhost = format!("{VHOST_PREFIX}{}", Uuid::new_v4().simple());
        let mut url = url::Url::parse(&broker_server_url()).expect("valid test AMQP URL");
        url.set_path(&format!("/{vhost}"));
        let management = Management::for_amqp_url(url.as_str()).expect("management URL");
        management
            .create_vhost(&vhost)
            .await
            .expect("create test vhost");
        Self {
            vhost,
            amqp_url: url.to_string(),
            management,
        }
    }

    /// Closes every client connection of this vhost from the broker's side, once at least
    /// `at_least` are open: to a client it looks like a broker restart (connection forced
    /// closed), without disturbing the other tests that share the broker. The management
    /// API lists new connections with a delay of up to its statistics interval.
    pub async fn close_all_connections(&self, at_least: usize) -> usize {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
        let names = loop {
            let names = self
                .management
                .connections(&self.vhost)
                .await
                .expect("list connections");
            if names.len() >= at_least || std::time::Instant::now() > deadline {
                break names;
            }
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        };
        for name in &names {
            self.management
                .close_connection(name)
                .await
                .expect("close connection");
        }
        names.len()
    }
}

impl Drop for TestBroker {
    fn drop(&mut self) {
        let (management, vhost) = (self.management.fresh(), self.vhost.clone());
        // Drop may run inside or outside a runtime; a thread with its own runtime works in both.
        let deleted = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .ok()?;
            runtime.block_on(management.delete_vhost(&vhost)).ok()
        })
        .join();
        if !matches!(deleted, Ok(Some(_))) {
            eprintln!("could not delete test vhost {}", self.vhost);
        }
    }
}
