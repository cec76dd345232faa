//! Every way a console request can fail, each answered with a page that says so (or, for
//! a visitor without a session, a redirect to the sign-in form), and the extractors that
//! admit a signed-in role.

use std::time::Duration;

use api::Role;
use axum::extract::FromRequestParts;
use axum::http::StatusCode;
use axum::http::request::Parts;
use axum::response::{IntoResponse, Redirect, Response};
use maud::html;
use time::OffsetDateTime;

use crate::ConsoleState;
use crate::page;
use crate::session::Session;

#[derive(Debug, thiserror::Error)]
pub enum ConsoleError {
    #[error("sign in first")]
    NotSignedIn,
    #[error("the {} role has no console", role.as_str())]
    NoConsole { role: Role },
    #[error("the {} role may not do this; it needs the admin role", role.as_str())]
    Forbidden { role: Role },
    #[error(
        "the form has expired or did not come from this console; reload the page and try again"
    )]
    BadCsrf,
    #[error("that token is not valid")]
    WrongToken,
    #[error("too many failed sign-ins from this address; try again in {} s", .0.as_secs())]
    TooManyAttempts(Duration),
    #[error("{0}")]
    BadInput(String),
    #[error("{0} not found")]
    NotFound(String),
    #[error("the broker's management API is not configured for this process")]
    NoManagement,
    #[error(transparent)]
    Api(#[from] api::ApiError),
    #[error("the event log: {0}")]
    Store(#[from] eventstore::StoreError),
    #[error("the command was not recorded: {0}")]
    Command(#[from] eventstore::ExecuteError),
    #[error("replaying the key: {0}")]
    View(#[from] projector::ViewError),
    #[error("the database: {0}")]
    Database(#[from] sqlx::Error),
    #[error("RabbitMQ's management API: {0}")]
    Management(#[from] broker::management::ManagementError),
}

impl ConsoleError {
    fn status(&self) -> StatusCode {
        match self {
            ConsoleError::NotSignedIn | ConsoleError::WrongToken => StatusCode::UNAUTHORIZED,
            ConsoleError::NoConsole { .. }
            | ConsoleError::Forbidden { .. }
            | ConsoleError::BadCsrf => StatusCode::FORBIDDEN,
            ConsoleError::TooManyAttempts(_) => StatusCode::TOO_MANY_REQUESTS,
            ConsoleError::BadInput(_) => StatusCode::BAD_REQUEST,
            ConsoleError::NotFound(_) => StatusCode::NOT_FOUND,
            ConsoleError::Api(error) => error.status(),
            ConsoleError::Command(eventstore::ExecuteError::Refused(_)) => StatusCode::CONFLICT,
            ConsoleError::NoManagement
            | ConsoleError::Store(_)
            | ConsoleError::Command(_)
            | ConsoleError::View(_)
            | ConsoleError::Database(_)
            | ConsoleError::Management(_) => StatusCode::SERVICE_UNAVAILABLE,
        }
    }
}

impl IntoResponse for ConsoleError {
    fn into_response(self) -> Response {
        if matches!(self, ConsoleError::NotSignedIn) {
            return Redirect::to("/console/signin").into_response();
        }
        let status = self.status();
        if status.is_server_error() {
            tracing::warn!(error = %self, "console page failed");
        }
        let body = page::bare(
            "Error",
            html! {
                h1 { "Not done" }
                p.error role="alert" { (self.to_string()) }
                p { a href="/console" { "Back to the console" } }
            },
        );
        (status, body).into_response()
    }
}

/// A signed-in role that has a console (admin or auditor).
pub(crate) struct Viewer(pub Session);

impl FromRequestParts<ConsoleState> for Viewer {
    type Rejection = ConsoleError;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &ConsoleState,
    ) -> Result<Self, ConsoleError> {
        let session =
            Session::from_headers(&parts.headers, &state.api.tokens, OffsetDateTime::now_utc())
                .ok_or(ConsoleError::NotSignedIn)?;
        match session.role {
            Role::Admin | Role::Auditor => Ok(Self(session)),
            role @ Role::Service => Err(ConsoleError::NoConsole { role }),
        }
    }
}

/// A signed-in role that may act (admin).
pub(crate) struct Actor(pub Session);

impl FromRequestParts<ConsoleState> for Actor {
    type Rejection = ConsoleError;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &ConsoleState,
    ) -> Result<Self, ConsoleError> {
        let Viewer(session) = Viewer::from_request_parts(parts, state).await?;
        if !crate::may_act(session.role) {
            return Err(ConsoleError::Forbidden { role: session.role });
        }
        Ok(Self(session))
    }
}
