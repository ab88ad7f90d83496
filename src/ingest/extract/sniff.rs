//! Format detection: magic bytes first (`%PDF-`, a zip holding `word/document.xml`), then the
//! file name, then a light look at the content to tell the text formats apart.

use std::io::Cursor;

use zip::result::ZipError;
use zip::ZipArchive;

use super::*;

/// PDF readers accept junk before the header within the first KiB (Acrobat does), so a file
/// named `.pdf` is searched that far; any other file must start with the header, so that a text
/// file that merely mentions `%PDF-` is not taken for one.
const PDF_HEADER_WINDOW: usize = 1024;
const PDF_MAGIC: &[u8] = b"%PDF-";
/// A local file header; every non-empty zip (and so every DOCX) starts with it.
const ZIP_MAGIC: &[u8] = b"PK\x03\x04";
/// An end-of-central-directory record at offset 0: the empty zip archive.
const EMPTY_ZIP_MAGIC: &[u8] = b"PK\x05\x06";
pub(super) const DOCX_BODY_PART: &str = "word/document.xml";
pub(super) const DOCX_STYLES_PART: &str = "word/styles.xml";

/// The lowercased extension and base name of the client's filename.
pub(super) struct FileName {
    base: String,
    ext: String,
}

impl FileName {
    pub(super) fn parse(filename: &str) -> FileName {
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

pub(super) enum Container {
    Pdf,
    Docx,
    /// Not a binary container: the bytes must be text.
    None,
}

/// Decides PDF or DOCX from the magic bytes, and rejects a `.pdf`/`.docx` name on other bytes.
pub(super) fn sniff_container(name: &FileName, bytes: &[u8]) -> Result<Container, ExtractError> {
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

pub(super) fn zip_error(what: &str, error: ZipError) -> ExtractError {
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
pub(super) fn text_format(name: &FileName, text: &str) -> Format {
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

#[cfg(test)]
mod tests {
    use super::super::test_support::*;
    use super::*;

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

    #[test]
    fn unsupported_extensions_are_named() {
        let e = err("letter.rtf", br"{\rtf1\ansi hello}");
        assert!(
            matches!(e, ExtractError::Unsupported(ref m) if m.contains(".rtf")),
            "{e}"
        );
    }

    #[test]
    fn html_is_sniffed_from_content_without_extension() {
        let extracted = ok("saved", b"  <!doctype HTML><p>Hello</p>");
        assert_eq!(extracted.format, Format::Html);
        assert_eq!(texts(&extracted), ["Hello"]);
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
}
