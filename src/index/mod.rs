//! Vector search per scope (a chat's documents, the library).
//!
//! Each scope's vectors live in one contiguous `f32` slab, loaded from the store on first use and
//! kept in step with inserts and deletes. Search is an exact scan: dot products of normalised
//! vectors (= cosine similarity) over the slab, written so the compiler vectorises it. That is
//! fast to tens of thousands of chunks per scope and exact by construction.
//!
//! Only vectors made by the current embedding model are indexed; documents embedded with another
//! model are reported as stale (they need re-embedding) and never compared with these.

use std::collections::HashMap;
use std::sync::{Arc, PoisonError, RwLock};

use crate::store::{DocumentId, Scope, Store, StoreError};

/// One search result: a chunk and its cosine similarity to the query.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Hit {
    pub document: DocumentId,
    pub chunk: u32,
    pub score: f32,
}

/// The per-scope vector indexes; cheap to clone.
#[derive(Clone)]
pub struct Index {
    store: Store,
    model_id: String,
    dim: usize,
    scopes: Arc<RwLock<HashMap<Scope, Arc<Slab>>>>,
}

/// One scope's vectors, row-major.
#[derive(Default, Clone)]
struct Slab {
    ids: Vec<(DocumentId, u32)>,
    data: Vec<f32>,
}

impl Index {
    pub fn new(store: Store, model_id: &str, dim: usize) -> Index {
        Index {
            store,
            model_id: model_id.to_string(),
            dim,
            scopes: Arc::default(),
        }
    }

    /// The `k` chunks most similar to `query` across `scopes`, best first, at or above
    /// `min_score`.
    pub fn search(
        &self,
        scopes: &[Scope],
        query: &[f32],
        k: usize,
        min_score: f32,
    ) -> Result<Vec<Hit>, StoreError> {
        let mut hits = Vec::new();
        for scope in scopes {
            let slab = self.slab(scope)?;
            hits.extend(top_k(&slab, self.dim, query, k, min_score));
        }
        hits.sort_by(|a, b| b.score.total_cmp(&a.score));
        hits.truncate(k);
        Ok(hits)
    }

    /// Adds a stored document's vectors (after its transaction committed).
    pub fn add(&self, scope: &Scope, document: DocumentId, vectors: &[Vec<f32>]) {
        self.update(scope, |slab| {
            for (n, vector) in vectors.iter().enumerate() {
                if vector.len() == self.dim {
                    slab.ids
                        .push((document, u32::try_from(n).unwrap_or(u32::MAX)));
                    slab.data.extend_from_slice(vector);
                }
            }
        });
    }

    /// Drops a document's vectors.
    pub fn remove(&self, scope: &Scope, document: DocumentId) {
        let dim = self.dim;
        self.update(scope, |slab| {
            let mut kept = Slab::default();
            for (row, id) in slab.ids.iter().enumerate() {
                if id.0 != document {
                    kept.ids.push(*id);
                    kept.data
                        .extend_from_slice(&slab.data[row * dim..(row + 1) * dim]);
                }
            }
            *slab = kept;
        });
    }

    /// Forgets a whole scope (its chat was deleted).
    pub fn drop_scope(&self, scope: &Scope) {
        self.scopes
            .write()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(scope);
    }

    /// Applies `f` to a loaded slab (copy-on-write, so searches in flight keep their snapshot).
    /// A scope not loaded yet is left alone: it loads from the store, which already has the
    /// change, on its first search.
    fn update(&self, scope: &Scope, f: impl FnOnce(&mut Slab)) {
        let mut scopes = self.scopes.write().unwrap_or_else(PoisonError::into_inner);
        if let Some(slab) = scopes.get_mut(scope) {
            f(Arc::make_mut(slab));
        }
    }

    fn slab(&self, scope: &Scope) -> Result<Arc<Slab>, StoreError> {
        if let Some(slab) = self
            .scopes
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .get(scope)
        {
            return Ok(slab.clone());
        }
        // Load outside the lock would race with `add`; loading under the write lock is short
        // (one scan of the scope's vectors) and happens once per scope.
        let mut scopes = self.scopes.write().unwrap_or_else(PoisonError::into_inner);
        if let Some(slab) = scopes.get(scope) {
            return Ok(slab.clone());
        }
        let (vectors, stale) = self.store.scope_vectors(scope, &self.model_id)?;
        if !stale.is_empty() {
            tracing::warn!(%scope, documents = stale.len(), "documents embedded with another model are not searchable until re-embedded");
        }
        let mut slab = Slab::default();
        for v in vectors {
            if v.vector.len() == self.dim {
                slab.ids.push((v.document, v.chunk));
                slab.data.extend_from_slice(&v.vector);
            }
        }
        let slab = Arc::new(slab);
        scopes.insert(scope.clone(), slab.clone());
        Ok(slab)
    }
}

/// Exact top-k by dot product.
fn top_k(slab: &Slab, dim: usize, query: &[f32], k: usize, min_score: f32) -> Vec<Hit> {
    if k == 0 || query.len() != dim {
        return Vec::new();
    }
    let mut scored: Vec<(f32, usize)> = slab
        .data
        .chunks_exact(dim)
        .enumerate()
        .map(|(row, v)| (dot(v, query), row))
        .filter(|(score, _)| *score >= min_score)
        .collect();
    if scored.len() > k {
        scored.select_nth_unstable_by(k - 1, |a, b| b.0.total_cmp(&a.0));
        scored.truncate(k);
    }
    scored.sort_by(|a, b| b.0.total_cmp(&a.0));
    scored
        .into_iter()
        .map(|(score, row)| Hit {
            document: slab.ids[row].0,
            chunk: slab.ids[row].1,
            score,
        })
        .collect()
}

/// Dot product in eight independent lanes so LLVM emits SIMD adds.
pub fn dot(a: &[f32], b: &[f32]) -> f32 {
    let mut lanes = [0f32; 8];
    let chunks_a = a.chunks_exact(8);
    let chunks_b = b.chunks_exact(8);
    let tail: f32 = chunks_a
        .remainder()
        .iter()
        .zip(chunks_b.remainder())
        .map(|(x, y)| x * y)
        .sum();
    for (x, y) in chunks_a.zip(chunks_b) {
        for i in 0..8 {
            lanes[i] += x[i] * y[i];
        }
    }
    lanes.iter().sum::<f32>() + tail
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dot_matches_the_naive_sum() {
        let a: Vec<f32> = (0..387).map(|i| (i as f32 * 0.37).sin()).collect();
        let b: Vec<f32> = (0..387).map(|i| (i as f32 * 0.11).cos()).collect();
        let naive: f32 = a.iter().zip(&b).map(|(x, y)| x * y).sum();
        assert!((dot(&a, &b) - naive).abs() < 1e-3);
    }

    #[test]
    fn top_k_is_best_first_and_respects_the_threshold() {
        let doc = DocumentId::new();
        let mut slab = Slab::default();
        for (n, v) in [[1.0, 0.0], [0.6, 0.8], [0.0, 1.0], [0.8, 0.6]]
            .iter()
            .enumerate()
        {
            slab.ids.push((doc, n as u32));
            slab.data.extend_from_slice(v);
        }
        let hits = top_k(&slab, 2, &[1.0, 0.0], 2, 0.0);
        let chunks: Vec<u32> = hits.iter().map(|h| h.chunk).collect();
        assert_eq!(chunks, [0, 3]);
        let hits = top_k(&slab, 2, &[1.0, 0.0], 10, 0.7);
        assert_eq!(hits.len(), 2);
    }
}
