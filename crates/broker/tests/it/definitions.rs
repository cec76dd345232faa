//! `deploy/rabbitmq/definitions.json` against the code's topology, and both against what a
//! real RabbitMQ reports once the roles have declared it.
//!
//! To regenerate the file after changing `topology.rs`:
//! `cargo test -p broker --test it -- --ignored --nocapture print_deploy_definitions`
//! and paste the printed JSON into `deploy/rabbitmq/definitions.json`.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use broker::topology;
use lapin::{Connection, ConnectionProperties};
use serde_json::{Map, Value, json};
use testkit::TestBroker;

const FILE: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../../deploy/rabbitmq/definitions.json"
);
/// The vhost and user the committed file is for.
const VHOST: &str = "keyledger";
const TOPOLOGY: [&str; 4] = ["exchanges", "queues", "bindings", "policies"];

/// The whole file: the topology plus the vhost, the user (without a password: see the
/// docs/operations.md, "RabbitMQ definitions and the password") and its permissions.
fn deploy_definitions() -> Value {
    let mut definitions = topology::definitions(VHOST);
    let object = definitions
        .as_object_mut()
        .expect("definitions are an object");
    object.insert("vhosts".into(), json!([{"name": VHOST}]));
    object.insert(
        "users".into(),
        json!([{
            "name": "keyledger",
            "password_hash": "",
            "hashing_algorithm": "rabbit_password_hashing_sha256",
            // `policymaker`: the roles set the delivery-limit policy at start, and the
            // console's "move back" creates a shovel; both are confined to this vhost and
            // its `keyledger.` names by the permissions below.
            "tags": ["management", "policymaker"],
        }]),
    );
    object.insert(
        "permissions".into(),
        json!([{
            "user": "keyledger", "vhost": VHOST,
            "configure": "^keyledger\\.", "write": "^keyledger\\.", "read": "^keyledger\\.",
        }]),
    );
    definitions
}

#[test]
#[ignore = "prints the content of deploy/rabbitmq/definitions.json"]
fn print_deploy_definitions() {
    // Pretty JSON, the sections in the order an operator reads them.
    let definitions = deploy_definitions();
    let order = ["users", "vhosts", "permissions", "policies"]
        .into_iter()
        .chain(["exchanges", "queues", "bindings"]);
    let sections: Vec<String> = order
        .map(|key| {
            let value = serde_json::to_string_pretty(&definitions[key]).expect("JSON");
            format!("  \"{key}\": {}", value.replace('\n', "\n  "))
        })
        .collect();
    println!("{{\n{}\n}}", sections.join(",\n"));
}

/// The reference page operators read names every exchange and queue of the topology.
#[test]
fn the_queues_page_names_every_exchange_and_queue() {
    let page = include_str!("../../../../docs/queues.md");
    let definitions = committed();
    for kind in ["exchanges", "queues"] {
        let names: Vec<&str> = definitions[kind]
            .as_array()
            .unwrap_or_else(|| panic!("definitions.json has no {kind}"))
            .iter()
            .filter_map(|item| item["name"].as_str())
            .collect();
        assert!(!names.is_empty(), "definitions.json has no {kind}");
        for name in names {
            assert!(
                page.contains(&format!("`{name}`")),
                "docs/queues.md does not name {kind} `{name}`"
            );
        }
    }
}

fn committed() -> Value {
    let text = std::fs::read_to_string(FILE).unwrap_or_else(|e| panic!("read {FILE}: {e}"));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{FILE} is not JSON: {e}"))
}

/// JSON text with object keys sorted at every level, so equal values print equally.
fn canonical(value: &Value) -> String {
    fn sorted(value: &Value) -> Value {
        match value {
            Value::Object(object) => {
                let entries: BTreeMap<_, _> =
                    object.iter().map(|(k, v)| (k.clone(), sorted(v))).collect();
                Value::Object(entries.into_iter().collect::<Map<_, _>>())
            }
            Value::Array(items) => Value::Array(items.iter().map(sorted).collect()),
            other => other.clone(),
        }
    }
    // serde_json's default map is ordered by key; sorting again keeps this true with
    // `preserve_order` too.
    serde_json::to_string(&sorted(value)).expect("JSON")
}

/// The items of `kind` without their vhost, as a sorted list of canonical JSON texts (a
/// set, but one that still shows a duplicate).
fn items(definitions: &Value, kind: &str) -> Vec<String> {
    let mut items: Vec<String> = definitions[kind]
        .as_array()
        .unwrap_or_else(|| panic!("no {kind} list in {definitions}"))
        .iter()
        .map(|item| {
            let mut item = item.clone();
            if let Some(object) = item.as_object_mut() {
                object.remove("vhost");
            }
            canonical(&item)
        })
        .collect();
    items.sort();
    items
}

fn assert_same_topology(actual: &Value, expected: &Value, what: &str) {
    for kind in TOPOLOGY {
        let (actual, expected) = (items(actual, kind), items(expected, kind));
        let missing: Vec<_> = expected.iter().filter(|i| !actual.contains(i)).collect();
        let extra: Vec<_> = actual.iter().filter(|i| !expected.contains(i)).collect();
        assert!(
            missing.is_empty() && extra.is_empty() && actual.len() == expected.len(),
            "{what}: {kind} differ\n  missing: {missing:#?}\n  extra: {extra:#?}"
        );
    }
}

#[test]
fn the_committed_file_holds_the_code_topology() {
    let file = committed();
    assert_same_topology(
        &file,
        &topology::definitions(VHOST),
        "deploy/rabbitmq/definitions.json vs topology::definitions",
    );
    // The comparison above ignores vhosts; the file must name the operators' one.
    for kind in TOPOLOGY.into_iter().chain(["permissions"]) {
        for item in file[kind].as_array().expect("a list") {
            assert_eq!(
                item["vhost"], VHOST,
                "{kind} item {item} is for another vhost"
            );
        }
    }
    assert_eq!(file["vhosts"], json!([{"name": VHOST}]));
    // Everything else (user, permissions) as generated, and no secret in the file.
    assert_eq!(
        canonical(&file),
        canonical(&deploy_definitions()),
        "regenerate the file (see this test file's header)"
    );
    for user in file["users"].as_array().expect("users") {
        assert_eq!(
            user["password_hash"], "",
            "a password in the committed file"
        );
        assert!(
            user.get("password").is_none(),
            "a password in the committed file"
        );
    }
}

/// What the roles do at start (declare), plus the policies; then the broker's own view.
async fn declare_and_export(broker: &TestBroker) -> Value {
    let connection = Connection::connect(&broker.amqp_url, ConnectionProperties::default())
        .await
        .expect("connect to the test vhost");
    let channel = connection.create_channel().await.expect("channel");
    topology::declare(&channel)
        .await
        .expect("declare the topology");
    broker
        .management
        .apply_policies(&broker.vhost)
        .await
        .expect("apply the policies");
    connection.close(200, "done".into()).await.expect("close");
    export(broker).await
}

async fn export(broker: &TestBroker) -> Value {
    broker
        .management
        .definitions(&broker.vhost)
        .await
        .expect("GET /api/definitions/{vhost}")
}

/// Waits until the management API shows the delivery-limit policy on the three work
/// queues (its queue figures lag a few seconds), then checks the dead-letter queues have
/// none: the policy's pattern must catch exactly the work queues.
async fn assert_policy_on_work_queues_only(broker: &TestBroker) {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let mut seen = Vec::new();
        for queue in topology::Queue::ALL {
            let info = broker.management.queue(&broker.vhost, queue.name()).await;
            seen.push((queue.name(), info.expect("queue info").policy));
        }
        if seen
            .iter()
            .all(|(_, p)| p.as_deref() == Some("keyledger-delivery-limit"))
        {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "delivery-limit policy not applied: {seen:?}"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    for queue in topology::Queue::ALL {
        let name = queue.dead_letter_queue();
        let info = broker.management.queue(&broker.vhost, &name).await;
        assert_eq!(info.expect("queue info").policy, None, "{name}");
    }
}

fn assert_empty(definitions: &Value) {
    for kind in TOPOLOGY {
        assert_eq!(
            items(definitions, kind),
            Vec::<String>::new(),
            "fresh vhost has {kind}"
        );
    }
}

// Multi-threaded: `TestBroker`'s drop blocks its thread while deleting the vhost with the
// management client, whose connections are driven by this runtime's other thread.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_broker_reports_the_file_topology_after_declare_and_declaring_again_changes_nothing() {
    let broker = TestBroker::create().await;
    let file = committed();
    assert_empty(&export(&broker).await);

    let first = declare_and_export(&broker).await;
    assert_same_topology(&first, &file, "broker after declare vs definitions.json");
    assert_policy_on_work_queues_only(&broker).await;

    // Every role declares at start: a second time must neither fail nor change anything.
    let second = declare_and_export(&broker).await;
    assert_same_topology(
        &second,
        &file,
        "broker after declaring twice vs definitions.json",
    );
    assert_same_topology(&second, &first, "broker after declaring twice vs once");
}

/// What an operator's broker does: load the file at boot, then the roles start and
/// declare. Declaring over the file's queues must not fail (a queue redeclared with other
/// arguments is refused with PRECONDITION_FAILED) nor change them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_roles_declare_over_what_the_file_loaded() {
    let broker = TestBroker::create().await;
    let file = committed();
    assert_empty(&export(&broker).await);

    let mut topology_only = Map::new();
    for kind in TOPOLOGY {
        let mut items = file[kind].as_array().expect("a list").clone();
        for item in &mut items {
            item["vhost"] = json!(broker.vhost);
        }
        topology_only.insert(kind.to_owned(), Value::Array(items));
    }
    import(&broker.vhost, &Value::Object(topology_only)).await;
    let loaded = export(&broker).await;
    assert_same_topology(&loaded, &file, "broker after loading definitions.json");

    let declared = declare_and_export(&broker).await;
    assert_same_topology(
        &declared,
        &loaded,
        "broker after declare over the loaded file",
    );
    assert_policy_on_work_queues_only(&broker).await;
}

/// `POST /api/definitions/{vhost}`, as `load_definitions` does at boot.
async fn import(vhost: &str, definitions: &Value) {
    let amqp = url::Url::parse(&testkit::broker_server_url()).expect("AMQP URL");
    let host = amqp.host_str().expect("host");
    let user = if amqp.username().is_empty() {
        "guest"
    } else {
        amqp.username()
    };
    let password = amqp.password().unwrap_or("guest");
    let vhost = percent_encoding::utf8_percent_encode(vhost, percent_encoding::NON_ALPHANUMERIC);
    let response = reqwest::Client::new()
        .post(format!("http://{host}:15672/api/definitions/{vhost}"))
        .basic_auth(user, Some(password))
        .json(definitions)
        .send()
        .await
        .expect("POST /api/definitions/{vhost}");
    let status = response.status();
    let body = response.text().await.unwrap_or_default();
    assert!(
        status.is_success(),
        "importing definitions.json: {status} {body}"
    );
}
