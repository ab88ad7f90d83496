//! Markdown: sections from headings (ATX and setext), code blocks and front matter kept out of
//! the heading path.

use pulldown_cmark::{Event as MdEvent, Options as MdOptions, Parser as MdParser, Tag, TagEnd};

use super::*;

/// Splits at top-level ATX and setext headings (found with a real CommonMark parser, so `#` in
/// code blocks and front matter does not count). Section text is the Markdown source itself,
/// heading line included, so the Markdown-aware splitter still sees the structure.
pub(super) fn markdown_sections(text: &str) -> Vec<Section> {
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

#[cfg(test)]
mod tests {
    use super::super::test_support::*;
    use super::*;

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
}
