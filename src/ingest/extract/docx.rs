//! DOCX: paragraphs, headings (from styles, localised ids and outline levels) and tables,
//! reading the zipped XML through a reader capped at `max_unpacked_bytes`.

use std::borrow::Cow;
use std::collections::HashMap;
use std::io::{self, BufReader, Cursor, Read};

use quick_xml::events::{BytesStart, Event as XmlEvent};
use zip::result::ZipError;
use zip::ZipArchive;

use super::*;

/// Heading levels: a `Title` paragraph sits above `Heading 1`.
const TITLE_LEVEL: u8 = 0;
/// `w:outlineLvl` 0..=8 are heading levels 1..=9; 9 means body text.
const MAX_OUTLINE_LEVEL: u8 = 8;
/// `w:basedOn` chains longer than this are malformed (Word itself nests a handful).
const MAX_STYLE_CHAIN: usize = 16;

pub(super) fn extract_docx(bytes: &[u8], limits: &Limits) -> Result<Vec<Section>, ExtractError> {
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
            part: part.to_string(),
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
    pub(super) fn start(&mut self, e: &BytesStart<'_>, empty: bool) {
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

    pub(super) fn end(&mut self, name: &str) {
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

    pub(super) fn text(&mut self, text: &str) {
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

    pub(super) fn paragraph(&mut self, paragraph: Paragraph) {
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
    pub(super) fn block(&mut self, text: &str) {
        if let Some(cell) = self.tables.last_mut().and_then(|t| t.cell.as_mut()) {
            if !cell.is_empty() {
                cell.push(' ');
            }
            cell.push_str(&collapse_whitespace(text));
            return;
        }
        self.builder.block(text);
    }

    pub(super) fn into_sections(self) -> Vec<Section> {
        self.builder.into_sections()
    }
}

#[cfg(test)]
mod tests {
    use super::super::test_support::*;
    use super::*;

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
}
