//! The API's error model (docs/api.md, "Errors"): a status, a stable code, and one line that
//! holds no secret.

use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use carnet_core::Error;
use carnet_storage::StoreError;
use serde_json::json;

/// An error answer.
#[derive(Debug)]
pub struct ApiError {
    status: StatusCode,
    code: &'static str,
    message: String,
    retry_after: Option<u64>,
    /// A key operation of another process holds the vault for a moment: the request may be
    /// run again in a while ([`ApiError::waits`]).
    transient: bool,
}

impl ApiError {
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        ApiError {
            status,
            code,
            message: message.into(),
            retry_after: None,
            transient: false,
        }
    }

    /// Whether the request failed only because a key operation ran: worth running again.
    pub fn waits(&self) -> bool {
        self.transient
    }

    /// This error as the final answer after waiting: clients are told when to try again.
    pub fn after_waiting(mut self, seconds: u64) -> Self {
        self.retry_after = Some(seconds);
        self
    }

    pub fn bad_request(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "bad_request", message)
    }

    /// No token, an expired one, or a failed login: one message whatever the reason.
    pub fn auth_failed(message: &str) -> Self {
        Self::new(StatusCode::UNAUTHORIZED, "auth_failed", message)
    }

    pub fn not_found(message: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_FOUND, "not_found", message)
    }

    pub fn too_large(message: impl Into<String>) -> Self {
        Self::new(StatusCode::PAYLOAD_TOO_LARGE, "too_large", message)
    }

    /// Too many failed logins: try again in `seconds`.
    pub fn rate_limited(seconds: u64) -> Self {
        let mut e = Self::new(
            StatusCode::TOO_MANY_REQUESTS,
            "rate_limited",
            format!("too many failed logins: try again in {seconds} s"),
        );
        e.retry_after = Some(seconds.max(1));
        e
    }

    pub fn busy(message: impl Into<String>) -> Self {
        Self::new(StatusCode::SERVICE_UNAVAILABLE, "busy", message)
    }

    pub fn internal(message: impl Into<String>) -> Self {
        Self::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", message)
    }
}

impl From<Error> for ApiError {
    /// The same classes as the command line's exit codes. Core's messages hold no secret
    /// (carnet-core, "Errors"), so they are passed on.
    fn from(e: Error) -> Self {
        let m = e.to_string();
        match e {
            Error::WrongPassphrase | Error::UnknownUser => {
                ApiError::auth_failed("wrong user name or passphrase")
            }
            Error::NotPermitted(_) => ApiError::new(StatusCode::FORBIDDEN, "forbidden", m),
            Error::NoSuchPatient | Error::NoSuchNote => ApiError::not_found(m),
            Error::PatientExists => ApiError::new(StatusCode::CONFLICT, "conflict", m),
            Error::InvalidArgument(_) => ApiError::bad_request(m),
            Error::TooLarge(_) => ApiError::too_large(m),
            Error::Integrity(_) => ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "integrity", m),
            Error::Busy { .. } | Error::KeysChanged => {
                let mut e = ApiError::busy(m);
                e.transient = true;
                e
            }
            Error::Unfinished(_) => ApiError::busy(m),
            Error::Storage(StoreError::Locked) | Error::Storage(StoreError::Conflict) => {
                ApiError::busy(m)
            }
            Error::Storage(_) => ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "storage", m),
            _ => ApiError::internal(m),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = json!({"error": {"code": self.code, "message": self.message}});
        let mut r = (self.status, axum::Json(body)).into_response();
        if let Some(s) = self.retry_after {
            if let Ok(v) = HeaderValue::from_str(&s.to_string()) {
                r.headers_mut().insert(header::RETRY_AFTER, v);
            }
        }
        r
    }
}
