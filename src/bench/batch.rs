//! `hearth bench --batch`: continuous batching, measured. Streams are greedy
//! `/v1/chat/completions` requests over loopback TCP, each with its own prompt (no shared
//! prefix beyond the system prompt), so the figures are decode work, not cache hits.
//!
//! - one stream alone: decode tokens/s (client side, first to last chunk) and time to first
//!   token, p50 of `runs`;
//! - four streams at once: aggregate decode tokens/s while all four decode (the tokens that
//!   arrive between the last stream's first token and the first stream's last one, over that
//!   span: the steady state, without the prompts evaluated one after another at the start), as a
//!   ratio to one stream (target ≥ 1.6); and the makespan of the four against four in a row;
//! - a stream admitted while three others decode: its time to first token, p50 of `runs`
//!   probes, as a ratio to the same probes' idle TTFT (target ≤ 1.5);
//! - with `--openai-peer DIR`: the same four-at-once run against llama-cpp-python's server
//!   (which serves one request at a time), same model file and threads.

use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use serde_json::json;

use super::{median, RemoveOnDrop, N_CTX};
use crate::client::Client;
use crate::models::Entry;

/// Streams of the concurrent run.
const STREAMS: usize = 4;
/// Reply tokens of the background streams while probes are timed (they must outlast them).
const BACKGROUND_TOKENS: u32 = 2000;
/// Reply tokens of a TTFT probe.
const PROBE_TOKENS: u32 = 4;

const TOPICS: [&str; 8] = [
    "a dragon who learns to bake bread",
    "a lighthouse keeper and a lost whale",
    "a robot that collects old keys",
    "two rival chess clubs in a small town",
    "a map that redraws itself at night",
    "a violinist who plays for the tide",
    "a library that lends out weather",
    "a cat who runs the night train",
];

fn prompt(i: usize) -> String {
    format!(
        "Write a long, detailed story about {}.",
        TOPICS[i % TOPICS.len()]
    )
}

/// One streamed request's client-side timeline.
struct Run {
    tokens: usize,
    sent: Instant,
    first: Instant,
    last: Instant,
    /// When each content chunk (one per token) arrived.
    times: Vec<Instant>,
}

impl Run {
    fn ttft_ms(&self) -> f64 {
        self.first.duration_since(self.sent).as_secs_f64() * 1e3
    }

    fn rate(&self) -> f64 {
        self.tokens.saturating_sub(1) as f64
            / self.last.duration_since(self.first).as_secs_f64().max(1e-9)
    }
}

async fn stream(client: &Client, content: &str, tokens: u32) -> anyhow::Result<Run> {
    let body = json!({
        "messages": [
            {"role": "system", "content": "You are a helpful assistant."},
            {"role": "user", "content": content}
        ],
        "temperature": 0, "max_tokens": tokens, "stream": true
    });
    let sent = Instant::now();
    let mut events = client.stream("/v1/chat/completions", &body).await?;
    let mut times = Vec::new();
    while let Some(event) = events.next().await? {
        if event.data.get("error").is_some() {
            bail!("generation failed: {}", event.data);
        }
        let delta = &event.data["choices"][0]["delta"]["content"];
        if delta.as_str().is_some_and(|t| !t.is_empty()) {
            times.push(Instant::now());
        }
    }
    Ok(Run {
        tokens: times.len(),
        sent,
        first: *times.first().context("no tokens")?,
        last: *times.last().context("no tokens")?,
        times,
    })
}

/// `STREAMS` streams started together: (aggregate tokens/s while all decode — `None` when they
/// never all decoded at once, as on a server that serves one at a time —, makespan s, all
/// tokens over the makespan).
async fn together(
    client: &Client,
    tokens: u32,
    offset: usize,
) -> anyhow::Result<(Option<f64>, f64, f64)> {
    let runs = futures_util::future::try_join_all(
        (0..STREAMS).map(|i| async move { stream(client, &prompt(offset + i), tokens).await }),
    )
    .await?;
    let sent = runs.iter().map(|r| r.sent).min().context("no runs")?;
    let all_decoding = runs.iter().map(|r| r.first).max().context("no runs")?;
    let one_done = runs.iter().map(|r| r.last).min().context("no runs")?;
    let end = runs.iter().map(|r| r.last).max().context("no runs")?;
    let makespan = end.duration_since(sent).as_secs_f64();
    // Tokens strictly after the window opens: n arrivals span n intervals from its start.
    let inside = runs
        .iter()
        .flat_map(|r| &r.times)
        .filter(|&&t| t > all_decoding && t <= one_done)
        .count();
    let span = one_done
        .saturating_duration_since(all_decoding)
        .as_secs_f64();
    let steady = (inside >= STREAMS * 4 && span > 0.0).then(|| inside as f64 / span);
    let total: usize = runs.iter().map(|r| r.tokens).sum();
    Ok((steady, makespan, total as f64 / makespan.max(1e-9)))
}

/// Figures of one server.
struct Side {
    single_rate: f64,
    /// Seconds from sending to the last token of one stream alone (p50).
    single_makespan: f64,
    /// Aggregate while all decode (p50 of the runs where they did).
    together_rate: Option<f64>,
    together_makespan: f64,
    /// All four streams' tokens over the makespan.
    together_overall: f64,
}

async fn measure(client: &Client, tokens: u32, runs: usize) -> anyhow::Result<Side> {
    stream(client, &prompt(7), 8).await?; // warm-up
    let mut single = Vec::new();
    let mut single_span = Vec::new();
    for run in 0..runs {
        let r = stream(client, &prompt(run), tokens).await?;
        single.push(r.rate());
        single_span.push(r.last.duration_since(r.sent).as_secs_f64());
    }
    let mut together_rates = Vec::new();
    let mut together_spans = Vec::new();
    let mut together_overall = Vec::new();
    for run in 0..runs {
        let (rate, span, overall) = together(client, tokens, run).await?;
        together_rates.extend(rate);
        together_spans.push(span);
        together_overall.push(overall);
    }
    Ok(Side {
        single_rate: median(&mut single),
        single_makespan: median(&mut single_span),
        together_rate: (!together_rates.is_empty()).then(|| median(&mut together_rates)),
        together_makespan: median(&mut together_spans),
        together_overall: median(&mut together_overall),
    })
}

/// Idle TTFT and TTFT while three streams decode, p50 of `runs` probes each.
async fn ttft(client: &Client, runs: usize) -> anyhow::Result<(f64, f64)> {
    // Distinct questions: a probe does not continue another probe's cached conversation.
    let probe = |i: usize| format!("Say hello to guest number {i} at the door.");
    let mut idle = Vec::new();
    for i in 0..runs {
        idle.push(stream(client, &probe(i), PROBE_TOKENS).await?.ttft_ms());
    }
    let background: Vec<_> = (0..STREAMS - 1)
        .map(|i| {
            let client = client.clone();
            tokio::spawn(async move { stream(&client, &prompt(i), BACKGROUND_TOKENS).await })
        })
        .collect();
    // Let them all reach decoding before the first probe.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let mut busy = Vec::new();
    for i in 0..runs {
        busy.push(
            stream(client, &probe(runs + i), PROBE_TOKENS)
                .await?
                .ttft_ms(),
        );
    }
    for task in background {
        task.abort();
    }
    Ok((median(&mut idle), median(&mut busy)))
}

pub(super) fn run(
    rt: &tokio::runtime::Runtime,
    models_dir: &Path,
    entry: &Entry,
    peer_dir: Option<&Path>,
    threads: u32,
    tokens: u32,
    runs: usize,
) -> anyhow::Result<String> {
    let scratch = std::env::temp_dir().join(format!("hearth-bench-batch-{}", std::process::id()));
    let _cleanup = RemoveOnDrop(scratch.clone());
    let (mut hearth, client) =
        super::openai::tcp_daemon(rt, &scratch, models_dir, &entry.name, threads)?;
    let ours = rt.block_on(measure(&client, tokens, runs))?;
    let (idle, busy) = rt.block_on(ttft(&client, runs))?;
    hearth.stop();

    let peer = match peer_dir {
        Some(dir) => Some(peer_side(
            rt, models_dir, entry, dir, threads, tokens, runs,
        )?),
        None => None,
    };
    let mut rows: Vec<(String, String, String)> = vec![
        (
            "1 stream: decode tok/s (p50)".into(),
            format!("{:.2}", ours.single_rate),
            String::new(),
        ),
        (
            format!("{STREAMS} streams: aggregate tok/s while all decode (p50)"),
            fmt_rate(ours.together_rate),
            String::new(),
        ),
        (
            format!("ratio {STREAMS} streams ÷ 1 stream"),
            ours.together_rate
                .map_or("n/a".into(), |r| format!("{:.2}", r / ours.single_rate)),
            "≥ 1.6".into(),
        ),
        (
            format!("{STREAMS} streams: all tokens ÷ makespan, tok/s (p50)"),
            format!("{:.2}", ours.together_overall),
            String::new(),
        ),
        (
            format!("makespan s: {STREAMS} at once | {STREAMS} in a row"),
            format!(
                "{:.2} | {:.2}",
                ours.together_makespan,
                ours.single_makespan * STREAMS as f64
            ),
            String::new(),
        ),
        (
            "TTFT ms idle | admitted while 3 decode (p50)".into(),
            format!("{idle:.0} | {busy:.0}"),
            String::new(),
        ),
        (
            "ratio busy TTFT ÷ idle TTFT".into(),
            format!("{:.2}", busy / idle),
            "≤ 1.5".into(),
        ),
    ];
    match &peer {
        Some(p) => {
            rows.push((
                "peer: 1 stream decode tok/s (p50)".into(),
                format!("{:.2}", p.single_rate),
                String::new(),
            ));
            rows.push((
                format!("peer: {STREAMS} at once, all tokens ÷ makespan"),
                format!("{:.2}", p.together_overall),
                format!(
                    "makespan {:.2} s; aggregate while all decode {}",
                    p.together_makespan,
                    fmt_rate(p.together_rate)
                ),
            ));
            rows.push((
                format!("{STREAMS} at once: hearth ÷ peer (tokens ÷ makespan)"),
                format!("{:.2}", ours.together_overall / p.together_overall),
                String::new(),
            ));
        }
        None => rows.push((
            "peer".into(),
            "skipped".into(),
            "--openai-peer DIR (scripts/bench-peer installs llama-cpp-python)".into(),
        )),
    }
    let mut out = format!(
        "hearth bench --batch: model {}, {threads} thread(s), n_ctx {N_CTX}, {tokens} tokens per \
         stream, {runs} runs, greedy, /v1/chat/completions over loopback TCP\n",
        entry.name
    );
    for (name, value, target) in rows {
        out.push_str(&format!("{name:<46} {value:>14}  {target}\n"));
    }
    Ok(out)
}

fn fmt_rate(rate: Option<f64>) -> String {
    rate.map_or("n/a (never all at once)".into(), |r| format!("{r:.2}"))
}

/// The same single and four-at-once runs against llama-cpp-python's server.
fn peer_side(
    rt: &tokio::runtime::Runtime,
    models_dir: &Path,
    entry: &Entry,
    peer_dir: &Path,
    threads: u32,
    tokens: u32,
    runs: usize,
) -> anyhow::Result<Side> {
    let model_path = crate::models::precheck(models_dir, entry)?;
    let (mut peer, client) = super::openai::spawn_peer(rt, &model_path, peer_dir, threads)?;
    let side = rt.block_on(measure(&client, tokens, runs));
    peer.stop();
    side
}
