//! Resuming a stream from `Last-Event-ID`.

use super::respond::{event_stream_response, store_stream_response, too_many};
use crate::app::App;
use crate::cluster::{self, NotFollowing};
use crate::http_util::{self, ProxyBody};
use crate::identity::Owner;
use crate::log::StreamLog;
use crate::metrics::{Metrics, ResumeResult, StoreOp};
use crate::protocol::{EventId, EventIdError};
use crate::query;
use crate::settings::Settings;
use crate::store::{self, StoreError};
use crate::stream::Rejected;
use http::header::{self, HeaderValue};
use http::{Request, Response, StatusCode};
use std::sync::Arc;
use std::time::Duration;

/// Longest a resume waits for the stream store to say what it has of a stream.
const STORE_ANSWER: Duration = Duration::from_secs(2);

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

/// Decides the answer to a resume of `id` by `owner`, as the request's `settings` say.
pub async fn answer(app: &App, settings: &Settings, id: EventId, owner: Option<Owner>) -> Resume {
    let Some(stream) = app.registry.get(&id.stream) else {
        return from_store(app, settings, id, owner).await;
    };
    if !app.identity.permits(stream.owner, owner) {
        return Resume::Gone;
    }
    let log: &Arc<dyn StreamLog> = &stream.log;
    // Ids past the durable mark but appended may have been shown by another replica from the store
    // before this one learnt the store has them; the cursor waits for the mark.
    let last = log.last_seq();
    if id.seq > last || id.seq + 1 < log.first_seq() {
        return Resume::Gone;
    }
    if log.is_closed() && id.seq == last {
        app.metrics.resumes.increment(ResumeResult::Finished);
        return Resume::Respond(http_util::status(StatusCode::NO_CONTENT));
    }
    let Some(follower) = stream.attach(settings.limits.max_followers) else {
        return Resume::Respond(too_many(app, settings, Rejected::MaxFollowers));
    };
    app.metrics.resumes.increment(ResumeResult::Replayed);
    let span =
        tracing::info_span!("stream", stream_id = %stream.id, route = %stream.route, model = %stream.model);
    span.in_scope(|| tracing::info!(after = id.seq, "stream resumed"));
    Resume::Respond(event_stream_response(app, settings, follower, id.seq, span))
}

/// A resume of a stream this process does not hold: another replica reads it, or read it before.
async fn from_store(app: &App, settings: &Settings, id: EventId, owner: Option<Owner>) -> Resume {
    let meta = match tokio::time::timeout(STORE_ANSWER, app.store.store.meta(id.stream)).await {
        Ok(Ok(meta)) => meta,
        Ok(Err(StoreError::NotFound)) => return Resume::Gone,
        Ok(Err(e)) => return Resume::Respond(store_failed(app, settings, &e)),
        Err(_) => {
            let e = StoreError::Unavailable("no answer in time".into());
            return Resume::Respond(store_failed(app, settings, &e));
        }
    };
    // This process serves the streams it reads from its own log only: one it no longer holds was
    // evicted or expired here, whatever copy the store still has.
    if *meta.replica == *app.store.replica || !app.identity.permits(meta.owner, owner) {
        return Resume::Gone;
    }
    if id.seq > meta.last_seq && meta.state == store::State::Running && !meta.lease_expired {
        // The live replica reading it gave this id out while the store was away, and has not
        // written it since: it will.
        tracing::info!(
            after = id.seq,
            stored = meta.last_seq,
            "resume of events not in the store yet"
        );
        return Resume::Respond(unavailable(app, settings));
    }
    if id.seq > meta.last_seq || id.seq + 1 < meta.first_seq {
        return Resume::Gone;
    }
    if matches!(meta.state, store::State::Finished(_)) && id.seq == meta.last_seq {
        app.metrics.resumes.increment(ResumeResult::Finished);
        return Resume::Respond(http_util::status(StatusCode::NO_CONTENT));
    }
    let max = settings.limits.max_followers;
    let follower = match cluster::follow(&app.store, &app.registry, id.stream, max, &app.metrics).await {
        Ok(f) => f,
        Err(NotFollowing::Full) => return Resume::Respond(too_many(app, settings, Rejected::MaxFollowers)),
        Err(NotFollowing::Gone) => return Resume::Gone,
    };
    app.metrics.resumes.increment(ResumeResult::Replayed);
    let span =
        tracing::info_span!("stream", stream_id = %id.stream, route = %meta.route, model = %meta.model);
    span.in_scope(
        || tracing::info!(after = id.seq, replica = %meta.replica, "stream resumed from the store"),
    );
    let dialect = settings.dialect_of(&meta.route);
    Resume::Respond(store_stream_response(
        app, settings, follower, dialect, id.seq, span,
    ))
}

/// [`unavailable`], counted as a failed store lookup.
fn store_failed(app: &App, settings: &Settings, e: &StoreError) -> Response<ProxyBody> {
    tracing::warn!(error = %e, "stream store unavailable for a resume");
    app.metrics.store_errors.increment(StoreOp::Meta);
    unavailable(app, settings)
}

/// `503` with `Retry-After`: the stream may well exist, but the store cannot serve it now.
fn unavailable(app: &App, settings: &Settings) -> Response<ProxyBody> {
    app.metrics.resumes.increment(ResumeResult::Unavailable);
    let mut resp = http_util::error(
        StatusCode::SERVICE_UNAVAILABLE,
        "store_unavailable",
        "the stream store cannot serve this stream now; try again shortly",
    );
    resp.headers_mut().insert(
        header::RETRY_AFTER,
        HeaderValue::from(settings.limits.retry_after_secs),
    );
    resp
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
