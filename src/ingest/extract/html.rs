//! HTML: the visible text (scripts, styles and hidden elements dropped), headings as sections;
//! a tolerant hand-written scanner that is linear on any input.

use std::borrow::Cow;

use super::*;

/// Elements whose content is never shown as text. Their content is skipped up to the matching
/// end tag without being parsed, which is also how browsers treat script and style.
#[rustfmt::skip]
const HTML_HIDDEN_ELEMENTS: &[&str] = &[
    "script", "style", "noscript", "template", "title", "textarea", "iframe", "noembed",
    "noframes", "xmp",
];
/// Elements that break text into paragraphs.
#[rustfmt::skip]
const HTML_BLOCK_ELEMENTS: &[&str] = &[
    "address", "article", "aside", "blockquote", "body", "caption", "details", "dialog", "div",
    "dl", "fieldset", "figcaption", "figure", "footer", "form", "header", "hgroup", "hr",
    "main", "nav", "ol", "p", "pre", "section", "summary", "table", "ul",
];
/// Elements that start a new line but not a new paragraph.
const HTML_LINE_ELEMENTS: &[&str] = &["li", "tr", "dt", "dd", "option", "thead", "tbody", "tfoot"];
/// The longest entity name in HTML5 is 31 characters (`&CounterClockwiseContourIntegral;`).
const MAX_HTML_ENTITY_LEN: usize = 32;

/// Extracts the visible text of an HTML document: markup and hidden elements are dropped,
/// whitespace is collapsed as a browser would (except in `<pre>`), entities are decoded, and
/// `<h1>`..`<h6>` start sections. A small tolerant tokenizer rather than a full HTML5 parser: it
/// only needs tags, comments and raw-text elements, and it cannot fail on malformed markup.
pub(super) fn html_sections(src: &str) -> Vec<Section> {
    let bytes = src.as_bytes();
    let mut html = HtmlText::default();
    let mut pos = 0usize;
    while pos < bytes.len() {
        let Some(lt) = bytes[pos..]
            .iter()
            .position(|&b| b == b'<')
            .map(|p| pos + p)
        else {
            html.text(&src[pos..]);
            break;
        };
        html.text(&src[pos..lt]);
        pos = match parse_markup(bytes, lt) {
            Markup::Skip(next) => next,
            Markup::Literal => {
                html.text("<");
                lt + 1
            }
            Markup::End { name, next } => {
                html.end_tag(&name);
                next
            }
            Markup::Start { name, next } => {
                if name == "head" {
                    skip_head(bytes, next)
                } else if HTML_HIDDEN_ELEMENTS.contains(&name.as_str()) {
                    skip_raw_text(bytes, next, &name)
                } else {
                    html.start_tag(&name);
                    next
                }
            }
        };
    }
    html.into_sections()
}

enum Markup {
    /// A comment, doctype, processing instruction or bogus tag; resume at the offset.
    Skip(usize),
    /// A `<` that starts no markup, shown as text.
    Literal,
    Start {
        name: String,
        next: usize,
    },
    End {
        name: String,
        next: usize,
    },
}

/// Parses the markup starting at `bytes[lt] == b'<'`. All offsets returned are on ASCII bytes,
/// so slicing the source `str` at them is always on a character boundary.
fn parse_markup(bytes: &[u8], lt: usize) -> Markup {
    let rest = &bytes[lt..];
    if rest.starts_with(b"<!--") {
        let end = find(bytes, lt + 4, b"-->").map_or(bytes.len(), |i| i + 3);
        return Markup::Skip(end);
    }
    match rest.get(1) {
        Some(b'!' | b'?') => Markup::Skip(skip_to_gt(bytes, lt + 2)),
        Some(b'/') => match rest.get(2) {
            Some(c) if c.is_ascii_alphabetic() => {
                let (name, after) = tag_name(bytes, lt + 2);
                Markup::End {
                    name,
                    next: skip_tag_rest(bytes, after),
                }
            }
            // `</>` and `</3` are bogus comments in HTML5.
            _ => Markup::Skip(skip_to_gt(bytes, lt + 2)),
        },
        Some(c) if c.is_ascii_alphabetic() => {
            let (name, after) = tag_name(bytes, lt + 1);
            Markup::Start {
                name,
                next: skip_tag_rest(bytes, after),
            }
        }
        _ => Markup::Literal,
    }
}

fn tag_name(bytes: &[u8], start: usize) -> (String, usize) {
    let len = bytes[start..]
        .iter()
        .position(|b| !(b.is_ascii_alphanumeric() || matches!(b, b'-' | b':' | b'_')))
        .unwrap_or(bytes.len() - start);
    let name = String::from_utf8_lossy(&bytes[start..start + len]).to_ascii_lowercase();
    (name, start + len)
}

/// Skips attributes up to the closing `>`, honouring quoted values (which may contain `>`).
fn skip_tag_rest(bytes: &[u8], mut i: usize) -> usize {
    let mut quote: Option<u8> = None;
    let mut last = 0u8;
    while i < bytes.len() {
        let b = bytes[i];
        match quote {
            Some(q) if b == q => quote = None,
            Some(_) => {}
            // A quote only opens a value right after `=`; elsewhere it is part of a name.
            None if (b == b'"' || b == b'\'') && last == b'=' => quote = Some(b),
            None if b == b'>' => return i + 1,
            None => {}
        }
        if !b.is_ascii_whitespace() {
            last = b;
        }
        i += 1;
    }
    bytes.len()
}

fn skip_to_gt(bytes: &[u8], from: usize) -> usize {
    find(bytes, from, b">").map_or(bytes.len(), |i| i + 1)
}

/// Skips the content of a raw-text element up to and including its end tag.
fn skip_raw_text(bytes: &[u8], from: usize, name: &str) -> usize {
    let end_tag = format!("</{name}");
    match find_ignore_case(bytes, from, end_tag.as_bytes()) {
        Some(i) => skip_to_gt(bytes, i + end_tag.len()),
        None => bytes.len(),
    }
}

/// Skips `<head>`: up to `</head>`, or up to `<body` when the end tag is omitted (as HTML
/// allows), whichever comes first.
/// One pass that stops at the first of the two, so the scanned bytes are never scanned again
/// (searching for each separately is quadratic on a page of repeated `<head></head>`).
fn skip_head(bytes: &[u8], from: usize) -> usize {
    let mut i = from;
    while let Some(lt) = find(bytes, i, b"<") {
        let rest = &bytes[lt..];
        if rest.len() >= 6 && rest[..6].eq_ignore_ascii_case(b"</head") {
            return skip_to_gt(bytes, lt + 6);
        }
        if rest.len() >= 5 && rest[..5].eq_ignore_ascii_case(b"<body") {
            return lt;
        }
        i = lt + 1;
    }
    bytes.len()
}

fn find(bytes: &[u8], from: usize, needle: &[u8]) -> Option<usize> {
    bytes
        .get(from..)?
        .windows(needle.len())
        .position(|w| w == needle)
        .map(|p| from + p)
}

fn find_ignore_case(bytes: &[u8], from: usize, needle: &[u8]) -> Option<usize> {
    bytes
        .get(from..)?
        .windows(needle.len())
        .position(|w| w.eq_ignore_ascii_case(needle))
        .map(|p| from + p)
}

/// Decodes `&name;`, `&#123;` and `&#x1F;`. Unknown or malformed references stay as written.
fn decode_entities(text: &str) -> Cow<'_, str> {
    if !text.contains('&') {
        return Cow::Borrowed(text);
    }
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(amp) = rest.find('&') {
        out.push_str(&rest[..amp]);
        rest = &rest[amp..];
        // `;` is ASCII, so slicing at it is always on a character boundary.
        let semi = rest.as_bytes()[1..]
            .iter()
            .take(MAX_HTML_ENTITY_LEN + 1)
            .position(|&b| b == b';');
        let decoded = semi.and_then(|semi| {
            let name = rest.get(1..1 + semi)?;
            let value = if let Some(number) = name.strip_prefix('#') {
                let code = match number.strip_prefix(['x', 'X']) {
                    Some(hex) => u32::from_str_radix(hex, 16).ok(),
                    None => number.parse::<u32>().ok(),
                }?;
                // NUL, surrogates and out-of-range values render as U+FFFD in browsers.
                let c = char::from_u32(code)
                    .filter(|&c| c != '\0')
                    .unwrap_or('\u{fffd}');
                Cow::Owned(c.to_string())
            } else {
                Cow::Borrowed(quick_xml::escape::resolve_html5_entity(name)?)
            };
            Some((value, semi + 2))
        });
        match decoded {
            Some((value, consumed)) => {
                out.push_str(&value);
                rest = &rest[consumed..];
            }
            None => {
                out.push('&');
                rest = &rest[1..];
            }
        }
    }
    out.push_str(rest);
    Cow::Owned(out)
}

/// The visible-text state of the HTML walk: pending separators are only written once the next
/// visible character arrives, so markup never leaves stray spaces or blank lines.
#[derive(Default)]
struct HtmlText {
    builder: SectionBuilder,
    pending_space: bool,
    /// Newlines owed before the next text: 1 for a line break, 2 for a paragraph break.
    pending_breaks: usize,
    pending_cell: bool,
    /// Inside `<pre>`, whitespace is content.
    pre_depth: usize,
    /// An open `<hN>`: its level and the raw text seen so far.
    heading: Option<(u8, String)>,
}

impl HtmlText {
    pub(super) fn text(&mut self, raw: &str) {
        if raw.is_empty() {
            return;
        }
        let decoded = decode_entities(raw);
        if let Some((_, title)) = self.heading.as_mut() {
            title.push_str(&decoded);
            return;
        }
        for c in decoded.chars() {
            if self.pre_depth == 0 && c.is_ascii_whitespace() {
                self.pending_space = true;
                continue;
            }
            self.flush_pending();
            // A non-breaking space is shown, not collapsed, but is a plain space to a reader.
            self.builder
                .current
                .push(if c == '\u{a0}' { ' ' } else { c });
        }
    }

    fn flush_pending(&mut self) {
        let current = &mut self.builder.current;
        if !current.is_empty() {
            if self.pending_breaks > 0 {
                let kept = current.trim_end_matches(' ').len();
                current.truncate(kept);
                let already = current.len() - current.trim_end_matches('\n').len();
                for _ in already..self.pending_breaks {
                    current.push('\n');
                }
            } else if self.pending_cell {
                current.push_str(" | ");
            } else if self.pending_space && !current.ends_with(['\n', ' ']) {
                current.push(' ');
            }
        }
        self.pending_space = false;
        self.pending_breaks = 0;
        self.pending_cell = false;
    }

    fn break_lines(&mut self, n: usize) {
        self.pending_breaks = self.pending_breaks.max(n);
        self.pending_cell = false;
    }

    fn start_tag(&mut self, name: &str) {
        if let Some(level) = heading_level(name) {
            // A heading cannot contain another; HTML parsers close the open one.
            self.close_heading();
            self.break_lines(2);
            self.heading = Some((level, String::new()));
            return;
        }
        // Block content inside a heading almost always means a missing `</hN>`; closing the
        // heading there keeps the rest of the page out of its title.
        if HTML_BLOCK_ELEMENTS.contains(&name) {
            self.close_heading();
        }
        match name {
            // Two `<br>` in a row make a blank line.
            "br" => self.pending_breaks = (self.pending_breaks + 1).min(2),
            "td" | "th" if self.pending_breaks == 0 => self.pending_cell = true,
            "img" | "input" => self.pending_space = true,
            _ => {}
        }
        if name == "pre" {
            self.pre_depth += 1;
        }
        if HTML_BLOCK_ELEMENTS.contains(&name) {
            self.break_lines(2);
        } else if HTML_LINE_ELEMENTS.contains(&name) {
            self.break_lines(1);
        }
    }

    fn end_tag(&mut self, name: &str) {
        if heading_level(name).is_some() {
            self.close_heading();
            return;
        }
        if name == "pre" {
            self.pre_depth = self.pre_depth.saturating_sub(1);
        }
        if HTML_BLOCK_ELEMENTS.contains(&name) {
            self.break_lines(2);
        } else if HTML_LINE_ELEMENTS.contains(&name) {
            self.break_lines(1);
        }
    }

    fn close_heading(&mut self) {
        if let Some((level, raw)) = self.heading.take() {
            let title = collapse_whitespace(&raw);
            if !title.is_empty() {
                self.builder.heading(level, title);
            }
            self.pending_space = false;
            self.pending_cell = false;
            self.pending_breaks = 2;
        }
    }

    pub(super) fn into_sections(mut self) -> Vec<Section> {
        // An unclosed heading at the end of the file still counts.
        self.close_heading();
        self.builder.into_sections()
    }
}

fn heading_level(name: &str) -> Option<u8> {
    match name.as_bytes() {
        [b'h', level @ b'1'..=b'6'] => Some(level - b'0'),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::super::test_support::*;
    use super::*;

    #[test]
    fn html_keeps_visible_text_and_headings() {
        let input = r#"<!DOCTYPE html>
<html><head><title>Not shown</title><style>p { color: red }</style>
<script>var x = "<h1>no</h1>";</script></head>
<body>
<noscript>Enable JavaScript</noscript>
<template><p>template text</p></template>
<!-- a comment <h1>no</h1> -->
<p>Before   any
heading &amp; more&nbsp;text &#8212; &#x41;&copy; &bogus; AT&T</p>
<h1>Main <em>Title</em></h1>
<p>First paragraph.<br>Second line.</p>
<script type="module">if (a < b) { document.write("</p>") }</script>
<h2>Sub</h2>
<ul><li>one</li><li>two</li></ul>
<table><tr><th>Name</th><th>Value</th></tr><tr><td>a</td><td>1</td></tr></table>
<pre>  keep   spacing
  here</pre>
<p title="x > y">Attr with gt</p>
<h1>Second</h1><div>Last words a < b</div>
</body></html>"#;
        let extracted = ok("page.html", input.as_bytes());
        assert_eq!(extracted.format, Format::Html);
        assert_eq!(
            paths(&extracted),
            vec![
                vec![],
                vec!["Main Title"],
                vec!["Main Title", "Sub"],
                vec!["Second"]
            ]
        );
        assert_eq!(
            texts(&extracted),
            [
                "Before any heading & more text — A© &bogus; AT&T",
                "Main Title\n\nFirst paragraph.\nSecond line.",
                "Sub\n\none\ntwo\n\nName | Value\na | 1\n\n  keep   spacing\n  here\n\nAttr with gt",
                "Second\n\nLast words a < b",
            ]
        );
    }

    #[test]
    fn html_unclosed_heading_does_not_swallow_the_page() {
        let extracted = ok(
            "broken.html",
            b"<h1>Title<p>Body text.</p><h2>Next</h2><p>More.</p>",
        );
        assert_eq!(
            paths(&extracted),
            vec![vec!["Title"], vec!["Title", "Next"]]
        );
        assert_eq!(texts(&extracted), ["Title\n\nBody text.", "Next\n\nMore."]);
        let long = format!("<h1>{}</h1><p>after</p>", "word ".repeat(100));
        let extracted = ok("long.html", long.as_bytes());
        assert!(extracted.sections.iter().all(|s| s.heading_path.is_empty()));
    }

    #[test]
    fn html_repeated_head_tags_are_linear() {
        // Quadratic scanning would take minutes on this; linear takes milliseconds.
        let page = format!("{}<body><p>end</p>", "<head></head>".repeat(200_000));
        let started = std::time::Instant::now();
        assert_eq!(texts(&ok("heads.html", page.as_bytes())), ["end"]);
        assert!(started.elapsed().as_secs() < 20, "{:?}", started.elapsed());
    }

    #[test]
    fn html_with_only_hidden_content_is_empty() {
        let e = err(
            "x.html",
            b"<html><head><title>t</title></head><body><script>x()</script></body></html>",
        );
        assert!(matches!(e, ExtractError::Empty), "{e}");
    }

    #[test]
    fn html_truncated_markup_does_not_fail() {
        let extracted = ok(
            "cut.html",
            "<p>Visible é</p><div class=\"unterminated".as_bytes(),
        );
        assert_eq!(texts(&extracted), ["Visible é"]);
        assert_eq!(texts(&ok("amp.html", "<p>&".as_bytes())), ["&"]);
        assert_eq!(texts(&ok("amp.html", "<p>é&é;</p>".as_bytes())), ["é&é;"]);
    }
}
