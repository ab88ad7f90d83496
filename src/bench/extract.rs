//! `hearth bench --extract`: what parsing untrusted files in sandboxed worker processes costs.
//! The same PDFs are extracted in process (on blocking threads, as before) and through the
//! worker pool the daemon uses, at the same concurrency, in the same run; plus how long a
//! worker takes to start, and the bench process's memory while a decompression bomb is
//! refused by a worker.
//!
//! The PDFs are generated (text pages with Flate content streams, as real exporters write
//! them), so the bench needs no corpus.

use std::sync::Arc;
use std::time::{Duration, Instant};

use super::{median, rss_kib};
use crate::ingest::extract::Limits;
use crate::ingest::worker::{this_program, Extractor, WorkerPool, WorkerSettings};

/// PDFs per pass.
const FILES: usize = 200;
/// Pages per PDF.
const PAGES: usize = 8;
/// Files extracted at the same time (as the drop folder does).
const CONCURRENCY: usize = 2;
/// Worker starts timed.
const STARTS: usize = 10;

const WORDS: &[&str] = &[
    "heron", "reed", "river", "lantern", "harbour", "signal", "ledger", "orchard", "copper",
    "meadow", "engine", "quarry", "archive", "compass", "glacier", "timber", "beacon", "mortar",
];

/// A PDF of `PAGES` pages of varied text; with `bomb_bytes`, one page of that many bytes of
/// text operators instead.
fn pdf(seed: usize, bomb_bytes: Option<usize>) -> Vec<u8> {
    let pages: Vec<Vec<u8>> = match bomb_bytes {
        Some(n) => {
            let line = b"BT /F1 12 Tf 72 712 Td (bomb) Tj ET\n";
            vec![line.repeat(n / line.len())]
        }
        None => (0..PAGES)
            .map(|page| {
                let mut content = Vec::new();
                for line in 0..40 {
                    let words: Vec<&str> = (0..9)
                        .map(|w| WORDS[(seed * 31 + page * 7 + line * 3 + w) % WORDS.len()])
                        .collect();
                    let y = 760 - line * 18;
                    content.extend_from_slice(
                        format!("BT /F1 11 Tf 50 {y} Td ({}) Tj ET\n", words.join(" ")).as_bytes(),
                    );
                }
                content
            })
            .collect(),
    };
    crate::ingest::extract::pdf_fixture::flate_pdf(&pages)
}

/// Extracts every file `CONCURRENCY` at a time; files per second.
fn pass(
    rt: &tokio::runtime::Runtime,
    extractor: &Extractor,
    files: &[Arc<Vec<u8>>],
) -> anyhow::Result<f64> {
    use futures_util::StreamExt;
    let started = Instant::now();
    let results: Vec<_> = rt.block_on(
        futures_util::stream::iter(files.iter().enumerate())
            .map(|(i, bytes)| async move {
                let name = format!("doc{i}.pdf");
                extractor
                    .extract(
                        &name,
                        bytes.clone(),
                        Limits::default(),
                        Duration::from_secs(60),
                    )
                    .await
            })
            .buffer_unordered(CONCURRENCY)
            .collect(),
    );
    let elapsed = started.elapsed().as_secs_f64();
    for result in results {
        let extracted = result?;
        anyhow::ensure!(
            extracted.sections.len() == PAGES,
            "a PDF lost pages: {}",
            extracted.sections.len()
        );
    }
    Ok(files.len() as f64 / elapsed)
}

pub(super) fn run(rt: &tokio::runtime::Runtime) -> anyhow::Result<String> {
    let files: Vec<Arc<Vec<u8>>> = (0..FILES).map(|i| Arc::new(pdf(i, None))).collect();
    let bytes: usize = files.iter().map(|f| f.len()).sum();
    let pool = Arc::new(WorkerPool::new(WorkerSettings {
        program: this_program(),
        memory_mib: 1024,
        max_workers: CONCURRENCY,
    }));
    let workers = Extractor::Workers(pool.clone());
    let in_process = Extractor::InProcess;
    // Warm both (the worker pool starts its workers; the in-process path its page cache).
    pass(rt, &workers, &files[..CONCURRENCY * 2])?;
    pass(rt, &in_process, &files[..CONCURRENCY * 2])?;
    // Alternate the two, three passes each: a machine's drift hits both alike.
    let (mut inside, mut outside) = (Vec::new(), Vec::new());
    for _ in 0..3 {
        inside.push(pass(rt, &in_process, &files)?);
        outside.push(pass(rt, &workers, &files)?);
    }
    let inside = median(&mut inside);
    let outside = median(&mut outside);

    let mut starts = Vec::new();
    for _ in 0..STARTS {
        let took = rt.block_on(pool.measure_start())?;
        starts.push(took.as_secs_f64() * 1e3);
    }
    let start_ms = median(&mut starts);

    // A 600 KiB PDF that inflates to 200 MiB of operators, through a worker: the bench
    // process (the daemon's side) keeps its size.
    let pid = std::process::id();
    let before = rss_kib(pid)?;
    let bomb = Arc::new(pdf(0, Some(200 << 20)));
    let t = Instant::now();
    let refused = rt.block_on(workers.extract(
        "bomb.pdf",
        bomb.clone(),
        Limits::default(),
        Duration::from_secs(60),
    ));
    let bomb_s = t.elapsed().as_secs_f64();
    let after = rss_kib(pid)?;
    let code = match &refused {
        Ok(_) => "extracted".to_string(),
        Err(err) => err.code().as_str().to_string(),
    };
    let status = pool.status();
    Ok(format!(
        "| measure ({FILES} PDFs of {PAGES} pages, {:.1} MiB; {CONCURRENCY} at a time) | value |\n\
         |---|---|\n\
         | in process (blocking threads), median of 3 passes | {inside:.1} PDFs/s |\n\
         | sandboxed workers (pool of {CONCURRENCY}), median of 3 passes | {outside:.1} PDFs/s |\n\
         | workers / in process | {:.2}× |\n\
         | worker start (spawn → hello), median of {STARTS} | {start_ms:.1} ms |\n\
         | bomb ({} KiB → 200 MiB of operators) through a worker | {code} in {bomb_s:.2} s |\n\
         | this process's RSS before / after the bomb | {} / {} MiB |\n\
         | confinement | {} |\n",
        bytes as f64 / (1 << 20) as f64,
        outside / inside,
        bomb.len() / 1024,
        before / 1024,
        after / 1024,
        status
            .confinement
            .map(|c| format!(
                "seccomp {}, network namespace {}, address space {} MiB{}",
                c.seccomp,
                c.network_namespace,
                c.memory_bytes >> 20,
                if c.missing.is_empty() {
                    String::new()
                } else {
                    format!(", missing: {}", c.missing.join("; "))
                }
            ))
            .unwrap_or_else(|| "unknown".into()),
    ))
}
