//! Turning a file into a searchable document: sniff and extract (`extract`), cut into
//! token-bounded chunks (`chunk`), embed, and store document + chunks + vectors in one
//! transaction, flushed before the document is reported ready.
//!
//! The same bytes in the same scope are one document (blake3 content hash): a second upload
//! returns the first document and embeds nothing. A file that cannot be extracted stores nothing.

pub mod chunk;
pub mod extract;
pub mod sandbox;
pub mod worker;

use std::sync::{Arc, OnceLock};
use std::time::Duration;

use tokio::sync::mpsc;

use crate::embed::{EmbedError, Embedder, Urgency};
use crate::error_code::ErrorCode;
use crate::index::Index;
use crate::store::{now_millis, ChunkRecord, Document, DocumentId, Scope, Store, StoreError};

/// Overlap between neighbouring chunks, in tokens: enough to keep a sentence cut at a boundary
/// findable from either side.
const CHUNK_OVERLAP: usize = 32;

#[derive(Debug, thiserror::Error)]
pub enum IngestError {
    #[error(transparent)]
    Extract(#[from] extract::ExtractError),
    #[error("extraction took longer than {0:?}")]
    Timeout(Duration),
    /// The extraction worker hit a limit (memory, CPU) on this file.
    #[error("{0}")]
    ResourceLimit(String),
    /// The extraction worker died, or its parser panicked.
    #[error("{0}")]
    Crashed(String),
    #[error(transparent)]
    Embed(#[from] EmbedError),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("tokenizer unavailable: {0}")]
    Tokenizer(String),
    /// A blocking task (hashing, chunking) panicked.
    #[error("ingestion task failed: {0}")]
    Task(String),
}

impl IngestError {
    /// Stable code for the API.
    pub fn code(&self) -> ErrorCode {
        match self {
            IngestError::Extract(err) => err.code(),
            IngestError::Timeout(_) => ErrorCode::ExtractionTimeout,
            IngestError::ResourceLimit(_) => ErrorCode::ExtractResourceLimit,
            IngestError::Crashed(_) => ErrorCode::ExtractCrashed,
            IngestError::Embed(EmbedError::Unavailable(_)) => ErrorCode::EmbedderUnavailable,
            IngestError::Embed(_) => ErrorCode::EmbeddingFailed,
            IngestError::Store(_) => ErrorCode::StoreUnavailable,
            IngestError::Tokenizer(_) => ErrorCode::EmbedderUnavailable,
            IngestError::Task(_) => ErrorCode::Internal,
        }
    }
}

/// Runs CPU-bound work (hashing, tokenizing, chunking) on the blocking pool, off the async runtime.
async fn blocking<T: Send + 'static>(
    work: impl FnOnce() -> T + Send + 'static,
) -> Result<T, IngestError> {
    tokio::task::spawn_blocking(work)
        .await
        .map_err(|err| IngestError::Task(err.to_string()))
}

/// Where an ingestion is, for progress events.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stage {
    Received,
    Extracting,
    Chunking,
    Embedding,
    Indexing,
}

impl Stage {
    pub fn as_str(self) -> &'static str {
        match self {
            Stage::Received => "received",
            Stage::Extracting => "extracting",
            Stage::Chunking => "chunking",
            Stage::Embedding => "embedding",
            Stage::Indexing => "indexing",
        }
    }
}

#[derive(Debug, Clone, Copy)]
pub struct Progress {
    pub stage: Stage,
    /// 0..=100 over the whole ingestion.
    pub percent: u8,
    pub chunks_done: usize,
    pub chunks_total: usize,
}

/// A file's content, extracted and cut into chunks, not yet embedded.
pub struct Prepared {
    pub format: String,
    pub pages: Option<u32>,
    pub chunks: Vec<ChunkRecord>,
}

/// Per-file limits.
#[derive(Debug, Clone)]
pub struct IngestLimits {
    pub extract: extract::Limits,
    pub extract_timeout: Duration,
}

/// Ingests files; cheap to clone.
#[derive(Clone)]
pub struct Ingestor {
    store: Store,
    embedder: Embedder,
    index: Index,
    limits: IngestLimits,
    extractor: worker::Extractor,
    tokenizer: Arc<OnceLock<Result<Arc<tokenizers::Tokenizer>, String>>>,
}

impl Ingestor {
    pub fn new(
        store: Store,
        embedder: Embedder,
        index: Index,
        limits: IngestLimits,
        extractor: worker::Extractor,
    ) -> Ingestor {
        Ingestor {
            store,
            embedder,
            index,
            limits,
            extractor,
            tokenizer: Arc::default(),
        }
    }

    pub fn limits(&self) -> &IngestLimits {
        &self.limits
    }

    /// Where extraction runs (health shows the worker pool).
    pub fn extractor(&self) -> &worker::Extractor {
        &self.extractor
    }

    /// The embedder's tokenizer (verified against the manifest, loaded once), for counting:
    /// the file configures padding to 128 tokens and truncation, which would make every count
    /// 128 (issue 20: `/api/v1/embeddings` reported "hello" as 128 tokens), so both are off.
    fn tokenizer(&self) -> Result<Arc<tokenizers::Tokenizer>, IngestError> {
        self.tokenizer
            .get_or_init(|| {
                let path = self.embedder.tokenizer_path().map_err(|e| e.to_string())?;
                let mut tokenizer = tokenizers::Tokenizer::from_file(&path)
                    .map_err(|e| format!("{}: {e}", path.display()))?;
                // Disabling truncation cannot fail: only a stride too large is rejected.
                let _ = tokenizer.with_truncation(None);
                tokenizer.with_padding(None);
                Ok(Arc::new(tokenizer))
            })
            .clone()
            .map_err(IngestError::Tokenizer)
    }

    /// Ingests `bytes` as `filename` into `scope`. Progress goes to `progress` (dropped events
    /// are fine: a slow reader only misses intermediate percentages).
    pub async fn ingest(
        &self,
        scope: Scope,
        filename: &str,
        bytes: Arc<Vec<u8>>,
        progress: &mpsc::Sender<Progress>,
    ) -> Result<Document, IngestError> {
        let report = |stage, percent, chunks_done, chunks_total| {
            let _ = progress.try_send(Progress {
                stage,
                percent,
                chunks_done,
                chunks_total,
            });
        };
        report(Stage::Received, 5, 0, 0);
        let hashed = bytes.clone();
        let hash = blocking(move || blake3::hash(&hashed).to_hex().to_string()).await?;
        if let Some(existing) = self.store.document_by_hash(&scope, &hash)? {
            return Ok(existing);
        }

        report(Stage::Extracting, 10, 0, 0);
        let prepared = self.prepare(filename, bytes.clone()).await?;
        let texts: Vec<String> = prepared.chunks.iter().map(|c| c.text.clone()).collect();
        let total = texts.len();
        report(Stage::Embedding, 35, 0, total);
        let (done_tx, mut done_rx) = mpsc::unbounded_channel();
        let embedding = self
            .embedder
            .embed_with_progress(texts, Urgency::Ingest, Some(done_tx));
        tokio::pin!(embedding);
        let vectors = loop {
            tokio::select! {
                result = &mut embedding => break result?,
                Some(done) = done_rx.recv() => {
                    let percent = 35 + (55 * done / total.max(1)) as u8;
                    report(Stage::Embedding, percent, done, total);
                }
            }
        };

        report(Stage::Indexing, 92, total, total);
        let document =
            self.new_document(scope.clone(), filename, bytes.len() as u64, hash, &prepared);
        let records = prepared.chunks;
        let inserted = self.store.insert_document(&document, &records, &vectors)?;
        self.store.durable().await?;
        if inserted.created {
            self.index.add(&scope, document.id, &vectors);
        }
        Ok(inserted.document)
    }

    /// Extracts and chunks a file (off the async runtime, bounded by the extraction timeout).
    /// Nothing is embedded or stored yet.
    pub async fn prepare(
        &self,
        filename: &str,
        bytes: Arc<Vec<u8>>,
    ) -> Result<Prepared, IngestError> {
        // In a worker process (the daemon): a hostile file costs the worker, and dropping
        // this future (file changed, upload aborted, shutdown) kills the worker's job.
        let extracted = self
            .extractor
            .extract(
                filename,
                bytes,
                self.limits.extract,
                self.limits.extract_timeout,
            )
            .await?;

        let options = chunk::ChunkOptions {
            max_tokens: crate::embed::MAX_TOKENS,
            overlap: CHUNK_OVERLAP,
        };
        // Loading the tokenizer (first use) reads and parses a file: off the runtime too.
        let this = self.clone();
        let (extracted, chunks) = blocking(move || {
            let tokenizer = this.tokenizer()?;
            let chunks = chunk::chunk(&extracted, &tokenizer, &options);
            Ok::<_, IngestError>((extracted, chunks))
        })
        .await??;
        if chunks.is_empty() {
            return Err(extract::ExtractError::Empty.into());
        }
        Ok(Prepared {
            format: extracted.format.as_str().to_string(),
            pages: extracted.sections.iter().filter_map(|s| s.page).max(),
            chunks: chunks
                .into_iter()
                .map(|c| ChunkRecord {
                    text: c.text,
                    page: c.page,
                    heading_path: c.heading_path,
                    start: c.start as u64,
                    end: c.end as u64,
                })
                .collect(),
        })
    }

    /// The document record for prepared content (vectors made with this embedder).
    pub fn new_document(
        &self,
        scope: Scope,
        filename: &str,
        size: u64,
        content_hash: String,
        prepared: &Prepared,
    ) -> Document {
        Document {
            id: DocumentId::new(),
            scope,
            filename: filename.to_string(),
            format: prepared.format.clone(),
            size,
            content_hash,
            chunk_count: u32::try_from(prepared.chunks.len()).unwrap_or(u32::MAX),
            pages: prepared.pages,
            model_id: self.embedder.model_id().to_string(),
            created_at: now_millis(),
        }
    }

    pub fn embedder(&self) -> &Embedder {
        &self.embedder
    }

    pub fn index(&self) -> &Index {
        &self.index
    }

    pub fn store(&self) -> &Store {
        &self.store
    }

    /// Tokens each text costs the embedder (special tokens included, capped at its window);
    /// tokenized on the blocking pool.
    pub async fn count_tokens(&self, texts: &[String]) -> Result<usize, IngestError> {
        let this = self.clone();
        let texts = texts.to_vec();
        blocking(move || {
            let tokenizer = this.tokenizer()?;
            let mut total = 0;
            for text in &texts {
                let encoding = tokenizer
                    .encode(text.as_str(), true)
                    .map_err(|err| IngestError::Tokenizer(err.to_string()))?;
                total += encoding.len().min(crate::embed::MAX_TOKENS);
            }
            Ok(total)
        })
        .await?
    }

    /// Re-embeds documents whose vectors were made by another embedding model (the model file
    /// changed): their chunk texts are embedded again and vectors and model id replaced in one
    /// transaction, then the index picks them up. Until then they are not searchable, never
    /// compared with vectors of another model. Returns how many documents were re-embedded.
    pub async fn reembed_stale(&self) -> Result<usize, IngestError> {
        let model = self.embedder.model_id().to_string();
        let mut done = 0;
        for doc in self.store.all_documents()? {
            if doc.model_id == model {
                continue;
            }
            let texts = self.store.chunk_texts(doc.id)?;
            let vectors = self.embedder.embed(texts, Urgency::Ingest).await?;
            self.store.replace_vectors(doc.id, &vectors, &model)?;
            self.store.durable().await?;
            self.index.add(&doc.scope, doc.id, &vectors);
            tracing::info!(document = %doc.id, from = %doc.model_id, to = %model, "re-embedded a document");
            done += 1;
        }
        Ok(done)
    }

    /// Deletes a document everywhere (store, index).
    pub async fn delete(&self, id: DocumentId) -> Result<Option<Document>, StoreError> {
        let deleted = self.store.delete_document(id)?;
        if let Some(doc) = &deleted {
            self.store.durable().await?;
            self.index.remove(&doc.scope, doc.id);
        }
        Ok(deleted)
    }
}
