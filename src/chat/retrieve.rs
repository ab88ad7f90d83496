//! Retrieval for a chat turn: embed the question, search the scopes the chat may see, keep the
//! chunks above the relevance threshold, and format them as numbered, citable context.
//!
//! Irrelevant context makes small models answer worse, so the top-k are not used regardless of
//! their score. Two cases still need care, because a question about "the report" often scores
//! under the cut-off against the report itself (measured: 0.13–0.23 for "what does the report
//! conclude?" with MiniLM):
//! - nothing found is said, both to the client (an empty `sources` event with a reason) and to
//!   the model (a system-prompt note, so it says the documents hold no answer instead of
//!   inventing one);
//! - a chat with only a few documents of its own falls back to their best excerpts when the
//!   question is about a document ("the report", a file's name), marked
//!   [`Source::below_threshold`] and introduced to the model as weak matches. The question's
//!   words decide, not a lower score floor: MiniLM gave an unrelated question ("penguins in
//!   Antarctica" against a handbook) 0.15, as much as a real question about the report gets.
//!
//! [`Source::below_threshold`]: crate::store::Source::below_threshold

use crate::embed::{EmbedError, Embedder, Urgency};
use crate::index::Index;
use crate::store::{ChatId, Scope, Source, SourceOrigin, Store, StoreError};

/// A chat with at most this many documents of its own falls back to them when nothing clears
/// the cut-off: with so few, "the document" is unambiguous.
pub const FALLBACK_MAX_DOCUMENTS: usize = 3;
/// How many excerpts the fallback gives.
pub const FALLBACK_K: usize = 3;
/// How many of the chat's best chunks the fallback looks through for those of a document the
/// question names.
const FALLBACK_SEARCH_K: usize = 64;
/// Words that make a question about "the document" (lower case, whole words).
const DOCUMENT_WORDS: &[&str] = &[
    "document",
    "documents",
    "doc",
    "docs",
    "report",
    "reports",
    "file",
    "files",
    "pdf",
    "paper",
    "article",
    "attachment",
    "attached",
    "upload",
    "uploaded",
    "text",
    "handbook",
    "manual",
    "contract",
    "notes",
    "book",
    "chapter",
    "page",
    "pages",
    "summarize",
    "summarise",
    "summary",
];

/// The system prompt's note when a search found no excerpt: without it, a small model answers a
/// question about "the report" from nothing.
pub const NO_EXCERPT_NOTE: &str = "A search of the user's documents found no passage relevant to \
    this message. If the message asks about the user's documents, say that they do not seem to \
    contain the answer; do not make up what they say.";

/// Why a search gave no document excerpt (the `sources` event's `reason`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EmptyReason {
    /// Neither the chat nor the library holds a document.
    NoDocuments,
    /// There are documents, but no excerpt is relevant enough.
    NoMatch,
}

impl EmptyReason {
    pub fn as_str(self) -> &'static str {
        match self {
            EmptyReason::NoDocuments => "no_documents",
            EmptyReason::NoMatch => "no_match",
        }
    }
}

/// What a document search gave a turn.
#[derive(Clone, Debug, Default)]
pub struct Retrieval {
    /// Numbered from 1, best first.
    pub sources: Vec<Source>,
    /// Set when `sources` is empty.
    pub empty_reason: Option<EmptyReason>,
}

#[derive(Debug, thiserror::Error)]
pub enum RetrieveError {
    #[error(transparent)]
    Embed(#[from] EmbedError),
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// Finds context passages; cheap to clone.
#[derive(Clone)]
pub struct Retriever {
    pub store: Store,
    pub embedder: Embedder,
    pub index: Index,
    pub k: usize,
    pub min_score: f32,
}

impl Retriever {
    /// The best chunks for `query` among the chat's documents and the library; see the module
    /// docs for what happens when none clears the cut-off.
    pub async fn retrieve_for_chat(
        &self,
        chat: ChatId,
        query: &str,
    ) -> Result<Retrieval, RetrieveError> {
        let mut vectors = self
            .embedder
            .embed(vec![query.to_string()], Urgency::Query)
            .await?;
        let Some(vector) = vectors.pop() else {
            return Ok(Retrieval::default());
        };
        let found = self
            .index
            .find(
                vec![Scope::Chat(chat), Scope::Library],
                vector.clone(),
                self.k,
                self.min_score,
            )
            .await?;
        if !found.is_empty() {
            return Ok(Retrieval {
                sources: numbered(found, false),
                empty_reason: None,
            });
        }
        let own = Scope::Chat(chat);
        let own_documents = self
            .store
            .count_documents_in(&own, FALLBACK_MAX_DOCUMENTS + 1)?;
        if own_documents == 0 && self.store.count_documents_in(&Scope::Library, 1)? == 0 {
            return Ok(Retrieval {
                sources: Vec::new(),
                empty_reason: Some(EmptyReason::NoDocuments),
            });
        }
        if own_documents > FALLBACK_MAX_DOCUMENTS {
            return Ok(no_match());
        }
        let documents = self.store.documents_in(&own)?;
        let filenames: Vec<String> = documents.iter().map(|d| d.filename.clone()).collect();
        if !names_a_document(query, &filenames) {
            return Ok(no_match());
        }
        // "What does the report conclude?" with report.md and notes.md: the report's excerpts,
        // even where the notes score a little higher.
        let named: Vec<_> = documents
            .iter()
            .filter(|d| mentions_file(&query.to_lowercase(), &d.filename))
            .map(|d| d.id)
            .collect();
        let k = if named.is_empty() {
            FALLBACK_K
        } else {
            FALLBACK_SEARCH_K
        };
        let weak: Vec<_> = self
            .index
            .find(vec![own], vector, k, -1.0)
            .await?
            .into_iter()
            .filter(|f| named.is_empty() || named.contains(&f.document.id))
            .take(FALLBACK_K)
            .collect();
        if weak.is_empty() {
            return Ok(no_match());
        }
        Ok(Retrieval {
            sources: numbered(weak, true),
            empty_reason: None,
        })
    }
}

fn no_match() -> Retrieval {
    Retrieval {
        sources: Vec::new(),
        empty_reason: Some(EmptyReason::NoMatch),
    }
}

fn numbered(found: Vec<crate::index::Found>, below_threshold: bool) -> Vec<Source> {
    found
        .into_iter()
        .zip(1u32..)
        .map(
            |(
                crate::index::Found {
                    document: doc,
                    chunk,
                    score,
                },
                n,
            )| Source {
                n,
                origin: SourceOrigin::Document {
                    document_id: doc.id,
                    filename: doc.filename,
                    page: chunk.page,
                    start: chunk.start,
                    end: chunk.end,
                },
                score,
                text: chunk.text,
                below_threshold,
            },
        )
        .collect()
}

/// Whether `query` asks about a document: a document word ("the report", "this file"), or one of
/// the chat's file names, whole or without its extension.
pub fn names_a_document(query: &str, filenames: &[String]) -> bool {
    let lower = query.to_lowercase();
    let words: Vec<&str> = lower
        .split(|c: char| !c.is_alphanumeric())
        .filter(|w| !w.is_empty())
        .collect();
    if words.iter().any(|w| DOCUMENT_WORDS.contains(w)) {
        return true;
    }
    filenames.iter().any(|name| mentions_file(&lower, name))
}

/// Whether the lower-cased `query` names the file `filename` (a path's last component), whole
/// or without its extension.
fn mentions_file(lower_query: &str, filename: &str) -> bool {
    let name = filename.to_lowercase();
    let name = name.rsplit(['/', '\\']).next().unwrap_or(&name);
    let stem = name.rsplit_once('.').map_or(name, |(stem, _)| stem);
    // A stem of a few letters ("a.txt") would match by accident.
    stem.chars().count() >= 4 && lower_query.contains(stem)
}

/// The system prompt with the sources appended: document excerpts numbered for citation, then
/// what is remembered about the user as a plain list. `searched`: documents were searched for
/// this message, so their absence is said (see [`NO_EXCERPT_NOTE`]).
pub fn with_context(system: &str, sources: &[Source], searched: bool) -> String {
    let mut out = String::from(system);
    let documents: Vec<&Source> = sources
        .iter()
        .filter(|s| matches!(s.origin, SourceOrigin::Document { .. }))
        .collect();
    if documents.is_empty() && searched {
        if !out.is_empty() {
            out.push_str("\n\n");
        }
        out.push_str(NO_EXCERPT_NOTE);
        out.push('\n');
    }
    if !documents.is_empty() {
        if !out.is_empty() {
            out.push_str("\n\n");
        }
        if documents.iter().all(|s| s.below_threshold) {
            out.push_str(
                "The user's documents hold nothing that closely matches this message; these \
                 numbered excerpts are the nearest. Use them only if they answer it, cite them \
                 like [1], and otherwise say the documents do not contain the answer.\n",
            );
        } else {
            out.push_str(
                "Answer using the numbered excerpts below when they are relevant, and cite them \
                 like [1]. If they do not contain the answer, say so.\n",
            );
        }
    }
    for source in documents {
        if let SourceOrigin::Document { filename, page, .. } = &source.origin {
            out.push_str(&format!("\n[{}] {}", source.n, filename));
            if let Some(page) = page {
                out.push_str(&format!(", page {page}"));
            }
        }
        out.push_str(":\n");
        out.push_str(source.text.trim());
        out.push('\n');
    }
    let mut memories = sources
        .iter()
        .filter(|s| matches!(s.origin, SourceOrigin::Memory { .. }))
        .peekable();
    if memories.peek().is_some() {
        if !out.is_empty() {
            out.push_str("\n\n");
        }
        out.push_str("What you know about the user from earlier conversations:\n");
        for memory in memories {
            out.push_str("- ");
            out.push_str(memory.text.trim());
            out.push('\n');
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::DocumentId;

    fn doc(n: u32, below_threshold: bool) -> Source {
        Source {
            n,
            origin: SourceOrigin::Document {
                document_id: DocumentId::new(),
                filename: "report.pdf".into(),
                page: Some(2),
                start: 0,
                end: 10,
            },
            score: 0.2,
            text: "Revenue grew.".into(),
            below_threshold,
        }
    }

    #[test]
    fn a_question_about_the_document_is_recognised() {
        let names = vec!["quarterly-results.pdf".to_string()];
        assert!(names_a_document("What does the report conclude?", &names));
        assert!(names_a_document("summarize this", &[]));
        assert!(names_a_document("what is in Quarterly-Results?", &names));
        assert!(!names_a_document("What do penguins eat?", &names));
        // Short stems do not match inside other words.
        assert!(!names_a_document(
            "what about a cat?",
            &["cat.txt".to_string()]
        ));
        // Whole words only: "documentary" is not "document".
        assert!(!names_a_document("a good documentary", &[]));
        // A library path's file name counts, not its folders.
        assert!(mentions_file(
            "what is in the budget?",
            "/home/ada/Budget.xlsx"
        ));
        assert!(!mentions_file("what about home?", "/home/ada/Budget.xlsx"));
    }

    #[test]
    fn the_prompt_says_when_nothing_was_found_and_when_matches_are_weak() {
        let none = with_context("Be brief.", &[], true);
        assert!(none.starts_with("Be brief.\n\n"), "{none}");
        assert!(none.contains(NO_EXCERPT_NOTE));
        // Not searched (normal mode): the system prompt is untouched.
        assert_eq!(with_context("Be brief.", &[], false), "Be brief.");

        let weak = with_context("", &[doc(1, true)], true);
        assert!(weak.contains("nothing that closely matches"), "{weak}");
        assert!(
            weak.contains("[1] report.pdf, page 2:\nRevenue grew."),
            "{weak}"
        );
        assert!(!weak.contains(NO_EXCERPT_NOTE));

        let strong = with_context("", &[doc(1, false)], true);
        assert!(
            strong.starts_with("Answer using the numbered excerpts"),
            "{strong}"
        );
    }

    #[test]
    fn below_threshold_is_serialized_only_when_set() {
        let json = serde_json::to_value(doc(1, false)).unwrap();
        assert!(json.get("below_threshold").is_none(), "{json}");
        let json = serde_json::to_value(doc(1, true)).unwrap();
        assert_eq!(json["below_threshold"], true);
        let back: Source = serde_json::from_value(json).unwrap();
        assert!(back.below_threshold);
    }
}
