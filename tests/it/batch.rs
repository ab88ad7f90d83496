//! Continuous batching with the real default model: concurrent chat streams decoded together
//! give each stream exactly the reply it gets alone, streams that do not fit the context's
//! cells wait their turn, and a stream that leaves frees its place at once.

use std::time::Instant;

use serde_json::{json, Value};

use crate::support::{Daemon, Opts};

/// Prompts that keep SmolLM2 talking past `max_tokens`, so streams overlap.
const PROMPTS: [&str; 4] = [
    "Write a long story about a dragon who learns to bake bread.",
    "Explain in detail how a bicycle works, part by part.",
    "Describe a walk through a busy market in a big city.",
    "Write a long letter to a friend about your summer holidays.",
];

fn greedy(content: &str, max_tokens: u32) -> Value {
    json!({"content": content, "options": {"temperature": 0, "max_tokens": max_tokens}})
}

/// One stream's reply text, and when its first token and its `done` arrived.
struct Reply {
    text: String,
    first: Instant,
    done: Instant,
    finish: String,
}

async fn ask(d: &Daemon, content: &str, max_tokens: u32) -> Reply {
    let chat = d.new_chat("batch").await;
    let mut stream = d
        .client
        .stream(
            &format!("/api/v1/chats/{chat}/messages"),
            &greedy(content, max_tokens),
        )
        .await
        .unwrap();
    let mut text = String::new();
    let mut first = None;
    let mut finish = String::new();
    while let Some(event) = stream.next().await.unwrap() {
        match event.event.as_str() {
            "token" => {
                first.get_or_insert_with(Instant::now);
                text.push_str(event.data["text"].as_str().unwrap());
            }
            "done" => finish = event.data["finish_reason"].as_str().unwrap().to_string(),
            "error" => panic!("stream failed: {}", event.data),
            _ => {}
        }
    }
    Reply {
        text,
        first: first.expect("no token"),
        done: Instant::now(),
        finish,
    }
}

/// Asks every prompt at once; the replies in prompt order.
async fn together(d: &Daemon, prompts: &[&str], max_tokens: u32) -> Vec<Reply> {
    futures_util::future::join_all(prompts.iter().map(|p| ask(d, p, max_tokens))).await
}

#[tokio::test]
async fn greedy_replies_are_the_same_alone_and_batched() {
    let mut d = Daemon::start(Opts::default()).await;
    let mut alone = Vec::new();
    for prompt in PROMPTS {
        alone.push(ask(&d, prompt, 40).await.text);
    }
    // A fresh process: no prompt is in a KV cache, so the prompts are evaluated batched too.
    d.restart().await;
    let batched = together(&d, &PROMPTS, 40).await;
    // They really ran together: every stream had its first token before any was done.
    let last_first = batched.iter().map(|r| r.first).max().unwrap();
    let first_done = batched.iter().map(|r| r.done).min().unwrap();
    assert!(last_first < first_done, "the streams did not overlap");
    for (i, reply) in batched.iter().enumerate() {
        assert_eq!(reply.finish, "length", "stream {i}");
        assert_eq!(
            reply.text, alone[i],
            "stream {i}: batched reply differs from the reply alone"
        );
    }
    let metrics = crate::support::raw(
        &d.socket,
        &crate::support::request("GET", "/metrics", None, b""),
    )
    .1;
    assert!(
        metrics.contains("hearth_generations_total{finish=\"length\"} 4"),
        "{metrics}"
    );
}

/// Asks `prompts` alone on `d` (restarting it after, so nothing stays cached), then all at
/// once; the batched replies, checked against the lone ones when `exact`.
async fn alone_then_together(
    d: &mut Daemon,
    prompts: &[&str],
    max_tokens: u32,
    exact: bool,
) -> Vec<Reply> {
    let mut alone = Vec::new();
    for prompt in prompts {
        alone.push(ask(d, prompt, max_tokens).await.text);
    }
    d.restart().await;
    let batched = together(d, prompts, max_tokens).await;
    for (i, reply) in batched.iter().enumerate() {
        if exact {
            assert_eq!(reply.text, alone[i], "stream {i}");
        } else {
            assert!(!reply.text.is_empty(), "stream {i}");
        }
        assert!(
            ["stop", "length"].contains(&reply.finish.as_str()),
            "stream {i}: {}",
            reply.finish
        );
    }
    batched
}

/// How many streams started only after another one was done.
fn waited(replies: &[Reply]) -> usize {
    let first_done = replies.iter().map(|r| r.done).min().unwrap();
    replies.iter().filter(|r| r.first > first_done).count()
}

#[tokio::test]
async fn streams_beyond_the_slots_or_the_cells_wait_and_then_run() {
    // Two slots: two streams run, two wait for a slot. (The last two reuse slots whose cached
    // tails were cut: their tokens may land in freed cells below their earlier ones, and
    // llama.cpp's attention adds a sequence's cells in cell order, not position order, so a
    // near tie may go the other way: the replies are not compared with the lone ones here.)
    let mut d = Daemon::start(Opts {
        extra: vec!["--parallel".into(), "2".into()],
        ..Opts::default()
    })
    .await;
    let replies = alone_then_together(&mut d, &PROMPTS, 24, false).await;
    assert_eq!(waited(&replies), 2, "two streams wait for a slot");
    drop(d);

    // Four slots, but cells for three of these ~300-token prompts with their replies: the
    // fourth waits at the head of the queue until a stream ends. (Prompts of 64 tokens and more
    // are evaluated alone in one micro-batch, where llama.cpp's tiled attention kernel sums by
    // cell placement, and batched in smaller chunks: their replies may differ by a near tie.)
    let long: Vec<String> = PROMPTS
        .iter()
        .map(|p| format!("{} {}", "Please read this carefully. ".repeat(45), p))
        .collect();
    let prompts: Vec<&str> = long.iter().map(String::as_str).collect();
    let mut d = Daemon::start(Opts {
        ctx: 1024,
        ..Opts::default()
    })
    .await;
    let replies = alone_then_together(&mut d, &prompts, 24, false).await;
    assert_eq!(waited(&replies), 1, "one stream waits for cells");
}

/// A stream's completion tokens and finish, read from its `done` event.
async fn ask_counted(d: &Daemon, content: &str, max_tokens: u32, seed: u32) -> (u64, String) {
    let chat = d.new_chat("cells").await;
    let body = json!({"content": content, "options": {"temperature": 0.8, "seed": seed, "max_tokens": max_tokens}});
    let mut stream = d
        .client
        .stream(&format!("/api/v1/chats/{chat}/messages"), &body)
        .await
        .unwrap();
    while let Some(event) = stream.next().await.unwrap() {
        match event.event.as_str() {
            "done" => {
                return (
                    event.data["usage"]["completion_tokens"].as_u64().unwrap(),
                    event.data["finish_reason"].as_str().unwrap().to_string(),
                )
            }
            "error" => panic!("stream failed: {}", event.data),
            _ => {}
        }
    }
    panic!("no done event")
}

#[tokio::test]
async fn when_replies_outgrow_their_reserves_the_newest_stream_gives_way() {
    // Two streams of up to 700 tokens are admitted with 256-token reply reserves in a
    // 1024-cell context; when the cells run out, the newer one ends with `length` and the older
    // one goes on to its full reply. (These seeds keep the model telling its story.)
    let d = Daemon::start(Opts {
        ctx: 1024,
        extra: vec!["--parallel".into(), "2".into()],
        ..Opts::default()
    })
    .await;
    let story = "Write a very long story about a dragon and a knight.";
    let older = ask_counted(&d, story, 700, 1);
    let newer = async {
        tokio::time::sleep(std::time::Duration::from_millis(300)).await;
        ask_counted(&d, story, 700, 2).await
    };
    let ((old_tokens, old_finish), (new_tokens, new_finish)) = tokio::join!(older, newer);
    // (The older one may also end on its own before its 700 tokens.)
    assert!(
        ["stop", "length"].contains(&old_finish.as_str()) && old_tokens > new_tokens,
        "older: {old_tokens} {old_finish}; newer: {new_tokens} {new_finish}"
    );
    // Length before its max_tokens, with its own positions far from n_ctx: the cells ran out.
    assert_eq!(new_finish, "length");
    assert!(
        new_tokens < 700 && new_tokens > 300,
        "the newer stream gave way at {new_tokens} tokens"
    );
}
