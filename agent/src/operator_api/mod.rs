//! The Mesos v1 agent operator API (`POST /api/v1`) and the v0 `/state` document.
//!
//! A call is an `agent::Call` (package `mesos.v1.agent`) in JSON or protobuf, by `Content-Type`;
//! the answer is an `agent::Response` in the encoding `Accept` asks for. As the Mesos agent does
//! (`Http::api`): a missing `Accept` (or one allowing JSON) means JSON, else protobuf if allowed,
//! else `406`; a missing `Content-Type` is `400`, another media type `415`; a body that does not
//! decode, a call without a (known) `type` or without its argument message is `400` with the
//! reason; a call berth does not serve is `501` naming it. Method (`405`) and size (`413`) are
//! checked by the router.
//!
//! Served: `GET_HEALTH`, `GET_FLAGS`, `GET_VERSION`, `GET_METRICS`, `GET_STATE`,
//! `GET_CONTAINERS`, `GET_FRAMEWORKS`, `GET_EXECUTORS`, `GET_TASKS`, `GET_AGENT`, and
//! `GET_OPERATIONS`/`GET_RESOURCE_PROVIDERS` (always empty).
//!
//! Layout: [`model`] copies the agent into a [`model::Snapshot`] and sorts it into frameworks,
//! executors and tasks as Mesos reports them; [`calls`] renders the v1 responses and
//! [`state_v0`] the v0 `/state` document from it; [`metrics`] computes the Mesos-named metrics;
//! [`flags`] reads the agent's flags back from its command line. This file is the HTTP boundary:
//! content negotiation, decoding, dispatch, and the one mapping of errors to status codes.

pub mod calls;
pub mod flags;
pub mod metrics;
pub mod model;
pub mod state_v0;

#[cfg(test)]
mod tests;

use std::{path::Path, sync::Arc};

use axum::{
    http::{HeaderMap, HeaderValue, StatusCode, header},
    response::{IntoResponse, Response},
};
use berth_proto::{
    codec::{self, CodecError, ContentType},
    mesos::v1::agent::{self, call::Type},
};
use serde_json::{Value, json};
use tracing::debug;

use crate::{agent::Agent, task};
use model::{Model, Snapshot};

/// What the agent's link to its master tells the operator APIs.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct LinkStatus {
    /// Whether the agent is registered with a master (`slave/registered`).
    pub registered: bool,
    /// The master's hostname (`master_hostname` of `/state`), when registered.
    pub master_hostname: Option<String>,
    /// Capabilities the agent advertises to the master (`MULTI_ROLE`...), for `/state`.
    pub capabilities: Vec<String>,
}

/// Why a call was refused; [`IntoResponse`] maps each to its HTTP status.
#[derive(Debug, thiserror::Error)]
pub enum OperatorApiError {
    /// No `Content-Type` header.
    #[error("Expecting 'Content-Type' to be present")]
    MissingContentType,
    /// A `Content-Type` other than JSON or protobuf.
    #[error("Expecting 'Content-Type' of application/json or application/x-protobuf, not {0:?}")]
    UnsupportedContentType(String),
    /// A streaming header on a non-streaming call.
    #[error("Expecting '{0}' to be not set for non-streaming calls")]
    StreamingHeader(&'static str),
    /// `Accept` allows neither JSON nor protobuf.
    #[error("Expecting 'Accept' to allow application/json or application/x-protobuf, not {0:?}")]
    NotAcceptable(String),
    /// The body is not an `agent::Call`.
    #[error("Failed to parse body into Call: {0}")]
    Decode(#[source] CodecError),
    /// The call has no `type`.
    #[error("Expecting 'type' to be present")]
    MissingType,
    /// The call's `type` is a number no Mesos release defines.
    #[error("Unknown call type {0}")]
    UnknownType(i32),
    /// The call lacks the message its type needs.
    #[error("Expecting '{field}' to be present for {call}")]
    MissingArgument {
        /// Call type name.
        call: &'static str,
        /// The missing field.
        field: &'static str,
    },
    /// A call type berth does not serve.
    #[error("{0} is not implemented by this agent (berth)")]
    NotImplemented(&'static str),
}

impl OperatorApiError {
    /// The HTTP status of the error.
    pub fn status(&self) -> StatusCode {
        match self {
            Self::MissingContentType
            | Self::Decode(_)
            | Self::MissingType
            | Self::UnknownType(_)
            | Self::MissingArgument { .. } => StatusCode::BAD_REQUEST,
            Self::UnsupportedContentType(_) => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            Self::StreamingHeader(header) if *header == MESSAGE_ACCEPT => {
                StatusCode::NOT_ACCEPTABLE
            }
            Self::StreamingHeader(_) => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            Self::NotAcceptable(_) => StatusCode::NOT_ACCEPTABLE,
            Self::NotImplemented(_) => StatusCode::NOT_IMPLEMENTED,
        }
    }
}

impl IntoResponse for OperatorApiError {
    fn into_response(self) -> Response {
        (self.status(), self.to_string()).into_response()
    }
}

const MESSAGE_CONTENT_TYPE: &str = "Message-Content-Type";
const MESSAGE_ACCEPT: &str = "Message-Accept";

/// Whether an `Accept` header value allows `media` (Mesos' `acceptsMediaType`): the most
/// specific matching entry (`type/sub`, `type/*`, `*/*`) decides, and allows unless `q=0`. A
/// missing header allows everything.
pub fn accepts(accept: Option<&str>, media: &str) -> bool {
    let Some(accept) = accept else {
        return true;
    };
    let kind = media.split('/').next().unwrap_or_default();
    let mut best: Option<(u8, f32)> = None;
    for entry in accept.split(',') {
        let mut parts = entry.split(';');
        let range = parts.next().unwrap_or_default().trim().to_ascii_lowercase();
        let q = parts
            .filter_map(|p| p.trim().strip_prefix("q="))
            .find_map(|q| q.trim().parse::<f32>().ok())
            .unwrap_or(1.0);
        let specificity = if range == media {
            3
        } else if range == format!("{kind}/*") {
            2
        } else if range == "*/*" {
            1
        } else {
            continue;
        };
        if best.is_none_or(|(s, _)| specificity > s) {
            best = Some((specificity, q));
        }
    }
    best.is_some_and(|(_, q)| q > 0.0)
}

/// The request's call encoding and the response's, from its headers.
pub fn negotiate(headers: &HeaderMap) -> Result<(ContentType, ContentType), OperatorApiError> {
    let text = |name: &str| {
        headers
            .get(name)
            .map(|v| v.to_str().unwrap_or("<not UTF-8>"))
    };
    let content_type = match text(header::CONTENT_TYPE.as_str()) {
        None => return Err(OperatorApiError::MissingContentType),
        Some(value) => ContentType::from_header(value)
            .ok_or_else(|| OperatorApiError::UnsupportedContentType(value.to_string()))?,
    };
    if headers.contains_key(MESSAGE_CONTENT_TYPE) {
        return Err(OperatorApiError::StreamingHeader(MESSAGE_CONTENT_TYPE));
    }
    let accept = text(header::ACCEPT.as_str());
    let response_type = if accepts(accept, ContentType::JSON) {
        ContentType::Json
    } else if accepts(accept, ContentType::PROTOBUF) {
        ContentType::Protobuf
    } else {
        return Err(OperatorApiError::NotAcceptable(
            accept.unwrap_or_default().to_string(),
        ));
    };
    if headers.contains_key(MESSAGE_ACCEPT) {
        return Err(OperatorApiError::StreamingHeader(MESSAGE_ACCEPT));
    }
    Ok((content_type, response_type))
}

/// Decodes and validates a call (Mesos' `validation::agent::call::validate` for the calls berth
/// knows), returning it with its type.
pub fn decode_call(
    body: &[u8],
    content_type: ContentType,
) -> Result<(agent::Call, Type), OperatorApiError> {
    let call: agent::Call = codec::decode(body, content_type).map_err(OperatorApiError::Decode)?;
    let number = call.r#type.ok_or(OperatorApiError::MissingType)?;
    let kind = Type::try_from(number).map_err(|_| OperatorApiError::UnknownType(number))?;
    if kind == Type::GetMetrics && call.get_metrics.is_none() {
        return Err(OperatorApiError::MissingArgument {
            call: kind.as_str_name(),
            field: "get_metrics",
        });
    }
    Ok((call, kind))
}

/// Copies what the operator APIs report out of the agent.
pub fn snapshot(agent: &Agent, link: &LinkStatus) -> Snapshot {
    let settings = agent.settings();
    let (pid, port) = flags::agent_pid(&settings.flags);
    let tasks = agent.tasks();
    let containerizer = agent.containerizer();
    let sandboxes = tasks
        .iter()
        .map(|t| {
            (
                t.container_id.clone(),
                containerizer.sandbox_dir(&t.container_id),
            )
        })
        .collect();
    Snapshot {
        agent_id: settings.id.clone(),
        hostname: settings.hostname.clone(),
        pid,
        port,
        resources: settings.resources.clone(),
        attributes: settings.attributes.clone(),
        flags: settings.flags.clone(),
        capabilities: link.capabilities.clone(),
        start_time: task::now() - agent.uptime().as_secs_f64(),
        master_hostname: link.master_hostname.clone(),
        tasks,
        sandboxes,
    }
}

/// The v0 `/state` document of the agent.
pub fn state_document(agent: &Agent, link: &LinkStatus) -> Value {
    let snapshot = snapshot(agent, link);
    state_v0::state(&Model::new(&snapshot))
}

/// Answers one call of the v1 agent API (`POST /api/v1`).
pub async fn handle(
    agent: &Arc<Agent>,
    link: &LinkStatus,
    headers: &HeaderMap,
    body: &[u8],
) -> Response {
    match serve(agent, link, headers, body).await {
        Ok((response, accept)) => encode(&response, accept),
        Err(err) => {
            debug!(error = %err, status = %err.status(), "operator API call refused");
            err.into_response()
        }
    }
}

async fn serve(
    agent: &Arc<Agent>,
    link: &LinkStatus,
    headers: &HeaderMap,
    body: &[u8],
) -> Result<(agent::Response, ContentType), OperatorApiError> {
    let (content_type, accept) = negotiate(headers)?;
    let (_call, kind) = decode_call(body, content_type)?;
    debug!(call = kind.as_str_name(), "processing operator API call");
    let snapshot = snapshot(agent, link);
    let model = Model::new(&snapshot);
    let response = match kind {
        Type::GetHealth => calls::get_health(),
        Type::GetFlags => calls::get_flags(&snapshot.flags),
        Type::GetVersion => calls::get_version(),
        Type::GetMetrics => {
            // Every metric is computed at once from memory and /proc: the call's timeout
            // cannot be exceeded, so it is not needed.
            let counters = metrics::Counters {
                uptime_secs: agent.uptime().as_secs_f64(),
                registered: link.registered,
                launch_errors: agent.metrics.launch_failures(),
            };
            calls::get_metrics(&metrics::snapshot(&model, counters, Path::new("/proc")))
        }
        Type::GetState => calls::get_state(&model),
        Type::GetContainers => calls::get_containers(&model, &agent.usages().await),
        Type::GetFrameworks => calls::get_frameworks(&model),
        Type::GetExecutors => calls::get_executors(&model),
        Type::GetTasks => calls::get_tasks(&model),
        Type::GetAgent => calls::get_agent(&snapshot),
        Type::GetOperations => calls::get_operations(),
        Type::GetResourceProviders => calls::get_resource_providers(),
        other => return Err(OperatorApiError::NotImplemented(other.as_str_name())),
    };
    Ok((response, accept))
}

/// Encodes a response. JSON lists every repeated field of the task, executor, framework and
/// metric lists even when empty, as Mesos' hand-written JSON writers do.
pub fn encode(response: &agent::Response, accept: ContentType) -> Response {
    let body = match accept {
        ContentType::Protobuf => codec::encode(response, accept),
        ContentType::Json => {
            let mut value = codec::to_json(response);
            fill_empty_lists(&mut value);
            serde_json::to_vec(&value).expect("a JSON value always serializes")
        }
    };
    let mut http = (StatusCode::OK, body).into_response();
    http.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static(accept.as_str()),
    );
    http
}

/// Inserts `[]` for the repeated fields Mesos always writes in JSON.
pub fn fill_empty_lists(response: &mut Value) {
    const LISTS: &[(&str, &[&str])] = &[
        (
            "get_tasks",
            &[
                "pending_tasks",
                "queued_tasks",
                "launched_tasks",
                "terminated_tasks",
                "completed_tasks",
            ],
        ),
        ("get_executors", &["executors", "completed_executors"]),
        ("get_frameworks", &["frameworks", "completed_frameworks"]),
        ("get_metrics", &["metrics"]),
    ];
    fn fill(object: &mut Value) {
        for (message, lists) in LISTS {
            if let Some(inner) = object.get_mut(*message).and_then(Value::as_object_mut) {
                for list in *lists {
                    inner.entry(*list).or_insert_with(|| json!([]));
                }
            }
        }
    }
    fill(response);
    if let Some(state) = response.get_mut("get_state") {
        fill(state);
    }
}
