//! Text conversions: Markdown → HTML (`pulldown-cmark`), CSV ↔ JSON (`csv`, `serde_json`).
//!
//! CSV → JSON makes an array of objects keyed by the header row, every value a string (CSV has
//! no types; guessing them would lose leading zeros). JSON → CSV takes an array of objects
//! (columns: every key, in order of first appearance) or an array of arrays.

use pulldown_cmark::{Event, Options as MarkdownOptions, Parser, Tag, TagEnd};
use serde_json::Value;

use super::{Conversion, ConvertError, utf8};

/// Columns of one CSV or JSON table.
pub const COLUMNS_MAX: usize = 10_000;
/// Deepest nesting of Markdown blocks and spans (quotes in quotes, lists in lists) converted:
/// no real document comes near it, and 100000 nested quotes would make an HTML page that
/// browsers and our PDF layout choke on.
pub const MARKDOWN_NESTING_MAX: usize = 100;

/// Refuses a Markdown document nested deeper than [`MARKDOWN_NESTING_MAX`]. The parser itself
/// is iterative, so counting costs one pass and no recursion.
pub(super) fn check_nesting(markdown: &str) -> Result<(), ConvertError> {
    let mut depth = 0usize;
    for event in Parser::new_ext(markdown, markdown_options()) {
        match event {
            Event::Start(_) => {
                depth += 1;
                if depth > MARKDOWN_NESTING_MAX {
                    return Err(ConvertError::TooLarge(format!(
                        "the document is nested more than {MARKDOWN_NESTING_MAX} levels deep"
                    )));
                }
            }
            Event::End(_) => depth = depth.saturating_sub(1),
            _ => {}
        }
    }
    Ok(())
}

pub fn markdown_to_html(conversion: &Conversion<'_>) -> Result<Vec<u8>, ConvertError> {
    let markdown = utf8(conversion)?;
    (conversion.progress)(30, "parsing markdown");
    check_nesting(markdown)?;
    let title = markdown_title(markdown).unwrap_or_else(|| "Document".to_string());
    // Raw HTML in the Markdown is shown as text: the output is served from our origin, and a
    // script in it must not run there.
    let events = Parser::new_ext(markdown, markdown_options()).map(|event| match event {
        Event::Html(html) | Event::InlineHtml(html) => Event::Text(html),
        other => other,
    });
    let mut body = String::with_capacity(markdown.len() * 2);
    pulldown_cmark::html::push_html(&mut body, events);
    conversion.checkpoint()?;
    let mut page = String::with_capacity(body.len() + 256);
    page.push_str("<!DOCTYPE html>\n<html>\n<head>\n<meta charset=\"utf-8\">\n<title>");
    push_escaped(&mut page, &title);
    page.push_str("</title>\n</head>\n<body>\n");
    page.push_str(&body);
    page.push_str("</body>\n</html>\n");
    Ok(page.into_bytes())
}

pub(super) fn markdown_options() -> MarkdownOptions {
    MarkdownOptions::ENABLE_TABLES
        | MarkdownOptions::ENABLE_STRIKETHROUGH
        | MarkdownOptions::ENABLE_TASKLISTS
        | MarkdownOptions::ENABLE_FOOTNOTES
}

/// The text of the first heading.
fn markdown_title(markdown: &str) -> Option<String> {
    let mut in_heading = false;
    let mut title = String::new();
    for event in Parser::new_ext(markdown, markdown_options()) {
        match event {
            Event::Start(Tag::Heading { .. }) => in_heading = true,
            Event::End(TagEnd::Heading(_)) => return Some(title),
            Event::Text(text) | Event::Code(text) if in_heading => title.push_str(&text),
            _ => {}
        }
    }
    None
}

fn push_escaped(out: &mut String, text: &str) {
    for character in text.chars() {
        match character {
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '&' => out.push_str("&amp;"),
            '"' => out.push_str("&quot;"),
            other => out.push(other),
        }
    }
}

pub fn csv_to_json(conversion: &Conversion<'_>) -> Result<Vec<u8>, ConvertError> {
    let mut reader = csv::ReaderBuilder::new()
        .flexible(true)
        .from_reader(conversion.input);
    (conversion.progress)(20, "reading rows");
    let headers: Vec<String> = reader
        .headers()
        .map_err(|error| conversion.corrupt(error))?
        .iter()
        .enumerate()
        .map(|(index, name)| {
            let name = name.trim_start_matches('\u{feff}');
            if name.is_empty() {
                format!("column_{}", index + 1)
            } else {
                name.to_string()
            }
        })
        .collect();
    if headers.len() > COLUMNS_MAX {
        return Err(ConvertError::TooLarge(format!(
            "more than {COLUMNS_MAX} columns"
        )));
    }
    // Written by hand rather than through a JSON map, so the columns keep the CSV's order.
    let mut json = String::from("[");
    for (index, record) in reader.records().enumerate() {
        let record = record.map_err(|error| conversion.corrupt(error))?;
        json.push_str(if index == 0 { "\n  {" } else { ",\n  {" });
        for (column, value) in record.iter().enumerate() {
            if column > 0 {
                json.push_str(", ");
            }
            match headers.get(column) {
                Some(key) => push_json_string(&mut json, key),
                None => push_json_string(&mut json, &format!("column_{}", column + 1)),
            }
            json.push_str(": ");
            push_json_string(&mut json, value);
        }
        json.push('}');
        check_size(conversion, json.len())?;
        if index % 10_000 == 0 {
            conversion.checkpoint()?;
        }
    }
    json.push_str("\n]\n");
    (conversion.progress)(70, "writing json");
    Ok(json.into_bytes())
}

fn push_json_string(out: &mut String, text: &str) {
    out.push_str(&Value::String(text.to_string()).to_string());
}

/// One element of the JSON array, with an object's keys in the document's order.
enum Row {
    Object(Vec<(String, Value)>),
    Array(Vec<Value>),
    Other,
}

impl<'de> serde::Deserialize<'de> for Row {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct RowVisitor;
        impl<'de> serde::de::Visitor<'de> for RowVisitor {
            type Value = Row;
            fn expecting(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                formatter.write_str("an object or an array")
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(self, mut map: A) -> Result<Row, A::Error> {
                let mut entries = Vec::new();
                while let Some(entry) = map.next_entry::<String, Value>()? {
                    entries.push(entry);
                }
                Ok(Row::Object(entries))
            }
            fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut seq: A) -> Result<Row, A::Error> {
                let mut values = Vec::new();
                while let Some(value) = seq.next_element::<Value>()? {
                    values.push(value);
                }
                Ok(Row::Array(values))
            }
            fn visit_bool<E>(self, _: bool) -> Result<Row, E> {
                Ok(Row::Other)
            }
            fn visit_i64<E>(self, _: i64) -> Result<Row, E> {
                Ok(Row::Other)
            }
            fn visit_u64<E>(self, _: u64) -> Result<Row, E> {
                Ok(Row::Other)
            }
            fn visit_f64<E>(self, _: f64) -> Result<Row, E> {
                Ok(Row::Other)
            }
            fn visit_str<E>(self, _: &str) -> Result<Row, E> {
                Ok(Row::Other)
            }
            fn visit_unit<E>(self) -> Result<Row, E> {
                Ok(Row::Other)
            }
        }
        deserializer.deserialize_any(RowVisitor)
    }
}

pub fn json_to_csv(conversion: &Conversion<'_>) -> Result<Vec<u8>, ConvertError> {
    let text = utf8(conversion)?;
    (conversion.progress)(20, "parsing json");
    let rows: Vec<Row> = serde_json::from_str(text).map_err(|error| {
        conversion.corrupt(format!(
            "expected an array of objects or of arrays ({error})"
        ))
    })?;
    (conversion.progress)(50, "writing rows");
    let mut writer = csv::WriterBuilder::new()
        .flexible(true)
        .from_writer(Vec::new());
    let all_objects = rows.iter().all(|row| matches!(row, Row::Object(_)));
    let all_arrays = rows.iter().all(|row| matches!(row, Row::Array(_)));
    if all_objects && !rows.is_empty() {
        let mut columns: Vec<&str> = Vec::new();
        for row in &rows {
            if let Row::Object(entries) = row {
                for (key, _) in entries {
                    if !columns.contains(&key.as_str()) {
                        if columns.len() >= COLUMNS_MAX {
                            return Err(ConvertError::TooLarge(format!(
                                "more than {COLUMNS_MAX} columns"
                            )));
                        }
                        columns.push(key);
                    }
                }
            }
        }
        write_row(&mut writer, columns.iter().map(|column| column.to_string()))?;
        for row in &rows {
            if let Row::Object(entries) = row {
                let cells = columns.iter().map(|column| {
                    entries
                        .iter()
                        .find(|(key, _)| key == column)
                        .map(|(_, value)| cell(value))
                        .unwrap_or_default()
                });
                write_row(&mut writer, cells)?;
            }
            check_size(conversion, writer.get_ref().len())?;
        }
    } else if all_arrays {
        for row in &rows {
            if let Row::Array(values) = row {
                write_row(&mut writer, values.iter().map(cell))?;
            }
            check_size(conversion, writer.get_ref().len())?;
        }
    } else {
        return Err(conversion
            .corrupt("expected an array of objects or of arrays, not a mix or plain values"));
    }
    writer
        .into_inner()
        .map_err(|error| ConvertError::Failed(error.to_string()))
}

/// A JSON value as one CSV cell: strings as they are, `null` empty, the rest as JSON.
fn cell(value: &Value) -> String {
    match value {
        Value::String(text) => text.clone(),
        Value::Null => String::new(),
        other => other.to_string(),
    }
}

fn write_row(
    writer: &mut csv::Writer<Vec<u8>>,
    cells: impl IntoIterator<Item = String>,
) -> Result<(), ConvertError> {
    writer
        .write_record(cells)
        .map_err(|error| ConvertError::Failed(error.to_string()))
}

fn check_size(conversion: &Conversion<'_>, bytes: usize) -> Result<(), ConvertError> {
    if bytes as u64 > conversion.output_bytes_max {
        return Err(ConvertError::TooLarge(format!(
            "the output would be larger than {} bytes",
            conversion.output_bytes_max
        )));
    }
    Ok(())
}
