//! The `panel.call` span: one per call to a panel's API, naming the location, the
//! operation, which attempt of its retried step it is, the HTTP method, path template and
//! status of its last exchange, and its outcome (docs/operations.md, "Traces"). A slow or
//! retried key shows here which panel held it up and how.
//!
//! The attempt number is set by the retry loop around a whole step, which may make several
//! calls (a list, then an add); a task-local carries it down to each call's span without
//! threading it through every operation.

use tracing::field::Empty;

tokio::task_local! {
    static ATTEMPT: u32;
}

/// Runs `step` as attempt `attempt` (1 for the first try) of a retried panel step.
pub(crate) async fn as_attempt<F: Future>(attempt: u32, step: F) -> F::Output {
    ATTEMPT.scope(attempt, step).await
}

/// A new `panel.call` span for `operation` on `location`, its outcome still to record.
pub(crate) fn panel_call(location: &str, operation: &'static str) -> tracing::Span {
    let attempt = ATTEMPT.try_with(|attempt| *attempt).unwrap_or(1);
    tracing::info_span!(
        "panel.call",
        location,
        operation,
        attempt,
        outcome = Empty,
        http.request.method = Empty,
        url.template = Empty,
        http.response.status_code = Empty,
        otel.status_code = Empty,
    )
}

/// Records the outcome (`ok`, `timeout`, `error`) on a `panel.call` span.
pub(crate) fn record_outcome(span: &tracing::Span, outcome: &'static str) {
    span.record("outcome", outcome);
    if outcome != "ok" {
        span.record("otel.status_code", "ERROR");
    }
}

/// Records one HTTP exchange on the current `panel.call` span (a no-op outside one).
pub(crate) fn record_exchange(method: &reqwest::Method, path: &str, status: u16) {
    let span = tracing::Span::current();
    span.record("http.request.method", method.as_str());
    span.record("url.template", path_template(path).as_str());
    span.record("http.response.status_code", status);
}

/// `path` with the ids in it (client UUIDs, inbound numbers, emails) as `{id}`: the
/// template is what calls have in common, and an email names a user.
fn path_template(path: &str) -> String {
    let path = path.split('?').next().unwrap_or_default();
    path.split('/')
        .map(|segment| {
            let is_id = uuid::Uuid::parse_str(segment).is_ok()
                || (!segment.is_empty() && segment.bytes().all(|b| b.is_ascii_digit()))
                || segment.contains('@')
                || segment.contains('%');
            if is_id { "{id}" } else { segment }
        })
        .collect::<Vec<_>>()
        .join("/")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_leave_the_path_template() {
        assert_eq!(
            path_template("panel/api/inbounds/updateClient/5f0c6a1e-8a4b-4d7e-9a43-2b3c4d5e6f70"),
            "panel/api/inbounds/updateClient/{id}"
        );
        assert_eq!(
            path_template("panel/api/inbounds/get/7?x=1"),
            "panel/api/inbounds/get/{id}"
        );
        assert_eq!(
            path_template("panel/api/inbounds/tg1%40ams/resetClientTraffic"),
            "panel/api/inbounds/{id}/resetClientTraffic"
        );
        assert_eq!(path_template("login"), "login");
    }
}
