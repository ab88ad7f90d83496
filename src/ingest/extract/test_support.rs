//! Helpers for the extractor's unit tests: run an extraction expecting success or an error, read
//! the sections back, and build DOCX files (zip + WordprocessingML) in memory.

use std::io::{Cursor, Write};

pub(super) use super::pdf_fixture::*;
use super::*;

pub(super) fn ok(filename: &str, bytes: &[u8]) -> Extracted {
    match extract(filename, bytes, &Limits::default()) {
        Ok(extracted) => extracted,
        Err(e) => panic!("{filename}: unexpected error: {e}"),
    }
}

pub(super) fn err(filename: &str, bytes: &[u8]) -> ExtractError {
    err_with(filename, bytes, &Limits::default())
}

pub(super) fn err_with(filename: &str, bytes: &[u8], limits: &Limits) -> ExtractError {
    match extract(filename, bytes, limits) {
        Ok(extracted) => panic!("{filename}: expected an error, got {extracted:?}"),
        Err(e) => e,
    }
}

pub(super) fn texts(extracted: &Extracted) -> Vec<&str> {
    extracted.sections.iter().map(|s| s.text.as_str()).collect()
}

pub(super) fn paths(extracted: &Extracted) -> Vec<Vec<&str>> {
    extracted
        .sections
        .iter()
        .map(|s| s.heading_path.iter().map(String::as_str).collect())
        .collect()
}

pub(super) fn zip_of(files: &[(&str, &str)]) -> Vec<u8> {
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

pub(super) const W_NS: &str = r#"xmlns:w="http://schemas.openxmlformats.org/wordprocessingml/2006/main" xmlns:mc="http://schemas.openxmlformats.org/markup-compatibility/2006""#;

pub(super) fn docx_with(body: &str, styles: Option<&str>) -> Vec<u8> {
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

pub(super) fn para(style: Option<&str>, text: &str) -> String {
    let ppr = style.map_or(String::new(), |s| {
        format!(r#"<w:pPr><w:pStyle w:val="{s}"/><w:tabs><w:tab w:val="left" w:pos="720"/></w:tabs></w:pPr>"#)
    });
    format!(r#"<w:p>{ppr}<w:r><w:t xml:space="preserve">{text}</w:t></w:r></w:p>"#)
}
