//! `hearth bench --rag`: the document side, measured in one run and printed as one table.
//!
//! - embeddings/s at batch 1, batch 32 (short sentences) and for ~256-token chunks, against Python
//!   onnxruntime on the same files with the same thread count (`scripts/embed_bench.py`, using the
//!   packages `scripts/test` installs into `models/.cache/pyref`);
//! - end-to-end ingestion (extract → chunk → embed → store + flush) in chunks/s, as a fraction of
//!   the raw embedder rate on the same chunks;
//! - search latency p50/p99 and recall@10 at 10k and 100k vectors, exact scan vs HNSW, and the
//!   HNSW build time.

use std::path::Path;
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;

use super::corpus::{long_chunk, sentences};
use super::pct;
use crate::embed::{Embedder, Urgency, DIM};
use crate::index::hnsw::Graph;
use crate::index::{dot, Index, IndexOptions};
use crate::ingest::{extract, IngestLimits, Ingestor};
use crate::store::{Scope, Store};

/// Runs the RAG benchmark and returns the table.
pub(super) fn run(
    models_dir: &Path,
    threads: usize,
    sizes: &[usize],
    rt: &tokio::runtime::Runtime,
) -> anyhow::Result<String> {
    let scratch = tempfile_dir()?;
    let store = Store::open(&scratch.join("db"), 64 << 20)?;
    let embedder = Embedder::new(models_dir, threads, store.clone());
    let mut rows: Vec<(String, String, String)> = Vec::new();

    // Embedding throughput, Rust vs Python on the same inputs.
    let short: Vec<String> = sentences(512);
    let long: Vec<String> = (0..64).map(long_chunk).collect();
    rt.block_on(embedder.embed(short[..32].to_vec(), Urgency::Query))?; // load + warm up
    let rust_b1 = rate(short.len().min(128), || {
        for text in &short[..128] {
            rt.block_on(embedder.embed(vec![text.clone()], Urgency::Query))?;
        }
        Ok(())
    })?;
    let rust_b32 = rate(short.len(), || {
        rt.block_on(embedder.embed(short.clone(), Urgency::Query))
            .map(drop)
            .map_err(Into::into)
    })?;
    let rust_long = rate(long.len(), || {
        rt.block_on(embedder.embed(long.clone(), Urgency::Query))
            .map(drop)
            .map_err(Into::into)
    })?;
    let python = python_rates(models_dir, threads);
    for (name, rust, py) in [
        (
            "embeddings/s, batch 1 (short)",
            rust_b1,
            python.as_ref().ok().map(|p| p.0),
        ),
        (
            "embeddings/s, batch 32 (short)",
            rust_b32,
            python.as_ref().ok().map(|p| p.1),
        ),
        (
            "embeddings/s, 256-token chunks",
            rust_long,
            python.as_ref().ok().map(|p| p.2),
        ),
    ] {
        let (py_text, ratio) = match py {
            Some(py) => (format!("{py:.1}"), format!("{:.3}", rust / py)),
            None => ("n/a".into(), "n/a".into()),
        };
        rows.push((
            name.into(),
            format!("{rust:.1}"),
            format!("python {py_text}, ratio {ratio}"),
        ));
    }
    if let Err(err) = &python {
        rows.push((
            "python onnxruntime".into(),
            "skipped".into(),
            format!("{err:#}"),
        ));
    }

    // End-to-end ingestion vs the raw embedder on the same chunks.
    let ingestor = bench_ingestor(&store, &embedder);
    let document = (0..60)
        .map(|i| format!("## Section {i}\n\n{}\n", long_chunk(i)))
        .collect::<String>();
    let bytes = Arc::new(document.into_bytes());
    let (tx, _rx) = tokio::sync::mpsc::channel(1024);
    let started = Instant::now();
    let doc = rt.block_on(ingestor.ingest(Scope::Library, "bench.md", bytes.clone(), &tx))?;
    let ingest_secs = started.elapsed().as_secs_f64();
    let chunks = doc.chunk_count as usize;
    let texts: Vec<String> = (0..doc.chunk_count)
        .filter_map(|n| store.chunk(doc.id, n).ok().flatten().map(|c| c.text))
        .collect();
    let raw = rate(texts.len(), || {
        rt.block_on(embedder.embed(texts.clone(), Urgency::Ingest))
            .map(drop)
            .map_err(Into::into)
    })?;
    let ingest_rate = chunks as f64 / ingest_secs;
    rows.push((
        "ingest chunks/s, upload → ready".into(),
        format!("{ingest_rate:.1}"),
        format!("{chunks} chunks"),
    ));
    rows.push((
        "raw embedder chunks/s, same chunks".into(),
        format!("{raw:.1}"),
        String::new(),
    ));
    rows.push((
        "ingest / raw".into(),
        format!("{:.3}", ingest_rate / raw),
        "≥ 0.85".into(),
    ));

    // Search at each size: exact vs HNSW.
    let largest = sizes.iter().copied().max().unwrap_or(0);
    let texts = sentences(largest + 200);
    let mut vectors: Vec<Vec<f32>> = Vec::with_capacity(texts.len());
    for batch in texts.chunks(1024) {
        vectors.extend(rt.block_on(embedder.embed(batch.to_vec(), Urgency::Ingest))?);
    }
    let queries = &vectors[largest..];
    for &size in sizes {
        let data: Vec<f32> = vectors[..size].iter().flatten().copied().collect();
        let started = Instant::now();
        let graph = Graph::build(&data, DIM, [0; 32], 100);
        let build = started.elapsed();
        let mut exact_times = Vec::new();
        let mut graph_times = Vec::new();
        let mut found = 0;
        for query in queries {
            let t = Instant::now();
            let mut scored: Vec<(f32, usize)> = data
                .chunks_exact(DIM)
                .enumerate()
                .map(|(i, v)| (dot(v, query), i))
                .collect();
            scored.select_nth_unstable_by(9, |a, b| b.0.total_cmp(&a.0));
            exact_times.push(t.elapsed().as_secs_f64() * 1000.0);
            let truth: std::collections::HashSet<usize> =
                scored[..10].iter().map(|(_, i)| *i).collect();
            let t = Instant::now();
            let hits = graph.search(query);
            graph_times.push(t.elapsed().as_secs_f64() * 1000.0);
            found += hits
                .iter()
                .take(10)
                .filter(|(row, _)| truth.contains(row))
                .count();
        }
        let recall = found as f64 / (queries.len() * 10) as f64;
        rows.push((
            format!("search {size}: exact p50/p99 ms"),
            format!("{:.3}", pct(&mut exact_times, 50)),
            format!("p99 {:.3}, recall 1.000", pct(&mut exact_times, 99)),
        ));
        rows.push((
            format!("search {size}: HNSW p50/p99 ms"),
            format!("{:.3}", pct(&mut graph_times, 50)),
            format!(
                "p99 {:.3}, recall@10 {recall:.4}",
                pct(&mut graph_times, 99)
            ),
        ));
        rows.push((
            format!("HNSW build {size}, s"),
            format!("{:.1}", build.as_secs_f64()),
            String::new(),
        ));
    }
    embedder.shutdown();
    let _ = std::fs::remove_dir_all(&scratch);

    let mut out = format!("hearth bench --rag: {threads} thread(s), all-MiniLM-L6-v2 (int8 ONNX), same machine, same run\n");
    out.push_str(&format!(
        "{:<40} {:>10}  {}\n",
        "measure", "value", "comparison / target"
    ));
    for (name, value, note) in rows {
        out.push_str(&format!("{name:<40} {value:>10}  {note}\n"));
    }
    Ok(out)
}

/// An ingestor over a scratch store with an in-memory exact index, for measuring the pipeline.
pub(crate) fn bench_ingestor(store: &Store, embedder: &Embedder) -> Ingestor {
    let index = Index::new(
        store.clone(),
        embedder.model_id(),
        DIM,
        IndexOptions {
            dir: None,
            hnsw_min_rows: usize::MAX,
            ef_search: 100,
        },
    );
    Ingestor::new(
        store.clone(),
        embedder.clone(),
        index,
        IngestLimits {
            extract: extract::Limits::default(),
            extract_timeout: Duration::from_secs(120),
        },
        crate::ingest::worker::Extractor::InProcess,
    )
}

fn tempfile_dir() -> anyhow::Result<std::path::PathBuf> {
    let dir = std::env::temp_dir().join(format!("hearth-bench-rag-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    Ok(dir)
}

/// Items per second of `f` over `n` items.
fn rate(n: usize, f: impl FnOnce() -> anyhow::Result<()>) -> anyhow::Result<f64> {
    let started = Instant::now();
    f()?;
    Ok(n as f64 / started.elapsed().as_secs_f64().max(1e-9))
}

/// (batch 1, batch 32, long chunks) embeddings/s from Python onnxruntime on the same files.
fn python_rates(models_dir: &Path, threads: usize) -> anyhow::Result<(f64, f64, f64)> {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/embed_bench.py");
    let out = Command::new("python3")
        .arg(&script)
        .arg(models_dir)
        .arg(threads.to_string())
        .output()
        .context("cannot run python3")?;
    if !out.status.success() {
        anyhow::bail!(
            "{}",
            String::from_utf8_lossy(&out.stderr)
                .lines()
                .last()
                .unwrap_or("python failed")
        );
    }
    let v: Vec<f64> = serde_json::from_slice(&out.stdout).context("python output")?;
    match v.as_slice() {
        [a, b, c] => Ok((*a, *b, *c)),
        _ => anyhow::bail!("python printed {v:?}"),
    }
}
