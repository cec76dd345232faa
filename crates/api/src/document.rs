//! What the OpenAPI document says that the handlers' annotations cannot: the links from
//! one operation's answer to the operations it leads to, and the locations this process
//! is configured with.
//!
//! Links let a client (and a stateful fuzzer such as schemathesis) follow a new key's
//! `key_id` to the key's own routes, and a user's id to their keys and subscription,
//! instead of guessing ids that do not exist. The location list turns "a configured
//! location" into an `enum`, so the document states the bound the server enforces.

use domain::Location;
use serde_json::{Value, json};
use utoipa::openapi::OpenApi;

/// The routes of one key, each taking `{key_id}`.
const KEY_ROUTES: &[&str] = &[
    "get_key",
    "rotate_key",
    "revoke_key",
    "renew_key",
    "change_quota",
    "key_history",
];

/// The routes of one user, each taking `{user_id}`.
const USER_ROUTES: &[&str] = &[
    "user_keys",
    "get_subscription",
    "rotate_subscription",
    "user_access",
    "block_user",
    "unblock_user",
];

/// One group of links: from `source`'s answer with `status` to each of `targets`, whose
/// `parameter` is taken from the runtime expression `value`.
struct Links {
    source: &'static str,
    status: &'static str,
    targets: &'static [&'static str],
    parameter: &'static str,
    value: &'static str,
}

/// Every answer holding a key view leads to that key's routes and its user's routes; every
/// user route leads to the user's other routes.
const LINKS: &[Links] = &[
    key_links("request_key", "202"),
    user_links_of_key_view("request_key", "202"),
    key_links("rotate_key", "202"),
    key_links("revoke_key", "202"),
    key_links("renew_key", "202"),
    key_links("change_quota", "202"),
    key_links("get_key", "200"),
    user_links_of_key_view("get_key", "200"),
    user_links("user_keys", "200"),
    user_links("get_subscription", "200"),
    user_links("rotate_subscription", "202"),
    user_links("user_access", "200"),
    user_links("block_user", "202"),
    user_links("unblock_user", "202"),
];

const fn key_links(source: &'static str, status: &'static str) -> Links {
    Links {
        source,
        status,
        targets: KEY_ROUTES,
        parameter: "key_id",
        value: "$response.body#/key_id",
    }
}

const fn user_links_of_key_view(source: &'static str, status: &'static str) -> Links {
    Links {
        source,
        status,
        targets: USER_ROUTES,
        parameter: "user_id",
        value: "$response.body#/user_id",
    }
}

const fn user_links(source: &'static str, status: &'static str) -> Links {
    Links {
        source,
        status,
        targets: USER_ROUTES,
        parameter: "user_id",
        value: "$request.path.user_id",
    }
}

/// `document` as served: as JSON, with [`LINKS`] and the configured `locations` added.
///
/// Links are written as JSON because utoipa's `Link` serialises its fields in snake case
/// (`operation_id`), which no OpenAPI reader understands.
pub(crate) fn served(document: &OpenApi, locations: &[Location]) -> Value {
    let mut document = match serde_json::to_value(document) {
        Ok(document) => document,
        Err(error) => {
            // Cannot happen: every key of the document is a string.
            tracing::error!(%error, "the OpenAPI document does not serialise");
            return Value::Null;
        }
    };
    declare_links(&mut document);
    list_locations(&mut document, locations);
    document
}

fn declare_links(document: &mut Value) {
    for links in LINKS {
        let Some(response) = operation_mut(document, links.source)
            .and_then(|operation| operation.pointer_mut(&format!("/responses/{}", links.status)))
            .and_then(Value::as_object_mut)
        else {
            continue;
        };
        let declared = response
            .entry("links")
            .or_insert_with(|| json!({}))
            .as_object_mut();
        let Some(declared) = declared else { continue };
        for target in links.targets {
            let link = json!({
                "operationId": target,
                "parameters": {links.parameter: links.value},
            });
            declared.insert((*target).to_owned(), link);
        }
    }
}

fn operation_mut<'a>(document: &'a mut Value, id: &str) -> Option<&'a mut Value> {
    document
        .get_mut("paths")?
        .as_object_mut()?
        .values_mut()
        .filter_map(Value::as_object_mut)
        .flat_map(|item| item.values_mut())
        .find(|operation| operation.get("operationId") == Some(&json!(id)))
}

/// Makes `location` of a key request an `enum` of the configured location ids. With none
/// configured no request can succeed, and the document keeps only the id's shape: JSON
/// Schema wants at least one value in an `enum`.
fn list_locations(document: &mut Value, locations: &[Location]) {
    if locations.is_empty() {
        return;
    }
    let ids: Vec<&str> = locations.iter().map(|l| l.id.as_str()).collect();
    if let Some(location) = document
        .pointer_mut("/components/schemas/RequestKeyBody/properties/location")
        .and_then(Value::as_object_mut)
    {
        location.insert("enum".to_owned(), json!(ids));
    }
}
