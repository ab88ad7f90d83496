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

/// The largest chunk in bytes, whatever its token count (see the constant's doc in `store`).
pub use crate::store::MAX_CHUNK_BYTES;

/// A run of non-whitespace longer than this is cut into chunks of its own (by [`cut_run`])
/// before text-splitter sees the text around it. Given such a run, text-splitter finds no cut
/// that fits the byte cap above word level and works grapheme by grapheme with its token overlap,
/// which measured 5 KB of `x` → 905 chunks in 25 s and 16 KB → 11,905 chunks in 339 s. Runs up
/// to the cap always fit one chunk by bytes, so text-splitter only splits them by tokens, where
/// it is fast (21 KB of CJK without punctuation: 0.25 s).
pub const MAX_RUN_BYTES: usize = MAX_CHUNK_BYTES;

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
/// included) and at most [`MAX_CHUNK_BYTES`] bytes, in document order. Deterministic: the same input gives the same chunks.
pub fn chunk(extracted: &Extracted, tokenizer: &Tokenizer, opts: &ChunkOptions) -> Vec<Chunk> {
    let max_tokens = opts.max_tokens.max(1);
    let sizer = TokenCounter::new(tokenizer, max_tokens);
    // text-splitter rejects an empty capacity and an overlap that is not below it; clamping keeps
    // this infallible for any options.
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
        for segment in segments(&section.text) {
            let pieces: Vec<(usize, &str)> = match segment {
                Segment::Text(start, text) => match &splitter {
                    Splitter::Markdown(s) => s
                        .chunk_indices(text)
                        .map(|(i, piece)| (start + i, piece))
                        .collect(),
                    Splitter::Text(s) => s
                        .chunk_indices(text)
                        .map(|(i, piece)| (start + i, piece))
                        .collect(),
                },
                Segment::Run(start, run) => cut_run(run, &sizer, max_tokens)
                    .into_iter()
                    .map(|(i, piece)| (start + i, piece))
                    .collect(),
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
        }
        offset += section.text.len();
    }
    chunks
}

/// A part of a section's text, with its byte offset in the section.
enum Segment<'a> {
    /// Text for the splitter: no run of non-whitespace in it is longer than [`MAX_RUN_BYTES`].
    Text(usize, &'a str),
    /// A run of non-whitespace longer than [`MAX_RUN_BYTES`], cut by [`cut_run`].
    Run(usize, &'a str),
}

/// Splits `text` around its runs of non-whitespace longer than [`MAX_RUN_BYTES`], in order.
/// Linear in the text; a section without such runs is one `Text` segment.
fn segments(text: &str) -> Vec<Segment<'_>> {
    // The long runs' byte ranges first, then the text between them.
    let mut runs = Vec::new();
    let mut run_start = None;
    for (i, c) in text
        .char_indices()
        .chain(std::iter::once((text.len(), ' ')))
    {
        match (c.is_whitespace(), run_start) {
            (false, None) => run_start = Some(i),
            (true, Some(start)) => {
                if i - start > MAX_RUN_BYTES {
                    runs.push(start..i);
                }
                run_start = None;
            }
            _ => {}
        }
    }
    let mut out = Vec::with_capacity(2 * runs.len() + 1);
    let mut cursor = 0;
    for run in runs {
        if run.start > cursor {
            out.push(Segment::Text(cursor, &text[cursor..run.start]));
        }
        out.push(Segment::Run(run.start, &text[run.clone()]));
        cursor = run.end;
    }
    if cursor < text.len() {
        out.push(Segment::Text(cursor, &text[cursor..]));
    }
    out
}

/// Cuts a run into pieces of at most [`MAX_CHUNK_BYTES`] bytes and `max_tokens` tokens, each
/// ending on a character boundary, with their offsets in the run. A piece ends after the last
/// punctuation mark in its final quarter when there is one (CJK prose has no spaces, but has
/// sentence marks), else where the limits cut it. Each piece costs one tokenization of at most
/// the byte cap, plus a binary search when the tokens do not fit.
fn cut_run<'a>(run: &'a str, sizer: &TokenCounter, max_tokens: usize) -> Vec<(usize, &'a str)> {
    let mut pieces = Vec::new();
    let mut start = 0;
    while start < run.len() {
        let mut end = (start + MAX_CHUNK_BYTES).min(run.len());
        while !run.is_char_boundary(end) {
            end -= 1;
        }
        // The tokenizer's offsets say where the last token that fits ends (one encoding);
        // re-encoding a prefix cut inside a word can differ, so a cut is checked, and a binary
        // search over character boundaries is the fallback.
        let fits = match sizer.fitting_prefix(&run[start..end], max_tokens) {
            Some(fit) if fit == end - start => true,
            Some(fit) if fit > 0 && sizer.size(&run[start..start + fit]) <= max_tokens => {
                end = start + fit;
                true
            }
            _ => false,
        };
        if !fits {
            // Largest prefix that fits, over character boundaries; at least one character.
            let bounds: Vec<usize> = run[start..end]
                .char_indices()
                .map(|(i, c)| start + i + c.len_utf8())
                .collect();
            let (mut lo, mut hi) = (0, bounds.len() - 1);
            while lo < hi {
                let mid = (lo + hi).div_ceil(2);
                if sizer.size(&run[start..bounds[mid]]) <= max_tokens {
                    lo = mid;
                } else {
                    hi = mid - 1;
                }
            }
            end = bounds[lo];
        }
        if end < run.len() {
            let mut quarter = start + (end - start) * 3 / 4;
            while !run.is_char_boundary(quarter) {
                quarter += 1;
            }
            if let Some((i, c)) = run[quarter..end]
                .char_indices()
                .rev()
                .find(|(_, c)| c.is_ascii_punctuation() || is_sentence_mark(*c))
            {
                end = quarter + i + c.len_utf8();
            }
        }
        pieces.push((start, &run[start..end]));
        start = end;
    }
    pieces
}

/// Full-width sentence and clause marks (CJK prose).
fn is_sentence_mark(c: char) -> bool {
    matches!(c, '。' | '！' | '？' | '，' | '；' | '：' | '、')
}

enum Splitter<'a> {
    Markdown(MarkdownSplitter<&'a TokenCounter>),
    Text(TextSplitter<&'a TokenCounter>),
}

/// Counts tokens the way the embedder will see them: special tokens added, nothing truncated.
/// A piece longer than [`MAX_CHUNK_BYTES`] does not fit whatever its token count: it is sized
/// one past the capacity without being tokenized, so text-splitter cuts it further (down to
/// characters when there is no other boundary) and never tokenizes more than the cap at once.
///
/// It works on a copy of the tokenizer with truncation and padding turned off: the shipped
/// `tokenizer.json` pads and truncates to 128 tokens, which would make every piece look 128 tokens
/// long. And unlike text-splitter's own sizer for `Tokenizer`, which panics when encoding fails,
/// it falls back to the byte length, in practice an upper bound for WordPiece (every token covers
/// at least one byte), so a fallback errs towards smaller chunks.
struct TokenCounter {
    tokenizer: Tokenizer,
    /// The chunk capacity in tokens: the size reported for a piece over the byte cap is one more.
    capacity: usize,
}

impl TokenCounter {
    fn new(tokenizer: &Tokenizer, capacity: usize) -> TokenCounter {
        let mut tokenizer = tokenizer.clone();
        // Disabling truncation cannot fail: only a stride too large for the length is rejected.
        let _ = tokenizer.with_truncation(None);
        tokenizer.with_padding(None);
        TokenCounter {
            tokenizer,
            capacity,
        }
    }
}

impl TokenCounter {
    /// The byte length of the longest prefix of `text` whose tokens fit in `max_tokens` (special
    /// tokens included), from the offsets of one encoding; `None` when encoding fails.
    fn fitting_prefix(&self, text: &str, max_tokens: usize) -> Option<usize> {
        let encoding = self.tokenizer.encode(text, true).ok()?;
        if encoding.len() <= max_tokens {
            return Some(text.len());
        }
        let mask = encoding.get_special_tokens_mask();
        let specials = mask.iter().filter(|&&m| m != 0).count();
        let allowed = max_tokens.checked_sub(specials)?;
        let end = encoding
            .get_offsets()
            .iter()
            .zip(mask)
            .filter(|(_, &m)| m == 0)
            .take(allowed)
            .map(|(&(_, end), _)| end)
            .last()?;
        text.is_char_boundary(end).then_some(end)
    }
}

impl ChunkSizer for TokenCounter {
    fn size(&self, chunk: &str) -> usize {
        if chunk.len() > MAX_CHUNK_BYTES {
            return self.capacity + 1;
        }
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
            assert!(
                chunk.text.len() <= MAX_CHUNK_BYTES,
                "{} bytes",
                chunk.text.len()
            );
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

    #[test]
    fn text_without_breaks_is_cut_at_the_byte_cap() {
        // Issue 18.5: 100 KB without whitespace is one WordPiece word ([UNK]), 3 tokens in all;
        // it became a single 100 KB chunk. Also multi-byte characters (never cut inside one) and
        // a run inside ordinary text.
        let tokenizer = tokenizer();
        let ascii = "x".repeat(100 * 1024);
        let multibyte = "é中".repeat(20_000);
        let cjk = "中文的句子很长，没有空格。".repeat(2000);
        let mixed = format!(
            "{} {} {}",
            sentences("a", 5, 5),
            "y".repeat(30_000),
            sentences("b", 5, 5)
        );
        for text in [ascii, multibyte, cjk, mixed, "z".repeat(2 << 20)] {
            let extracted = Extracted {
                format: Format::Text,
                sections: vec![section(None, &[], text.clone())],
            };
            let started = std::time::Instant::now();
            let chunks = chunk(&extracted, &tokenizer, &ChunkOptions::default());
            check_invariants(&extracted, &chunks, &tokenizer);
            // Cut near one of the caps, not far below both (the 2 MB run is not tokenized whole).
            let tokens = if text.len() < 1 << 20 {
                embedded_len(&tokenizer, &text)
            } else {
                0
            };
            let full = (text.len() / MAX_CHUNK_BYTES).max(tokens / EMBED_WINDOW_TOKENS);
            assert!(chunks.len() <= 2 * full + 2, "{} chunks", chunks.len());
            eprintln!(
                "{} bytes → {} chunks in {:?}",
                text.len(),
                chunks.len(),
                started.elapsed()
            );
        }
    }
}
