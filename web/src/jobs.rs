//! Conversion job routes. The job itself is the `job` entity (`actors::job`); this module reads
//! uploads with limits, checks who asks, and turns the entity's answers into HTTP.
//!
//! | route | success |
//! |---|---|
//! | `GET /api/converters` | 200 the supported conversions, with availability on this node |
//! | `POST /api/jobs` multipart `file`, `target` (+ `width`, `height` for images) | 202 `{job, state:"queued", ..}` |
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
//! `invalid_parameter` for a `limit` that is not a whole number (a larger one is clamped to
//! [`LIST_MAX`]).

mod upload;

use std::sync::Arc;

use actors::config::JobsSection;
use actors::job::convert::{Availability, Options, Target, catalogue, check_pair};
use actors::job::format::{self, Format};
use actors::job::index::{self, JobIndex, LIST_MAX, Reservation};
use actors::job::request::{Delete, Status, Submit};
use actors::job::{
    FILE_NAME_CHARS_MAX, Job, JobError, JobInfo, JobView, Phase, download_url, store,
};
use futures_util::StreamExt;
use object_store::ObjectStoreExt;
use runtime::Runtime;
use serde::Serialize;
use warp::http::{HeaderValue, StatusCode};
use warp::{Filter, Reply};

use crate::AppState;
use crate::auth::{Claims, authenticated};
use crate::error::ApiError;
use crate::input::Query;

use self::upload::{Upload, form_bytes_max, parse_form, read_form};

/// Query parameters of the job list (`token` is read by `authenticated`, so that links can
/// carry it).
const LIST_PARAMETERS: [&str; 2] = ["limit", "token"];
/// Jobs listed when the query does not say.
const LIST_DEFAULT: usize = 50;
/// Status requests in flight at once for one listing.
const LIST_CONCURRENCY_MAX: usize = 8;
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
    let runtime = state.runtime.clone();
    let with_runtime = warp::any().map(move || runtime.clone());
    let settings = Arc::new(state.app.jobs.clone());
    let with_settings = warp::any().map(move || settings.clone());

    let converters = warp::path!("api" / "converters")
        .and(warp::get())
        .and(with_settings.clone())
        .map(|settings: Arc<JobsSection>| converters(&settings));

    let submit = warp::path!("api" / "jobs")
        .and(warp::post())
        .and(with_runtime.clone())
        .and(with_settings)
        .and(auth.clone())
        .and(warp::header::optional::<String>("content-type"))
        .and(warp::header::optional::<u64>("content-length"))
        .and(warp::body::stream())
        .then(
            |runtime: Runtime,
             settings: Arc<JobsSection>,
             claims: Claims,
             content_type: Option<String>,
             length: Option<u64>,
             body| async move {
                if runtime.memory().under_pressure() {
                    return ApiError::short_of_memory().into_response();
                }
                let bytes_max = settings.input_bytes_max;
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
                match submit(runtime, &settings, claims, length, form).await {
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
        .and(with_runtime.clone())
        .and(auth.clone())
        .and(warp::query::raw().or(warp::any().map(String::new)).unify())
        .then(
            |runtime: Runtime, claims: Claims, query: String| async move {
                let limit = match Query::parse(&query, &LIST_PARAMETERS)
                    .and_then(|query| query.limit("limit", LIST_DEFAULT, LIST_MAX))
                {
                    Ok(limit) => limit,
                    Err(error) => return error.into_response(),
                };
                list(runtime, claims, limit)
                    .await
                    .unwrap_or_else(ApiError::into_response)
            },
        );

    let status = warp::path!("api" / "jobs" / String)
        .and(warp::get())
        .and(with_runtime.clone())
        .and(auth.clone())
        .then(|job: String, runtime: Runtime, claims: Claims| async move {
            match owned_view(&runtime, &claims, &job).await {
                Ok(view) => warp::reply::json(&JobBody::from(&view)).into_response(),
                Err(error) => error.into_response(),
            }
        });

    let download = warp::path!("api" / "jobs" / String / "download")
        .and(warp::get())
        .and(with_runtime.clone())
        .and(auth.clone())
        .then(|job: String, runtime: Runtime, claims: Claims| async move {
            download(runtime, claims, job)
                .await
                .unwrap_or_else(ApiError::into_response)
        });

    let delete = warp::path!("api" / "jobs" / String)
        .and(warp::delete())
        .and(with_runtime)
        .and(auth)
        .then(|job: String, runtime: Runtime, claims: Claims| async move {
            delete(runtime, claims, job)
                .await
                .unwrap_or_else(ApiError::into_response)
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

fn availability(settings: &JobsSection) -> Availability {
    Availability::detect(settings.test_converters)
}

fn converters(settings: &JobsSection) -> Response {
    let pairs: Vec<PairBody> = catalogue(availability(settings))
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

fn not_found() -> ApiError {
    ApiError::new(StatusCode::NOT_FOUND, "not_found", "no such job")
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

fn too_many(code: &'static str, message: impl Into<String>) -> ApiError {
    ApiError::new(StatusCode::TOO_MANY_REQUESTS, code, message)
}

fn unprocessable(code: &'static str, message: impl Into<String>) -> ApiError {
    ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, code, message)
}

async fn submit(
    runtime: Runtime,
    limits: &JobsSection,
    claims: Claims,
    length: Option<u64>,
    form: multer::Multipart<'static>,
) -> Result<Response, ApiError> {
    if length.is_some_and(|length| length > form_bytes_max(limits.input_bytes_max)) {
        return Err(ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "too_large",
            format!("the file is larger than {} bytes", limits.input_bytes_max),
        ));
    }
    let job = store::new_job_id();
    let index = runtime.entity::<JobIndex>(claims.sub.clone());
    let reserve = index::Reserve {
        job: job.clone(),
        now_ms: runtime::membership::unix_ms(),
        limit: limits.per_user_max,
    };
    match index.ask(reserve).await.map_err(ApiError::from_runtime)? {
        Reservation::TooMany { limit } => {
            return Err(too_many(
                "too_many_jobs",
                format!("you have {limit} unfinished jobs; wait for one to finish"),
            ));
        }
        Reservation::Granted => {}
    }
    let release_slot = || async {
        let _ = index.ask(index::Remove { job: job.clone() }).await;
    };
    let store = runtime.object_store().clone();
    let upload = match read_form(&store, &job, form, limits.input_bytes_max).await {
        Ok(upload) => upload,
        Err(error) => {
            release_slot().await;
            return Err(error);
        }
    };
    let info = match job_info(limits, &claims, upload) {
        Ok(info) => info,
        Err(error) => {
            store::delete_quietly(&store, &store::input_path(&job)).await;
            release_slot().await;
            return Err(error);
        }
    };
    // The marker goes first: if this node dies between here and the submit, the reviver
    // finds it and cleans up.
    if let Err(error) = store::put_marker(&store, &job, &claims.sub).await {
        store::delete_quietly(&store, &store::input_path(&job)).await;
        release_slot().await;
        return Err(ApiError::unavailable(format!(
            "cannot record the job: {error}"
        )));
    }
    let reply = runtime.entity::<Job>(job.clone()).ask(Submit(info)).await;
    let view = match reply {
        Ok(Ok(view)) => view,
        Ok(Err(JobError::QueueFull { max })) => {
            store::delete_job_files(&store, &job).await;
            release_slot().await;
            return Err(too_many(
                "queue_full",
                format!("the conversion queue is full ({max} jobs); try again later"),
            ));
        }
        Ok(Err(JobError::AlreadyExists | JobError::NotFound)) => {
            return Err(ApiError::unavailable(
                "unexpected answer from the job; try again",
            ));
        }
        // The submit may or may not have landed: leave the files to the reviver (it runs the
        // job, or removes an orphan), and the reservation to its expiry.
        Err(error) => return Err(ApiError::from_runtime(error)),
    };
    let _ = index.ask(index::Confirm { job: job.clone() }).await;
    let mut response = warp::reply::with_status(
        warp::reply::json(&JobBody::from(&view)),
        StatusCode::ACCEPTED,
    )
    .into_response();
    if let Ok(location) = HeaderValue::from_str(&format!("/api/jobs/{job}")) {
        response.headers_mut().insert("location", location);
    }
    Ok(response)
}

/// Checks the form against the sniffed input and the converters of this node.
fn job_info(settings: &JobsSection, claims: &Claims, upload: Upload) -> Result<JobInfo, ApiError> {
    let Some(file_name) = upload.file_name else {
        return Err(ApiError::bad_request(
            "missing_file",
            "the form needs a `file` part",
        ));
    };
    let Some(target_name) = upload.target else {
        return Err(ApiError::bad_request(
            "missing_target",
            "the form needs a `target` field, e.g. jpeg or pdf",
        ));
    };
    if upload.file_bytes == 0 {
        return Err(unprocessable("empty_file", "the file is empty"));
    }
    let input_format = format::sniff(&upload.head, &upload.tail, upload.file_bytes, &file_name);
    let availability = availability(settings);
    let supported = |format: Format| -> String {
        let targets: Vec<&str> = catalogue(availability)
            .into_iter()
            .filter(|pair| pair.from == format && pair.available)
            .map(|pair| pair.to.name())
            .collect();
        if targets.is_empty() {
            "nothing".to_string()
        } else {
            targets.join(", ")
        }
    };
    let Some(target) = Target::from_name(&target_name) else {
        let message = format!(
            "unknown target {target_name:?}; this {input_format} file converts to: {}",
            supported(input_format)
        );
        return Err(unprocessable("unsupported_conversion", message));
    };
    if check_pair(input_format, target, availability).is_err() {
        let message = format!(
            "cannot convert {input_format} to {target}; this {input_format} file converts to: {}",
            supported(input_format)
        );
        return Err(unprocessable("unsupported_conversion", message));
    }
    let options = Options {
        width: upload.width,
        height: upload.height,
        duration_ms: upload.duration_ms,
    };
    options
        .validate(input_format, target)
        .map_err(|message| unprocessable("invalid_options", message))?;
    Ok(JobInfo {
        owner: claims.sub.clone(),
        input_name: clean_file_name(&file_name),
        input_format,
        input_bytes: upload.file_bytes,
        target,
        options,
        created_ms: runtime::membership::unix_ms(),
    })
}

/// The base name of a client's file name, without control characters, bounded.
fn clean_file_name(name: &str) -> String {
    let base = name.rsplit(['/', '\\']).next().unwrap_or(name);
    let cleaned: String = base
        .chars()
        .filter(|character| !character.is_control())
        .take(FILE_NAME_CHARS_MAX)
        .collect();
    if cleaned.trim().is_empty() {
        "upload".to_string()
    } else {
        cleaned
    }
}

/// The job, if it exists and belongs to the caller (404 otherwise, whichever it is).
async fn owned_view(runtime: &Runtime, claims: &Claims, job: &str) -> Result<JobView, ApiError> {
    check_job_id(job)?;
    match runtime
        .entity::<Job>(job.to_string())
        .ask(Status)
        .await
        .map_err(ApiError::from_runtime)?
    {
        Ok(view) if view.owner == claims.sub => Ok(view),
        Ok(_) | Err(_) => Err(not_found()),
    }
}

async fn list(runtime: Runtime, claims: Claims, limit: usize) -> Result<Response, ApiError> {
    let index = runtime.entity::<JobIndex>(claims.sub.clone());
    let entries = index
        .ask(index::List { limit })
        .await
        .map_err(ApiError::from_runtime)?;
    let views: Vec<JobView> = futures_util::stream::iter(entries)
        .map(|entry| {
            let runtime = runtime.clone();
            let claims = claims.clone();
            async move { owned_view(&runtime, &claims, &entry.job).await.ok() }
        })
        .buffered(LIST_CONCURRENCY_MAX)
        .filter_map(|view| async move { view })
        .collect()
        .await;
    let bodies: Vec<JobBody<'_>> = views.iter().map(JobBody::from).collect();
    Ok(warp::reply::json(&serde_json::json!({ "jobs": bodies })).into_response())
}

async fn download(runtime: Runtime, claims: Claims, job: String) -> Result<Response, ApiError> {
    let view = owned_view(&runtime, &claims, &job).await?;
    let output = match (view.phase, &view.output) {
        (Phase::Done, Some(output)) => output.clone(),
        (phase, _) => {
            let message = format!(
                "the job is {}; its output is ready once it is done",
                phase.as_str()
            );
            return Err(ApiError::new(StatusCode::CONFLICT, "not_ready", message));
        }
    };
    let path = object_store::path::Path::from(output.path.as_str());
    let object = match runtime.object_store().get(&path).await {
        Ok(object) => object,
        Err(object_store::Error::NotFound { .. }) => {
            return Err(ApiError::new(
                StatusCode::GONE,
                "gone",
                "the output file is gone",
            ));
        }
        Err(error) => {
            return Err(ApiError::unavailable(format!(
                "cannot read the output: {error}"
            )));
        }
    };
    let mut response = stream_response(object.into_stream());
    let headers = response.headers_mut();
    headers.insert(
        "content-type",
        HeaderValue::from_static(output.format.content_type()),
    );
    if let Ok(length) = HeaderValue::from_str(&output.bytes.to_string()) {
        headers.insert("content-length", length);
    }
    if let Ok(disposition) = HeaderValue::from_str(&content_disposition(&output.file_name)) {
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

async fn delete(runtime: Runtime, claims: Claims, job: String) -> Result<Response, ApiError> {
    check_job_id(&job)?;
    let command = Delete {
        owner: claims.sub.clone(),
    };
    match runtime
        .entity::<Job>(job)
        .ask(command)
        .await
        .map_err(ApiError::from_runtime)?
    {
        Ok(_) => {
            Ok(warp::reply::with_status(warp::reply(), StatusCode::NO_CONTENT).into_response())
        }
        Err(_) => Err(not_found()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn file_names_are_cleaned() {
        assert_eq!(clean_file_name("../../etc/passwd"), "passwd");
        assert_eq!(clean_file_name("C:\\Users\\me\\photo.png"), "photo.png");
        assert_eq!(clean_file_name("a\u{0}b\n.png"), "ab.png");
        assert_eq!(clean_file_name("   "), "upload");
    }

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
