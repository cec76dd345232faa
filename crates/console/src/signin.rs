//! Signing in and out. The form takes a role token; a right one is answered with a signed
//! session cookie, a wrong one with a clear error, and an address that keeps presenting
//! wrong tokens is refused for a while, as the subscription door refuses token guessers.
//! The form itself carries a CSRF value paired with a short-lived cookie, so another site
//! cannot sign a browser in under its own token.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::Duration;

use axum::extract::{ConnectInfo, State};
use axum::http::HeaderMap;
use axum::http::header::SET_COOKIE;
use axum::response::{AppendHeaders, IntoResponse, Redirect, Response};
use axum::{Extension, Form};
use maud::html;
use serde::Deserialize;
use time::OffsetDateTime;
use uuid::Uuid;

use crate::error::ConsoleError;
use crate::page;
use crate::session::{
    self, SESSION_COOKIE, SESSION_LIFETIME, SIGNIN_COOKIE, Session, over_https, set_cookie,
};
use crate::{Console, ConsoleState};

/// How long the sign-in form may stay open before it must be reloaded.
const SIGNIN_FORM_LIFETIME: Duration = Duration::from_secs(3600);

/// `GET /console/signin`.
pub(crate) async fn form(headers: HeaderMap) -> Response {
    signin_page(&headers, None)
}

fn signin_page(headers: &HeaderMap, problem: Option<&str>) -> Response {
    let csrf = Uuid::new_v4().simple().to_string();
    let cookie = set_cookie(
        SIGNIN_COOKIE,
        &csrf,
        SIGNIN_FORM_LIFETIME,
        over_https(headers),
    );
    let body = page::bare(
        "Sign in",
        html! {
            h1 { "Sign in" }
            @if let Some(problem) = problem {
                p.error #signin-error role="alert" { (problem) }
            }
            div.card {
                p { "Sign in with the admin or auditor token of this deployment "
                    "(KEYLEDGER_ADMIN_TOKEN, KEYLEDGER_AUDITOR_TOKEN)." }
                form method="post" action="/console/signin" {
                    input type="hidden" name="csrf" value=(csrf);
                    label for="token" { "Token " }
                    input #token type="password" name="token" autocomplete="off" required;
                    " "
                    button type="submit" { "Sign in" }
                }
            }
        },
    );
    (AppendHeaders([(SET_COOKIE, cookie)]), body).into_response()
}

#[derive(Deserialize)]
pub(crate) struct SignInForm {
    token: String,
    csrf: String,
}

/// `POST /console/signin`.
pub(crate) async fn sign_in(
    State(state): State<ConsoleState>,
    peer: Option<Extension<ConnectInfo<SocketAddr>>>,
    headers: HeaderMap,
    Form(form): Form<SignInForm>,
) -> Result<Response, ConsoleError> {
    let address = peer.map_or(
        IpAddr::V4(Ipv4Addr::UNSPECIFIED),
        |Extension(ConnectInfo(a))| a.ip(),
    );
    if let Some(wait) = state.signin_limits.blocked(address) {
        return Err(ConsoleError::TooManyAttempts(wait));
    }
    let paired = session::cookie(&headers, SIGNIN_COOKIE)
        .is_some_and(|expected| session::constant_time_equal(&form.csrf, expected));
    if !paired {
        return Err(ConsoleError::BadCsrf);
    }
    match start_session(&state, &form.token) {
        Ok(session) => {
            tracing::info!(role = session.role.as_str(), "console sign-in");
            let secure = over_https(&headers);
            let cookies = [
                (
                    SET_COOKIE,
                    set_cookie(
                        SESSION_COOKIE,
                        &session.cookie_value(),
                        SESSION_LIFETIME,
                        secure,
                    ),
                ),
                (
                    SET_COOKIE,
                    set_cookie(SIGNIN_COOKIE, "", Duration::ZERO, secure),
                ),
            ];
            Ok((AppendHeaders(cookies), Redirect::to("/console")).into_response())
        }
        Err(error) => {
            if matches!(error, ConsoleError::WrongToken) {
                state.signin_limits.miss(address);
            }
            let mut response = signin_page(&headers, Some(&error.to_string()));
            *response.status_mut() = axum::http::StatusCode::UNAUTHORIZED;
            Ok(response)
        }
    }
}

fn start_session(state: &Console, token: &str) -> Result<Session, ConsoleError> {
    let role = state
        .api
        .tokens
        .role_of(token.trim())
        .ok_or(ConsoleError::WrongToken)?;
    if role == api::Role::Service {
        return Err(ConsoleError::NoConsole { role });
    }
    Session::start(&state.api.tokens, role, OffsetDateTime::now_utc())
        .ok_or(ConsoleError::WrongToken)
}

#[derive(Deserialize)]
pub(crate) struct CsrfForm {
    pub(crate) csrf: String,
}

/// `POST /console/signout`: forgets the cookie. The session itself stays valid until it
/// expires (nothing is stored to revoke); changing the role's token ends it everywhere.
pub(crate) async fn sign_out(
    crate::error::Viewer(session): crate::error::Viewer,
    headers: HeaderMap,
    Form(form): Form<CsrfForm>,
) -> Result<Response, ConsoleError> {
    if !session.csrf_matches(&form.csrf) {
        return Err(ConsoleError::BadCsrf);
    }
    let cookie = set_cookie(SESSION_COOKIE, "", Duration::ZERO, over_https(&headers));
    Ok((
        AppendHeaders([(SET_COOKIE, cookie)]),
        Redirect::to("/console/signin"),
    )
        .into_response())
}
