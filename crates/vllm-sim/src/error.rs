//! vLLM's error responses: `{"error": {"message", "type", "param", "code"}}`.

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};

#[derive(Debug, thiserror::Error)]
pub(crate) enum SimError {
    #[error("{0}")]
    BadRequest(String),
    #[error("The model `{0}` does not exist.")]
    ModelNotFound(String),
    #[error("{0}")]
    Internal(String),
    #[error("injected tokenize failure")]
    Injected,
    #[error("{0}")]
    Conflict(String),
}

impl SimError {
    fn status(&self) -> StatusCode {
        match self {
            Self::BadRequest(_) => StatusCode::BAD_REQUEST,
            Self::ModelNotFound(_) => StatusCode::NOT_FOUND,
            Self::Conflict(_) => StatusCode::CONFLICT,
            Self::Internal(_) | Self::Injected => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    fn kind(&self) -> &'static str {
        match self {
            Self::BadRequest(_) => "BadRequestError",
            Self::ModelNotFound(_) => "NotFoundError",
            Self::Conflict(_) => "ConflictError",
            Self::Internal(_) | Self::Injected => "InternalServerError",
        }
    }
}

impl IntoResponse for SimError {
    fn into_response(self) -> Response {
        let status = self.status();
        let body = serde_json::json!({
            "error": {"message": self.to_string(), "type": self.kind(), "param": null, "code": status.as_u16()}
        });
        (status, axum::Json(body)).into_response()
    }
}
