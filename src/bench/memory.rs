//! `hearth bench --memory`: long-term memory through a real daemon, printed as one table.
//!
//! - extraction job latency (p50, from the job's start to its stored result, and from the
//!   reply's `done` to the stored result), one message with facts per run, as the scheduler runs
//!   it after the reply;
//! - recall latency: `GET /users/{id}/memories?query=` with [`RECALL_MEMORIES`] memories stored
//!   (embedding the query + an exact scan), over the socket;
//! - chat time-to-first-token with and without memory recall on the same question, alternating,
//!   each in a fresh chat with the background idle (the overhead memory adds to the reply path).

use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use http::Method;
use serde_json::{json, Value};

use super::{idle, median, spawn, RemoveOnDrop};
use crate::client::Client;

/// Memories stored before recall is timed: a user of several months.
const RECALL_MEMORIES: usize = 200;
/// Messages with facts about their writer, one per extraction run.
const FACT_MESSAGES: [&str; 8] = [
    "I live in Lisbon and I work as a nurse.",
    "My sister Ana is a pilot and I visit her every summer.",
    "I have a dog named Rex and two cats.",
    "I am allergic to peanuts, so I cook at home a lot.",
    "My favourite band is Radiohead and I play the guitar.",
    "I study marine biology at the university of Porto.",
    "I run a marathon every spring and I train on weekends.",
    "My husband Jorge is a chef in a small restaurant.",
];
const QUESTION: &str = "What should I cook for dinner tonight?";

/// Runs the memory benchmark and returns the table.
pub(super) fn run(
    rt: &tokio::runtime::Runtime,
    models_dir: &Path,
    model: &str,
    threads: u32,
    runs: usize,
) -> anyhow::Result<String> {
    let scratch = std::env::temp_dir().join(format!("hearth-bench-mem-{}", std::process::id()));
    let _cleanup = RemoveOnDrop(scratch.clone());
    let mut daemon = spawn(&scratch, models_dir, model, threads)?;
    let client = Client::new(&scratch.join("hearth.sock"));
    let started = Instant::now();
    while !scratch.join("hearth.sock").exists() {
        if started.elapsed() > Duration::from_secs(10) {
            bail!("daemon did not create its socket within 10 s");
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    let figures = rt.block_on(measure(&client, runs.max(1)));
    daemon.stop();
    let f = figures?;
    let mut out = String::new();
    out.push_str(&format!(
        "hearth bench --memory: model {model}, {threads} thread(s), {} extraction runs, {} TTFT pairs\n",
        f.extraction_runs, f.ttft_pairs
    ));
    out.push_str(&format!("{:<52} {:>10}\n", "measure", "value"));
    for (name, value) in [
        ("extraction job, start → stored, ms (p50)", f.job_ms),
        ("extraction, reply done → stored, ms (p50)", f.after_done_ms),
        ("facts stored per message (mean)", f.facts_per_message),
        (
            "recall over the socket, 200 memories, ms (p50)",
            f.recall_ms,
        ),
        ("chat TTFT without memory, ms (p50)", f.ttft_without_ms),
        ("chat TTFT with memory recall, ms (p50)", f.ttft_with_ms),
        (
            "memory overhead on TTFT, ms (p50 difference)",
            f.ttft_with_ms - f.ttft_without_ms,
        ),
    ] {
        out.push_str(&format!("{name:<52} {value:>10.1}\n"));
    }
    Ok(out)
}

struct Figures {
    extraction_runs: usize,
    ttft_pairs: usize,
    job_ms: f64,
    after_done_ms: f64,
    facts_per_message: f64,
    recall_ms: f64,
    ttft_without_ms: f64,
    ttft_with_ms: f64,
}

async fn measure(client: &Client, runs: usize) -> anyhow::Result<Figures> {
    client.wait_ready(Duration::from_secs(60)).await?;
    let user = client
        .call(
            Method::POST,
            "/api/v1/users",
            Some(&json!({"username": "bench"})),
        )
        .await?;
    let user = user["id"].as_str().context("user id")?.to_string();
    client
        .call(
            Method::PUT,
            &format!("/api/v1/users/{user}/settings"),
            Some(&json!({"use_memory": true})),
        )
        .await?;
    let mut events = client
        .subscribe("/api/v1/events?types=memory_extracted")
        .await?;

    // Extraction: one message per run in one chat (the title job runs once, after the first).
    let chat = new_chat(client, &user).await?;
    let mut job_ms = Vec::new();
    let mut after_done_ms = Vec::new();
    let mut facts = 0usize;
    let extraction_runs = FACT_MESSAGES.len();
    for message in FACT_MESSAGES.iter().take(extraction_runs) {
        let done = ask(client, &chat, message, None).await?;
        let done_at = Instant::now();
        let report = loop {
            let event = tokio::time::timeout(Duration::from_secs(300), events.next())
                .await
                .context("no memory_extracted event within 300 s")??
                .context("events stream ended")?;
            if event.data["message_id"] == done.message_id {
                break event.data;
            }
        };
        after_done_ms.push(done_at.elapsed().as_secs_f64() * 1000.0);
        let span = report["finished_at"].as_f64().unwrap_or(0.0)
            - report["started_at"].as_f64().unwrap_or(0.0);
        job_ms.push(span);
        facts += report["facts"].as_array().map_or(0, Vec::len);
    }

    // Recall at a realistic size.
    for n in 0..RECALL_MEMORIES {
        client
            .call(
                Method::POST,
                &format!("/api/v1/users/{user}/memories"),
                Some(&json!({"text": filler(n), "infer": false})),
            )
            .await?;
    }
    let mut recall_ms = Vec::new();
    for _ in 0..20 {
        let t = Instant::now();
        client
            .call(
                Method::GET,
                &format!("/api/v1/users/{user}/memories?query=What%20do%20I%20do%20for%20work%3F&limit=5"),
                None,
            )
            .await?;
        recall_ms.push(t.elapsed().as_secs_f64() * 1000.0);
    }

    // TTFT with and without memory recall, alternating, background idle before each.
    let mut with = Vec::new();
    let mut without = Vec::new();
    let pairs = runs.max(3);
    for _ in 0..=pairs {
        for use_memory in [false, true] {
            idle(client).await?;
            let chat = new_chat(client, &user).await?;
            let done = ask(client, &chat, QUESTION, Some(use_memory)).await?;
            let ttft = done.data["timings"]["ttft_ms"].as_f64().unwrap_or(f64::NAN);
            if use_memory {
                with.push(ttft);
            } else {
                without.push(ttft);
            }
        }
    }
    // The first pair warmed up caches.
    with.remove(0);
    without.remove(0);
    Ok(Figures {
        extraction_runs,
        ttft_pairs: pairs,
        job_ms: median(&mut job_ms),
        after_done_ms: median(&mut after_done_ms),
        facts_per_message: facts as f64 / extraction_runs as f64,
        recall_ms: median(&mut recall_ms),
        ttft_without_ms: median(&mut without),
        ttft_with_ms: median(&mut with),
    })
}

/// A distinct, plausible memory.
fn filler(n: usize) -> String {
    const THINGS: [&str; 10] = [
        "tea",
        "hiking",
        "jazz",
        "chess",
        "sushi",
        "painting",
        "cycling",
        "poetry",
        "gardening",
        "astronomy",
    ];
    const VERBS: [&str; 5] = [
        "likes",
        "dislikes",
        "is learning",
        "teaches",
        "collects books on",
    ];
    format!(
        "User {} {} (note {n})",
        VERBS[n % VERBS.len()],
        THINGS[(n / VERBS.len()) % THINGS.len()]
    )
}

async fn new_chat(client: &Client, user: &str) -> anyhow::Result<String> {
    let chat = client
        .call(
            Method::POST,
            "/api/v1/chats",
            Some(&json!({"user_id": user})),
        )
        .await?;
    Ok(chat["id"].as_str().context("chat id")?.to_string())
}

struct Done {
    message_id: Value,
    data: Value,
}

async fn ask(
    client: &Client,
    chat: &str,
    content: &str,
    use_memory: Option<bool>,
) -> anyhow::Result<Done> {
    let mut options = json!({"temperature": 0, "max_tokens": 16});
    if let Some(on) = use_memory {
        options["use_memory"] = json!(on);
    }
    let mut stream = client
        .stream(
            &format!("/api/v1/chats/{chat}/messages"),
            &json!({"content": content, "options": options}),
        )
        .await?;
    let mut message_id = Value::Null;
    while let Some(event) = stream.next().await? {
        match event.event.as_str() {
            "start" => message_id = event.data["message_id"].clone(),
            "done" => {
                return Ok(Done {
                    message_id,
                    data: event.data,
                })
            }
            "error" => bail!("generation failed: {}", event.data),
            _ => {}
        }
    }
    bail!("stream ended without done")
}
