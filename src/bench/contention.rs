//! `hearth bench --contention`: decode while another program keeps a core busy.
//!
//! A bounded CPU burner (this binary, `bench --burn-secs`, pinned to the last CPU, exiting on its
//! own after its time) stands in for the browser or build next to the daemon. For each setting —
//! the adaptive thread policy (no `--threads`), a fixed count of the physical cores, and fixed 1
//! thread — one daemon streams `--tokens` greedy tokens over the socket, first idle, then under
//! the burner; decode tok/s is first to last token, as the client sees it. With `--openai-peer
//! DIR` (scripts/bench-peer installs it) llama-cpp-python, the reviewed backend's stack, runs the
//! same prompt in-process on the same GGUF with the physical cores' threads. Runs of one setting
//! follow each other, so the policy's state carries over from reply to reply as in real use; the
//! first reply under the burner (which pays for noticing the load) is shown on its own too.
//!
//! Then the other kind of contention, the daemon's own background work: replies while the drop
//! folder ingests [`INGEST_FILES`] mixed documents against replies on the same daemon idle, with
//! background threads niced (the default) and not (`background_nice = 0`).

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};

use super::decode::{rate, socket_run, PROMPT};
use super::library::{decode_rate, write_mixed};
use super::{command_with, idle, median, BenchDaemon, RemoveOnDrop, N_CTX};
use crate::client::Client;
use crate::models::Entry;

/// The burner's own limit, so a crashed bench leaves no spinning process behind for long.
const BURN_SECS: u64 = 900;
/// Time for the scheduler to settle after the burner starts.
const BURN_SETTLE: Duration = Duration::from_millis(300);

/// Documents the ingest part drops in at once: enough to keep the embedder busy for all
/// [`INGEST_REPLIES`] replies.
const INGEST_FILES: usize = 1000;
/// Replies timed idle and during the ingest, each (the one during ingest depends on where in an
/// embedding batch it starts, and the machine's speed drifts: a median of many).
const INGEST_REPLIES: usize = 9;

/// One setting's figures, tok/s.
struct Row {
    name: String,
    idle: f64,
    busy: f64,
    first_busy: f64,
    changes: Option<u64>,
    decode_threads: Option<u64>,
}

/// Spins on the last CPU until `secs` pass (the burner process).
pub(super) fn burn(secs: u64) -> anyhow::Result<()> {
    #[cfg(target_os = "linux")]
    {
        let cpus = std::thread::available_parallelism().map_or(1, std::num::NonZeroUsize::get);
        let mut set = rustix::thread::CpuSet::new();
        set.set(cpus - 1);
        rustix::thread::sched_setaffinity(None, &set).context("cannot pin the burner")?;
    }
    let end = Instant::now() + Duration::from_secs(secs);
    let mut x = 0u64;
    while Instant::now() < end {
        for _ in 0..100_000 {
            x = std::hint::black_box(x.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1));
        }
    }
    Ok(())
}

/// The burner process; killed on drop.
struct Burner(std::process::Child);

impl Burner {
    fn start() -> anyhow::Result<Burner> {
        let child = Command::new(std::env::current_exe()?)
            .args(["bench", "--burn-secs", &BURN_SECS.to_string()])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .spawn()
            .context("cannot start the burner")?;
        std::thread::sleep(BURN_SETTLE);
        Ok(Burner(child))
    }
}

impl Drop for Burner {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

pub(super) fn run(
    rt: &tokio::runtime::Runtime,
    models_dir: &Path,
    entry: &Entry,
    peer: Option<&Path>,
    tokens: u32,
    runs: usize,
) -> anyhow::Result<String> {
    let model_path = crate::models::precheck(models_dir, entry)?;
    let scratch = std::env::temp_dir().join(format!("hearth-bench-busy-{}", std::process::id()));
    let _cleanup = RemoveOnDrop(scratch.clone());
    let physical = u32::try_from(crate::config::default_threads())?;
    let mut settings = vec![(format!("policy (adaptive, up to {physical})"), None)];
    if physical > 1 {
        settings.push((format!("fixed {physical} threads"), Some(physical)));
    }
    settings.push(("fixed 1 thread".to_string(), Some(1)));

    let mut rows = Vec::new();
    for (n, (name, threads)) in settings.into_iter().enumerate() {
        let dir = scratch.join(format!("s{n}"));
        let mut daemon = BenchDaemon {
            child: command_with(&dir, models_dir, &entry.name, threads)?
                .stdout(Stdio::null())
                .spawn()
                .context("cannot spawn hearth serve")?,
        };
        let client = Client::new(&dir.join("hearth.sock"));
        rt.block_on(client.wait_ready(Duration::from_secs(60)))?;
        let measure = |count: usize| -> anyhow::Result<Vec<f64>> {
            let mut rates = Vec::new();
            for _ in 0..count {
                rt.block_on(idle(&client))?;
                let s = rt.block_on(socket_run(&client, tokens))?;
                rates.push(rate(s.tokens, s.first_to_last));
            }
            Ok(rates)
        };
        measure(1)?; // warm-up
        let mut idle_rates = measure(runs)?;
        let burner = Burner::start()?;
        let mut busy_rates = measure(runs)?;
        drop(burner);
        let first_busy = busy_rates[0];
        let health = rt
            .block_on(client.request(http::Method::GET, "/api/v1/health", None))?
            .1;
        let threads = &health["models"]["loaded"][0]["threads"];
        rows.push(Row {
            name,
            idle: median(&mut idle_rates),
            busy: median(&mut busy_rates),
            first_busy,
            changes: threads["changes"].as_u64(),
            decode_threads: threads["decode"].as_u64(),
        });
        daemon.stop();
    }
    if let Some(peer) = peer {
        let mut idle_rates = peer_rates(peer, &model_path, physical, tokens, runs)?;
        let burner = Burner::start()?;
        let mut busy_rates = peer_rates(peer, &model_path, physical, tokens, runs)?;
        drop(burner);
        let first_busy = busy_rates[0];
        rows.push(Row {
            name: format!("llama-cpp-python {physical} threads"),
            idle: median(&mut idle_rates),
            busy: median(&mut busy_rates),
            first_busy,
            changes: None,
            decode_threads: None,
        });
    }
    let mut out = table(entry, physical, tokens, runs, &rows);
    out.push_str(&ingest_table(rt, models_dir, entry, &scratch)?);
    Ok(out)
}

/// Decode during a drop-folder ingest vs idle, with background threads niced and not.
fn ingest_table(
    rt: &tokio::runtime::Runtime,
    models_dir: &Path,
    entry: &Entry,
    scratch: &Path,
) -> anyhow::Result<String> {
    let mut out = format!(
        "\ndecode during a drop-folder ingest of {INGEST_FILES} documents (policy threads, 96-token replies, daemon-reported tok/s, median of up to {INGEST_REPLIES})\n{:<34} {:>10} {:>10} {:>8} {:>8}\n",
        "setting", "idle tok/s", "ingesting", "ratio", "replies"
    );
    for (name, nice) in [
        ("background_nice 10 (default)", None),
        ("background_nice 0", Some(0)),
    ] {
        let dir = scratch.join(format!("ingest-{}", nice.unwrap_or(10)));
        let watched = dir.join("watched");
        let staged = dir.join("staged");
        std::fs::create_dir_all(&watched)?;
        write_mixed(&staged, INGEST_FILES)?;
        let mut cmd = command_with(&dir, models_dir, &entry.name, None)?;
        cmd.arg("--watch").arg(&watched);
        if let Some(nice) = nice {
            cmd.arg("--background-nice").arg(nice.to_string());
        }
        let mut daemon = BenchDaemon {
            child: cmd
                .stdout(Stdio::null())
                .spawn()
                .context("cannot spawn hearth serve")?,
        };
        let client = Client::new(&dir.join("hearth.sock"));
        rt.block_on(client.wait_ready(Duration::from_secs(60)))?;
        // The embedder loads on first use: load it before timing anything.
        rt.block_on(client.call(
            http::Method::POST,
            "/api/v1/embeddings",
            Some(&serde_json::json!({"input": ["warm up"]})),
        ))?;
        let user = rt.block_on(client.user_id("bench"))?;
        rt.block_on(decode_rate(&client, &user))?; // warm-up
        let mut idle_rates = Vec::new();
        for _ in 0..INGEST_REPLIES {
            idle_rates.push(rt.block_on(decode_rate(&client, &user))?);
        }
        std::fs::rename(&staged, watched.join("mixed"))?;
        std::thread::sleep(Duration::from_millis(1500));
        let mut busy_rates = Vec::new();
        while busy_rates.len() < INGEST_REPLIES {
            let s = rt.block_on(client.call(http::Method::GET, "/api/v1/library", None))?;
            if s["jobs"].as_u64().unwrap_or(0) == 0 {
                break;
            }
            busy_rates.push(rt.block_on(decode_rate(&client, &user))?);
            std::thread::sleep(Duration::from_millis(700));
        }
        daemon.stop();
        let replies = busy_rates.len();
        let (idle, busy) = (median(&mut idle_rates), median(&mut busy_rates));
        out.push_str(&format!(
            "{name:<34} {idle:>10.1} {busy:>10.1} {:>8.2} {replies:>8}\n",
            busy / idle
        ));
    }
    out.push_str(
        "(goal: ratio >= 0.9 with the default; replies: how many ran before the ingest finished)\n",
    );
    Ok(out)
}

fn table(entry: &Entry, physical: u32, tokens: u32, runs: usize, rows: &[Row]) -> String {
    let mut out = format!(
        "hearth bench --contention: model {}, {physical} physical core(s), {tokens}-token greedy replies, median of {runs} runs, burner pinned to the last CPU\n\n",
        entry.name
    );
    out.push_str(&format!(
        "{:<34} {:>10} {:>10} {:>12} {:>9} {:>8}\n",
        "setting", "idle tok/s", "busy tok/s", "1st busy", "changes", "threads"
    ));
    for r in rows {
        let opt = |v: Option<u64>| v.map_or("-".to_string(), |v| v.to_string());
        out.push_str(&format!(
            "{:<34} {:>10.1} {:>10.1} {:>12.1} {:>9} {:>8}\n",
            r.name,
            r.idle,
            r.busy,
            r.first_busy,
            opt(r.changes),
            opt(r.decode_threads)
        ));
    }
    let fixed: Vec<&Row> = rows
        .iter()
        .filter(|r| r.name.starts_with("fixed"))
        .collect();
    if let Some(policy) = rows.first() {
        let best_idle = fixed.iter().map(|r| r.idle).fold(0.0, f64::max);
        let best_busy = fixed.iter().map(|r| r.busy).fold(0.0, f64::max);
        out.push_str(&format!(
            "\npolicy / best fixed: idle {:.2} (goal >= 0.98), busy {:.2} (goal >= 0.9)\n",
            policy.idle / best_idle,
            policy.busy / best_busy
        ));
        if let Some(peer) = rows.iter().find(|r| r.name.starts_with("llama-cpp-python")) {
            out.push_str(&format!(
                "policy / llama-cpp-python under the burner: {:.2} (goal >= 2)\n",
                policy.busy / peer.busy
            ));
        }
    }
    out.push_str("(threads: the decode threads after the last busy run; changes: policy changes since load)\n");
    out
}

/// llama-cpp-python on the same GGUF and prompt, in-process: `runs` measured replies after one
/// warm-up, decode tok/s first to last content chunk.
fn peer_rates(
    peer: &Path,
    model: &Path,
    threads: u32,
    tokens: u32,
    runs: usize,
) -> anyhow::Result<Vec<f64>> {
    const SCRIPT: &str = r#"
import json, sys, time
from llama_cpp import Llama
path, threads, tokens, runs, n_ctx, prompt = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5]), sys.argv[6]
llm = Llama(model_path=path, n_threads=threads, n_threads_batch=threads, n_ctx=n_ctx, verbose=False)
msgs = [{"role": "system", "content": "You are a helpful assistant."}, {"role": "user", "content": prompt}]
for i in range(runs + 1):
    first = last = None
    n = 0
    for chunk in llm.create_chat_completion(messages=msgs, max_tokens=tokens, temperature=0, repeat_penalty=1.0, stream=True):
        if chunk["choices"][0]["delta"].get("content"):
            last = time.perf_counter()
            first = first or last
            n += 1
    if i > 0:
        print(json.dumps({"tokens": n, "secs": last - first}), flush=True)
"#;
    if !peer.join("llama_cpp").is_dir() {
        bail!(
            "{} holds no llama_cpp package; install it with scripts/bench-peer",
            peer.display()
        );
    }
    let out = Command::new("python3")
        .arg("-c")
        .arg(SCRIPT)
        .arg(model)
        .arg(threads.to_string())
        .arg(tokens.to_string())
        .arg(runs.to_string())
        .arg(N_CTX.to_string())
        .arg(PROMPT)
        .env("PYTHONPATH", peer)
        .stderr(Stdio::inherit())
        .output()
        .context("cannot run python3")?;
    if !out.status.success() {
        bail!("llama-cpp-python failed: {}", out.status);
    }
    let mut rates = Vec::new();
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        let v: serde_json::Value = serde_json::from_str(line)?;
        let n = usize::try_from(v["tokens"].as_u64().unwrap_or(0))?;
        rates.push(rate(
            n,
            Duration::from_secs_f64(v["secs"].as_f64().unwrap_or(0.0)),
        ));
    }
    if rates.len() != runs {
        bail!("llama-cpp-python printed {} runs of {runs}", rates.len());
    }
    Ok(rates)
}
