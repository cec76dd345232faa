//! A panel that answers gigabytes: the client reads at most `max_response_bytes` of it and
//! refuses the rest with a clear error, instead of buffering the whole body.

use std::time::{Duration, Instant};

use axum::Router;
use axum::body::Body;
use axum::routing::{get, post};
use url::Url;
use x3ui_worker::{AnyPanelApi, Credentials, PanelApi, PanelConfig, Secret};

/// Two gigabytes, streamed a megabyte at a time and never held whole.
const HUGE: u64 = 2 * 1024 * 1024 * 1024;
const CHUNK: usize = 1024 * 1024;

fn endless_answer() -> Body {
    let chunks = (0..HUGE / CHUNK as u64).map(|_| Ok::<_, std::io::Error>(vec![b' '; CHUNK]));
    Body::from_stream(futures::stream::iter(chunks))
}

async fn hostile_panel() -> Url {
    let login = || async {
        (
            [("set-cookie", "3x-ui=session; Path=/")],
            r#"{"success":true,"msg":"","obj":null}"#,
        )
    };
    let app = Router::new()
        .route("/login", post(login))
        .route(
            "/panel/api/inbounds/get/{id}",
            get(|| async { endless_answer() }),
        )
        .route(
            "/panel/api/inbounds/list",
            get(|| async { endless_answer() }),
        );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let address = listener.local_addr().expect("address");
    tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    Url::parse(&format!("http://{address}/")).expect("url")
}

#[tokio::test]
async fn a_panel_answering_two_gigabytes_is_refused_after_the_cap() {
    let base = hostile_panel().await;
    let config = PanelConfig::new(
        "ams",
        base,
        Credentials::Password {
            username: "admin".into(),
            password: Secret::new("pw"),
        },
        1,
    )
    .with_max_response_bytes(4 * 1024 * 1024)
    .with_timeouts(Duration::from_secs(2), Duration::from_secs(30));
    let api = AnyPanelApi::new(config).expect("client");
    let started = Instant::now();
    let error = api.get_inbound().await.expect_err("refused");
    let text = error.to_string();
    assert!(text.contains("larger than 4194304 bytes"), "{text}");
    assert!(text.contains("ams"), "the error names the location: {text}");
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "gave up after the cap, not after the body: {:?}",
        started.elapsed()
    );
}
