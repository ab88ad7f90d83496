//! Chat turns with the real default model: answers, history, persistence across restart and
//! `kill -9`, cancellation by endpoint and by disconnect, queueing.

use std::time::{Duration, Instant};

use http::Method;
use serde_json::{json, Value};

use crate::support::{Daemon, Opts, ASSISTANT_MODEL, TINY_MODEL};

fn greedy(content: &str) -> Value {
    json!({"content": content, "options": {"temperature": 0, "max_tokens": 64}})
}

#[tokio::test]
async fn greedy_answer_streams_in_order_and_is_correct() {
    let d = Daemon::start(Opts::default()).await;
    let chat = d.new_chat("france").await;
    let (text, events) = d
        .ask(
            &chat,
            greedy("What is the capital of France? Answer in one sentence."),
        )
        .await;
    assert!(text.contains("Paris"), "answer: {text:?}");
    let names: Vec<&str> = events.iter().map(|e| e.event.as_str()).collect();
    assert_eq!(names.first(), Some(&"start"));
    assert_eq!(names.last(), Some(&"done"));
    assert!(
        names[1..names.len() - 1].iter().all(|n| *n == "token"),
        "{names:?}"
    );
    let done = &events.last().unwrap().data;
    assert_eq!(done["finish_reason"], "stop");
    assert_eq!(done["truncated"], false);
    assert!(done["usage"]["prompt_tokens"].as_u64().unwrap() > 10);
    assert_eq!(
        done["usage"]["completion_tokens"].as_u64().unwrap(),
        u64::try_from(names.len() - 2).unwrap(),
        "one token event per generated token for this ASCII answer"
    );
    assert!(done["timings"]["ttft_ms"].as_f64().unwrap() > 0.0);
    assert_eq!(done["reply_id"], events[0].data["reply_id"]);

    // The reply is stored with its usage.
    let stored = d
        .client
        .call(Method::GET, &format!("/api/v1/chats/{chat}"), None)
        .await
        .unwrap();
    let messages = stored["messages"].as_array().unwrap();
    assert_eq!(messages.len(), 2);
    assert_eq!(messages[0]["role"], "user");
    assert_eq!(messages[1]["content"], text.as_str());
    assert_eq!(messages[1]["finish_reason"], "stop");
}

#[tokio::test]
async fn second_turn_sees_the_first_and_history_survives_restart_and_kill9() {
    // SmolLM2-135M answers "My name is Ada." / "What is my name?" with a name of its own under
    // greedy decoding (it is a 135M model), but it does recall a pet's name from history, and
    // without that history it cannot know it.
    let mut d = Daemon::start(Opts::default()).await;
    let alone = d.new_chat("ada").await;
    let (without, _) = d.ask(&alone, greedy("What is my dog's name?")).await;
    assert!(!without.contains("Rex"), "no history, yet: {without:?}");
    let chat = d.new_chat("ada").await;
    let (first, first_events) = d.ask(&chat, greedy("I have a dog named Rex.")).await;
    assert!(!first.is_empty());
    let first_prompt = first_events.last().unwrap().data["usage"]["prompt_tokens"]
        .as_u64()
        .unwrap();
    let (second, events) = d.ask(&chat, greedy("What is my dog's name?")).await;
    assert!(second.contains("Rex"), "answer: {second:?}");
    let done = &events.last().unwrap().data;
    assert_eq!(done["context"]["history_messages"], 2);
    // Another chat ran first (in another KV sequence): the second turn still reuses all of
    // the first turn's prompt.
    assert!(
        done["context"]["cached_tokens"].as_u64().unwrap() >= first_prompt,
        "the second turn reuses the first turn's KV cache: {done}"
    );

    // Graceful restart.
    assert!(d.terminate().success());
    d.restart().await;
    let stored = d
        .client
        .call(Method::GET, &format!("/api/v1/chats/{chat}"), None)
        .await
        .unwrap();
    assert_eq!(stored["messages"].as_array().unwrap().len(), 4);

    // kill -9 right after `done`: the turn was durable before `done` was sent.
    let (third, _) = d.ask(&chat, greedy("Say hello.")).await;
    d.kill9();
    d.restart().await;
    let stored = d
        .client
        .call(Method::GET, &format!("/api/v1/chats/{chat}"), None)
        .await
        .unwrap();
    let messages = stored["messages"].as_array().unwrap();
    assert_eq!(messages.len(), 6);
    assert_eq!(messages[5]["content"], third.as_str());
    // And the conversation continues with its history.
    let (_, events) = d.ask(&chat, greedy("What is my dog's name?")).await;
    assert_eq!(
        events.last().unwrap().data["context"]["history_messages"],
        6
    );
}

fn long_story() -> Value {
    json!({"content": "Write a very long story about a dragon and a knight.", "options": {"temperature": 0.8, "seed": 1, "max_tokens": 4000}})
}

#[tokio::test]
async fn cancel_endpoint_stops_generation_and_stores_the_partial_reply() {
    let d = Daemon::start(Opts::default()).await;
    let chat = d.new_chat("cancel").await;
    let mut stream = d
        .client
        .stream(&format!("/api/v1/chats/{chat}/messages"), &long_story())
        .await
        .unwrap();
    let mut text = String::new();
    let mut tokens = 0;
    while tokens < 5 {
        let event = stream.next().await.unwrap().unwrap();
        if event.event == "token" {
            tokens += 1;
            text.push_str(event.data["text"].as_str().unwrap());
        }
    }
    let cancelled_at = Instant::now();
    let answer = d
        .client
        .call(Method::POST, &format!("/api/v1/chats/{chat}/cancel"), None)
        .await
        .unwrap();
    assert_eq!(answer["cancelled"], true);
    let done = loop {
        let event = stream
            .next()
            .await
            .unwrap()
            .expect("stream ended without done");
        match event.event.as_str() {
            "token" => text.push_str(event.data["text"].as_str().unwrap()),
            "done" => break event.data,
            other => panic!("unexpected {other}: {}", event.data),
        }
    };
    let took = cancelled_at.elapsed();
    assert_eq!(done["finish_reason"], "cancelled");
    assert!(took < Duration::from_secs(2), "cancel took {took:?}");
    assert!(
        stream.next().await.unwrap().is_none(),
        "done is the last event"
    );

    let stored = d
        .client
        .call(Method::GET, &format!("/api/v1/chats/{chat}"), None)
        .await
        .unwrap();
    let reply = &stored["messages"][1];
    assert_eq!(reply["finish_reason"], "cancelled");
    assert_eq!(reply["content"], text.as_str());
    // Nothing is running any more; a second cancel says so.
    let again = d
        .client
        .call(Method::POST, &format!("/api/v1/chats/{chat}/cancel"), None)
        .await
        .unwrap();
    assert_eq!(again["cancelled"], false);
}

#[tokio::test]
async fn client_disconnect_cancels_generation_and_frees_the_worker() {
    let d = Daemon::start(Opts::default()).await;
    let chat = d.new_chat("disconnect").await;
    let mut stream = d
        .client
        .stream(&format!("/api/v1/chats/{chat}/messages"), &long_story())
        .await
        .unwrap();
    let mut tokens = 0;
    while tokens < 3 {
        if stream.next().await.unwrap().unwrap().event == "token" {
            tokens += 1;
        }
    }
    drop(stream);
    let gone = Instant::now();
    // The partial reply appears, marked cancelled, soon after the disconnect.
    let reply = loop {
        let stored = d
            .client
            .call(Method::GET, &format!("/api/v1/chats/{chat}"), None)
            .await
            .unwrap();
        if let Some(reply) = stored["messages"].get(1) {
            break reply.clone();
        }
        assert!(
            gone.elapsed() < Duration::from_secs(5),
            "generation was not stopped"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert_eq!(reply["finish_reason"], "cancelled");
    let completion = reply["usage"]["completion_tokens"].as_u64().unwrap();
    assert!(
        completion < 200,
        "generation ran on after the disconnect: {completion} tokens"
    );
    // The worker is free: a new question is answered at once.
    let (text, _) = d.ask(&chat, greedy("What is 2 + 2?")).await;
    assert!(!text.is_empty());
}

#[tokio::test]
async fn full_queue_answers_503_with_retry_after_and_busy_chat_409() {
    let d = Daemon::start(Opts {
        queue_depth: 1,
        ..Opts::default()
    })
    .await;
    let chats = [
        d.new_chat("q1").await,
        d.new_chat("q2").await,
        d.new_chat("q3").await,
    ];
    let mut running = d
        .client
        .stream(
            &format!("/api/v1/chats/{}/messages", chats[0]),
            &long_story(),
        )
        .await
        .unwrap();
    // Wait until the first generation is running, so the second one waits in the queue.
    loop {
        if running.next().await.unwrap().unwrap().event == "token" {
            break;
        }
    }
    let _queued = d
        .client
        .stream(
            &format!("/api/v1/chats/{}/messages", chats[1]),
            &long_story(),
        )
        .await
        .unwrap();
    let mut raw = std::os::unix::net::UnixStream::connect(&d.socket).unwrap();
    use std::io::{Read, Write};
    let body = br#"{"content":"hi"}"#;
    write!(
        raw,
        "POST /api/v1/chats/{}/messages HTTP/1.1\r\nHost: h\r\nConnection: close\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n",
        chats[2],
        body.len()
    )
    .unwrap();
    raw.write_all(body).unwrap();
    let mut response = String::new();
    raw.read_to_string(&mut response).unwrap();
    assert!(response.starts_with("HTTP/1.1 503"), "{response}");
    assert!(
        response.to_ascii_lowercase().contains("retry-after: 2"),
        "{response}"
    );
    assert!(response.contains("queue_full"), "{response}");

    // The same chat cannot run two turns at once.
    let (status, err) = d
        .client
        .request(
            Method::POST,
            &format!("/api/v1/chats/{}/messages", chats[0]),
            Some(&json!({"content": "x"})),
        )
        .await
        .unwrap();
    assert_eq!(status, 409);
    assert_eq!(err["error"]["code"], "generation_in_progress");
    for chat in &chats[..2] {
        d.client
            .call(Method::POST, &format!("/api/v1/chats/{chat}/cancel"), None)
            .await
            .unwrap();
    }
}

#[tokio::test]
async fn a_message_larger_than_the_context_is_413_and_long_history_is_truncated() {
    let d = Daemon::start(Opts {
        model: TINY_MODEL,
        ctx: 512,
        ..Opts::default()
    })
    .await;
    let chat = d.new_chat("budget").await;
    let huge = "word ".repeat(2000);
    let (status, err) = d
        .client
        .request(
            Method::POST,
            &format!("/api/v1/chats/{chat}/messages"),
            Some(&json!({"content": huge})),
        )
        .await
        .unwrap();
    assert_eq!(status, 413);
    assert_eq!(err["error"]["code"], "message_too_long");
    let stored = d
        .client
        .call(Method::GET, &format!("/api/v1/chats/{chat}"), None)
        .await
        .unwrap();
    assert_eq!(
        stored["messages"].as_array().unwrap().len(),
        0,
        "nothing stored"
    );

    // Fill the history until it no longer fits; the oldest turns are dropped and reported.
    let mut truncated = None;
    for n in 0..12 {
        let body = json!({"content": format!("turn {n}: {}", "lorem ipsum ".repeat(20)), "options": {"max_tokens": 16, "temperature": 0}});
        let (_, events) = d.ask(&chat, body).await;
        let done = &events.last().unwrap().data;
        assert_eq!(events.last().unwrap().event, "done", "{done}");
        if done["truncated"] == true {
            truncated = Some(done.clone());
            break;
        }
    }
    let done = truncated.expect("history never got truncated");
    assert!(done["context"]["history_dropped"].as_u64().unwrap() >= 2);
    assert!(
        done["usage"]["prompt_tokens"].as_u64().unwrap()
            <= done["context"]["prompt_budget"].as_u64().unwrap()
    );
}

#[tokio::test]
async fn a_fixed_seed_reproduces_the_same_sampled_reply() {
    let d = Daemon::start(Opts {
        model: TINY_MODEL,
        ..Opts::default()
    })
    .await;
    let body = json!({"content": "hello there", "options": {"temperature": 1.0, "seed": 42, "max_tokens": 48}});
    let mut replies = Vec::new();
    for _ in 0..3 {
        let chat = d.new_chat("seed").await;
        let (text, events) = d.ask(&chat, body.clone()).await;
        assert_eq!(events.last().unwrap().event, "done");
        replies.push(text);
    }
    assert!(!replies[0].is_empty());
    assert_eq!(replies[0], replies[1]);
    assert_eq!(replies[1], replies[2]);
    let chat = d.new_chat("seed").await;
    let other = json!({"content": "hello there", "options": {"temperature": 1.0, "seed": 7, "max_tokens": 48}});
    let (text, _) = d.ask(&chat, other).await;
    assert_ne!(text, replies[0], "another seed samples another reply");
}

#[tokio::test]
async fn disconnect_during_a_long_prompt_evaluation_stops_it_between_micro_batches() {
    let mut d = Daemon::start(Opts {
        ctx: 4096,
        ..Opts::default()
    })
    .await;
    let chat = d.new_chat("prefill").await;
    // ~3,000 prompt tokens: seconds of prefill on one thread, evaluated 256 tokens at a time.
    let long = "The quick brown fox jumps over the lazy dog. ".repeat(300);
    let body = json!({"content": long, "options": {"max_tokens": 64}});
    let stream = d
        .client
        .stream(&format!("/api/v1/chats/{chat}/messages"), &body)
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    drop(stream);
    let reply = loop {
        let stored = d
            .client
            .call(Method::GET, &format!("/api/v1/chats/{chat}"), None)
            .await
            .unwrap();
        if let Some(reply) = stored["messages"].get(1) {
            break reply.clone();
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    };
    assert_eq!(reply["finish_reason"], "cancelled");
    assert_eq!(
        reply["usage"]["completion_tokens"], 0,
        "stopped before the first token"
    );
    // The worker says how far the prompt evaluation got: part of the prompt, not all of it. A
    // count, not a time, so a loaded machine cannot make this pass or fail by chance.
    assert!(d.terminate().success());
    let log = d.stderr();
    let line = log
        .lines()
        .find(|l| l.contains("prompt evaluation cancelled part-way"))
        .unwrap_or_else(|| panic!("the prompt evaluation was not cancelled part-way:\n{log}"));
    let field = |name: &str| -> u64 {
        let start = line.find(&format!("{name}=")).unwrap() + name.len() + 1;
        line[start..]
            .split(|c: char| !c.is_ascii_digit())
            .next()
            .unwrap()
            .parse()
            .unwrap()
    };
    let (evaluated, total) = (field("evaluated"), field("prompt_tokens"));
    assert!(total > 2000, "{line}");
    assert!(evaluated < total, "{line}");
    assert_eq!(evaluated % 256, 0, "stopped between micro-batches: {line}");
}

/// The pinned assistant model (Qwen2.5-Coder-1.5B-Instruct) keeps a name from the turn before,
/// over the socket, greedy: the two-turn recall SmolLM2-135M fails. The daemon's system prompt
/// replaces the one Qwen's template would insert by itself ("You are Qwen, …").
#[tokio::test]
async fn the_assistant_model_recalls_a_name_from_the_turn_before() {
    let d = Daemon::start(Opts {
        model: ASSISTANT_MODEL,
        ..Opts::default()
    })
    .await;
    let chat = d.new_chat("ada").await;
    let ask = |content: &str| json!({"content": content, "options": {"temperature": 0, "max_tokens": 32}});
    let (first, _) = d
        .ask(&chat, ask("My name is Ada and I have a dog named Rex."))
        .await;
    let (second, events) = d.ask(&chat, ask("What is my name?")).await;
    assert!(second.contains("Ada"), "first: {first:?}, then: {second:?}");
    let done = &events.last().unwrap().data;
    assert_eq!(done["finish_reason"], "stop", "{done}");
    // The second turn's prompt holds the first exchange.
    assert!(
        done["context"]["history_messages"].as_u64().unwrap() >= 2,
        "{done}"
    );
}

#[tokio::test]
async fn a_stored_reply_with_a_nul_does_not_break_the_chat() {
    // Issue 18.3: a model once emitted U+0000 into 5 of 150 replies, and every later message of
    // those chats got 422 ("cannot render the chat template: nul byte found"). New output is
    // cleaned in the worker (unit-tested in llm/utf8.rs); replies stored before that still exist,
    // so a chat whose history holds one must go on working.
    let mut d = Daemon::start(Opts::default()).await;
    let chat = d.new_chat("nul").await;
    let (first, _) = d.ask(&chat, greedy("Say hello.")).await;
    assert!(!first.is_empty());
    assert!(d.terminate().success());
    {
        use hearth::store::{ChatId, FinishReason, Message, MessageId, Role};
        let store = hearth::store::Store::open(&d.data_dir().join("db"), 8 << 20).unwrap();
        let chat_id: ChatId = chat.parse().unwrap();
        let message = |role, content: &str| Message {
            id: MessageId::new(),
            chat_id,
            seq: 0,
            role,
            content: content.to_string(),
            created_at: 1,
            finish_reason: (role == Role::Assistant).then_some(FinishReason::Stop),
            usage: None,
            sources: Vec::new(),
        };
        store
            .append_messages(
                chat_id,
                &mut [
                    message(Role::User, "Name a colour."),
                    message(Role::Assistant, "Blue\u{0}\u{0} is a colour."),
                ],
            )
            .unwrap();
        store.flush_now().unwrap();
    }
    d.restart().await;
    let (text, events) = d.ask(&chat, greedy("Name another colour.")).await;
    let done = &events.last().unwrap().data;
    assert_eq!(events.last().unwrap().event, "done", "{events:?}");
    assert_eq!(done["context"]["history_messages"], 4, "{done}");
    assert!(!text.is_empty() && !text.contains('\0'), "{text:?}");
}
