//! `hearth bench --library`: the drop folder, measured against a real daemon process in one run.
//!
//! - files/s and chunks/s for a folder of mixed files (Markdown, text, HTML, code; a tenth of
//!   them long enough for several chunks), moved into a watched folder at once, against the raw
//!   embedder rate on exactly the same chunks (the same extraction and chunking code, embedded
//!   in-process with the same thread count) — the reference the issue names;
//! - time from a file's last write to searchable, p50/p95, with the default stability interval;
//! - reconcile scan time over unchanged files (the mixed files plus skipped binaries);
//! - daemon RSS before and during the large ingest.

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use http::Method;
use serde_json::{json, Value};

use super::corpus::{long_chunk, sentences};
use super::{command, pct, rss_kib, BenchDaemon, RemoveOnDrop};
use crate::client::Client;
use crate::embed::{Embedder, Urgency};
use crate::ingest::Ingestor;
use crate::store::Store;

/// Write → searchable samples.
const LATENCY_SAMPLES: usize = 12;

/// Runs the benchmark and returns the table.
pub(super) fn run(
    models_dir: &Path,
    model: &str,
    threads: u32,
    files: usize,
    scan_files: usize,
    rt: &tokio::runtime::Runtime,
) -> anyhow::Result<String> {
    let scratch = std::env::temp_dir().join(format!("hearth-bench-lib-{}", std::process::id()));
    let _cleanup = RemoveOnDrop(scratch.clone());
    let watched = scratch.join("watched");
    let staged = scratch.join("staged");
    std::fs::create_dir_all(&watched)?;
    let names = write_mixed(&staged, files)?;
    let binaries = scan_files.saturating_sub(files);
    let filler = scratch.join("filler");
    write_binaries(&filler, binaries)?;

    // The reference before and after the daemon's run (the mean is compared): the machine's speed
    // drifts, and the daemon must not share the cores with it.
    let reference = Raw::new(models_dir, threads, &scratch)?;
    let raw_before = reference.rate(&staged, &names, rt)?;

    let dir = scratch.join("daemon");
    let mut cmd = command(&dir, models_dir, model, threads)?;
    cmd.arg("--watch").arg(&watched);
    let mut daemon = BenchDaemon {
        child: cmd
            .stdout(std::process::Stdio::null())
            .spawn()
            .context("cannot spawn hearth serve")?,
    };
    let pid = daemon.child.id();
    let client = Client::new(&dir.join("hearth.sock"));
    rt.block_on(client.wait_ready(Duration::from_secs(60)))?;
    // Load the embedder before timing (the first use loads it).
    rt.block_on(client.call(
        Method::POST,
        "/api/v1/embeddings",
        Some(&json!({"input": ["warm up"]})),
    ))?;
    let rss_before = rss_kib(pid)?;
    let user = rt.block_on(client.call(
        Method::POST,
        "/api/v1/users",
        Some(&json!({"username": "bench"})),
    ))?;
    let user = user["id"].as_str().context("user without id")?.to_string();
    let mut idle_tps = Vec::new();
    for _ in 0..REPLIES {
        idle_tps.push(rt.block_on(decode_rate(&client, &user))?);
    }

    // 1. Ingest rate: the whole folder appears at once (one rename).
    let started = Instant::now();
    std::fs::rename(&staged, watched.join("mixed"))?;
    // Replies generated while the folder is being ingested (ingestion yields to them), one
    // every ~0.7 s while jobs remain, so they start at different points of an embedding batch.
    std::thread::sleep(Duration::from_millis(1500));
    let mut busy_tps = Vec::new();
    let mut replying = Duration::ZERO;
    let mut next_reply = Instant::now();
    let mut rss_peak = rss_before;
    let status = loop {
        let s = rt.block_on(client.call(Method::GET, "/api/v1/library", None))?;
        rss_peak = rss_peak.max(rss_kib(pid)?);
        if busy_tps.len() < REPLIES
            && s["jobs"].as_u64().unwrap_or(0) > 0
            && Instant::now() >= next_reply
        {
            let reply = Instant::now();
            busy_tps.push(rt.block_on(decode_rate(&client, &user))?);
            replying += reply.elapsed();
            next_reply = Instant::now() + Duration::from_millis(700);
            continue;
        }
        let settled = ["indexed", "failed", "skipped"]
            .iter()
            .map(|k| s["counts"][k].as_u64().unwrap_or(0))
            .sum::<u64>();
        if settled as usize >= files && s["jobs"] == 0 {
            break s;
        }
        if started.elapsed() > Duration::from_secs(1800) {
            bail!("ingest did not finish: {s}");
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    // Ingestion waits while a reply is generated (by design): the rate is over the time it had.
    let ingest_secs = (started.elapsed() - replying).as_secs_f64();
    let listed = all_files(&client, rt)?;
    let chunks: u64 = listed
        .iter()
        .map(|f| f["chunks"].as_u64().unwrap_or(0))
        .sum();
    let indexed = status["counts"]["indexed"].as_u64().unwrap_or(0);

    // 2. Last write → searchable.
    let mut latencies = Vec::new();
    for (i, sentence) in sentences(LATENCY_SAMPLES + 40)
        .into_iter()
        .skip(40)
        .enumerate()
    {
        let name = format!("late-{i}.txt");
        let path = watched.join(&name);
        std::fs::write(&path, &sentence)?;
        let written = Instant::now();
        loop {
            let res = rt.block_on(client.call(
                Method::POST,
                "/api/v1/search",
                Some(&json!({"scope": "library", "query": sentence, "k": 1})),
            ))?;
            if res["results"][0]["filename"]
                .as_str()
                .is_some_and(|f| f.ends_with(&name))
            {
                break;
            }
            if written.elapsed() > Duration::from_secs(60) {
                bail!("{name} never became searchable");
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        latencies.push(written.elapsed().as_secs_f64() * 1000.0);
    }

    // 3. Reconcile scan over unchanged files (the mixed ones + skipped binaries).
    std::fs::rename(&filler, watched.join("filler"))?;
    wait_settled(&client, rt, files + LATENCY_SAMPLES + binaries)?;
    let mut scan_ms = Vec::new();
    let mut scanned = 0;
    for _ in 0..5 {
        let before = rt.block_on(client.call(Method::GET, "/api/v1/library", None))?["scans"]
            .as_u64()
            .unwrap_or(0);
        rt.block_on(client.call(Method::POST, "/api/v1/library/rescan", None))?;
        let s = loop {
            let s = rt.block_on(client.call(Method::GET, "/api/v1/library", None))?;
            if s["scans"].as_u64().unwrap_or(0) > before {
                break s;
            }
            std::thread::sleep(Duration::from_millis(5));
        };
        scan_ms.push(s["last_scan_ms"].as_f64().unwrap_or(f64::NAN));
        scanned = s["last_scan_files"].as_u64().unwrap_or(0);
        if s["jobs"] != 0 || s["waiting"] != 0 {
            bail!("a rescan of unchanged files queued work: {s}");
        }
    }
    daemon.stop();

    // 4. The raw embedder on the same chunks, same threads, in this process.
    let raw_after = reference.rate(&watched.join("mixed"), &names, rt)?;
    reference.embedder.shutdown();
    let raw = (raw_after.0, (raw_before.1 + raw_after.1) / 2.0);

    let ingest_chunks_rate = chunks as f64 / ingest_secs;
    let mut rows: Vec<(String, String, String)> = vec![
        (
            "files ingested (mixed)".into(),
            format!("{indexed}"),
            format!(
                "of {files}; {chunks} chunks; {ingest_secs:.1} s (+{:.1} s paused for replies)",
                replying.as_secs_f64()
            ),
        ),
        (
            "ingest files/s".into(),
            format!("{:.1}", indexed as f64 / ingest_secs),
            String::new(),
        ),
        (
            "ingest chunks/s".into(),
            format!("{ingest_chunks_rate:.1}"),
            String::new(),
        ),
        (
            "raw embedder chunks/s, same chunks".into(),
            format!("{:.1}", raw.1),
            format!(
                "{} chunks; before {:.1}, after {:.1}",
                raw.0, raw_before.1, raw_after.1
            ),
        ),
        (
            "ingest / raw".into(),
            format!("{:.3}", ingest_chunks_rate / raw.1),
            "target >= 0.85".into(),
        ),
        (
            "last write -> searchable p50 ms".into(),
            format!("{:.0}", pct(&mut latencies, 50)),
            format!(
                "p95 {:.0} ms; includes the 2000 ms stability wait",
                pct(&mut latencies, 95)
            ),
        ),
        (
            format!("reconcile scan, {scanned} unchanged files, ms"),
            format!("{:.0}", pct(&mut scan_ms, 50)),
            format!(
                "median of {}; {binaries} are skipped binaries",
                scan_ms.len()
            ),
        ),
        {
            let (idle, busy) = (pct(&mut idle_tps, 50), pct(&mut busy_tps, 50));
            let worst = busy_tps.iter().copied().fold(f64::INFINITY, f64::min);
            (
                format!(
                    "chat decode tok/s during ingest (median of {})",
                    busy_tps.len()
                ),
                format!("{busy:.1}"),
                format!(
                    "idle {idle:.1}, ratio {:.3}; worst reply {worst:.1} ({:.3})",
                    busy / idle,
                    worst / idle
                ),
            )
        },
        (
            "daemon RSS before / peak during ingest, MiB".into(),
            format!("{:.1}", rss_before as f64 / 1024.0),
            format!("peak {:.1}", rss_peak as f64 / 1024.0),
        ),
    ];
    rows.retain(|r| !r.0.is_empty());
    let mut out = format!(
        "hearth bench --library: {threads} thread(s), all-MiniLM-L6-v2, real daemon process, same machine, same run\n"
    );
    out.push_str(&format!(
        "{:<44} {:>10}  {}\n",
        "measure", "value", "comparison / target"
    ));
    for (name, value, note) in rows {
        out.push_str(&format!("{name:<44} {value:>10}  {note}\n"));
    }
    Ok(out)
}

/// Replies timed idle and during the ingest (the one during ingest depends on where in an
/// embedding batch it starts, so one sample is noise).
pub(super) const REPLIES: usize = 5;

/// Completion tokens/s of one greedy 96-token reply, as the daemon reports it, in a new chat:
/// decode slows as a chat's context grows (52 tok/s at 29 prompt tokens, 35 at 450 here), so
/// replies compared with each other must not share a history. The chat has a title, so no
/// title job runs after it.
pub(super) async fn decode_rate(client: &Client, user: &str) -> anyhow::Result<f64> {
    let chat = client
        .call(
            Method::POST,
            "/api/v1/chats",
            Some(&json!({"user_id": user, "title": "bench"})),
        )
        .await?;
    let chat = chat["id"].as_str().context("chat without id")?;
    let body = json!({"content": "Write a long story about a lighthouse keeper.", "options": {"temperature": 0, "max_tokens": 96}});
    let mut events = client
        .stream(&format!("/api/v1/chats/{chat}/messages"), &body)
        .await?;
    while let Some(event) = events.next().await? {
        match event.event.as_str() {
            "done" => {
                return event.data["timings"]["completion_tokens_per_s"]
                    .as_f64()
                    .context("done without timings")
            }
            "error" => bail!("chat failed: {}", event.data),
            _ => {}
        }
    }
    bail!("the stream ended without done")
}

/// Writes `n` mixed documents; returns their names below `dir`.
pub(super) fn write_mixed(dir: &Path, n: usize) -> anyhow::Result<Vec<String>> {
    let lines = sentences(n * 3);
    let mut names = Vec::with_capacity(n);
    for i in 0..n {
        let sub = dir.join(format!("part{}", i % 10));
        std::fs::create_dir_all(&sub)?;
        let body = if i % 10 == 9 {
            // Long: several chunks.
            (0..6)
                .map(|k| long_chunk(i * 6 + k))
                .collect::<Vec<_>>()
                .join("\n\n")
        } else {
            format!(
                "{}\n{}\n{}",
                lines[i * 3],
                lines[i * 3 + 1],
                lines[i * 3 + 2]
            )
        };
        let (name, text) = match i % 4 {
            0 => (format!("n{i}.md"), format!("# Note {i}\n\n{body}\n")),
            1 => (format!("n{i}.txt"), body),
            2 => (
                format!("n{i}.html"),
                format!("<html><body><h1>Page {i}</h1><p>{body}</p></body></html>"),
            ),
            _ => (
                format!("n{i}.py"),
                format!(
                    "# {}\ndef f{i}():\n    return {i}\n",
                    body.replace('\n', "\n# ")
                ),
            ),
        };
        std::fs::write(sub.join(&name), text)?;
        names.push(format!("part{}/{name}", i % 10));
    }
    Ok(names)
}

/// `n` small binary files (skipped as unsupported, so the scan has many known files cheaply).
fn write_binaries(dir: &Path, n: usize) -> anyhow::Result<()> {
    for i in 0..n {
        let sub = dir.join(format!("b{}", i / 500));
        std::fs::create_dir_all(&sub)?;
        let mut bytes = b"\x00\x01\x02BIN".to_vec();
        bytes.extend_from_slice(&(i as u64).to_le_bytes());
        std::fs::write(sub.join(format!("blob{i}.dat")), bytes)?;
    }
    Ok(())
}

fn all_files(client: &Client, rt: &tokio::runtime::Runtime) -> anyhow::Result<Vec<Value>> {
    let mut out = Vec::new();
    let mut after: Option<String> = None;
    loop {
        let path = match &after {
            Some(a) => format!("/api/v1/library/files?limit=1000&after={a}"),
            None => "/api/v1/library/files?limit=1000".into(),
        };
        let page = rt.block_on(client.call(Method::GET, &path, None))?;
        out.extend(page["files"].as_array().cloned().unwrap_or_default());
        match page["next_after"].as_str() {
            Some(a) => after = Some(a.to_string()),
            None => return Ok(out),
        }
    }
}

fn wait_settled(client: &Client, rt: &tokio::runtime::Runtime, n: usize) -> anyhow::Result<()> {
    let started = Instant::now();
    loop {
        let s = rt.block_on(client.call(Method::GET, "/api/v1/library", None))?;
        let settled: u64 = ["indexed", "failed", "skipped"]
            .iter()
            .map(|k| s["counts"][k].as_u64().unwrap_or(0))
            .sum();
        if settled as usize >= n && s["jobs"] == 0 && s["waiting"] == 0 {
            return Ok(());
        }
        if started.elapsed() > Duration::from_secs(1800) {
            bail!("library did not settle: {s}");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// The reference: the embedder alone, in this process, on the chunks the daemon's code makes
/// of the same files (ONNX Runtime allows one environment per process, so one embedder serves
/// every measurement).
struct Raw {
    embedder: Embedder,
    ingestor: Ingestor,
}

impl Raw {
    fn new(models_dir: &Path, threads: u32, scratch: &Path) -> anyhow::Result<Raw> {
        let store = Store::open(&scratch.join("raw-db"), 64 << 20)?;
        let embedder = Embedder::new(
            models_dir,
            crate::config::DEFAULT_EMBED_MODEL,
            usize::try_from(threads)?,
            store.clone(),
        )?;
        let ingestor = super::rag::bench_ingestor(&store, &embedder);
        Ok(Raw { embedder, ingestor })
    }

    /// (chunks, chunks/s) for the files `names` below `dir`.
    fn rate(
        &self,
        dir: &Path,
        names: &[String],
        rt: &tokio::runtime::Runtime,
    ) -> anyhow::Result<(usize, f64)> {
        let mut texts = Vec::new();
        for name in names {
            let bytes = Arc::new(std::fs::read(dir.join(name))?);
            if let Ok(prepared) = rt.block_on(self.ingestor.prepare(name, bytes)) {
                texts.extend(prepared.chunks.into_iter().map(|c| c.text));
            }
        }
        rt.block_on(
            self.embedder
                .embed(texts[..32.min(texts.len())].to_vec(), Urgency::Ingest),
        )?;
        let started = Instant::now();
        rt.block_on(self.embedder.embed(texts.clone(), Urgency::Ingest))?;
        Ok((
            texts.len(),
            texts.len() as f64 / started.elapsed().as_secs_f64().max(1e-9),
        ))
    }
}
