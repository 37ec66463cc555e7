//! The converters: which pairs of formats are supported (the catalogue behind
//! `GET /api/converters`) and [`convert`], which runs one conversion synchronously.
//!
//! Converters are plain blocking functions over bytes in memory. They run only inside a
//! converter worker process (`port::worker`), never in the node: a native abort, a stack
//! overflow or a runaway allocation there kills the worker, not the node. They check a
//! deadline between steps and report their progress. They never panic on bad input (the
//! worker catches a panic all the same).

mod image;
mod office;
mod pdf;
mod sheet;
mod test;
mod text;

use std::path::Path;
use std::sync::OnceLock;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

use serde::{Deserialize, Serialize};

use super::format::Format;

pub use self::office::PROGRAM as OFFICE_PROGRAM;

/// Largest width or height a resize may ask for.
pub const RESIZE_DIMENSION_MAX: u32 = 10_000;

/// What a job converts to: a format, or one of the test-only targets.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub enum Target {
    Format(Format),
    /// Test only: copies the input after `duration_ms`, reporting progress (failover tests).
    Slow,
    /// Test only: panics (fault isolation tests).
    Panic,
    /// Test only: aborts its worker process (after `duration_ms`), every time (quarantine).
    Crash,
    /// Test only: allocates until the worker's memory limit stops it.
    Hog,
    /// Test only: a busy loop that never ends (CPU limit, timeout).
    Spin,
}

impl Target {
    pub fn name(self) -> &'static str {
        match self {
            Target::Format(format) => format.name(),
            Target::Slow => "slow",
            Target::Panic => "panic",
            Target::Crash => "crash",
            Target::Hog => "hog",
            Target::Spin => "spin",
        }
    }

    pub fn from_name(name: &str) -> Option<Target> {
        match name.trim().to_ascii_lowercase().as_str() {
            "slow" => Some(Target::Slow),
            "panic" => Some(Target::Panic),
            "crash" => Some(Target::Crash),
            "hog" => Some(Target::Hog),
            "spin" => Some(Target::Spin),
            other => Format::from_name(other).map(Target::Format),
        }
    }
}

impl std::fmt::Display for Target {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter.write_str(self.name())
    }
}

/// Per-job options from the upload form.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Options {
    /// Images: fit the output in this width (keeps the aspect ratio).
    pub width: Option<u32>,
    /// Images: fit the output in this height (keeps the aspect ratio).
    pub height: Option<u32>,
    /// The `slow` and `crash` test targets: how long they take.
    pub duration_ms: Option<u64>,
}

impl Options {
    /// Checks the options against the pair they are used with.
    pub fn validate(&self, from: Format, to: Target) -> Result<(), String> {
        for (name, value) in [("width", self.width), ("height", self.height)] {
            if let Some(value) = value {
                if !(from.is_image() && matches!(to, Target::Format(format) if format.is_image())) {
                    return Err(format!("`{name}` applies to image conversions only"));
                }
                if !(1..=RESIZE_DIMENSION_MAX).contains(&value) {
                    return Err(format!("`{name}` must be 1 to {RESIZE_DIMENSION_MAX}"));
                }
            }
        }
        if self.duration_ms.is_some_and(|duration| duration > 600_000) {
            return Err("`duration_ms` must be at most 600000".into());
        }
        Ok(())
    }
}

/// Which optional converters this node can run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Availability {
    /// The node found `soffice` (it passed its path in `AppDeps`).
    pub office: bool,
    /// `jobs.test_converters` is on.
    pub test: bool,
}

/// Whether this process's node found LibreOffice, as `actors::register` was told (the node is
/// the only crate that reads the environment; the catalogue is asked from places that have
/// no deps at hand, such as the web routes).
static OFFICE_FOUND: OnceLock<bool> = OnceLock::new();

/// Records whether LibreOffice was found (the first call wins: every node of one process
/// shares its environment).
pub fn set_office_found(found: bool) {
    let _ = OFFICE_FOUND.set(found);
}

impl Availability {
    /// What this process can run, with test converters as the config says.
    pub fn detect(test: bool) -> Self {
        Self {
            office: OFFICE_FOUND.get().copied().unwrap_or(false),
            test,
        }
    }
}

/// One supported conversion, as the catalogue lists it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Pair {
    pub from: Format,
    pub to: Target,
    /// What does the work (a crate or a program).
    pub via: &'static str,
    pub available: bool,
}

const IMAGES: [Format; 6] = [
    Format::Png,
    Format::Jpeg,
    Format::Webp,
    Format::Gif,
    Format::Bmp,
    Format::Tiff,
];
const OFFICE: [Format; 6] = [
    Format::Docx,
    Format::Odt,
    Format::Xlsx,
    Format::Pptx,
    Format::Ods,
    Format::Odp,
];

/// Every conversion this build knows, with whether this node can run it. Test targets are
/// listed only when enabled.
pub fn catalogue(availability: Availability) -> Vec<Pair> {
    let mut pairs = Vec::new();
    let mut add = |from: Format, to: Format, via: &'static str, available: bool| {
        pairs.push(Pair {
            from,
            to: Target::Format(to),
            via,
            available,
        });
    };
    for from in IMAGES {
        for to in IMAGES {
            add(from, to, "image", true);
        }
    }
    add(Format::Markdown, Format::Html, "pulldown-cmark", true);
    add(
        Format::Markdown,
        Format::Pdf,
        "pulldown-cmark + pdf-writer",
        true,
    );
    add(Format::Text, Format::Pdf, "pdf-writer", true);
    add(Format::Csv, Format::Json, "csv + serde_json", true);
    add(Format::Json, Format::Csv, "serde_json + csv", true);
    add(Format::Csv, Format::Xlsx, "rust_xlsxwriter", true);
    add(Format::Xlsx, Format::Csv, "calamine", true);
    add(Format::Ods, Format::Csv, "calamine", true);
    for from in OFFICE {
        add(from, Format::Pdf, "soffice", availability.office);
    }
    if availability.test {
        for from in Format::ALL {
            for to in [
                Target::Slow,
                Target::Panic,
                Target::Crash,
                Target::Hog,
                Target::Spin,
            ] {
                pairs.push(Pair {
                    from,
                    to,
                    via: "test",
                    available: true,
                });
            }
        }
    }
    pairs
}

/// Whether `from → to` runs LibreOffice (its worker gets the office limits and sandbox).
pub fn uses_office(from: Format, to: Target) -> bool {
    OFFICE.contains(&from) && to == Target::Format(Format::Pdf)
}

/// Ok when `from → to` can run here; otherwise the targets `from` can go to.
pub fn check_pair(from: Format, to: Target, availability: Availability) -> Result<(), Vec<Target>> {
    let pairs = catalogue(availability);
    if pairs
        .iter()
        .any(|pair| pair.from == from && pair.to == to && pair.available)
    {
        return Ok(());
    }
    Err(pairs
        .iter()
        .filter(|pair| pair.from == from && pair.available)
        .map(|pair| pair.to)
        .collect())
}

/// Why a conversion did not produce an output. Each message is shown to the job's owner.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConvertError {
    #[error("converting {from} to {to} is not supported")]
    Unsupported { from: Format, to: Target },
    #[error("the input is not a valid {format} file: {reason}")]
    Corrupt { format: Format, reason: String },
    #[error("{0}")]
    TooLarge(String),
    #[error("the conversion was cancelled")]
    Cancelled,
    #[error("the conversion took longer than its time limit")]
    TimedOut,
    #[error("{0} is not available on this node")]
    Unavailable(&'static str),
    #[error("the conversion failed: {0}")]
    Failed(String),
}

/// Reports progress (percent, step) to the job; cheap, callable from any thread.
pub type Progress<'a> = &'a (dyn Fn(u8, &str) + Sync);

/// One conversion's input and surroundings.
pub struct Conversion<'a> {
    pub input: &'a [u8],
    pub from: Format,
    pub to: Target,
    pub options: &'a Options,
    pub output_bytes_max: u64,
    /// When the job's time is up; long steps (LibreOffice) stop there.
    pub deadline: Instant,
    pub progress: Progress<'a>,
    /// Set on cancellation; converters stop at their next check.
    pub cancel: &'a AtomicBool,
    /// The LibreOffice program, when the node found one.
    pub office: Option<&'a Path>,
}

impl Conversion<'_> {
    /// Stops the conversion early when it was cancelled or timed out.
    pub fn checkpoint(&self) -> Result<(), ConvertError> {
        if self.cancel.load(Ordering::Relaxed) {
            return Err(ConvertError::Cancelled);
        }
        if Instant::now() >= self.deadline {
            return Err(ConvertError::TimedOut);
        }
        Ok(())
    }

    fn check_output(&self, bytes: &[u8]) -> Result<(), ConvertError> {
        if bytes.len() as u64 > self.output_bytes_max {
            return Err(ConvertError::TooLarge(format!(
                "the output would be larger than {} bytes",
                self.output_bytes_max
            )));
        }
        Ok(())
    }

    fn corrupt(&self, reason: impl std::fmt::Display) -> ConvertError {
        ConvertError::Corrupt {
            format: self.from,
            reason: reason.to_string(),
        }
    }
}

/// A converted file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Converted {
    pub bytes: Vec<u8>,
    pub format: Format,
}

/// Runs one conversion. Blocking, CPU-heavy and exposed to its input: call it in a worker
/// process (`port::worker`), never in the node.
pub fn convert(conversion: &Conversion<'_>) -> Result<Converted, ConvertError> {
    conversion.checkpoint()?;
    let from = conversion.from;
    let to = match conversion.to {
        Target::Slow => return test::slow(conversion),
        Target::Panic => test::panic(),
        Target::Crash => test::crash(conversion),
        Target::Hog => test::hog(),
        Target::Spin => test::spin(),
        Target::Format(format) => format,
    };
    let bytes = match (from, to) {
        (from, to) if from.is_image() && to.is_image() => image::convert(conversion, to)?,
        (Format::Markdown, Format::Html) => text::markdown_to_html(conversion)?,
        (Format::Markdown, Format::Pdf) => pdf::markdown_to_pdf(conversion)?,
        (Format::Text, Format::Pdf) => pdf::text_to_pdf(conversion)?,
        (Format::Csv, Format::Json) => text::csv_to_json(conversion)?,
        (Format::Json, Format::Csv) => text::json_to_csv(conversion)?,
        (Format::Csv, Format::Xlsx) => sheet::csv_to_xlsx(conversion)?,
        (Format::Xlsx | Format::Ods, Format::Csv) => sheet::sheet_to_csv(conversion)?,
        (from, Format::Pdf) if uses_office(from, conversion.to) => office::to_pdf(conversion)?,
        _ => {
            return Err(ConvertError::Unsupported {
                from,
                to: conversion.to,
            });
        }
    };
    conversion.check_output(&bytes)?;
    (conversion.progress)(90, "converted");
    Ok(Converted { bytes, format: to })
}

/// The input as UTF-8 text (a leading byte-order mark dropped).
fn utf8<'a>(conversion: &Conversion<'a>) -> Result<&'a str, ConvertError> {
    let text = std::str::from_utf8(conversion.input)
        .map_err(|error| conversion.corrupt(format!("not UTF-8 text ({error})")))?;
    Ok(text.strip_prefix('\u{feff}').unwrap_or(text))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_catalogue_lists_every_required_pair() {
        let pairs = catalogue(Availability {
            office: false,
            test: false,
        });
        let has = |from, to| {
            pairs
                .iter()
                .any(|pair| pair.from == from && pair.to == Target::Format(to))
        };
        assert!(has(Format::Png, Format::Webp));
        assert!(has(Format::Tiff, Format::Gif));
        assert!(has(Format::Markdown, Format::Html));
        assert!(has(Format::Csv, Format::Json) && has(Format::Json, Format::Csv));
        assert!(has(Format::Xlsx, Format::Csv) && has(Format::Ods, Format::Csv));
        assert!(has(Format::Csv, Format::Xlsx));
        assert!(has(Format::Text, Format::Pdf) && has(Format::Markdown, Format::Pdf));
        let docx = pairs
            .iter()
            .find(|pair| pair.from == Format::Docx)
            .expect("docx listed");
        assert!(!docx.available, "listed as unavailable without soffice");
        assert!(!pairs.iter().any(|pair| pair.to == Target::Slow));
    }

    #[test]
    fn unsupported_pairs_say_what_is_supported() {
        let availability = Availability {
            office: false,
            test: false,
        };
        let supported = check_pair(Format::Csv, Target::Format(Format::Png), availability)
            .expect_err("csv to png is not a thing");
        assert!(supported.contains(&Target::Format(Format::Json)));
        assert!(check_pair(Format::Docx, Target::Format(Format::Pdf), availability).is_err());
        assert!(check_pair(Format::Png, Target::Slow, availability).is_err());
        assert!(
            check_pair(
                Format::Png,
                Target::Slow,
                Availability {
                    test: true,
                    ..availability
                }
            )
            .is_ok()
        );
    }

    #[test]
    fn options_are_checked_against_the_pair() {
        let resize = Options {
            width: Some(10),
            ..Options::default()
        };
        assert!(
            resize
                .validate(Format::Png, Target::Format(Format::Jpeg))
                .is_ok()
        );
        assert!(
            resize
                .validate(Format::Csv, Target::Format(Format::Json))
                .is_err()
        );
        let huge = Options {
            width: Some(RESIZE_DIMENSION_MAX + 1),
            ..Options::default()
        };
        assert!(
            huge.validate(Format::Png, Target::Format(Format::Png))
                .is_err()
        );
    }
}
