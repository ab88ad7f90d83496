//! The default bench: the daemon against a plain in-process llama.cpp loop on the same model and
//! thread count.
//!
//! - start-up: spawn `hearth serve` on a fresh data dir → socket accepting (and RSS at that point,
//!   before the model is loaded, and after it is ready);
//! - decode tokens/s through socket + SSE (client-side, first to last token) vs the direct loop,
//!   and through the OpenAI surface (`/v1/chat/completions`, streamed) vs `/api/v1`;
//! - time to first token over the socket minus the prefill time the daemon reports;
//! - sidecar spawn → ready line and → first token, SIGTERM → exit with a stream open.
//!
//! Runs alternate (direct, socket, direct, …) so background noise hits both sides alike. The
//! daemon is idle while the direct loop runs.

use std::path::Path;
use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use serde_json::json;

use super::{command, idle, median, rss_kib, spawn, BenchArgs, BenchDaemon, RemoveOnDrop, N_CTX};
use crate::client::Client;
use crate::llm::direct::DirectModel;
use crate::llm::{ChatMessage, ChatRole};
use crate::models::Entry;

pub(super) const PROMPT: &str =
    "Write a long, detailed story about a dragon who learns to bake bread.";

pub(super) fn run(
    args: &BenchArgs,
    models_dir: &Path,
    entry: &Entry,
    rt: &tokio::runtime::Runtime,
) -> anyhow::Result<String> {
    let config_models_dir = models_dir;
    let model_path = crate::models::precheck(config_models_dir, entry)?;
    let scratch = std::env::temp_dir().join(format!("hearth-bench-{}", std::process::id()));
    let _cleanup = RemoveOnDrop(scratch.clone());

    // Start-up and idle RSS, each on a fresh data dir (so the model must be hashed, leaving a
    // window in which the daemon is up but the model not yet loaded).
    let mut startups = Vec::new();
    let mut idle_rss = Vec::new();
    let mut ready_rss = Vec::new();
    for n in 0..args.starts {
        let dir = scratch.join(format!("start{n}"));
        let mut daemon = spawn(&dir, config_models_dir, &entry.name, args.threads)?;
        let started = Instant::now();
        let socket = dir.join("hearth.sock");
        while std::os::unix::net::UnixStream::connect(&socket).is_err() {
            if started.elapsed() > Duration::from_secs(10) {
                bail!("daemon did not accept connections within 10 s");
            }
            std::thread::sleep(Duration::from_micros(200));
        }
        startups.push(started.elapsed());
        idle_rss.push(rss_kib(daemon.child.id())?);
        let client = Client::new(&socket);
        rt.block_on(client.wait_ready(Duration::from_secs(60)))?;
        ready_rss.push(rss_kib(daemon.child.id())?);
        daemon.stop();
    }

    // Decode: one daemon, reused for all socket runs.
    let dir = scratch.join("decode");
    let mut daemon = spawn(&dir, config_models_dir, &entry.name, args.threads)?;
    let client = Client::new(&dir.join("hearth.sock"));
    rt.block_on(client.wait_ready(Duration::from_secs(60)))?;
    let direct = DirectModel::load(&model_path)?;
    let messages = [
        ChatMessage {
            role: ChatRole::System,
            content: "You are a helpful assistant.".into(),
        },
        ChatMessage {
            role: ChatRole::User,
            content: PROMPT.into(),
        },
    ];
    let n_ctx = std::num::NonZeroU32::new(N_CTX).context("n_ctx")?;
    let mut direct_rates = Vec::new();
    let mut socket_rates = Vec::new();
    let mut openai_rates = Vec::new();
    let mut overheads = Vec::new();
    let (mut socket_ttft, mut openai_ttft) = (Vec::new(), Vec::new());
    let mut tokens_seen = (0, 0);
    // One warm-up each, then measured runs.
    for run in 0..=args.runs {
        // Each run starts on an idle daemon: a turn's title and memory jobs would otherwise
        // share the cores with the next run (or delay its first token).
        rt.block_on(idle(&client))?;
        let d = direct.run(&messages, args.threads, n_ctx, args.tokens as usize)?;
        let s = rt.block_on(socket_run(&client, args.tokens))?;
        rt.block_on(idle(&client))?;
        let o = rt.block_on(openai_run(&client, args.tokens))?;
        if run == 0 {
            continue;
        }
        direct_rates.push(rate(d.completion_tokens, d.first_to_last));
        socket_rates.push(rate(s.tokens, s.first_to_last));
        openai_rates.push(rate(o.tokens, o.first_to_last));
        overheads.push(s.ttft_ms - s.prefill_ms);
        socket_ttft.push(s.ttft_ms);
        openai_ttft.push(o.ttft_ms);
        tokens_seen = (d.completion_tokens, s.tokens);
    }
    daemon.stop();

    let sidecar = sidecar_figures(
        rt,
        &scratch.join("sidecar"),
        config_models_dir,
        &entry.name,
        args,
    )?;

    let direct_rate = median(&mut direct_rates);
    let socket_rate = median(&mut socket_rates);
    let openai_rate = median(&mut openai_rates);
    let startup_ms = median(
        &mut startups
            .iter()
            .map(|d| d.as_secs_f64() * 1000.0)
            .collect::<Vec<_>>(),
    );
    let mib =
        |v: &mut Vec<u64>| median(&mut v.iter().map(|k| *k as f64 / 1024.0).collect::<Vec<_>>());
    let rows = [
        (
            "decode tok/s, socket+SSE",
            format!("{socket_rate:.2}"),
            String::new(),
        ),
        (
            "decode tok/s, direct loop",
            format!("{direct_rate:.2}"),
            String::new(),
        ),
        (
            "ratio socket/direct",
            format!("{:.3}", socket_rate / direct_rate),
            "≥ 0.97".into(),
        ),
        (
            "decode tok/s, /v1/chat/completions",
            format!("{openai_rate:.2}"),
            String::new(),
        ),
        (
            "ratio /v1 ÷ /api/v1",
            format!("{:.3}", openai_rate / socket_rate),
            "≥ 0.98".into(),
        ),
        (
            "TTFT ms /api/v1 | /v1 (p50)",
            format!(
                "{:.1} | {:.1}",
                median(&mut socket_ttft),
                median(&mut openai_ttft)
            ),
            String::new(),
        ),
        (
            "TTFT minus prefill, ms (p50)",
            format!("{:.2}", median(&mut overheads)),
            "≤ 5".into(),
        ),
        (
            "start → socket accepting, ms (p50)",
            format!("{startup_ms:.1}"),
            "≤ 100".into(),
        ),
        (
            "RSS before model load, MiB",
            format!("{:.1}", mib(&mut idle_rss)),
            "≤ 30".into(),
        ),
        (
            "RSS with model ready, MiB",
            format!("{:.1}", mib(&mut ready_rss)),
            String::new(),
        ),
        (
            "sidecar spawn → ready line, ms (p50)",
            format!("{:.1}", sidecar.ready_ms),
            String::new(),
        ),
        (
            "sidecar spawn → first token, ms",
            format!("{:.1}", sidecar.first_token_ms),
            String::new(),
        ),
        (
            "SIGTERM → exit, stream open, ms",
            format!("{:.1}", sidecar.shutdown_ms),
            "≤ 10000 (grace)".into(),
        ),
    ];
    let mut out = String::new();
    out.push_str(&format!(
        "hearth bench: model {}, {} thread(s), {} tokens × {} runs (+1 warm-up), tokens generated direct/socket = {}/{}\n",
        entry.name, args.threads, args.tokens, args.runs, tokens_seen.0, tokens_seen.1
    ));
    out.push_str(&format!(
        "{:<38} {:>10}  {}\n",
        "measure", "value", "target"
    ));
    for (name, value, target) in rows {
        out.push_str(&format!("{name:<38} {value:>10}  {target}\n"));
    }
    Ok(out)
}

struct SidecarFigures {
    ready_ms: f64,
    first_token_ms: f64,
    shutdown_ms: f64,
}

/// Sidecar start-up (spawn → ready line, p50), spawn → first token of a short question, and
/// SIGTERM → exit while a long reply is streaming. One data dir, so the model's hash is cached
/// after the first start, as it is for a real app.
fn sidecar_figures(
    rt: &tokio::runtime::Runtime,
    dir: &Path,
    models_dir: &Path,
    model: &str,
    args: &BenchArgs,
) -> anyhow::Result<SidecarFigures> {
    use std::io::BufRead;
    let spawn_sidecar = || -> anyhow::Result<(BenchDaemon, Instant, serde_json::Value)> {
        let spawned = Instant::now();
        let mut cmd = command(dir, models_dir, model, args.threads)?;
        cmd.arg("--sidecar")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped());
        let mut child = cmd.spawn().context("cannot spawn hearth serve --sidecar")?;
        let stdout = child.stdout.take().context("no stdout")?;
        let mut line = String::new();
        std::io::BufReader::new(stdout).read_line(&mut line)?;
        let ready: serde_json::Value = serde_json::from_str(&line).context("ready line")?;
        if ready["event"] != "ready" {
            bail!("sidecar did not start: {line}");
        }
        Ok((BenchDaemon { child }, spawned, ready))
    };
    let mut ready_ms = Vec::new();
    for _ in 0..args.sidecar_starts.max(1) {
        let (mut daemon, spawned, _) = spawn_sidecar()?;
        ready_ms.push(spawned.elapsed().as_secs_f64() * 1000.0);
        drop(daemon.child.stdin.take());
        daemon.child.wait()?;
    }

    let (mut daemon, spawned, ready) = spawn_sidecar()?;
    let client = Client::new(Path::new(ready["socket"].as_str().unwrap_or_default()));
    let first_token_ms = rt.block_on(async {
        client.wait_ready(Duration::from_secs(60)).await?;
        let chat = new_chat(&client).await?;
        let body = json!({"content": "What is the capital of France?", "options": {"temperature": 0, "max_tokens": 16}});
        let mut stream = client.stream(&format!("/api/v1/chats/{chat}/messages"), &body).await?;
        while let Some(event) = stream.next().await? {
            if event.event == "token" {
                return Ok(spawned.elapsed().as_secs_f64() * 1000.0);
            }
        }
        bail!("no token")
    })?;
    let shutdown_ms = rt.block_on(async {
        let chat = new_chat(&client).await?;
        let body = json!({"content": PROMPT, "options": {"max_tokens": 4000}});
        let mut stream = client
            .stream(&format!("/api/v1/chats/{chat}/messages"), &body)
            .await?;
        let mut tokens = 0;
        while tokens < 3 {
            match stream.next().await? {
                Some(event) if event.event == "token" => tokens += 1,
                Some(_) => {}
                None => bail!("stream ended early"),
            }
        }
        let signalled = Instant::now();
        daemon.signal_term();
        daemon.child.wait()?;
        Ok::<_, anyhow::Error>(signalled.elapsed().as_secs_f64() * 1000.0)
    })?;
    Ok(SidecarFigures {
        ready_ms: median(&mut ready_ms),
        first_token_ms,
        shutdown_ms,
    })
}

async fn new_chat(client: &Client) -> anyhow::Result<String> {
    client.create_chat("bench").await
}

pub(super) struct SocketRun {
    pub(super) tokens: usize,
    pub(super) first_to_last: Duration,
    pub(super) ttft_ms: f64,
    pub(super) prefill_ms: f64,
}

pub(super) async fn socket_run(client: &Client, tokens: u32) -> anyhow::Result<SocketRun> {
    let path = format!("/api/v1/chats/{}/messages", new_chat(client).await?);
    let body = json!({"content": PROMPT, "options": {"temperature": 0, "repeat_penalty": 1.0, "max_tokens": tokens}});
    let sent = Instant::now();
    let mut stream = client.stream(&path, &body).await?;
    let (mut first, mut last, mut n) = (None, Instant::now(), 0);
    while let Some(event) = stream.next().await? {
        match event.event.as_str() {
            "token" => {
                last = Instant::now();
                first.get_or_insert(last);
                n += 1;
            }
            "done" => {
                let first = first.context("no tokens")?;
                return Ok(SocketRun {
                    tokens: n,
                    first_to_last: last.duration_since(first),
                    ttft_ms: first.duration_since(sent).as_secs_f64() * 1000.0,
                    prefill_ms: event.data["timings"]["prefill_ms"].as_f64().unwrap_or(0.0),
                });
            }
            "error" => bail!("generation failed: {}", event.data),
            _ => {}
        }
    }
    bail!("stream ended without done")
}

/// The same greedy generation through `/v1/chat/completions` (stateless, streamed), over
/// `client`: hearth's, or a peer server's (`bench --openai-peer`). Counts content chunks, one
/// per token on both.
pub(super) async fn openai_run(client: &Client, tokens: u32) -> anyhow::Result<SocketRun> {
    let body = json!({
        "messages": [
            {"role": "system", "content": "You are a helpful assistant."},
            {"role": "user", "content": PROMPT}
        ],
        "temperature": 0, "max_tokens": tokens, "stream": true
    });
    let sent = Instant::now();
    let mut stream = client.stream("/v1/chat/completions", &body).await?;
    let (mut first, mut last, mut n) = (None, Instant::now(), 0);
    while let Some(event) = stream.next().await? {
        if event.data.get("error").is_some() {
            bail!("generation failed: {}", event.data);
        }
        let delta = &event.data["choices"][0]["delta"]["content"];
        if delta.as_str().is_some_and(|t| !t.is_empty()) {
            last = Instant::now();
            first.get_or_insert(last);
            n += 1;
        }
    }
    let first = first.context("no tokens")?;
    Ok(SocketRun {
        tokens: n,
        first_to_last: last.duration_since(first),
        ttft_ms: first.duration_since(sent).as_secs_f64() * 1000.0,
        prefill_ms: 0.0,
    })
}

pub(super) fn rate(tokens: usize, span: Duration) -> f64 {
    // n tokens span n-1 intervals.
    (tokens.saturating_sub(1)) as f64 / span.as_secs_f64().max(1e-9)
}
