//! Resuming a stream from `Last-Event-ID`.

use super::respond::{event_stream_response, too_many};
use crate::app::App;
use crate::http_util::{self, ProxyBody};
use crate::identity::Owner;
use crate::log::StreamLog;
use crate::metrics::{Metrics, ResumeResult};
use crate::protocol::{EventId, EventIdError};
use crate::query;
use crate::stream::Rejected;
use http::{Request, Response, StatusCode};
use std::sync::Arc;

/// What a resume request gets.
pub enum Resume {
    /// A final answer (200 with events, or 204).
    Respond(Response<ProxyBody>),
    /// Unknown, expired, evicted or foreign: 410, or a fresh stream with `on_miss = "restart"`.
    Gone,
}

/// The `Last-Event-ID` of a request: the header, else the `last_event_id` query parameter.
pub fn requested<B>(req: &Request<B>) -> Result<Option<EventId>, EventIdError> {
    if let Some(v) = req.headers().get("last-event-id") {
        if !v.as_bytes().is_empty() {
            return EventId::parse(v.as_bytes()).map(Some);
        }
    }
    match query::param_raw(req.uri(), query::LAST_EVENT_ID_PARAM) {
        Some(v) if !v.is_empty() => EventId::parse(&v).map(Some),
        _ => Ok(None),
    }
}

/// Decides the answer to a resume of `id` by `owner`.
pub fn answer(app: &App, id: EventId, owner: Option<Owner>) -> Resume {
    let Some(stream) = app.registry.get(&id.stream) else {
        return Resume::Gone;
    };
    if !app.identity.permits(stream.owner, owner) {
        return Resume::Gone;
    }
    let log: &Arc<dyn StreamLog> = &stream.log;
    let last = log.last_seq();
    if id.seq > last || id.seq + 1 < log.first_seq() {
        return Resume::Gone;
    }
    if log.is_closed() && id.seq == last {
        app.metrics.resumes.increment(ResumeResult::Finished);
        return Resume::Respond(http_util::status(StatusCode::NO_CONTENT));
    }
    let Some(follower) = stream.attach(app.settings.limits.max_followers) else {
        return Resume::Respond(too_many(app, Rejected::MaxFollowers));
    };
    app.metrics.resumes.increment(ResumeResult::Replayed);
    let span =
        tracing::info_span!("stream", stream_id = %stream.id, route = %stream.route, model = %stream.model);
    span.in_scope(|| tracing::info!(after = id.seq, "stream resumed"));
    Resume::Respond(event_stream_response(app, follower, id.seq, span))
}

/// The one `410` every unusable id gets, so ids reveal nothing.
pub fn gone(metrics: &Metrics) -> Response<ProxyBody> {
    metrics.resumes.increment(ResumeResult::Gone);
    http_util::error(
        StatusCode::GONE,
        "resume_unavailable",
        "this stream cannot be resumed (unknown, expired, or not yours); ask again",
    )
}
