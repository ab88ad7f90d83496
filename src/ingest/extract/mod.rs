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
//!
//! One file per format (`text.rs`, `markdown.rs`, `json.rs`, `html.rs`, `pdf.rs`, `docx.rs`), the
//! detection in `sniff.rs`; this file has the types and [`extract`], which ties them together.

mod docx;
mod html;
mod json;
mod markdown;
mod pdf;
#[cfg(any(test, feature = "bench"))]
pub(crate) mod pdf_fixture;
mod sniff;
#[cfg(test)]
mod test_support;
mod text;

use self::{docx::*, html::*, json::*, markdown::*, pdf::*, sniff::*, text::*};
use crate::error_code::ErrorCode;

/// The kind of document a file was recognised as. It decides how text is pulled out and, later,
/// which splitter chunks it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
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
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Extracted {
    pub format: Format,
    /// Never empty, and no section's text is blank: an extraction that finds no text is
    /// `ExtractError::Empty` instead.
    pub sections: Vec<Section>,
}

/// A run of text with its location: PDF pages give one section per page; headings in
/// Markdown/HTML/DOCX start new sections.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
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
/// (Serialisable: the extraction worker sends it to the daemon.)
#[derive(Debug, thiserror::Error, serde::Serialize, serde::Deserialize)]
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
    UnpackedTooLarge { part: String, limit: u64 },
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
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
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

#[cfg(test)]
mod tests {
    use super::test_support::*;
    use super::*;

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
    fn error_messages_are_lowercase_without_trailing_period() {
        let errors = [
            ExtractError::Unsupported("x".into()),
            ExtractError::Empty,
            ExtractError::Corrupt("x".into()),
            ExtractError::TooLarge { size: 2, limit: 1 },
            ExtractError::TooManyPages { pages: 2, limit: 1 },
            ExtractError::TextTooLarge { limit: 1 },
            ExtractError::UnpackedTooLarge {
                part: DOCX_BODY_PART.to_string(),
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
}
