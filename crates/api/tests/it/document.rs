//! The OpenAPI document against the server it describes: every bound the document states
//! is the one the server enforces, on both sides of the edge, and every link leads from an
//! answer to an operation that exists. schemathesis (.ci/schemathesis.sh) fuzzes the same
//! agreement at large; these tests pin the bounds one by one.

use std::collections::BTreeSet;

use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use uuid::Uuid;

use crate::http::{ADMIN, Api};

async fn document(api: &Api) -> Value {
    let (status, document) = api.call(Method::GET, "/openapi.json", None, None).await;
    assert_eq!(status, StatusCode::OK);
    document
}

fn schema<'a>(document: &'a Value, name: &str) -> &'a Value {
    let schema = &document["components"]["schemas"][name];
    assert!(schema.is_object(), "no schema {name}");
    schema
}

fn number(value: &Value, what: &str) -> i64 {
    value
        .as_i64()
        .unwrap_or_else(|| panic!("{what} is not an integer: {value}"))
}

/// The operation with `id`, wherever it is.
fn operation<'a>(document: &'a Value, id: &str) -> &'a Value {
    document["paths"]
        .as_object()
        .expect("paths")
        .values()
        .flat_map(|item| item.as_object().expect("path item").values())
        .find(|operation| operation["operationId"] == json!(id))
        .unwrap_or_else(|| panic!("no operation {id}"))
}

fn parameter<'a>(operation: &'a Value, name: &str) -> &'a Value {
    operation["parameters"]
        .as_array()
        .expect("parameters")
        .iter()
        .find(|p| p["name"] == json!(name))
        .unwrap_or_else(|| panic!("no parameter {name} in {operation}"))
}

#[tokio::test]
async fn the_numeric_bounds_of_the_document_are_the_servers() {
    let api = Api::start().await;
    let document = document(&api).await;
    let body = schema(&document, "RequestKeyBody");

    // user_id: the largest the document allows is accepted, one more is refused.
    let user = &body["properties"]["user_id"];
    assert_eq!(number(&user["minimum"], "user_id minimum"), 1);
    let max_user = number(&user["maximum"], "user_id maximum");
    let (status, answer) = api
        .post("/v1/keys", json!({"user_id": max_user, "location": "ams"}))
        .await;
    assert_eq!(status, StatusCode::ACCEPTED, "{answer}");
    let (status, answer) = api
        .post(
            "/v1/keys",
            json!({"user_id": max_user + 1, "location": "ams"}),
        )
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{answer}");
    for (id, path) in [("user_keys", "keys"), ("get_subscription", "subscription")] {
        let declared = &parameter(operation(&document, id), "user_id")["schema"];
        assert_eq!(declared["maximum"], json!(max_user), "{id}");
        assert_eq!(declared["minimum"], json!(1), "{id}");
        let (status, answer) = api.get(&format!("/v1/users/{}/{path}", max_user + 1)).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{id}: {answer}");
        let (status, answer) = api.get(&format!("/v1/users/0/{path}")).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{id}: {answer}");
    }
    let (status, answer) = api.get(&format!("/v1/users/{max_user}/keys")).await;
    assert_eq!(status, StatusCode::OK, "{answer}");
    // An `integer` is a number without a fraction, however JSON spells it.
    for spelling in ["13.0", "1.3e1"] {
        let (status, answer) = api.get(&format!("/v1/users/{spelling}/keys")).await;
        assert_eq!(status, StatusCode::OK, "{spelling}: {answer}");
        let body = format!(r#"{{"user_id": {spelling}, "location": "ams"}}"#);
        let response = api
            .http
            .post(format!("{}/v1/keys", api.base))
            .bearer_auth(ADMIN)
            .header("content-type", "application/json")
            .body(body)
            .send()
            .await
            .expect("sent");
        assert_eq!(response.status(), StatusCode::ACCEPTED, "{spelling}");
        let view: Value = response.json().await.expect("json");
        assert_eq!(view["user_id"], json!(13), "{spelling}");
    }
    let (status, answer) = api.get("/v1/users/13.5/keys").await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{answer}");
    let (status, answer) = api
        .post("/v1/keys", json!({"user_id": 13.5, "location": "ams"}))
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{answer}");

    // traffic_limit_bytes: the same edge, on both routes that take it.
    let max_limit = number(
        &body["properties"]["traffic_limit_bytes"]["maximum"],
        "traffic limit maximum",
    );
    let quota = schema(&document, "ChangeQuotaBody");
    assert_eq!(
        number(
            &quota["properties"]["traffic_limit_bytes"]["maximum"],
            "quota maximum"
        ),
        max_limit
    );
    let (status, answer) = api
        .post(
            "/v1/keys",
            json!({"user_id": 7, "location": "ams", "traffic_limit_bytes": max_limit}),
        )
        .await;
    assert_eq!(status, StatusCode::ACCEPTED, "{answer}");
    let (status, answer) = api
        .post(
            "/v1/keys",
            json!({"user_id": 8, "location": "ams", "traffic_limit_bytes": max_limit + 1}),
        )
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{answer}");
    assert_eq!(answer["error"]["code"], json!("invalid_traffic_limit"));

    // limit and after of the paged routes.
    for id in ["events", "checkpoints"] {
        let operation = operation(&document, id);
        let limit = &parameter(operation, "limit")["schema"];
        let after = &parameter(operation, "after")["schema"];
        assert_eq!(limit["type"], json!("integer"), "{id}");
        assert_eq!(after["type"], json!("integer"), "{id}");
        let (min, max) = (
            number(&limit["minimum"], "limit minimum"),
            number(&limit["maximum"], "limit maximum"),
        );
        let path = if id == "events" {
            "/v1/events"
        } else {
            "/v1/audit/checkpoints"
        };
        for (query, expected) in [
            (format!("limit={min}"), StatusCode::OK),
            (format!("limit={max}"), StatusCode::OK),
            (format!("limit={}", min - 1), StatusCode::BAD_REQUEST),
            (format!("limit={}", max + 1), StatusCode::BAD_REQUEST),
            (format!("after={}", after["minimum"]), StatusCode::OK),
            (format!("after={}", after["maximum"]), StatusCode::OK),
            ("after=-1".to_owned(), StatusCode::BAD_REQUEST),
        ] {
            let (status, answer) = api.get(&format!("{path}?{query}")).await;
            assert_eq!(status, expected, "{path}?{query}: {answer}");
        }
    }

    // The Idempotency-Key header: its longest is taken, one more character is refused.
    let header = &parameter(operation(&document, "request_key"), "Idempotency-Key")["schema"];
    let longest = usize::try_from(number(&header["maxLength"], "key maxLength")).expect("usize");
    for (length, expected) in [
        (longest, StatusCode::ACCEPTED),
        (longest + 1, StatusCode::BAD_REQUEST),
    ] {
        let response = api
            .http
            .post(format!("{}/v1/keys", api.base))
            .bearer_auth(ADMIN)
            .header("Idempotency-Key", "k".repeat(length))
            .json(&json!({"user_id": 9, "location": "ams"}))
            .send()
            .await
            .expect("sent");
        assert_eq!(response.status(), expected, "a key of {length} characters");
    }
}

#[tokio::test]
async fn a_reason_is_bounded_as_the_document_says() {
    let api = Api::start().await;
    let document = document(&api).await;
    let (status, requested) = api
        .post("/v1/keys", json!({"user_id": 11, "location": "ams"}))
        .await;
    assert_eq!(status, StatusCode::ACCEPTED, "{requested}");
    let key = requested["key_id"].as_str().expect("key id").to_owned();
    for name in [
        "RevokeKeyBody",
        "RotateSubscriptionBody",
        "AccessChangeBody",
    ] {
        let reason = &schema(&document, name)["properties"]["reason"];
        assert_eq!(
            reason["maxLength"],
            json!(domain::MAX_REASON_CHARS),
            "{name}"
        );
        assert_eq!(reason["minLength"], json!(1), "{name}");
        let pattern = reason["pattern"].as_str().expect("pattern");
        assert_eq!(
            white_space_named_by(pattern),
            rusts_white_space(),
            "{name}: the pattern must refuse exactly what str::trim removes"
        );
    }
    // Every character the pattern names as white space makes a reason of nothing; one
    // character more than maxLength is too long.
    for blank in rusts_white_space() {
        let (status, answer) = api
            .post(
                &format!("/v1/keys/{key}/revoke"),
                json!({"reason": format!("{blank}{blank}")}),
            )
            .await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{:?}: {answer}", blank);
        assert_eq!(answer["error"]["code"], json!("invalid_reason"));
    }
    let too_long = "x".repeat(domain::MAX_REASON_CHARS + 1);
    let (status, answer) = api
        .post(
            &format!("/v1/keys/{key}/revoke"),
            json!({"reason": too_long}),
        )
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{answer}");
    let longest = "ü".repeat(domain::MAX_REASON_CHARS);
    let (status, answer) = api
        .post(
            &format!("/v1/keys/{key}/revoke"),
            json!({"reason": longest}),
        )
        .await;
    assert_eq!(status, StatusCode::ACCEPTED, "{answer}");
}

/// Every character `str::trim` removes.
fn rusts_white_space() -> BTreeSet<char> {
    (0..=u32::from(char::MAX))
        .filter_map(char::from_u32)
        .filter(|c| c.is_whitespace())
        .collect()
}

/// The characters the reason pattern's middle class names besides NUL, with its escapes
/// (`\t`, `\uXXXX`, …) and ranges decoded.
fn white_space_named_by(pattern: &str) -> BTreeSet<char> {
    let class = pattern
        .split("[^")
        .nth(2)
        .and_then(|rest| rest.split(']').next())
        .unwrap_or_else(|| panic!("no second negated class in {pattern:?}"));
    let mut chars = Vec::new();
    let mut rest = class;
    while let Some(first) = rest.chars().next() {
        if let Some(escaped) = rest.strip_prefix('\\') {
            let (c, consumed) = match escaped.chars().next().expect("escape") {
                'u' => {
                    let code = u32::from_str_radix(&escaped[1..5], 16).expect("hex");
                    (char::from_u32(code).expect("char"), 6)
                }
                't' => ('\t', 2),
                'n' => ('\n', 2),
                'f' => ('\u{c}', 2),
                'r' => ('\r', 2),
                other => panic!("unexpected escape \\{other} in {pattern:?}"),
            };
            chars.push(Some(c));
            rest = &rest[consumed..];
        } else if first == '-' {
            chars.push(None); // a range between its neighbours
            rest = &rest[1..];
        } else {
            chars.push(Some(first));
            rest = &rest[first.len_utf8()..];
        }
    }
    let mut named = BTreeSet::new();
    let mut index = 0;
    while index < chars.len() {
        let c = chars[index].expect("a range has a start");
        if chars.get(index + 1) == Some(&None) {
            let end = chars[index + 2].expect("a range has an end");
            named.extend(c..=end);
            index += 3;
        } else {
            named.insert(c);
            index += 1;
        }
    }
    assert!(named.remove(&'\0'), "the class must exclude NUL too");
    named
}

#[tokio::test]
async fn the_document_lists_the_configured_locations_and_refuses_unknown_fields() {
    let api = Api::start().await;
    let document = document(&api).await;
    let location = &schema(&document, "RequestKeyBody")["properties"]["location"];
    assert_eq!(location["enum"], json!(["ams", "fra"]));
    for name in [
        "RequestKeyBody",
        "RotateKeyBody",
        "RevokeKeyBody",
        "RenewKeyBody",
        "ChangeQuotaBody",
        "RotateSubscriptionBody",
        "AccessChangeBody",
    ] {
        assert_eq!(
            schema(&document, name)["additionalProperties"],
            json!(false),
            "{name}: the server refuses unknown fields"
        );
    }
    let required = |id: &str| operation(&document, id)["requestBody"]["required"].clone();
    assert_eq!(required("request_key"), json!(true));
    assert_eq!(required("revoke_key"), json!(true));
    // An empty body reads as {}: these two may be sent bare.
    assert_ne!(required("rotate_key"), json!(true));
    assert_ne!(required("rotate_subscription"), json!(true));
}

#[tokio::test]
async fn links_lead_from_a_new_key_to_its_routes_and_from_a_user_to_theirs() {
    let api = Api::start().await;
    let document = document(&api).await;
    // Every operation's id, and those that take a key id or a user id in their path.
    let mut ids = BTreeSet::new();
    let mut taking = |parameter: &str| -> BTreeSet<String> {
        let mut taking = BTreeSet::new();
        for (path, item) in document["paths"].as_object().expect("paths") {
            for operation in item.as_object().expect("path item").values() {
                let id = operation["operationId"].as_str().expect("id").to_owned();
                if path.contains(parameter) {
                    taking.insert(id.clone());
                }
                ids.insert(id);
            }
        }
        taking
    };
    let key_routes = taking("{key_id}");
    let user_routes = taking("{user_id}");
    assert!(
        key_routes.len() >= 6 && user_routes.len() >= 6,
        "{user_routes:?}"
    );
    let links = |id: &str, status: &str| -> BTreeSet<String> {
        let links = &operation(&document, id)["responses"][status]["links"];
        let links = links
            .as_object()
            .unwrap_or_else(|| panic!("{id} {status}: no links"));
        for (name, link) in links {
            let target = link["operationId"].as_str().expect("operationId");
            assert!(ids.contains(target), "link {name} of {id} leads nowhere");
        }
        links
            .values()
            .map(|l| l["operationId"].as_str().expect("id").to_owned())
            .collect()
    };
    let from_new_key = links("request_key", "202");
    for target in key_routes.union(&user_routes) {
        assert!(
            from_new_key.contains(target),
            "POST /v1/keys does not lead to {target}"
        );
    }
    for user_route in ["user_keys", "get_subscription", "user_access"] {
        let from_user = links(user_route, "200");
        assert_eq!(
            from_user, user_routes,
            "{user_route} leads to the user's routes"
        );
    }

    // Following a link's expression from a real answer reaches the key.
    let (status, requested) = api
        .post("/v1/keys", json!({"user_id": 12, "location": "fra"}))
        .await;
    assert_eq!(status, StatusCode::ACCEPTED, "{requested}");
    let link = &operation(&document, "request_key")["responses"]["202"]["links"]["get_key"];
    let pointer = link["parameters"]["key_id"]
        .as_str()
        .and_then(|expression| expression.strip_prefix("$response.body#"))
        .expect("a body pointer");
    let key: Uuid = serde_json::from_value(requested.pointer(pointer).expect("resolves").clone())
        .expect("a UUID");
    let (status, view) = api.get(&format!("/v1/keys/{key}")).await;
    assert_eq!(
        status,
        StatusCode::OK,
        "a key just recorded is there: {view}"
    );
    assert_eq!(view["location"], json!("fra"));
}
