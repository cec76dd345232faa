//! Log output for tests: captured per test by the test harness, filtered by `RUST_LOG`.

/// Installs the test log subscriber once per process; later calls change nothing.
pub fn init_logs() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| "info,lapin=warn,x3ui_worker=debug".into()),
        )
        .with_test_writer()
        .try_init();
}
