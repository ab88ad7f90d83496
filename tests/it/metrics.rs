//! `GET /metrics`: parsed by the official Prometheus client's text parser (Python
//! `prometheus_client`), over the socket and over the token-guarded TCP listener, after real
//! work (two chat turns on the real model, an embedding, a bad request).

use std::io::{Read, Write};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use serde_json::{json, Value};

use crate::support::{models_dir, raw, request, Daemon, Opts};

/// The exposition parsed by `tests/metrics_parse.py`: family → {type, samples}.
fn parse(text: &str) -> Value {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/metrics_parse.py");
    let mut child = Command::new("python3")
        .arg(script)
        .arg(models_dir())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("python3");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "the Prometheus parser rejected the exposition: {}\n{text}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

/// The value of `sample` in `family` whose labels include `labels`.
fn value(m: &Value, family: &str, sample: &str, labels: &[(&str, &str)]) -> Option<f64> {
    m[family]["samples"].as_array()?.iter().find_map(|s| {
        let matches = s[0] == sample && labels.iter().all(|(k, v)| s[1][*k].as_str() == Some(*v));
        matches.then(|| s[2].as_f64()).flatten()
    })
}

fn scrape(d: &Daemon) -> (u16, String) {
    raw(&d.socket, &request("GET", "/metrics", None, b""))
}

#[tokio::test]
async fn metrics_parse_with_the_prometheus_parser_and_count_real_work() {
    let (d, addr, token) = crate::support::with_tcp(Opts::default()).await;
    // A fresh daemon: every family is there, with nothing counted yet.
    let (status, text) = scrape(&d);
    assert_eq!(status, 200, "{text}");
    let m = parse(&text);
    assert_eq!(m["hearth_time_to_first_token_seconds"]["type"], "histogram");
    assert_eq!(
        value(
            &m,
            "hearth_time_to_first_token_seconds",
            "hearth_time_to_first_token_seconds_count",
            &[]
        ),
        Some(0.0)
    );

    // Two turns of one chat (the second reuses the first's KV cache), an embedding, a 404.
    let chat = d.new_chat("metrics").await;
    for question in ["What is the capital of France?", "And of Italy?"] {
        let (text, _) = d
            .ask(
                &chat,
                json!({"content": question, "options": {"temperature": 0, "max_tokens": 12}}),
            )
            .await;
        assert!(!text.is_empty());
    }
    d.client
        .call(
            http::Method::POST,
            "/api/v1/embeddings",
            Some(&json!({"input": ["one", "two", "three"]})),
        )
        .await
        .unwrap();
    let (status, _) = raw(&d.socket, &request("GET", "/api/v1/nowhere", None, b""));
    assert_eq!(status, 404);

    let (_, text) = scrape(&d);
    let m = parse(&text);
    let count = |family: &str, sample: &str, labels: &[(&str, &str)]| {
        value(&m, family, sample, labels)
            .unwrap_or_else(|| panic!("no {sample} {labels:?}: {text}"))
    };
    // Requests by route pattern and status; an unknown path is "other", never its raw path.
    let messages = &[("route", "/api/v1/chats/{id}/messages"), ("status", "200")];
    assert_eq!(
        count(
            "hearth_http_requests",
            "hearth_http_requests_total",
            messages
        ),
        2.0
    );
    let other = &[("route", "other"), ("status", "404")];
    assert_eq!(
        count("hearth_http_requests", "hearth_http_requests_total", other),
        1.0
    );
    assert!(!text.contains("nowhere"), "a raw path leaked into a label");
    // Tokens: both turns evaluated their new tokens; the second reused the first's.
    assert!(
        count(
            "hearth_generated_tokens",
            "hearth_generated_tokens_total",
            &[]
        ) >= 2.0
    );
    let evaluated = count(
        "hearth_prompt_tokens_evaluated",
        "hearth_prompt_tokens_evaluated_total",
        &[],
    );
    let reused = count(
        "hearth_prompt_tokens_reused",
        "hearth_prompt_tokens_reused_total",
        &[],
    );
    assert!(evaluated > 0.0 && reused > 0.0, "{evaluated} {reused}");
    let ratio = count(
        "hearth_prompt_cache_hit_ratio",
        "hearth_prompt_cache_hit_ratio",
        &[],
    );
    assert!(
        (ratio - reused / (reused + evaluated)).abs() < 1e-9,
        "{ratio}"
    );
    // Histograms: one time to first token per turn, one latency per decode step.
    let ttft = "hearth_time_to_first_token_seconds";
    assert_eq!(count(ttft, &format!("{ttft}_count"), &[]), 2.0);
    assert_eq!(
        count(ttft, &format!("{ttft}_bucket"), &[("le", "+Inf")]),
        2.0
    );
    assert!(count(ttft, &format!("{ttft}_sum"), &[]) > 0.0);
    let steps = count(
        "hearth_token_latency_seconds",
        "hearth_token_latency_seconds_count",
        &[],
    );
    assert!(steps >= 1.0, "{steps}");
    assert_eq!(
        count(
            "hearth_generations",
            "hearth_generations_total",
            &[("finish", "error")]
        ),
        0.0
    );
    // The embedding (and the title job's, if it ran: it embeds nothing) — three texts.
    assert!(count("hearth_embeddings", "hearth_embeddings_total", &[]) >= 3.0);
    assert!(
        count(
            "hearth_embedding_batch_size",
            "hearth_embedding_batch_size_count",
            &[]
        ) >= 1.0
    );
    // Current state.
    assert_eq!(
        count(
            "hearth_model_loaded",
            "hearth_model_loaded",
            &[("model", "smollm2-135m-instruct-q4_1"), ("state", "ready")]
        ),
        1.0
    );
    assert!(
        count(
            "process_resident_memory_bytes",
            "process_resident_memory_bytes",
            &[]
        ) > 50e6
    );
    assert_eq!(
        count(
            "hearth_library_files",
            "hearth_library_files",
            &[("state", "indexed")]
        ),
        0.0
    );
    assert_eq!(
        count("hearth_streams_active", "hearth_streams_active", &[]),
        0.0
    );

    // Over TCP: with the token as any other route; without it, refused.
    let tcp = |auth: Option<&str>| {
        let mut stream = std::net::TcpStream::connect(&addr).unwrap();
        stream
            .set_read_timeout(Some(Duration::from_secs(10)))
            .unwrap();
        let auth = auth
            .map(|t| format!("Authorization: Bearer {t}\r\n"))
            .unwrap_or_default();
        write!(
            stream,
            "GET /metrics HTTP/1.1\r\nHost: {addr}\r\n{auth}Connection: close\r\n\r\n"
        )
        .unwrap();
        let mut answer = String::new();
        let _ = stream.read_to_string(&mut answer);
        answer
    };
    let answer = tcp(Some(&token));
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    assert!(
        answer
            .to_ascii_lowercase()
            .contains("content-type: text/plain; version=0.0.4"),
        "{answer}"
    );
    parse(answer.split_once("\r\n\r\n").unwrap().1);
    assert!(tcp(None).starts_with("HTTP/1.1 401"));
    let (status, _) = raw(&d.socket, &request("POST", "/metrics", None, b""));
    assert_eq!(status, 405);
}
