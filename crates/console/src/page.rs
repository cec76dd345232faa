//! The frame every console page shares: the document head, the navigation a role may use,
//! the stylesheet (served as a file, so the Content-Security-Policy needs no inline
//! style), and small helpers for the values pages show.

use axum::http::header::CONTENT_TYPE;
use axum::response::IntoResponse;
use maud::{DOCTYPE, Markup, html};
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

use crate::session::Session;

const STYLESHEET: &str = r#"
body { font-family: system-ui, sans-serif; margin: 0; color: #1d232a; background: #f6f7f9; }
header { background: #1d3557; color: #fff; padding: .6rem 1.2rem; display: flex; gap: 1.2rem; align-items: center; flex-wrap: wrap; }
header a { color: #fff; text-decoration: none; font-weight: 600; }
header .who { margin-left: auto; font-size: .9rem; }
header form { display: inline; }
main { padding: 1rem 1.5rem; }
table { border-collapse: collapse; background: #fff; margin: .5rem 0 1.2rem; width: 100%; }
th, td { border: 1px solid #d5d9de; padding: .3rem .5rem; text-align: left; vertical-align: top; font-size: .88rem; }
th { background: #e9edf2; }
code, .mono { font-family: ui-monospace, monospace; font-size: .82rem; word-break: break-all; }
.ok { color: #1b7f3b; font-weight: 600; }
.bad, .error { color: #b3261e; font-weight: 600; }
.muted { color: #66707a; }
form.inline { display: inline; }
button, input[type=submit] { background: #1d3557; color: #fff; border: 0; padding: .35rem .8rem; border-radius: 4px; cursor: pointer; }
button.danger { background: #b3261e; }
input[type=text], input[type=password], input[type=datetime-local] { padding: .3rem; min-width: 22rem; }
section { margin-bottom: 1.5rem; }
.card { background: #fff; border: 1px solid #d5d9de; padding: .8rem 1rem; max-width: 44rem; }
"#;

/// `GET /console/style.css`.
pub(crate) async fn stylesheet() -> impl IntoResponse {
    ([(CONTENT_TYPE, "text/css; charset=utf-8")], STYLESHEET)
}

/// A page for a signed-in role, with the navigation and the sign-out button.
pub(crate) fn signed_in(session: &Session, title: &str, body: Markup) -> Markup {
    document(
        title,
        html! {
            header {
                a href="/console" { "keyledger console" }
                a href="/console/keys" { "Keys" }
                a href="/console/audit" { "Audit" }
                a href="/console/locations" { "Locations" }
                a href="/console/queues" { "Queues" }
                a href=(crate::DOCS_PATH) { "API" }
                span.who {
                    "signed in as " strong #role { (session.role.as_str()) } " "
                    form.inline method="post" action="/console/signout" {
                        input type="hidden" name="csrf" value=(session.csrf_token());
                        button type="submit" { "Sign out" }
                    }
                }
            }
            main { (body) }
        },
    )
}

/// A page without a session: sign-in and errors.
pub(crate) fn bare(title: &str, body: Markup) -> Markup {
    document(
        title,
        html! {
            header { a href="/console" { "keyledger console" } }
            main { (body) }
        },
    )
}

fn document(title: &str, content: Markup) -> Markup {
    html! {
        (DOCTYPE)
        html lang="en" {
            head {
                meta charset="utf-8";
                meta name="viewport" content="width=device-width, initial-scale=1";
                title { (title) " · keyledger" }
                link rel="stylesheet" href="/console/style.css";
            }
            body { (content) }
        }
    }
}

/// A hidden CSRF field for a POST form of `session`.
pub(crate) fn csrf_field(session: &Session) -> Markup {
    html! { input type="hidden" name="csrf" value=(session.csrf_token()); }
}

/// A time as RFC 3339, or a dash.
pub(crate) fn when(at: Option<OffsetDateTime>) -> String {
    at.and_then(|at| at.format(&Rfc3339).ok())
        .unwrap_or_else(|| "—".to_owned())
}

/// A yes/no verdict, styled.
pub(crate) fn verdict(ok: bool, yes: &str, no: &str) -> Markup {
    html! {
        @if ok { span.ok { (yes) } } @else { span.bad { (no) } }
    }
}
