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

use std::io::Write;
use std::path::{Path, PathBuf};

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

// ---------------------------------------------------------------------------------------------
// Images

fn image_bombs() -> Vec<HostileInput> {
    vec![
        HostileInput::new(
            "png-huge-dimensions.png",
            "png",
            &["jpeg"],
            "a 100-byte PNG declaring 1000000×1000000 RGBA pixels (4 TB decoded)",
            png(1_000_000, 1_000_000, 6, &zlib_zeros(1024)),
        ),
        HostileInput::new(
            "png-20000-square-resize.png",
            "png",
            &["jpeg"],
            "the issue's 389 KB PNG: 20000×20000 grey pixels whose zlib stream inflates to 400 MB, resized to 6000 wide (2 GB of float buffers)",
            png(20_000, 20_000, 0, &zlib_zeros(20_000 * 20_001)),
        )
        .with_option("width", 6000),
        HostileInput::new(
            "png-resize-buffers.png",
            "png",
            &["png"],
            "a 10000×10000 grey PNG that decodes within limits, resized to 4000 wide: the resize's float buffers need 900 MB",
            png(10_000, 10_000, 0, &zlib_zeros(10_000 * 10_001)),
        )
        .with_option("width", 4000),
        HostileInput::new(
            "png-zlib-bomb.png",
            "png",
            &["jpeg"],
            "a 64×64 PNG whose IDAT zlib stream inflates to 1 GiB and never ends properly",
            png_unterminated(64, 64, 0, &zlib_zeros(1024 * 1024 * 1024)),
        ),
        HostileInput::new(
            "gif-huge-dimensions.gif",
            "gif",
            &["png"],
            "a GIF whose screen and frame declare 65535×65535 pixels",
            gif_huge(),
        ),
        HostileInput::new(
            "webp-huge-dimensions.webp",
            "webp",
            &["png"],
            "a lossless WebP header declaring 16384×16384 pixels (1 GiB RGBA) with no image data",
            webp_huge(),
        ),
        HostileInput::new(
            "tiff-huge-dimensions.tiff",
            "tiff",
            &["png"],
            "a TIFF whose IFD declares 1000000×1000000 pixels in one strip of one byte",
            tiff_huge(),
        ),
        HostileInput::new(
            "bmp-huge-dimensions.bmp",
            "bmp",
            &["png"],
            "a BMP header declaring 1000000×1000000 24-bit pixels and no pixel data",
            bmp_huge(),
        ),
        HostileInput::new(
            "jpeg-huge-dimensions.jpg",
            "jpeg",
            &["png"],
            "a JPEG frame header declaring 65500×65500 pixels and nothing else",
            jpeg_huge(),
        ),
    ]
}

/// Each image format: a real small picture cut in half, and its magic bytes followed by noise.
fn broken_images() -> Vec<HostileInput> {
    let formats: [(&'static str, &str, image::ImageFormat, &[u8]); 6] = [
        ("png", "png", image::ImageFormat::Png, b"\x89PNG\r\n\x1a\n"),
        ("jpeg", "jpg", image::ImageFormat::Jpeg, b"\xff\xd8\xff\xe0"),
        ("gif", "gif", image::ImageFormat::Gif, b"GIF89a"),
        (
            "webp",
            "webp",
            image::ImageFormat::WebP,
            b"RIFF\x00\x10\x00\x00WEBPVP8L",
        ),
        ("bmp", "bmp", image::ImageFormat::Bmp, b"BM"),
        ("tiff", "tiff", image::ImageFormat::Tiff, b"II*\x00"),
    ];
    let mut inputs = Vec::new();
    for (format, extension, encoding, magic) in formats {
        let target = if format == "png" { "jpeg" } else { "png" };
        let mut truncated = small_picture(encoding);
        truncated.truncate(truncated.len() / 2);
        inputs.push(HostileInput::new(
            &format!("{format}-truncated.{extension}"),
            format,
            &[target],
            "a valid small picture cut in half",
            truncated,
        ));
        let mut garbage = magic.to_vec();
        garbage.extend(noise(4096, magic.len() as u64));
        inputs.push(HostileInput::new(
            &format!("{format}-garbage.{extension}"),
            format,
            &[target],
            "the format's magic bytes followed by 4 KiB of noise",
            garbage,
        ));
    }
    inputs
}

fn small_picture(format: image::ImageFormat) -> Vec<u8> {
    let picture = image::RgbImage::from_fn(64, 48, |x, y| {
        image::Rgb([(x * 4) as u8, (y * 5) as u8, ((x + y) % 256) as u8])
    });
    let mut bytes = Vec::new();
    image::DynamicImage::ImageRgb8(picture)
        .write_to(&mut std::io::Cursor::new(&mut bytes), format)
        .expect("encoding a small picture in memory cannot fail");
    bytes
}

fn png_chunk(out: &mut Vec<u8>, kind: &[u8; 4], data: &[u8]) {
    out.extend_from_slice(&(data.len() as u32).to_be_bytes());
    out.extend_from_slice(kind);
    out.extend_from_slice(data);
    let mut crc = Crc32::new();
    crc.update(kind);
    crc.update(data);
    out.extend_from_slice(&crc.finish().to_be_bytes());
}

fn png_header(width: u32, height: u32, color_type: u8) -> Vec<u8> {
    let mut out = b"\x89PNG\r\n\x1a\n".to_vec();
    let mut header = Vec::new();
    header.extend_from_slice(&width.to_be_bytes());
    header.extend_from_slice(&height.to_be_bytes());
    header.extend_from_slice(&[8, color_type, 0, 0, 0]);
    png_chunk(&mut out, b"IHDR", &header);
    out
}

/// A PNG with one IDAT chunk holding `zlib`.
fn png(width: u32, height: u32, color_type: u8, zlib: &[u8]) -> Vec<u8> {
    let mut out = png_header(width, height, color_type);
    png_chunk(&mut out, b"IDAT", zlib);
    png_chunk(&mut out, b"IEND", &[]);
    out
}

/// A PNG whose IDAT is `zlib` cut before its end, with no IEND.
fn png_unterminated(width: u32, height: u32, color_type: u8, zlib: &[u8]) -> Vec<u8> {
    let mut out = png_header(width, height, color_type);
    png_chunk(&mut out, b"IDAT", &zlib[..zlib.len().saturating_sub(6)]);
    out
}

fn gif_huge() -> Vec<u8> {
    let mut out = b"GIF89a".to_vec();
    out.extend_from_slice(&[0xff, 0xff, 0xff, 0xff, 0, 0, 0]);
    out.push(0x2c);
    out.extend_from_slice(&[0, 0, 0, 0, 0xff, 0xff, 0xff, 0xff, 0]);
    // LZW minimum code size 2, one sub-block (clear, end), then the trailer.
    out.extend_from_slice(&[2, 2, 0x4c, 0x01, 0, 0x3b]);
    out
}

fn webp_huge() -> Vec<u8> {
    let side = 16_384u32;
    let bits = (side - 1) | ((side - 1) << 14);
    let mut chunk = vec![0x2f];
    chunk.extend_from_slice(&bits.to_le_bytes());
    chunk.extend_from_slice(&[0; 3]);
    let mut out = b"RIFF".to_vec();
    out.extend_from_slice(&(4 + 8 + chunk.len() as u32).to_le_bytes());
    out.extend_from_slice(b"WEBPVP8L");
    out.extend_from_slice(&(chunk.len() as u32).to_le_bytes());
    out.extend_from_slice(&chunk);
    out
}

fn tiff_huge() -> Vec<u8> {
    // Tag, type (3 short, 4 long), value.
    let entries: [(u16, u16, u32); 9] = [
        (256, 4, 1_000_000),
        (257, 4, 1_000_000),
        (258, 3, 8),
        (259, 3, 1),
        (262, 3, 1),
        (273, 4, 0),
        (277, 3, 1),
        (278, 4, 1_000_000),
        (279, 4, 1),
    ];
    let mut out = b"II*\x00".to_vec();
    out.extend_from_slice(&8u32.to_le_bytes());
    out.extend_from_slice(&(entries.len() as u16).to_le_bytes());
    for (tag, kind, value) in entries {
        out.extend_from_slice(&tag.to_le_bytes());
        out.extend_from_slice(&kind.to_le_bytes());
        out.extend_from_slice(&1u32.to_le_bytes());
        out.extend_from_slice(&value.to_le_bytes());
    }
    out.extend_from_slice(&0u32.to_le_bytes());
    out.push(0);
    out
}

fn bmp_huge() -> Vec<u8> {
    let mut out = b"BM".to_vec();
    out.extend_from_slice(&70u32.to_le_bytes());
    out.extend_from_slice(&0u32.to_le_bytes());
    out.extend_from_slice(&54u32.to_le_bytes());
    out.extend_from_slice(&40u32.to_le_bytes());
    out.extend_from_slice(&1_000_000i32.to_le_bytes());
    out.extend_from_slice(&1_000_000i32.to_le_bytes());
    out.extend_from_slice(&1u16.to_le_bytes());
    out.extend_from_slice(&24u16.to_le_bytes());
    out.extend_from_slice(&[0; 24]);
    out.extend_from_slice(&[0; 16]);
    out
}

fn jpeg_huge() -> Vec<u8> {
    let mut out = vec![0xff, 0xd8];
    out.extend_from_slice(&[0xff, 0xc0, 0x00, 0x11, 0x08]);
    out.extend_from_slice(&65_500u16.to_be_bytes());
    out.extend_from_slice(&65_500u16.to_be_bytes());
    out.extend_from_slice(&[3, 1, 0x22, 0, 2, 0x11, 1, 3, 0x11, 1]);
    out.extend_from_slice(&[0xff, 0xd9]);
    out
}

// ---------------------------------------------------------------------------------------------
// Spreadsheets and office documents

const CONTENT_TYPES_XLSX: &str = r#"<?xml version="1.0" encoding="UTF-8"?><Types xmlns="http://schemas.openxmlformats.org/package/2006/content-types"><Default Extension="rels" ContentType="application/vnd.openxmlformats-package.relationships+xml"/><Default Extension="xml" ContentType="application/xml"/><Override PartName="/xl/workbook.xml" ContentType="application/vnd.openxmlformats-officedocument.spreadsheetml.sheet.main+xml"/><Override PartName="/xl/worksheets/sheet1.xml" ContentType="application/vnd.openxmlformats-officedocument.spreadsheetml.worksheet+xml"/><Override PartName="/xl/sharedStrings.xml" ContentType="application/vnd.openxmlformats-officedocument.spreadsheetml.sharedStrings+xml"/></Types>"#;
const ROOT_RELS: &str = r#"<?xml version="1.0" encoding="UTF-8"?><Relationships xmlns="http://schemas.openxmlformats.org/package/2006/relationships"><Relationship Id="rId1" Type="http://schemas.openxmlformats.org/officeDocument/2006/relationships/officeDocument" Target="xl/workbook.xml"/></Relationships>"#;
const WORKBOOK: &str = r#"<?xml version="1.0" encoding="UTF-8"?><workbook xmlns="http://schemas.openxmlformats.org/spreadsheetml/2006/main" xmlns:r="http://schemas.openxmlformats.org/officeDocument/2006/relationships"><sheets><sheet name="Sheet1" sheetId="1" r:id="rId1"/></sheets></workbook>"#;
const WORKBOOK_RELS: &str = r#"<?xml version="1.0" encoding="UTF-8"?><Relationships xmlns="http://schemas.openxmlformats.org/package/2006/relationships"><Relationship Id="rId1" Type="http://schemas.openxmlformats.org/officeDocument/2006/relationships/worksheet" Target="worksheets/sheet1.xml"/><Relationship Id="rId2" Type="http://schemas.openxmlformats.org/officeDocument/2006/relationships/sharedStrings" Target="sharedStrings.xml"/></Relationships>"#;
const SHEET_HEAD: &str = r#"<?xml version="1.0" encoding="UTF-8"?><worksheet xmlns="http://schemas.openxmlformats.org/spreadsheetml/2006/main">"#;

/// An XLSX with `sheet` as its first sheet and `shared_strings` (compressed entries).
fn xlsx(sheet: &[u8], shared_strings: &[u8]) -> Vec<u8> {
    let mut zip = ZipWriter::default();
    zip.add("[Content_Types].xml", CONTENT_TYPES_XLSX.as_bytes());
    zip.add("_rels/.rels", ROOT_RELS.as_bytes());
    zip.add("xl/workbook.xml", WORKBOOK.as_bytes());
    zip.add("xl/_rels/workbook.xml.rels", WORKBOOK_RELS.as_bytes());
    zip.add("xl/worksheets/sheet1.xml", sheet);
    zip.add("xl/sharedStrings.xml", shared_strings);
    zip.finish()
}

const EMPTY_SHARED_STRINGS: &str = r#"<?xml version="1.0" encoding="UTF-8"?><sst xmlns="http://schemas.openxmlformats.org/spreadsheetml/2006/main" count="0" uniqueCount="0"></sst>"#;

fn xlsx_whole_sheet() -> Vec<u8> {
    let sheet = format!(
        r#"{SHEET_HEAD}<dimension ref="A1:XFD1048576"/><sheetData><row r="1"><c r="A1"><v>1</v></c></row><row r="1048576"><c r="XFD1048576"><v>2</v></c></row></sheetData></worksheet>"#
    );
    xlsx(sheet.as_bytes(), EMPTY_SHARED_STRINGS.as_bytes())
}

/// A shared string of `bytes` letters: a few hundred KB compressed.
fn xlsx_shared_string_bomb(bytes: usize) -> Vec<u8> {
    let head = r#"<?xml version="1.0" encoding="UTF-8"?><sst xmlns="http://schemas.openxmlformats.org/spreadsheetml/2006/main" count="1" uniqueCount="1"><si><t>"#;
    let tail = "</t></si></sst>";
    let sheet = format!(
        r#"{SHEET_HEAD}<sheetData><row r="1"><c r="A1" t="s"><v>0</v></c></row></sheetData></worksheet>"#
    );
    let mut zip = ZipWriter::default();
    zip.add("[Content_Types].xml", CONTENT_TYPES_XLSX.as_bytes());
    zip.add("_rels/.rels", ROOT_RELS.as_bytes());
    zip.add("xl/workbook.xml", WORKBOOK.as_bytes());
    zip.add("xl/_rels/workbook.xml.rels", WORKBOOK_RELS.as_bytes());
    zip.add("xl/worksheets/sheet1.xml", sheet.as_bytes());
    zip.add_repeated(
        "xl/sharedStrings.xml",
        head.as_bytes(),
        b'A',
        bytes,
        tail.as_bytes(),
    );
    zip.finish()
}

const ODS_MANIFEST: &str = r#"<?xml version="1.0" encoding="UTF-8"?><manifest:manifest xmlns:manifest="urn:oasis:names:tc:opendocument:xmlns:manifest:1.0" manifest:version="1.2"><manifest:file-entry manifest:full-path="/" manifest:media-type="application/vnd.oasis.opendocument.spreadsheet"/><manifest:file-entry manifest:full-path="content.xml" manifest:media-type="text/xml"/></manifest:manifest>"#;
const ODS_HEAD: &str = r#"<?xml version="1.0" encoding="UTF-8"?><office:document-content xmlns:office="urn:oasis:names:tc:opendocument:xmlns:office:1.0" xmlns:table="urn:oasis:names:tc:opendocument:xmlns:table:1.0" xmlns:text="urn:oasis:names:tc:opendocument:xmlns:text:1.0" office:version="1.2"><office:body><office:spreadsheet><table:table table:name="Sheet1">"#;
const ODS_TAIL: &str =
    "</table:table></office:spreadsheet></office:body></office:document-content>";

fn ods(media_type: &str, content: impl FnOnce(&mut ZipWriter)) -> Vec<u8> {
    let mut zip = ZipWriter::default();
    zip.add_stored("mimetype", media_type.as_bytes());
    zip.add("META-INF/manifest.xml", ODS_MANIFEST.as_bytes());
    content(&mut zip);
    zip.finish()
}

fn ods_whole_sheet() -> Vec<u8> {
    let content = format!(
        r#"{ODS_HEAD}<table:table-row><table:table-cell office:value-type="float" office:value="1"><text:p>1</text:p></table:table-cell></table:table-row><table:table-row table:number-rows-repeated="1048574"><table:table-cell table:number-columns-repeated="16384"/></table:table-row><table:table-row><table:table-cell table:number-columns-repeated="16383"/><table:table-cell office:value-type="float" office:value="2"><text:p>2</text:p></table:table-cell></table:table-row>{ODS_TAIL}"#
    );
    ods("application/vnd.oasis.opendocument.spreadsheet", |zip| {
        zip.add("content.xml", content.as_bytes())
    })
}

fn ods_cell_bomb(bytes: usize) -> Vec<u8> {
    let head = format!(
        r#"{ODS_HEAD}<table:table-row><table:table-cell office:value-type="string"><text:p>"#
    );
    let tail = format!("</text:p></table:table-cell></table:table-row>{ODS_TAIL}");
    ods("application/vnd.oasis.opendocument.spreadsheet", |zip| {
        zip.add_repeated("content.xml", head.as_bytes(), b'A', bytes, tail.as_bytes())
    })
}

fn sheets() -> Vec<HostileInput> {
    let mut truncated_xlsx = xlsx_whole_sheet();
    truncated_xlsx.truncate(truncated_xlsx.len() * 2 / 3);
    let mut garbage_xlsx = xlsx(b"<not xml", EMPTY_SHARED_STRINGS.as_bytes());
    let damaged = garbage_xlsx.len() / 2;
    for (offset, byte) in noise(64, 7).into_iter().enumerate() {
        if let Some(slot) = garbage_xlsx.get_mut(damaged + offset) {
            *slot = byte;
        }
    }
    let mut truncated_ods = ods_whole_sheet();
    truncated_ods.truncate(truncated_ods.len() * 2 / 3);
    let garbage_ods = ods("application/vnd.oasis.opendocument.spreadsheet", |zip| {
        zip.add_stored("content.xml", &noise(2048, 11))
    });
    vec![
        HostileInput::new(
            "xlsx-whole-sheet-range.xlsx",
            "xlsx",
            &["csv"],
            "the issue's 1.5 KB XLSX: cells A1 and XFD1048576 make the range the whole sheet (calamine asks for 512 GiB)",
            xlsx_whole_sheet(),
        ),
        HostileInput::new(
            "xlsx-shared-string-bomb.xlsx",
            "xlsx",
            &["csv"],
            "a zip bomb: one shared string that inflates to 1 GiB",
            xlsx_shared_string_bomb(1024 * 1024 * 1024),
        ),
        HostileInput::new(
            "xlsx-truncated.xlsx",
            "xlsx",
            &["csv"],
            "an XLSX cut before its zip central directory",
            truncated_xlsx,
        ),
        HostileInput::new(
            "xlsx-garbage.xlsx",
            "xlsx",
            &["csv"],
            "an XLSX whose sheet is not XML and whose middle is overwritten with noise",
            garbage_xlsx,
        ),
        HostileInput::new(
            "ods-whole-sheet-range.ods",
            "ods",
            &["csv"],
            "an ODS whose repeated empty rows and columns span the whole sheet, with a value in its last cell",
            ods_whole_sheet(),
        ),
        HostileInput::new(
            "ods-cell-bomb.ods",
            "ods",
            &["csv"],
            "a zip bomb: one cell whose text inflates to 1 GiB",
            ods_cell_bomb(1024 * 1024 * 1024),
        ),
        HostileInput::new(
            "ods-truncated.ods",
            "ods",
            &["csv"],
            "an ODS cut before its zip central directory",
            truncated_ods,
        ),
        HostileInput::new(
            "ods-garbage.ods",
            "ods",
            &["csv"],
            "an ODS whose content.xml is noise",
            garbage_ods,
        ),
    ]
}

/// Office documents for LibreOffice (converted only where `soffice` is installed).
fn office_documents() -> Vec<HostileInput> {
    let docx_bomb = {
        let mut zip = ZipWriter::default();
        zip.add(
            "[Content_Types].xml",
            br#"<?xml version="1.0" encoding="UTF-8"?><Types xmlns="http://schemas.openxmlformats.org/package/2006/content-types"><Default Extension="xml" ContentType="application/xml"/><Override PartName="/word/document.xml" ContentType="application/vnd.openxmlformats-officedocument.wordprocessingml.document.main+xml"/></Types>"#,
        );
        zip.add_repeated(
            "word/document.xml",
            br#"<?xml version="1.0" encoding="UTF-8"?><w:document xmlns:w="http://schemas.openxmlformats.org/wordprocessingml/2006/main"><w:body><w:p><w:r><w:t>"#,
            b'A',
            1024 * 1024 * 1024,
            b"</w:t></w:r></w:p></w:body></w:document>",
        );
        zip.finish()
    };
    let odt_garbage = ods("application/vnd.oasis.opendocument.text", |zip| {
        zip.add_stored("content.xml", &noise(2048, 13))
    });
    let mut pptx_truncated = {
        let mut zip = ZipWriter::default();
        zip.add(
            "[Content_Types].xml",
            br#"<?xml version="1.0" encoding="UTF-8"?><Types xmlns="http://schemas.openxmlformats.org/package/2006/content-types"></Types>"#,
        );
        zip.add("ppt/presentation.xml", &noise(4096, 17));
        zip.finish()
    };
    pptx_truncated.truncate(pptx_truncated.len() / 2);
    vec![
        HostileInput::new(
            "docx-zip-bomb.docx",
            "docx",
            &["pdf"],
            "a zip bomb: a document part that inflates to 1 GiB of one word",
            docx_bomb,
        ),
        HostileInput::new(
            "odt-garbage.odt",
            "odt",
            &["pdf"],
            "an ODT whose content.xml is noise",
            odt_garbage,
        ),
        HostileInput::new(
            "pptx-truncated.pptx",
            "pptx",
            &["pdf"],
            "a PPTX of noise cut in half",
            pptx_truncated,
        ),
    ]
}

// ---------------------------------------------------------------------------------------------
// Text

/// Valid text around invalid UTF-8, placed past the head and before the tail that upload
/// sniffing reads (64 KiB each), so the upload is accepted as text.
fn invalid_utf8_inside(line: &str) -> Vec<u8> {
    let mut text = line.repeat(100 * 1024 / line.len() + 1).into_bytes();
    text.extend_from_slice(b"\xff\xfe\xc3\x28 broken \xe2\x82");
    text.extend(line.repeat(100 * 1024 / line.len() + 1).into_bytes());
    text
}

fn texts() -> Vec<HostileInput> {
    const NESTING: usize = 100_000;
    let mut million_columns = Vec::with_capacity(4 * 1024 * 1024);
    for column in 0..1_000_000 {
        if column > 0 {
            million_columns.push(b',');
        }
        million_columns.push(b'a' + (column % 26) as u8);
    }
    million_columns.extend_from_slice(b"\n1,2,3\n");
    let mut quotes = ">".repeat(NESTING).into_bytes();
    quotes.extend_from_slice(b" deep\n");
    let mut lists = Vec::new();
    for depth in 0..1_000 {
        lists.extend(" ".repeat(depth * 2).into_bytes());
        lists.extend_from_slice(b"- item\n");
    }
    let mut brackets = "![".repeat(NESTING).into_bytes();
    brackets.extend_from_slice(b"x");
    brackets.extend("](y)".repeat(NESTING).into_bytes());
    brackets.push(b'\n');
    let mut arrays = "[".repeat(NESTING).into_bytes();
    arrays.extend("]".repeat(NESTING).into_bytes());
    let mut objects = Vec::new();
    for _ in 0..NESTING {
        objects.extend_from_slice(br#"{"a":"#);
    }
    objects.extend_from_slice(b"1");
    objects.extend("}".repeat(NESTING).into_bytes());
    vec![
        HostileInput::new(
            "markdown-nested-quotes.md",
            "markdown",
            &["html", "pdf"],
            "100000 nested block quotes (`>`): recursion and output size in a Markdown renderer",
            quotes,
        ),
        HostileInput::new(
            "markdown-nested-lists.md",
            "markdown",
            &["html", "pdf"],
            "1000 lists each nested in the one before (1 MB of indentation)",
            lists,
        ),
        HostileInput::new(
            "markdown-nested-brackets.md",
            "markdown",
            &["html", "pdf"],
            "100000 `![` then 100000 `](y)`: bracket matching and 100000 images nested in alt text",
            brackets,
        ),
        HostileInput::new(
            "markdown-invalid-utf8.md",
            "markdown",
            &["html", "pdf"],
            "invalid UTF-8 in the middle of a long document, past what sniffing reads",
            invalid_utf8_inside("Some *markdown* text.\n"),
        ),
        HostileInput::new(
            "json-nested-arrays.json",
            "json",
            &["csv"],
            "100000 nested arrays: a recursive parser's stack",
            arrays,
        ),
        HostileInput::new(
            "json-nested-objects.json",
            "json",
            &["csv"],
            "100000 nested objects",
            objects,
        ),
        HostileInput::new(
            "json-truncated.json",
            "json",
            &["csv"],
            "an array of objects cut in the middle of a string",
            br#"[{"name": "a", "value": 1}, {"name": "b", "val"#.to_vec(),
        ),
        HostileInput::new(
            "csv-million-columns.csv",
            "csv",
            &["json", "xlsx"],
            "a header row of 1000000 columns",
            million_columns,
        ),
        HostileInput::new(
            "csv-invalid-utf8.csv",
            "csv",
            &["json"],
            "invalid UTF-8 in a field far into the file",
            invalid_utf8_inside("alpha,beta,gamma\n"),
        ),
        HostileInput::new(
            "text-invalid-utf8.txt",
            "text",
            &["pdf"],
            "invalid UTF-8 in the middle of a long text",
            invalid_utf8_inside("A line of plain text.\n"),
        ),
    ]
}

// ---------------------------------------------------------------------------------------------
// Building blocks: deterministic noise, CRC-32, zlib and deflate of repeated bytes, zip files.

/// `length` bytes of deterministic noise (xorshift) from `seed`.
pub fn noise(length: usize, seed: u64) -> Vec<u8> {
    let mut state = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
    (0..length)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            (state >> 24) as u8
        })
        .collect()
}

/// CRC-32 (zip and PNG) through `flate2`'s implementation, which is fast enough for the
/// gigabyte-long entries of the zip bombs.
struct Crc32 {
    inner: flate2::Crc,
}

impl Crc32 {
    fn new() -> Self {
        Self {
            inner: flate2::Crc::new(),
        }
    }

    fn update(&mut self, bytes: &[u8]) {
        self.inner.update(bytes);
    }

    /// CRC-32 of `count` copies of `byte`, fed in blocks.
    fn update_repeated(&mut self, byte: u8, count: usize) {
        let block = [byte; 64 * 1024];
        let mut left = count;
        while left > 0 {
            let take = left.min(block.len());
            self.update(&block[..take]);
            left -= take;
        }
    }

    fn finish(&self) -> u32 {
        self.inner.sum()
    }
}

/// A raw deflate stream of `count` copies of `byte`, without its final block. Built from one
/// compressed megabyte repeated: each copy ends on a byte boundary (a sync flush) and only
/// refers back to bytes that are the same, so copies can be concatenated. Fast for gigabytes.
fn deflate_repeated(byte: u8, count: usize) -> Vec<u8> {
    const BLOCK_BYTES: usize = 1024 * 1024;
    fn compress(byte: u8, length: usize) -> Vec<u8> {
        let mut compressor = flate2::Compress::new(flate2::Compression::best(), false);
        let input = vec![byte; length];
        let mut output = Vec::with_capacity(length / 256 + 1024);
        compressor
            .compress_vec(&input, &mut output, flate2::FlushCompress::Sync)
            .expect("deflate in memory cannot fail");
        output
    }
    let whole = compress(byte, BLOCK_BYTES);
    let mut out = Vec::with_capacity(whole.len() * (count / BLOCK_BYTES + 1));
    for _ in 0..count / BLOCK_BYTES {
        out.extend_from_slice(&whole);
    }
    if !count.is_multiple_of(BLOCK_BYTES) {
        out.extend(compress(byte, count % BLOCK_BYTES));
    }
    out
}

/// The final, empty deflate block (fixed Huffman codes, end of block only).
const DEFLATE_END: [u8; 2] = [0x03, 0x00];

/// A zlib stream of `count` zero bytes.
fn zlib_zeros(count: usize) -> Vec<u8> {
    let mut out = vec![0x78, 0xda];
    out.extend(deflate_repeated(0, count));
    out.extend_from_slice(&DEFLATE_END);
    // Adler-32 of zeros: a stays 1, b adds 1 per byte.
    let b = (count % 65_521) as u32;
    out.extend_from_slice(&((b << 16) | 1).to_be_bytes());
    out
}

/// A minimal zip writer: deflated or stored entries, then the central directory.
#[derive(Default)]
struct ZipWriter {
    out: Vec<u8>,
    central: Vec<u8>,
    entries: u16,
}

impl ZipWriter {
    fn entry(&mut self, name: &str, method: u16, crc: u32, compressed: &[u8], size: u64) {
        let offset = self.out.len() as u32;
        let size = u32::try_from(size).unwrap_or(u32::MAX);
        let mut local = Vec::new();
        local.extend_from_slice(&0x0403_4b50u32.to_le_bytes());
        local.extend_from_slice(&20u16.to_le_bytes());
        local.extend_from_slice(&0u16.to_le_bytes());
        local.extend_from_slice(&method.to_le_bytes());
        local.extend_from_slice(&[0, 0, 0x21, 0]);
        local.extend_from_slice(&crc.to_le_bytes());
        local.extend_from_slice(&(compressed.len() as u32).to_le_bytes());
        local.extend_from_slice(&size.to_le_bytes());
        local.extend_from_slice(&(name.len() as u16).to_le_bytes());
        local.extend_from_slice(&0u16.to_le_bytes());
        local.extend_from_slice(name.as_bytes());
        self.out.extend_from_slice(&local);
        self.out.extend_from_slice(compressed);
        self.central
            .extend_from_slice(&0x0201_4b50u32.to_le_bytes());
        self.central.extend_from_slice(&20u16.to_le_bytes());
        self.central.extend_from_slice(&20u16.to_le_bytes());
        self.central.extend_from_slice(&0u16.to_le_bytes());
        self.central.extend_from_slice(&method.to_le_bytes());
        self.central.extend_from_slice(&[0, 0, 0x21, 0]);
        self.central.extend_from_slice(&crc.to_le_bytes());
        self.central
            .extend_from_slice(&(compressed.len() as u32).to_le_bytes());
        self.central.extend_from_slice(&size.to_le_bytes());
        self.central
            .extend_from_slice(&(name.len() as u16).to_le_bytes());
        self.central.extend_from_slice(&[0; 12]);
        self.central.extend_from_slice(&offset.to_le_bytes());
        self.central.extend_from_slice(name.as_bytes());
        self.entries += 1;
    }

    fn add(&mut self, name: &str, data: &[u8]) {
        let mut crc = Crc32::new();
        crc.update(data);
        let mut encoder =
            flate2::write::DeflateEncoder::new(Vec::new(), flate2::Compression::best());
        encoder
            .write_all(data)
            .expect("deflate in memory cannot fail");
        let compressed = encoder.finish().expect("deflate in memory cannot fail");
        self.entry(name, 8, crc.finish(), &compressed, data.len() as u64);
    }

    fn add_stored(&mut self, name: &str, data: &[u8]) {
        let mut crc = Crc32::new();
        crc.update(data);
        self.entry(name, 0, crc.finish(), data, data.len() as u64);
    }

    /// `head`, `count` copies of `byte`, `tail`: deflated without ever being held inflated.
    fn add_repeated(&mut self, name: &str, head: &[u8], byte: u8, count: usize, tail: &[u8]) {
        let mut crc = Crc32::new();
        crc.update(head);
        crc.update_repeated(byte, count);
        crc.update(tail);
        let mut compressed = stored_block(head);
        compressed.extend(deflate_repeated(byte, count));
        let mut encoder =
            flate2::write::DeflateEncoder::new(Vec::new(), flate2::Compression::best());
        encoder
            .write_all(tail)
            .expect("deflate in memory cannot fail");
        compressed.extend(encoder.finish().expect("deflate in memory cannot fail"));
        let size = (head.len() + count + tail.len()) as u64;
        self.entry(name, 8, crc.finish(), &compressed, size);
    }

    fn finish(mut self) -> Vec<u8> {
        let offset = self.out.len() as u32;
        let central = std::mem::take(&mut self.central);
        self.out.extend_from_slice(&central);
        self.out.extend_from_slice(&0x0605_4b50u32.to_le_bytes());
        self.out.extend_from_slice(&[0; 4]);
        self.out.extend_from_slice(&self.entries.to_le_bytes());
        self.out.extend_from_slice(&self.entries.to_le_bytes());
        self.out
            .extend_from_slice(&(central.len() as u32).to_le_bytes());
        self.out.extend_from_slice(&offset.to_le_bytes());
        self.out.extend_from_slice(&0u16.to_le_bytes());
        self.out
    }
}

/// A non-final stored deflate block holding `data` (at most 65535 bytes).
fn stored_block(data: &[u8]) -> Vec<u8> {
    let length = data.len() as u16;
    let mut block = vec![0x00];
    block.extend_from_slice(&length.to_le_bytes());
    block.extend_from_slice(&(!length).to_le_bytes());
    block.extend_from_slice(data);
    block
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;

    #[test]
    fn repeated_deflate_inflates_to_what_it_claims() {
        let zlib = zlib_zeros(3 * 1024 * 1024 + 17);
        let mut inflated = Vec::new();
        flate2::read::ZlibDecoder::new(zlib.as_slice())
            .read_to_end(&mut inflated)
            .expect("a valid zlib stream, checksum included");
        assert_eq!(inflated.len(), 3 * 1024 * 1024 + 17);
        assert!(inflated.iter().all(|byte| *byte == 0));
        assert!(zlib.len() < 8 * 1024, "{} bytes", zlib.len());
    }

    #[test]
    fn zip_entries_read_back_with_their_checksums() {
        let mut zip = ZipWriter::default();
        zip.add("a.xml", b"<a/>");
        zip.add_stored("mimetype", b"text/plain");
        zip.add_repeated("big.txt", b"<t>", b'A', 2 * 1024 * 1024 + 5, b"</t>");
        let bytes = zip.finish();
        // The crc and sizes are checked by inflating the last entry by hand.
        let entry_start = bytes
            .windows(7)
            .position(|window| window == b"big.txt")
            .expect("local header")
            + 7;
        let mut inflated = Vec::new();
        flate2::read::DeflateDecoder::new(&bytes[entry_start..])
            .read_to_end(&mut inflated)
            .expect("inflates");
        assert_eq!(inflated.len(), 3 + 2 * 1024 * 1024 + 5 + 4);
        let mut crc = Crc32::new();
        crc.update(&inflated);
        let mut repeated = Crc32::new();
        repeated.update(b"<t>");
        repeated.update_repeated(b'A', 2 * 1024 * 1024 + 5);
        repeated.update(b"</t>");
        assert_eq!(crc.finish(), repeated.finish());
        let mut bitwise = Crc32::new();
        bitwise.update(b"123456789");
        assert_eq!(bitwise.finish(), 0xcbf4_3926, "the CRC-32 check value");
    }

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
