//! Every listed conversion on a small real input made here (images drawn with `image`, CSV,
//! JSON and Markdown text, an XLSX written with `rust_xlsxwriter`, an ODS zipped by hand), with
//! the output parsed back and checked; corrupt inputs, limits and cancellation; and sniffing of
//! what the converters produce.

use std::io::Cursor;
use std::sync::Mutex;
use std::sync::atomic::AtomicBool;
use std::time::{Duration, Instant};

use actors::job::convert::{Conversion, ConvertError, Converted, Options, Target, convert};
use actors::job::format::{Format, sniff};
use calamine::{Data, Reader};
use image::{DynamicImage, GenericImageView, ImageFormat, Rgba, RgbaImage};

const IMAGES: [Format; 6] = [
    Format::Png,
    Format::Jpeg,
    Format::Webp,
    Format::Gif,
    Format::Bmp,
    Format::Tiff,
];

/// Runs one conversion with generous limits; returns the result and the progress reported.
fn run(
    input: &[u8],
    from: Format,
    to: Target,
    options: &Options,
) -> (Result<Converted, ConvertError>, Vec<u8>) {
    run_with(
        input,
        from,
        to,
        options,
        64 * 1024 * 1024,
        &AtomicBool::new(false),
    )
}

fn run_with(
    input: &[u8],
    from: Format,
    to: Target,
    options: &Options,
    output_bytes_max: u64,
    cancel: &AtomicBool,
) -> (Result<Converted, ConvertError>, Vec<u8>) {
    let steps = Mutex::new(Vec::new());
    let progress = |percent: u8, _step: &str| steps.lock().expect("progress lock").push(percent);
    let result = convert(&Conversion {
        input,
        from,
        to,
        options,
        output_bytes_max,
        deadline: Instant::now() + Duration::from_secs(60),
        progress: &progress,
        cancel,
        office: None,
    });
    (result, steps.into_inner().expect("progress lock"))
}

fn converted(input: &[u8], from: Format, to: Format) -> Vec<u8> {
    let (result, steps) = run(input, from, Target::Format(to), &Options::default());
    let output = result.unwrap_or_else(|error| panic!("{from} → {to}: {error}"));
    assert_eq!(output.format, to);
    assert!(
        !steps.is_empty() && steps.windows(2).all(|pair| pair[0] <= pair[1]),
        "{from} → {to}: progress {steps:?}"
    );
    output.bytes
}

/// A 64×48 picture: a red-green gradient with an opaque blue square.
fn picture() -> DynamicImage {
    let mut image = RgbaImage::new(64, 48);
    for (x, y, pixel) in image.enumerate_pixels_mut() {
        *pixel = Rgba([(x * 4) as u8, (y * 5) as u8, 40, 255]);
    }
    for x in 8..24 {
        for y in 8..24 {
            image.put_pixel(x, y, Rgba([0, 0, 255, 255]));
        }
    }
    DynamicImage::ImageRgba8(image)
}

fn encode(image: &DynamicImage, format: Format) -> Vec<u8> {
    let image = if format == Format::Jpeg {
        DynamicImage::ImageRgb8(image.to_rgb8())
    } else {
        image.clone()
    };
    let mut bytes = Vec::new();
    image
        .write_to(
            &mut Cursor::new(&mut bytes),
            format.image_format().expect("image format"),
        )
        .expect("encode");
    bytes
}

#[test]
fn every_image_format_converts_to_every_other() {
    let original = picture();
    for from in IMAGES {
        let input = encode(&original, from);
        assert_eq!(
            sniff(&input, &input, input.len() as u64, "picture.dat"),
            from,
            "sniffing {from}"
        );
        for to in IMAGES {
            let output = converted(&input, from, to);
            assert_eq!(
                image::guess_format(&output).ok(),
                to.image_format(),
                "{from} → {to} wrote another format"
            );
            let decoded = image::load_from_memory(&output)
                .unwrap_or_else(|error| panic!("{from} → {to} does not decode: {error}"));
            assert_eq!(decoded.dimensions(), (64, 48), "{from} → {to}");
            // The blue square survives every codec (lossy ones approximately).
            let Rgba([red, green, blue, _]) = decoded.get_pixel(16, 16);
            assert!(
                blue > 200 && red < 60 && green < 60,
                "{from} → {to}: pixel ({red},{green},{blue})"
            );
        }
    }
}

#[test]
fn lossless_conversions_keep_every_pixel() {
    let original = picture();
    let input = encode(&original, Format::Png);
    for to in [Format::Bmp, Format::Tiff, Format::Webp] {
        let decoded =
            image::load_from_memory(&converted(&input, Format::Png, to)).expect("decodes");
        assert_eq!(
            decoded.to_rgb8(),
            original.to_rgb8(),
            "png → {to} changed pixels"
        );
    }
}

#[test]
fn resize_keeps_the_aspect_ratio() {
    let input = encode(&picture(), Format::Png);
    let cases = [
        (Some(32), None, (32, 24)),
        (None, Some(12), (16, 12)),
        (Some(100), Some(24), (32, 24)),
    ];
    for (width, height, expected) in cases {
        let options = Options {
            width,
            height,
            ..Options::default()
        };
        let (result, steps) = run(&input, Format::Png, Target::Format(Format::Jpeg), &options);
        let output = result.expect("resized");
        let decoded =
            image::load_from_memory_with_format(&output.bytes, ImageFormat::Jpeg).expect("decodes");
        assert_eq!(
            decoded.dimensions(),
            expected,
            "width {width:?} height {height:?}"
        );
        assert!(
            steps.contains(&45),
            "resizing is a progress step: {steps:?}"
        );
    }
}

#[test]
fn markdown_becomes_html_with_raw_html_escaped() {
    let markdown = "# Report\n\nSome *emphasis* and `code`.\n\n- one\n- two\n\n| a | b |\n|---|---|\n| 1 | 2 |\n\n<script>alert(1)</script>\n";
    let html = String::from_utf8(converted(
        markdown.as_bytes(),
        Format::Markdown,
        Format::Html,
    ))
    .expect("utf-8");
    assert!(html.starts_with("<!DOCTYPE html>"), "{html}");
    assert!(html.contains("<title>Report</title>"), "{html}");
    assert!(html.contains("<h1>Report</h1>"), "{html}");
    assert!(
        html.contains("<em>emphasis</em>") && html.contains("<code>code</code>"),
        "{html}"
    );
    assert!(
        html.contains("<li>one</li>") && html.contains("<li>two</li>"),
        "{html}"
    );
    assert!(
        html.contains("<table>") && html.contains("<td>2</td>"),
        "{html}"
    );
    assert!(
        !html.contains("<script>"),
        "raw HTML must be escaped: {html}"
    );
    assert!(html.contains("&lt;script&gt;"), "{html}");
}

#[test]
fn csv_becomes_json_objects_and_back() {
    let csv_text = "name,qty,code\nWidget,3,007\n\"Gadget, large\",10,\"a\"\"b\"\n";
    let json = converted(csv_text.as_bytes(), Format::Csv, Format::Json);
    let rows: serde_json::Value = serde_json::from_slice(&json).expect("json");
    assert_eq!(
        rows,
        serde_json::json!([
            {"name": "Widget", "qty": "3", "code": "007"},
            {"name": "Gadget, large", "qty": "10", "code": "a\"b"}
        ])
    );
    let back = converted(&json, Format::Json, Format::Csv);
    let mut reader = csv::Reader::from_reader(back.as_slice());
    let headers: Vec<String> = reader
        .headers()
        .expect("headers")
        .iter()
        .map(str::to_string)
        .collect();
    assert_eq!(headers, ["name", "qty", "code"]);
    let records: Vec<Vec<String>> = reader
        .records()
        .map(|record| record.expect("row").iter().map(str::to_string).collect())
        .collect();
    assert_eq!(
        records,
        [["Widget", "3", "007"], ["Gadget, large", "10", "a\"b"]]
    );
}

#[test]
fn json_arrays_of_arrays_and_mixed_keys_become_csv() {
    let json = br#"[{"a": 1, "b": null}, {"b": "x", "c": [1, 2]}]"#;
    let csv_bytes = converted(json, Format::Json, Format::Csv);
    assert_eq!(
        String::from_utf8(csv_bytes).expect("utf-8"),
        "a,b,c\n1,,\n,x,\"[1,2]\"\n"
    );
    let rows = converted(br#"[["h1","h2"],[1,true]]"#, Format::Json, Format::Csv);
    assert_eq!(String::from_utf8(rows).expect("utf-8"), "h1,h2\n1,true\n");
}

fn first_sheet(xlsx: &[u8]) -> Vec<Vec<Data>> {
    let mut workbook = calamine::open_workbook_auto_from_rs(Cursor::new(xlsx)).expect("opens");
    let range = workbook
        .worksheet_range_at(0)
        .expect("a sheet")
        .expect("reads");
    range.rows().map(<[Data]>::to_vec).collect()
}

#[test]
fn csv_becomes_xlsx_with_numbers_as_numbers() {
    let xlsx = converted(
        b"item,price,code\napple,1.5,007\npear,2,x\n",
        Format::Csv,
        Format::Xlsx,
    );
    assert_eq!(
        sniff(&xlsx, &xlsx, xlsx.len() as u64, "out.bin"),
        Format::Xlsx
    );
    let rows = first_sheet(&xlsx);
    assert_eq!(rows.len(), 3);
    assert_eq!(
        rows[0],
        [
            Data::String("item".into()),
            Data::String("price".into()),
            Data::String("code".into())
        ]
    );
    assert_eq!(
        rows[1],
        [
            Data::String("apple".into()),
            Data::Float(1.5),
            Data::String("007".into())
        ]
    );
    assert_eq!(
        rows[2],
        [
            Data::String("pear".into()),
            Data::Float(2.0),
            Data::String("x".into())
        ]
    );
}

#[test]
fn xlsx_written_by_rust_xlsxwriter_becomes_csv() {
    let mut workbook = rust_xlsxwriter::Workbook::new();
    let sheet = workbook.add_worksheet();
    sheet.write_string(0, 0, "city").expect("write");
    sheet.write_string(0, 1, "population").expect("write");
    sheet.write_string(1, 0, "Lyon").expect("write");
    sheet.write_number(1, 1, 522_250).expect("write");
    sheet.write_string(2, 0, "Nantes, FR").expect("write");
    sheet.write_number(2, 1, 0.5).expect("write");
    let xlsx = workbook.save_to_buffer().expect("xlsx");
    assert_eq!(
        sniff(&xlsx, &xlsx, xlsx.len() as u64, "report.csv"),
        Format::Xlsx,
        "the name does not decide"
    );
    let csv_bytes = converted(&xlsx, Format::Xlsx, Format::Csv);
    assert_eq!(
        String::from_utf8(csv_bytes).expect("utf-8"),
        "city,population\nLyon,522250\n\"Nantes, FR\",0.5\n"
    );
}

#[test]
fn ods_becomes_csv() {
    let ods = minimal_ods(&[&["fruit", "count"], &["kiwi", "4"]]);
    assert_eq!(sniff(&ods, &ods, ods.len() as u64, "x"), Format::Ods);
    let csv_bytes = converted(&ods, Format::Ods, Format::Csv);
    assert_eq!(
        String::from_utf8(csv_bytes).expect("utf-8"),
        "fruit,count\nkiwi,4\n"
    );
}

#[test]
fn text_and_markdown_become_pdf_with_their_text() {
    let text = "Hello PDF world\n\n\tindented line\n".to_string() + &"filler line\n".repeat(120);
    let pdf = converted(text.as_bytes(), Format::Text, Format::Pdf);
    assert!(pdf.starts_with(b"%PDF-"), "a PDF");
    assert!(
        contains(&pdf, b"(Hello PDF world) Tj"),
        "the text is in the PDF"
    );
    assert!(
        contains(&pdf, b"/Count 3"),
        "123 lines of 9.5 pt take three A4 pages"
    );
    assert!(pdf.ends_with(b"%%EOF") || pdf.ends_with(b"%%EOF\n"));

    let markdown = "# Quarterly (draft)\n\nRevenue grew *a lot*.\n\n- first point\n- second point\n\n```\nlet x = 1;\n```\n";
    let pdf = converted(markdown.as_bytes(), Format::Markdown, Format::Pdf);
    assert!(pdf.starts_with(b"%PDF-"));
    for needle in [
        &b"(Quarterly (draft)) Tj"[..],
        b"(Revenue grew a lot.) Tj",
        b"second point) Tj",
        b"(let x = 1;) Tj",
    ] {
        assert!(
            contains(&pdf, needle),
            "{} not in the PDF",
            String::from_utf8_lossy(needle)
        );
    }
    assert!(contains(&pdf, b"/Helvetica-Bold"), "headings are bold");
}

#[test]
fn corrupt_inputs_fail_with_a_clear_error() {
    let png = encode(&picture(), Format::Png);
    let truncated = &png[..png.len() / 2];
    let cases: [(&[u8], Format, Format); 5] = [
        (truncated, Format::Png, Format::Jpeg),
        (b"{\"not\": \"an array\"}", Format::Json, Format::Csv),
        (b"[1, 2", Format::Json, Format::Csv),
        (b"PK\x03\x04 not really a zip", Format::Xlsx, Format::Csv),
        (b"\xff\xfe\x00bad", Format::Markdown, Format::Html),
    ];
    for (input, from, to) in cases {
        let (result, _) = run(input, from, Target::Format(to), &Options::default());
        match result {
            Err(ConvertError::Corrupt { format, reason }) => {
                assert_eq!(format, from);
                assert!(!reason.is_empty());
                let message = ConvertError::Corrupt { format, reason }.to_string();
                assert!(
                    message.starts_with(&format!("the input is not a valid {from} file")),
                    "{message}"
                );
            }
            other => panic!("{from} → {to} on garbage: {other:?}"),
        }
    }
}

#[test]
fn outputs_beyond_the_limit_fail() {
    let input = encode(&picture(), Format::Png);
    let (result, _) = run_with(
        &input,
        Format::Png,
        Target::Format(Format::Bmp),
        &Options::default(),
        1024,
        &AtomicBool::new(false),
    );
    assert!(
        matches!(result, Err(ConvertError::TooLarge(_))),
        "{result:?}"
    );
}

#[test]
fn unsupported_pairs_and_unavailable_office_are_errors() {
    let (result, _) = run(
        b"a,b",
        Format::Csv,
        Target::Format(Format::Png),
        &Options::default(),
    );
    assert!(
        matches!(result, Err(ConvertError::Unsupported { .. })),
        "{result:?}"
    );
}

#[test]
fn the_slow_test_converter_stops_when_cancelled() {
    let cancel = AtomicBool::new(true);
    let options = Options {
        duration_ms: Some(60_000),
        ..Options::default()
    };
    let started = Instant::now();
    let (result, _) = run_with(b"x", Format::Text, Target::Slow, &options, 1024, &cancel);
    assert_eq!(result, Err(ConvertError::Cancelled));
    assert!(started.elapsed() < Duration::from_secs(5));
    let options = Options {
        duration_ms: Some(200),
        ..Options::default()
    };
    let (result, steps) = run(b"payload", Format::Text, Target::Slow, &options);
    assert_eq!(result.expect("slow finishes").bytes, b"payload");
    assert!(steps.len() >= 5, "slow reports progress: {steps:?}");
}

#[test]
fn office_documents_become_pdf_when_libreoffice_is_installed() {
    // Converters read no environment: the node passes LibreOffice's path (none here).
    let availability = actors::job::convert::Availability {
        office: false,
        test: false,
    };
    let mut workbook = rust_xlsxwriter::Workbook::new();
    workbook
        .add_worksheet()
        .write_string(0, 0, "Office cell")
        .expect("write");
    let xlsx = workbook.save_to_buffer().expect("xlsx");
    let (result, _) = run(
        &xlsx,
        Format::Xlsx,
        Target::Format(Format::Pdf),
        &Options::default(),
    );
    if !availability.office {
        assert_eq!(
            result,
            Err(ConvertError::Unavailable("LibreOffice (soffice)"))
        );
        eprintln!("no soffice path given: checked that office conversions report it");
        return;
    }
    let pdf = result.expect("LibreOffice converts").bytes;
    assert!(pdf.starts_with(b"%PDF-"));
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack
        .windows(needle.len())
        .any(|window| window == needle)
}

/// An ODS spreadsheet as a stored (uncompressed) ZIP: `mimetype` first, then the manifest
/// and the content, as ODF requires.
fn minimal_ods(rows: &[&[&str]]) -> Vec<u8> {
    let mut table = String::new();
    for row in rows {
        table.push_str("<table:table-row>");
        for cell in *row {
            table.push_str(&format!("<table:table-cell office:value-type=\"string\"><text:p>{cell}</text:p></table:table-cell>"));
        }
        table.push_str("</table:table-row>");
    }
    let content = format!(
        "<?xml version=\"1.0\" encoding=\"UTF-8\"?><office:document-content \
         xmlns:office=\"urn:oasis:names:tc:opendocument:xmlns:office:1.0\" \
         xmlns:table=\"urn:oasis:names:tc:opendocument:xmlns:table:1.0\" \
         xmlns:text=\"urn:oasis:names:tc:opendocument:xmlns:text:1.0\" office:version=\"1.2\">\
         <office:body><office:spreadsheet><table:table table:name=\"Sheet1\">{table}</table:table>\
         </office:spreadsheet></office:body></office:document-content>"
    );
    let manifest = "<?xml version=\"1.0\" encoding=\"UTF-8\"?><manifest:manifest \
         xmlns:manifest=\"urn:oasis:names:tc:opendocument:xmlns:manifest:1.0\" manifest:version=\"1.2\">\
         <manifest:file-entry manifest:full-path=\"/\" manifest:media-type=\"application/vnd.oasis.opendocument.spreadsheet\"/>\
         <manifest:file-entry manifest:full-path=\"content.xml\" manifest:media-type=\"text/xml\"/>\
         </manifest:manifest>";
    stored_zip(&[
        (
            "mimetype",
            b"application/vnd.oasis.opendocument.spreadsheet",
        ),
        ("META-INF/manifest.xml", manifest.as_bytes()),
        ("content.xml", content.as_bytes()),
    ])
}

fn stored_zip(files: &[(&str, &[u8])]) -> Vec<u8> {
    let mut zip = Vec::new();
    let mut directory = Vec::new();
    for (name, data) in files {
        let offset = zip.len() as u32;
        let crc = crc32(data);
        let size = data.len() as u32;
        let header = |signature: u32, central: bool| {
            let mut bytes = Vec::new();
            bytes.extend_from_slice(&signature.to_le_bytes());
            if central {
                bytes.extend_from_slice(&20u16.to_le_bytes());
            }
            for value in [20u16, 0, 0, 0, 0] {
                bytes.extend_from_slice(&value.to_le_bytes());
            }
            for value in [crc, size, size] {
                bytes.extend_from_slice(&value.to_le_bytes());
            }
            bytes.extend_from_slice(&(name.len() as u16).to_le_bytes());
            bytes.extend_from_slice(&0u16.to_le_bytes());
            if central {
                for value in [0u16, 0, 0] {
                    bytes.extend_from_slice(&value.to_le_bytes());
                }
                bytes.extend_from_slice(&0u32.to_le_bytes());
                bytes.extend_from_slice(&offset.to_le_bytes());
            }
            bytes.extend_from_slice(name.as_bytes());
            bytes
        };
        zip.extend(header(0x0403_4b50, false));
        zip.extend_from_slice(data);
        directory.extend(header(0x0201_4b50, true));
    }
    let directory_offset = zip.len() as u32;
    zip.extend_from_slice(&directory);
    zip.extend_from_slice(&0x0605_4b50u32.to_le_bytes());
    for value in [0u16, 0, files.len() as u16, files.len() as u16] {
        zip.extend_from_slice(&value.to_le_bytes());
    }
    zip.extend_from_slice(&(directory.len() as u32).to_le_bytes());
    zip.extend_from_slice(&directory_offset.to_le_bytes());
    zip.extend_from_slice(&0u16.to_le_bytes());
    zip
}

fn crc32(data: &[u8]) -> u32 {
    let mut crc = 0xffff_ffffu32;
    for byte in data {
        crc ^= u32::from(*byte);
        for _ in 0..8 {
            crc = if crc & 1 == 1 {
                (crc >> 1) ^ 0xedb8_8320
            } else {
                crc >> 1
            };
        }
    }
    !crc
}

#[test]
fn huge_upscales_are_refused_before_they_allocate() {
    let input = encode(&picture(), Format::Png);
    let options = Options {
        width: Some(10_000),
        height: Some(10_000),
        ..Options::default()
    };
    let (result, _) = run(&input, Format::Png, Target::Format(Format::Png), &options);
    assert!(
        matches!(result, Err(ConvertError::TooLarge(ref message)) if message.contains("pixels")),
        "{result:?}"
    );
}
