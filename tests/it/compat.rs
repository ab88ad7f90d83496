//! The compat listener (`--compat electronaichat`): a full ElectronAIChat client session replayed
//! from Node against the real SmolLM2 model and embedder (`tests/compat_replay.mjs`, once as the
//! dev renderer with `Origin: http://localhost:5173`, once as the packaged app with
//! `Origin: null`), and what guards the tokenless listener: foreign Origin, evil Host, another
//! uid, a non-loopback address.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use serde_json::Value;

use crate::support::{Daemon, Opts};

fn free_port() -> u16 {
    let probe = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    probe.local_addr().unwrap().port()
}

async fn compat_daemon() -> (Daemon, u16) {
    let port = free_port();
    let d = Daemon::start(Opts {
        extra: vec![
            "--compat".into(),
            "electronaichat".into(),
            "--compat-listen".into(),
            format!("127.0.0.1:{port}"),
        ],
        ..Opts::default()
    })
    .await;
    (d, port)
}

fn replay(port: u16, origin: &str) -> Value {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/compat_replay.mjs");
    let out = Command::new("node")
        .arg(script)
        .arg(format!("http://127.0.0.1:{port}"))
        .arg(origin)
        .output()
        .expect("node");
    assert!(
        out.status.success(),
        "compat_replay.mjs {origin} failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    serde_json::from_str(stdout.lines().last().unwrap_or_default())
        .unwrap_or_else(|err| panic!("not JSON ({err}): {stdout}"))
}

#[tokio::test]
async fn the_unchanged_electronaichat_client_runs_a_whole_session() {
    let (d, port) = compat_daemon().await;
    for origin in ["http://localhost:5173", "null"] {
        let seen = replay(port, origin);
        eprintln!("compat replay ({origin}): {seen}");
        assert!(seen["first_answer"]
            .as_str()
            .unwrap()
            .to_lowercase()
            .contains("paris"));
        assert_eq!(seen["sources"][0]["filename"], "zebulon-notes.txt");
        let stages = seen["upload_stages"].as_array().unwrap();
        assert_eq!(stages.first().unwrap(), "uploading");
        assert_eq!(stages.last().unwrap(), "ready");
        assert!(stages.iter().any(|s| s == "chunking_complete"));
    }
    // The session's records were reset by the app's "Reset application"; hearth's own API sees
    // the same store.
    let health = d.client.wait_ready(Duration::from_secs(5)).await.unwrap();
    assert_eq!(health["store"]["users"], 0);
    assert_eq!(health["store"]["chats"], 0);
}

/// One raw HTTP/1.1 exchange on the compat port; `None` when the server closed without a
/// response (a refused peer).
fn exchange(port: u16, request: &str) -> Option<(u16, String)> {
    let mut stream = TcpStream::connect(("127.0.0.1", port)).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(20)))
        .unwrap();
    let _ = stream.write_all(request.as_bytes());
    let mut response = Vec::new();
    let _ = stream.read_to_end(&mut response);
    let text = String::from_utf8_lossy(&response).into_owned();
    let status = text.split_whitespace().nth(1)?.parse().ok()?;
    Some((status, text))
}

#[tokio::test]
async fn the_tokenless_listener_refuses_foreign_origins_hosts_and_users() {
    let (_d, port) = compat_daemon().await;
    let get = |host: &str, origin: Option<&str>| {
        let origin = origin
            .map(|o| format!("Origin: {o}\r\n"))
            .unwrap_or_default();
        format!("GET /api/status HTTP/1.1\r\nHost: {host}\r\n{origin}Connection: close\r\n\r\n")
    };
    let host = format!("127.0.0.1:{port}");
    let (status, text) = exchange(port, &get(&host, None)).unwrap();
    assert_eq!(status, 200, "{text}");
    assert!(!text.to_lowercase().contains("access-control-allow-origin"));

    // A web page on another origin (CSRF) and a rebound DNS name get 403 in the original's shape.
    let (status, text) = exchange(port, &get(&host, Some("https://evil.example"))).unwrap();
    assert_eq!(status, 403, "{text}");
    assert!(text.contains("\"detail\""), "{text}");
    let (status, _) = exchange(port, &get(&format!("evil.example:{port}"), None)).unwrap();
    assert_eq!(status, 403);
    let (status, _) = exchange(port, &get(&format!("localhost:{port}"), None)).unwrap();
    assert_eq!(status, 200);

    // A foreign origin's reset (a "simple" request: no preflight) is refused, not performed.
    let reset = format!(
        "POST /api/admin/reset HTTP/1.1\r\nHost: {host}\r\nOrigin: https://evil.example\r\n\
         Content-Type: text/plain\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
    );
    assert_eq!(exchange(port, &reset).unwrap().0, 403);

    // Method-only preflights (DELETE, PUT with a query string) from the dev origin, and from
    // the packaged app's null origin.
    for (origin, method) in [("http://localhost:5173", "DELETE"), ("null", "PUT")] {
        let preflight = format!(
            "OPTIONS /api/chats/x HTTP/1.1\r\nHost: {host}\r\nOrigin: {origin}\r\n\
             Access-Control-Request-Method: {method}\r\nConnection: close\r\n\r\n"
        );
        let (status, text) = exchange(port, &preflight).unwrap();
        let lower = text.to_lowercase();
        assert_eq!(status, 200, "{text}");
        assert!(
            lower.contains(&format!("access-control-allow-origin: {origin}")),
            "{text}"
        );
        assert!(lower.contains(method.to_lowercase().as_str()), "{text}");
    }
    let preflight = format!(
        "OPTIONS /api/chats/x HTTP/1.1\r\nHost: {host}\r\nOrigin: https://evil.example\r\n\
         Access-Control-Request-Method: DELETE\r\nConnection: close\r\n\r\n"
    );
    assert_eq!(exchange(port, &preflight).unwrap().0, 403);

    // Another uid on this machine is refused at accept, as on the Unix socket. The test runs as
    // root in CI (it can switch uid); elsewhere this part cannot run.
    if nix::unistd::geteuid().is_root() {
        // bash's /dev/tcp: a client any uid can run (no interpreter under root's home).
        let script = format!(
            "exec 3<>/dev/tcp/127.0.0.1/{port} && \
             printf 'GET /api/status HTTP/1.1\\r\\nHost: {host}\\r\\nConnection: close\\r\\n\\r\\n' >&3 && \
             cat <&3"
        );
        let out = Command::new("setpriv")
            .args([
                "--reuid=65534",
                "--regid=65534",
                "--clear-groups",
                "/bin/bash",
                "-c",
            ])
            .arg(&script)
            .output()
            .expect("setpriv");
        let stdout = String::from_utf8_lossy(&out.stdout);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            stdout.is_empty() && !stderr.contains("ermission denied"),
            "another uid got an answer (or could not try): {stdout} {stderr}"
        );
        // The same client as our own uid is answered: the refusal is about the uid.
        let out = Command::new("/bin/bash")
            .arg("-c")
            .arg(&script)
            .output()
            .unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(stdout.starts_with("HTTP/1.1 200"), "{stdout}");
    } else {
        eprintln!("not root: the other-uid refusal is not tested here");
    }
}

#[tokio::test]
async fn a_non_loopback_compat_address_is_a_start_error() {
    let d = Daemon::stopped(Opts {
        extra: vec![
            "--compat".into(),
            "electronaichat".into(),
            "--compat-listen".into(),
            "0.0.0.0:18000".into(),
        ],
        ..Opts::default()
    });
    let out = d.command().output().unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("loopback"), "{stderr}");
}

fn post_json(port: u16, path: &str, body: &str) -> (u16, String) {
    let request = format!(
        "POST {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nContent-Type: application/json\r\n\
         Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    let (status, text) = exchange(port, &request).unwrap();
    let body = text
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    (status, body)
}

#[tokio::test]
async fn a_client_that_goes_away_cancels_its_reply() {
    let (_d, port) = compat_daemon().await;
    let (_, user) = post_json(port, "/api/users/create", r#"{"username":"leaver"}"#);
    let user: Value = serde_json::from_str(&user).unwrap();
    let uid = user["id"].as_str().unwrap();
    let (_, chat) = post_json(
        port,
        "/api/chats/create",
        &format!(r#"{{"user_id":"{uid}","title":"New Chat"}}"#),
    );
    let chat: Value = serde_json::from_str(&chat).unwrap();
    let cid = chat["id"].as_str().unwrap();
    let body = format!(
        r#"{{"chatId":"{cid}","userId":"{uid}","message":"Write a very long story about a dragon.","searchMode":"normal","useMemory":false}}"#
    );
    // Read the first token, then hang up (a window reload).
    let mut stream = TcpStream::connect(("127.0.0.1", port)).unwrap();
    write!(
        stream,
        "POST /api/chat/stream HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nContent-Type: application/json\r\n\
         Content-Length: {}\r\n\r\n{body}",
        body.len()
    )
    .unwrap();
    let mut seen = Vec::new();
    let mut buf = [0u8; 4096];
    while !String::from_utf8_lossy(&seen).contains("\"done\":false") {
        let n = stream.read(&mut buf).unwrap();
        assert!(n > 0, "stream ended before a token");
        seen.extend_from_slice(&buf[..n]);
    }
    drop(stream);
    // The reply (a long story, up to the default 1024 tokens: many seconds) stops: the chat
    // takes the next message within moments instead of answering 409 until it is done.
    let deadline = std::time::Instant::now() + Duration::from_secs(3);
    loop {
        let short = format!(
            r#"{{"chatId":"{cid}","userId":"{uid}","message":"Hi","searchMode":"normal","useMemory":false}}"#
        );
        let (status, text) = post_json(port, "/api/chat/stream", &short);
        if status == 200 {
            assert!(text.contains("\"done\":true"), "{text}");
            break;
        }
        assert_eq!(status, 409, "{text}");
        assert!(
            std::time::Instant::now() < deadline,
            "the first reply was not cancelled"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
