//! Office documents (DOCX, ODT, XLSX, PPTX, ODS, ODP) → PDF through LibreOffice:
//! `soffice --headless --convert-to pdf`, run as a child of the converter worker (so inside
//! its sandbox, its limits and its process group) in the worker's private directory, with a
//! user profile of its own there (two conversions at once must not share one, and the user's
//! profile must never be touched), killed at the job's deadline.
//!
//! Available only when the node found `soffice` (it looks on its PATH at start and passes the
//! path down; this module reads no environment).

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use super::{Conversion, ConvertError};

/// The program the node looks for on its PATH.
pub const PROGRAM: &str = "soffice";
/// How often a running conversion is checked for its deadline and cancellation.
const POLL_INTERVAL: Duration = Duration::from_millis(50);
/// Where LibreOffice works, inside the worker's own directory.
const WORK_DIRECTORY: &str = "office";

pub fn to_pdf(conversion: &Conversion<'_>) -> Result<Vec<u8>, ConvertError> {
    let Some(program) = conversion.office else {
        return Err(ConvertError::Unavailable("LibreOffice (soffice)"));
    };
    let io_error = |error: std::io::Error| ConvertError::Failed(format!("LibreOffice: {error}"));
    // Absolute: LibreOffice wants a file URL for its profile.
    let directory = std::path::absolute(WORK_DIRECTORY).map_err(io_error)?;
    std::fs::create_dir_all(directory.join("profile")).map_err(io_error)?;
    let input = directory.join(format!("input.{}", conversion.from.extension()));
    std::fs::write(&input, conversion.input).map_err(io_error)?;
    (conversion.progress)(20, "starting LibreOffice");
    let mut child = Command::new(program)
        .arg(format!(
            "-env:UserInstallation=file://{}",
            directory.join("profile").display()
        ))
        .args([
            "--headless",
            "--norestore",
            "--nolockcheck",
            "--convert-to",
            "pdf",
            "--outdir",
        ])
        .arg(&directory)
        .arg(&input)
        .current_dir(&directory)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        // Its last words (`std::bad_alloc`) tell the node why it died.
        .stderr(Stdio::inherit())
        .spawn()
        .map_err(io_error)?;
    (conversion.progress)(40, "converting with LibreOffice");
    let status = loop {
        if let Some(status) = child.try_wait().map_err(io_error)? {
            break status;
        }
        if let Err(error) = conversion.checkpoint() {
            let _ = child.kill();
            let _ = child.wait();
            return Err(error);
        }
        std::thread::sleep(
            POLL_INTERVAL.min(
                conversion
                    .deadline
                    .saturating_duration_since(Instant::now()),
            ),
        );
    };
    let output = directory.join("input.pdf");
    if !status.success() || !output.is_file() {
        return Err(conversion.corrupt(format!("LibreOffice could not convert it ({status})")));
    }
    let size = std::fs::metadata(&output).map_err(io_error)?.len();
    if size > conversion.output_bytes_max {
        return Err(ConvertError::TooLarge(format!(
            "the output would be larger than {} bytes",
            conversion.output_bytes_max
        )));
    }
    std::fs::read(&output).map_err(io_error)
}
