//! Markdown and plain text → PDF with `pdf-writer`, using the PDF standard fonts (Helvetica,
//! Helvetica-Bold, Courier), which every reader has: no font file is needed or embedded.
//!
//! Layout is deliberately simple: A4 pages, headings, paragraphs, bullets, code blocks and
//! rules, word-wrapped with the fonts' metrics. The standard fonts cover WinAnsi (Latin-1 and
//! typographic punctuation); other characters print as `?`. Content streams are uncompressed,
//! so the text of the document can be found in the file as written.

use pdf_writer::{Content, Finish, Name, Pdf, Rect, Ref, Str};
use pulldown_cmark::{Event, Parser, Tag, TagEnd};

use super::text::{check_nesting, markdown_options};
use super::{Conversion, ConvertError, utf8};

const PAGE_WIDTH: f32 = 595.0;
const PAGE_HEIGHT: f32 = 842.0;
const MARGIN: f32 = 56.0;
const BODY_SIZE: f32 = 11.0;
const CODE_SIZE: f32 = 9.5;
const LINE_SPACING: f32 = 1.35;
/// Pages of one document; a longer one fails rather than growing without end.
pub const PAGES_MAX: usize = 5_000;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Font {
    Regular,
    Bold,
    Mono,
}

impl Font {
    fn resource(self) -> Name<'static> {
        match self {
            Font::Regular => Name(b"F1"),
            Font::Bold => Name(b"F2"),
            Font::Mono => Name(b"F3"),
        }
    }

    /// Width of one WinAnsi byte, in thousandths of the font size.
    fn width(self, byte: u8) -> f32 {
        match self {
            Font::Mono => 600.0,
            // Helvetica-Bold is a little wider than Helvetica; 10% covers every glyph.
            Font::Bold => helvetica_width(byte) * 1.1,
            Font::Regular => helvetica_width(byte),
        }
    }

    fn text_width(self, text: &[u8], size: f32) -> f32 {
        text.iter().map(|byte| self.width(*byte)).sum::<f32>() * size / 1000.0
    }
}

/// Helvetica's advance widths (from its AFM) for printable ASCII; others get a digit's width.
fn helvetica_width(byte: u8) -> f32 {
    const WIDTHS: [u16; 95] = [
        278, 278, 355, 556, 556, 889, 667, 191, 333, 333, 389, 584, 278, 333, 278,
        278, // ' '../
        556, 556, 556, 556, 556, 556, 556, 556, 556, 556, // 0-9
        278, 278, 584, 584, 584, 556, 1015, // :;<=>?@
        667, 667, 722, 722, 667, 611, 778, 722, 278, 500, 667, 556, 833, 722, 778, 667, 778, 722,
        667, 611, 722, 667, 944, 667, 667, 611, // A-Z
        278, 278, 278, 469, 556, 333, // [\]^_`
        556, 556, 500, 556, 556, 278, 556, 556, 222, 222, 500, 222, 833, 556, 556, 556, 556, 333,
        500, 278, 556, 500, 722, 500, 500, 500, // a-z
        334, 260, 334, 584, // {|}~
    ];
    match byte {
        32..=126 => f32::from(WIDTHS[usize::from(byte - 32)]),
        _ => 556.0,
    }
}

/// A character in WinAnsiEncoding, or `?`.
fn win_ansi(character: char) -> u8 {
    match character {
        ' '..='~' => character as u8,
        '\t' => b' ',
        '\u{a0}'..='\u{ff}' => character as u32 as u8,
        '€' => 0x80,
        '…' => 0x85,
        '‘' => 0x91,
        '’' => 0x92,
        '“' => 0x93,
        '”' => 0x94,
        '•' => 0x95,
        '–' => 0x96,
        '—' => 0x97,
        _ => b'?',
    }
}

/// A block of the document before layout.
#[derive(Debug, Clone, PartialEq)]
enum Block {
    Heading(u8, String),
    Paragraph(String),
    Bullet(usize, String),
    Code(String),
    Rule,
}

/// One laid-out line.
#[derive(Debug, Clone)]
enum Line {
    Text {
        font: Font,
        size: f32,
        x: f32,
        text: Vec<u8>,
    },
    Rule,
}

/// A line and the vertical space it takes (its own height plus the gap before it).
struct Placed {
    line: Line,
    advance: f32,
}

pub fn text_to_pdf(conversion: &Conversion<'_>) -> Result<Vec<u8>, ConvertError> {
    let text = utf8(conversion)?;
    (conversion.progress)(30, "laying out");
    let mut placed = Vec::new();
    for line in text.lines() {
        let line = line.replace('\t', "    ");
        if line.trim().is_empty() {
            placed.push(Placed {
                line: Line::Text {
                    font: Font::Mono,
                    size: CODE_SIZE,
                    x: MARGIN,
                    text: Vec::new(),
                },
                advance: CODE_SIZE * LINE_SPACING,
            });
            continue;
        }
        wrap(&mut placed, &line, Font::Mono, CODE_SIZE, MARGIN, 0.0);
    }
    conversion.checkpoint()?;
    render(conversion, placed)
}

pub fn markdown_to_pdf(conversion: &Conversion<'_>) -> Result<Vec<u8>, ConvertError> {
    let markdown = utf8(conversion)?;
    (conversion.progress)(25, "parsing markdown");
    check_nesting(markdown)?;
    let blocks = markdown_blocks(markdown);
    conversion.checkpoint()?;
    (conversion.progress)(45, "laying out");
    let mut placed = Vec::new();
    for block in &blocks {
        match block {
            Block::Heading(level, text) => {
                let size = match level {
                    1 => 20.0,
                    2 => 16.0,
                    3 => 13.5,
                    _ => 12.0,
                };
                wrap(&mut placed, text, Font::Bold, size, MARGIN, size * 0.8);
            }
            Block::Paragraph(text) => {
                for (index, part) in text.split('\n').enumerate() {
                    let gap = if index == 0 { BODY_SIZE * 0.6 } else { 0.0 };
                    wrap(&mut placed, part, Font::Regular, BODY_SIZE, MARGIN, gap);
                }
            }
            Block::Bullet(depth, text) => {
                let indent = MARGIN + 14.0 * (*depth as f32);
                let first = placed.len();
                wrap(
                    &mut placed,
                    text,
                    Font::Regular,
                    BODY_SIZE,
                    indent + 12.0,
                    BODY_SIZE * 0.2,
                );
                // The bullet shares the first line's baseline: it takes the line's advance.
                let advance = std::mem::replace(&mut placed[first].advance, 0.0);
                let bullet = Line::Text {
                    font: Font::Regular,
                    size: BODY_SIZE,
                    x: indent,
                    text: vec![win_ansi('\u{2022}')],
                };
                placed.insert(
                    first,
                    Placed {
                        line: bullet,
                        advance,
                    },
                );
            }
            Block::Code(code) => {
                for (index, line) in code.lines().enumerate() {
                    let gap = if index == 0 { BODY_SIZE * 0.5 } else { 0.0 };
                    let line = line.replace('\t', "    ");
                    wrap(
                        &mut placed,
                        &line,
                        Font::Mono,
                        CODE_SIZE,
                        MARGIN + 10.0,
                        gap,
                    );
                }
            }
            Block::Rule => placed.push(Placed {
                line: Line::Rule,
                advance: BODY_SIZE * 1.5,
            }),
        }
    }
    conversion.checkpoint()?;
    render(conversion, placed)
}

/// Word-wraps `text` into lines at most the text width wide (long words are cut).
fn wrap(placed: &mut Vec<Placed>, text: &str, font: Font, size: f32, x: f32, gap_before: f32) {
    let width_max = PAGE_WIDTH - MARGIN - x;
    let bytes: Vec<u8> = text.chars().map(win_ansi).collect();
    let mut lines: Vec<Vec<u8>> = Vec::new();
    let mut current: Vec<u8> = Vec::new();
    for word in bytes.split(|byte| *byte == b' ') {
        let candidate_width = if current.is_empty() {
            font.text_width(word, size)
        } else {
            font.text_width(&current, size)
                + font.text_width(b" ", size)
                + font.text_width(word, size)
        };
        if candidate_width <= width_max {
            if !current.is_empty() {
                current.push(b' ');
            }
            current.extend_from_slice(word);
            continue;
        }
        if !current.is_empty() {
            lines.push(std::mem::take(&mut current));
        }
        // A word wider than the line is cut wherever it must be.
        for byte in word {
            if !current.is_empty()
                && font.text_width(&current, size) + font.text_width(&[*byte], size) > width_max
            {
                lines.push(std::mem::take(&mut current));
            }
            current.push(*byte);
        }
    }
    lines.push(current);
    for (index, text) in lines.into_iter().enumerate() {
        let gap = if index == 0 { gap_before } else { 0.0 };
        placed.push(Placed {
            line: Line::Text {
                font,
                size,
                x,
                text,
            },
            advance: size * LINE_SPACING + gap,
        });
    }
}

fn markdown_blocks(markdown: &str) -> Vec<Block> {
    let mut blocks = Vec::new();
    let mut buffer = String::new();
    let mut heading: Option<u8> = None;
    let mut in_code = false;
    let mut list_depth: usize = 0;
    let mut in_item = false;
    let flush = |buffer: &mut String, blocks: &mut Vec<Block>, in_item: bool, depth: usize| {
        let text = buffer.trim().to_string();
        buffer.clear();
        if text.is_empty() {
            return;
        }
        if in_item {
            blocks.push(Block::Bullet(depth.saturating_sub(1), text));
        } else {
            blocks.push(Block::Paragraph(text));
        }
    };
    for event in Parser::new_ext(markdown, markdown_options()) {
        match event {
            Event::Start(Tag::Heading { level, .. }) => {
                flush(&mut buffer, &mut blocks, in_item, list_depth);
                heading = Some(level as u8);
            }
            Event::End(TagEnd::Heading(_)) => {
                let text = std::mem::take(&mut buffer).trim().to_string();
                blocks.push(Block::Heading(heading.take().unwrap_or(1), text));
            }
            Event::Start(Tag::CodeBlock(_)) => {
                flush(&mut buffer, &mut blocks, in_item, list_depth);
                in_code = true;
            }
            Event::End(TagEnd::CodeBlock) => {
                in_code = false;
                blocks.push(Block::Code(std::mem::take(&mut buffer)));
            }
            Event::Start(Tag::List(_)) => {
                flush(&mut buffer, &mut blocks, in_item, list_depth);
                list_depth += 1;
            }
            Event::End(TagEnd::List(_)) => list_depth = list_depth.saturating_sub(1),
            Event::Start(Tag::Item) => {
                flush(&mut buffer, &mut blocks, in_item, list_depth);
                in_item = true;
            }
            Event::End(TagEnd::Item) => {
                flush(&mut buffer, &mut blocks, true, list_depth);
                in_item = list_depth > 1;
            }
            Event::End(TagEnd::Paragraph) => flush(&mut buffer, &mut blocks, in_item, list_depth),
            Event::End(TagEnd::TableHead | TagEnd::TableRow) => {
                let cells = buffer.trim_end().trim_end_matches('|').to_string();
                buffer = cells;
                flush(&mut buffer, &mut blocks, in_item, list_depth);
            }
            Event::End(TagEnd::TableCell) => buffer.push_str("  |  "),
            Event::Text(text) | Event::Code(text) | Event::Html(text) | Event::InlineHtml(text) => {
                buffer.push_str(&text);
            }
            Event::SoftBreak => buffer.push(if in_code { '\n' } else { ' ' }),
            Event::HardBreak => buffer.push('\n'),
            Event::Rule => {
                flush(&mut buffer, &mut blocks, in_item, list_depth);
                blocks.push(Block::Rule);
            }
            Event::TaskListMarker(done) => buffer.push_str(if done { "[x] " } else { "[ ] " }),
            _ => {}
        }
    }
    flush(&mut buffer, &mut blocks, in_item, list_depth);
    blocks
}

/// Paginates the lines and writes the PDF.
fn render(conversion: &Conversion<'_>, placed: Vec<Placed>) -> Result<Vec<u8>, ConvertError> {
    (conversion.progress)(70, "writing pdf");
    let mut pages: Vec<Vec<(f32, Line)>> = vec![Vec::new()];
    let mut y = PAGE_HEIGHT - MARGIN;
    for Placed { line, advance } in placed {
        if y - advance < MARGIN && pages.last().is_some_and(|page| !page.is_empty()) {
            if pages.len() >= PAGES_MAX {
                return Err(ConvertError::TooLarge(format!(
                    "more than {PAGES_MAX} pages"
                )));
            }
            pages.push(Vec::new());
            y = PAGE_HEIGHT - MARGIN;
        }
        y -= advance;
        if let Some(page) = pages.last_mut() {
            page.push((y, line));
        }
    }
    let catalog_id = Ref::new(1);
    let page_tree_id = Ref::new(2);
    let font_ids = [
        (Font::Regular, Ref::new(3)),
        (Font::Bold, Ref::new(4)),
        (Font::Mono, Ref::new(5)),
    ];
    let first_page = 6;
    let page_ids: Vec<Ref> = (0..pages.len())
        .map(|index| Ref::new(first_page + 2 * index as i32))
        .collect();
    let mut pdf = Pdf::new();
    pdf.catalog(catalog_id).pages(page_tree_id);
    pdf.pages(page_tree_id)
        .kids(page_ids.iter().copied())
        .count(pages.len() as i32);
    for (font, id) in font_ids {
        let base = match font {
            Font::Regular => Name(b"Helvetica"),
            Font::Bold => Name(b"Helvetica-Bold"),
            Font::Mono => Name(b"Courier"),
        };
        pdf.type1_font(id)
            .base_font(base)
            .encoding_predefined(Name(b"WinAnsiEncoding"));
    }
    for (index, lines) in pages.iter().enumerate() {
        conversion.checkpoint()?;
        let page_id = page_ids[index];
        let content_id = Ref::new(page_id.get() + 1);
        let mut page = pdf.page(page_id);
        page.media_box(Rect::new(0.0, 0.0, PAGE_WIDTH, PAGE_HEIGHT));
        page.parent(page_tree_id);
        page.contents(content_id);
        let mut resources = page.resources();
        let mut fonts = resources.fonts();
        for (font, id) in font_ids {
            fonts.pair(font.resource(), id);
        }
        fonts.finish();
        resources.finish();
        page.finish();
        let content = page_content(lines);
        if pdf.len() as u64 + content.len() as u64 > conversion.output_bytes_max {
            return Err(ConvertError::TooLarge(format!(
                "the output would be larger than {} bytes",
                conversion.output_bytes_max
            )));
        }
        pdf.stream(content_id, &content);
    }
    Ok(pdf.finish())
}

fn page_content(lines: &[(f32, Line)]) -> Vec<u8> {
    let mut content = Content::new();
    for (y, line) in lines {
        match line {
            Line::Text {
                font,
                size,
                x,
                text,
            } => {
                if text.is_empty() {
                    continue;
                }
                content.begin_text();
                content.set_font(font.resource(), *size);
                content.set_text_matrix([1.0, 0.0, 0.0, 1.0, *x, *y]);
                content.show(Str(text));
                content.end_text();
            }
            Line::Rule => {
                let y = y + BODY_SIZE * 0.6;
                content.set_line_width(0.5);
                content.move_to(MARGIN, y);
                content.line_to(PAGE_WIDTH - MARGIN, y);
                content.stroke();
            }
        }
    }
    content.finish().to_vec()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn markdown_becomes_blocks() {
        let blocks = markdown_blocks(
            "# Title\n\nSome *text*\nhere.\n\n- one\n- two\n\n```\ncode\n```\n\n---\n",
        );
        assert_eq!(
            blocks,
            vec![
                Block::Heading(1, "Title".into()),
                Block::Paragraph("Some text here.".into()),
                Block::Bullet(0, "one".into()),
                Block::Bullet(0, "two".into()),
                Block::Code("code\n".into()),
                Block::Rule,
            ]
        );
    }

    #[test]
    fn long_lines_wrap_within_the_page() {
        let mut placed = Vec::new();
        let text = "word ".repeat(200);
        wrap(&mut placed, &text, Font::Regular, BODY_SIZE, MARGIN, 0.0);
        assert!(placed.len() > 5);
        for Placed { line, .. } in &placed {
            if let Line::Text { text, .. } = line {
                assert!(Font::Regular.text_width(text, BODY_SIZE) <= PAGE_WIDTH - 2.0 * MARGIN);
            }
        }
    }

    #[test]
    fn characters_outside_win_ansi_print_as_question_marks() {
        assert_eq!(win_ansi('a'), b'a');
        assert_eq!(win_ansi('é'), 0xe9);
        assert_eq!(win_ansi('—'), 0x97);
        assert_eq!(win_ansi('漢'), b'?');
    }
}
