//! Text decoding (UTF-8, UTF-16 with a BOM; binary data rejected) and normalisation (line
//! endings, blank runs, edges), the size checks, and the section builder HTML and DOCX share.

use std::borrow::Cow;

use super::*;

/// A text file in which more than this percentage of characters are control characters (other
/// than tab, newline, carriage return and form feed) is binary data that happens to be valid
/// UTF-8. Real text has almost none; logs with colour escapes stay under ~3%.
const MAX_CONTROL_CHAR_PERCENT: usize = 10;
const UTF8_BOM: char = '\u{feff}';

/// Turns the bytes of a text file into a `String`, rejecting binary data. UTF-8 is the contract;
/// UTF-16 is accepted only with a byte order mark, as Windows tools write it.
pub(super) fn decode_text(bytes: &[u8]) -> Result<String, ExtractError> {
    let text = if let Some(rest) = bytes.strip_prefix(b"\xff\xfe") {
        decode_utf16(rest, u16::from_le_bytes)?
    } else if let Some(rest) = bytes.strip_prefix(b"\xfe\xff") {
        decode_utf16(rest, u16::from_be_bytes)?
    } else {
        if bytes.contains(&0) {
            return Err(ExtractError::Unsupported(
                "binary data (contains NUL bytes)".into(),
            ));
        }
        match std::str::from_utf8(bytes) {
            Ok(text) => text.to_string(),
            Err(e) => {
                return Err(ExtractError::Unsupported(format!(
                    "not UTF-8 text (invalid byte at offset {})",
                    e.valid_up_to()
                )));
            }
        }
    };
    let mut chars = 0usize;
    let mut controls = 0usize;
    for c in text.chars() {
        chars += 1;
        if c == '\0' {
            return Err(ExtractError::Unsupported(
                "binary data (contains NUL characters)".into(),
            ));
        }
        if c.is_control() && !matches!(c, '\t' | '\n' | '\r' | '\x0c') {
            controls += 1;
        }
    }
    if controls.saturating_mul(100) > chars.saturating_mul(MAX_CONTROL_CHAR_PERCENT) {
        return Err(ExtractError::Unsupported(
            "binary data (mostly control characters)".into(),
        ));
    }
    Ok(text)
}

fn decode_utf16(bytes: &[u8], unit: fn([u8; 2]) -> u16) -> Result<String, ExtractError> {
    if !bytes.len().is_multiple_of(2) {
        return Err(ExtractError::Unsupported(
            "invalid UTF-16 text (odd length)".into(),
        ));
    }
    let units = bytes.chunks_exact(2).map(|pair| unit([pair[0], pair[1]]));
    char::decode_utf16(units)
        .collect::<Result<String, _>>()
        .map_err(|_| ExtractError::Unsupported("invalid UTF-16 text (unpaired surrogate)".into()))
}

/// Blank lines kept in a row; longer runs are cut to this many (they carry no meaning beyond a
/// paragraph break, and text splitters treat a longer run as a stronger boundary).
const MAX_BLANK_LINES: usize = 2;

/// Strips a BOM, turns CRLF (and a lone CR, the old Mac ending) into LF, and cuts runs of more
/// than [`MAX_BLANK_LINES`] blank lines to exactly that many empty lines. Idempotent.
pub(super) fn normalize(text: &str) -> String {
    let text = text.strip_prefix(UTF8_BOM).unwrap_or(text);
    let unix: Cow<'_, str> = if text.contains('\r') {
        Cow::Owned(text.replace("\r\n", "\n").replace('\r', "\n"))
    } else {
        Cow::Borrowed(text)
    };
    let mut out = String::with_capacity(unix.len());
    let mut blank_run: Vec<&str> = Vec::new();
    let mut first = true;
    let mut push_line = |out: &mut String, line: &str| {
        if !first {
            out.push('\n');
        }
        first = false;
        out.push_str(line);
    };
    for line in unix.split('\n') {
        if line.trim().is_empty() {
            blank_run.push(line);
            continue;
        }
        if blank_run.len() > MAX_BLANK_LINES {
            blank_run.truncate(MAX_BLANK_LINES);
            blank_run.fill("");
        }
        for blank in blank_run.drain(..) {
            push_line(&mut out, blank);
        }
        push_line(&mut out, line);
    }
    // Trailing blank lines are dropped by `trim_blank_edges` anyway; keep them bounded here too.
    blank_run.truncate(MAX_BLANK_LINES);
    for blank in blank_run.drain(..) {
        push_line(&mut out, blank);
    }
    out
}

/// Drops whitespace at the end and blank lines at the start, keeping the indentation of the
/// first line (it matters in code).
fn trim_blank_edges(text: &str) -> &str {
    let end = text.trim_end().len();
    let text = &text[..end];
    let first_visible = text.len() - text.trim_start().len();
    let line_start = text[..first_visible].rfind('\n').map_or(0, |i| i + 1);
    &text[line_start..]
}

/// Normalises every section, drops blank ones, and enforces the text limit.
pub(super) fn finish(
    format: Format,
    sections: Vec<Section>,
    limits: &Limits,
) -> Result<Extracted, ExtractError> {
    let mut kept = Vec::with_capacity(sections.len());
    let mut total = 0usize;
    for mut section in sections {
        let text = normalize(&section.text);
        let text = trim_blank_edges(&text);
        if text.is_empty() {
            continue;
        }
        // Sections are joined with a blank line in the chunker's offset space; count it.
        total = total.saturating_add(text.len()).saturating_add(2);
        if total > limits.max_text_bytes.saturating_add(2) {
            return Err(ExtractError::TextTooLarge {
                limit: limits.max_text_bytes,
            });
        }
        section.text = text.to_string();
        kept.push(section);
    }
    if kept.is_empty() {
        return Err(ExtractError::Empty);
    }
    Ok(Extracted {
        format,
        sections: kept,
    })
}

/// Guards text that grows while it is extracted (JSON indentation, PDF pages, DOCX paragraphs),
/// so that the limit is hit before memory is spent, not after.
pub(super) fn check_text_size(len: usize, limits: &Limits) -> Result<(), ExtractError> {
    if len > limits.max_text_bytes {
        return Err(ExtractError::TextTooLarge {
            limit: limits.max_text_bytes,
        });
    }
    Ok(())
}

pub(super) fn text_sections(
    format: Format,
    text: &str,
    limits: &Limits,
) -> Result<Vec<Section>, ExtractError> {
    let sections = match format {
        Format::Markdown => markdown_sections(text),
        Format::Html => html_sections(text),
        Format::Json => vec![plain_section(pretty_json(text, limits)?)],
        Format::Text | Format::Code | Format::Pdf | Format::Docx => {
            vec![plain_section(text.to_string())]
        }
    };
    Ok(sections)
}

pub(super) fn plain_section(text: String) -> Section {
    Section {
        page: None,
        heading_path: Vec::new(),
        text,
    }
}

// === sections from headings (shared by HTML and DOCX) ===

/// Builds sections from a stream of headings and paragraphs: a heading closes the current
/// section and opens one whose path is the stack of enclosing headings.
#[derive(Default)]
pub(super) struct SectionBuilder {
    pub(super) sections: Vec<Section>,
    /// Open headings as (level, title); a new heading pops every entry at its level or deeper.
    /// Levels are 0 for a document title and 1..=9 for headings.
    pub(super) stack: Vec<(u8, String)>,
    pub(super) current: String,
}

impl SectionBuilder {
    pub(super) fn heading(&mut self, level: u8, title: String) {
        // A "heading" this long is body text in a heading style (or markup gone wrong); as a
        // title it would be repeated in the heading path of every chunk below it.
        if title.len() > MAX_HEADING_BYTES {
            self.block(&title);
            return;
        }
        self.finish_section();
        while self.stack.last().is_some_and(|(open, _)| *open >= level) {
            self.stack.pop();
        }
        self.current.push_str(&title);
        self.stack.push((level, title));
    }

    /// Appends a paragraph-like block, separated from the previous one by a blank line.
    pub(super) fn block(&mut self, text: &str) {
        if !self.current.is_empty() {
            self.current.push_str("\n\n");
        }
        self.current.push_str(text);
    }

    fn finish_section(&mut self) {
        if !self.current.trim().is_empty() {
            self.sections.push(Section {
                page: None,
                heading_path: self.stack.iter().map(|(_, title)| title.clone()).collect(),
                text: std::mem::take(&mut self.current),
            });
        }
        self.current.clear();
    }

    pub(super) fn into_sections(mut self) -> Vec<Section> {
        self.finish_section();
        self.sections
    }
}

/// The longest text taken as a heading title. Real titles are a line; this is several.
pub(super) const MAX_HEADING_BYTES: usize = 300;

/// Collapses runs of whitespace to one space and trims, as a browser renders a heading.
pub(super) fn collapse_whitespace(text: &str) -> String {
    text.split_whitespace().collect::<Vec<_>>().join(" ")
}

#[cfg(test)]
mod tests {
    use super::super::test_support::*;
    use super::*;

    #[test]
    fn plain_text_is_normalised_but_otherwise_verbatim() {
        let input = "\u{feff}Line one\r\nLine two\r\n\r\n\r\n\r\n\r\n  Indented after four blanks\n\n\nTwo blanks kept\n  \n\n";
        let extracted = ok("notes.txt", input.as_bytes());
        assert_eq!(extracted.format, Format::Text);
        assert_eq!(
            texts(&extracted),
            ["Line one\nLine two\n\n\n  Indented after four blanks\n\n\nTwo blanks kept"]
        );
        assert_eq!(extracted.sections[0].page, None);
        assert!(extracted.sections[0].heading_path.is_empty());
    }

    #[test]
    fn lone_carriage_returns_become_newlines() {
        assert_eq!(texts(&ok("mac.txt", b"a\rb\r\rc")), ["a\nb\n\nc"]);
    }

    #[test]
    fn utf16_with_bom_is_decoded() {
        let mut bytes = vec![0xff, 0xfe];
        for unit in "Grüße, UTF-16".encode_utf16() {
            bytes.extend_from_slice(&unit.to_le_bytes());
        }
        assert_eq!(texts(&ok("windows.txt", &bytes)), ["Grüße, UTF-16"]);
    }

    #[test]
    fn normalize_is_idempotent() {
        for input in [
            "a\r\n\r\n\r\n\r\nb",
            "\u{feff}x\n \n\t\n\n\ny",
            "plain",
            "\n\n\n\n",
        ] {
            let once = normalize(input);
            assert_eq!(normalize(&once), once, "{input:?}");
        }
    }

    #[test]
    fn binary_data_is_rejected_whatever_the_name() {
        // Deterministic pseudo-random bytes, as a compressed or encrypted blob looks.
        let mut state = 0x2545_f491_u32;
        let blob: Vec<u8> = (0..4096)
            .map(|_| {
                state ^= state << 13;
                state ^= state >> 17;
                state ^= state << 5;
                state.to_le_bytes()[0]
            })
            .collect();
        for name in ["blob.txt", "blob.md", "blob", "blob.rs"] {
            let e = err(name, &blob);
            assert!(matches!(e, ExtractError::Unsupported(_)), "{name}: {e}");
        }
        let e = err("latin1.txt", b"caf\xe9 au lait");
        assert!(
            matches!(e, ExtractError::Unsupported(ref m) if m.contains("UTF-8")),
            "{e}"
        );
        let e = err("nul.txt", b"text\0with nul");
        assert!(matches!(e, ExtractError::Unsupported(_)), "{e}");
        let controls = "\x01\x02\x03\x04\x05\x06\x07\x08 ab".repeat(100);
        let e = err("controls.txt", controls.as_bytes());
        assert!(
            matches!(e, ExtractError::Unsupported(ref m) if m.contains("control")),
            "{e}"
        );
        // A few escape sequences in a log are still text.
        assert_eq!(
            ok("build.log", b"\x1b[31merror\x1b[0m: failed\n").format,
            Format::Text
        );
    }

    #[test]
    fn empty_and_blank_files_are_empty() {
        for (name, bytes) in [
            ("empty.txt", &b""[..]),
            ("empty.pdf", b""),
            ("blank.txt", b"  \n\t\r\n  \n"),
            ("blank.md", b"\n\n\n"),
            ("bom.txt", b"\xef\xbb\xbf"),
        ] {
            let e = err(name, bytes);
            assert!(matches!(e, ExtractError::Empty), "{name}: {e}");
            assert_eq!(e.code().as_str(), "empty_document");
        }
    }
}
