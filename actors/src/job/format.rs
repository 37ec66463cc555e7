//! File formats of conversion jobs: their names (as `/api/converters` lists them), content
//! types and extensions, and [`sniff`], which decides what an upload really is from its bytes.
//!
//! Binary formats are recognised by their magic bytes only; the name a client gave is never
//! trusted for them. ZIP containers are told apart by their entries (OOXML parts, or the ODF
//! `mimetype` entry). Text is text when it is UTF-8 without NUL bytes; which text format it is
//! (CSV, Markdown, JSON, plain) cannot be read from the bytes alone, so there the file name's
//! extension decides, with JSON checked for its opening bracket.

use serde::{Deserialize, Serialize};

/// Bytes of the start of an upload kept for sniffing.
pub const SNIFF_HEAD_BYTES: usize = 64 * 1024;
/// Bytes of the end of an upload kept for sniffing (a ZIP's central directory lives there).
pub const SNIFF_TAIL_BYTES: usize = 64 * 1024;

/// A file format a job reads or writes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub enum Format {
    Png,
    Jpeg,
    Webp,
    Gif,
    Bmp,
    Tiff,
    Markdown,
    Text,
    Csv,
    Json,
    Html,
    Pdf,
    Xlsx,
    Ods,
    Docx,
    Odt,
    Pptx,
    Odp,
    /// Anything else (kept so that the answer can say what is supported).
    Binary,
}

impl Format {
    /// Every format, in the order the catalogue lists them.
    pub const ALL: [Format; 19] = [
        Format::Png,
        Format::Jpeg,
        Format::Webp,
        Format::Gif,
        Format::Bmp,
        Format::Tiff,
        Format::Markdown,
        Format::Text,
        Format::Csv,
        Format::Json,
        Format::Html,
        Format::Pdf,
        Format::Xlsx,
        Format::Ods,
        Format::Docx,
        Format::Odt,
        Format::Pptx,
        Format::Odp,
        Format::Binary,
    ];

    /// The name used in the API (`target=jpeg`).
    pub fn name(self) -> &'static str {
        match self {
            Format::Png => "png",
            Format::Jpeg => "jpeg",
            Format::Webp => "webp",
            Format::Gif => "gif",
            Format::Bmp => "bmp",
            Format::Tiff => "tiff",
            Format::Markdown => "markdown",
            Format::Text => "text",
            Format::Csv => "csv",
            Format::Json => "json",
            Format::Html => "html",
            Format::Pdf => "pdf",
            Format::Xlsx => "xlsx",
            Format::Ods => "ods",
            Format::Docx => "docx",
            Format::Odt => "odt",
            Format::Pptx => "pptx",
            Format::Odp => "odp",
            Format::Binary => "binary",
        }
    }

    /// Parses an API name; a few common aliases (`jpg`, `md`, `txt`, `tif`) are accepted.
    pub fn from_name(name: &str) -> Option<Format> {
        let name = name.trim().to_ascii_lowercase();
        let alias = match name.as_str() {
            "jpg" => "jpeg",
            "md" => "markdown",
            "txt" => "text",
            "tif" => "tiff",
            other => other,
        };
        Format::ALL
            .into_iter()
            .find(|format| format.name() == alias && *format != Format::Binary)
    }

    /// The file extension of an output in this format.
    pub fn extension(self) -> &'static str {
        match self {
            Format::Jpeg => "jpg",
            Format::Markdown => "md",
            Format::Text => "txt",
            Format::Binary => "bin",
            other => other.name(),
        }
    }

    pub fn content_type(self) -> &'static str {
        match self {
            Format::Png => "image/png",
            Format::Jpeg => "image/jpeg",
            Format::Webp => "image/webp",
            Format::Gif => "image/gif",
            Format::Bmp => "image/bmp",
            Format::Tiff => "image/tiff",
            Format::Markdown => "text/markdown; charset=utf-8",
            Format::Text => "text/plain; charset=utf-8",
            Format::Csv => "text/csv; charset=utf-8",
            Format::Json => "application/json",
            Format::Html => "text/html; charset=utf-8",
            Format::Pdf => "application/pdf",
            Format::Xlsx => "application/vnd.openxmlformats-officedocument.spreadsheetml.sheet",
            Format::Ods => "application/vnd.oasis.opendocument.spreadsheet",
            Format::Docx => {
                "application/vnd.openxmlformats-officedocument.wordprocessingml.document"
            }
            Format::Odt => "application/vnd.oasis.opendocument.text",
            Format::Pptx => {
                "application/vnd.openxmlformats-officedocument.presentationml.presentation"
            }
            Format::Odp => "application/vnd.oasis.opendocument.presentation",
            Format::Binary => "application/octet-stream",
        }
    }

    pub fn is_image(self) -> bool {
        matches!(
            self,
            Format::Png | Format::Jpeg | Format::Webp | Format::Gif | Format::Bmp | Format::Tiff
        )
    }

    /// The `image` crate's name for an image format.
    pub fn image_format(self) -> Option<image::ImageFormat> {
        Some(match self {
            Format::Png => image::ImageFormat::Png,
            Format::Jpeg => image::ImageFormat::Jpeg,
            Format::Webp => image::ImageFormat::WebP,
            Format::Gif => image::ImageFormat::Gif,
            Format::Bmp => image::ImageFormat::Bmp,
            Format::Tiff => image::ImageFormat::Tiff,
            _ => return None,
        })
    }
}

impl std::fmt::Display for Format {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter.write_str(self.name())
    }
}

/// What an upload is, from its first bytes (`head`), its last bytes (`tail`, may overlap the
/// head for small files), its total length and the name the client gave it.
pub fn sniff(head: &[u8], tail: &[u8], total_bytes: u64, file_name: &str) -> Format {
    if head.starts_with(b"%PDF-") {
        return Format::Pdf;
    }
    if head.starts_with(b"PK\x03\x04") {
        return sniff_zip(head, tail, total_bytes);
    }
    if let Ok(format) = image::guess_format(head)
        && let Some(found) = Format::ALL
            .into_iter()
            .find(|candidate| candidate.image_format() == Some(format))
    {
        return found;
    }
    if is_text(head, total_bytes) {
        return sniff_text(head, file_name);
    }
    Format::Binary
}

/// UTF-8 (a multi-byte character cut by the end of the head is fine) without NUL bytes.
fn is_text(head: &[u8], total_bytes: u64) -> bool {
    if head.contains(&0) {
        return false;
    }
    match std::str::from_utf8(head) {
        Ok(_) => true,
        // `error_len() == None`: the input ended inside a character, which only the cut did.
        Err(error) => error.error_len().is_none() && (head.len() as u64) < total_bytes,
    }
}

fn sniff_text(head: &[u8], file_name: &str) -> Format {
    let extension = file_name
        .rsplit_once('.')
        .map(|(_, extension)| extension.to_ascii_lowercase())
        .unwrap_or_default();
    let first = head.iter().copied().find(|byte| {
        !byte.is_ascii_whitespace() && *byte != 0xef && *byte != 0xbb && *byte != 0xbf
    });
    let looks_like_json = matches!(first, Some(b'{' | b'['));
    match extension.as_str() {
        "csv" => Format::Csv,
        "md" | "markdown" => Format::Markdown,
        "json" if looks_like_json => Format::Json,
        "html" | "htm" => Format::Html,
        _ if looks_like_json => Format::Json,
        _ => Format::Text,
    }
}

/// Tells ZIP-based documents apart: ODF keeps its media type in a first, stored entry named
/// `mimetype`; OOXML has `[Content_Types].xml` and a part directory (`xl/`, `word/`, `ppt/`),
/// found in the central directory at the end of the file.
fn sniff_zip(head: &[u8], tail: &[u8], total_bytes: u64) -> Format {
    if let Some(media_type) = odf_media_type(head) {
        return match media_type {
            "application/vnd.oasis.opendocument.spreadsheet" => Format::Ods,
            "application/vnd.oasis.opendocument.text" => Format::Odt,
            "application/vnd.oasis.opendocument.presentation" => Format::Odp,
            _ => Format::Binary,
        };
    }
    let names = zip_entry_names(tail, total_bytes).unwrap_or_else(|| local_entry_names(head));
    let has = |prefix: &str| names.iter().any(|name| name.starts_with(prefix));
    if !has("[Content_Types].xml") {
        return Format::Binary;
    }
    if has("xl/") {
        Format::Xlsx
    } else if has("word/") {
        Format::Docx
    } else if has("ppt/") {
        Format::Pptx
    } else {
        Format::Binary
    }
}

fn read_u16(bytes: &[u8], at: usize) -> Option<usize> {
    let slice = bytes.get(at..at + 2)?;
    Some(usize::from(u16::from_le_bytes([slice[0], slice[1]])))
}

fn read_u32(bytes: &[u8], at: usize) -> Option<u64> {
    let slice = bytes.get(at..at + 4)?;
    Some(u64::from(u32::from_le_bytes([
        slice[0], slice[1], slice[2], slice[3],
    ])))
}

/// The content of an ODF `mimetype` entry, if it is the first entry and stored uncompressed.
fn odf_media_type(head: &[u8]) -> Option<&str> {
    let method = read_u16(head, 8)?;
    let size = usize::try_from(read_u32(head, 18)?).ok()?;
    let name_length = read_u16(head, 26)?;
    let extra_length = read_u16(head, 28)?;
    if method != 0 || head.get(30..30 + name_length)? != b"mimetype" || size > 128 {
        return None;
    }
    let start = 30 + name_length + extra_length;
    std::str::from_utf8(head.get(start..start + size)?).ok()
}

/// Entry names from the central directory, when the tail holds all of it.
fn zip_entry_names(tail: &[u8], total_bytes: u64) -> Option<Vec<String>> {
    const END_RECORD: &[u8] = b"PK\x05\x06";
    const ENTRY: &[u8] = b"PK\x01\x02";
    let end = tail.windows(4).rposition(|window| window == END_RECORD)?;
    let directory_bytes = read_u32(tail, end + 12)?;
    let directory_offset = read_u32(tail, end + 16)?;
    let tail_offset = total_bytes.checked_sub(tail.len() as u64)?;
    let start = usize::try_from(directory_offset.checked_sub(tail_offset)?).ok()?;
    let directory = tail.get(start..start + usize::try_from(directory_bytes).ok()?)?;
    let mut names = Vec::new();
    let mut at = 0;
    while directory.get(at..at + 4) == Some(ENTRY) {
        let name_length = read_u16(directory, at + 28)?;
        let extra_length = read_u16(directory, at + 30)?;
        let comment_length = read_u16(directory, at + 32)?;
        let name = directory.get(at + 46..at + 46 + name_length)?;
        names.push(String::from_utf8_lossy(name).into_owned());
        at += 46 + name_length + extra_length + comment_length;
    }
    Some(names)
}

/// Entry names of the local headers found in the head (a fallback for a huge directory).
fn local_entry_names(head: &[u8]) -> Vec<String> {
    let mut names = Vec::new();
    for (index, window) in head.windows(4).enumerate() {
        if window == b"PK\x03\x04"
            && let Some(name_length) = read_u16(head, index + 26)
            && let Some(name) = head.get(index + 30..index + 30 + name_length)
        {
            names.push(String::from_utf8_lossy(name).into_owned());
        }
    }
    names
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip_and_aliases_work() {
        for format in Format::ALL {
            if format != Format::Binary {
                assert_eq!(Format::from_name(format.name()), Some(format));
            }
        }
        assert_eq!(Format::from_name("JPG"), Some(Format::Jpeg));
        assert_eq!(Format::from_name("binary"), None);
        assert_eq!(Format::from_name("exe"), None);
    }

    #[test]
    fn text_is_told_apart_by_extension_and_json_by_content() {
        assert_eq!(sniff(b"a,b\n1,2\n", b"", 8, "x.csv"), Format::Csv);
        assert_eq!(sniff(b"# Title\n", b"", 8, "notes.md"), Format::Markdown);
        assert_eq!(sniff(b" [1,2]", b"", 6, "data"), Format::Json);
        assert_eq!(sniff(b"hello", b"", 5, "data.json"), Format::Text);
        assert_eq!(sniff(b"hello", b"", 5, "photo.png"), Format::Text);
        assert_eq!(sniff(b"\x00\x01\x02", b"", 3, "x.csv"), Format::Binary);
    }

    #[test]
    fn magic_bytes_win_over_the_name() {
        assert_eq!(
            sniff(b"\x89PNG\r\n\x1a\n....", b"", 12, "table.csv"),
            Format::Png
        );
        assert_eq!(sniff(b"%PDF-1.7\n", b"", 9, "a.txt"), Format::Pdf);
        assert_eq!(sniff(b"GIF89a....", b"", 10, "x"), Format::Gif);
    }

    #[test]
    fn a_cut_multibyte_character_at_the_end_of_the_head_is_still_text() {
        let text = "é".repeat(10);
        let head = &text.as_bytes()[..5];
        assert_eq!(sniff(head, b"", 20, "a.md"), Format::Markdown);
        assert_eq!(sniff(head, b"", 5, "a.md"), Format::Binary);
    }
}
