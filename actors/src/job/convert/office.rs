//! Office documents (DOCX, ODT, XLSX, PPTX, ODS, ODP) → PDF through LibreOffice:
//! `soffice --headless --convert-to pdf`, run as a child process in a temporary directory of its
//! own, with its own user profile (two conversions at once must not share one, and the
//! user's profile must never be touched), killed at the job's deadline or on cancellation.
//!
//! Available only when `soffice` is on the PATH (the same PATH `Command` searches).

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use super::{Conversion, ConvertError};

/// The program looked up on the PATH.
pub const PROGRAM: &str = "soffice";
/// How often a running conversion is checked for its deadline and cancellation.
const POLL_INTERVAL: Duration = Duration::from_millis(50);

/// True when `soffice` is an executable file in a PATH directory (looked up once).
pub fn available() -> bool {
    static FOUND: OnceLock<bool> = OnceLock::new();
    *FOUND.get_or_init(|| find_program(PROGRAM).is_some())
}

fn find_program(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|directory| directory.join(name))
        .find(|candidate| is_executable(candidate))
}

fn is_executable(path: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(path)
        .is_ok_and(|metadata| metadata.is_file() && metadata.permissions().mode() & 0o111 != 0)
}

/// Removes the conversion's directory however the conversion ends.
struct TempDir(PathBuf);

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

pub fn to_pdf(conversion: &Conversion<'_>) -> Result<Vec<u8>, ConvertError> {
    if !available() {
        return Err(ConvertError::Unavailable("LibreOffice (soffice)"));
    }
    let directory = TempDir(std::env::temp_dir().join(format!(
        "actorhub-office-{}-{:016x}",
        std::process::id(),
        random_u64()
    )));
    let io_error = |error: std::io::Error| ConvertError::Failed(format!("LibreOffice: {error}"));
    std::fs::create_dir_all(directory.0.join("profile")).map_err(io_error)?;
    let input = directory
        .0
        .join(format!("input.{}", conversion.from.extension()));
    std::fs::write(&input, conversion.input).map_err(io_error)?;
    (conversion.progress)(20, "starting LibreOffice");
    let mut child = Command::new(PROGRAM)
        .arg(format!(
            "-env:UserInstallation=file://{}",
            directory.0.join("profile").display()
        ))
        .args([
            "--headless",
            "--norestore",
            "--nolockcheck",
            "--convert-to",
            "pdf",
            "--outdir",
        ])
        .arg(&directory.0)
        .arg(&input)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
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
    let output = directory.0.join("input.pdf");
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

/// Enough randomness for a temporary directory name (no dependency for it).
fn random_u64() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    let mut hasher = std::collections::hash_map::RandomState::new().build_hasher();
    hasher.write_u128(Instant::now().elapsed().as_nanos());
    hasher.finish()
}
