//! PDF: text per page through `pdf-extract`, fenced: every Flate stream's inflated size is
//! checked on the raw bytes before the parser sees them (a 2 MB file inflating to 2 GiB drove
//! the daemon to 4.5 GB), a structural check rejects page-tree and form cycles, then the parser
//! runs on its own large-stack thread inside `catch_unwind`.

use std::collections::HashSet;
use std::panic::{self, AssertUnwindSafe};

use pdf_extract::{Dictionary, Document, Object, ObjectId};

use super::*;

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
pub(super) fn extract_pdf(bytes: &[u8], limits: &Limits) -> Result<Vec<Section>, ExtractError> {
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

/// The `stream` keyword's length; `endstream` ends in it too.
const STREAM_KEYWORD: &[u8] = b"stream";

/// Rejects a PDF with a Flate stream that inflates to more than `max_unpacked_bytes` (the DOCX
/// rule), before lopdf parses anything: lopdf inflates object streams while loading and
/// pdf-extract inflates page contents, both without a bound. Every `stream` keyword followed by
/// a zlib header is inflated into a counter, at most one byte over the limit; other streams
/// (images in other codecs, encrypted data) fail the header check or decode and are left to the
/// parser. Costs one extra inflate of the file's Flate streams.
fn check_pdf_streams(bytes: &[u8], limits: &Limits) -> Result<(), ExtractError> {
    use std::io::Read;
    let limit = limits.max_unpacked_bytes;
    let mut pos = 0;
    while let Some(found) = bytes[pos..]
        .windows(STREAM_KEYWORD.len())
        .position(|w| w == STREAM_KEYWORD)
    {
        let keyword = pos + found;
        pos = keyword + STREAM_KEYWORD.len();
        if bytes[..keyword].ends_with(b"end") {
            continue;
        }
        let data = match &bytes[pos..] {
            [b'\r', b'\n', rest @ ..] | [b'\n', rest @ ..] => rest,
            _ => continue,
        };
        // A zlib header: deflate method, and the check bits make the pair a multiple of 31.
        let zlib = data.len() >= 2
            && data[0] & 0x0f == 8
            && (u16::from(data[0]) << 8 | u16::from(data[1])) % 31 == 0;
        if !zlib {
            continue;
        }
        let mut inflated = flate2::bufread::ZlibDecoder::new(data).take(limit + 1);
        let mut counted = 0u64;
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            match inflated.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => counted += n as u64,
            }
        }
        if counted > limit {
            return Err(ExtractError::UnpackedTooLarge {
                part: "a pdf stream".to_string(),
                limit,
            });
        }
    }
    Ok(())
}

fn pdf_sections(bytes: &[u8], limits: &Limits) -> Result<Vec<Section>, ExtractError> {
    check_pdf_streams(bytes, limits)?;
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
    pub(super) fn check(
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

#[cfg(test)]
mod tests {
    use super::super::test_support::*;
    use super::*;

    /// A one-page PDF whose content stream is Flate-compressed: a line of text followed by
    /// `padding` spaces (valid content that inflates to any size).
    fn flate_pdf(padding: usize) -> Vec<u8> {
        use std::io::Write;
        let mut content = String::from("BT /F1 12 Tf 72 720 Td (Inflated text) Tj ET");
        content.push_str(&" ".repeat(padding));
        let mut encoder =
            flate2::write::ZlibEncoder::new(Vec::new(), flate2::Compression::default());
        encoder.write_all(content.as_bytes()).unwrap();
        let compressed = encoder.finish().unwrap();
        assemble_pdf(&[
            Obj::Dict("<< /Type /Catalog /Pages 2 0 R >>".into()),
            Obj::Dict("<< /Type /Pages /Kids [4 0 R] /Count 1 >>".into()),
            Obj::Dict("<< /Type /Font /Subtype /Type1 /BaseFont /Helvetica >>".into()),
            Obj::Dict(
                "<< /Type /Page /Parent 2 0 R /MediaBox [0 0 612 792] \
                 /Resources << /Font << /F1 3 0 R >> >> /Contents 5 0 R >>"
                    .into(),
            ),
            Obj::Binary("/Filter /FlateDecode", compressed),
        ])
    }

    #[test]
    fn a_pdf_stream_that_inflates_past_the_limit_is_refused_before_parsing() {
        // Issue 18.1: a 2 MB PDF whose stream inflated to 2 GiB drove the daemon to 4.48 GB and
        // ended indexed. Same rule as DOCX parts: more than max_unpacked_bytes → file_too_large.
        let pdf = flate_pdf(4 << 20);
        assert!(pdf.len() < 64 * 1024, "{} bytes on disk", pdf.len());
        let limits = Limits {
            max_unpacked_bytes: 1 << 20,
            ..Limits::default()
        };
        let e = err_with("bomb.pdf", &pdf, &limits);
        assert!(
            matches!(e, ExtractError::UnpackedTooLarge { limit, .. } if limit == 1 << 20),
            "{e}"
        );
        assert_eq!(e.code(), ErrorCode::FileTooLarge);
        // Under the default limit the same file is an ordinary document.
        let extracted = ok("bomb.pdf", &pdf);
        assert!(
            texts(&extracted)[0].contains("Inflated text"),
            "{extracted:?}"
        );
    }

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
}
