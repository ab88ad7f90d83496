//! A PDF writer for tests: numbered objects with a correct xref table, so tests control every
//! byte of a PDF without a PDF-writing dependency. Shared by the extractor's unit tests, the
//! integration tests (`tests/it/docs.rs` includes this file) and `hearth bench --extract`, each
//! of which uses part of it.

#![allow(dead_code)]

/// One PDF object's body, e.g. `<< /Type /Catalog /Pages 2 0 R >>`, or a content stream.
pub(crate) enum Obj {
    Dict(String),
    Stream(String),
    /// A stream with extra dictionary entries, e.g. a form XObject's `/Subtype /Form`.
    StreamWith(&'static str, String),
    /// A stream of raw bytes with extra dictionary entries, e.g. `/Filter /FlateDecode`.
    Binary(&'static str, Vec<u8>),
}

/// Assembles a PDF from numbered objects (1-based, in order) with a correct xref table, so
/// tests control every byte without a PDF-writing dependency.
pub(crate) fn assemble_pdf(objects: &[Obj]) -> Vec<u8> {
    let mut out = b"%PDF-1.4\n%\xe2\xe3\xcf\xd3\n".to_vec();
    let mut offsets = Vec::new();
    for (i, object) in objects.iter().enumerate() {
        offsets.push(out.len());
        if let Obj::Binary(entries, content) = object {
            out.extend_from_slice(
                format!(
                    "{} 0 obj\n<< {entries} /Length {} >>\nstream\n",
                    i + 1,
                    content.len()
                )
                .as_bytes(),
            );
            out.extend_from_slice(content);
            out.extend_from_slice(b"\nendstream\nendobj\n");
            continue;
        }
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
            Obj::Binary(..) => unreachable!("written above"),
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

pub(crate) fn pdf_string(text: &str) -> String {
    text.replace('\\', "\\\\")
        .replace('(', "\\(")
        .replace(')', "\\)")
}

/// A text PDF: one page per entry, each line drawn in Helvetica one below the other.
pub(crate) fn make_pdf(pages: &[&[&str]]) -> Vec<u8> {
    let n = pages.len();
    let kids: Vec<String> = (0..n).map(|i| format!("{} 0 R", 4 + 2 * i)).collect();
    let mut objects = vec![
        Obj::Dict("<< /Type /Catalog /Pages 2 0 R >>".into()),
        Obj::Dict(format!(
            "<< /Type /Pages /Kids [{}] /Count {n} >>",
            kids.join(" ")
        )),
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

/// A PDF with one page per entry of raw content-stream operators, each page's stream
/// Flate-compressed as real exporters write them (the extraction bench's corpus, and the
/// decompression bombs of the sandbox tests).
pub(crate) fn flate_pdf(pages: &[Vec<u8>]) -> Vec<u8> {
    use std::io::Write;
    let n = pages.len();
    let kids: Vec<String> = (0..n).map(|i| format!("{} 0 R", 4 + 2 * i)).collect();
    let mut objects = vec![
        Obj::Dict("<< /Type /Catalog /Pages 2 0 R >>".into()),
        Obj::Dict(format!(
            "<< /Type /Pages /Kids [{}] /Count {n} >>",
            kids.join(" ")
        )),
        Obj::Dict("<< /Type /Font /Subtype /Type1 /BaseFont /Helvetica >>".into()),
    ];
    for (i, content) in pages.iter().enumerate() {
        objects.push(Obj::Dict(format!(
            "<< /Type /Page /Parent 2 0 R /MediaBox [0 0 612 792] \
             /Resources << /Font << /F1 3 0 R >> >> /Contents {} 0 R >>",
            5 + 2 * i
        )));
        let mut z = flate2::write::ZlibEncoder::new(Vec::new(), flate2::Compression::default());
        let _ = z.write_all(content);
        objects.push(Obj::Binary(
            "/Filter /FlateDecode",
            z.finish().unwrap_or_default(),
        ));
    }
    assemble_pdf(&objects)
}
