//! Keys: finding one by user id, key id or client UUID; one key's page (its view, usage
//! and timeline from the log with each event's actor, reason, hash and the chain check);
//! and the admin's commands on it (rotate, revoke, renew, block the user), each behind a
//! confirmation page. Commands go through the same `KeyLedger` as the API's, recorded
//! with the actor `admin:console`.

use axum::Form;
use axum::extract::{Path, Query, State};
use axum::response::{IntoResponse, Redirect, Response};
use domain::{KeyCommand, KeyId, RenewKey, RevokeKey, RotateKey, UserId};
use eventstore::{Actor, ActorKind, EventMetadata, KeyLedger, RecordedEvent};
use maud::{Markup, html};
use projector::KeyView;
use serde::Deserialize;
use serde_json::Value;
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;
use uuid::Uuid;

use crate::error::{Actor as Acting, ConsoleError, Viewer};
use crate::page::{self, csrf_field, when};
use crate::session::Session;
use crate::{ConsoleState, may_act};

/// Events shown per page of a key's timeline.
const TIMELINE_PAGE: usize = 100;

/// `GET /console`: the key search, where both roles start.
pub(crate) async fn home(_viewer: Viewer) -> Redirect {
    Redirect::to("/console/keys")
}

#[derive(Deserialize)]
pub(crate) struct SearchQuery {
    #[serde(default)]
    q: String,
}

/// `GET /console/keys?q=`: keys by user id, key id or current client UUID.
pub(crate) async fn search(
    Viewer(session): Viewer,
    State(state): State<ConsoleState>,
    Query(query): Query<SearchQuery>,
) -> Result<Markup, ConsoleError> {
    let q = query.q.trim();
    let found = if q.is_empty() {
        None
    } else {
        Some(find_keys(&state, q).await?)
    };
    Ok(page::signed_in(
        &session,
        "Keys",
        html! {
            h1 { "Find a key" }
            form method="get" action="/console/keys" {
                input #q type="text" name="q" value=(q)
                    placeholder="Telegram user id, key id or client UUID";
                " " button type="submit" { "Find" }
            }
            @if let Some(found) = found {
                @if found.is_empty() {
                    p #no-keys { "No key matches " code { (q) } "." }
                } @else {
                    table #keys {
                        tr { th { "key" } th { "user" } th { "location" } th { "status" } th { "client UUID" } th { "updated" } }
                        @for view in &found {
                            tr {
                                td { a.mono href={ "/console/keys/" (view.key_id) } { (view.key_id) } }
                                td { (view.user_id) }
                                td { (view.location) }
                                td.status { (view.status) }
                                td.mono { (view.client_uuid) }
                                td { (when(Some(view.updated_at))) }
                            }
                        }
                    }
                    @if found.len() == 1 && may_act(session.role) {
                        p { a href={ "/console/users/" (found[0].user_id) "/block" } { "Block this user…" } }
                    }
                }
            }
        },
    ))
}

/// Each lookup is one index: `key_views_user`, the primary key, `key_views_client_uuid`.
async fn find_keys(state: &ConsoleState, q: &str) -> Result<Vec<KeyView>, ConsoleError> {
    let pool = state.store.pool();
    if let Ok(user) = q.parse::<i64>() {
        let user = UserId::new(user).map_err(|e| ConsoleError::BadInput(e.to_string()))?;
        return Ok(projector::user_views(pool, user.get()).await?);
    }
    let id = Uuid::parse_str(q).map_err(|_| {
        ConsoleError::BadInput(format!(
            "{q:?} is neither a Telegram user id nor a UUID (key id or client UUID)"
        ))
    })?;
    if let Some(view) = projector::load_view(pool, id).await? {
        return Ok(vec![view]);
    }
    let by_client: Vec<KeyView> = sqlx::query_as(
        "SELECT key_id, user_id, location, status, client_uuid, link, expires_at, version,
                updated_at
         FROM key_views WHERE client_uuid = $1",
    )
    .bind(id)
    .fetch_all(pool)
    .await?;
    Ok(by_client)
}

#[derive(Deserialize)]
pub(crate) struct TimelineQuery {
    /// Show events from this version on.
    from: Option<usize>,
}

/// `GET /console/keys/{key_id}`.
pub(crate) async fn key_page(
    Viewer(session): Viewer,
    State(state): State<ConsoleState>,
    Path(key_id): Path<String>,
    Query(query): Query<TimelineQuery>,
) -> Result<Markup, ConsoleError> {
    let key_id = parse_uuid(&key_id)?;
    let events = state.store.read_stream(key_id).await?;
    if events.is_empty() {
        return Err(ConsoleError::NotFound(format!("key {key_id}")));
    }
    let pool = state.store.pool();
    let chain = eventstore::verify_stream_chain(pool, key_id).await?;
    let view = projector::load_view(pool, key_id).await?;
    let view = match view {
        Some(view) => api::with_usage(pool, vec![view]).await?.pop(),
        None => None,
    };
    let from = query.from.unwrap_or(1).max(1);
    let shown: Vec<&RecordedEvent> = events.iter().skip(from - 1).take(TIMELINE_PAGE).collect();
    let next = (from - 1 + TIMELINE_PAGE < events.len()).then_some(from + TIMELINE_PAGE);
    let broken = |version: i32| chain.breaks.iter().find(|b| b.version == version);
    Ok(page::signed_in(
        &session,
        "Key",
        html! {
            h1 { "Key " span.mono { (key_id) } }
            section #view {
                h2 { "Current view" }
                @match &view {
                    Some(body) => {
                        table {
                            tr { th { "user" } td #user { (body.view.user_id) } }
                            tr { th { "location" } td { (body.view.location) } }
                            tr { th { "status" } td #status { (body.view.status) } }
                            tr { th { "client UUID" } td.mono #client-uuid { (body.view.client_uuid) } }
                            tr { th { "link" } td { @if body.view.link.is_some() { "issued (shown to the user only)" } @else { "none yet" } } }
                            tr { th { "expires" } td { (when(body.view.expires_at)) } }
                            tr { th { "version" } td { (body.view.version) } }
                            tr { th { "usage" } td #usage {
                                @match &body.usage {
                                    Some(u) => { "up " (u.up_bytes) " B, down " (u.down_bytes) " B, limit " (u.limit_bytes) " B, last online " (when(u.last_online)) }
                                    None => { "no report from the panel yet" }
                                }
                            } }
                        }
                    }
                    None => { p { "The projector has not built this key's view yet." } }
                }
            }
            @if may_act(session.role) {
                section #actions {
                    h2 { "Commands" }
                    @for action in Action::ALL {
                        a.action href={ "/console/keys/" (key_id) "/" (action.path()) } { (action.label()) "…" }
                        " "
                    }
                    @if let Some(body) = &view {
                        a href={ "/console/users/" (body.view.user_id) "/block" } { "Block this user…" }
                    }
                }
            }
            section #timeline {
                h2 { "Timeline" }
                p #chain {
                    "Hash chain of this key: "
                    (page::verdict(chain.breaks.is_empty(), "holds", "BROKEN"))
                    " (" (chain.events) " events checked"
                    @if !chain.disabled_guards.is_empty() { "; append-only guards: " (chain.disabled_guards.join(", ")) }
                    ")"
                }
                table #events {
                    tr { th { "version" } th { "position" } th { "type" } th { "recorded" } th { "actor" } th { "why" } th { "data" } th { "hash" } th { "chain" } }
                    @for event in &shown {
                        tr.event {
                            td { (event.version) }
                            td { (event.position) }
                            td.type { (event.event_type) }
                            td { (when(Some(event.recorded_at))) }
                            td.actor { (actor_of(event)) }
                            td { (why_of(event)) }
                            td.mono { (compact(&event.data)) }
                            td.mono.hash { (event.hash) }
                            td {
                                @match broken(event.version) {
                                    Some(b) => { span.bad title=(b.problem) { "break" } }
                                    None => { span.ok { "ok" } }
                                }
                            }
                        }
                    }
                }
                @if let Some(next) = next {
                    a href={ "/console/keys/" (key_id) "?from=" (next) } { "Later events →" }
                }
            }
        },
    ))
}

fn parse_uuid(raw: &str) -> Result<Uuid, ConsoleError> {
    Uuid::parse_str(raw).map_err(|_| ConsoleError::BadInput(format!("{raw:?} is not a UUID")))
}

/// `kind:id` of the event's actor, as `keyledger audit history` prints it.
fn actor_of(event: &RecordedEvent) -> String {
    let actor = &event.metadata["actor"];
    match (actor["kind"].as_str(), actor["id"].as_str()) {
        (Some(kind), Some(id)) => format!("{kind}:{id}"),
        _ => "unknown".to_owned(),
    }
}

/// Why the event happened, as far as it says: a reason, a drift's kind, or the command.
fn why_of(event: &RecordedEvent) -> String {
    for field in ["reason", "kind", "error"] {
        if let Some(text) = event.data[field].as_str() {
            return text.to_owned();
        }
    }
    event.metadata["command_id"]
        .as_str()
        .map(|id| format!("command {id}"))
        .unwrap_or_default()
}

fn compact(value: &Value) -> String {
    serde_json::to_string(value).unwrap_or_default()
}

/// The admin's commands on one key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Action {
    Rotate,
    Revoke,
    Renew,
}

impl Action {
    const ALL: [Action; 3] = [Action::Rotate, Action::Revoke, Action::Renew];

    fn path(self) -> &'static str {
        match self {
            Action::Rotate => "rotate",
            Action::Revoke => "revoke",
            Action::Renew => "renew",
        }
    }

    fn label(self) -> &'static str {
        match self {
            Action::Rotate => "Rotate",
            Action::Revoke => "Revoke",
            Action::Renew => "Renew",
        }
    }

    fn from_path(path: &str) -> Result<Self, ConsoleError> {
        Self::ALL
            .into_iter()
            .find(|action| action.path() == path)
            .ok_or_else(|| ConsoleError::NotFound(format!("command {path:?}")))
    }

    fn explanation(self) -> &'static str {
        match self {
            Action::Rotate => {
                "A new client UUID replaces the current one on the panel; the user's old link stops working."
            }
            Action::Revoke => "The key's client is removed from the panel for good.",
            Action::Renew => "The key's expiry moves to the given time.",
        }
    }
}

/// `GET /console/keys/{key_id}/{action}`: what the command will do, and the button.
pub(crate) async fn confirm_action(
    Acting(session): Acting,
    State(state): State<ConsoleState>,
    Path((key_id, action)): Path<(String, String)>,
) -> Result<Markup, ConsoleError> {
    let key_id = parse_uuid(&key_id)?;
    let action = Action::from_path(&action)?;
    // Replayed from the log, not read from the projector's view: the page confirms what
    // the command will act on, which the view may not show yet.
    let events = state.store.read_stream(key_id).await?;
    let view = projector::view_of(key_id, &events)?
        .ok_or_else(|| ConsoleError::NotFound(format!("key {key_id}")))?;
    Ok(page::signed_in(
        &session,
        "Confirm",
        html! {
            h1 { (action.label()) " key " span.mono { (key_id) } "?" }
            div.card {
                p { "User " (view.user_id) " at " (view.location) ", now " strong { (view.status) } "." }
                p { (action.explanation()) }
                form #confirm method="post" action={ "/console/keys/" (key_id) "/" (action.path()) } {
                    (csrf_field(&session))
                    @if action == Action::Revoke {
                        p { label for="reason" { "Reason (kept in the log) " } input #reason type="text" name="reason" required maxlength="500"; }
                    }
                    @if action == Action::Renew {
                        p { label for="expires_at" { "New expiry, RFC 3339 " } input #expires_at type="text" name="expires_at" required placeholder="2030-01-01T00:00:00Z"; }
                    }
                    button.danger type="submit" { "Yes, " (action.label().to_lowercase()) }
                    " " a href={ "/console/keys/" (key_id) } { "Cancel" }
                }
            }
        },
    ))
}

#[derive(Deserialize)]
pub(crate) struct ActionForm {
    csrf: String,
    #[serde(default)]
    reason: Option<String>,
    #[serde(default)]
    expires_at: Option<String>,
}

/// `POST /console/keys/{key_id}/{action}`: records the command, then shows the key.
pub(crate) async fn run_action(
    Acting(session): Acting,
    State(state): State<ConsoleState>,
    Path((key_id, action)): Path<(String, String)>,
    Form(form): Form<ActionForm>,
) -> Result<Response, ConsoleError> {
    check_csrf(&session, &form.csrf)?;
    let key_id = parse_uuid(&key_id)?;
    let action = Action::from_path(&action)?;
    let command = match action {
        Action::Rotate => KeyCommand::Rotate(RotateKey {
            fresh_client_uuid: Uuid::new_v4(),
        }),
        Action::Revoke => KeyCommand::Revoke(RevokeKey {
            reason: reason(form.reason.as_deref())?,
        }),
        Action::Renew => {
            let raw = form.expires_at.unwrap_or_default();
            let expires_at = OffsetDateTime::parse(raw.trim(), &Rfc3339)
                .map_err(|_| ConsoleError::BadInput(format!("{raw:?} is not an RFC 3339 time")))?;
            let now = OffsetDateTime::now_utc();
            if expires_at <= now {
                return Err(ConsoleError::BadInput(
                    "the new expiry must be in the future".into(),
                ));
            }
            KeyCommand::Renew(RenewKey { expires_at, now })
        }
    };
    record(&state, key_id, &command).await?;
    Ok(Redirect::to(&format!("/console/keys/{key_id}")).into_response())
}

fn check_csrf(session: &Session, presented: &str) -> Result<(), ConsoleError> {
    if session.csrf_matches(presented) {
        Ok(())
    } else {
        Err(ConsoleError::BadCsrf)
    }
}

fn reason(raw: Option<&str>) -> Result<String, ConsoleError> {
    let reason = raw.unwrap_or_default().trim();
    let length = reason.chars().count();
    if length == 0 || length > domain::MAX_REASON_CHARS {
        return Err(ConsoleError::BadInput(format!(
            "the reason must be 1 to {} characters",
            domain::MAX_REASON_CHARS
        )));
    }
    Ok(reason.to_owned())
}

async fn record(
    state: &ConsoleState,
    key_id: Uuid,
    command: &KeyCommand,
) -> Result<(), ConsoleError> {
    let metadata =
        EventMetadata::for_command(Uuid::new_v4(), Actor::new(ActorKind::Admin, "console"));
    let outcome = KeyLedger::new(state.store.clone())
        .execute(KeyId::from_uuid(key_id), command, &metadata)
        .await?;
    tracing::info!(%key_id, recorded = outcome.recorded.len(), "console command recorded");
    Ok(())
}

/// `GET /console/users/{user_id}/block`: the user's keys, and the button that revokes them
/// all.
pub(crate) async fn confirm_block(
    Acting(session): Acting,
    State(state): State<ConsoleState>,
    Path(user_id): Path<String>,
) -> Result<Markup, ConsoleError> {
    let user = parse_user(&user_id)?;
    let views = projector::user_views(state.store.pool(), user.get()).await?;
    Ok(page::signed_in(
        &session,
        "Block a user",
        html! {
            h1 { "Block user " (user.get()) "?" }
            div.card {
                p { "The user is blocked (they cannot ask for a key until an admin unblocks them through "
                    "POST /v1/users/{user_id}/unblock), and every key of theirs that is not revoked yet is "
                    "revoked with the reason below, so their links stop working on every panel." }
                ul {
                    @for view in &views { li { span.mono { (view.key_id) } " at " (view.location) ": " (view.status) } }
                }
                form #confirm method="post" action={ "/console/users/" (user.get()) "/block" } {
                    (csrf_field(&session))
                    p { label for="reason" { "Reason (kept in the log) " } input #reason type="text" name="reason" required maxlength="500"; }
                    button.danger type="submit" { "Yes, block and revoke " (views.len()) " keys" }
                }
            }
        },
    ))
}

/// `POST /console/users/{user_id}/block`: records `user.blocked` (so the user cannot ask
/// for a key again until unblocked) and revokes every key of theirs, as the API's block does.
pub(crate) async fn run_block(
    Acting(session): Acting,
    State(state): State<ConsoleState>,
    Path(user_id): Path<String>,
    Form(form): Form<ActionForm>,
) -> Result<Response, ConsoleError> {
    check_csrf(&session, &form.csrf)?;
    let user = parse_user(&user_id)?;
    let reason = reason(form.reason.as_deref())?;
    let keys = api::user_key_ids(&state.store, &state.api.locations, user).await?;
    let blocked = eventstore::AccessControl::new(state.store.clone())
        .block(
            user,
            &reason,
            &keys,
            Uuid::new_v4(),
            Actor::new(ActorKind::Admin, "console"),
        )
        .await?;
    tracing::info!(
        user_id = user.get(),
        revoked = blocked.revoked.len(),
        "user blocked from the console"
    );
    Ok(Redirect::to(&format!("/console/keys?q={}", user.get())).into_response())
}

fn parse_user(raw: &str) -> Result<UserId, ConsoleError> {
    raw.parse::<i64>()
        .ok()
        .and_then(|raw| UserId::new(raw).ok())
        .ok_or_else(|| ConsoleError::BadInput(format!("{raw:?} is not a Telegram user id")))
}
