//! The one place where every failure becomes what the client sees: an `ImmediateResponse` with an
//! OpenAI-style JSON error body.

use crate::openai::ParseError;
use crate::routing::RouteError;
use envoy_types::pb::envoy::config::core::v3::{HeaderValue, HeaderValueOption};
use envoy_types::pb::envoy::r#type::v3::HttpStatus;
use envoy_types::pb::envoy::service::ext_proc::v3::{
    processing_response::Response, HeaderMutation, ImmediateResponse, ProcessingResponse,
};

#[derive(Debug, thiserror::Error)]
pub enum Reject {
    #[error(transparent)]
    Parse(#[from] ParseError),
    #[error(transparent)]
    Route(#[from] RouteError),
    #[error("The request body is larger than the {limit}-byte limit.")]
    BodyTooLarge { limit: usize },
    #[error("The router cannot handle ext_proc body mode {0}; configure BUFFERED or FULL_DUPLEX_STREAMED.")]
    UnsupportedMode(i32),
    #[error("The request body cannot be routed without seeing it (ext_proc body mode NONE with several models); configure BUFFERED or FULL_DUPLEX_STREAMED.")]
    BodyNotSent,
    #[error("The router could not read the request: {0}")]
    Unreadable(String),
    #[error("The request ended before its body was complete.")]
    Incomplete,
}

impl Reject {
    /// What an inbound stream error means for the request: a message over the gRPC decode limit
    /// is a body too large (the limit sits above `--max-body-bytes`, so the router's own check
    /// comes first); anything else is a request the router could not read.
    pub(crate) fn from_stream_error(status: &tonic::Status, max_body_bytes: usize) -> Self {
        match status.code() {
            tonic::Code::OutOfRange | tonic::Code::ResourceExhausted => Reject::BodyTooLarge { limit: max_body_bytes },
            _ => Reject::Unreadable(status.message().chars().take(200).collect()),
        }
    }

    /// (HTTP status, OpenAI error type, code)
    fn classify(&self) -> (u16, &'static str, &'static str) {
        match self {
            Reject::Parse(ParseError::MissingModel) => (400, "invalid_request_error", "missing_model"),
            Reject::Parse(ParseError::InvalidJson(_) | ParseError::NotAnObject) => {
                (400, "invalid_request_error", "invalid_json")
            }
            Reject::Parse(ParseError::Invalid(_)) => (400, "invalid_request_error", "invalid_request"),
            Reject::Route(RouteError::UnknownModel(_)) => (404, "invalid_request_error", "model_not_found"),
            Reject::Route(
                RouteError::NoReadyEndpoint(_)
                | RouteError::NoEndpoints
                | RouteError::NotSynced
                | RouteError::NoEligibleEndpoint(_),
            ) => (503, "service_unavailable", "no_ready_endpoint"),
            Reject::Route(RouteError::Overloaded(_)) => (429, "rate_limit_exceeded", "overloaded"),
            Reject::Route(RouteError::UntrustedChatTemplate) => {
                (400, "invalid_request_error", "untrusted_chat_template")
            }
            Reject::Route(RouteError::InvalidRequest(_)) => (400, "invalid_request_error", "invalid_request"),
            Reject::BodyTooLarge { .. } => (413, "invalid_request_error", "request_too_large"),
            Reject::UnsupportedMode(_) | Reject::BodyNotSent => (500, "internal_error", "unsupported_body_mode"),
            Reject::Unreadable(_) => (400, "invalid_request_error", "unreadable_request"),
            Reject::Incomplete => (400, "invalid_request_error", "incomplete_request"),
        }
    }

    pub fn status(&self) -> u16 {
        self.classify().0
    }

    pub fn to_response(&self) -> ProcessingResponse {
        let (status, kind, code) = self.classify();
        let body = serde_json::json!({
            "error": {"message": self.to_string(), "type": kind, "param": null, "code": code}
        });
        let header = |k: &str, v: &str| HeaderValueOption {
            header: Some(HeaderValue { key: k.into(), raw_value: v.as_bytes().to_vec(), ..Default::default() }),
            ..Default::default()
        };
        ProcessingResponse {
            response: Some(Response::ImmediateResponse(ImmediateResponse {
                status: Some(HttpStatus { code: i32::from(status) }),
                headers: Some(HeaderMutation {
                    set_headers: vec![header("content-type", "application/json")],
                    ..Default::default()
                }),
                body: body.to_string().into_bytes(),
                details: format!("prefix_router_{code}"),
                ..Default::default()
            })),
            ..Default::default()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_failure_maps_to_its_status_and_an_openai_error_body() {
        let cases: Vec<(Reject, u16)> = vec![
            (ParseError::InvalidJson("x".into()).into(), 400),
            (ParseError::MissingModel.into(), 400),
            (RouteError::UnknownModel("m".into()).into(), 404),
            (Reject::BodyTooLarge { limit: 10 }, 413),
            (RouteError::Overloaded("m".into()).into(), 429),
            (RouteError::NoReadyEndpoint("m".into()).into(), 503),
            (RouteError::NoEligibleEndpoint("m".into()).into(), 503),
            (Reject::UnsupportedMode(1), 500),
            (Reject::BodyNotSent, 500),
            (Reject::Unreadable("x".into()), 400),
            (Reject::Incomplete, 400),
        ];
        for (reject, status) in cases {
            let Some(Response::ImmediateResponse(ir)) = reject.to_response().response else { panic!("immediate") };
            assert_eq!(ir.status.map(|s| s.code), Some(i32::from(status)));
            let body: serde_json::Value = serde_json::from_slice(&ir.body).expect("json");
            assert_eq!(body["error"]["message"], reject.to_string());
            assert!(
                body["error"]["param"].is_null()
                    && body["error"]["type"].is_string()
                    && body["error"]["code"].is_string()
            );
        }
    }
}
