//! The OpenAI-compatible surface (`/v1`) driven by the official `openai` Python package over the
//! Unix socket and over loopback TCP with the token as `api_key`, and by the official npm
//! package from Node over TCP, against the real SmolLM2 model; plus what the SDKs do not show
//! (raw SSE framing, cancel on disconnect).

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use http::Method;
use serde_json::{json, Value};

use crate::support::{Daemon, Opts, REAL_MODEL};

/// The `openai` package and its dependencies, installed by `scripts/test`.
fn sdk_path() -> PathBuf {
    let dir = crate::support::models_dir().join(".cache/pyopenai");
    assert!(
        dir.join("openai").is_dir(),
        "{} is missing: run ./scripts/test (it installs the openai package there)",
        dir.display()
    );
    dir
}

fn run_sdk(args: &[&str]) -> Value {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/openai_sdk.py");
    let out = Command::new("python3")
        .arg(script)
        .args(args)
        .env("PYTHONPATH", sdk_path())
        .output()
        .expect("python3");
    assert!(
        out.status.success(),
        "openai_sdk.py {args:?} failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    serde_json::from_str(stdout.lines().last().unwrap_or_default())
        .unwrap_or_else(|err| panic!("not JSON ({err}): {stdout}"))
}

#[tokio::test]
async fn the_official_openai_packages_work_over_the_socket_and_over_tcp() {
    let (d, addr, token) = crate::support::with_tcp(Opts::default()).await;
    let socket = d.socket.to_str().unwrap().to_string();
    let over_socket = run_sdk(&["uds", &socket, REAL_MODEL]);
    // The SDK's embedding is the one /api/v1 gives for the same text (cosine 1).
    let ours = d
        .client
        .call(
            Method::POST,
            "/api/v1/embeddings",
            Some(&json!({"input": "hello world"})),
        )
        .await
        .unwrap();
    let a: Vec<f64> = serde_json::from_value(over_socket["embedding"].clone()).unwrap();
    let b: Vec<f64> = serde_json::from_value(ours["data"][0]["embedding"].clone()).unwrap();
    let dot: f64 = a.iter().zip(&b).map(|(x, y)| x * y).sum();
    let norm = |v: &[f64]| v.iter().map(|x| x * x).sum::<f64>().sqrt();
    let cosine = dot / (norm(&a) * norm(&b));
    assert!((cosine - 1.0).abs() < 1e-6, "cosine {cosine}");

    run_sdk(&["tcp", &addr, &token, REAL_MODEL]);
    // The official npm package from Node, as an Electron app would use it.
    let npm = crate::support::models_dir().join(".cache/npmopenai");
    assert!(
        npm.join("node_modules/openai").is_dir(),
        "{} is missing: run ./scripts/test",
        npm.display()
    );
    let out = Command::new("node")
        .arg(Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/openai_node.mjs"))
        .args([addr.as_str(), token.as_str(), REAL_MODEL])
        .env("OPENAI_NPM_DIR", &npm)
        .output()
        .expect("node");
    assert!(
        out.status.success(),
        "openai_node.mjs failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let node: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(node["text"].as_str().unwrap().contains("Paris"), "{node}");
    assert_eq!(node["dims"], 384);
    // Without the token, TCP refuses in OpenAI's shape.
    let mut stream = std::net::TcpStream::connect(&addr).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    write!(
        stream,
        "GET /v1/models HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut answer = String::new();
    let _ = stream.read_to_string(&mut answer);
    assert!(answer.starts_with("HTTP/1.1 401"), "{answer}");
    let body: Value = serde_json::from_str(answer.split("\r\n\r\n").nth(1).unwrap()).unwrap();
    assert_eq!(body["error"]["type"], "authentication_error", "{body}");
}

#[tokio::test]
async fn streams_are_data_only_frames_and_a_disconnect_cancels_the_generation() {
    let d = Daemon::start(crate::support::tiny()).await;
    // Raw framing: every frame is `data: …`, the last `data: [DONE]`.
    let request = crate::support::request(
        "POST",
        "/v1/chat/completions",
        Some("application/json"),
        json!({"messages": [{"role": "user", "content": "hi"}], "stream": true, "max_tokens": 8, "seed": 1})
            .to_string()
            .as_bytes(),
    );
    let (status, body) = crate::support::raw(&d.socket, &request);
    assert_eq!(status, 200, "{body}");
    // (The body is chunked: chunk sizes stand between the frames.)
    let frames: Vec<&str> = body.lines().filter(|l| l.starts_with("data:")).collect();
    assert!(frames.len() >= 3, "{body}");
    assert_eq!(*frames.last().unwrap(), "data: [DONE]");
    let first: Value = serde_json::from_str(&frames[0]["data: ".len()..]).unwrap();
    assert_eq!(first["object"], "chat.completion.chunk", "{first}");
    assert_eq!(first["choices"][0]["delta"]["role"], "assistant", "{first}");
    assert!(
        !body
            .lines()
            .any(|l| l.starts_with("event:") || l.starts_with("id:")),
        "{body}"
    );

    // A client that goes away mid-stream cancels its generation: the model's lease (held until
    // the generation ends) is released long before 2000 tokens of counting could be written.
    let real = Daemon::start(Opts::default()).await;
    let mut socket = std::os::unix::net::UnixStream::connect(&real.socket).unwrap();
    socket
        .write_all(&crate::support::request(
            "POST",
            "/v1/chat/completions",
            Some("application/json"),
            json!({
                "messages": [{"role": "user", "content": "Count from 1 to 1000, one number per line."}],
                "stream": true, "max_tokens": 2000, "temperature": 0
            })
            .to_string()
            .as_bytes(),
        ))
        .unwrap();
    socket
        .set_read_timeout(Some(Duration::from_secs(30)))
        .unwrap();
    let mut seen = String::new();
    let mut buf = [0u8; 4096];
    while seen.matches("\"content\"").count() < 4 {
        let n = socket.read(&mut buf).unwrap();
        assert!(n > 0, "stream ended early: {seen}");
        seen.push_str(&String::from_utf8_lossy(&buf[..n]));
    }
    let active = |h: &Value| h["models"]["loaded"][0]["active"].as_u64().unwrap_or(0);
    let h = real
        .client
        .call(Method::GET, "/api/v1/health", None)
        .await
        .unwrap();
    assert_eq!(active(&h), 1, "{h}");
    drop(socket);
    let deadline = std::time::Instant::now() + Duration::from_secs(15);
    loop {
        let h = real
            .client
            .call(Method::GET, "/api/v1/health", None)
            .await
            .unwrap();
        if active(&h) == 0 {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "generation not cancelled: {h}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let r = real
        .client
        .call(
            Method::POST,
            "/v1/chat/completions",
            Some(&json!({"messages": [{"role": "user", "content": "hi"}], "max_tokens": 4})),
        )
        .await
        .unwrap();
    assert_eq!(r["object"], "chat.completion", "{r}");
}

#[tokio::test]
async fn structured_output_always_parses_and_validates_against_its_schema() {
    // The random-weight model produces valid JSON only when the grammar holds.
    let d = Daemon::start(crate::support::tiny()).await;
    let schema = json!({
        "type": "object",
        "properties": {
            "name": {"type": "string", "maxLength": 12},
            "age": {"type": "integer"},
            "tags": {"type": "array", "items": {"enum": ["a", "b", "c"]}, "maxItems": 3},
            "ok": {"type": ["boolean", "null"]},
            "score": {"anyOf": [{"type": "number"}, {"const": "n/a"}]},
            "note": {"type": "string", "maxLength": 8}
        },
        "required": ["name", "age", "tags", "ok", "score"],
        "additionalProperties": false
    });
    let validator = jsonschema::validator_for(&schema).unwrap();
    // The random model also spells invalid UTF-8 with byte tokens; llama.cpp's grammar decodes
    // such a sequence as one code point while the text holds a U+FFFD per bad byte, so string
    // lengths of those outputs are checked without `maxLength` (real models spell valid UTF-8).
    let mut relaxed_schema = schema.clone();
    for field in ["name", "note"] {
        relaxed_schema["properties"][field]
            .as_object_mut()
            .unwrap()
            .remove("maxLength");
    }
    let relaxed = jsonschema::validator_for(&relaxed_schema).unwrap();
    let mut with_note = 0;
    for seed in 0..24 {
        let r = d
            .client
            .call(
                Method::POST,
                "/v1/chat/completions",
                Some(&json!({
                    "messages": [{"role": "user", "content": "Describe a person."}],
                    "response_format": {"type": "json_schema", "json_schema": {"name": "person", "schema": schema, "strict": true}},
                    "seed": seed, "temperature": 1.0, "max_tokens": 600
                })),
            )
            .await
            .unwrap();
        let choice = &r["choices"][0];
        assert_eq!(choice["finish_reason"], "stop", "{r}");
        let content = choice["message"]["content"].as_str().unwrap();
        let value: Value = serde_json::from_str(content)
            .unwrap_or_else(|err| panic!("seed {seed}: not JSON ({err}): {content}"));
        let check = if content.contains('\u{FFFD}') {
            &relaxed
        } else {
            &validator
        };
        assert!(check.is_valid(&value), "seed {seed}: invalid: {content}");
        with_note += usize::from(value.get("note").is_some());
    }
    // The optional property is really optional: some outputs have it, some do not (fixed seeds).
    assert!(
        (1..24).contains(&with_note),
        "{with_note} of 24 had the optional property"
    );

    // Any JSON object.
    let r = d
        .client
        .call(
            Method::POST,
            "/v1/chat/completions",
            Some(&json!({
                "messages": [{"role": "user", "content": "JSON please."}],
                "response_format": {"type": "json_object"}, "seed": 3, "max_tokens": 600
            })),
        )
        .await
        .unwrap();
    let content = r["choices"][0]["message"]["content"].as_str().unwrap();
    if r["choices"][0]["finish_reason"] == "stop" {
        let value: Value = serde_json::from_str(content).unwrap();
        assert!(value.is_object(), "{content}");
    }

    // A keyword the grammar cannot enforce is refused by name.
    let (status, err) = d
        .client
        .request(
            Method::POST,
            "/v1/chat/completions",
            Some(&json!({
                "messages": [{"role": "user", "content": "x"}],
                "response_format": {"type": "json_schema", "json_schema": {"name": "n", "schema":
                    {"type": "object", "properties": {"n": {"type": "integer", "minimum": 1}}}}}
            })),
        )
        .await
        .unwrap();
    assert_eq!(status, 400, "{err}");
    assert_eq!(
        err["error"]["param"], "response_format.json_schema.schema.properties.n",
        "{err}"
    );
    assert!(
        err["error"]["message"]
            .as_str()
            .unwrap()
            .contains("'minimum'"),
        "{err}"
    );
}
