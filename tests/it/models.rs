//! The model list (`GET /api/v1/models`, `hearth models`) against real model files: states,
//! GGUF metadata read only from verified files, and files that are missing or changed.

use http::Method;
use serde_json::{json, Value};

use crate::support::{models_dir, tiny, Daemon, Opts, BASE_MODEL, REAL_MODEL, TINY_MODEL};

async fn models(d: &Daemon) -> Vec<Value> {
    let list = d
        .client
        .call(Method::GET, "/api/v1/models", None)
        .await
        .unwrap();
    list["models"].as_array().unwrap().clone()
}

fn named<'a>(list: &'a [Value], name: &str) -> &'a Value {
    list.iter()
        .find(|m| m["name"] == name)
        .unwrap_or_else(|| panic!("{name} not listed: {list:?}"))
}

#[tokio::test]
async fn the_list_shows_every_model_its_state_and_its_header() {
    let d = Daemon::start(Opts::default()).await;
    let list = models(&d).await;
    let smol = named(&list, REAL_MODEL);
    assert_eq!(smol["state"], "loaded");
    assert_eq!(smol["source"], "manifest");
    assert_eq!(smol["role"], "chat");
    assert_eq!(smol["default"], true);
    let meta = &smol["metadata"];
    assert_eq!(meta["architecture"], "llama");
    assert_eq!(meta["quantization"], "Q4_1");
    assert_eq!(meta["context_length"], 8192);
    assert_eq!(meta["template_family"], "chatml");
    assert!(meta["parameters"].as_u64().unwrap() > 100_000_000);

    let qwen = named(&list, "qwen2.5-coder-1.5b-instruct");
    assert_eq!(qwen["state"], "available");
    assert_eq!(qwen["metadata"]["architecture"], "qwen2");
    assert_eq!(qwen["metadata"]["context_length"], 32768);
    assert_eq!(named(&list, TINY_MODEL)["state"], "available");
    let embed = named(&list, "all-minilm-l6-v2");
    assert_eq!(embed["role"], "embed");
    assert_eq!(embed["state"], "available");
    // The embedder's tokenizer and runtime files are parts of it, not models.
    assert!(list
        .iter()
        .all(|m| m["role"] != "tokenizer" && m["role"] != "runtime"));
}

#[tokio::test]
async fn missing_and_changed_files_are_listed_as_such_and_never_read() {
    // A models dir with the tiny model only, plus a SmolLM2 "file" of the right size whose
    // bytes are not the pinned ones (it must not be parsed: it is not even GGUF).
    let dir = tempfile::tempdir().unwrap();
    std::fs::copy(
        models_dir().join("tiny-random.gguf"),
        dir.path().join("tiny-random.gguf"),
    )
    .unwrap();
    // A GGUF file nothing pins: listed as unpinned, never read.
    std::fs::copy(
        models_dir().join("tiny-random.gguf"),
        dir.path().join("Extra Model.gguf"),
    )
    .unwrap();
    let fake = std::fs::File::create(dir.path().join("SmolLM2-135M-Instruct.Q4_1.gguf")).unwrap();
    fake.set_len(98_362_432).unwrap();
    let d = Daemon::start(Opts {
        models_dir: Some(dir.path().to_path_buf()),
        ..tiny()
    })
    .await;
    let list = models(&d).await;
    let smol = named(&list, REAL_MODEL);
    assert_eq!(smol["state"], "changed", "{smol}");
    assert!(smol["error"].as_str().unwrap().contains("sha256"), "{smol}");
    assert_eq!(smol["metadata"], Value::Null);
    // API bodies do not show where the files live.
    let text = serde_json::to_string(&list).unwrap();
    assert!(!text.contains(&dir.path().display().to_string()), "{text}");
    let qwen = named(&list, "qwen2.5-coder-1.5b-instruct");
    assert_eq!(qwen["state"], "missing");
    assert_eq!(qwen["fetch"], "./models/fetch assistant");
    assert_eq!(named(&list, TINY_MODEL)["state"], "loaded");
    let extra = named(&list, "extra-model");
    assert_eq!(
        (
            extra["state"].clone(),
            extra["source"].clone(),
            extra["metadata"].clone()
        ),
        (json!("unpinned"), json!("unpinned"), Value::Null),
        "{extra}"
    );
    assert_eq!(extra["add"], "hearth models add Extra Model.gguf");
}

/// The SmolLM2 file's pinned sha256 (from the manifest).
fn manifest_sha(name: &str) -> String {
    hearth::models::Manifest::builtin()
        .entry(name)
        .unwrap()
        .sha256
        .clone()
}

async fn post(d: &Daemon, path: &str, body: Value) -> (http::StatusCode, Value) {
    d.client
        .request(Method::POST, path, Some(&body))
        .await
        .unwrap()
}

/// Waits (up to 30 s) until health's `models.loaded` satisfies `ok`; returns that health.
async fn wait_loaded(d: &Daemon, what: &str, ok: impl Fn(&[Value]) -> bool) -> Value {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    loop {
        let h = health(d).await;
        if ok(h["models"]["loaded"].as_array().unwrap()) {
            return h;
        }
        assert!(std::time::Instant::now() < deadline, "{what}: {h}");
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
}

async fn health(d: &Daemon) -> Value {
    d.client
        .request(Method::GET, "/api/v1/health", None)
        .await
        .unwrap()
        .1
}

/// Sends one greedy message on `model`, returns (status, text, model that answered).
async fn ask_on(d: &Daemon, chat: &str, model: &str) -> (u16, String, Value) {
    let body = json!({
        "content": "Say hello.",
        "options": {"model": model, "temperature": 0.0, "max_tokens": 8},
    });
    let path = format!("/api/v1/chats/{chat}/messages");
    let stream = d.client.stream(&path, &body).await;
    let mut stream = match stream {
        Ok(stream) => stream,
        Err(err) => {
            let err = err
                .downcast::<hearth::client::ClientError>()
                .expect("an API error");
            let hearth::client::ClientError::Api { status, code, .. } = err else {
                panic!("not an API error: {err}")
            };
            return (status.map_or(0, |s| s.as_u16()), String::new(), json!(code));
        }
    };
    let mut text = String::new();
    let mut done = Value::Null;
    while let Some(event) = stream.next().await.unwrap() {
        match event.event.as_str() {
            "token" => text.push_str(event.data["text"].as_str().unwrap()),
            "done" => done = event.data.clone(),
            "error" => panic!("stream error: {}", event.data),
            _ => {}
        }
    }
    (200, text, done["model"].clone())
}

#[tokio::test]
async fn an_added_file_is_pinned_and_chats_and_a_changed_file_is_refused_before_parsing() {
    let files = tempfile::tempdir().unwrap();
    let copy = files.path().join("My Smol.gguf");
    std::fs::copy(models_dir().join("SmolLM2-135M-Instruct.Q4_1.gguf"), &copy).unwrap();
    let d = Daemon::start(Opts {
        extra: vec!["--max-loaded-models".into(), "2".into()],
        ..tiny()
    })
    .await;

    let (status, added) = post(
        &d,
        "/api/v1/models",
        json!({"path": copy.to_str().unwrap(), "name": "my-smol"}),
    )
    .await;
    assert_eq!(status, 201, "{added}");
    assert_eq!(added["sha256"], manifest_sha(REAL_MODEL));
    assert_eq!(added["metadata"]["architecture"], "llama");
    assert_eq!(added["metadata"]["quantization"], "Q4_1");
    assert_eq!(added["metadata"]["template_family"], "chatml");
    // No file system paths in API bodies: the file name only.
    assert_eq!(added["file"], "My Smol.gguf");

    let list = models(&d).await;
    let mine = named(&list, "my-smol");
    assert_eq!(mine["source"], "user");
    assert_eq!(mine["state"], "available");
    assert_eq!(mine["metadata"]["context_length"], 8192);
    let text = serde_json::to_string(&list).unwrap();
    assert!(
        !text.contains(&files.path().display().to_string()),
        "{text}"
    );

    // It answers, as itself, next to the default model.
    let chat = d.new_chat("ada").await;
    let (status, reply, model) = ask_on(&d, &chat, "my-smol").await;
    assert_eq!(status, 200);
    assert!(!reply.trim().is_empty());
    assert_eq!(model, "my-smol");
    let loaded: Vec<Value> = health(&d).await["models"]["loaded"]
        .as_array()
        .unwrap()
        .clone();
    assert!(
        loaded
            .iter()
            .any(|m| m["name"] == "my-smol" && m["ram_bytes"].as_u64().unwrap() > 50_000_000),
        "{loaded:?}"
    );

    // One byte changed, same size: refused with model_changed after re-hashing. The file is
    // changed only once the model is unloaded and its worker has let go of the mapping (the
    // chat's title job runs on it first): overwriting a mapped file in place is not allowed.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    while health(&d).await["background"]["pending"] != 0 {
        assert!(
            std::time::Instant::now() < deadline,
            "background jobs never finished"
        );
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    let (status, _) = post(&d, "/api/v1/models/my-smol/unload", json!({})).await;
    assert_eq!(status, 200);
    wait_loaded(&d, "my-smol never let go", |l| {
        l.iter().all(|m| m["name"] != "my-smol")
    })
    .await;
    let mut bytes = std::fs::read(&copy).unwrap();
    let middle = bytes.len() / 2;
    bytes[middle] ^= 0xff;
    std::fs::write(&copy, &bytes).unwrap();
    let (status, _, code) = ask_on(&d, &chat, "my-smol").await;
    assert_eq!((status, code), (409, json!("model_changed")));
    assert_eq!(named(&models(&d).await, "my-smol")["state"], "changed");

    // Truncated to something that is not GGUF at all: had llama.cpp been handed it, the load
    // would fail as model_unavailable; verification refuses it first.
    std::fs::write(&copy, b"this is not a model any more").unwrap();
    let (status, answer) = post(&d, "/api/v1/models/my-smol/load", json!({})).await;
    assert_eq!(status, 409, "{answer}");
    assert_eq!(answer["error"]["code"], "model_changed");
    let message = answer["error"]["message"].as_str().unwrap();
    assert!(message.contains("changed since it was added"), "{message}");
    assert!(
        !message.contains(&files.path().display().to_string()),
        "{message}"
    );

    // Removing unpins; the file stays; the name is unknown afterwards.
    let (status, removed) = d
        .client
        .request(Method::DELETE, "/api/v1/models/my-smol", None)
        .await
        .unwrap();
    assert_eq!(status, 200, "{removed}");
    assert!(copy.exists());
    let (status, _, code) = ask_on(&d, &chat, "my-smol").await;
    assert_eq!((status, code), (404, json!("unknown_model")));
    assert!(models(&d).await.iter().all(|m| m["name"] != "my-smol"));
    // The daemon's default model still answers.
    let (status, _, model) = ask_on(&d, &chat, TINY_MODEL).await;
    assert_eq!((status, model), (200, json!(TINY_MODEL)));
}

#[tokio::test]
async fn files_that_are_not_models_are_refused_at_add_and_the_daemon_stays_fine() {
    let files = tempfile::tempdir().unwrap();
    let d = Daemon::start(tiny()).await;
    // GGUF headers that lie: 2^60 key/values; a string 2^62 bytes long; a file cut short.
    let mut huge_count = b"GGUF".to_vec();
    huge_count.extend(3u32.to_le_bytes());
    huge_count.extend(0u64.to_le_bytes());
    huge_count.extend((1u64 << 60).to_le_bytes());
    huge_count.extend([7u8; 256]);
    let mut huge_string = b"GGUF".to_vec();
    huge_string.extend(3u32.to_le_bytes());
    huge_string.extend(0u64.to_le_bytes());
    huge_string.extend(1u64.to_le_bytes());
    huge_string.extend((1u64 << 62).to_le_bytes());
    huge_string.extend([b'a'; 256]);
    let real = std::fs::read(models_dir().join("tiny-random.gguf")).unwrap();
    let cut = real[..real.len().min(4096)].to_vec();
    for (name, bytes) in [
        ("count.gguf", huge_count),
        ("string.gguf", huge_string),
        ("cut.gguf", cut),
        ("text.gguf", b"hello, this is text and not a model".to_vec()),
    ] {
        let path = files.path().join(name);
        std::fs::write(&path, &bytes).unwrap();
        let (status, answer) = post(
            &d,
            "/api/v1/models",
            json!({"path": path.to_str().unwrap()}),
        )
        .await;
        assert_eq!(status, 400, "{name}: {answer}");
        assert_eq!(answer["error"]["code"], "invalid_model", "{name}: {answer}");
    }
    // Bad requests: a relative path, a missing file, a shipped model's name, a bad name.
    let real_copy = files.path().join("ok.gguf");
    std::fs::write(&real_copy, &real).unwrap();
    for (body, status, code) in [
        (json!({"path": "relative.gguf"}), 422, "invalid_request"),
        (
            json!({"path": files.path().join("nope.gguf").to_str().unwrap()}),
            404,
            "not_found",
        ),
        (
            json!({"path": real_copy.to_str().unwrap(), "name": REAL_MODEL}),
            409,
            "model_exists",
        ),
        (
            json!({"path": real_copy.to_str().unwrap(), "name": "a/b"}),
            422,
            "invalid_request",
        ),
        (
            json!({"path": real_copy.to_str().unwrap(), "size": 1}),
            400,
            "unknown_field",
        ),
    ] {
        let (got, answer) = post(&d, "/api/v1/models", body.clone()).await;
        assert_eq!(got, status, "{body}: {answer}");
        assert_eq!(answer["error"]["code"], code, "{body}: {answer}");
    }
    assert!(models(&d).await.iter().all(|m| m["source"] != "user"));
    assert_eq!(health(&d).await["status"], "ok");
    // A real file under a default name works after all that.
    let (status, added) = post(
        &d,
        "/api/v1/models",
        json!({"path": real_copy.to_str().unwrap()}),
    )
    .await;
    assert_eq!(status, 201, "{added}");
    assert_eq!(added["name"], "ok");
}

#[tokio::test]
async fn models_switch_per_request_and_per_user_load_once_and_unload_when_idle() {
    let d = Daemon::start(Opts {
        extra: vec!["--max-loaded-models".into(), "1".into()],
        ..tiny()
    })
    .await;
    let counters = |h: &Value| {
        (
            h["models"]["loads"].as_u64().unwrap(),
            h["models"]["unloads"].as_u64().unwrap(),
        )
    };
    assert_eq!(counters(&health(&d).await), (1, 0));

    // Two first requests for a model that is not loaded, at once: one load serves both.
    let (a, b) = (d.new_chat("ada").await, d.new_chat("bob").await);
    let (first, second) = tokio::join!(ask_on(&d, &a, REAL_MODEL), ask_on(&d, &b, REAL_MODEL));
    assert_eq!((first.0, second.0), (200, 200));
    assert_eq!(
        (first.2.clone(), second.2.clone()),
        (json!(REAL_MODEL), json!(REAL_MODEL))
    );
    // One load of SmolLM2; the idle tiny model made room (max_loaded_models = 1).
    assert_eq!(counters(&health(&d).await), (2, 1));
    let h = wait_loaded(&d, "tiny never let go", |l| l.len() == 1).await;
    assert_eq!(h["models"]["loaded"][0]["name"], REAL_MODEL);
    // Health stays ok although the default model is not loaded now.
    assert_eq!(health(&d).await["status"], "ok");

    // Switching back loads the default again.
    let (status, _, model) = ask_on(&d, &a, TINY_MODEL).await;
    assert_eq!((status, model), (200, json!(TINY_MODEL)));
    assert_eq!(counters(&health(&d).await), (3, 2));

    // A user's `model` setting picks the model of requests that do not name one.
    let user = crate::support::user(&d, "ada").await;
    let settings = format!("/api/v1/users/{user}/settings");
    let (status, answer) = d
        .client
        .request(
            Method::PUT,
            &settings,
            Some(&json!({"model": "no-such-model"})),
        )
        .await
        .unwrap();
    assert_eq!(status, 404, "{answer}");
    assert_eq!(answer["error"]["code"], "unknown_model");
    assert!(
        answer["error"]["message"]
            .as_str()
            .unwrap()
            .contains(REAL_MODEL),
        "{answer}"
    );
    let (status, _) = d
        .client
        .request(Method::PUT, &settings, Some(&json!({"model": REAL_MODEL})))
        .await
        .unwrap();
    assert_eq!(status, 200);
    let (_, events) = d
        .ask(
            &a,
            json!({"content": "Hi.", "options": {"max_tokens": 4, "temperature": 0.0}}),
        )
        .await;
    let done = events.iter().find(|e| e.event == "done").expect("done");
    assert_eq!(done.data["model"], REAL_MODEL);

    // An unknown model: 404 naming the known ones.
    let (status, _, code) = ask_on(&d, &a, "no-such-model").await;
    assert_eq!((status, code), (404, json!("unknown_model")));

    // Explicit unload, then a load with a 1 s keep_alive: the reaper unloads it once idle.
    let (status, answer) = post(
        &d,
        &format!("/api/v1/models/{REAL_MODEL}/unload"),
        json!({}),
    )
    .await;
    assert_eq!(
        (status.as_u16(), answer["unloaded"].clone()),
        (200, json!(true)),
        "{answer}"
    );
    wait_loaded(&d, "not unloaded", <[Value]>::is_empty).await;
    let (status, answer) = post(
        &d,
        &format!("/api/v1/models/{TINY_MODEL}/load"),
        json!({"keep_alive": 1}),
    )
    .await;
    assert_eq!(status, 200, "{answer}");
    assert!(answer["model"]["expires_at"].as_u64().is_some(), "{answer}");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        let h = health(&d).await;
        if h["models"]["loaded"].as_array().unwrap().is_empty() {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "not unloaded after its keep_alive: {h}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
    let h = health(&d).await;
    assert_eq!(h["status"], "ok", "{h}");
    assert_eq!(h["models"]["chat"]["state"], "unloaded");
}

#[tokio::test]
async fn a_model_without_a_chat_template_gets_chatml_and_the_log_says_so() {
    let mut d = Daemon::start(tiny()).await;
    let gemma = named(&models(&d).await, BASE_MODEL).clone();
    assert_eq!(gemma["metadata"]["architecture"], "gemma3", "{gemma}");
    assert_eq!(gemma["metadata"]["chat_template"], false, "{gemma}");
    assert_eq!(gemma["metadata"]["template_family"], Value::Null);
    let chat = d.new_chat("ada").await;
    let (status, _, model) = ask_on(&d, &chat, BASE_MODEL).await;
    assert_eq!((status, model), (200, json!(BASE_MODEL)));
    d.terminate();
    let log = d.stderr();
    assert!(
        log.contains("no chat template; using ChatML"),
        "the fallback is not logged: {log}"
    );
}
