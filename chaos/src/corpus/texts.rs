//! Hostile text inputs: deeply nested Markdown and JSON, a truncated JSON document, a CSV row
//! of a million columns, and invalid UTF-8 past the part of a text file that upload sniffing
//! reads.

use super::HostileInput;

/// Valid text around invalid UTF-8, placed past the head and before the tail that upload
/// sniffing reads (64 KiB each), so the upload is accepted as text.
fn invalid_utf8_inside(line: &str) -> Vec<u8> {
    let mut text = line.repeat(100 * 1024 / line.len() + 1).into_bytes();
    text.extend_from_slice(b"\xff\xfe\xc3\x28 broken \xe2\x82");
    text.extend(line.repeat(100 * 1024 / line.len() + 1).into_bytes());
    text
}

pub(super) fn texts() -> Vec<HostileInput> {
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
