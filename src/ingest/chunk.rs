//! Chunking: cuts extracted documents into pieces that fit the embedder's input window.
//!
//! This module owns the offset space of a document (`document_text`: sections joined by a blank
//! line) and the rule that a chunk never crosses a section, so every chunk's page and heading
//! path are exact. Sizes are counted with the embedder's own tokenizer, not estimated from
//! characters: a chunk that is too long is silently truncated by the embedder and its tail is
//! never searchable, while one much shorter than needed wastes index entries.
//!
//! Splitting itself is `text-splitter`'s: it cuts at the highest semantic boundary that fits
//! (Markdown structure for Markdown; otherwise blank lines, lines, sentences, words), and is
//! deterministic.

use text_splitter::{ChunkConfig, ChunkSizer, MarkdownSplitter, TextSplitter};
use tokenizers::Tokenizer;

use super::extract::{Extracted, Format};

/// The all-MiniLM-L6-v2 input window in tokens, special tokens included (its sentence-transformers
/// `max_seq_length`; longer input is truncated).
pub const EMBED_WINDOW_TOKENS: usize = 256;

/// Separator between sections in `document_text`. A blank line keeps sections apart for readers
/// of the stored text and is never part of a chunk.
const SECTION_SEPARATOR: &str = "\n\n";

/// One piece of a document, ready to embed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Chunk {
    /// Exactly `document_text(extracted)[start..end]`.
    pub text: String,
    pub page: Option<u32>,
    pub heading_path: Vec<String>,
    /// Byte offsets into `document_text(extracted)`; both on character boundaries.
    pub start: usize,
    pub end: usize,
}

/// How large chunks are, in tokens exactly as the embedder counts its input: special tokens
/// (`[CLS]` and `[SEP]` for BERT-style models) included. So `max_tokens` is simply the
/// embedder's window, and no caller has to remember to subtract them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ChunkOptions {
    /// Largest chunk, special tokens included: the embedder's input window.
    pub max_tokens: usize,
    /// Size of the text repeated from the end of one chunk at the start of the next (counted the
    /// same way), so that a sentence cut at a boundary is still whole in one of them. Clamped
    /// below `max_tokens`. The repeat is made of whole units at the level the chunk was cut at
    /// (sentences, words), as text-splitter does it: a cut between two paragraphs that are each
    /// longer than this repeats nothing, and needs to less, since no sentence was cut.
    pub overlap: usize,
}

impl Default for ChunkOptions {
    /// The whole all-MiniLM-L6-v2 window (counting is exact, so no slack is needed); 32 tokens of
    /// overlap (~13%) is about one sentence, enough to keep a sentence that straddles a cut
    /// retrievable without much duplication.
    fn default() -> Self {
        ChunkOptions {
            max_tokens: EMBED_WINDOW_TOKENS,
            overlap: 32,
        }
    }
}

/// The text that chunk offsets refer to: the sections joined by a blank line.
pub fn document_text(extracted: &Extracted) -> String {
    let sections: Vec<&str> = extracted.sections.iter().map(|s| s.text.as_str()).collect();
    sections.join(SECTION_SEPARATOR)
}

/// Splits every section into chunks of at most `opts.max_tokens` tokens (special tokens
/// included), in document order. Deterministic: the same input gives the same chunks.
pub fn chunk(extracted: &Extracted, tokenizer: &Tokenizer, opts: &ChunkOptions) -> Vec<Chunk> {
    let sizer = TokenCounter::new(tokenizer);
    // text-splitter rejects an empty capacity and an overlap that is not below it; clamping keeps
    // this infallible for any options.
    let max_tokens = opts.max_tokens.max(1);
    let overlap = opts.overlap.min(max_tokens - 1);
    let config = || {
        let config = ChunkConfig::new(max_tokens).with_sizer(&sizer);
        match config.with_overlap(overlap) {
            Ok(config) => config,
            // Unreachable after the clamp above; without overlap is the safe fallback.
            Err(_) => ChunkConfig::new(max_tokens).with_sizer(&sizer),
        }
    };
    let splitter = match extracted.format {
        Format::Markdown => Splitter::Markdown(MarkdownSplitter::new(config())),
        _ => Splitter::Text(TextSplitter::new(config())),
    };

    let mut chunks = Vec::new();
    let mut offset = 0usize;
    for (i, section) in extracted.sections.iter().enumerate() {
        if i > 0 {
            offset += SECTION_SEPARATOR.len();
        }
        let pieces: Vec<(usize, &str)> = match &splitter {
            Splitter::Markdown(s) => s.chunk_indices(&section.text).collect(),
            Splitter::Text(s) => s.chunk_indices(&section.text).collect(),
        };
        for (start, text) in pieces {
            chunks.push(Chunk {
                text: text.to_string(),
                page: section.page,
                heading_path: section.heading_path.clone(),
                start: offset + start,
                end: offset + start + text.len(),
            });
        }
        offset += section.text.len();
    }
    chunks
}

enum Splitter<'a> {
    Markdown(MarkdownSplitter<&'a TokenCounter>),
    Text(TextSplitter<&'a TokenCounter>),
}

/// Counts tokens the way the embedder will see them: special tokens added, nothing truncated.
///
/// It works on a copy of the tokenizer with truncation and padding turned off: the shipped
/// `tokenizer.json` pads and truncates to 128 tokens, which would make every piece look 128 tokens
/// long. And unlike text-splitter's own sizer for `Tokenizer`, which panics when encoding fails,
/// it falls back to the byte length, in practice an upper bound for WordPiece (every token covers
/// at least one byte), so a fallback errs towards smaller chunks.
struct TokenCounter {
    tokenizer: Tokenizer,
}

impl TokenCounter {
    fn new(tokenizer: &Tokenizer) -> TokenCounter {
        let mut tokenizer = tokenizer.clone();
        // Disabling truncation cannot fail: only a stride too large for the length is rejected.
        let _ = tokenizer.with_truncation(None);
        tokenizer.with_padding(None);
        TokenCounter { tokenizer }
    }
}

impl ChunkSizer for TokenCounter {
    fn size(&self, chunk: &str) -> usize {
        match self.tokenizer.encode_fast(chunk, true) {
            Ok(encoding) => encoding.len(),
            Err(_) => chunk.len(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ingest::extract::Section;

    /// The embedder's real tokenizer, fetched by `./models/fetch embed` (not committed).
    fn tokenizer() -> Tokenizer {
        let path = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/models/all-MiniLM-L6-v2.tokenizer.json"
        );
        match Tokenizer::from_file(path) {
            Ok(tokenizer) => tokenizer,
            Err(e) => panic!("{path}: {e} (run ./models/fetch embed)"),
        }
    }

    /// Counts tokens as the embedder sees them: special tokens added, nothing truncated.
    fn embedded_len(tokenizer: &Tokenizer, text: &str) -> usize {
        let mut tokenizer = tokenizer.clone();
        let _ = tokenizer.with_truncation(None);
        tokenizer.with_padding(None);
        match tokenizer.encode(text, true) {
            Ok(encoding) => encoding.len(),
            Err(e) => panic!("encode {text:?}: {e}"),
        }
    }

    fn section(page: Option<u32>, path: &[&str], text: String) -> Section {
        Section {
            page,
            heading_path: path.iter().map(|s| s.to_string()).collect(),
            text,
        }
    }

    /// Distinct sentences, so overlap and coverage can be checked by content, with a paragraph
    /// break after every `per_paragraph` of them.
    fn sentences(tag: &str, n: usize, per_paragraph: usize) -> String {
        (0..n)
            .map(|i| {
                let sentence = format!(
                    "The {tag} note number {i} says that item {i} weighs {} grams.",
                    i * 7
                );
                if i % per_paragraph == per_paragraph - 1 {
                    format!("{sentence}\n\n")
                } else {
                    format!("{sentence} ")
                }
            })
            .collect::<String>()
            .trim_end()
            .to_string()
    }

    fn long_markdown() -> Extracted {
        Extracted {
            format: Format::Markdown,
            sections: vec![
                section(None, &[], "Short preface.".into()),
                section(
                    None,
                    &["Guide"],
                    format!("# Guide\n\n{}", sentences("guide", 60, 5)),
                ),
                section(
                    None,
                    &["Guide", "Install"],
                    format!("## Install\n\n{}", sentences("install", 5, 5)),
                ),
                section(
                    None,
                    &["Guide", "Install", "Linux"],
                    format!(
                        "### Linux\n\n```sh\napt install x\n```\n\n{}",
                        sentences("linux", 90, 5)
                    ),
                ),
                section(
                    None,
                    &["Appendix"],
                    format!(
                        "# Appendix\n\nÜnïcödé 日本語のテキスト 🚀 {}",
                        sentences("appendix", 40, 5)
                    ),
                ),
            ],
        }
    }

    /// Pages of one long paragraph each (as PDF text often is), so chunks are cut between
    /// sentences, where text-splitter's overlap applies.
    fn pdf_pages() -> Extracted {
        Extracted {
            format: Format::Pdf,
            sections: (1..=4)
                .map(|page| section(Some(page), &[], sentences(&format!("page{page}"), 45, 1000)))
                .collect(),
        }
    }

    /// Every invariant a consumer relies on, for one document.
    fn check_invariants(extracted: &Extracted, chunks: &[Chunk], tokenizer: &Tokenizer) {
        let doc = document_text(extracted);
        // Byte range of each section in the document text.
        let mut ranges = Vec::new();
        let mut offset = 0;
        for (i, s) in extracted.sections.iter().enumerate() {
            if i > 0 {
                offset += 2;
            }
            ranges.push(offset..offset + s.text.len());
            offset += s.text.len();
        }
        assert_eq!(offset, doc.len());

        let mut covered = vec![false; doc.len()];
        for chunk in chunks {
            assert_eq!(
                doc.get(chunk.start..chunk.end),
                Some(chunk.text.as_str()),
                "{chunk:?}"
            );
            assert!(!chunk.text.trim().is_empty());
            let tokens = embedded_len(tokenizer, &chunk.text);
            assert!(tokens <= EMBED_WINDOW_TOKENS, "{tokens} tokens: {chunk:?}");
            // The chunk lies inside exactly one section, whose location it carries.
            let owner = ranges
                .iter()
                .position(|r| r.start <= chunk.start && chunk.end <= r.end)
                .unwrap_or_else(|| panic!("chunk crosses a section: {chunk:?}"));
            assert_eq!(chunk.page, extracted.sections[owner].page);
            assert_eq!(chunk.heading_path, extracted.sections[owner].heading_path);
            covered[chunk.start..chunk.end]
                .iter_mut()
                .for_each(|c| *c = true);
        }
        // Nothing but whitespace is left out.
        for (i, c) in doc.char_indices() {
            assert!(
                covered[i] || c.is_whitespace(),
                "byte {i} ({c:?}) is in no chunk"
            );
        }
        // Chunks are in document order.
        assert!(chunks.windows(2).all(|w| w[0].start <= w[1].start));
    }

    #[test]
    fn markdown_chunks_keep_sections_offsets_and_token_bounds() {
        let tokenizer = tokenizer();
        let extracted = long_markdown();
        let chunks = chunk(&extracted, &tokenizer, &ChunkOptions::default());
        check_invariants(&extracted, &chunks, &tokenizer);
        assert!(chunks.len() >= 10, "{}", chunks.len());
        // The long sections are split; the short ones are one chunk each.
        let in_linux = chunks
            .iter()
            .filter(|c| c.heading_path == ["Guide", "Install", "Linux"])
            .count();
        assert!(in_linux >= 3, "{in_linux}");
        assert_eq!(chunks[0].text, "Short preface.");
        assert_eq!(chunks[0].heading_path, Vec::<String>::new());
        // Sized with truncation off: the shipped tokenizer.json truncates at 128 tokens, and chunks
        // of up to 256 would all look like 128 through it.
        let largest = chunks
            .iter()
            .map(|c| embedded_len(&tokenizer, &c.text))
            .max()
            .unwrap_or(0);
        assert!(largest > 128, "largest chunk has only {largest} tokens");
    }

    #[test]
    fn pdf_chunks_keep_page_numbers_and_overlap() {
        let tokenizer = tokenizer();
        let extracted = pdf_pages();
        let chunks = chunk(&extracted, &tokenizer, &ChunkOptions::default());
        check_invariants(&extracted, &chunks, &tokenizer);
        for page in 1..=4 {
            let on_page: Vec<&Chunk> = chunks.iter().filter(|c| c.page == Some(page)).collect();
            assert!(on_page.len() >= 2, "page {page}: {} chunks", on_page.len());
            // Consecutive chunks of a page overlap by whole sentences of at most `overlap` tokens.
            for pair in on_page.windows(2) {
                assert!(
                    pair[1].start < pair[0].end,
                    "no overlap: {:?} / {:?}",
                    pair[0],
                    pair[1]
                );
                let shared = &pair[0].text[pair[1].start - pair[0].start..];
                assert!(pair[1].text.starts_with(shared));
                let shared_tokens = embedded_len(&tokenizer, shared);
                assert!(
                    (1..=ChunkOptions::default().overlap).contains(&shared_tokens),
                    "{shared_tokens}: {shared:?}"
                );
            }
        }
        // A chunk never takes text from the next page.
        assert!(chunks
            .iter()
            .all(|c| c.text.contains(&format!("page{}", c.page.unwrap_or(0)))));
    }

    #[test]
    fn chunking_is_deterministic() {
        let tokenizer = tokenizer();
        let extracted = long_markdown();
        let options = ChunkOptions::default();
        assert_eq!(
            chunk(&extracted, &tokenizer, &options),
            chunk(&extracted, &tokenizer, &options)
        );
    }

    #[test]
    fn document_text_joins_sections_with_a_blank_line() {
        let extracted = Extracted {
            format: Format::Text,
            sections: vec![
                section(None, &[], "a".into()),
                section(Some(2), &["h"], "b c".into()),
            ],
        };
        assert_eq!(document_text(&extracted), "a\n\nb c");
        let chunks = chunk(&extracted, &tokenizer(), &ChunkOptions::default());
        let spans: Vec<(usize, usize, &str)> = chunks
            .iter()
            .map(|c| (c.start, c.end, c.text.as_str()))
            .collect();
        assert_eq!(spans, [(0, 1, "a"), (3, 6, "b c")]);
    }

    #[test]
    fn odd_options_do_not_panic() {
        let tokenizer = tokenizer();
        let extracted = pdf_pages();
        for options in [
            ChunkOptions {
                max_tokens: 0,
                overlap: 0,
            },
            ChunkOptions {
                max_tokens: 10,
                overlap: 10,
            },
            ChunkOptions {
                max_tokens: 10,
                overlap: 500,
            },
            ChunkOptions {
                max_tokens: 1,
                overlap: 1,
            },
        ] {
            let chunks = chunk(&extracted, &tokenizer, &options);
            assert!(!chunks.is_empty(), "{options:?}");
            let doc = document_text(&extracted);
            assert!(chunks
                .iter()
                .all(|c| doc.get(c.start..c.end) == Some(c.text.as_str())));
        }
    }

    #[test]
    fn text_splitter_is_used_for_non_markdown() {
        // `#` lines in a code file are comments, not headings: one section, split by size only.
        let tokenizer = tokenizer();
        let code = (0..200)
            .map(|i| format!("# comment {i}\nvalue_{i} = {i} * 2\n"))
            .collect::<String>();
        let extracted = Extracted {
            format: Format::Code,
            sections: vec![section(None, &[], code.trim_end().to_string())],
        };
        let chunks = chunk(&extracted, &tokenizer, &ChunkOptions::default());
        check_invariants(&extracted, &chunks, &tokenizer);
        assert!(chunks.len() > 1);
    }
}
