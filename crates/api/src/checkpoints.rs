//! `GET /v1/audit/checkpoints`: the notary's signed checkpoints (docs/checkpoints.md), for
//! auditors and admins who keep their own copy or check them against the log elsewhere.
//!
//! The route only lists what is stored; checking a checkpoint needs a public key pinned by
//! the auditor, which the server cannot vouch for, so it is done by `keyledger audit verify
//! --checkpoint` or with psql and openssl, not here.

use axum::Json;
use axum::extract::{Query, State};
use eventstore::Checkpoint;
use serde::Serialize;
use utoipa::ToSchema;

use crate::AppState;
use crate::audit::PageQuery;
use crate::auth::{Auditors, Caller};
use crate::error::{ApiError, ErrorBody};

#[derive(Debug, Serialize, ToSchema)]
pub struct CheckpointPage {
    /// Oldest first.
    pub checkpoints: Vec<Checkpoint>,
    /// Pass as `after` to get the next page; equals `after` when there is nothing new.
    pub next_after: i64,
}

/// The stored signed checkpoints, a page at a time, oldest first.
#[utoipa::path(
    get, path = "/v1/audit/checkpoints", tag = "audit",
    params(PageQuery),
    responses(
        (status = 200, body = CheckpointPage),
        (status = 400, body = ErrorBody), (status = 401, body = ErrorBody),
        (status = 403, body = ErrorBody)
    ),
    security(("bearer" = []))
)]
pub(crate) async fn checkpoints(
    _caller: Caller<Auditors>,
    State(state): State<AppState>,
    query: Result<Query<PageQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Json<CheckpointPage>, ApiError> {
    let (after, limit) = PageQuery::bounds(query)?;
    let checkpoints = state.store.checkpoints_after(after, limit).await?;
    let next_after = checkpoints.last().map_or(after, |c| c.position);
    Ok(Json(CheckpointPage {
        checkpoints,
        next_after,
    }))
}
