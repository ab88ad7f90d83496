//! Vector search per scope (a chat's documents, the library).
//!
//! Each scope's vectors live in one contiguous `f32` slab, loaded from the store on first use.
//! The slab only grows between rebuilds; deleted documents become tombstones, filtered at query
//! time. Small scopes are searched by exact scan (dot products of normalised vectors = cosine,
//! written so the compiler vectorises them). Once a scope holds `hnsw_min_rows` vectors, an HNSW
//! graph (`hnsw.rs`) is built in the background from a snapshot; queries then search the graph
//! for the snapshot's rows, scan the rows added since exactly, drop tombstoned documents, and
//! merge. A rebuild compacts tombstones away. The graph is saved next to the store with a
//! checksum and reused at the next start when it still matches the scope's rows.
//!
//! Only vectors made by the current embedding model are indexed; documents embedded with another
//! model are reported as stale (they need re-embedding) and never compared with these.

pub mod hnsw;

use std::collections::{HashMap, HashSet};
use std::path::PathBuf;
use std::sync::{Arc, PoisonError, RwLock};

use crate::store::{ChunkRecord, Document, DocumentId, Scope, Store, StoreError};
use hnsw::Graph;

/// Candidates an HNSW search walks: recall@10 ≈ 0.99 on MiniLM vectors at 100k (measured in
/// the reference notes), ~1.5 ms per query.
pub const EF_SEARCH: usize = 100;
/// A search result with what the store holds for it.
#[derive(Debug, Clone)]
pub struct Found {
    pub document: Document,
    pub chunk: ChunkRecord,
    pub score: f32,
}

/// One search result: a chunk and its cosine similarity to the query.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Hit {
    pub document: DocumentId,
    pub chunk: u32,
    pub score: f32,
}

/// When and how to use graphs.
#[derive(Debug, Clone)]
pub struct IndexOptions {
    /// Where graph files live (`None`: never persisted).
    pub dir: Option<PathBuf>,
    /// Scopes with fewer vectors are scanned exactly (a scan of 20k vectors takes ~1 ms).
    pub hnsw_min_rows: usize,
    /// Candidates a graph search walks; also the most results it can return.
    pub ef_search: usize,
}

/// The per-scope vector indexes; cheap to clone.
#[derive(Clone)]
pub struct Index {
    store: Store,
    model_id: String,
    dim: usize,
    options: IndexOptions,
    scopes: Arc<RwLock<HashMap<Scope, Arc<ScopeIndex>>>>,
    /// Documents kept but not searchable, by who hid them (a watched folder that is missing:
    /// its files keep their records and documents until it is back).
    hidden: Arc<RwLock<HashMap<String, HashSet<DocumentId>>>>,
}

/// One scope: its vectors, tombstones and (maybe) a graph over a prefix of the rows.
#[derive(Default, Clone)]
struct ScopeIndex {
    ids: Vec<(DocumentId, u32)>,
    data: Vec<f32>,
    /// Documents deleted since the last compaction; their rows are skipped.
    deleted: HashSet<DocumentId>,
    graph: Option<Arc<Graph>>,
    /// A background build is running (at most one per scope).
    building: bool,
}

impl Index {
    pub fn new(store: Store, model_id: &str, dim: usize, options: IndexOptions) -> Index {
        Index {
            store,
            model_id: model_id.to_string(),
            dim,
            options,
            scopes: Arc::default(),
            hidden: Arc::default(),
        }
    }

    /// Leaves `documents` out of every search until [`Index::unhide`] with the same `owner`
    /// (replacing what `owner` hid before).
    pub fn hide(&self, owner: &str, documents: HashSet<DocumentId>) {
        let mut hidden = self.hidden.write().unwrap_or_else(|e| e.into_inner());
        if documents.is_empty() {
            hidden.remove(owner);
        } else {
            hidden.insert(owner.to_string(), documents);
        }
    }

    /// Makes what `owner` hid searchable again.
    pub fn unhide(&self, owner: &str) {
        self.hidden
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .remove(owner);
    }

    /// Every hidden document (empty in the common case: nothing to skip).
    fn hidden(&self) -> HashSet<DocumentId> {
        let hidden = self.hidden.read().unwrap_or_else(|e| e.into_inner());
        hidden.values().flatten().copied().collect()
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
        let hidden = self.hidden();
        for scope in scopes {
            let index = self.scope(scope)?;
            hits.extend(index.search(self.dim, query, k, min_score, &hidden));
        }
        hits.sort_by(|a, b| b.score.total_cmp(&a.score));
        hits.truncate(k);
        Ok(hits)
    }

    /// [`Index::search`] off the async runtime (the first search of a scope loads its vectors
    /// from the store, every search scans or walks them), with each hit's document and chunk
    /// read from the store. A hit deleted in between is left out.
    pub async fn find(
        &self,
        scopes: Vec<Scope>,
        query: Vec<f32>,
        k: usize,
        min_score: f32,
    ) -> Result<Vec<Found>, StoreError> {
        let index = self.clone();
        tokio::task::spawn_blocking(move || {
            let hits = index.search(&scopes, &query, k, min_score)?;
            let mut found = Vec::with_capacity(hits.len());
            for hit in hits {
                if let (Some(document), Some(mut chunk)) = (
                    index.store.document(hit.document)?,
                    index.store.chunk(hit.document, hit.chunk)?,
                ) {
                    // A store written before chunks were capped may hold longer ones: no hit
                    // (and no prompt excerpt made from one) exceeds the cap.
                    if chunk.text.len() > crate::store::MAX_CHUNK_BYTES {
                        let mut end = crate::store::MAX_CHUNK_BYTES;
                        while !chunk.text.is_char_boundary(end) {
                            end -= 1;
                        }
                        chunk.text.truncate(end);
                        chunk.end = chunk.start + end as u64;
                    }
                    found.push(Found {
                        document,
                        chunk,
                        score: hit.score,
                    });
                }
            }
            Ok(found)
        })
        .await
        .map_err(|err| StoreError::Corrupt(format!("search task failed: {err}")))?
    }

    /// Exact search only (for measuring the graph's recall).
    pub fn search_exact(
        &self,
        scope: &Scope,
        query: &[f32],
        k: usize,
    ) -> Result<Vec<Hit>, StoreError> {
        let index = self.scope(scope)?;
        Ok(index.exact(self.dim, query, k, f32::MIN, 0, &HashSet::new()))
    }

    /// Whether a scope currently has a graph, and over how many rows.
    pub fn graph_rows(&self, scope: &Scope) -> Option<usize> {
        let scopes = self.scopes.read().unwrap_or_else(PoisonError::into_inner);
        scopes.get(scope)?.graph.as_ref().map(|g| g.rows)
    }

    /// Adds a stored document's vectors (after its transaction committed).
    pub fn add(&self, scope: &Scope, document: DocumentId, vectors: &[Vec<f32>]) {
        let dim = self.dim;
        self.update(scope, |index| {
            index.deleted.remove(&document);
            // A scope loaded from the store after the document was committed has it already.
            if index.ids.iter().any(|(d, _)| *d == document) {
                return;
            }
            for (n, vector) in vectors.iter().enumerate() {
                if vector.len() == dim {
                    index
                        .ids
                        .push((document, u32::try_from(n).unwrap_or(u32::MAX)));
                    index.data.extend_from_slice(vector);
                }
            }
        });
        self.maybe_rebuild(scope);
    }

    /// Drops a document's vectors (a tombstone until the next rebuild).
    pub fn remove(&self, scope: &Scope, document: DocumentId) {
        self.update(scope, |index| {
            index.deleted.insert(document);
        });
        self.maybe_rebuild(scope);
    }

    /// Forgets a whole scope (its chat was deleted).
    pub fn drop_scope(&self, scope: &Scope) {
        self.scopes
            .write()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(scope);
        if let Some(path) = self.graph_path(scope) {
            let _ = std::fs::remove_file(path);
        }
    }

    /// Applies `f` to a loaded scope (copy-on-write, so searches in flight keep their snapshot).
    /// A scope not loaded yet is left alone: it loads from the store, which already has the
    /// change, on its first search.
    fn update(&self, scope: &Scope, f: impl FnOnce(&mut ScopeIndex)) {
        let mut scopes = self.scopes.write().unwrap_or_else(PoisonError::into_inner);
        if let Some(index) = scopes.get_mut(scope) {
            f(Arc::make_mut(index));
        }
    }

    fn graph_path(&self, scope: &Scope) -> Option<PathBuf> {
        let name = blake3::hash(scope.to_string().as_bytes()).to_hex();
        Some(
            self.options
                .dir
                .as_ref()?
                .join(format!("{}.hnsw", &name[..32])),
        )
    }

    fn scope(&self, scope: &Scope) -> Result<Arc<ScopeIndex>, StoreError> {
        if let Some(index) = self
            .scopes
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .get(scope)
        {
            return Ok(index.clone());
        }
        // Loading under the write lock keeps `add` from racing the load; it happens once per
        // scope and is one scan of the scope's vectors.
        let mut scopes = self.scopes.write().unwrap_or_else(PoisonError::into_inner);
        if let Some(index) = scopes.get(scope) {
            return Ok(index.clone());
        }
        let (vectors, stale) = self.store.scope_vectors(scope, &self.model_id)?;
        if !stale.is_empty() {
            tracing::warn!(%scope, documents = stale.len(), "documents embedded with another model are not searchable until re-embedded");
        }
        let mut index = ScopeIndex::default();
        for v in vectors {
            if v.vector.len() == self.dim {
                index.ids.push((v.document, v.chunk));
                index.data.extend_from_slice(&v.vector);
            }
        }
        if index.ids.len() >= self.options.hnsw_min_rows {
            if let Some(path) = self.graph_path(scope) {
                let hash = ids_hash(&index.ids);
                index.graph =
                    Graph::load(&path, &self.model_id, index.ids.len(), &hash).map(Arc::new);
            }
        }
        let index = Arc::new(index);
        scopes.insert(scope.clone(), index.clone());
        drop(scopes);
        self.maybe_rebuild(scope);
        Ok(index)
    }

    /// Starts a background graph build when a large scope has no graph, or its graph leaves too
    /// many rows to the exact scan, or too many rows are tombstones.
    fn maybe_rebuild(&self, scope: &Scope) {
        let snapshot = {
            let mut scopes = self.scopes.write().unwrap_or_else(PoisonError::into_inner);
            let Some(index) = scopes.get_mut(scope) else {
                return;
            };
            let rows = index.ids.len();
            if index.building || rows < self.options.hnsw_min_rows {
                return;
            }
            let covered = index.graph.as_ref().map_or(0, |g| g.rows);
            let delta = rows - covered;
            let dead = index
                .ids
                .iter()
                .filter(|(d, _)| index.deleted.contains(d))
                .count();
            // Rebuild when a tenth of the rows would be scanned exactly or are dead.
            if index.graph.is_some() && delta * 10 < rows && dead * 10 < rows {
                return;
            }
            let index = Arc::make_mut(index);
            index.building = true;
            (index.ids.clone(), index.data.clone(), index.deleted.clone())
        };
        let this = self.clone();
        let scope = scope.clone();
        let spawned = std::thread::Builder::new()
            .name("hearth-index".into())
            .spawn(move || {
                crate::priority::lower_this_thread();
                this.rebuild(&scope, snapshot);
            });
        if let Err(err) = spawned {
            tracing::error!(error = %err, "cannot start an index build");
        }
    }

    /// Compacts the snapshot, builds its graph, saves it, and swaps it in; rows added meanwhile
    /// stay in the exact-scan tail.
    fn rebuild(
        &self,
        scope: &Scope,
        (ids, data, deleted): (Vec<(DocumentId, u32)>, Vec<f32>, HashSet<DocumentId>),
    ) {
        let dim = self.dim;
        let started = std::time::Instant::now();
        let mut kept_ids = Vec::with_capacity(ids.len());
        let mut kept_data = Vec::with_capacity(data.len());
        for (row, id) in ids.iter().enumerate() {
            if !deleted.contains(&id.0) {
                kept_ids.push(*id);
                kept_data.extend_from_slice(&data[row * dim..(row + 1) * dim]);
            }
        }
        let hash = ids_hash(&kept_ids);
        let graph = Arc::new(Graph::build(&kept_data, dim, hash, self.options.ef_search));
        if let Some(path) = self.graph_path(scope) {
            if let Some(dir) = path.parent() {
                let _ = std::fs::create_dir_all(dir);
            }
            if let Err(err) = graph.save(&path, &self.model_id) {
                tracing::warn!(error = %err, "cannot save the vector graph; it will be rebuilt at next start");
            }
        }
        tracing::info!(%scope, rows = kept_ids.len(), build_ms = started.elapsed().as_millis(), "vector graph built");
        let mut scopes = self.scopes.write().unwrap_or_else(PoisonError::into_inner);
        let Some(current) = scopes.get_mut(scope) else {
            return;
        };
        let current = Arc::make_mut(current);
        // Rows appended after the snapshot follow the compacted snapshot, in order.
        let tail_ids = current.ids.split_off(ids.len().min(current.ids.len()));
        let tail_data = current
            .data
            .split_off((ids.len() * dim).min(current.data.len()));
        current.ids = kept_ids;
        current.data = kept_data;
        current.ids.extend(tail_ids);
        current.data.extend(tail_data);
        // Tombstones compacted away are done; later ones still apply.
        current.deleted.retain(|d| !deleted.contains(d));
        current.graph = Some(graph);
        current.building = false;
    }
}

impl ScopeIndex {
    fn search(
        &self,
        dim: usize,
        query: &[f32],
        k: usize,
        min_score: f32,
        hidden: &HashSet<DocumentId>,
    ) -> Vec<Hit> {
        let Some(graph) = &self.graph else {
            return self.exact(dim, query, k, min_score, 0, hidden);
        };
        let mut hits: Vec<Hit> = graph
            .search(query)
            .into_iter()
            .filter(|(_, score)| *score >= min_score)
            .filter_map(|(row, score)| {
                let (document, chunk) = *self.ids.get(row)?;
                (!self.deleted.contains(&document) && !hidden.contains(&document)).then_some(Hit {
                    document,
                    chunk,
                    score,
                })
            })
            .collect();
        hits.extend(self.exact(dim, query, k, min_score, graph.rows, hidden));
        hits.sort_by(|a, b| b.score.total_cmp(&a.score));
        hits.truncate(k);
        hits
    }

    /// Exact top-k over rows `from..`, skipping deleted and hidden documents.
    fn exact(
        &self,
        dim: usize,
        query: &[f32],
        k: usize,
        min_score: f32,
        from: usize,
        hidden: &HashSet<DocumentId>,
    ) -> Vec<Hit> {
        let start = (from * dim).min(self.data.len());
        let skip;
        let skip = if hidden.is_empty() {
            &self.deleted
        } else {
            skip = self.deleted.union(hidden).copied().collect::<HashSet<_>>();
            &skip
        };
        top_k(
            &self.ids[from.min(self.ids.len())..],
            &self.data[start..],
            dim,
            query,
            k,
            min_score,
            skip,
        )
    }
}

/// Identifies a row list, so a saved graph is only reused for exactly the rows it was built on.
fn ids_hash(ids: &[(DocumentId, u32)]) -> [u8; 32] {
    let mut hasher = blake3::Hasher::new();
    for (doc, chunk) in ids {
        hasher.update(doc.as_bytes());
        hasher.update(&chunk.to_be_bytes());
    }
    *hasher.finalize().as_bytes()
}

/// Exact top-k by dot product over `ids`/`data` (same row order), skipping `deleted` documents.
fn top_k(
    ids: &[(DocumentId, u32)],
    data: &[f32],
    dim: usize,
    query: &[f32],
    k: usize,
    min_score: f32,
    deleted: &HashSet<DocumentId>,
) -> Vec<Hit> {
    if k == 0 || query.len() != dim {
        return Vec::new();
    }
    let mut scored: Vec<(f32, usize)> = data
        .chunks_exact(dim)
        .enumerate()
        .map(|(row, v)| (dot(v, query), row))
        .filter(|(score, row)| {
            *score >= min_score && (deleted.is_empty() || !deleted.contains(&ids[*row].0))
        })
        .collect();
    if scored.len() > k {
        scored.select_nth_unstable_by(k - 1, |a, b| b.0.total_cmp(&a.0));
        scored.truncate(k);
    }
    scored.sort_by(|a, b| b.0.total_cmp(&a.0));
    scored
        .into_iter()
        .map(|(score, row)| Hit {
            document: ids[row].0,
            chunk: ids[row].1,
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

    use crate::store::{now_millis, ChunkRecord, Document};

    fn unit(seed: usize, dim: usize) -> Vec<f32> {
        let v: Vec<f32> = (0..dim)
            .map(|i| ((seed * 37 + i * 11) as f32 * 0.017).sin() + ((seed % 7) as f32) * 0.1)
            .collect();
        let norm = v.iter().map(|x| x * x).sum::<f32>().sqrt();
        v.into_iter().map(|x| x / norm).collect()
    }

    fn store_doc(store: &Store, scope: &Scope, vectors: &[Vec<f32>]) -> DocumentId {
        store_doc_with(store, scope, vectors, "t")
    }

    fn store_doc_with(
        store: &Store,
        scope: &Scope,
        vectors: &[Vec<f32>],
        text: &str,
    ) -> DocumentId {
        let doc = Document {
            id: DocumentId::new(),
            scope: scope.clone(),
            filename: "f".into(),
            format: "text".into(),
            size: 1,
            content_hash: format!("{}", DocumentId::new()),
            chunk_count: vectors.len() as u32,
            pages: None,
            model_id: "m".into(),
            created_at: now_millis(),
        };
        let chunks: Vec<ChunkRecord> = vectors
            .iter()
            .map(|_| ChunkRecord {
                text: text.into(),
                page: None,
                heading_path: vec![],
                start: 0,
                end: text.len() as u64,
            })
            .collect();
        store.insert_document(&doc, &chunks, vectors).unwrap();
        doc.id
    }

    fn wait_for_graph(index: &Index, scope: &Scope, rows: usize) {
        for _ in 0..500 {
            if index.graph_rows(scope) == Some(rows) {
                return;
            }
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        panic!(
            "graph over {rows} rows never appeared: {:?}",
            index.graph_rows(scope)
        );
    }

    #[test]
    fn large_scopes_get_a_graph_that_agrees_with_the_exact_scan_survives_restart_and_drops_deleted()
    {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("db"), 8 << 20).unwrap();
        let dim = 32;
        let scope = Scope::Library;
        let options = IndexOptions {
            dir: Some(dir.path().join("index")),
            hnsw_min_rows: 500,
            ef_search: 50,
        };
        let first: Vec<Vec<f32>> = (0..400).map(|s| unit(s, dim)).collect();
        let second: Vec<Vec<f32>> = (400..800).map(|s| unit(s, dim)).collect();
        let a = store_doc(&store, &scope, &first);
        let index = Index::new(store.clone(), "m", dim, options.clone());
        let query = unit(123, dim);
        // 400 rows: exact only.
        assert_eq!(
            index
                .search(std::slice::from_ref(&scope), &query, 3, -1.0)
                .unwrap()[0]
                .chunk,
            123
        );
        assert_eq!(index.graph_rows(&scope), None);
        let b = store_doc(&store, &scope, &second);
        index.add(&scope, b, &second);
        wait_for_graph(&index, &scope, 800);
        for seed in [5, 123, 450, 799] {
            let q = unit(seed, dim);
            let graph = index
                .search(std::slice::from_ref(&scope), &q, 5, -1.0)
                .unwrap();
            let exact = index.search_exact(&scope, &q, 5).unwrap();
            assert_eq!(graph[0], exact[0], "seed {seed}");
        }
        // A new Index (a restart) reuses the saved graph.
        let restarted = Index::new(store.clone(), "m", dim, options.clone());
        assert!(restarted
            .search(std::slice::from_ref(&scope), &query, 1, -1.0)
            .is_ok());
        assert_eq!(restarted.graph_rows(&scope), Some(800));
        // Deleted documents vanish from results at once.
        store.delete_document(a).unwrap();
        index.remove(&scope, a);
        let hits = index
            .search(std::slice::from_ref(&scope), &query, 10, -1.0)
            .unwrap();
        assert!(hits.iter().all(|h| h.document == b), "{hits:?}");
    }

    #[test]
    fn dot_matches_the_naive_sum() {
        let a: Vec<f32> = (0..387).map(|i| (i as f32 * 0.37).sin()).collect();
        let b: Vec<f32> = (0..387).map(|i| (i as f32 * 0.11).cos()).collect();
        let naive: f32 = a.iter().zip(&b).map(|(x, y)| x * y).sum();
        assert!((dot(&a, &b) - naive).abs() < 1e-3);
    }

    #[test]
    fn top_k_is_best_first_respects_the_threshold_and_skips_deleted() {
        let doc = DocumentId::new();
        let gone = DocumentId::new();
        let mut ids = Vec::new();
        let mut data = Vec::new();
        for (n, v) in [[1.0, 0.0], [0.6, 0.8], [0.0, 1.0], [0.8, 0.6]]
            .iter()
            .enumerate()
        {
            ids.push((doc, n as u32));
            data.extend_from_slice(v);
        }
        ids.push((gone, 0));
        data.extend_from_slice(&[1.0, 0.0]);
        let mut deleted = HashSet::new();
        deleted.insert(gone);
        let hits = top_k(&ids, &data, 2, &[1.0, 0.0], 2, 0.0, &deleted);
        let chunks: Vec<u32> = hits.iter().map(|h| h.chunk).collect();
        assert_eq!(chunks, [0, 3]);
        assert!(hits.iter().all(|h| h.document == doc));
        let hits = top_k(&ids, &data, 2, &[1.0, 0.0], 10, 0.7, &deleted);
        assert_eq!(hits.len(), 2);
    }

    #[tokio::test]
    async fn hits_of_chunks_stored_before_the_cap_are_cut_to_it() {
        // Issue 18.5: a store written by an earlier version may hold a 100 KB chunk; its hit
        // (and a prompt excerpt made from it) is cut to MAX_CHUNK_BYTES on a character boundary.
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("db"), 8 << 20).unwrap();
        let dim = 8;
        let long = "é".repeat(50_000);
        store_doc_with(&store, &Scope::Library, &[unit(1, dim)], &long);
        let options = IndexOptions {
            dir: None,
            hnsw_min_rows: 500,
            ef_search: 50,
        };
        let index = Index::new(store.clone(), "m", dim, options);
        let found = index
            .find(vec![Scope::Library], unit(1, dim), 1, -1.0)
            .await
            .unwrap();
        let text = &found[0].chunk.text;
        assert!(
            text.len() <= crate::store::MAX_CHUNK_BYTES,
            "{}",
            text.len()
        );
        assert!(text.len() > crate::store::MAX_CHUNK_BYTES - 2);
        assert_eq!(found[0].chunk.end - found[0].chunk.start, text.len() as u64);
    }
}
