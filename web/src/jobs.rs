//! Conversion job routes. The flows are `actors::job::service::Jobs`'s (the job itself is the
//! `job` entity); this module reads uploads with limits and maps the answers to HTTP.
//!
//! | route | success |
//! |---|---|
//! | `GET /api/converters` | 200 the supported conversions, with availability on this node |
//! | `POST /api/jobs` multipart `file`, `target` (+ `width`, `height` for images, `not_before` in unix ms to start later) | 202 `{job, state:"queued", ..}` (`"scheduled"` with a `not_before` to come) |
//! | `GET /api/jobs` | 200 `{jobs:[..]}`, mine, newest first |
//! | `GET /api/jobs/{id}` | 200 the job |
//! | `GET /api/jobs/{id}/download` | 200 the output, streamed |
//! | `DELETE /api/jobs/{id}` | 204 (cancelled if running, files deleted) |
//!
//! Every job route needs a token; a job of another user is answered 404, exactly like a job
//! that does not exist; an id that cannot be a job's (32 lowercase hex digits) is a 400
//! `invalid_id`. Failures: 413 `too_large`, 422 `unsupported_conversion` (the message
//! lists what the input converts to), 429 `queue_full` (the owner node's queue) or
//! `too_many_jobs` (the user's), 409 `not_ready` for a download before `done`, 400
//! `invalid_not_before` for a `not_before` that is not unix milliseconds, more than a minute
//! in the past or more than 30 days ahead, 400
//! `invalid_parameter` for a `limit` that is not a whole number (a larger one is clamped to
//! [`LIST_MAX`]).

mod upload;

use actors::job::index::LIST_MAX;
use actors::job::service::{Jobs, JobsError, Output, SubmitError};
use actors::job::{JobView, Phase, download_url, store};
use futures_util::StreamExt;
use runtime::Runtime;
use serde::Serialize;
use warp::http::{HeaderValue, StatusCode};
use warp::{Filter, Reply};

use crate::AppState;
use crate::auth::{Claims, authenticated};
use crate::error::ApiError;
use crate::input::Query;
use crate::limits::{self, Scope};

use self::upload::{form_bytes_max, parse_form, read_form};

/// Query parameters of the job list (`token` is read by `authenticated`, so that links can
/// carry it).
const LIST_PARAMETERS: [&str; 2] = ["limit", "token"];
/// Jobs listed when the query does not say.
const LIST_DEFAULT: usize = 50;
/// Chunks of a download buffered between the object store and the socket.
const DOWNLOAD_CHUNKS_BUFFERED: usize = 4;

type Response = warp::reply::Response;

#[derive(Serialize)]
struct PairBody {
    from: &'static str,
    to: &'static str,
    via: &'static str,
    available: bool,
}

#[derive(Serialize)]
struct InputBody<'a> {
    name: &'a str,
    format: &'static str,
    bytes: u64,
}

#[derive(Serialize)]
struct OutputBody<'a> {
    name: &'a str,
    format: &'static str,
    content_type: &'static str,
    bytes: u64,
}

#[derive(Serialize)]
struct JobBody<'a> {
    job: &'a str,
    state: &'static str,
    progress: u8,
    step: Option<&'a str>,
    error: Option<&'a str>,
    node: &'a str,
    target: &'static str,
    created_ms: u64,
    started_ms: Option<u64>,
    finished_ms: Option<u64>,
    attempts: u32,
    input: InputBody<'a>,
    output: Option<OutputBody<'a>>,
    download: Option<String>,
}

impl<'a> From<&'a JobView> for JobBody<'a> {
    fn from(view: &'a JobView) -> Self {
        JobBody {
            job: &view.id,
            state: view.phase.as_str(),
            progress: view.progress,
            step: view.step.as_deref(),
            error: view.error.as_deref(),
            node: &view.node,
            target: view.target.name(),
            created_ms: view.created_ms,
            started_ms: view.started_ms,
            finished_ms: view.finished_ms,
            attempts: view.attempts,
            input: InputBody {
                name: &view.input_name,
                format: view.input_format.name(),
                bytes: view.input_bytes,
            },
            output: view.output.as_ref().map(|output| OutputBody {
                name: &output.file_name,
                format: output.format.name(),
                content_type: output.format.content_type(),
                bytes: output.bytes,
            }),
            download: (view.phase == Phase::Done).then(|| download_url(&view.id)),
        }
    }
}

pub fn routes(state: AppState) -> warp::filters::BoxedFilter<(Response,)> {
    let auth = authenticated(state.tokens.clone());
    let jobs = state.jobs.clone();
    let with_jobs = warp::any().map(move || jobs.clone());
    let runtime = state.runtime.clone();
    let with_runtime = warp::any().map(move || runtime.clone());

    let converters = warp::path!("api" / "converters")
        .and(warp::get())
        .and(with_jobs.clone())
        .map(|jobs: Jobs| converters(&jobs));

    let submit = warp::path!("api" / "jobs")
        .and(warp::post())
        .and(with_jobs.clone())
        .and(with_runtime)
        .and(limits::user(&state.limits, Scope::Upload, auth.clone()))
        .and(warp::header::optional::<String>("content-type"))
        .and(warp::header::optional::<u64>("content-length"))
        .and(warp::body::stream())
        .then(
            |jobs: Jobs,
             runtime: Runtime,
             claims: Claims,
             content_type: Option<String>,
             length: Option<u64>,
             body| async move {
                if runtime.memory().under_pressure() {
                    return ApiError::short_of_memory().into_response();
                }
                let bytes_max = jobs.settings().input_bytes_max;
                let Some(boundary) =
                    content_type.and_then(|value| multer::parse_boundary(value).ok())
                else {
                    let message = "send the file as multipart/form-data with a `file` part \
                                   and a `target` field";
                    return ApiError::new(
                        StatusCode::UNSUPPORTED_MEDIA_TYPE,
                        "unsupported_media_type",
                        message,
                    )
                    .into_response();
                };
                let (body, rest) = crate::input::shared_body(body);
                let form = parse_form(body, boundary, bytes_max);
                match submit(&jobs, &runtime, claims, length, form).await {
                    Ok(response) => response,
                    Err(error) => {
                        // The parser stopped early: let a client still sending read the answer.
                        crate::input::drain(rest).await;
                        error.into_response()
                    }
                }
            },
        );

    let list = warp::path!("api" / "jobs")
        .and(warp::get())
        .and(with_jobs.clone())
        .and(auth.clone())
        .and(warp::query::raw().or(warp::any().map(String::new)).unify())
        .then(|jobs: Jobs, claims: Claims, query: String| async move {
            let limit = match Query::parse(&query, &LIST_PARAMETERS)
                .and_then(|query| query.limit("limit", LIST_DEFAULT, LIST_MAX))
            {
                Ok(limit) => limit,
                Err(error) => return error.into_response(),
            };
            match jobs.list(&claims.sub, limit).await {
                Ok(views) => {
                    let bodies: Vec<JobBody<'_>> = views.iter().map(JobBody::from).collect();
                    warp::reply::json(&serde_json::json!({ "jobs": bodies })).into_response()
                }
                Err(error) => api_error(error).into_response(),
            }
        });

    let status = warp::path!("api" / "jobs" / String)
        .and(warp::get())
        .and(with_jobs.clone())
        .and(auth.clone())
        .then(|job: String, jobs: Jobs, claims: Claims| async move {
            let view = async {
                check_job_id(&job)?;
                jobs.status(&claims.sub, &job).await.map_err(api_error)
            };
            match view.await {
                Ok(view) => warp::reply::json(&JobBody::from(&view)).into_response(),
                Err(error) => error.into_response(),
            }
        });

    let download = warp::path!("api" / "jobs" / String / "download")
        .and(warp::get())
        .and(with_jobs.clone())
        .and(auth.clone())
        .then(|job: String, jobs: Jobs, claims: Claims| async move {
            download(&jobs, &claims, &job)
                .await
                .unwrap_or_else(ApiError::into_response)
        });

    let delete = warp::path!("api" / "jobs" / String)
        .and(warp::delete())
        .and(with_jobs)
        .and(auth)
        .then(|job: String, jobs: Jobs, claims: Claims| async move {
            let deleted = async {
                check_job_id(&job)?;
                jobs.delete(&claims.sub, &job).await.map_err(api_error)
            };
            match deleted.await {
                Ok(()) => {
                    warp::reply::with_status(warp::reply(), StatusCode::NO_CONTENT).into_response()
                }
                Err(error) => error.into_response(),
            }
        });

    converters
        .or(submit)
        .unify()
        .or(list)
        .unify()
        .or(download)
        .unify()
        .or(status)
        .unify()
        .or(delete)
        .unify()
        .boxed()
}

fn converters(jobs: &Jobs) -> Response {
    let pairs: Vec<PairBody> = jobs
        .converters()
        .into_iter()
        .map(|pair| PairBody {
            from: pair.from.name(),
            to: pair.to.name(),
            via: pair.via,
            available: pair.available,
        })
        .collect();
    warp::reply::json(&serde_json::json!({ "converters": pairs })).into_response()
}

/// 400 for a path segment that cannot be a job id (checked before any entity is asked).
fn check_job_id(job: &str) -> Result<(), ApiError> {
    if store::valid_job_id(job) {
        Ok(())
    } else {
        Err(ApiError::bad_request(
            "invalid_id",
            "a job id is 32 lowercase hexadecimal digits",
        ))
    }
}

/// A job flow's failure as an HTTP error.
fn api_error(error: JobsError) -> ApiError {
    let message = error.to_string();
    match error {
        JobsError::TooManyJobs { .. } => {
            ApiError::new(StatusCode::TOO_MANY_REQUESTS, "too_many_jobs", message)
        }
        JobsError::QueueFull { .. } => {
            ApiError::new(StatusCode::TOO_MANY_REQUESTS, "queue_full", message)
        }
        JobsError::QuotaExceeded { .. } => ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "storage_quota_exceeded",
            message,
        ),
        JobsError::MissingFile => ApiError::bad_request("missing_file", message),
        JobsError::MissingTarget => ApiError::bad_request("missing_target", message),
        JobsError::EmptyFile => unprocessable("empty_file", message),
        JobsError::UnsupportedConversion(_) => unprocessable("unsupported_conversion", message),
        JobsError::InvalidOptions(_) => unprocessable("invalid_options", message),
        JobsError::InvalidNotBefore(_) => ApiError::bad_request("invalid_not_before", message),
        JobsError::NotFound => ApiError::new(StatusCode::NOT_FOUND, "not_found", message),
        JobsError::NotReady { .. } => ApiError::new(StatusCode::CONFLICT, "not_ready", message),
        JobsError::Gone => ApiError::new(StatusCode::GONE, "gone", message),
        JobsError::Store(_) | JobsError::Unexpected => ApiError::unavailable(message),
        JobsError::Runtime(error) => ApiError::from_runtime(error),
    }
}

fn unprocessable(code: &'static str, message: impl Into<String>) -> ApiError {
    ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, code, message)
}

async fn submit(
    jobs: &Jobs,
    runtime: &Runtime,
    claims: Claims,
    length: Option<u64>,
    form: multer::Multipart<'static>,
) -> Result<Response, ApiError> {
    let bytes_max = jobs.settings().input_bytes_max;
    if length.is_some_and(|length| length > form_bytes_max(bytes_max)) {
        return Err(ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "too_large",
            format!("the file is larger than {bytes_max} bytes"),
        ));
    }
    let store = runtime.object_store().clone();
    let upload = |job: String| async move { read_form(&store, &job, form, bytes_max).await };
    let view = match jobs.submit(&claims.sub, upload).await {
        Ok(view) => view,
        Err(SubmitError::Upload(error)) => return Err(error),
        Err(SubmitError::Jobs(error)) => return Err(api_error(error)),
    };
    let mut response = warp::reply::with_status(
        warp::reply::json(&JobBody::from(&view)),
        StatusCode::ACCEPTED,
    )
    .into_response();
    if let Ok(location) = HeaderValue::from_str(&format!("/api/jobs/{}", view.id)) {
        response.headers_mut().insert("location", location);
    }
    Ok(response)
}

async fn download(jobs: &Jobs, claims: &Claims, job: &str) -> Result<Response, ApiError> {
    check_job_id(job)?;
    let Output { info, chunks } = jobs.output(&claims.sub, job).await.map_err(api_error)?;
    let mut response = stream_response(chunks);
    let headers = response.headers_mut();
    headers.insert(
        "content-type",
        HeaderValue::from_static(info.format.content_type()),
    );
    if let Ok(length) = HeaderValue::from_str(&info.bytes.to_string()) {
        headers.insert("content-length", length);
    }
    if let Ok(disposition) = HeaderValue::from_str(&content_disposition(&info.file_name)) {
        headers.insert("content-disposition", disposition);
    }
    headers.insert(
        "x-content-type-options",
        HeaderValue::from_static("nosniff"),
    );
    // A converted HTML file must not run as our origin if someone opens it in place.
    headers.insert(
        "content-security-policy",
        HeaderValue::from_static("sandbox"),
    );
    headers.insert(
        "cache-control",
        HeaderValue::from_static("private, no-store"),
    );
    Ok(response)
}

/// `attachment` with an ASCII fallback name and the exact UTF-8 name (RFC 6266 / 5987).
fn content_disposition(file_name: &str) -> String {
    let ascii: String = file_name
        .chars()
        .map(|character| {
            if character.is_ascii_graphic() && character != '"' && character != '\\'
                || character == ' '
            {
                character
            } else {
                '_'
            }
        })
        .collect();
    let encoded: String = file_name
        .bytes()
        .map(|byte| {
            if byte.is_ascii_alphanumeric() || b"-._~".contains(&byte) {
                (byte as char).to_string()
            } else {
                format!("%{byte:02X}")
            }
        })
        .collect();
    format!("attachment; filename=\"{ascii}\"; filename*=UTF-8''{encoded}")
}

/// A response streaming the object's chunks. warp wants a `Sync` stream and the store's is
/// not, so a task forwards the chunks through a small bounded channel.
fn stream_response(
    mut chunks: futures_util::stream::BoxStream<'static, object_store::Result<bytes::Bytes>>,
) -> Response {
    let (sender, mut receiver) = tokio::sync::mpsc::channel::<Result<bytes::Bytes, std::io::Error>>(
        DOWNLOAD_CHUNKS_BUFFERED,
    );
    tokio::spawn(async move {
        while let Some(chunk) = chunks.next().await {
            let chunk = chunk.map_err(std::io::Error::other);
            let failed = chunk.is_err();
            if sender.send(chunk).await.is_err() || failed {
                break;
            }
        }
    });
    let stream = futures_util::stream::poll_fn(move |context| receiver.poll_recv(context));
    warp::reply::stream(stream).into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn content_disposition_has_a_safe_fallback_and_the_exact_name() {
        let header = content_disposition("résumé \"final\".pdf");
        assert!(
            header.starts_with("attachment; filename=\"r_sum_ _final_.pdf\""),
            "{header}"
        );
        assert!(
            header.contains("filename*=UTF-8''r%C3%A9sum%C3%A9%20%22final%22.pdf"),
            "{header}"
        );
    }
}
