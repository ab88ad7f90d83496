//! `hearth bench --kv`: per-chat KV snapshots, measured. A chat with a long history (one long
//! first message, about `--kv-history` tokens) is continued after another chat took the only
//! slot's cells, and again after a daemon restart; each continuation's time to first token is
//! compared with the same steps on a daemon with snapshots off (`--kv-cache-bytes 0`), which
//! evaluates the whole history again. Same model, threads and context; the page cache is
//! dropped before each restart where the OS allows it (root on Linux), so the restore after a
//! restart reads its snapshot from the disk.

use std::path::Path;
use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use serde_json::json;

use super::{corpus, BenchDaemon, RemoveOnDrop};
use crate::client::Client;

/// Context of the bench daemons: a 3,000-token history and a reply fit.
const CTX: u32 = 4096;
/// Reply tokens of every turn: the figures are time to first token.
const REPLY_TOKENS: u32 = 8;
const READY_TIMEOUT: Duration = Duration::from_secs(300);

/// One turn's client-side time to first token and what the daemon reported.
struct Turn {
    ttft_ms: f64,
    prompt_tokens: u64,
    cached_tokens: u64,
}

/// The figures of one daemon configuration.
struct Side {
    first: Turn,
    continued: Turn,
    restarted: Turn,
    /// Seconds a graceful stop took (the snapshot of the slot is written then).
    stop_s: f64,
    kv_bytes: u64,
    dropped_cache: bool,
}

async fn turn(client: &Client, chat: &str, content: &str) -> anyhow::Result<Turn> {
    let body =
        json!({"content": content, "options": {"temperature": 0, "max_tokens": REPLY_TOKENS}});
    let sent = Instant::now();
    let mut events = client
        .stream(&format!("/api/v1/chats/{chat}/messages"), &body)
        .await?;
    let mut first = None;
    while let Some(event) = events.next().await? {
        match event.event.as_str() {
            "token" => {
                first.get_or_insert_with(|| sent.elapsed());
            }
            "done" => {
                let ttft = first.unwrap_or_else(|| sent.elapsed());
                return Ok(Turn {
                    ttft_ms: ttft.as_secs_f64() * 1e3,
                    prompt_tokens: event.data["usage"]["prompt_tokens"].as_u64().unwrap_or(0),
                    cached_tokens: event.data["context"]["cached_tokens"].as_u64().unwrap_or(0),
                });
            }
            "error" => bail!("generation failed: {}", event.data),
            _ => {}
        }
    }
    bail!("stream ended without done")
}

/// How the bench's daemons run.
struct Setup<'a> {
    rt: &'a tokio::runtime::Runtime,
    models_dir: &'a Path,
    model: &'a str,
    threads: u32,
}

impl Setup<'_> {
    /// A daemon on `dir` with one slot, snapshots on or off, its model loaded.
    fn start(&self, dir: &Path, snapshots: bool) -> anyhow::Result<(BenchDaemon, Client)> {
        let mut cmd =
            super::command_sized(dir, self.models_dir, self.model, Some(self.threads), CTX)?;
        cmd.args(["--parallel", "1"]);
        if !snapshots {
            cmd.args(["--kv-cache-bytes", "0"]);
        }
        let daemon = BenchDaemon {
            child: cmd
                .stdout(Stdio::null())
                .spawn()
                .context("cannot spawn hearth serve")?,
        };
        let client = Client::new(&dir.join("hearth.sock"));
        self.rt.block_on(client.wait_ready(READY_TIMEOUT))?;
        Ok((daemon, client))
    }
}

/// Writes dirty pages and drops the page cache (Linux, root); false where not allowed.
fn drop_page_cache() -> bool {
    nix::unistd::sync();
    std::fs::write("/proc/sys/vm/drop_caches", "1").is_ok()
}

fn dir_bytes(dir: &Path) -> u64 {
    std::fs::read_dir(dir)
        .map(|entries| {
            entries
                .filter_map(|e| e.ok()?.metadata().ok())
                .map(|m| m.len())
                .sum()
        })
        .unwrap_or(0)
}

fn side(setup: &Setup<'_>, dir: &Path, snapshots: bool, history: &str) -> anyhow::Result<Side> {
    let rt = setup.rt;
    let (mut daemon, client) = setup.start(dir, snapshots)?;
    let (first, continued, chat) = rt.block_on(async {
        let chat = client.create_chat("bench").await?;
        let first = turn(&client, &chat, history).await?;
        // Another chat takes the only slot's cells.
        let other = client.create_chat("bench").await?;
        turn(&client, &other, "What is the capital of France?").await?;
        let continued = turn(&client, &chat, "Which person did I mention first?").await?;
        anyhow::Ok((first, continued, chat))
    })?;
    let stopping = Instant::now();
    daemon.stop();
    let stop_s = stopping.elapsed().as_secs_f64();
    let kv_bytes = dir_bytes(&dir.join("data").join("kv"));
    let dropped_cache = drop_page_cache();
    let (mut daemon, client) = setup.start(dir, snapshots)?;
    let restarted = rt.block_on(turn(&client, &chat, "And which person did I mention last?"))?;
    daemon.stop();
    Ok(Side {
        first,
        continued,
        restarted,
        stop_s,
        kv_bytes,
        dropped_cache,
    })
}

/// About `tokens` tokens of varied prose, as one message.
fn history(tokens: usize) -> String {
    let paragraphs = tokens.div_ceil(256).max(1);
    let mut text: Vec<String> = (0..paragraphs).map(corpus::long_chunk).collect();
    text.push("Keep all of this in mind for my next questions.".into());
    text.join("\n\n")
}

pub(super) fn run(
    rt: &tokio::runtime::Runtime,
    models_dir: &Path,
    model: &str,
    threads: u32,
    history_tokens: usize,
) -> anyhow::Result<String> {
    let scratch = std::env::temp_dir().join(format!("hearth-bench-kv-{}", std::process::id()));
    let _cleanup = RemoveOnDrop(scratch.clone());
    let text = history(history_tokens);
    let setup = Setup {
        rt,
        models_dir,
        model,
        threads,
    };
    let off = side(&setup, &scratch.join("off"), false, &text)?;
    let on = side(&setup, &scratch.join("on"), true, &text)?;
    let mut out = format!(
        "hearth bench --kv: model {model}, {threads} thread(s), n_ctx {CTX}, parallel 1, \
         history {} prompt tokens, {REPLY_TOKENS}-token replies, greedy; page cache dropped \
         before restarts: {}\n",
        on.first.prompt_tokens,
        if on.dropped_cache {
            "yes"
        } else {
            "no (not root)"
        }
    );
    let row = |name: &str, off: &Turn, on: &Turn, target: &str| {
        format!(
            "{name:<44} {:>10.0} ms ({:>5} cached) {:>10.0} ms ({:>5} cached)  {:>6.3}  {target}\n",
            off.ttft_ms,
            off.cached_tokens,
            on.ttft_ms,
            on.cached_tokens,
            on.ttft_ms / off.ttft_ms.max(1e-9)
        )
    };
    out.push_str(&format!(
        "{:<44} {:>29} {:>29}  {:>6}\n",
        "time to first token", "snapshots off", "snapshots on", "on÷off"
    ));
    out.push_str(&row(
        "first turn (whole history evaluated)",
        &off.first,
        &on.first,
        "",
    ));
    out.push_str(&row(
        "continued after another chat took the cells",
        &off.continued,
        &on.continued,
        "≤ 0.25",
    ));
    out.push_str(&row(
        "continued after a daemon restart",
        &off.restarted,
        &on.restarted,
        "≤ 0.25",
    ));
    out.push_str(&format!(
        "{:<44} {:>26.2} s {:>26.2} s\n",
        "graceful stop (snapshot written then)", off.stop_s, on.stop_s
    ));
    out.push_str(&format!(
        "{:<44} {:>29} {:>29}\n",
        "DATA_DIR/kv bytes after the stop", off.kv_bytes, on.kv_bytes
    ));
    Ok(out)
}
