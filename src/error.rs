//! The one wire error type. Every public error code lives in [`ApiError::code`]: code → status.
//! Each module owns its error type and says how it looks on the wire through [`PublicError`], so
//! this table imports none of them.
//! Bodies carry the short public message only; causes go to the log.
use actix_web::{
    http::{header, StatusCode},
    HttpResponse, ResponseError,
};
use serde::Serialize;

#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("{0}")]
    InvalidRequest(String),
    /// Missing, malformed, expired, tampered or revoked token: deliberately one answer.
    #[error("a valid bearer access token is required")]
    Unauthorized,
    #[error("invalid email or password")]
    InvalidCredentials,
    /// POST /introspect without valid service-client credentials (HTTP Basic): missing,
    /// malformed, unknown or deleted client, wrong secret; deliberately one answer.
    #[error("valid service client credentials (HTTP Basic) are required")]
    InvalidClient,
    /// A one-time code or token that is bad, used or expired (POST /oauth/token's code or its
    /// verifier, POST /login/mfa's mfa_token or second factor).
    #[error("{0}")]
    InvalidGrant(String),
    #[error("not allowed")]
    Forbidden,
    /// REQUIRE_EMAIL_VERIFICATION: the right password of an account whose address is not
    /// verified yet.
    #[error("the account's email address is not verified; follow the link mailed to it")]
    EmailNotVerified,
    /// A mailed token (reset, verification, email change) that is bad, used, expired or
    /// superseded: deliberately one answer.
    #[error("the link is invalid or has expired; ask for a new one")]
    InvalidToken,
    #[error("{0} not found")]
    NotFound(&'static str),
    /// Carries the `Allow` header value (RFC 9110 requires it on 405).
    #[error("method not allowed")]
    MethodNotAllowed(&'static str),
    #[error("an account with this email already exists")]
    EmailTaken,
    /// The change would break an invariant (the last admin, a taken role name); nothing changed.
    #[error("{0}")]
    Conflict(String),
    #[error("request body is larger than {0} bytes")]
    PayloadTooLarge(usize),
    #[error("request body must be JSON (Content-Type: application/json)")]
    UnsupportedMediaType,
    #[error("request body must be form-encoded (Content-Type: application/x-www-form-urlencoded)")]
    FormRequired,
    #[error("request headers are larger than {0} bytes")]
    HeadersTooLarge(usize),
    /// A correct password of an account with a second factor: finish at POST /login/mfa.
    #[error("a second factor is required: present it to POST /login/mfa with the mfa_token")]
    MfaRequired {
        mfa_token: String,
        methods: Vec<&'static str>,
        /// With `webauthn` among the methods: the assertion request options (the challenge) for
        /// `navigator.credentials.get`.
        webauthn: Option<Box<serde_json::Value>>,
    },
    /// Step-up: the change needs an authentication more recent than STEP_UP_MAX_AGE (POST
    /// /reauthenticate renews it); the message says how to get one.
    #[error("{0}")]
    ReauthenticationRequired(&'static str),
    /// REQUIRE_MFA_FOR_ROLES: the session's account holds such a role and the session has not
    /// authenticated with a second factor; only enrolment and reauthentication are open.
    #[error("this account's role requires a second factor: enrol one (POST /mfa/totp), then POST /reauthenticate with it, or log in again with it")]
    MfaEnrolmentRequired,
    #[error("too many requests, retry later")]
    RateLimited { retry_after: u64 },
    /// A backing service could not answer; `detail` is logged, never sent.
    #[error("{what} is unavailable, retry later")]
    Unavailable { what: &'static str, detail: String },
    /// A bug or an unexpected state; `0` is logged, never sent.
    #[error("internal error")]
    Internal(String),
}

/// Every error response has this shape; `error` is a stable code, `message` is for humans.
#[derive(Serialize, utoipa::ToSchema)]
#[schema(example = json!({"error": "invalid_request", "message": "password must be at least 8 characters"}))]
pub struct ErrorBody {
    /// invalid_request, unauthorized, invalid_credentials, invalid_client, invalid_grant, forbidden
    /// (with `reason` `mfa_enrolment_required` under REQUIRE_MFA_FOR_ROLES), email_not_verified,
    /// mfa_required, reauthentication_required, invalid_token, not_found, method_not_allowed, email_taken, conflict, payload_too_large, unsupported_media_type, rate_limited, unavailable, internal_error
    pub error: &'static str,
    pub message: String,
}

impl ApiError {
    /// A copy with the same public face (code and message), for errors shared between callers.
    pub fn clone_public(&self) -> Self {
        match self {
            ApiError::NotFound(what) => ApiError::NotFound(what),
            ApiError::Unavailable { what, detail } => ApiError::Unavailable {
                what,
                detail: detail.clone(),
            },
            ApiError::InvalidRequest(m) => ApiError::InvalidRequest(m.clone()),
            ApiError::Unauthorized => ApiError::Unauthorized,
            other => ApiError::Internal(other.to_string()),
        }
    }

    pub fn code(&self) -> (StatusCode, &'static str) {
        use ApiError::*;
        match self {
            InvalidRequest(_) => (StatusCode::BAD_REQUEST, "invalid_request"),
            Unauthorized => (StatusCode::UNAUTHORIZED, "unauthorized"),
            InvalidCredentials => (StatusCode::UNAUTHORIZED, "invalid_credentials"),
            InvalidClient => (StatusCode::UNAUTHORIZED, "invalid_client"),
            InvalidGrant(_) => (StatusCode::BAD_REQUEST, "invalid_grant"),
            Forbidden | MfaEnrolmentRequired => (StatusCode::FORBIDDEN, "forbidden"),
            EmailNotVerified => (StatusCode::FORBIDDEN, "email_not_verified"),
            InvalidToken => (StatusCode::BAD_REQUEST, "invalid_token"),
            NotFound(_) => (StatusCode::NOT_FOUND, "not_found"),
            MethodNotAllowed(_) => (StatusCode::METHOD_NOT_ALLOWED, "method_not_allowed"),
            EmailTaken => (StatusCode::CONFLICT, "email_taken"),
            Conflict(_) => (StatusCode::CONFLICT, "conflict"),
            PayloadTooLarge(_) => (StatusCode::PAYLOAD_TOO_LARGE, "payload_too_large"),
            UnsupportedMediaType | FormRequired => {
                (StatusCode::UNSUPPORTED_MEDIA_TYPE, "unsupported_media_type")
            }
            HeadersTooLarge(_) => (
                StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
                "headers_too_large",
            ),
            MfaRequired { .. } => (StatusCode::FORBIDDEN, "mfa_required"),
            ReauthenticationRequired(_) => (StatusCode::FORBIDDEN, "reauthentication_required"),
            RateLimited { .. } => (StatusCode::TOO_MANY_REQUESTS, "rate_limited"),
            Unavailable { .. } => (StatusCode::SERVICE_UNAVAILABLE, "unavailable"),
            Internal(_) => (StatusCode::INTERNAL_SERVER_ERROR, "internal_error"),
        }
    }

    /// The message with the cause a response body never carries, for logs and operators.
    pub fn log_message(&self) -> String {
        match self {
            ApiError::Unavailable { what, detail } => format!("{what} unavailable: {detail}"),
            ApiError::Internal(detail) => format!("internal error: {detail}"),
            e => e.to_string(),
        }
    }

    pub fn invalid(message: impl Into<String>) -> Self {
        ApiError::InvalidRequest(message.into())
    }
}

impl ResponseError for ApiError {
    fn status_code(&self) -> StatusCode {
        self.code().0
    }

    fn error_response(&self) -> HttpResponse {
        let (status, error) = self.code();
        match self {
            ApiError::Unavailable { what, detail } => {
                tracing::warn!(service = what, cause = %detail, "backing service unavailable")
            }
            ApiError::Internal(cause) => tracing::error!(%cause, "internal error"),
            _ => {}
        }
        let mut res = HttpResponse::build(status);
        match self {
            ApiError::Unauthorized => {
                res.insert_header((header::WWW_AUTHENTICATE, "Bearer"));
            }
            ApiError::InvalidClient => {
                res.insert_header((header::WWW_AUTHENTICATE, r#"Basic realm="sessiond""#));
            }
            ApiError::RateLimited { retry_after } => {
                res.insert_header((header::RETRY_AFTER, retry_after.to_string()));
            }
            ApiError::Unavailable { .. } => {
                res.insert_header((header::RETRY_AFTER, "1"));
            }
            ApiError::MethodNotAllowed(allow) => {
                res.insert_header((header::ALLOW, *allow));
            }
            _ => {}
        }
        res.insert_header((header::CACHE_CONTROL, "no-store"));
        if let ApiError::MfaRequired {
            mfa_token,
            methods,
            webauthn,
        } = self
        {
            let mut body = serde_json::json!({
                "error": error,
                "message": self.to_string(),
                "mfa_token": mfa_token,
                "methods": methods,
            });
            if let Some(options) = webauthn {
                body["webauthn"] = (**options).clone();
            }
            return res.json(body);
        }
        if let ApiError::MfaEnrolmentRequired = self {
            return res.json(serde_json::json!({
                "error": error,
                "message": self.to_string(),
                "reason": "mfa_enrolment_required",
            }));
        }
        res.json(ErrorBody {
            error,
            message: self.to_string(),
        })
    }
}

/// How a module's error is answered: implemented next to each error type (the session store, the
/// user store, password hashing, the limiter, the actors), so `?` turns it into an [`ApiError`].
pub trait PublicError {
    fn into_api_error(self) -> ApiError;
}

impl<E: PublicError> From<E> for ApiError {
    fn from(e: E) -> Self {
        e.into_api_error()
    }
}
