//! The hostile corpus: inputs made to hurt converters, generated here (nothing is downloaded),
//! each with a one-line note of what it attacks.
//!
//! Decompression bombs (images that declare huge dimensions, a PNG whose zlib stream is the
//! issue's 389 KB picture of 20000×20000, a resize whose working buffers would be gigabytes),
//! spreadsheets whose cells span the whole sheet (the 1.5 KB XLSX that made calamine ask for
//! 512 GiB), zip bombs in OOXML and ODF parts, deeply nested Markdown and JSON, a CSV row of a
//! million columns, and truncated and garbage files of every format, including invalid UTF-8
//! past the part of a text file that upload sniffing reads.
//!
//! [`corpus`] returns them in memory (tests upload them), [`write_corpus`] writes them to a
//! directory with an `INDEX.tsv` (`chaos corpus --out DIR`). The hostile chaos clients use the
//! same entries. Everything is deterministic: the same build makes the same bytes.
//!
//! The entries are made in `images`, `office` (spreadsheets and office documents) and `texts`,
//! from the byte-level building blocks in `encoding` (noise, CRC-32, deflate, zip).

mod encoding;
mod images;
mod office;
mod texts;

use std::path::{Path, PathBuf};

pub use self::encoding::noise;
use self::images::{broken_images, image_bombs};
use self::office::{office_documents, sheets};
use self::texts::texts;

/// One hostile input and how to submit it.
#[derive(Debug, Clone)]
pub struct HostileInput {
    /// The file name (its extension matters for text formats, whose kind sniffing cannot tell).
    pub name: String,
    /// The format the upload is sniffed as, by its API name (`png`, `xlsx`, `markdown`, ...).
    pub format: &'static str,
    /// The targets to convert it to, by API name; every one must end the job `failed`.
    pub targets: Vec<&'static str>,
    /// Extra upload fields (e.g. `width`).
    pub options: Vec<(&'static str, String)>,
    /// What it attacks, in one line.
    pub note: &'static str,
    pub bytes: Vec<u8>,
}

impl HostileInput {
    fn new(
        name: &str,
        format: &'static str,
        targets: &[&'static str],
        note: &'static str,
        bytes: Vec<u8>,
    ) -> Self {
        Self {
            name: name.to_string(),
            format,
            targets: targets.to_vec(),
            options: Vec::new(),
            note,
            bytes,
        }
    }

    fn with_option(mut self, name: &'static str, value: impl ToString) -> Self {
        self.options.push((name, value.to_string()));
        self
    }
}

/// Every hostile input, in a stable order.
pub fn corpus() -> Vec<HostileInput> {
    let mut inputs = Vec::new();
    inputs.extend(image_bombs());
    inputs.extend(broken_images());
    inputs.extend(sheets());
    inputs.extend(office_documents());
    inputs.extend(texts());
    inputs
}

/// Writes every input to `directory` and an `INDEX.tsv` (file, format, targets, options,
/// note); returns the paths written.
pub fn write_corpus(directory: &Path) -> std::io::Result<Vec<PathBuf>> {
    std::fs::create_dir_all(directory)?;
    let mut written = Vec::new();
    let mut index = String::from("# file\tformat\ttargets\toptions\tattacks\n");
    for input in corpus() {
        let path = directory.join(&input.name);
        std::fs::write(&path, &input.bytes)?;
        let options: Vec<String> = input
            .options
            .iter()
            .map(|(name, value)| format!("{name}={value}"))
            .collect();
        index.push_str(&format!(
            "{}\t{}\t{}\t{}\t{}\n",
            input.name,
            input.format,
            input.targets.join(","),
            options.join("&"),
            input.note
        ));
        written.push(path);
    }
    let index_path = directory.join("INDEX.tsv");
    std::fs::write(&index_path, index)?;
    written.push(index_path);
    Ok(written)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_input_has_a_name_a_target_and_a_note_and_the_issue_cases_are_small() {
        let inputs = corpus();
        let mut names = std::collections::BTreeSet::new();
        for input in &inputs {
            assert!(names.insert(input.name.clone()), "{} twice", input.name);
            assert!(!input.targets.is_empty() && !input.note.is_empty());
            assert!(!input.bytes.is_empty());
            assert!(input.bytes.len() < 8 * 1024 * 1024, "{}", input.name);
        }
        let size = |name: &str| {
            inputs
                .iter()
                .find(|input| input.name == name)
                .map(|input| input.bytes.len())
                .expect("listed")
        };
        assert!(size("xlsx-whole-sheet-range.xlsx") < 4 * 1024);
        assert!(size("png-20000-square-resize.png") < 600 * 1024);
    }

    #[test]
    fn the_index_lists_every_file() {
        let directory = tempfile::tempdir().expect("tempdir");
        let written = write_corpus(directory.path()).expect("written");
        let index = std::fs::read_to_string(directory.path().join("INDEX.tsv")).expect("index");
        assert_eq!(index.lines().count(), written.len());
    }
}
