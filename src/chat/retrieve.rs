//! Retrieval for a chat turn: embed the question, search the scopes the chat may see, keep the
//! chunks above the relevance threshold, and format them as numbered, citable context.
//!
//! No relevant chunk means no context and no sources: the top-k are never used regardless of
//! their score, because irrelevant context makes small models answer worse.

use crate::embed::{EmbedError, Embedder, Urgency};
use crate::index::Index;
use crate::store::{Scope, Source, SourceOrigin, Store, StoreError};

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
    /// The best chunks for `query` in `scopes`, numbered from 1, best first.
    pub async fn retrieve(
        &self,
        scopes: &[Scope],
        query: &str,
    ) -> Result<Vec<Source>, RetrieveError> {
        let mut vectors = self
            .embedder
            .embed(vec![query.to_string()], Urgency::Query)
            .await?;
        let Some(vector) = vectors.pop() else {
            return Ok(Vec::new());
        };
        let found = self
            .index
            .find(scopes.to_vec(), vector, self.k, self.min_score)
            .await?;
        let mut sources = Vec::with_capacity(found.len());
        for crate::index::Found {
            document: doc,
            chunk,
            score,
        } in found
        {
            sources.push(Source {
                n: u32::try_from(sources.len() + 1).unwrap_or(u32::MAX),
                origin: SourceOrigin::Document {
                    document_id: doc.id,
                    filename: doc.filename,
                    page: chunk.page,
                    start: chunk.start,
                    end: chunk.end,
                },
                score,
                text: chunk.text,
            });
        }
        Ok(sources)
    }
}

/// The system prompt with the sources appended: document excerpts numbered for citation, then
/// what is remembered about the user as a plain list.
pub fn with_context(system: &str, sources: &[Source]) -> String {
    if sources.is_empty() {
        return system.to_string();
    }
    let mut out = String::from(system);
    let documents: Vec<&Source> = sources
        .iter()
        .filter(|s| matches!(s.origin, SourceOrigin::Document { .. }))
        .collect();
    if !documents.is_empty() {
        if !out.is_empty() {
            out.push_str("\n\n");
        }
        out.push_str(
            "Answer using the numbered excerpts below when they are relevant, and cite them like [1]. \
             If they do not contain the answer, say so.\n",
        );
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
