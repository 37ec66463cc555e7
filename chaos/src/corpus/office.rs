//! Hostile spreadsheets and office documents: cells spanning the whole sheet, shared-string
//! and cell bombs, zip bombs in OOXML and ODF parts, garbage and truncated documents.

use super::HostileInput;
use super::encoding::{ZipWriter, noise};

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

pub(super) fn sheets() -> Vec<HostileInput> {
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
pub(super) fn office_documents() -> Vec<HostileInput> {
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
