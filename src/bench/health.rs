//! `hearth bench --health`: the cost of `GET /api/v1/health` on a store with many chunks, with the
//! record counts read from the counters (as the daemon does) next to counting them by scanning
//! the trees (as it did before), measured on the same store in the same run; and the cost of a
//! `GET /metrics` scrape with 10,000 drop-folder files in the store (their states come from
//! counters too; a scan of their records is timed beside it).
//!
//! The store is filled directly (documents of one chat, vectors tagged with the embedder's model
//! id so nothing is re-embedded at start), then a real daemon serves it and health is timed
//! through the socket.

use std::time::{Duration, Instant};

use anyhow::Context;
use http::Method;

use super::{median, spawn, RemoveOnDrop};
use crate::client::Client;
use crate::store::{
    ChunkRecord, Document, DocumentId, FileKey, FileOutcome, FileRecord, FileState, Scope, Store,
};

/// (p50, p99) of `times`.
fn p50_p99(times: &mut [f64]) -> (f64, f64) {
    times.sort_by(f64::total_cmp);
    let p99 = times[(times.len() * 99 / 100).min(times.len() - 1)];
    (median(times), p99)
}

/// Chunks per synthetic document.
const CHUNKS_PER_DOC: usize = 100;
/// Health requests timed over the socket.
const REQUESTS: usize = 200;
/// Drop-folder file records in the store (`/metrics` reports them by state).
const LIBRARY_FILES: usize = 10_000;

pub(super) fn run(
    rt: &tokio::runtime::Runtime,
    models_dir: &std::path::Path,
    model: &str,
    chunks: usize,
) -> anyhow::Result<String> {
    let scratch = std::env::temp_dir().join(format!("hearth-bench-health-{}", std::process::id()));
    let _cleanup = RemoveOnDrop(scratch.clone());
    let data = scratch.join("data");
    std::fs::create_dir_all(&data)?;
    let fill = Instant::now();
    {
        let store = Store::open(&data.join("db"), 64 << 20).context("open the bench store")?;
        let model_id = crate::embed::Embedder::new(
            models_dir,
            crate::config::DEFAULT_EMBED_MODEL,
            1,
            store.clone(),
        )?
        .model_id()
        .to_string();
        let user = store.create_user("bench")?.user;
        let chat = store.create_chat(user.id, Some("bench"))?;
        let text = "A sentence of about the length a real chunk has. ".repeat(16);
        let vector = vec![0.01f32; crate::embed::DIM];
        for d in 0..chunks.div_ceil(CHUNKS_PER_DOC) {
            let n = CHUNKS_PER_DOC.min(chunks - d * CHUNKS_PER_DOC);
            let doc = Document {
                id: DocumentId::new(),
                scope: Scope::Chat(chat.id),
                filename: format!("doc{d}.txt"),
                format: "text".into(),
                size: 1,
                content_hash: format!("{d:064x}"),
                chunk_count: u32::try_from(n)?,
                pages: None,
                model_id: model_id.clone(),
                created_at: 0,
            };
            let records: Vec<ChunkRecord> = (0..n)
                .map(|_| ChunkRecord {
                    text: text.clone(),
                    page: None,
                    heading_path: Vec::new(),
                    start: 0,
                    end: 1,
                })
                .collect();
            store.insert_document(&doc, &records, &vec![vector.clone(); n])?;
        }
        // Drop-folder records (failed and skipped: no document, no job) of a root this daemon
        // does not watch, so nothing at start touches them.
        for i in 0..LIBRARY_FILES {
            let key = FileKey::new(
                "/bench-root",
                format!("dir{}/file{i}.txt", i % 100).as_bytes(),
            );
            let record = FileRecord {
                size: 1,
                mtime_ns: 1,
                state: if i % 2 == 0 {
                    FileState::Failed
                } else {
                    FileState::Skipped
                },
                reason: None,
                message: None,
                content_hash: None,
                document_id: None,
                chunks: 0,
                indexed_at: None,
                updated_at: 0,
                job: None,
            };
            store.settle_file(&key, None, &FileOutcome::NotIndexed(record), 0)?;
        }
        store.flush_now()?;

        // In process, the same store: the counters against the scans health used to do.
        let mut scan_ms = Vec::new();
        for _ in 0..5 {
            let t = Instant::now();
            let counted = store.scanned_counts();
            scan_ms.push(t.elapsed().as_secs_f64() * 1e3);
            anyhow::ensure!(counted.chunks == chunks, "scan counted {}", counted.chunks);
        }
        let mut read_us = Vec::new();
        for _ in 0..1000 {
            let t = Instant::now();
            let counted = store.counts()?;
            read_us.push(t.elapsed().as_secs_f64() * 1e6);
            anyhow::ensure!(counted.chunks == chunks, "counters say {}", counted.chunks);
        }
        let mut file_scan_ms = Vec::new();
        for _ in 0..5 {
            let t = Instant::now();
            let counted: usize = store.scanned_file_counts().iter().map(|c| c.1).sum();
            file_scan_ms.push(t.elapsed().as_secs_f64() * 1e3);
            anyhow::ensure!(counted == LIBRARY_FILES, "scan counted {counted} files");
        }
        let fill_s = fill.elapsed().as_secs_f64();
        let file_scan = median(&mut file_scan_ms);
        let scan = median(&mut scan_ms);
        let read = median(&mut read_us);
        drop(store);

        let mut daemon = spawn(&scratch, models_dir, model, 1)?;
        let client = Client::new(&scratch.join("hearth.sock"));
        rt.block_on(client.wait_ready(Duration::from_secs(60)))?;
        let mut health_ms = Vec::with_capacity(REQUESTS);
        for _ in 0..REQUESTS {
            let t = Instant::now();
            let (_, body) = rt.block_on(client.request(Method::GET, "/api/v1/health", None))?;
            health_ms.push(t.elapsed().as_secs_f64() * 1e3);
            anyhow::ensure!(body["store"]["chunks"] == chunks, "health: {body}");
        }
        let mut metrics_ms = Vec::with_capacity(REQUESTS);
        for _ in 0..REQUESTS {
            let t = Instant::now();
            let text = rt.block_on(client.text("/metrics"))?;
            metrics_ms.push(t.elapsed().as_secs_f64() * 1e3);
            let skipped = format!(
                "hearth_library_files{{state=\"skipped\"}} {}",
                LIBRARY_FILES / 2
            );
            anyhow::ensure!(text.contains(&skipped), "metrics: {text}");
        }
        daemon.stop();
        let (p50, p99) = p50_p99(&mut health_ms);
        let (m50, m99) = p50_p99(&mut metrics_ms);
        Ok(format!(
            "| measure ({chunks} chunks in {} documents; store filled in {fill_s:.1} s) | value |\n\
             |---|---|\n\
             | record counts from the counters (in process, median of 1000) | {read:.1} µs |\n\
             | record counts by scanning five trees, as health did before (median of 5) | {scan:.1} ms |\n\
             | GET /api/v1/health over the socket, p50 / p99 of {REQUESTS} | {p50:.2} / {p99:.2} ms |\n\
             | {LIBRARY_FILES} drop-folder files by state by scanning their records (median of 5) | {file_scan:.1} ms |\n\
             | GET /metrics over the socket with {LIBRARY_FILES} library files, p50 / p99 of {REQUESTS} (target <= 5 ms) | {m50:.2} / {m99:.2} ms |\n",
            chunks.div_ceil(CHUNKS_PER_DOC)
        ))
    }
}
