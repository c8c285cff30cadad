//! `POST /api/v1/scheduler`: the Mesos v1 scheduler HTTP API of the embedded master.
//!
//! A call is JSON or protobuf (by `Content-Type`). SUBSCRIBE answers `200` with a RecordIO stream
//! of events in the format asked for by `Accept`, and a `Mesos-Stream-Id` header that every other
//! call of that framework must carry; other calls answer `202 Accepted`. A malformed call answers
//! `400` with the reason as plain text; a call from a framework that is not subscribed, `403`.

use std::{convert::Infallible, sync::Arc};

use axum::{
    body::{Body, Bytes},
    http::{HeaderMap, HeaderValue, StatusCode, header},
    response::{IntoResponse, Response},
};
use berth_proto::{
    codec::{self, ContentType},
    mesos::v1::scheduler,
    recordio,
};
use futures::StreamExt;
use tokio_stream::wrappers::UnboundedReceiverStream;

use super::{EmbeddedMaster, HEARTBEAT_INTERVAL, MasterError};

/// The header carrying the subscription's stream id.
pub const STREAM_ID_HEADER: &str = "Mesos-Stream-Id";

/// Largest call body accepted.
pub const MAX_CALL_BYTES: usize = 8 * 1024 * 1024;

fn bad_request(message: impl Into<String>) -> Response {
    (StatusCode::BAD_REQUEST, message.into()).into_response()
}

impl IntoResponse for MasterError {
    fn into_response(self) -> Response {
        let status = match &self {
            MasterError::BadRequest(_) => StatusCode::BAD_REQUEST,
            MasterError::Forbidden(_) => StatusCode::FORBIDDEN,
        };
        (status, self.to_string()).into_response()
    }
}

/// Handles one scheduler call.
pub async fn handle(master: Arc<EmbeddedMaster>, headers: HeaderMap, body: Bytes) -> Response {
    let content_type = match headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
    {
        None => {
            return bad_request(
                "missing Content-Type: use application/json or application/x-protobuf",
            );
        }
        Some(value) => match ContentType::from_header(value) {
            Some(ct) => ct,
            None => {
                return (
                    StatusCode::UNSUPPORTED_MEDIA_TYPE,
                    format!("unsupported Content-Type {value:?}: use application/json or application/x-protobuf"),
                )
                    .into_response();
            }
        },
    };
    if body.len() > MAX_CALL_BYTES {
        return (
            StatusCode::PAYLOAD_TOO_LARGE,
            format!("call of {} bytes exceeds {MAX_CALL_BYTES}", body.len()),
        )
            .into_response();
    }
    let call: scheduler::Call = match codec::decode(&body, content_type) {
        Ok(call) => call,
        Err(err) => return bad_request(format!("failed to parse the call: {err}")),
    };
    let Some(call_type) = call
        .r#type
        .and_then(|t| scheduler::call::Type::try_from(t).ok())
    else {
        return bad_request("the call has no (known) 'type'");
    };
    if call_type == scheduler::call::Type::Subscribe {
        return subscribe(master, &headers, call, content_type);
    }
    let Some(framework_id) = call.framework_id.as_ref().map(|f| f.value.clone()) else {
        return bad_request(format!(
            "{} call without 'framework_id'",
            call_type.as_str_name()
        ));
    };
    let stream_id = headers.get(STREAM_ID_HEADER).and_then(|v| v.to_str().ok());
    if let Err(err) = master.authorize(&framework_id, stream_id) {
        return err.into_response();
    }
    let missing =
        |what: &str| bad_request(format!("{} call without '{what}'", call_type.as_str_name()));
    use scheduler::call::Type;
    match call_type {
        Type::Teardown => master.teardown(&framework_id),
        Type::Accept => {
            let Some(accept) = call.accept else {
                return missing("accept");
            };
            if let Err(err) = master.accept(&framework_id, accept) {
                return err.into_response();
            }
        }
        Type::Decline => {
            let Some(decline) = call.decline else {
                return missing("decline");
            };
            master.decline(&framework_id, decline);
        }
        Type::Revive => master.set_suppressed(&framework_id, false),
        Type::Suppress => master.set_suppressed(&framework_id, true),
        Type::Kill => {
            let Some(kill) = call.kill else {
                return missing("kill");
            };
            master.kill(&framework_id, kill);
        }
        Type::Acknowledge => {
            let Some(ack) = call.acknowledge else {
                return missing("acknowledge");
            };
            master.acknowledge(&framework_id, ack);
        }
        Type::Reconcile => {
            let Some(reconcile) = call.reconcile else {
                return missing("reconcile");
            };
            master.reconcile(&framework_id, reconcile);
        }
        Type::Message
        | Type::Request
        | Type::Shutdown
        | Type::AcknowledgeOperationStatus
        | Type::ReconcileOperations
        | Type::AcceptInverseOffers
        | Type::DeclineInverseOffers
        | Type::UpdateFramework => {
            return (
                StatusCode::NOT_IMPLEMENTED,
                format!(
                    "{} is not supported by the embedded master",
                    call_type.as_str_name()
                ),
            )
                .into_response();
        }
        Type::Subscribe | Type::Unknown => return bad_request("unexpected call type"),
    }
    StatusCode::ACCEPTED.into_response()
}

fn subscribe(
    master: Arc<EmbeddedMaster>,
    headers: &HeaderMap,
    call: scheduler::Call,
    content_type: ContentType,
) -> Response {
    let Some(subscribe) = call.subscribe else {
        return bad_request("SUBSCRIBE call without 'subscribe'");
    };
    let info = subscribe.framework_info;
    if let (Some(call_id), Some(info_id)) = (&call.framework_id, &info.id)
        && call_id.value != info_id.value
    {
        return bad_request("'framework_id' differs from 'subscribe.framework_info.id'");
    }
    let accept = match headers.get(header::ACCEPT).and_then(|v| v.to_str().ok()) {
        None => content_type,
        Some(value) => match ContentType::from_accept(value) {
            Some(ct) => ct,
            None => {
                return (
                    StatusCode::NOT_ACCEPTABLE,
                    format!("cannot answer in {value:?}: accept application/json or application/x-protobuf"),
                )
                    .into_response();
            }
        },
    };
    let (framework_id, stream_id, events) = master.subscribe(info);
    // Heartbeats keep idle connections alive and let frameworks detect a dead master.
    let heartbeats = futures::stream::unfold((), |()| async {
        tokio::time::sleep(HEARTBEAT_INTERVAL).await;
        let heartbeat = scheduler::Event {
            r#type: Some(scheduler::event::Type::Heartbeat as i32),
            ..Default::default()
        };
        Some((Some(heartbeat), ()))
    });
    let guard = DisconnectGuard {
        master,
        framework_id,
        stream_id: stream_id.clone(),
    };
    // The stream ends when the master drops the framework's sender (TEARDOWN, failover).
    let events = UnboundedReceiverStream::new(events)
        .map(Some)
        .chain(futures::stream::once(async { None }));
    let events = futures::stream::select(events, heartbeats)
        .take_while(|item| std::future::ready(item.is_some()))
        .filter_map(|item| async move { item })
        .map(move |event| {
            let _keep = &guard;
            Ok::<_, Infallible>(Bytes::from(recordio::encode_record(&codec::encode(
                &event, accept,
            ))))
        });
    let mut response = Response::new(Body::from_stream(events));
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static(accept.as_str()),
    );
    if let Ok(value) = HeaderValue::from_str(&stream_id) {
        headers.insert(STREAM_ID_HEADER, value);
    }
    response
}

/// Tells the master when the subscription's HTTP stream is dropped (the framework disconnected).
struct DisconnectGuard {
    master: Arc<EmbeddedMaster>,
    framework_id: String,
    stream_id: String,
}

impl Drop for DisconnectGuard {
    fn drop(&mut self) {
        self.master
            .disconnected(&self.framework_id, &self.stream_id);
    }
}
