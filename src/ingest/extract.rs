//! Text extraction: turns the bytes of one uploaded or watched file into located runs of text.
//!
//! This module owns format detection and every per-format extractor (plain text, Markdown,
//! source code, JSON, HTML, PDF, DOCX). It exists so that the rest of ingestion (chunking,
//! embedding, indexing) only ever sees clean UTF-8 text with a page number and a heading path,
//! and never a placeholder: a file that cannot be read honestly is an `ExtractError`.
//!
//! The format is decided from the bytes first and the filename second, never from a client's
//! MIME type: magic bytes (`%PDF-`, a zip holding `word/document.xml`) win over the extension, a
//! `.pdf` or `.docx` whose bytes do not match is corrupt, and text formats are told apart by
//! extension and then by a light look at the content.
//!
//! Everything here is bounded by [`Limits`] and must not panic on any input. The one place that
//! runs third-party code known to panic on bad input (the PDF parser) is fenced: it runs on its
//! own thread with a large stack, inside `catch_unwind`, after a structural check that rejects
//! the reference cycles that would make it recurse forever.

use std::borrow::Cow;
use std::collections::{HashMap, HashSet};
use std::io::{self, BufReader, Cursor, Read};
use std::panic::{self, AssertUnwindSafe};

use crate::error_code::ErrorCode;
use pdf_extract::{Dictionary, Document, Object, ObjectId};
use pulldown_cmark::{Event as MdEvent, Options as MdOptions, Parser as MdParser, Tag, TagEnd};
use quick_xml::events::{BytesStart, Event as XmlEvent};
use zip::result::ZipError;
use zip::ZipArchive;

/// The kind of document a file was recognised as. It decides how text is pulled out and, later,
/// which splitter chunks it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Format {
    Text,
    Markdown,
    Code,
    Json,
    Html,
    Pdf,
    Docx,
}

impl Format {
    /// A stable lowercase name, suitable for storage and for API responses.
    pub fn as_str(&self) -> &'static str {
        match self {
            Format::Text => "text",
            Format::Markdown => "markdown",
            Format::Code => "code",
            Format::Json => "json",
            Format::Html => "html",
            Format::Pdf => "pdf",
            Format::Docx => "docx",
        }
    }
}

/// The text of one document, in reading order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Extracted {
    pub format: Format,
    /// Never empty, and no section's text is blank: an extraction that finds no text is
    /// `ExtractError::Empty` instead.
    pub sections: Vec<Section>,
}

/// A run of text with its location: PDF pages give one section per page; headings in
/// Markdown/HTML/DOCX start new sections.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Section {
    /// 1-based physical page number (not the printed page label); `None` for formats without
    /// pages.
    pub page: Option<u32>,
    /// Titles of the enclosing headings, outermost first, ending with the heading that opened
    /// this section (which is also the first line of `text`). Empty before the first heading.
    pub heading_path: Vec<String>,
    /// Normalised text: no BOM, `\n` line endings, at most two blank lines in a row, no blank
    /// lines at either end. Otherwise verbatim, so offsets computed on it are the ones stored.
    pub text: String,
}

/// Why a file produced no text. Each variant maps to a stable `code()` for the API.
#[derive(Debug, thiserror::Error)]
pub enum ExtractError {
    /// A format hearth does not read (images, spreadsheets, binary data, encrypted files).
    #[error("unsupported format: {0}")]
    Unsupported(String),
    /// The file is empty, or has no text once extracted (for example a scanned PDF).
    #[error("document has no text")]
    Empty,
    /// The bytes claim a format but do not parse as it.
    #[error("corrupt document: {0}")]
    Corrupt(String),
    /// The file itself is over `Limits::max_bytes`.
    #[error("file is {size} bytes, over the limit of {limit}")]
    TooLarge { size: u64, limit: u64 },
    /// A PDF with more pages than `Limits::max_pages`.
    #[error("document has {pages} pages, over the limit of {limit}")]
    TooManyPages { pages: u64, limit: u32 },
    /// The extracted text is over `Limits::max_text_bytes`.
    #[error("extracted text is over the limit of {limit} bytes")]
    TextTooLarge { limit: usize },
    /// A part inside a DOCX unpacks to more than `Limits::max_unpacked_bytes` (a zip bomb, or a
    /// document far larger than any we index).
    #[error("{part} unpacks to more than {limit} bytes")]
    UnpackedTooLarge { part: &'static str, limit: u64 },
}

impl ExtractError {
    /// A stable machine-readable code. Every size limit shares `file_too_large` so that callers
    /// map one code to one response; the message says which limit it was.
    pub fn code(&self) -> ErrorCode {
        match self {
            ExtractError::Unsupported(_) => ErrorCode::UnsupportedFormat,
            ExtractError::Empty => ErrorCode::EmptyDocument,
            ExtractError::Corrupt(_) => ErrorCode::CorruptDocument,
            ExtractError::TooLarge { .. }
            | ExtractError::TooManyPages { .. }
            | ExtractError::TextTooLarge { .. }
            | ExtractError::UnpackedTooLarge { .. } => ErrorCode::FileTooLarge,
        }
    }
}

/// Bounds on one extraction, so that a single file can neither exhaust memory nor occupy the
/// ingest worker for long.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Size of the input file.
    pub max_bytes: u64,
    /// Pages in a PDF. Checked before any page is rendered to text.
    pub max_pages: u32,
    /// Bytes of extracted text (the sum of all sections).
    pub max_text_bytes: usize,
    /// Bytes a DOCX's XML part may unpack to. Compression makes the file size a poor bound: a
    /// deflated XML part can be a thousand times larger than its compressed form.
    pub max_unpacked_bytes: u64,
}

impl Default for Limits {
    /// 64 MiB of file covers book-length PDFs and DOCX files with images; 2000 pages is beyond
    /// any document people ask questions about and keeps a PDF's extraction to minutes at worst;
    /// 32 MiB of text is about 8 million embedder tokens, i.e. ~35 000 chunks; 256 MiB of
    /// unpacked XML is ~10x the `document.xml` of a 2000-page Word file.
    fn default() -> Self {
        Limits {
            max_bytes: 64 * 1024 * 1024,
            max_pages: 2000,
            max_text_bytes: 32 * 1024 * 1024,
            max_unpacked_bytes: 256 * 1024 * 1024,
        }
    }
}

/// Extracts the text of `bytes`, using `filename` only as a hint (see the module docs).
pub fn extract(filename: &str, bytes: &[u8], limits: &Limits) -> Result<Extracted, ExtractError> {
    let size = u64::try_from(bytes.len()).unwrap_or(u64::MAX);
    if size > limits.max_bytes {
        return Err(ExtractError::TooLarge {
            size,
            limit: limits.max_bytes,
        });
    }
    if bytes.is_empty() {
        return Err(ExtractError::Empty);
    }
    let name = FileName::parse(filename);

    let (format, sections) = match sniff_container(&name, bytes)? {
        Container::Pdf => (Format::Pdf, extract_pdf(bytes, limits)?),
        Container::Docx => (Format::Docx, extract_docx(bytes, limits)?),
        Container::None => {
            let text = normalize(&decode_text(bytes)?);
            let format = text_format(&name, &text);
            (format, text_sections(format, &text, limits)?)
        }
    };
    finish(format, sections, limits)
}

// === format detection ===

/// PDF readers accept junk before the header within the first KiB (Acrobat does), so a file
/// named `.pdf` is searched that far; any other file must start with the header, so that a text
/// file that merely mentions `%PDF-` is not taken for one.
const PDF_HEADER_WINDOW: usize = 1024;
const PDF_MAGIC: &[u8] = b"%PDF-";
/// A local file header; every non-empty zip (and so every DOCX) starts with it.
const ZIP_MAGIC: &[u8] = b"PK\x03\x04";
/// An end-of-central-directory record at offset 0: the empty zip archive.
const EMPTY_ZIP_MAGIC: &[u8] = b"PK\x05\x06";
const DOCX_BODY_PART: &str = "word/document.xml";
const DOCX_STYLES_PART: &str = "word/styles.xml";

/// The lowercased extension and base name of the client's filename.
struct FileName {
    base: String,
    ext: String,
}

impl FileName {
    fn parse(filename: &str) -> FileName {
        let base = filename
            .rsplit(['/', '\\'])
            .next()
            .unwrap_or(filename)
            .to_ascii_lowercase();
        // A leading dot names a hidden file (`.bashrc`), not an extension.
        let ext = match base.rsplit_once('.') {
            Some((stem, ext)) if !stem.is_empty() => ext.to_string(),
            _ => String::new(),
        };
        FileName { base, ext }
    }
}

enum Container {
    Pdf,
    Docx,
    /// Not a binary container: the bytes must be text.
    None,
}

/// Decides PDF or DOCX from the magic bytes, and rejects a `.pdf`/`.docx` name on other bytes.
fn sniff_container(name: &FileName, bytes: &[u8]) -> Result<Container, ExtractError> {
    let pdf_window = if name.ext == "pdf" {
        PDF_HEADER_WINDOW
    } else {
        PDF_MAGIC.len()
    };
    let head = &bytes[..bytes.len().min(pdf_window)];
    if head.windows(PDF_MAGIC.len()).any(|w| w == PDF_MAGIC) {
        return Ok(Container::Pdf);
    }
    if bytes.starts_with(ZIP_MAGIC) || bytes.starts_with(EMPTY_ZIP_MAGIC) {
        return sniff_zip(bytes);
    }
    match name.ext.as_str() {
        "pdf" => Err(ExtractError::Corrupt(
            "file named .pdf has no %PDF- header".into(),
        )),
        "docx" => Err(ExtractError::Corrupt(
            "file named .docx is not a zip archive".into(),
        )),
        ext if UNSUPPORTED_EXTENSIONS.contains(&ext) => Err(ExtractError::Unsupported(format!(
            ".{ext} files are not supported"
        ))),
        _ => Ok(Container::None),
    }
}

/// Formats with a known extension that we do not read. Most are binary and would be rejected as
/// such anyway; RTF and PostScript are text but would be indexed as markup noise.
#[rustfmt::skip]
const UNSUPPORTED_EXTENSIONS: &[&str] = &[
    "doc", "xls", "ppt", "rtf", "ps", "eps", "odt", "ods", "odp", "xlsx", "pptx", "epub",
];

fn sniff_zip(bytes: &[u8]) -> Result<Container, ExtractError> {
    let archive = ZipArchive::new(Cursor::new(bytes)).map_err(|e| zip_error("zip archive", e))?;
    if archive.index_for_name(DOCX_BODY_PART).is_some() {
        return Ok(Container::Docx);
    }
    // Name the office formats people will actually drop in, so the error is actionable.
    let what = if archive.index_for_name("xl/workbook.xml").is_some() {
        "xlsx spreadsheets are not supported"
    } else if archive.index_for_name("ppt/presentation.xml").is_some() {
        "pptx presentations are not supported"
    } else if archive.index_for_name("mimetype").is_some() {
        "OpenDocument and EPUB files are not supported"
    } else {
        "zip archives (other than docx) are not supported"
    };
    Err(ExtractError::Unsupported(what.into()))
}

fn zip_error(what: &str, error: ZipError) -> ExtractError {
    match error {
        ZipError::UnsupportedArchive(_)
        | ZipError::CompressionMethodNotSupported(_)
        | ZipError::InvalidPassword => ExtractError::Unsupported(format!("{what}: {error}")),
        _ => ExtractError::Corrupt(format!("{what}: {error}")),
    }
}

const MARKDOWN_EXTENSIONS: &[&str] = &["md", "markdown", "mdown", "mkd", "mkdn", "mdx"];
const HTML_EXTENSIONS: &[&str] = &["html", "htm", "xhtml"];
const JSON_EXTENSIONS: &[&str] = &["json", "geojson", "ipynb", "webmanifest"];
#[rustfmt::skip]
const CODE_EXTENSIONS: &[&str] = &[
    "rs", "py", "pyi", "js", "mjs", "cjs", "ts", "mts", "cts", "tsx", "jsx", "go", "java", "c",
    "h", "cc", "cpp", "cxx", "hpp", "hh", "hxx", "cs", "rb", "php", "swift", "kt", "kts",
    "scala", "sc", "sh", "bash", "zsh", "fish", "ps1", "bat", "cmd", "sql", "toml", "yaml",
    "yml", "ini", "cfg", "conf", "properties", "env", "css", "scss", "sass", "less", "xml",
    "xsd", "xsl", "lua", "r", "m", "mm", "pl", "pm", "hs", "ex", "exs", "erl", "hrl", "clj",
    "cljs", "cljc", "edn", "dart", "vue", "svelte", "zig", "nim", "jl", "ml", "mli", "fs",
    "fsx", "f90", "proto", "graphql", "gql", "tf", "hcl", "gradle", "groovy", "cmake", "mk",
    "dockerfile", "vim", "el", "lisp", "scm", "rkt", "v", "sv", "vhd", "asm", "s", "jsonc",
    "json5", "diff", "patch",
];
/// Conventional source files that have no extension.
#[rustfmt::skip]
const CODE_FILE_NAMES: &[&str] = &[
    "makefile", "gnumakefile", "dockerfile", "containerfile", "rakefile", "gemfile", "justfile",
    "vagrantfile", "jenkinsfile", "cmakelists.txt", ".bashrc", ".zshrc", ".profile",
];

/// Picks the text format: a known extension decides; otherwise (`.txt`, no extension, anything
/// else) the content may still be recognisably HTML or JSON.
fn text_format(name: &FileName, text: &str) -> Format {
    let ext = name.ext.as_str();
    if CODE_FILE_NAMES.contains(&name.base.as_str()) {
        return Format::Code;
    }
    if MARKDOWN_EXTENSIONS.contains(&ext) {
        return Format::Markdown;
    }
    if HTML_EXTENSIONS.contains(&ext) {
        return Format::Html;
    }
    if JSON_EXTENSIONS.contains(&ext) {
        return Format::Json;
    }
    if CODE_EXTENSIONS.contains(&ext) {
        return Format::Code;
    }
    let start = text.trim_start();
    if starts_with_ignore_case(start, "<!doctype html") || starts_with_ignore_case(start, "<html") {
        return Format::Html;
    }
    if (start.starts_with('{') || start.starts_with('['))
        && serde_json::from_str::<serde::de::IgnoredAny>(text).is_ok()
    {
        return Format::Json;
    }
    Format::Text
}

fn starts_with_ignore_case(text: &str, prefix: &str) -> bool {
    text.as_bytes()
        .get(..prefix.len())
        .is_some_and(|head| head.eq_ignore_ascii_case(prefix.as_bytes()))
}

// === text decoding and normalisation ===

/// A text file in which more than this percentage of characters are control characters (other
/// than tab, newline, carriage return and form feed) is binary data that happens to be valid
/// UTF-8. Real text has almost none; logs with colour escapes stay under ~3%.
const MAX_CONTROL_CHAR_PERCENT: usize = 10;
const UTF8_BOM: char = '\u{feff}';

/// Turns the bytes of a text file into a `String`, rejecting binary data. UTF-8 is the contract;
/// UTF-16 is accepted only with a byte order mark, as Windows tools write it.
fn decode_text(bytes: &[u8]) -> Result<String, ExtractError> {
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
fn normalize(text: &str) -> String {
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
fn finish(
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
fn check_text_size(len: usize, limits: &Limits) -> Result<(), ExtractError> {
    if len > limits.max_text_bytes {
        return Err(ExtractError::TextTooLarge {
            limit: limits.max_text_bytes,
        });
    }
    Ok(())
}

fn text_sections(
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

fn plain_section(text: String) -> Section {
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
struct SectionBuilder {
    sections: Vec<Section>,
    /// Open headings as (level, title); a new heading pops every entry at its level or deeper.
    /// Levels are 0 for a document title and 1..=9 for headings.
    stack: Vec<(u8, String)>,
    current: String,
}

impl SectionBuilder {
    fn heading(&mut self, level: u8, title: String) {
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
    fn block(&mut self, text: &str) {
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

    fn into_sections(mut self) -> Vec<Section> {
        self.finish_section();
        self.sections
    }
}

/// The longest text taken as a heading title. Real titles are a line; this is several.
const MAX_HEADING_BYTES: usize = 300;

/// Collapses runs of whitespace to one space and trims, as a browser renders a heading.
fn collapse_whitespace(text: &str) -> String {
    text.split_whitespace().collect::<Vec<_>>().join(" ")
}

// === Markdown ===

/// Splits at top-level ATX and setext headings (found with a real CommonMark parser, so `#` in
/// code blocks and front matter does not count). Section text is the Markdown source itself,
/// heading line included, so the Markdown-aware splitter still sees the structure.
fn markdown_sections(text: &str) -> Vec<Section> {
    // Without metadata blocks, YAML front matter's closing `---` would turn its last line into a
    // setext heading.
    let options = MdOptions::ENABLE_YAML_STYLE_METADATA_BLOCKS
        | MdOptions::ENABLE_TABLES
        | MdOptions::ENABLE_STRIKETHROUGH
        | MdOptions::ENABLE_FOOTNOTES;
    // (byte offset where the heading starts, level, title)
    let mut headings: Vec<(usize, u8, String)> = Vec::new();
    let mut depth = 0usize;
    let mut open: Option<(usize, u8, String)> = None;
    for (event, range) in MdParser::new_ext(text, options).into_offset_iter() {
        match event {
            MdEvent::Start(Tag::Heading { level, .. }) if depth == 0 => {
                // `HeadingLevel` is H1..H6, whose discriminants are 1..=6.
                open = Some((range.start, level as u8, String::new()));
                depth += 1;
            }
            MdEvent::Start(_) => depth += 1,
            MdEvent::End(TagEnd::Heading(_)) if depth == 1 && open.is_some() => {
                depth = 0;
                if let Some((start, level, title)) = open.take() {
                    let title = collapse_whitespace(&title);
                    if !title.is_empty() && title.len() <= MAX_HEADING_BYTES {
                        headings.push((start, level, title));
                    }
                }
            }
            MdEvent::End(_) => depth = depth.saturating_sub(1),
            MdEvent::Text(t) | MdEvent::Code(t) => {
                if let Some((_, _, title)) = open.as_mut() {
                    title.push_str(&t);
                }
            }
            MdEvent::SoftBreak | MdEvent::HardBreak => {
                if let Some((_, _, title)) = open.as_mut() {
                    title.push(' ');
                }
            }
            _ => {}
        }
    }

    let mut sections = Vec::with_capacity(headings.len() + 1);
    let mut stack: Vec<(u8, String)> = Vec::new();
    let first_start = headings.first().map_or(text.len(), |(start, _, _)| *start);
    if let Some(prelude) = text.get(..first_start) {
        sections.push(plain_section(prelude.to_string()));
    }
    for (i, (start, level, title)) in headings.iter().enumerate() {
        let end = headings.get(i + 1).map_or(text.len(), |(next, _, _)| *next);
        while stack.last().is_some_and(|(open, _)| open >= level) {
            stack.pop();
        }
        stack.push((*level, title.clone()));
        if let Some(body) = text.get(*start..end) {
            sections.push(Section {
                page: None,
                heading_path: stack.iter().map(|(_, t)| t.clone()).collect(),
                text: body.to_string(),
            });
        }
    }
    sections
}

// === JSON ===

/// Validates with serde_json (which also bounds nesting depth) and re-indents by two spaces
/// without building a value tree, so key order and the exact spelling of strings and numbers are
/// kept.
fn pretty_json(text: &str, limits: &Limits) -> Result<String, ExtractError> {
    if let Err(e) = serde_json::from_str::<serde::de::IgnoredAny>(text) {
        return Err(ExtractError::Corrupt(format!("invalid json: {e}")));
    }
    let bytes = text.as_bytes();
    let mut out = String::with_capacity(text.len() + text.len() / 2);
    let mut indent = 0usize;
    let newline = |out: &mut String, indent: usize| {
        out.push('\n');
        for _ in 0..indent {
            out.push_str("  ");
        }
    };
    let mut i = 0usize;
    while i < bytes.len() {
        // Indentation can multiply the size of deeply nested compact JSON, so check as we go.
        check_text_size(out.len(), limits)?;
        match bytes[i] {
            b'"' => {
                let start = i;
                i += 1;
                while i < bytes.len() {
                    match bytes[i] {
                        b'\\' => i += 2,
                        b'"' => {
                            i += 1;
                            break;
                        }
                        _ => i += 1,
                    }
                }
                out.push_str(text.get(start..i.min(bytes.len())).unwrap_or_default());
                continue;
            }
            open @ (b'{' | b'[') => {
                let close = if open == b'{' { '}' } else { ']' };
                let next = bytes[i + 1..]
                    .iter()
                    .position(|b| !b.is_ascii_whitespace())
                    .map(|p| i + 1 + p);
                out.push(char::from(open));
                if next.is_some_and(|j| bytes[j] == close as u8) {
                    out.push(close);
                    i = next.map_or(bytes.len(), |j| j + 1);
                    continue;
                }
                indent += 1;
                newline(&mut out, indent);
            }
            close @ (b'}' | b']') => {
                indent = indent.saturating_sub(1);
                newline(&mut out, indent);
                out.push(char::from(close));
            }
            b',' => {
                out.push(',');
                newline(&mut out, indent);
            }
            b':' => out.push_str(": "),
            b' ' | b'\t' | b'\n' | b'\r' => {}
            _ => {
                // A number or a literal (`true`, `false`, `null`): ASCII up to a delimiter.
                let start = i;
                while i < bytes.len()
                    && !matches!(
                        bytes[i],
                        b',' | b'}' | b']' | b':' | b'"' | b' ' | b'\t' | b'\n' | b'\r'
                    )
                {
                    i += 1;
                }
                out.push_str(text.get(start..i).unwrap_or_default());
                continue;
            }
        }
        i += 1;
    }
    Ok(out)
}

// === HTML ===

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
fn html_sections(src: &str) -> Vec<Section> {
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
    fn text(&mut self, raw: &str) {
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

    fn into_sections(mut self) -> Vec<Section> {
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

// === PDF ===

/// The PDF parser recurses on nested objects and content streams, and is deepest in debug
/// builds. A stack overflow aborts the whole daemon (it cannot be caught), so it gets a stack
/// far beyond the 2 MiB default. Only the pages it touches are committed.
const PDF_STACK_BYTES: usize = 256 * 1024 * 1024;
/// Page-tree `Parent` chains longer than this are malformed (lopdf stops walking the tree at the
/// same depth); the text extractor would follow a cyclic chain forever.
const MAX_PAGE_TREE_DEPTH: usize = 256;
/// Form XObjects nested deeper than this are malformed; real documents use a few levels.
const MAX_FORM_DEPTH: usize = 32;
/// Visits of form XObjects (with repetition) across the document. The text extractor has no
/// memo, so a document over this would make it do at least as much work.
const MAX_FORM_VISITS: usize = 20_000;

/// Extracts one section per page. The parser runs on a dedicated thread with a large stack, and
/// a panic in it becomes `Corrupt` (pdf-extract `unwrap`s its way through malformed input).
fn extract_pdf(bytes: &[u8], limits: &Limits) -> Result<Vec<Section>, ExtractError> {
    std::thread::scope(|scope| {
        let spawned = std::thread::Builder::new()
            .name("pdf-extract".into())
            .stack_size(PDF_STACK_BYTES)
            .spawn_scoped(scope, || caught_pdf_sections(bytes, limits));
        match spawned {
            Ok(handle) => handle.join().unwrap_or_else(|payload| {
                Err(ExtractError::Corrupt(format!(
                    "pdf: {}",
                    panic_message(&*payload)
                )))
            }),
            // No thread to be had (a resource limit): the caught run on this thread still keeps
            // panics in, only without the deeper stack.
            Err(_) => caught_pdf_sections(bytes, limits),
        }
    })
}

fn caught_pdf_sections(bytes: &[u8], limits: &Limits) -> Result<Vec<Section>, ExtractError> {
    match panic::catch_unwind(AssertUnwindSafe(|| pdf_sections(bytes, limits))) {
        Ok(result) => result,
        Err(payload) => Err(ExtractError::Corrupt(format!(
            "pdf: {}",
            panic_message(&*payload)
        ))),
    }
}

fn panic_message(payload: &(dyn std::any::Any + Send)) -> String {
    let message = payload
        .downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| payload.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "unknown failure".into());
    format!("parser failed: {message}")
}

fn pdf_sections(bytes: &[u8], limits: &Limits) -> Result<Vec<Section>, ExtractError> {
    let mut doc =
        Document::load_mem(bytes).map_err(|e| ExtractError::Corrupt(format!("pdf: {e}")))?;
    if doc.is_encrypted() && doc.decrypt("").is_err() {
        return Err(ExtractError::Unsupported("password-protected pdf".into()));
    }
    let pages = doc.get_pages();
    let count = u64::try_from(pages.len()).unwrap_or(u64::MAX);
    if count > u64::from(limits.max_pages) {
        return Err(ExtractError::TooManyPages {
            pages: count,
            limit: limits.max_pages,
        });
    }
    if pages.is_empty() {
        return Err(ExtractError::Corrupt("pdf: no pages found".into()));
    }
    check_pdf_structure(&doc, pages.values().copied())?;

    let mut sections = Vec::with_capacity(pages.len());
    let mut total = 0usize;
    for &number in pages.keys() {
        let mut text = String::new();
        // A panic on one page names the page; the whole document still fails.
        let rendered = panic::catch_unwind(AssertUnwindSafe(|| {
            let mut output = pdf_extract::PlainTextOutput::new(&mut text);
            pdf_extract::output_doc_page(&doc, &mut output, number)
        }));
        match rendered {
            Ok(Ok(())) => {}
            Ok(Err(e)) => return Err(ExtractError::Corrupt(format!("pdf page {number}: {e}"))),
            Err(payload) => {
                return Err(ExtractError::Corrupt(format!(
                    "pdf page {number}: {}",
                    panic_message(&*payload)
                )));
            }
        }
        total = total.saturating_add(text.len());
        check_text_size(total, limits)?;
        sections.push(Section {
            page: Some(number),
            heading_path: Vec::new(),
            text,
        });
    }
    Ok(sections)
}

/// Rejects the reference cycles on which the text extractor would recurse without end: a page
/// whose `Parent` chain loops (it walks the chain for inherited `Resources` and `MediaBox`), and a
/// form XObject that draws itself, directly or through others (it recurses on `Do`).
fn check_pdf_structure(
    doc: &Document,
    pages: impl Iterator<Item = ObjectId>,
) -> Result<(), ExtractError> {
    let mut forms = FormCheck {
        doc,
        visits: 0,
        acyclic: HashSet::new(),
    };
    for page in pages {
        let mut seen = HashSet::from([page]);
        let mut node = page;
        let mut resources = None;
        for depth in 0.. {
            if depth > MAX_PAGE_TREE_DEPTH {
                return Err(ExtractError::Corrupt("pdf: page tree is too deep".into()));
            }
            let Ok(dict) = doc.get_dictionary(node) else {
                break;
            };
            if resources.is_none() {
                resources = dict.get(b"Resources").ok().and_then(|r| deref_dict(doc, r));
            }
            let Ok(parent) = dict.get(b"Parent").and_then(Object::as_reference) else {
                break;
            };
            if !seen.insert(parent) {
                return Err(ExtractError::Corrupt("pdf: page tree has a cycle".into()));
            }
            node = parent;
        }
        if let Some(resources) = resources {
            forms.check(resources, None, &mut Vec::new())?;
        }
    }
    Ok(())
}

fn deref_dict<'a>(doc: &'a Document, object: &'a Object) -> Option<&'a Dictionary> {
    doc.dereference(object)
        .ok()
        .and_then(|(_, o)| o.as_dict().ok())
}

struct FormCheck<'a> {
    doc: &'a Document,
    visits: usize,
    /// Forms with their own `Resources` already shown to be cycle-free. Forms without inherit
    /// their caller's resources, so their verdict depends on the caller and is not memoised.
    acyclic: HashSet<ObjectId>,
}

impl<'a> FormCheck<'a> {
    /// Follows the form XObjects named in `resources` (all of them at page level, where the page
    /// content is not parsed; only those a form actually draws below that), mirroring how the
    /// text extractor resolves `Do`.
    fn check(
        &mut self,
        resources: &'a Dictionary,
        drawn: Option<&HashSet<Vec<u8>>>,
        path: &mut Vec<ObjectId>,
    ) -> Result<(), ExtractError> {
        let Some(xobjects) = resources
            .get(b"XObject")
            .ok()
            .and_then(|x| deref_dict(self.doc, x))
        else {
            return Ok(());
        };
        for (name, object) in xobjects.iter() {
            if drawn.is_some_and(|drawn| !drawn.contains(name)) {
                continue;
            }
            let Ok(id) = object.as_reference() else {
                continue;
            };
            if path.contains(&id) {
                return Err(ExtractError::Corrupt(
                    "pdf: a form xobject draws itself".into(),
                ));
            }
            if self.acyclic.contains(&id) {
                continue;
            }
            let Ok(Object::Stream(form)) = self.doc.get_object(id) else {
                continue;
            };
            if form
                .dict
                .get(b"Subtype")
                .and_then(Object::as_name)
                .is_ok_and(|s| s == b"Image")
            {
                continue;
            }
            self.visits += 1;
            if self.visits > MAX_FORM_VISITS || path.len() >= MAX_FORM_DEPTH {
                return Err(ExtractError::Corrupt(
                    "pdf: form xobjects nest too deeply".into(),
                ));
            }
            let content = form
                .decompressed_content()
                .unwrap_or_else(|_| form.content.clone());
            // Content the extractor cannot decode fails there, with its own error.
            let Ok(content) = pdf_extract::content::Content::decode(&content) else {
                continue;
            };
            let names: HashSet<Vec<u8>> = content
                .operations
                .iter()
                .filter(|op| op.operator == "Do")
                .filter_map(|op| op.operands.first()?.as_name().ok().map(<[u8]>::to_vec))
                .collect();
            let own = form
                .dict
                .get(b"Resources")
                .ok()
                .and_then(|r| deref_dict(self.doc, r));
            path.push(id);
            self.check(own.unwrap_or(resources), Some(&names), path)?;
            path.pop();
            if own.is_some() {
                self.acyclic.insert(id);
            }
        }
        Ok(())
    }
}

// === DOCX ===

/// Heading levels: a `Title` paragraph sits above `Heading 1`.
const TITLE_LEVEL: u8 = 0;
/// `w:outlineLvl` 0..=8 are heading levels 1..=9; 9 means body text.
const MAX_OUTLINE_LEVEL: u8 = 8;
/// `w:basedOn` chains longer than this are malformed (Word itself nests a handful).
const MAX_STYLE_CHAIN: usize = 16;

fn extract_docx(bytes: &[u8], limits: &Limits) -> Result<Vec<Section>, ExtractError> {
    let mut archive = ZipArchive::new(Cursor::new(bytes)).map_err(|e| zip_error("docx", e))?;
    let styles = match archive.by_name(DOCX_STYLES_PART) {
        Ok(part) => heading_styles(xml_reader(part, limits.max_unpacked_bytes), limits)?,
        // Styles are optional; heading detection then falls back to the built-in style ids.
        Err(ZipError::FileNotFound) => HashMap::new(),
        Err(e) => return Err(zip_error(DOCX_STYLES_PART, e)),
    };
    let part = archive
        .by_name(DOCX_BODY_PART)
        .map_err(|e| zip_error(DOCX_BODY_PART, e))?;
    let mut reader = xml_reader(part, limits.max_unpacked_bytes);
    let mut walker = DocxWalker {
        styles,
        ..DocxWalker::default()
    };
    let mut buf = Vec::new();
    loop {
        let event = match reader.read_event_into(&mut buf) {
            Ok(event) => event,
            Err(e) => {
                return Err(xml_error(
                    DOCX_BODY_PART,
                    &e,
                    reader.get_ref().get_ref(),
                    limits,
                ));
            }
        };
        match event {
            XmlEvent::Eof => break,
            XmlEvent::Start(e) => walker.start(&e, false),
            XmlEvent::Empty(e) => walker.start(&e, true),
            XmlEvent::End(e) => walker.end(e.local_name().as_ref()),
            XmlEvent::Text(t) => walker.text(&t),
            XmlEvent::CData(t) => walker.text(&t),
            XmlEvent::GeneralRef(r) => {
                let resolved = match r.resolve_char_ref() {
                    Ok(Some(c)) => Some(Cow::Owned(c.to_string())),
                    Ok(None) => quick_xml::escape::resolve_xml_entity(&r).map(Cow::Borrowed),
                    Err(_) => None,
                };
                if let Some(text) = resolved {
                    walker.text(&text);
                }
            }
            _ => {}
        }
        check_text_size(walker.text_len, limits)?;
        buf.clear();
    }
    Ok(walker.into_sections())
}

/// A reader that fails once more than `remaining` bytes come through, so a zip bomb costs at
/// most the limit in time and nothing in memory (parts are parsed as they stream).
struct CappedReader<R> {
    inner: R,
    remaining: u64,
    exceeded: bool,
}

impl<R: Read> Read for CappedReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        // Ask for one byte past the budget so that "exactly at the limit" still succeeds.
        let want = buf
            .len()
            .min(usize::try_from(self.remaining.saturating_add(1)).unwrap_or(usize::MAX));
        let n = self.inner.read(&mut buf[..want])?;
        let n64 = u64::try_from(n).unwrap_or(u64::MAX);
        if n64 > self.remaining {
            self.exceeded = true;
            return Err(io::Error::other("unpacked size limit exceeded"));
        }
        self.remaining -= n64;
        Ok(n)
    }
}

type XmlReader<R> = quick_xml::Reader<BufReader<CappedReader<R>>>;

fn xml_reader<R: Read>(part: R, limit: u64) -> XmlReader<R> {
    let capped = CappedReader {
        inner: part,
        remaining: limit,
        exceeded: false,
    };
    quick_xml::Reader::from_reader(BufReader::new(capped))
}

fn xml_error<R>(
    part: &'static str,
    error: &quick_xml::Error,
    capped: &CappedReader<R>,
    limits: &Limits,
) -> ExtractError {
    if capped.exceeded {
        return ExtractError::UnpackedTooLarge {
            part,
            limit: limits.max_unpacked_bytes,
        };
    }
    ExtractError::Corrupt(format!("{part}: {error}"))
}

fn local_name(e: &BytesStart<'_>) -> String {
    e.local_name().as_ref().to_string()
}

/// An attribute's value with entities resolved; `None` if it is malformed.
fn attribute_value(attribute: &quick_xml::events::attributes::Attribute<'_>) -> Option<String> {
    attribute
        .normalized_value(quick_xml::XmlVersion::Implicit1_0)
        .ok()
        .map(Cow::into_owned)
}

/// The first `val` attribute of an element, whatever its namespace prefix.
fn val_attribute(e: &BytesStart<'_>) -> Option<String> {
    e.attributes()
        .flatten()
        .find_map(|a| (a.key.local_name().as_ref() == "val").then(|| attribute_value(&a))?)
}

/// Reads `word/styles.xml` into a map from paragraph style id to heading level. A style is a
/// heading if its name is `Title` or `heading N` (Word writes built-in names in English whatever
/// the UI language, while ids are localised, e.g. `berschrift1`), or if it or a style it is based
/// on sets an outline level.
fn heading_styles<R: Read>(
    mut reader: XmlReader<R>,
    limits: &Limits,
) -> Result<HashMap<String, u8>, ExtractError> {
    #[derive(Default)]
    struct Style {
        name: Option<String>,
        based_on: Option<String>,
        outline: Option<u8>,
    }
    let mut styles: HashMap<String, Style> = HashMap::new();
    let mut current: Option<(String, Style)> = None;
    let mut buf = Vec::new();
    loop {
        let event = match reader.read_event_into(&mut buf) {
            Ok(event) => event,
            Err(e) => {
                return Err(xml_error(
                    DOCX_STYLES_PART,
                    &e,
                    reader.get_ref().get_ref(),
                    limits,
                ));
            }
        };
        match event {
            XmlEvent::Eof => break,
            XmlEvent::Start(e) | XmlEvent::Empty(e) => match local_name(&e).as_str() {
                "style" => {
                    let id = e.attributes().flatten().find_map(|a| {
                        (a.key.local_name().as_ref() == "styleId").then(|| attribute_value(&a))?
                    });
                    if let Some(id) = id {
                        current = Some((id, Style::default()));
                    }
                }
                "name" => {
                    if let Some((_, style)) = current.as_mut() {
                        style.name = val_attribute(&e);
                    }
                }
                "basedOn" => {
                    if let Some((_, style)) = current.as_mut() {
                        style.based_on = val_attribute(&e);
                    }
                }
                "outlineLvl" => {
                    if let Some((_, style)) = current.as_mut() {
                        style.outline = val_attribute(&e).and_then(|v| v.parse().ok());
                    }
                }
                _ => {}
            },
            XmlEvent::End(e) if e.local_name().as_ref() == "style" => {
                if let Some((id, style)) = current.take() {
                    styles.insert(id, style);
                }
            }
            _ => {}
        }
        buf.clear();
    }

    let level_of = |id: &str| -> Option<u8> {
        let mut id = id.to_string();
        for _ in 0..MAX_STYLE_CHAIN {
            let style = styles.get(&id)?;
            if let Some(outline) = style.outline {
                return (outline <= MAX_OUTLINE_LEVEL).then(|| outline + 1);
            }
            if let Some(level) = style.name.as_deref().and_then(heading_name_level) {
                return Some(level);
            }
            id = style.based_on.clone()?;
        }
        None
    };
    Ok(styles
        .keys()
        .filter_map(|id| Some((id.clone(), level_of(id)?)))
        .collect())
}

/// `Title` and `heading 1`..`heading 9` (style names), or the ids `Title`/`Heading1`.
fn heading_name_level(name: &str) -> Option<u8> {
    let lower = name.to_ascii_lowercase();
    if lower == "title" {
        return Some(TITLE_LEVEL);
    }
    let digits = lower.strip_prefix("heading")?.trim_start();
    match digits.as_bytes() {
        [d @ b'1'..=b'9'] => Some(d - b'0'),
        _ => None,
    }
}

/// Walks `word/document.xml`. Paragraphs (`w:p`) become blocks; a heading-styled paragraph
/// outside a table starts a section; a table becomes one line per row with ` | ` between cells.
/// Only `w:t` text is kept, which drops field instructions (`w:instrText`) and deleted text
/// (`w:delText`); `mc:Fallback` repeats its `mc:Choice` and is skipped, as are tracked moves'
/// old positions (`w:moveFrom`).
#[derive(Default)]
struct DocxWalker {
    styles: HashMap<String, u8>,
    builder: SectionBuilder,
    /// Open paragraphs, innermost last: a text box inside a paragraph holds paragraphs of its own.
    paragraphs: Vec<Paragraph>,
    tables: Vec<Table>,
    in_text: bool,
    /// Open runs (`w:r`). `w:tab` and `w:br` are content only inside a run; `w:tab` also
    /// defines tab stops in paragraph properties.
    runs: usize,
    /// Depth inside a skipped subtree; 0 when not skipping.
    skip_depth: usize,
    text_len: usize,
}

#[derive(Default)]
struct Paragraph {
    text: String,
    level: Option<u8>,
}

#[derive(Default)]
struct Table {
    rows: Vec<String>,
    cells: Vec<String>,
    cell: Option<String>,
}

impl DocxWalker {
    fn start(&mut self, e: &BytesStart<'_>, empty: bool) {
        let name = local_name(e);
        if self.skip_depth > 0 {
            if !empty {
                self.skip_depth += 1;
            }
            return;
        }
        match name.as_str() {
            "Fallback" | "moveFrom" if !empty => self.skip_depth = 1,
            "p" if !empty => self.paragraphs.push(Paragraph::default()),
            "t" if !empty => self.in_text = true,
            "r" if !empty => self.runs += 1,
            "tab" if self.runs > 0 => self.push_text("\t"),
            "br" | "cr" if self.runs > 0 => self.push_text("\n"),
            "noBreakHyphen" if self.runs > 0 => self.push_text("-"),
            "pStyle" => {
                let level = val_attribute(e).and_then(|id| {
                    self.styles
                        .get(&id)
                        .copied()
                        .or_else(|| heading_name_level(&id))
                });
                if let (Some(level), Some(p)) = (level, self.paragraphs.last_mut()) {
                    p.level = Some(level);
                }
            }
            "outlineLvl" => {
                let level = val_attribute(e).and_then(|v| v.parse::<u8>().ok());
                if let (Some(level), Some(p)) = (level, self.paragraphs.last_mut()) {
                    p.level = (level <= MAX_OUTLINE_LEVEL).then(|| level + 1);
                }
            }
            "tbl" if !empty => self.tables.push(Table::default()),
            "tr" if !empty => {
                if let Some(table) = self.tables.last_mut() {
                    table.cells.clear();
                }
            }
            "tc" if !empty => {
                if let Some(table) = self.tables.last_mut() {
                    table.cell = Some(String::new());
                }
            }
            _ => {}
        }
    }

    fn end(&mut self, name: &str) {
        if self.skip_depth > 0 {
            self.skip_depth -= 1;
            return;
        }
        match name {
            "t" => self.in_text = false,
            "r" => self.runs = self.runs.saturating_sub(1),
            "p" => {
                if let Some(paragraph) = self.paragraphs.pop() {
                    self.paragraph(paragraph);
                }
            }
            "tc" => {
                if let Some(table) = self.tables.last_mut() {
                    table.cells.extend(table.cell.take());
                }
            }
            "tr" => {
                if let Some(table) = self.tables.last_mut() {
                    if table.cells.iter().any(|c| !c.trim().is_empty()) {
                        let row = table.cells.join(" | ");
                        table.rows.push(row);
                    }
                    table.cells.clear();
                }
            }
            "tbl" => {
                if let Some(table) = self.tables.pop() {
                    let text = table.rows.join("\n");
                    if !text.trim().is_empty() {
                        self.block(&text);
                    }
                }
            }
            _ => {}
        }
    }

    fn text(&mut self, text: &str) {
        if self.in_text && self.skip_depth == 0 {
            self.push_text(text);
        }
    }

    fn push_text(&mut self, text: &str) {
        if self.skip_depth > 0 {
            return;
        }
        if let Some(p) = self.paragraphs.last_mut() {
            p.text.push_str(text);
            self.text_len = self.text_len.saturating_add(text.len());
        }
    }

    fn paragraph(&mut self, paragraph: Paragraph) {
        let text = paragraph.text.trim();
        if text.is_empty() {
            return;
        }
        match paragraph.level {
            // Headings inside tables are table text, not document structure.
            Some(level) if self.tables.is_empty() => {
                let title = collapse_whitespace(text);
                self.builder.heading(level, title);
            }
            _ => self.block(text),
        }
    }

    /// Places a finished paragraph or table: into the open table cell if there is one (cells
    /// hold paragraphs and nested tables), else into the current section.
    fn block(&mut self, text: &str) {
        if let Some(cell) = self.tables.last_mut().and_then(|t| t.cell.as_mut()) {
            if !cell.is_empty() {
                cell.push(' ');
            }
            cell.push_str(&collapse_whitespace(text));
            return;
        }
        self.builder.block(text);
    }

    fn into_sections(self) -> Vec<Section> {
        self.builder.into_sections()
    }
}

#[cfg(test)]
mod tests {
    use std::io::Write;

    use super::*;

    fn ok(filename: &str, bytes: &[u8]) -> Extracted {
        match extract(filename, bytes, &Limits::default()) {
            Ok(extracted) => extracted,
            Err(e) => panic!("{filename}: unexpected error: {e}"),
        }
    }

    fn err(filename: &str, bytes: &[u8]) -> ExtractError {
        err_with(filename, bytes, &Limits::default())
    }

    fn err_with(filename: &str, bytes: &[u8], limits: &Limits) -> ExtractError {
        match extract(filename, bytes, limits) {
            Ok(extracted) => panic!("{filename}: expected an error, got {extracted:?}"),
            Err(e) => e,
        }
    }

    fn texts(extracted: &Extracted) -> Vec<&str> {
        extracted.sections.iter().map(|s| s.text.as_str()).collect()
    }

    fn paths(extracted: &Extracted) -> Vec<Vec<&str>> {
        extracted
            .sections
            .iter()
            .map(|s| s.heading_path.iter().map(String::as_str).collect())
            .collect()
    }

    // --- fixtures ---

    /// One PDF object's body, e.g. `<< /Type /Catalog /Pages 2 0 R >>`, or a content stream.
    enum Obj {
        Dict(String),
        Stream(String),
        /// A stream with extra dictionary entries, e.g. a form XObject's `/Subtype /Form`.
        StreamWith(&'static str, String),
    }

    /// Assembles a PDF from numbered objects (1-based, in order) with a correct xref table, so
    /// tests control every byte without a PDF-writing dependency.
    fn assemble_pdf(objects: &[Obj]) -> Vec<u8> {
        let mut out = b"%PDF-1.4\n%\xe2\xe3\xcf\xd3\n".to_vec();
        let mut offsets = Vec::new();
        for (i, object) in objects.iter().enumerate() {
            offsets.push(out.len());
            let body = match object {
                Obj::Dict(dict) => dict.clone(),
                Obj::Stream(content) => {
                    format!(
                        "<< /Length {} >>\nstream\n{content}\nendstream",
                        content.len()
                    )
                }
                Obj::StreamWith(entries, content) => format!(
                    "<< {entries} /Length {} >>\nstream\n{content}\nendstream",
                    content.len()
                ),
            };
            out.extend_from_slice(format!("{} 0 obj\n{body}\nendobj\n", i + 1).as_bytes());
        }
        let xref = out.len();
        out.extend_from_slice(
            format!("xref\n0 {}\n0000000000 65535 f \n", objects.len() + 1).as_bytes(),
        );
        for offset in offsets {
            out.extend_from_slice(format!("{offset:010} 00000 n \n").as_bytes());
        }
        out.extend_from_slice(
            format!(
                "trailer\n<< /Size {} /Root 1 0 R >>\nstartxref\n{xref}\n%%EOF\n",
                objects.len() + 1
            )
            .as_bytes(),
        );
        out
    }

    fn pdf_string(text: &str) -> String {
        text.replace('\\', "\\\\")
            .replace('(', "\\(")
            .replace(')', "\\)")
    }

    /// A text PDF: one page per entry, each line drawn in Helvetica one below the other.
    fn make_pdf(pages: &[&[&str]]) -> Vec<u8> {
        let n = pages.len();
        let kids: Vec<String> = (0..n).map(|i| format!("{} 0 R", 4 + 2 * i)).collect();
        let mut objects =
            vec![
            Obj::Dict("<< /Type /Catalog /Pages 2 0 R >>".into()),
            Obj::Dict(format!("<< /Type /Pages /Kids [{}] /Count {n} >>", kids.join(" "))),
            Obj::Dict(
                "<< /Type /Font /Subtype /Type1 /BaseFont /Helvetica /Encoding /WinAnsiEncoding >>"
                    .into(),
            ),
        ];
        for (i, lines) in pages.iter().enumerate() {
            objects.push(Obj::Dict(format!(
                "<< /Type /Page /Parent 2 0 R /MediaBox [0 0 612 792] \
                 /Resources << /Font << /F1 3 0 R >> >> /Contents {} 0 R >>",
                5 + 2 * i
            )));
            let mut content = String::from("BT /F1 12 Tf 72 720 Td 14 TL\n");
            for line in lines.iter() {
                content.push_str(&format!("({}) Tj T*\n", pdf_string(line)));
            }
            content.push_str("ET");
            objects.push(Obj::Stream(content));
        }
        assemble_pdf(&objects)
    }

    fn zip_of(files: &[(&str, &str)]) -> Vec<u8> {
        let mut writer = zip::ZipWriter::new(Cursor::new(Vec::new()));
        let options = zip::write::SimpleFileOptions::default()
            .compression_method(zip::CompressionMethod::Deflated);
        for (name, content) in files {
            writer.start_file(*name, options).expect("start zip entry");
            writer
                .write_all(content.as_bytes())
                .expect("write zip entry");
        }
        writer.finish().expect("finish zip").into_inner()
    }

    const W_NS: &str = r#"xmlns:w="http://schemas.openxmlformats.org/wordprocessingml/2006/main" xmlns:mc="http://schemas.openxmlformats.org/markup-compatibility/2006""#;

    fn docx_with(body: &str, styles: Option<&str>) -> Vec<u8> {
        let document = format!(
            r#"<?xml version="1.0" encoding="UTF-8" standalone="yes"?><w:document {W_NS}><w:body>{body}</w:body></w:document>"#
        );
        let mut files = vec![
            ("[Content_Types].xml", r#"<?xml version="1.0"?><Types xmlns="http://schemas.openxmlformats.org/package/2006/content-types"/>"#.to_string()),
            (DOCX_BODY_PART, document),
        ];
        if let Some(styles) = styles {
            files.push((
                DOCX_STYLES_PART,
                format!(r#"<?xml version="1.0"?><w:styles {W_NS}>{styles}</w:styles>"#),
            ));
        }
        let refs: Vec<(&str, &str)> = files.iter().map(|(n, c)| (*n, c.as_str())).collect();
        zip_of(&refs)
    }

    fn para(style: Option<&str>, text: &str) -> String {
        let ppr = style.map_or(String::new(), |s| {
            format!(r#"<w:pPr><w:pStyle w:val="{s}"/><w:tabs><w:tab w:val="left" w:pos="720"/></w:tabs></w:pPr>"#)
        });
        format!(r#"<w:p>{ppr}<w:r><w:t xml:space="preserve">{text}</w:t></w:r></w:p>"#)
    }

    // --- text, Markdown, code, JSON ---

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
    fn markdown_headings_nest_and_ignore_code_and_front_matter() {
        let input = "---\ntitle: Front matter\n---\n\nIntro paragraph.\n\n# Guide\n\nWelcome.\n\n\
                     ## Install\n\nRun it.\n\n```sh\n# not a heading\n```\n\n### On Linux\n\napt.\n\n\
                     ## Usage `cli`\n\nUse it.\n\n> # quoted, not a section\n\nSetext Top\n==========\n\nEnd.\n";
        let extracted = ok("README.md", input.as_bytes());
        assert_eq!(extracted.format, Format::Markdown);
        assert_eq!(
            paths(&extracted),
            vec![
                vec![],
                vec!["Guide"],
                vec!["Guide", "Install"],
                vec!["Guide", "Install", "On Linux"],
                vec!["Guide", "Usage cli"],
                vec!["Setext Top"],
            ]
        );
        assert_eq!(
            texts(&extracted),
            [
                "---\ntitle: Front matter\n---\n\nIntro paragraph.",
                "# Guide\n\nWelcome.",
                "## Install\n\nRun it.\n\n```sh\n# not a heading\n```",
                "### On Linux\n\napt.",
                "## Usage `cli`\n\nUse it.\n\n> # quoted, not a section",
                "Setext Top\n==========\n\nEnd.",
            ]
        );
    }

    #[test]
    fn json_is_pretty_printed_keeping_order_and_spelling() {
        let input =
            r#"{"b":1,"a":[1.50,2e3,{"c":"x,y:{}[] \"q\""}],"e":{},"f":[ ],"g":null,"h":true}"#;
        let extracted = ok("data.json", input.as_bytes());
        assert_eq!(extracted.format, Format::Json);
        let expected = r#"{
  "b": 1,
  "a": [
    1.50,
    2e3,
    {
      "c": "x,y:{}[] \"q\""
    }
  ],
  "e": {},
  "f": [],
  "g": null,
  "h": true
}"#;
        assert_eq!(texts(&extracted), [expected]);
    }

    #[test]
    fn json_is_sniffed_only_when_it_parses() {
        assert_eq!(ok("export", br#"[{"k":"v"}]"#).format, Format::Json);
        assert_eq!(
            ok("notes.txt", b"[not json] but a note").format,
            Format::Text
        );
        let e = err("bad.json", br#"{"a":"#);
        assert!(matches!(e, ExtractError::Corrupt(_)), "{e}");
    }

    #[test]
    fn json_indentation_is_bounded_by_the_text_limit() {
        // Compact but deeply nested JSON grows with indentation; it must hit the limit, not memory.
        let input = format!("{}{}", "[".repeat(100), "]".repeat(100)).repeat(50);
        let input = format!("[{}]", input.replace("][", "],["));
        let limits = Limits {
            max_text_bytes: 4096,
            ..Limits::default()
        };
        let e = err_with("deep.json", input.as_bytes(), &limits);
        assert!(matches!(e, ExtractError::TextTooLarge { .. }), "{e}");
    }

    #[test]
    fn code_is_kept_verbatim_with_indentation() {
        let input = "\n\n    fn main() {\n        println!(\"hi\");\n    }\n";
        let extracted = ok("src/main.rs", input.as_bytes());
        assert_eq!(extracted.format, Format::Code);
        assert_eq!(
            texts(&extracted),
            ["    fn main() {\n        println!(\"hi\");\n    }"]
        );
        assert_eq!(ok("Makefile", b"all:\n\tcc x.c").format, Format::Code);
        assert_eq!(ok("config.YAML", b"a: 1").format, Format::Code);
    }

    // --- HTML ---

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
    fn html_is_sniffed_from_content_without_extension() {
        let extracted = ok("saved", b"  <!doctype HTML><p>Hello</p>");
        assert_eq!(extracted.format, Format::Html);
        assert_eq!(texts(&extracted), ["Hello"]);
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

    // --- PDF ---

    #[test]
    fn pdf_gives_one_section_per_page_with_page_numbers() {
        let pdf = make_pdf(&[
            &["The first page talks about apples.", "Apples are red."],
            &["The second page covers bananas."],
            &["The third page (last) is about cherries."],
        ]);
        let extracted = ok("fruit.pdf", &pdf);
        assert_eq!(extracted.format, Format::Pdf);
        let pages: Vec<Option<u32>> = extracted.sections.iter().map(|s| s.page).collect();
        assert_eq!(pages, [Some(1), Some(2), Some(3)]);
        let t = texts(&extracted);
        assert!(
            t[0].contains("The first page talks about apples.") && t[0].contains("Apples are red."),
            "{t:?}"
        );
        assert!(t[1].contains("The second page covers bananas."), "{t:?}");
        assert!(
            t[2].contains("The third page (last) is about cherries."),
            "{t:?}"
        );
        assert!(extracted.sections.iter().all(|s| s.heading_path.is_empty()));
    }

    #[test]
    fn pdf_blank_pages_are_dropped_and_numbering_is_kept() {
        let pdf = make_pdf(&[&["Page one text."], &[], &["Page three text."]]);
        let pages: Vec<Option<u32>> = ok("gap.pdf", &pdf)
            .sections
            .iter()
            .map(|s| s.page)
            .collect();
        assert_eq!(pages, [Some(1), Some(3)]);
    }

    #[test]
    fn pdf_without_text_is_empty() {
        // What a scanned document looks like to a text extractor: pages, no text operators.
        let e = err("scan.pdf", &make_pdf(&[&[], &[]]));
        assert!(matches!(e, ExtractError::Empty), "{e}");
    }

    #[test]
    fn pdf_magic_wins_over_the_extension() {
        let pdf = make_pdf(&[&["Hidden PDF."]]);
        let extracted = ok("renamed.txt", &pdf);
        assert_eq!(extracted.format, Format::Pdf);
        assert!(extracted.sections[0].text.contains("Hidden PDF."));
    }

    #[test]
    fn pdf_name_on_other_bytes_is_corrupt() {
        let e = err("fake.pdf", b"just some text pretending");
        assert!(matches!(e, ExtractError::Corrupt(_)), "{e}");
        assert_eq!(e.code().as_str(), "corrupt_document");
    }

    #[test]
    fn corrupt_pdfs_are_errors_not_panics() {
        let pdf = make_pdf(&[&["Some text here."], &["More text."]]);
        let cases: Vec<(&str, Vec<u8>)> = vec![
            ("truncated", pdf[..pdf.len() / 2].to_vec()),
            (
                "garbage",
                b"%PDF-1.7\n\x00\x01\x02 garbage that is not a pdf \xff\xfe".to_vec(),
            ),
            ("header only", b"%PDF-".to_vec()),
            ("no xref", pdf[..pdf.len() - 40].to_vec()),
        ];
        for (what, bytes) in cases {
            match extract("broken.pdf", &bytes, &Limits::default()) {
                Err(ExtractError::Corrupt(_)) => {}
                other => panic!("{what}: expected Corrupt, got {other:?}"),
            }
        }
    }

    #[test]
    fn pdf_parser_panics_are_caught() {
        // No MediaBox anywhere: pdf-extract `expect`s one and panics.
        let pdf = assemble_pdf(&[
            Obj::Dict("<< /Type /Catalog /Pages 2 0 R >>".into()),
            Obj::Dict("<< /Type /Pages /Kids [3 0 R] /Count 1 >>".into()),
            Obj::Dict("<< /Type /Page /Parent 2 0 R /Contents 4 0 R >>".into()),
            Obj::Stream("BT ET".into()),
        ]);
        let e = err("nomediabox.pdf", &pdf);
        assert!(
            matches!(e, ExtractError::Corrupt(ref m) if m.contains("page 1")),
            "{e}"
        );
    }

    #[test]
    fn pdf_page_tree_cycle_is_rejected() {
        // The Pages node's Parent is the page: the extractor would look for the missing MediaBox
        // up this chain forever (a stack overflow, which would abort the process).
        let pdf = assemble_pdf(&[
            Obj::Dict("<< /Type /Catalog /Pages 2 0 R >>".into()),
            Obj::Dict("<< /Type /Pages /Kids [3 0 R] /Count 1 /Parent 3 0 R >>".into()),
            Obj::Dict("<< /Type /Page /Parent 2 0 R /Contents 4 0 R >>".into()),
            Obj::Stream("BT ET".into()),
        ]);
        let e = err("cycle.pdf", &pdf);
        assert!(
            matches!(e, ExtractError::Corrupt(ref m) if m.contains("cycle")),
            "{e}"
        );
    }

    #[test]
    fn pdf_self_drawing_form_is_rejected() {
        // Form 5 draws itself through the page's resources, which it inherits.
        let pdf = assemble_pdf(&[
            Obj::Dict("<< /Type /Catalog /Pages 2 0 R >>".into()),
            Obj::Dict("<< /Type /Pages /Kids [3 0 R] /Count 1 >>".into()),
            Obj::Dict(
                "<< /Type /Page /Parent 2 0 R /MediaBox [0 0 612 792] \
                 /Resources << /XObject << /X1 5 0 R >> >> /Contents 4 0 R >>"
                    .into(),
            ),
            Obj::Stream("/X1 Do".into()),
            Obj::StreamWith(
                "/Type /XObject /Subtype /Form /BBox [0 0 10 10]",
                "/X1 Do".into(),
            ),
        ]);
        let e = err("loop.pdf", &pdf);
        assert!(
            matches!(e, ExtractError::Corrupt(ref m) if m.contains("draws itself")),
            "{e}"
        );
    }

    #[test]
    fn pdf_form_that_does_not_recurse_is_fine() {
        // A form without its own resources that draws nothing must not be taken for a cycle.
        let pdf = assemble_pdf(&[
            Obj::Dict("<< /Type /Catalog /Pages 2 0 R >>".into()),
            Obj::Dict("<< /Type /Pages /Kids [3 0 R] /Count 1 >>".into()),
            Obj::Dict(
                "<< /Type /Page /Parent 2 0 R /MediaBox [0 0 612 792] /Resources << \
                 /Font << /F1 6 0 R >> /XObject << /X1 5 0 R >> >> /Contents 4 0 R >>"
                    .into(),
            ),
            Obj::Stream("/X1 Do".into()),
            Obj::StreamWith(
                "/Type /XObject /Subtype /Form /BBox [0 0 500 500]",
                "BT /F1 12 Tf 72 72 Td (In a form) Tj ET".into(),
            ),
            Obj::Dict("<< /Type /Font /Subtype /Type1 /BaseFont /Helvetica >>".into()),
        ]);
        let extracted = ok("form.pdf", &pdf);
        assert!(
            extracted.sections[0].text.contains("In a form"),
            "{extracted:?}"
        );
    }

    #[test]
    fn pdf_page_limit() {
        let pdf = make_pdf(&[&["a"], &["b"], &["c"]]);
        let limits = Limits {
            max_pages: 2,
            ..Limits::default()
        };
        let e = err_with("long.pdf", &pdf, &limits);
        assert!(
            matches!(e, ExtractError::TooManyPages { pages: 3, limit: 2 }),
            "{e}"
        );
        assert_eq!(e.code().as_str(), "file_too_large");
    }

    #[test]
    fn pdf_fifty_pages_in_order() {
        let lines: Vec<String> = (1..=50)
            .map(|i| format!("This is sentence number {i}."))
            .collect();
        let pages: Vec<[&str; 1]> = lines.iter().map(|l| [l.as_str()]).collect();
        let pages: Vec<&[&str]> = pages.iter().map(|p| p.as_slice()).collect();
        let extracted = ok("fifty.pdf", &make_pdf(&pages));
        assert_eq!(extracted.sections.len(), 50);
        for (i, section) in extracted.sections.iter().enumerate() {
            assert_eq!(section.page, Some(u32::try_from(i + 1).unwrap_or(0)));
            assert!(
                section
                    .text
                    .contains(&format!("sentence number {}.", i + 1)),
                "{section:?}"
            );
        }
    }

    // --- DOCX ---

    #[test]
    fn docx_paragraphs_headings_and_tables() {
        let body = [
            para(Some("Title"), "Annual Report"),
            para(None, "Preface text."),
            para(Some("Heading1"), "Introduction"),
            // A field: the instruction is not text, its result is.
            r#"<w:p><w:r><w:t>See page </w:t></w:r><w:r><w:fldChar w:fldCharType="begin"/></w:r><w:r><w:instrText xml:space="preserve"> PAGEREF _Toc1 \h </w:instrText></w:r><w:r><w:fldChar w:fldCharType="separate"/></w:r><w:r><w:t>7</w:t></w:r><w:r><w:fldChar w:fldCharType="end"/></w:r><w:r><w:t xml:space="preserve"> for A&amp;B</w:t><w:tab/><w:t>tabbed</w:t></w:r></w:p>"#.to_string(),
            // Tracked deletion, and a drawing whose VML fallback repeats the text box.
            r#"<w:p><w:r><w:t>Kept</w:t></w:r><w:del><w:r><w:delText>Deleted</w:delText></w:r></w:del><w:r><mc:AlternateContent><mc:Choice Requires="wps"><w:drawing><w:txbxContent><w:p><w:r><w:t>Boxed once</w:t></w:r></w:p></w:txbxContent></w:drawing></mc:Choice><mc:Fallback><w:pict><w:txbxContent><w:p><w:r><w:t>Boxed once</w:t></w:r></w:p></w:txbxContent></w:pict></mc:Fallback></mc:AlternateContent></w:r></w:p>"#.to_string(),
            para(Some("Heading2"), "Figures"),
            format!(
                "<w:tbl><w:tblPr/><w:tr><w:tc>{}</w:tc><w:tc>{}</w:tc></w:tr><w:tr><w:tc>{}{}</w:tc><w:tc>{}</w:tc></w:tr></w:tbl>",
                para(None, "Region"), para(None, "Sales"),
                para(None, "North"), para(Some("Heading1"), "not a heading in a cell"), para(None, "42"),
            ),
            para(None, "After the table."),
            para(Some("Heading1"), "Conclusion"),
            para(None, "Done."),
        ]
        .concat();
        let extracted = ok("report.docx", &docx_with(&body, None));
        assert_eq!(extracted.format, Format::Docx);
        assert_eq!(
            paths(&extracted),
            vec![
                vec!["Annual Report"],
                vec!["Annual Report", "Introduction"],
                vec!["Annual Report", "Introduction", "Figures"],
                vec!["Annual Report", "Conclusion"],
            ]
        );
        assert_eq!(
            texts(&extracted),
            [
                "Annual Report\n\nPreface text.",
                "Introduction\n\nSee page 7 for A&B\ttabbed\n\nBoxed once\n\nKept",
                "Figures\n\nRegion | Sales\nNorth not a heading in a cell | 42\n\nAfter the table.",
                "Conclusion\n\nDone.",
            ]
        );
    }

    #[test]
    fn docx_headings_from_localised_style_ids() {
        let styles = r#"<w:style w:type="paragraph" w:styleId="berschrift1"><w:name w:val="heading 1"/><w:basedOn w:val="Standard"/><w:pPr><w:outlineLvl w:val="0"/></w:pPr></w:style>
            <w:style w:type="paragraph" w:styleId="MeineUeberschrift"><w:name w:val="Meine"/><w:basedOn w:val="berschrift2"/></w:style>
            <w:style w:type="paragraph" w:styleId="berschrift2"><w:name w:val="heading 2"/></w:style>
            <w:style w:type="paragraph" w:styleId="Standard"><w:name w:val="Normal"/></w:style>"#;
        let body = [
            para(Some("berschrift1"), "Kapitel"),
            para(Some("Standard"), "Text."),
            para(Some("MeineUeberschrift"), "Abschnitt"),
            para(None, "Mehr."),
        ]
        .concat();
        let extracted = ok("de.docx", &docx_with(&body, Some(styles)));
        assert_eq!(
            paths(&extracted),
            vec![vec!["Kapitel"], vec!["Kapitel", "Abschnitt"]]
        );
        assert_eq!(
            texts(&extracted),
            ["Kapitel\n\nText.", "Abschnitt\n\nMehr."]
        );
    }

    #[test]
    fn docx_out_of_range_outline_level_is_body_text() {
        let body =
            r#"<w:p><w:pPr><w:outlineLvl w:val="255"/></w:pPr><w:r><w:t>Body</w:t></w:r></w:p>"#;
        let styles = r#"<w:style w:type="paragraph" w:styleId="Odd"><w:pPr><w:outlineLvl w:val="255"/></w:pPr></w:style>"#;
        let body = format!("{body}{}", para(Some("Odd"), "Also body"));
        let extracted = ok("odd.docx", &docx_with(&body, Some(styles)));
        assert_eq!(paths(&extracted), vec![Vec::<&str>::new()]);
        assert_eq!(texts(&extracted), ["Body\n\nAlso body"]);
    }

    #[test]
    fn docx_without_text_is_empty() {
        let e = err(
            "blank.docx",
            &docx_with("<w:p/><w:p><w:r><w:t>   </w:t></w:r></w:p>", None),
        );
        assert!(matches!(e, ExtractError::Empty), "{e}");
    }

    #[test]
    fn docx_broken_xml_is_corrupt() {
        let bytes = zip_of(&[(DOCX_BODY_PART, "<w:document><w:body><w:p></w:body>")]);
        let e = err("broken.docx", &bytes);
        assert!(matches!(e, ExtractError::Corrupt(_)), "{e}");
    }

    #[test]
    fn docx_unpacked_size_is_bounded() {
        let filler = para(None, &"x".repeat(1000)).repeat(200);
        let bytes = docx_with(&filler, None);
        let limits = Limits {
            max_unpacked_bytes: 64 * 1024,
            ..Limits::default()
        };
        let e = err_with("bomb.docx", &bytes, &limits);
        assert!(matches!(e, ExtractError::UnpackedTooLarge { .. }), "{e}");
        assert_eq!(e.code().as_str(), "file_too_large");
    }

    #[test]
    fn truncated_docx_is_corrupt() {
        let bytes = docx_with(&para(None, "hello"), None);
        let e = err("cut.docx", &bytes[..bytes.len() - 30]);
        assert!(matches!(e, ExtractError::Corrupt(_)), "{e}");
    }

    #[test]
    fn zips_that_are_not_docx_are_unsupported() {
        for name in ["archive.zip", "renamed.docx", "notes.txt"] {
            let e = err(name, &zip_of(&[("readme.txt", "hello")]));
            assert!(matches!(e, ExtractError::Unsupported(_)), "{name}: {e}");
            assert_eq!(e.code().as_str(), "unsupported_format");
        }
        let e = err("book.xlsx", &zip_of(&[("xl/workbook.xml", "<workbook/>")]));
        assert!(
            matches!(e, ExtractError::Unsupported(ref m) if m.contains("xlsx")),
            "{e}"
        );
        let e = err(
            "empty.zip",
            b"PK\x05\x06\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0",
        );
        assert!(matches!(e, ExtractError::Unsupported(_)), "{e}");
    }

    #[test]
    fn docx_name_on_other_bytes_is_corrupt() {
        let e = err("letter.docx", b"plain text");
        assert!(matches!(e, ExtractError::Corrupt(_)), "{e}");
    }

    // --- rejects ---

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

    #[test]
    fn size_limits() {
        let limits = Limits {
            max_bytes: 10,
            ..Limits::default()
        };
        let e = err_with("big.txt", b"12345678901", &limits);
        assert!(
            matches!(
                e,
                ExtractError::TooLarge {
                    size: 11,
                    limit: 10
                }
            ),
            "{e}"
        );
        assert_eq!(e.code().as_str(), "file_too_large");
        assert!(extract("ok.txt", b"1234567890", &limits).is_ok());

        let limits = Limits {
            max_text_bytes: 8,
            ..Limits::default()
        };
        let e = err_with("wordy.txt", b"more than eight bytes", &limits);
        assert!(matches!(e, ExtractError::TextTooLarge { limit: 8 }), "{e}");
    }

    #[test]
    fn unsupported_extensions_are_named() {
        let e = err("letter.rtf", br"{\rtf1\ansi hello}");
        assert!(
            matches!(e, ExtractError::Unsupported(ref m) if m.contains(".rtf")),
            "{e}"
        );
    }

    #[test]
    fn error_messages_are_lowercase_without_trailing_period() {
        let errors = [
            ExtractError::Unsupported("x".into()),
            ExtractError::Empty,
            ExtractError::Corrupt("x".into()),
            ExtractError::TooLarge { size: 2, limit: 1 },
            ExtractError::TooManyPages { pages: 2, limit: 1 },
            ExtractError::TextTooLarge { limit: 1 },
            ExtractError::UnpackedTooLarge {
                part: DOCX_BODY_PART,
                limit: 1,
            },
        ];
        for e in errors {
            let message = e.to_string();
            assert!(message.starts_with(|c: char| c.is_lowercase()), "{message}");
            assert!(!message.ends_with('.'), "{message}");
        }
    }

    #[test]
    fn extraction_is_deterministic() {
        let pdf = make_pdf(&[&["Same every time."], &["Page two."]]);
        assert_eq!(ok("a.pdf", &pdf), ok("a.pdf", &pdf));
        let docx = docx_with(&para(Some("Heading1"), "H"), None);
        assert_eq!(ok("a.docx", &docx), ok("a.docx", &docx));
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
}
