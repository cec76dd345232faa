//! The audit page: the result of `audit verify` (hash chains, append-only guards, key and
//! subscription views against a replay) and the notary's signed checkpoints, a page at a
//! time. Verifying reads the whole log, so it runs when asked for (a button), not on every
//! view of the page.

use axum::extract::{Query, State};
use maud::{Markup, html};
use serde::Deserialize;

use crate::ConsoleState;
use crate::error::{ConsoleError, Viewer};
use crate::page::{self, when};

/// Checkpoints shown per page.
const CHECKPOINT_PAGE: i64 = 50;

#[derive(Deserialize)]
pub(crate) struct AuditQuery {
    /// `1` runs the verification.
    verify: Option<u8>,
    /// Checkpoints after this log position.
    after: Option<i64>,
}

/// `GET /console/audit`.
pub(crate) async fn audit_page(
    Viewer(session): Viewer,
    State(state): State<ConsoleState>,
    Query(query): Query<AuditQuery>,
) -> Result<Markup, ConsoleError> {
    let report = match query.verify {
        Some(1) => Some(api::verify_report(&state.store).await?),
        _ => None,
    };
    let after = query.after.unwrap_or(0).max(0);
    let checkpoints = state
        .store
        .checkpoints_after(after, CHECKPOINT_PAGE)
        .await?;
    let next = (checkpoints.len() as i64 == CHECKPOINT_PAGE)
        .then(|| checkpoints.last().map(|c| c.position))
        .flatten();
    Ok(page::signed_in(
        &session,
        "Audit",
        html! {
            h1 { "Audit" }
            section #verify {
                h2 { "audit verify" }
                @match &report {
                    None => {
                        form method="get" action="/console/audit" {
                            input type="hidden" name="verify" value="1";
                            button type="submit" { "Run audit verify" }
                            " " span.muted { "reads the whole log" }
                        }
                    }
                    Some(report) => {
                        p #verify-result { "Result: " (page::verdict(report.ok, "everything holds", "DIFFERENCES FOUND")) }
                        table {
                            tr { th { "hash chains" } td { (report.chains.streams) " streams, " (report.chains.events) " events, " (report.chains.breaks.len()) " breaks" } }
                            tr { th { "append-only guards" } td {
                                @if report.chains.disabled_guards.is_empty() { span.ok { "in place" } }
                                @else { span.bad { (report.chains.disabled_guards.join(", ")) } }
                            } }
                            tr { th { "key views" } td { (report.views.keys) " keys, " (report.views.differences.len()) " differences, " (report.views.lagging.len()) " behind the log" } }
                            tr { th { "subscription views" } td { (report.subscriptions.subscriptions) " subscriptions, " (report.subscriptions.differences.len()) " differences" } }
                        }
                        @if !report.chains.breaks.is_empty() {
                            table {
                                tr { th { "stream" } th { "version" } th { "position" } th { "problem" } }
                                @for b in &report.chains.breaks {
                                    tr { td.mono { a href={ "/console/keys/" (b.stream_id) } { (b.stream_id) } } td { (b.version) } td { (b.position) } td { (b.problem) } }
                                }
                            }
                        }
                    }
                }
            }
            section #checkpoints {
                h2 { "Signed checkpoints" }
                p.muted { "Check one against a public key you pinned yourself: "
                    code { "keyledger audit verify --checkpoint" } " (docs/checkpoints.md)." }
                @if checkpoints.is_empty() {
                    p { "None after position " (after) "." }
                } @else {
                    table {
                        tr { th { "position" } th { "signed" } th { "log hash" } th { "public key" } th { "signature" } }
                        @for c in &checkpoints {
                            tr { td { (c.position) } td { (when(Some(c.signed_at))) } td.mono { (c.log_hash) } td.mono { (c.public_key) } td.mono { (c.signature) } }
                        }
                    }
                }
                @if let Some(next) = next {
                    a href={ "/console/audit?after=" (next) } { "Later checkpoints →" }
                }
            }
        },
    ))
}
