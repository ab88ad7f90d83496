//! The model list (`GET /api/v1/models`, `hearth models`) against real model files: states,
//! GGUF metadata read only from verified files, and files that are missing or changed.

use http::Method;
use serde_json::Value;

use crate::support::{models_dir, tiny, Daemon, Opts, REAL_MODEL, TINY_MODEL};

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
}
