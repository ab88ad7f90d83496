//! `hearth bench --rag`: the document side, measured in one run and printed as one table.
//!
//! - embeddings/s at batch 1, batch 32 (short sentences) and for ~256-token chunks: the fp32 file
//!   (the default) against the int8 file and against Python onnxruntime on the same fp32 file with
//!   the same thread count (`scripts/embed_bench.py`, using the packages `scripts/test` installs
//!   into `models/.cache/pyref`); and each file's min cosine against an independent float64
//!   forward pass of the weights (`tests/embed_reference.py --float64`);
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
    let embedder = Embedder::new(
        models_dir,
        crate::config::DEFAULT_EMBED_MODEL,
        threads,
        store.clone(),
    )?;
    let mut rows: Vec<(String, String, String)> = Vec::new();

    // Embedding throughput: the fp32 file (the daemon's) and the int8 file through the daemon's
    // embedder, and Python onnxruntime on the same fp32 file with the same thread count.
    let short: Vec<String> = sentences(512);
    let long: Vec<String> = (0..64).map(long_chunk).collect();
    let fp32 = embed_rates(&embedder, &short, &long, rt)?;
    let int8 = child_rates(models_dir, INT8_MODEL, threads);
    let python = python_rates(models_dir, threads, FP32_FILE);
    let python_int8 = python_rates(models_dir, threads, INT8_FILE);
    let names = [
        "embeddings/s, batch 1 (short)",
        "embeddings/s, batch 32 (short)",
        "embeddings/s, 256-token chunks",
    ];
    for (i, name) in names.iter().enumerate() {
        let ratio = |other: Option<f64>| match other {
            Some(v) => format!("{v:.1} ({:.2}x)", fp32[i] / v),
            None => "n/a".into(),
        };
        rows.push((
            format!("{name}, fp32"),
            format!("{:.1}", fp32[i]),
            format!(
                "int8 file {}; python onnxruntime: fp32 {}, int8 {}",
                ratio(int8.as_ref().ok().map(|r| r[i])),
                ratio(python.as_ref().ok().map(|r| r[i])),
                ratio(python_int8.as_ref().ok().map(|r| r[i]))
            ),
        ));
    }
    if let Err(err) = &int8 {
        rows.push((
            "int8 file".into(),
            "skipped".into(),
            format!("{err:#} (./models/fetch embed-int8)"),
        ));
    }
    if let Err(err) = &python_int8 {
        rows.push((
            "python onnxruntime, int8 file".into(),
            "skipped".into(),
            format!("{err:#}"),
        ));
    }
    if let Err(err) = &python {
        rows.push((
            "python onnxruntime".into(),
            "skipped".into(),
            format!("{err:#}"),
        ));
    }
    // Exactness: min cosine against an independent float64 forward pass of the weights, on
    // short sentences and full 256-token windows.
    let sample: Vec<String> = short[..24].iter().chain(&long[..8]).cloned().collect();
    match float64_reference(models_dir, &sample) {
        Ok(reference) => {
            let fp32 = rt.block_on(embedder.embed(sample.clone(), Urgency::Query))?;
            rows.push((
                "min cosine vs float64, fp32".into(),
                format!("{:.7}", min_cosine(&fp32, &reference)),
                format!("{} texts; target >= 0.9999", sample.len()),
            ));
            // The int8 file through Python onnxruntime (the daemon's own numbers on it agree
            // to 1e-5: tests/it/docs.rs): this process already has its one ORT environment.
            match onnx_reference(models_dir, INT8_FILE, &sample) {
                Ok(int8) => rows.push((
                    "min cosine vs float64, int8 file".into(),
                    format!("{:.7}", min_cosine(&int8, &reference)),
                    format!("{} texts", sample.len()),
                )),
                Err(err) => rows.push((
                    "min cosine vs float64, int8 file".into(),
                    "skipped".into(),
                    format!("{err:#}"),
                )),
            }
        }
        Err(err) => rows.push((
            "float64 reference".into(),
            "skipped".into(),
            format!("{err:#}"),
        )),
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

    let mut out = format!("hearth bench --rag: {threads} thread(s), all-MiniLM-L6-v2 (fp32 ONNX), same machine, same run\n");
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

/// The int8 embedder (the previous default) and the two files, for the comparisons.
const INT8_MODEL: &str = "all-minilm-l6-v2-int8";
const FP32_FILE: &str = "all-MiniLM-L6-v2.fp32.onnx";
const INT8_FILE: &str = "all-MiniLM-L6-v2.onnx";

/// `hearth bench --embed-rates MODEL`: [`embed_rates`] of `model` as a JSON line.
pub(super) fn rates_json(
    models_dir: &Path,
    model: &str,
    threads: usize,
    rt: &tokio::runtime::Runtime,
) -> anyhow::Result<String> {
    let scratch = tempfile_dir()?.join(model);
    let store = Store::open(&scratch.join("db"), 16 << 20)?;
    let embedder = Embedder::new(models_dir, model, threads, store)?;
    let rates = embed_rates(
        &embedder,
        &sentences(512),
        &(0..64).map(long_chunk).collect::<Vec<_>>(),
        rt,
    );
    embedder.shutdown();
    let _ = std::fs::remove_dir_all(&scratch);
    Ok(format!("{}\n", serde_json::to_string(&rates?)?))
}

/// [`embed_rates`] of `model` measured by a child `hearth bench --embed-rates`.
fn child_rates(models_dir: &Path, model: &str, threads: usize) -> anyhow::Result<[f64; 3]> {
    let out = Command::new(std::env::current_exe()?)
        .args(["bench", "--embed-rates", model, "--threads"])
        .arg(threads.to_string())
        .arg("--models-dir")
        .arg(models_dir)
        .output()
        .context("cannot run hearth bench --embed-rates")?;
    json_output(&out)
}

/// A child's JSON on stdout, or its last stderr line as the error.
fn json_output<T: serde::de::DeserializeOwned>(out: &std::process::Output) -> anyhow::Result<T> {
    if !out.status.success() {
        anyhow::bail!(
            "{}",
            String::from_utf8_lossy(&out.stderr)
                .lines()
                .last()
                .unwrap_or("the child process failed")
        );
    }
    serde_json::from_slice(&out.stdout).context("the child process printed no JSON")
}

/// [batch 1, batch 32, long chunks] embeddings/s of `embedder` (loaded and warmed up first).
fn embed_rates(
    embedder: &Embedder,
    short: &[String],
    long: &[String],
    rt: &tokio::runtime::Runtime,
) -> anyhow::Result<[f64; 3]> {
    rt.block_on(embedder.embed(short[..32].to_vec(), Urgency::Query))?; // load + warm up
    let b1 = rate(short.len().min(128), || {
        for text in &short[..128] {
            rt.block_on(embedder.embed(vec![text.clone()], Urgency::Query))?;
        }
        Ok(())
    })?;
    let b32 = rate(short.len(), || {
        rt.block_on(embedder.embed(short.to_vec(), Urgency::Query))
            .map(drop)
            .map_err(Into::into)
    })?;
    let chunks = rate(long.len(), || {
        rt.block_on(embedder.embed(long.to_vec(), Urgency::Query))
            .map(drop)
            .map_err(Into::into)
    })?;
    Ok([b1, b32, chunks])
}

/// Smallest cosine between paired unit vectors.
fn min_cosine<T: Copy + Into<f64>>(got: &[Vec<T>], reference: &[Vec<f64>]) -> f64 {
    got.iter()
        .zip(reference)
        .map(|(a, b)| a.iter().zip(b).map(|(x, y)| (*x).into() * y).sum::<f64>())
        .fold(f64::INFINITY, f64::min)
}

/// Unit vectors of `texts` from the float64 forward pass in `tests/embed_reference.py`.
fn float64_reference(models_dir: &Path, texts: &[String]) -> anyhow::Result<Vec<Vec<f64>>> {
    reference(models_dir, &["--float64"], texts)
}

/// Unit vectors of `texts` from Python onnxruntime on `file`.
fn onnx_reference(
    models_dir: &Path,
    file: &str,
    texts: &[String],
) -> anyhow::Result<Vec<Vec<f64>>> {
    reference(models_dir, &["--onnx", file], texts)
}

/// `tests/embed_reference.py MODELS_DIR MODE…` with `texts` as JSON on stdin.
fn reference(models_dir: &Path, mode: &[&str], texts: &[String]) -> anyhow::Result<Vec<Vec<f64>>> {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/embed_reference.py");
    let mut child = Command::new("python3")
        .arg(&script)
        .arg(models_dir)
        .args(mode)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .context("cannot run python3")?;
    let input = serde_json::to_vec(texts)?;
    let mut stdin = child.stdin.take().context("stdin")?;
    let writer = std::thread::spawn(move || std::io::Write::write_all(&mut stdin, &input));
    let out = child.wait_with_output()?;
    writer
        .join()
        .map_err(|_| anyhow::anyhow!("writer panicked"))??;
    json_output(&out)
}

/// [batch 1, batch 32, long chunks] embeddings/s from Python onnxruntime on `file`.
fn python_rates(models_dir: &Path, threads: usize, file: &str) -> anyhow::Result<[f64; 3]> {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/embed_bench.py");
    let out = Command::new("python3")
        .arg(&script)
        .arg(models_dir)
        .arg(threads.to_string())
        .arg(file)
        .output()
        .context("cannot run python3")?;
    json_output(&out)
}
