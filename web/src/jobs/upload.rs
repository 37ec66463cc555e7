//! Reading a job upload: a `multipart/form-data` body with a `file` part, streamed into the
//! object store at `jobs/<id>/input` as it arrives, and small text fields (`target`, `width`,
//! `height`, `duration_ms`, `not_before`: unix milliseconds). The file's first and last bytes are kept for sniffing its type.
//!
//! **API Boundary:** nothing of the body is trusted: the file is counted as it streams and the
//! upload is aborted (its staged parts deleted) past `jobs.input_bytes_max`; fields and parts
//! are bounded in size and number; any failure leaves nothing behind. The parser (multer) is
//! given the same limits, and a limit on the whole body ([`form_bytes_max`]), so that a
//! chunked body (no `Content-Length`) with a part header that never ends cannot grow its
//! buffer past them either.

use std::sync::Arc;

use bytes::{Buf, Bytes};
use futures_util::{Stream, StreamExt};
use multer::{Constraints, Field, Multipart, SizeLimit};
use object_store::{ObjectStore, ObjectStoreExt, WriteMultipart};
use warp::http::StatusCode;

use actors::job::format::{SNIFF_HEAD_BYTES, SNIFF_TAIL_BYTES};
use actors::job::service::Upload;
use actors::job::store;

use crate::error::ApiError;

/// Parts in one upload form.
pub const PARTS_MAX: usize = 8;
/// Largest text field.
pub const FIELD_BYTES_MAX: usize = 256;
/// Bytes a form may add around its file (boundaries, part headers, the small fields).
pub const FORM_OVERHEAD_BYTES_MAX: u64 = 64 * 1024;
/// The form's field names.
const FIELD_NAMES: &str = "file, target, width, height, duration_ms, not_before";
/// Upload parts sent to the object store at once (each up to the store's chunk size).
const STORE_WRITES_IN_FLIGHT_MAX: usize = 2;

fn too_large(bytes_max: u64) -> ApiError {
    ApiError::new(
        StatusCode::PAYLOAD_TOO_LARGE,
        "too_large",
        format!("the file is larger than {bytes_max} bytes"),
    )
}

fn bad_form(message: impl Into<String>) -> ApiError {
    ApiError::bad_request("bad_multipart", message)
}

/// The most bytes a form holding a file of up to `file_bytes_max` may have.
pub fn form_bytes_max(file_bytes_max: u64) -> u64 {
    file_bytes_max.saturating_add(FORM_OVERHEAD_BYTES_MAX)
}

/// A parser of the request body `body` as a form with `boundary`, limited for a file of up
/// to `file_bytes_max` bytes.
pub fn parse_form<S, B>(body: S, boundary: String, file_bytes_max: u64) -> Multipart<'static>
where
    S: Stream<Item = Result<B, warp::Error>> + Send + 'static,
    B: Buf,
{
    let body = body.map(|chunk| chunk.map(|mut chunk| chunk.copy_to_bytes(chunk.remaining())));
    let limits = SizeLimit::new()
        .whole_stream(form_bytes_max(file_bytes_max))
        .per_field(FIELD_BYTES_MAX as u64)
        .for_field("file", file_bytes_max);
    Multipart::with_constraints(body, boundary, Constraints::new().size_limit(limits))
}

/// The parser's error as the client should see it.
fn form_error(error: multer::Error, file_bytes_max: u64) -> ApiError {
    match error {
        multer::Error::StreamSizeExceeded { .. } => too_large(file_bytes_max),
        multer::Error::FieldSizeExceeded { field_name, .. } => match field_name.as_deref() {
            Some("file") => too_large(file_bytes_max),
            name => bad_form(format!(
                "`{}` is longer than {FIELD_BYTES_MAX} bytes",
                name.unwrap_or("a field")
            )),
        },
        error => bad_form(format!("cannot read the form: {error}")),
    }
}

/// Reads the form, streaming the file to `jobs/<job>/input`. On error nothing is stored.
pub async fn read_form(
    store: &Arc<dyn ObjectStore>,
    job: &str,
    mut form: Multipart<'static>,
    bytes_max: u64,
) -> Result<Upload, ApiError> {
    let mut upload = Upload::default();
    let mut parts = 0;
    let mut stored = false;
    let result: Result<(), ApiError> = async {
        while let Some(part) = form
            .next_field()
            .await
            .map_err(|error| form_error(error, bytes_max))?
        {
            parts += 1;
            if parts > PARTS_MAX {
                return Err(bad_form(format!("more than {PARTS_MAX} parts")));
            }
            match part.name().unwrap_or_default() {
                "file" if stored => return Err(bad_form("one `file` part only")),
                "file" => {
                    upload.file_name = Some(part.file_name().unwrap_or("upload").to_string());
                    stored = true;
                    store_file(store, job, part, bytes_max, &mut upload).await?;
                }
                "target" => upload.target = Some(read_field(part).await?),
                "width" => upload.width = Some(number_field(part, "width").await?),
                "height" => upload.height = Some(number_field(part, "height").await?),
                "duration_ms" => {
                    upload.duration_ms = Some(number_field(part, "duration_ms").await?)
                }
                "not_before" => upload.not_before_ms = Some(not_before_field(part).await?),
                other => {
                    let shown: String = other.chars().take(32).collect();
                    let message = format!("unknown form field {shown:?}; expected {FIELD_NAMES}");
                    return Err(ApiError::bad_request("unknown_field", message));
                }
            }
        }
        Ok(())
    }
    .await;
    if let Err(error) = result {
        if stored {
            store::delete_quietly(store, &store::input_path(job)).await;
        }
        return Err(error);
    }
    Ok(upload)
}

/// Streams one part into the object store, keeping its first and last bytes.
async fn store_file(
    store: &Arc<dyn ObjectStore>,
    job: &str,
    mut part: Field<'static>,
    bytes_max: u64,
    upload: &mut Upload,
) -> Result<(), ApiError> {
    let unavailable = |error: object_store::Error| {
        ApiError::unavailable(format!("cannot store the upload: {error}"))
    };
    let multipart = store
        .put_multipart(&store::input_path(job))
        .await
        .map_err(unavailable)?;
    let mut writer = WriteMultipart::new(multipart);
    let outcome: Result<(), ApiError> = async {
        while let Some(chunk) = part.chunk().await.map_err(|error| match error {
            multer::Error::StreamReadFailed(error) => {
                bad_form(format!("the upload broke off: {error}"))
            }
            error => form_error(error, bytes_max),
        })? {
            upload.file_bytes += chunk.len() as u64;
            if upload.file_bytes > bytes_max {
                return Err(too_large(bytes_max));
            }
            keep_ends(upload, &chunk);
            writer
                .wait_for_capacity(STORE_WRITES_IN_FLIGHT_MAX)
                .await
                .map_err(unavailable)?;
            writer.put(chunk);
        }
        Ok(())
    }
    .await;
    match outcome {
        Ok(()) => writer.finish().await.map(drop).map_err(unavailable),
        Err(error) => {
            if let Err(abort_error) = writer.abort().await {
                tracing::warn!(%job, error = %abort_error, "could not abort a refused upload");
            }
            Err(error)
        }
    }
}

fn keep_ends(upload: &mut Upload, chunk: &[u8]) {
    if upload.head.len() < SNIFF_HEAD_BYTES {
        let take = (SNIFF_HEAD_BYTES - upload.head.len()).min(chunk.len());
        upload.head.extend_from_slice(&chunk[..take]);
    }
    upload.tail.extend_from_slice(chunk);
    if upload.tail.len() > 2 * SNIFF_TAIL_BYTES {
        let excess = upload.tail.len() - SNIFF_TAIL_BYTES;
        upload.tail.drain(..excess);
    }
}

async fn read_field(mut part: Field<'static>) -> Result<String, ApiError> {
    let name = part.name().unwrap_or_default().to_string();
    let mut bytes = Vec::new();
    loop {
        let chunk: Option<Bytes> = part.chunk().await.map_err(|error| match error {
            multer::Error::FieldSizeExceeded { .. } => {
                bad_form(format!("`{name}` is longer than {FIELD_BYTES_MAX} bytes"))
            }
            error => bad_form(format!("cannot read `{name}`: {error}")),
        })?;
        let Some(chunk) = chunk else { break };
        if bytes.len() + chunk.len() > FIELD_BYTES_MAX {
            return Err(bad_form(format!(
                "`{name}` is longer than {FIELD_BYTES_MAX} bytes"
            )));
        }
        bytes.extend_from_slice(&chunk);
    }
    String::from_utf8(bytes).map_err(|_| bad_form(format!("`{name}` is not UTF-8 text")))
}

async fn number_field<T: std::str::FromStr>(
    part: Field<'static>,
    name: &str,
) -> Result<T, ApiError> {
    let text = read_field(part).await?;
    text.trim().parse().map_err(|_| {
        ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_options",
            format!("`{name}` must be a whole number, not {text:?}"),
        )
    })
}

/// `not_before`: unix milliseconds, a whole number (its range is the service's to judge).
async fn not_before_field(part: Field<'static>) -> Result<u64, ApiError> {
    let text = read_field(part).await?;
    text.trim().parse().map_err(|_| {
        ApiError::bad_request(
            "invalid_not_before",
            format!(
                "`not_before` must be a time in unix milliseconds (a whole number), not {text:?}"
            ),
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_ends_of_a_long_upload_are_kept() {
        let mut upload = Upload::default();
        let data: Vec<u8> = (0..400_000u32).map(|index| (index % 251) as u8).collect();
        for chunk in data.chunks(7_919) {
            keep_ends(&mut upload, chunk);
        }
        assert_eq!(upload.head, data[..SNIFF_HEAD_BYTES]);
        assert!(upload.tail.len() >= SNIFF_TAIL_BYTES && upload.tail.len() <= 2 * SNIFF_TAIL_BYTES);
        assert!(data.ends_with(&upload.tail));
    }
}
