//! What the account routes send back: the user's JSON shape, the login answer, the verification
//! page for browsers, and the one mapping of account errors onto HTTP statuses and codes.

use actors::user::photo::PhotoError;
use actors::user::service::AccountError;
use actors::user::validate::InvalidInput;
use actors::user::{Profile, UserError};
use serde::Serialize;
use warp::Reply;
use warp::http::StatusCode;

use crate::error::ApiError;

/// A user as the API shows it to its owner.
#[derive(Debug, Serialize)]
pub struct UserBody {
    pub id: String,
    pub email: String,
    pub name: String,
    pub bio: String,
    pub verified: bool,
    pub created_at_ms: u64,
    /// Changes with every upload, so caches never show an old photo.
    pub photo_url: Option<String>,
}

impl From<&Profile> for UserBody {
    fn from(profile: &Profile) -> Self {
        Self {
            id: profile.id.clone(),
            email: profile.email.clone(),
            name: profile.name.clone(),
            bio: profile.bio.clone(),
            verified: profile.verified,
            created_at_ms: profile.created_at_ms,
            photo_url: profile
                .photo
                .as_ref()
                .map(|photo| format!("/api/users/{}/photo?v={}", profile.id, photo.updated_at_ms)),
        }
    }
}

/// The answer to a successful login.
#[derive(Serialize)]
pub struct LoginBody {
    pub token: String,
    pub expires_at_s: u64,
    pub user: UserBody,
}

pub fn json(status: StatusCode, body: &impl Serialize) -> warp::reply::Response {
    warp::reply::with_status(warp::reply::json(body), status).into_response()
}

/// The status, code and `Retry-After` (seconds) of an account error.
fn classify(error: &AccountError) -> (StatusCode, &'static str, Option<u64>) {
    use StatusCode as S;
    match error {
        AccountError::Invalid(invalid) | AccountError::User(UserError::Invalid(invalid)) => {
            let code = match invalid {
                InvalidInput::Email(_) => "invalid_email",
                InvalidInput::WeakPassword(_) => "weak_password",
                InvalidInput::Name(_) => "invalid_name",
                InvalidInput::Bio(_) => "invalid_bio",
            };
            (S::UNPROCESSABLE_ENTITY, code, None)
        }
        AccountError::User(user) => match user {
            UserError::EmailTaken => (S::CONFLICT, "email_taken", None),
            UserError::NotFound => (S::NOT_FOUND, "not_found", None),
            UserError::InvalidToken => (S::BAD_REQUEST, "invalid_token", None),
            UserError::TokenExpired => (S::GONE, "token_expired", None),
            UserError::TokenUsed => (S::GONE, "token_used", None),
            UserError::AlreadyVerified => (S::CONFLICT, "already_verified", None),
            UserError::TooManyAttempts { retry_after_ms } => (
                S::TOO_MANY_REQUESTS,
                "too_many_attempts",
                Some(retry_after_ms.div_ceil(1000)),
            ),
            UserError::TooSoon { retry_after_ms } => (
                S::TOO_MANY_REQUESTS,
                "too_many_requests",
                Some(retry_after_ms.div_ceil(1000)),
            ),
            UserError::Invalid(_) => (S::UNPROCESSABLE_ENTITY, "invalid", None),
        },
        AccountError::BadCredentials => (S::UNAUTHORIZED, "invalid_credentials", None),
        AccountError::NotVerified => (S::FORBIDDEN, "email_not_verified", None),
        AccountError::Photo(PhotoError::Unsupported) => {
            (S::UNSUPPORTED_MEDIA_TYPE, "unsupported_media_type", None)
        }
        AccountError::Photo(PhotoError::Undecodable(_) | PhotoError::TooManyPixels) => {
            (S::UNPROCESSABLE_ENTITY, "invalid_image", None)
        }
        AccountError::Photo(PhotoError::Store(_)) => {
            (S::SERVICE_UNAVAILABLE, "unavailable", Some(1))
        }
        AccountError::PhotoTooLarge { .. } => (S::PAYLOAD_TOO_LARGE, "too_large", None),
        AccountError::Busy(_) => (S::SERVICE_UNAVAILABLE, "busy", Some(1)),
        AccountError::Runtime(_) | AccountError::Internal(_) => {
            (S::INTERNAL_SERVER_ERROR, "internal", None)
        }
    }
}

/// The JSON error response of an account error.
pub fn account_error(error: AccountError) -> warp::reply::Response {
    let (status, code, retry_after_s) = classify(&error);
    let api_error = match error {
        AccountError::Runtime(error) => ApiError::from_runtime(error),
        AccountError::Internal(reason) => {
            tracing::error!(%reason, "account request failed");
            ApiError::new(status, code, "internal error")
        }
        other => ApiError::new(status, code, other.to_string()),
    };
    let mut response = api_error.into_response();
    if let Some(seconds) = retry_after_s {
        response
            .headers_mut()
            .insert("retry-after", warp::http::HeaderValue::from(seconds.max(1)));
    }
    response
}

/// The page a browser sees after following an activation link.
pub fn verify_page(outcome: Result<&Profile, AccountError>) -> warp::reply::Response {
    let (status, title, message) = match outcome {
        Ok(profile) => (
            StatusCode::OK,
            "Account activated",
            format!(
                "Welcome, {}. Your account is active: you can log in now.",
                profile.name
            ),
        ),
        Err(error) => {
            let (status, _, _) = classify(&error);
            let message = match &error {
                AccountError::Runtime(_) | AccountError::Internal(_) => {
                    "The cluster could not answer; try the link again in a moment.".to_string()
                }
                other => other.to_string(),
            };
            (status, "Activation failed", message)
        }
    };
    let page = format!(
        "<!doctype html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">\
         <meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\
         <title>{title} · ActorHub</title></head>\n<body style=\"font-family: sans-serif; \
         max-width: 32rem; margin: 4rem auto\"><h1>{title}</h1><p>{}</p>\
         <p><a href=\"/\">Go to ActorHub</a></p></body></html>\n",
        escape_html(&message)
    );
    warp::reply::with_status(warp::reply::html(page), status).into_response()
}

fn escape_html(text: &str) -> String {
    let mut escaped = String::with_capacity(text.len());
    for char in text.chars() {
        match char {
            '&' => escaped.push_str("&amp;"),
            '<' => escaped.push_str("&lt;"),
            '>' => escaped.push_str("&gt;"),
            '"' => escaped.push_str("&quot;"),
            '\'' => escaped.push_str("&#39;"),
            other => escaped.push(other),
        }
    }
    escaped
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wrong_password_and_unknown_email_share_one_answer() {
        let (status, code, _) = classify(&AccountError::BadCredentials);
        assert_eq!(
            (status, code),
            (StatusCode::UNAUTHORIZED, "invalid_credentials")
        );
        let (status, code, _) = classify(&AccountError::NotVerified);
        assert_eq!(
            (status, code),
            (StatusCode::FORBIDDEN, "email_not_verified")
        );
    }

    #[test]
    fn rate_limits_say_when_to_retry() {
        let response = account_error(AccountError::User(UserError::TooManyAttempts {
            retry_after_ms: 1_500,
        }));
        assert_eq!(response.status(), StatusCode::TOO_MANY_REQUESTS);
        assert_eq!(
            response
                .headers()
                .get("retry-after")
                .map(|value| value.as_bytes()),
            Some(&b"2"[..])
        );
    }

    #[test]
    fn the_page_escapes_what_it_shows() {
        let profile = Profile {
            id: "0123456789abcdef0123456789abcdef".into(),
            email: "a@example.com".into(),
            name: "<script>alert(1)</script>".into(),
            bio: String::new(),
            verified: true,
            created_at_ms: 1,
            photo: None,
        };
        let response = verify_page(Ok(&profile));
        assert_eq!(response.status(), StatusCode::OK);
        assert_eq!(
            escape_html("<a href=\"x\">"),
            "&lt;a href=&quot;x&quot;&gt;"
        );
    }
}
