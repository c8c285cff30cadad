//! JSON and protobuf codecs of the Mesos v1 HTTP APIs.
//!
//! # JSON
//!
//! Mesos speaks the proto3 JSON mapping with the `.proto` field names
//! (snake_case). [`to_json`] therefore emits:
//! * field names exactly as in the `.proto` files,
//! * enum values by name (`"TASK_RUNNING"`),
//! * 64-bit integers as JSON numbers (not strings),
//! * `bytes` as standard base64 (as Mesos does),
//! * only fields that are set: unset `optional` fields and empty `repeated`
//!   fields are omitted, `required` fields are always present.
//!
//! [`from_json`] is lenient the way a server should be: it accepts
//! snake_case and lowerCamelCase names, enum names or numbers, and 64-bit
//! integers as numbers or strings. **Unknown fields are ignored** (not an
//! error), like protobuf ignores unknown fields on the wire: newer frameworks
//! may send fields this subset does not carry. Following the proto3 JSON
//! mapping's ignore-unknown-fields mode, an unknown enum *name* also reads as
//! "field not set" (so `{"type":"NO_SUCH_CALL"}` is a `Call` without `type`,
//! and an unknown name in a `required` enum field is a missing required field). Missing proto2 `required`
//! fields, at any depth, are an error naming the field path.
//!
//! # Protobuf
//!
//! [`encode`]/[`decode`] with [`ContentType::Protobuf`] use the binary wire
//! format. prost does not check `required` fields on decode, so [`decode`]
//! first decodes into a `prost_reflect::DynamicMessage` (which tracks field
//! presence) and checks them recursively.

use std::fmt;
use std::str::FromStr;

use prost_reflect::{
    DeserializeOptions, DynamicMessage, MapKey, ReflectMessage, SerializeOptions, Value,
};

/// Content types of the v1 HTTP APIs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ContentType {
    /// `application/json`.
    Json,
    /// `application/x-protobuf`.
    Protobuf,
}

impl ContentType {
    /// The media type string of `application/json`.
    pub const JSON: &'static str = "application/json";
    /// The media type string of `application/x-protobuf`.
    pub const PROTOBUF: &'static str = "application/x-protobuf";

    /// The media type, suitable for a `Content-Type` or `Accept` header.
    pub fn as_str(self) -> &'static str {
        match self {
            ContentType::Json => Self::JSON,
            ContentType::Protobuf => Self::PROTOBUF,
        }
    }

    /// Parses a `Content-Type` header value: the media type, case-insensitive,
    /// with any parameters (`; charset=utf-8`) ignored. `None` for any other
    /// media type.
    pub fn from_header(value: &str) -> Option<Self> {
        let media = value.split(';').next().unwrap_or("").trim();
        if media.eq_ignore_ascii_case(Self::JSON) {
            Some(ContentType::Json)
        } else if media.eq_ignore_ascii_case(Self::PROTOBUF) {
            Some(ContentType::Protobuf)
        } else {
            None
        }
    }

    /// Picks the response content type for an `Accept` header value: the
    /// first listed media type that is JSON or protobuf (in header order,
    /// entries with `q=0` skipped); `*/*` and `application/*` choose JSON.
    /// `None` if nothing acceptable is listed. (A missing `Accept` header
    /// means JSON; that is the caller's call.)
    pub fn from_accept(value: &str) -> Option<Self> {
        for entry in value.split(',') {
            let mut parts = entry.split(';');
            let media = parts.next().unwrap_or("").trim();
            let refused = parts.any(|p| {
                let p = p.trim();
                p.strip_prefix("q=")
                    .or_else(|| p.strip_prefix("Q="))
                    .and_then(|q| q.trim().parse::<f32>().ok())
                    .is_some_and(|q| q <= 0.0)
            });
            if refused {
                continue;
            }
            if let Some(ct) = Self::from_header(media) {
                return Some(ct);
            }
            if media == "*/*" || media.eq_ignore_ascii_case("application/*") {
                return Some(ContentType::Json);
            }
        }
        None
    }
}

impl fmt::Display for ContentType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for ContentType {
    type Err = CodecError;

    /// Same as [`ContentType::from_header`], with an error for other types.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::from_header(s).ok_or_else(|| CodecError::UnsupportedContentType(s.to_string()))
    }
}

impl From<ContentType> for &'static str {
    fn from(ct: ContentType) -> Self {
        ct.as_str()
    }
}

/// Why a message could not be decoded.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum CodecError {
    /// The body is not valid JSON for the message type (syntax, wrong value
    /// type, unknown enum name, trailing data...).
    #[error("invalid JSON for {message}: {reason}")]
    Json {
        /// Full protobuf name of the message type, e.g. `mesos.v1.scheduler.Call`.
        message: String,
        /// What is wrong, from the JSON parser.
        reason: String,
    },
    /// The body is not a valid protobuf encoding of the message type.
    #[error("invalid protobuf for {message}: {reason}")]
    Protobuf {
        /// Full protobuf name of the message type.
        message: String,
        /// What is wrong, from the protobuf decoder.
        reason: String,
    },
    /// proto2 `required` fields are missing.
    #[error("{message} is missing required field(s): {}", fields.join(", "))]
    MissingRequired {
        /// Full protobuf name of the (top-level) message type.
        message: String,
        /// Paths of the missing fields from the top-level message, e.g.
        /// `update.status.task_id` or `accept.operations[0].launch.task_infos[1].name`.
        fields: Vec<String>,
    },
    /// A content type other than JSON or protobuf.
    #[error("unsupported content type {0:?} (expected {json} or {protobuf})", json = ContentType::JSON, protobuf = ContentType::PROTOBUF)]
    UnsupportedContentType(String),
}

fn serialize_options() -> SerializeOptions {
    SerializeOptions::new()
        .use_proto_field_name(true)
        .stringify_64_bit_integers(false)
        .use_enum_numbers(false)
        .skip_default_fields(true)
}

fn deserialize_options() -> DeserializeOptions {
    // Unknown fields are ignored, see the module docs.
    DeserializeOptions::new().deny_unknown_fields(false)
}

/// Encodes `msg` as Mesos-style JSON (see the module docs).
pub fn to_json<M: ReflectMessage>(msg: &M) -> serde_json::Value {
    msg.transcode_to_dynamic()
        .serialize_with_options(serde_json::value::Serializer, &serialize_options())
        .expect("a protobuf message always serializes to a JSON value")
}

/// Encodes `msg` as Mesos-style JSON text (see the module docs).
pub fn to_json_string<M: ReflectMessage>(msg: &M) -> String {
    String::from_utf8(to_json_vec(msg)).expect("serde_json writes UTF-8")
}

fn to_json_vec<M: ReflectMessage>(msg: &M) -> Vec<u8> {
    let mut serializer = serde_json::Serializer::new(Vec::new());
    msg.transcode_to_dynamic()
        .serialize_with_options(&mut serializer, &serialize_options())
        .expect("a protobuf message always serializes to JSON");
    serializer.into_inner()
}

/// Decodes JSON into `M` (see the module docs for what is accepted).
pub fn from_json<M: ReflectMessage + Default>(bytes: &[u8]) -> Result<M, CodecError> {
    let desc = M::default().descriptor();
    let json_err = |reason: String| CodecError::Json {
        message: desc.full_name().to_string(),
        reason,
    };
    let mut de = serde_json::Deserializer::from_slice(bytes);
    let dynamic =
        DynamicMessage::deserialize_with_options(desc.clone(), &mut de, &deserialize_options())
            .map_err(|e| json_err(e.to_string()))?;
    de.end().map_err(|e| json_err(e.to_string()))?;
    check_dynamic(&dynamic)?;
    dynamic
        .transcode_to::<M>()
        .map_err(|e| json_err(e.to_string()))
}

/// Encodes `msg` in the given content type.
pub fn encode<M: ReflectMessage>(msg: &M, ct: ContentType) -> Vec<u8> {
    match ct {
        ContentType::Json => to_json_vec(msg),
        ContentType::Protobuf => msg.encode_to_vec(),
    }
}

/// Decodes `bytes` of the given content type into `M`, checking proto2
/// `required` fields recursively.
pub fn decode<M: ReflectMessage + Default>(bytes: &[u8], ct: ContentType) -> Result<M, CodecError> {
    match ct {
        ContentType::Json => from_json(bytes),
        ContentType::Protobuf => {
            let desc = M::default().descriptor();
            let pb_err = |reason: String| CodecError::Protobuf {
                message: desc.full_name().to_string(),
                reason,
            };
            let dynamic =
                DynamicMessage::decode(desc.clone(), bytes).map_err(|e| pb_err(e.to_string()))?;
            check_dynamic(&dynamic)?;
            M::decode(bytes).map_err(|e| pb_err(e.to_string()))
        }
    }
}

/// Checks that every proto2 `required` field of `msg` is set, recursively.
///
/// Useful on messages built in code before sending them to a real Mesos
/// component. (prost always encodes `required` fields of generated types, so
/// for those this mainly catches required fields of messages received and
/// kept as-is; [`decode`] and [`from_json`] already run it.)
pub fn check_required<M: ReflectMessage>(msg: &M) -> Result<(), CodecError> {
    check_dynamic(&msg.transcode_to_dynamic())
}

fn check_dynamic(msg: &DynamicMessage) -> Result<(), CodecError> {
    let mut missing = Vec::new();
    collect_missing(msg, "", &mut missing);
    if missing.is_empty() {
        Ok(())
    } else {
        Err(CodecError::MissingRequired {
            message: msg.descriptor().full_name().to_string(),
            fields: missing,
        })
    }
}

fn join(prefix: &str, name: &str) -> String {
    if prefix.is_empty() {
        name.to_string()
    } else {
        format!("{prefix}.{name}")
    }
}

fn collect_missing(msg: &DynamicMessage, prefix: &str, missing: &mut Vec<String>) {
    for field in msg.descriptor().fields() {
        let path = join(prefix, field.name());
        if !msg.has_field(&field) {
            if field.is_required() {
                missing.push(path);
            }
            continue;
        }
        let value = msg.get_field(&field);
        match value.as_ref() {
            Value::Message(inner) => collect_missing(inner, &path, missing),
            Value::List(items) => {
                for (i, item) in items.iter().enumerate() {
                    if let Value::Message(inner) = item {
                        collect_missing(inner, &format!("{path}[{i}]"), missing);
                    }
                }
            }
            Value::Map(entries) => {
                let value_is_message = field
                    .kind()
                    .as_message()
                    .and_then(|entry| entry.map_entry_value_field().kind().as_message().cloned())
                    .is_some();
                if value_is_message {
                    let mut entries: Vec<_> = entries.iter().collect();
                    entries.sort_by(|a, b| a.0.cmp(b.0));
                    for (key, item) in entries {
                        if let Value::Message(inner) = item {
                            collect_missing(inner, &format!("{path}[{}]", map_key(key)), missing);
                        }
                    }
                }
            }
            _ => {}
        }
    }
}

fn map_key(key: &MapKey) -> String {
    match key {
        MapKey::String(s) => format!("{s:?}"),
        MapKey::Bool(b) => b.to_string(),
        MapKey::I32(v) => v.to_string(),
        MapKey::I64(v) => v.to_string(),
        MapKey::U32(v) => v.to_string(),
        MapKey::U64(v) => v.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mesos::v1::scheduler::{Call, Event, call, event};
    use crate::mesos::v1::{
        AgentId, CommandInfo, FrameworkId, OfferId, TaskId, TaskInfo, TaskState, TaskStatus, offer,
        task_status,
    };
    use crate::resources;
    use serde_json::json;

    #[test]
    fn content_type_parsing() {
        assert_eq!(
            ContentType::from_header("application/json"),
            Some(ContentType::Json)
        );
        assert_eq!(
            ContentType::from_header(" Application/JSON; charset=utf-8"),
            Some(ContentType::Json)
        );
        assert_eq!(
            ContentType::from_header("application/x-protobuf"),
            Some(ContentType::Protobuf)
        );
        assert_eq!(ContentType::from_header("text/plain"), None);
        assert_eq!(
            "application/x-protobuf".parse::<ContentType>(),
            Ok(ContentType::Protobuf)
        );
        assert!(matches!(
            "text/html".parse::<ContentType>(),
            Err(CodecError::UnsupportedContentType(_))
        ));
        assert_eq!(ContentType::Protobuf.to_string(), "application/x-protobuf");
        assert_eq!(
            ContentType::from_accept("text/html, application/x-protobuf;q=0.9, */*"),
            Some(ContentType::Protobuf)
        );
        assert_eq!(
            ContentType::from_accept("application/x-protobuf;q=0, */*"),
            Some(ContentType::Json)
        );
        assert_eq!(ContentType::from_accept("text/html"), None);
    }

    #[test]
    fn subscribe_json_as_marathon_sends_it() {
        let body =
            br#"{"type":"SUBSCRIBE","subscribe":{"framework_info":{"user":"root","name":"x"}}}"#;
        let call: Call = from_json(body).unwrap();
        assert_eq!(call.r#type(), call::Type::Subscribe);
        let info = &call.subscribe.as_ref().unwrap().framework_info;
        assert_eq!(info.user, "root");
        assert_eq!(info.name, "x");
        assert_eq!(info.role(), "*");
        assert_eq!(info.failover_timeout(), 0.0);
        assert!(info.id.is_none());
        // Unset optional fields are omitted on the way back out.
        let value: serde_json::Value = serde_json::from_slice(body).unwrap();
        assert_eq!(to_json(&call), value);
        let again: Call = from_json(to_json_string(&call).as_bytes()).unwrap();
        assert_eq!(again, call);
    }

    #[test]
    fn subscribe_json_camel_case_and_richer_framework_info() {
        let body = json!({
            "type": "SUBSCRIBE",
            "subscribe": {
                "frameworkInfo": {
                    "user": "root",
                    "name": "marathon",
                    "id": {"value": "fw-1"},
                    "failoverTimeout": 604800.0,
                    "checkpoint": true,
                    "roles": ["web"],
                    "hostname": "m1",
                    "principal": "marathon",
                    "capabilities": [{"type": "MULTI_ROLE"}, {"type": "PARTITION_AWARE"}],
                    "labels": {"labels": [{"key": "k", "value": "v"}]},
                    "some_future_field": {"x": 1}
                }
            }
        });
        let call: Call = from_json(body.to_string().as_bytes()).unwrap();
        let info = &call.subscribe.as_ref().unwrap().framework_info;
        assert_eq!(info.id.as_ref().unwrap().value, "fw-1");
        assert!(info.checkpoint());
        assert_eq!(info.failover_timeout(), 604800.0);
        assert_eq!(info.capabilities.len(), 2);
        assert_eq!(
            info.capabilities[0].r#type(),
            crate::mesos::v1::framework_info::capability::Type::MultiRole
        );
        let out = to_json(&call);
        assert_eq!(
            out["subscribe"]["framework_info"]["failover_timeout"],
            json!(604800.0)
        );
        assert_eq!(
            out["subscribe"]["framework_info"]["capabilities"][1]["type"],
            "PARTITION_AWARE"
        );
        assert!(
            out["subscribe"]["framework_info"]
                .get("frameworkInfo")
                .is_none()
        );
    }

    fn launch_call() -> Call {
        let task = TaskInfo {
            name: "sleeper".into(),
            task_id: TaskId {
                value: "t-1".into(),
            },
            agent_id: AgentId {
                value: "a-1".into(),
            },
            resources: vec![
                resources::scalar("cpus", 0.5),
                resources::scalar("mem", 128.0),
            ],
            command: Some(CommandInfo {
                value: Some("sleep 10".into()),
                ..Default::default()
            }),
            ..Default::default()
        };
        Call {
            framework_id: Some(FrameworkId {
                value: "fw-1".into(),
            }),
            r#type: Some(call::Type::Accept as i32),
            accept: Some(call::Accept {
                offer_ids: vec![OfferId {
                    value: "o-1".into(),
                }],
                operations: vec![offer::Operation {
                    r#type: Some(offer::operation::Type::Launch as i32),
                    launch: Some(offer::operation::Launch {
                        task_infos: vec![task],
                    }),
                    ..Default::default()
                }],
                filters: Some(crate::mesos::v1::Filters {
                    refuse_seconds: Some(1.0),
                }),
            }),
            ..Default::default()
        }
    }

    #[test]
    fn accept_launch_json_round_trip() {
        let call = launch_call();
        let value = to_json(&call);
        assert_eq!(
            value,
            json!({
                "framework_id": {"value": "fw-1"},
                "type": "ACCEPT",
                "accept": {
                    "offer_ids": [{"value": "o-1"}],
                    "operations": [{
                        "type": "LAUNCH",
                        "launch": {"task_infos": [{
                            "name": "sleeper",
                            "task_id": {"value": "t-1"},
                            "agent_id": {"value": "a-1"},
                            "resources": [
                                {"name": "cpus", "type": "SCALAR", "scalar": {"value": 0.5}},
                                {"name": "mem", "type": "SCALAR", "scalar": {"value": 128.0}}
                            ],
                            "command": {"value": "sleep 10"}
                        }]}
                    }],
                    "filters": {"refuse_seconds": 1.0}
                }
            })
        );
        let back: Call = from_json(value.to_string().as_bytes()).unwrap();
        assert_eq!(back, call);
        let task = &back.accept.as_ref().unwrap().operations[0]
            .launch
            .as_ref()
            .unwrap()
            .task_infos[0];
        assert!(task.command.as_ref().unwrap().shell());
        assert_eq!(resources::scalar_sum(&task.resources, "mem"), 128.0);
    }

    fn update_event() -> Event {
        Event {
            r#type: Some(event::Type::Update as i32),
            update: Some(event::Update {
                status: TaskStatus {
                    task_id: TaskId {
                        value: "t-1".into(),
                    },
                    state: TaskState::TaskFinished as i32,
                    reason: Some(task_status::Reason::ContainerLimitationMemory as i32),
                    source: Some(task_status::Source::Agent as i32),
                    agent_id: Some(AgentId {
                        value: "a-1".into(),
                    }),
                    timestamp: Some(1_700_000_000.25),
                    uuid: Some(vec![0xde, 0xad, 0xbe, 0xef]),
                    message: Some("OOM".into()),
                    ..Default::default()
                },
            }),
            ..Default::default()
        }
    }

    #[test]
    fn update_event_json_round_trip() {
        let ev = update_event();
        let value = to_json(&ev);
        assert_eq!(value["type"], "UPDATE");
        let status = &value["update"]["status"];
        assert_eq!(status["state"], "TASK_FINISHED");
        assert_eq!(status["reason"], "REASON_CONTAINER_LIMITATION_MEMORY");
        assert_eq!(status["source"], "SOURCE_AGENT");
        assert_eq!(status["uuid"], "3q2+7w==");
        assert_eq!(status["timestamp"], json!(1_700_000_000.25));
        let back: Event = from_json(to_json_string(&ev).as_bytes()).unwrap();
        assert_eq!(back, ev);
        let st = &back.update.as_ref().unwrap().status;
        assert_eq!(st.state(), TaskState::TaskFinished);
        assert_eq!(st.reason(), task_status::Reason::ContainerLimitationMemory);
    }

    #[test]
    fn required_fields_always_emitted_even_at_default() {
        // TASK_STARTING is enum value 0; `state` is required so it is emitted.
        let status = TaskStatus {
            task_id: TaskId { value: "t".into() },
            state: TaskState::TaskStarting as i32,
            ..Default::default()
        };
        assert_eq!(
            to_json(&status),
            json!({"task_id": {"value": "t"}, "state": "TASK_STARTING"})
        );
    }

    #[test]
    fn int64_as_numbers_and_accepted_as_strings() {
        let d = crate::mesos::v1::DurationInfo {
            nanoseconds: 5_000_000_000,
        };
        assert_eq!(to_json(&d), json!({"nanoseconds": 5_000_000_000i64}));
        let back: crate::mesos::v1::DurationInfo =
            from_json(br#"{"nanoseconds":"5000000000"}"#).unwrap();
        assert_eq!(back, d);
    }

    #[test]
    fn protobuf_round_trip() {
        for ct in [ContentType::Protobuf, ContentType::Json] {
            let call = launch_call();
            let bytes = encode(&call, ct);
            let back: Call = decode(&bytes, ct).unwrap();
            assert_eq!(back, call);
            let ev = update_event();
            let back: Event = decode(&encode(&ev, ct), ct).unwrap();
            assert_eq!(back, ev);
        }
    }

    #[test]
    fn missing_required_in_json() {
        let err = from_json::<TaskStatus>(br#"{"message":"x"}"#).unwrap_err();
        assert_eq!(
            err,
            CodecError::MissingRequired {
                message: "mesos.v1.TaskStatus".into(),
                fields: vec!["task_id".into(), "state".into()],
            }
        );
        // Nested and repeated paths.
        let err = from_json::<Call>(
            br#"{"type":"ACCEPT","accept":{"operations":[{"type":"LAUNCH","launch":{"task_infos":[{"name":"n","task_id":{},"agent_id":{"value":"a"}}]}}]}}"#,
        )
        .unwrap_err();
        assert_eq!(
            err.to_string(),
            "mesos.v1.scheduler.Call is missing required field(s): \
             accept.operations[0].launch.task_infos[0].task_id.value"
        );
        // Subscribe without framework_info.user.
        let err = from_json::<Call>(
            br#"{"type":"SUBSCRIBE","subscribe":{"framework_info":{"name":"x"}}}"#,
        )
        .unwrap_err();
        assert!(
            err.to_string().contains("subscribe.framework_info.user"),
            "{err}"
        );
    }

    #[test]
    fn missing_required_in_protobuf() {
        // TaskStatus with only `message` (field 4) set: no task_id, no state.
        let partial = TaskStatus {
            message: Some("x".into()),
            ..Default::default()
        };
        let mut bytes = Vec::new();
        prost::encoding::string::encode(4, partial.message.as_ref().unwrap(), &mut bytes);
        // prost itself happily decodes it into defaults...
        assert!(<TaskStatus as prost::Message>::decode(&bytes[..]).is_ok());
        // ...the codec does not.
        let err = decode::<TaskStatus>(&bytes, ContentType::Protobuf).unwrap_err();
        assert_eq!(
            err,
            CodecError::MissingRequired {
                message: "mesos.v1.TaskStatus".into(),
                fields: vec!["task_id".into(), "state".into()],
            }
        );
        // Event.update.status missing inside an otherwise valid event.
        let mut ev_bytes = Vec::new();
        prost::encoding::int32::encode(1, &(event::Type::Update as i32), &mut ev_bytes);
        prost::encoding::message::encode(5, &bytes_message(&bytes), &mut ev_bytes);
        let err = decode::<Event>(&ev_bytes, ContentType::Protobuf).unwrap_err();
        assert!(
            matches!(&err, CodecError::MissingRequired { fields, .. }
                if fields == &["update.status.task_id".to_string(), "update.status.state".to_string()]),
            "{err}"
        );
    }

    /// An `Event.Update` whose `status` (field 1) is the given raw bytes.
    fn bytes_message(status: &[u8]) -> RawUpdate {
        RawUpdate {
            status: status.to_vec(),
        }
    }

    #[derive(Clone, PartialEq, prost::Message)]
    struct RawUpdate {
        #[prost(bytes = "vec", tag = "1")]
        status: Vec<u8>,
    }

    #[test]
    fn garbage_is_rejected() {
        let err = decode::<Call>(b"\xff\xff\xff\xff\xff", ContentType::Protobuf).unwrap_err();
        assert!(
            matches!(&err, CodecError::Protobuf { message, .. } if message == "mesos.v1.scheduler.Call")
        );
        for body in [
            &b"not json"[..],
            b"{\"type\":",
            b"{\"type\":\"SUBSCRIBE\"} trailing",
            b"[1,2]",
            b"{\"framework_id\":{\"value\":5}}",
        ] {
            let err = from_json::<Call>(body).unwrap_err();
            assert!(
                matches!(&err, CodecError::Json { message, .. } if message == "mesos.v1.scheduler.Call"),
                "{}: {err}",
                String::from_utf8_lossy(body)
            );
        }
    }

    #[test]
    fn unknown_fields_and_enum_names_are_ignored() {
        // Unknown enum names read as "unset", like unknown fields (proto3 JSON
        // mapping with ignore-unknown-fields)...
        let call: Call = from_json(br#"{"type":"NO_SUCH_CALL","no_such_field":1}"#).unwrap();
        assert_eq!(call.r#type, None);
        assert_eq!(call.r#type(), call::Type::Unknown);
        // ...so an unknown name in a required enum field is a missing field.
        let err = from_json::<TaskStatus>(br#"{"task_id":{"value":"t"},"state":"TASK_BOGUS"}"#)
            .unwrap_err();
        assert!(
            matches!(&err, CodecError::MissingRequired { fields, .. } if fields == &["state".to_string()]),
            "{err}"
        );
        // Numbers are accepted for enums too.
        let call: Call = from_json(br#"{"type":3}"#).unwrap();
        assert_eq!(call.r#type(), call::Type::Accept);
    }

    #[test]
    fn heartbeat_event_is_minimal() {
        let ev = Event {
            r#type: Some(event::Type::Heartbeat as i32),
            ..Default::default()
        };
        assert_eq!(to_json_string(&ev), r#"{"type":"HEARTBEAT"}"#);
    }

    #[test]
    fn check_required_on_built_messages() {
        assert!(check_required(&launch_call()).is_ok());
        // prost encodes required fields even when empty, so an empty TaskId
        // is "present"; its own required `value` is present too (empty).
        assert!(check_required(&TaskStatus::default()).is_ok());
    }
}
