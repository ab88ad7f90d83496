//! Per-chat KV snapshots with the real default model: a chat evicted from the only slot is
//! saved to `DATA_DIR/kv/` and restored when it continues (its history is not evaluated
//! again, and the model still knows what it said), also after a restart; a damaged file is
//! deleted and the chat is evaluated in full; deleting a chat deletes its snapshots.

use std::path::Path;
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::support::{Daemon, Opts};

/// A first message long enough to be worth saving (well over 128 tokens with the template),
/// with a fact the model can only recall from the history.
const INTRO: &str = "Let me tell you about my life. I live in a small house at the edge of a \
    quiet town, close to a river and a forest of tall pine trees. Every morning I walk along the \
    river, watch the herons fish, and stop at the bakery for fresh bread. In the afternoon I \
    read books about history and travel, and in the evening I cook soup with vegetables from \
    my garden: carrots, leeks, potatoes and beans. In winter the town is covered in snow and the \
    river freezes at the edges, and in summer the forest smells of resin and warm earth. I have \
    a dog named Rex.";

fn greedy(content: &str, max_tokens: u32) -> Value {
    json!({"content": content, "options": {"temperature": 0, "max_tokens": max_tokens}})
}

fn metric(text: &str, name: &str) -> f64 {
    text.lines()
        .find_map(|line| line.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
        .unwrap_or_else(|| panic!("no {name} in\n{text}"))
}

/// The snapshot files, and which of them hold `chat`'s conversation (named in their header).
fn files(dir: &Path, chat: &str) -> (usize, usize) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return (0, 0);
    };
    let mut all = 0;
    let mut of_chat = 0;
    for entry in entries {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "kv") {
            all += 1;
            let bytes = std::fs::read(&path).unwrap();
            let needle = format!("\"conversation\":\"{chat}\"");
            if bytes.windows(needle.len()).any(|w| w == needle.as_bytes()) {
                of_chat += 1;
            }
        }
    }
    (all, of_chat)
}

/// Waits for the snapshot writer (it runs off the token path).
async fn wait_for_file(dir: &Path, chat: &str) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while files(dir, chat).1 == 0 {
        assert!(
            Instant::now() < deadline,
            "no snapshot of {chat} was written"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn turn(d: &Daemon, chat: &str, content: &str) -> (String, Value) {
    let (text, events) = d.ask(chat, greedy(content, 24)).await;
    let done = events.last().unwrap().data.clone();
    assert!(done["finish_reason"].as_str().is_some(), "{done}");
    (text, done)
}

#[tokio::test]
async fn an_evicted_chat_is_restored_from_its_snapshot_also_after_restart() {
    let mut d = Daemon::start(Opts {
        extra: vec!["--parallel".into(), "1".into()],
        ..Opts::default()
    })
    .await;
    let kv = d.data_dir().join("kv");
    let chat = d.new_chat("kv").await;
    let (_, first) = turn(&d, &chat, INTRO).await;
    let first_prompt = first["usage"]["prompt_tokens"].as_u64().unwrap();
    assert!(first_prompt > 128, "{first}");
    assert_eq!(
        files(&kv, &chat),
        (0, 0),
        "nothing is saved while it is cached"
    );

    // Another chat takes the only slot: the first is saved on eviction.
    let other = d.new_chat("kv").await;
    turn(&d, &other, "What is the capital of France?").await;
    wait_for_file(&kv, &chat).await;

    // It continues from the snapshot: its history is restored, not evaluated, and the model
    // still sees it.
    let (answer, done) = turn(&d, &chat, "What is my dog's name?").await;
    assert!(answer.contains("Rex"), "answer: {answer:?} {done}");
    let cached = done["context"]["cached_tokens"].as_u64().unwrap();
    assert!(
        cached >= first_prompt,
        "restored {cached} of {first_prompt}: {done}"
    );
    let m = d.client.text("/metrics").await.unwrap();
    assert_eq!(metric(&m, "hearth_kv_snapshots_restored_total"), 1.0);
    assert!(metric(&m, "hearth_kv_snapshot_tokens_restored_total") >= first_prompt as f64);
    let second_prompt = done["usage"]["prompt_tokens"].as_u64().unwrap();

    // A graceful stop saves what the slot holds; the chat continues from disk.
    assert!(d.terminate().success());
    assert_eq!(
        files(&kv, &chat).1,
        1,
        "saved at shutdown, superseding the older one"
    );
    d.restart().await;
    let (answer, done) = turn(&d, &chat, "What is my dog's name?").await;
    assert!(answer.contains("Rex"), "answer after restart: {answer:?}");
    let cached = done["context"]["cached_tokens"].as_u64().unwrap();
    assert!(
        cached >= second_prompt,
        "restored {cached} of {second_prompt}: {done}"
    );
    let m = d.client.text("/metrics").await.unwrap();
    assert_eq!(metric(&m, "hearth_kv_snapshots_restored_total"), 1.0);
    assert_eq!(metric(&m, "hearth_kv_snapshots_discarded_total"), 0.0);

    // Unloading the model saves the conversation too; the next turn loads it and restores.
    let third_prompt = done["usage"]["prompt_tokens"].as_u64().unwrap();
    let saved = metric(&m, "hearth_kv_snapshots_saved_total");
    let model = done["model"].as_str().unwrap().to_string();
    d.client
        .call(
            http::Method::POST,
            &format!("/api/v1/models/{model}/unload"),
            None,
        )
        .await
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let m = d.client.text("/metrics").await.unwrap();
        if metric(&m, "hearth_kv_snapshots_saved_total") > saved {
            break;
        }
        assert!(Instant::now() < deadline, "nothing saved on unload");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let (_, done) = turn(&d, &chat, "Thank you.").await;
    let cached = done["context"]["cached_tokens"].as_u64().unwrap();
    assert!(
        cached >= third_prompt,
        "restored {cached} of {third_prompt}: {done}"
    );

    // A damaged snapshot is never trusted: deleted, and the history evaluated again.
    assert!(d.terminate().success());
    let (all, _) = files(&kv, &chat);
    assert!(all >= 1);
    for entry in std::fs::read_dir(&kv).unwrap() {
        let path = entry.unwrap().path();
        let mut bytes = std::fs::read(&path).unwrap();
        let n = bytes.len();
        bytes[n / 2] ^= 0x5a;
        std::fs::write(&path, bytes).unwrap();
    }
    d.restart().await;
    let (answer, done) = turn(&d, &chat, "What is my dog's name?").await;
    assert!(
        answer.contains("Rex"),
        "answer after a full evaluation: {answer:?}"
    );
    assert_eq!(done["context"]["cached_tokens"], 0, "{done}");
    let m = d.client.text("/metrics").await.unwrap();
    assert_eq!(metric(&m, "hearth_kv_snapshots_restored_total"), 0.0);
    assert!(metric(&m, "hearth_kv_snapshots_discarded_total") >= 1.0);
    assert_eq!(files(&kv, &chat).1, 0, "the damaged file is gone");

    // Deleting the chat deletes its snapshot (saved again when the other chat took the slot).
    turn(&d, &other, "And of Italy?").await;
    wait_for_file(&kv, &chat).await;
    d.client
        .call(http::Method::DELETE, &format!("/api/v1/chats/{chat}"), None)
        .await
        .unwrap();
    assert_eq!(
        files(&kv, &chat).1,
        0,
        "a deleted chat's KV state is deleted"
    );
}

#[tokio::test]
async fn snapshots_off_save_nothing() {
    let d = Daemon::start(Opts {
        extra: vec![
            "--parallel".into(),
            "1".into(),
            "--kv-cache-bytes".into(),
            "0".into(),
        ],
        ..Opts::default()
    })
    .await;
    let kv = d.data_dir().join("kv");
    let chat = d.new_chat("kv").await;
    turn(&d, &chat, INTRO).await;
    let other = d.new_chat("kv").await;
    turn(&d, &other, "What is the capital of France?").await;
    let (_, done) = turn(&d, &chat, "What is my dog's name?").await;
    // Only the system prompt it shares with the other chat, still in the slot.
    let cached = done["context"]["cached_tokens"].as_u64().unwrap();
    assert!(cached < 64, "{done}");
    assert_eq!(files(&kv, &chat), (0, 0));
}

#[tokio::test]
async fn an_openai_conversation_is_matched_by_its_tokens() {
    let d = Daemon::start(Opts {
        extra: vec!["--parallel".into(), "1".into()],
        ..Opts::default()
    })
    .await;
    let kv = d.data_dir().join("kv");
    let complete = |messages: &Vec<Value>| {
        let body = json!({"messages": messages, "temperature": 0, "max_tokens": 16});
        let client = &d.client;
        async move {
            client
                .call(http::Method::POST, "/v1/chat/completions", Some(&body))
                .await
                .unwrap()
        }
    };
    let mut messages = vec![json!({"role": "user", "content": INTRO})];
    let first = complete(&messages).await;
    let first_prompt = first["usage"]["prompt_tokens"].as_u64().unwrap();
    // Another conversation takes the only slot; the first is saved (no chat id: by tokens).
    complete(&vec![
        json!({"role": "user", "content": "What is the capital of France?"}),
    ])
    .await;
    let deadline = Instant::now() + Duration::from_secs(20);
    while files(&kv, "none").0 == 0 {
        assert!(Instant::now() < deadline, "no snapshot was written");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    messages
        .push(json!({"role": "assistant", "content": first["choices"][0]["message"]["content"]}));
    messages.push(json!({"role": "user", "content": "What is my dog's name?"}));
    let third = complete(&messages).await;
    let cached = third["usage"]["prompt_tokens_details"]["cached_tokens"]
        .as_u64()
        .unwrap();
    assert!(
        cached >= first_prompt,
        "restored {cached} of {first_prompt}: {third}"
    );
}
