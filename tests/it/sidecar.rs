//! Sidecar and service behaviour: the ready line, exit on stdin EOF and on parent death, graceful
//! shutdown during a stream, systemd socket activation, the loopback TCP listener, the Node host
//! example and the unit files.

use std::io::{BufRead, BufReader, Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use http::Method;
use serde_json::{json, Value};

use crate::support::{models_dir, tiny, Daemon, Opts};

/// Spawns `hearth serve --sidecar` for `d`'s dirs with stdin piped; returns the child and its
/// first stdout line.
fn spawn_sidecar(d: &Daemon, extra: &[&str]) -> (Child, Value) {
    let mut cmd = d.command();
    cmd.arg("--sidecar").args(extra).stdin(Stdio::piped());
    let mut child = cmd.spawn().unwrap();
    let line = first_line(&mut child);
    (
        child,
        serde_json::from_str(&line)
            .unwrap_or_else(|e| panic!("ready line is not JSON ({e}): {line:?}")),
    )
}

fn first_line(child: &mut Child) -> String {
    let stdout = child.stdout.take().unwrap();
    let mut reader = BufReader::new(stdout);
    let mut line = String::new();
    reader.read_line(&mut line).unwrap();
    // Anything after the ready line would break the protocol.
    std::thread::spawn(move || {
        let mut rest = String::new();
        let _ = reader.read_to_string(&mut rest);
        assert!(rest.is_empty(), "stdout after the ready line: {rest:?}");
    });
    line
}

fn wait_exit(child: &mut Child, limit: Duration) -> std::process::ExitStatus {
    let start = Instant::now();
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return status;
        }
        assert!(start.elapsed() < limit, "did not exit within {limit:?}");
        std::thread::sleep(Duration::from_millis(10));
    }
}

#[tokio::test]
async fn ready_line_is_json_and_its_socket_answers_then_stdin_eof_exits_0() {
    let d = Daemon::stopped(tiny());
    let (mut child, ready) = spawn_sidecar(&d, &[]);
    assert_eq!(ready["event"], "ready");
    assert_eq!(ready["api"], "/api/v1");
    assert_eq!(ready["pid"], child.id());
    assert_eq!(ready["version"], env!("CARGO_PKG_VERSION"));
    let socket = PathBuf::from(ready["socket"].as_str().unwrap());
    assert_eq!(socket, d.socket);
    let client = hearth::client::Client::new(&socket);
    let (status, _) = client
        .request(Method::GET, "/api/v1/health", None)
        .await
        .unwrap();
    assert!(status == 200 || status == 503, "{status}");
    client.wait_ready(Duration::from_secs(30)).await.unwrap();

    let closed = Instant::now();
    drop(child.stdin.take());
    let status = wait_exit(&mut child, Duration::from_secs(2));
    assert!(status.success(), "{status}");
    assert!(closed.elapsed() < Duration::from_secs(2));
    assert!(!socket.exists(), "socket removed");
}

#[tokio::test]
async fn a_start_failure_is_one_json_error_line_and_a_non_zero_exit() {
    let first = Daemon::start(tiny()).await;
    // Same data dir, different socket: refused, and the line names the running instance.
    let mut cmd = first.command_for(&first.dir.path().join("second.sock"));
    let out = cmd.arg("--sidecar").stdin(Stdio::null()).output().unwrap();
    assert!(!out.status.success());
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(stdout.lines().count(), 1, "{stdout}");
    let line: Value = serde_json::from_str(stdout.trim()).unwrap();
    assert_eq!(line["event"], "error");
    assert_eq!(line["code"], "already_running");
    assert!(
        line["message"]
            .as_str()
            .unwrap()
            .contains(&format!("pid={}", first.pid())),
        "{line}"
    );
}

#[tokio::test]
async fn the_sidecar_exits_when_its_parent_dies() {
    // --parent-pid names a process that is not our parent.
    let d = Daemon::stopped(tiny());
    let mut parent = Command::new("sleep").arg("600").spawn().unwrap();
    let (mut child, _) = spawn_sidecar(&d, &["--parent-pid", &parent.id().to_string()]);
    parent.kill().unwrap();
    parent.wait().unwrap();
    let status = wait_exit(&mut child, Duration::from_secs(2));
    assert!(status.success(), "{status}");

    // The real parent is killed with SIGKILL (no chance to close anything); stdin stays open
    // because we hold the pipe, so only the parent watch can notice.
    let d = Daemon::stopped(tiny());
    let cmd = d.command();
    let program = cmd.get_program().to_owned();
    let args: Vec<_> = cmd
        .get_args()
        .map(|a| a.to_string_lossy().into_owned())
        .collect();
    let script = format!(
        // A background job's stdin would be /dev/null (instant EOF); hand it ours via fd 3.
        "exec 3<&0; {} {} --sidecar <&3 >/dev/null 2>&1 & echo $!; wait",
        shell_quote(&program.to_string_lossy()),
        args.iter()
            .map(|a| shell_quote(a))
            .collect::<Vec<_>>()
            .join(" ")
    );
    let mut shell = Command::new("sh")
        .arg("-c")
        .arg(script)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut line = String::new();
    BufReader::new(shell.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let pid: i32 = line.trim().parse().unwrap();
    let client = hearth::client::Client::new(&d.socket);
    let deadline = Instant::now() + Duration::from_secs(30);
    while client
        .request(Method::GET, "/api/v1/health", None)
        .await
        .is_err()
    {
        assert!(Instant::now() < deadline, "sidecar never came up");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    shell.kill().unwrap();
    shell.wait().unwrap();
    let killed = Instant::now();
    while process_alive(pid) {
        assert!(
            killed.elapsed() < Duration::from_secs(2),
            "sidecar outlived its parent"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    drop(shell.stdin.take());
}

/// Alive and not a zombie (an orphan's zombie may linger where nothing reaps it).
fn process_alive(pid: i32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => !stat
            .rsplit(')')
            .next()
            .unwrap_or("")
            .trim_start()
            .starts_with('Z'),
        Err(_) => false,
    }
}

fn shell_quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', "'\\''"))
}

#[tokio::test]
async fn sigterm_during_a_stream_ends_it_with_shutting_down_and_keeps_acknowledged_data() {
    let mut d = Daemon::start(Opts::default()).await;
    let chat = d.new_chat("shutdown").await;
    let (text, _) = d
        .ask(
            &chat,
            json!({"content": "Say hi.", "options": {"temperature": 0, "max_tokens": 16}}),
        )
        .await;
    let body = json!({"content": "Write a very long story about a dragon.", "options": {"max_tokens": 4000}});
    let mut stream = d
        .client
        .stream(&format!("/api/v1/chats/{chat}/messages"), &body)
        .await
        .unwrap();
    let mut tokens = 0;
    while tokens < 3 {
        if stream.next().await.unwrap().unwrap().event == "token" {
            tokens += 1;
        }
    }
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(d.pid()),
        nix::sys::signal::Signal::SIGTERM,
    )
    .unwrap();
    let terminated = Instant::now();
    let last = loop {
        let event = stream
            .next()
            .await
            .unwrap()
            .expect("stream ended without a terminal event");
        if event.event != "token" {
            break event;
        }
    };
    assert_eq!(last.event, "error", "{:?}", last);
    assert_eq!(last.data["code"], "shutting_down");
    let status = d.wait_stopped();
    assert!(status.success(), "exit status {status}");
    assert!(terminated.elapsed() < Duration::from_secs(10));

    d.restart().await;
    let stored = d
        .client
        .call(Method::GET, &format!("/api/v1/chats/{chat}"), None)
        .await
        .unwrap();
    let messages = stored["messages"].as_array().unwrap();
    assert_eq!(messages.len(), 4, "{stored}");
    assert_eq!(messages[1]["content"], text.as_str());
    assert_eq!(messages[3]["finish_reason"], "cancelled");
}

#[tokio::test]
async fn a_socket_passed_by_systemd_is_served() {
    let d = Daemon::stopped(tiny());
    std::fs::create_dir_all(d.socket.parent().unwrap()).unwrap();
    let cmd = d.command();
    let args: Vec<String> = cmd
        .get_args()
        .map(|a| a.to_string_lossy().into_owned())
        .collect();
    // Python binds the socket, moves it to fd 3 and execs hearth with LISTEN_PID = its own pid,
    // exactly what systemd does.
    let script = r#"
import os, socket, sys
path = sys.argv[1]
s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
s.bind(path); s.listen(16)
if s.fileno() != 3:
    os.dup2(s.fileno(), 3)
os.set_inheritable(3, True)
os.environ["LISTEN_FDS"] = "1"
os.environ["LISTEN_PID"] = str(os.getpid())
os.execv(sys.argv[2], sys.argv[2:])
"#;
    let mut child = Command::new("python3")
        .arg("-c")
        .arg(script)
        .arg(&d.socket)
        .arg(cmd.get_program())
        .args(&args)
        .env("HEARTH_CONFIG", "/nonexistent")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let client = hearth::client::Client::new(&d.socket);
    let health = client.wait_ready(Duration::from_secs(30)).await.unwrap();
    assert_eq!(health["status"], "ok");
    let user = client
        .call(
            Method::POST,
            "/api/v1/users",
            Some(&json!({"username": "activated"})),
        )
        .await
        .unwrap();
    assert!(user["id"].is_string());
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(i32::try_from(child.id()).unwrap()),
        nix::sys::signal::Signal::SIGTERM,
    )
    .unwrap();
    let status = wait_exit(&mut child, Duration::from_secs(10));
    assert!(status.success(), "{status}");
    assert!(
        d.socket.exists(),
        "an activated socket belongs to systemd and is left in place"
    );
}

fn tcp_request(addr: &str, raw: &str) -> (u16, String) {
    let mut stream = std::net::TcpStream::connect(addr).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    stream.write_all(raw.as_bytes()).unwrap();
    let mut out = String::new();
    let _ = stream.read_to_string(&mut out);
    let status = out
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    (status, out)
}

#[tokio::test]
async fn tcp_listener_needs_token_loopback_host_and_allowed_origin() {
    let port = {
        let probe = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        probe.local_addr().unwrap().port()
    };
    let addr = format!("127.0.0.1:{port}");
    let d = Daemon::stopped(tiny());
    let (mut child, ready) =
        spawn_sidecar(&d, &["--tcp", &addr, "--allowed-origins", "app://hearth"]);
    assert_eq!(ready["tcp"], addr.as_str());
    let token_file = PathBuf::from(ready["token_file"].as_str().unwrap());
    use std::os::unix::fs::MetadataExt;
    assert_eq!(
        std::fs::metadata(&token_file).unwrap().mode() & 0o777,
        0o600
    );
    let token = std::fs::read_to_string(&token_file).unwrap();
    let get = |headers: &str| {
        tcp_request(&addr, &format!("GET /api/v1/users/01890a5d-ac96-774b-bcce-b302099a8057 HTTP/1.1\r\n{headers}Connection: close\r\n\r\n"))
    };
    let host = format!("Host: 127.0.0.1:{port}\r\n");
    let auth = format!("Authorization: Bearer {}\r\n", token.trim());
    assert_eq!(get(&host).0, 401, "no token");
    assert_eq!(
        get(&format!("{host}Authorization: Bearer wrong\r\n")).0,
        401,
        "wrong token"
    );
    assert_eq!(
        get(&format!("Host: evil.example:{port}\r\n{auth}")).0,
        403,
        "rebinding Host"
    );
    assert_eq!(
        get(&format!("{host}{auth}Origin: https://evil.example\r\n")).0,
        403,
        "foreign Origin"
    );
    let (status, text) = get(&format!("{host}{auth}"));
    assert_eq!(
        status, 404,
        "authorised: reaches the API (unknown user): {text}"
    );
    assert!(text.contains("user_not_found"));
    let (status, text) = tcp_request(
        &addr,
        &format!("GET /api/v1/health HTTP/1.1\r\n{host}{auth}Origin: app://hearth\r\nConnection: close\r\n\r\n"),
    );
    assert!(status == 200 || status == 503, "{text}");
    assert!(
        text.to_ascii_lowercase()
            .contains("access-control-allow-origin: app://hearth"),
        "{text}"
    );
    let (status, text) = tcp_request(
        &addr,
        &format!("OPTIONS /api/v1/users HTTP/1.1\r\n{host}Origin: app://hearth\r\nAccess-Control-Request-Method: POST\r\nConnection: close\r\n\r\n"),
    );
    assert_eq!(status, 204, "{text}");
    drop(child.stdin.take());
    assert!(wait_exit(&mut child, Duration::from_secs(5)).success());

    // A non-loopback address is refused before anything binds.
    let out = d.command().args(["--tcp", "0.0.0.0:0"]).output().unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("not a loopback address"));
}

#[test]
fn the_node_host_example_streams_a_full_reply_from_the_real_model() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let data = tempfile::tempdir().unwrap();
    let out = Command::new("node")
        .arg(root.join("packaging/electron/example.js"))
        .env("HEARTH_BIN", env!("CARGO_BIN_EXE_hearth"))
        .env("HEARTH_MODELS_DIR", models_dir())
        .env("HEARTH_DATA_DIR", data.path())
        .env("HEARTH_CONFIG", "/nonexistent")
        .env("HEARTH_THREADS", "1")
        .output()
        .expect("node is needed for the Electron host example");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "stdout: {stdout}\nstderr: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("Paris"), "{stdout}");
    let done = stdout
        .lines()
        .find_map(|l| l.strip_prefix("DONE "))
        .expect("a DONE line");
    let done: Value = serde_json::from_str(done).unwrap();
    assert_eq!(done["finish_reason"], "stop");
    // The module sends `search_mode` as the message's field (inside `options` it was a 422),
    // and the app sees the `sources` event.
    let events = stdout
        .lines()
        .find_map(|l| l.strip_prefix("EVENTS "))
        .expect("an EVENTS line");
    assert_eq!(events, "start,sources,token,done", "{stdout}");
    let sources: Value = serde_json::from_str(
        stdout
            .lines()
            .find_map(|l| l.strip_prefix("SOURCES "))
            .expect("a SOURCES line"),
    )
    .unwrap();
    assert_eq!(sources, json!({"sources": [], "reason": "no_documents"}));
    let node_tests = Command::new("node")
        .arg("--test")
        .arg(root.join("packaging/electron/test/"))
        .output()
        .unwrap();
    assert!(
        node_tests.status.success(),
        "{}",
        String::from_utf8_lossy(&node_tests.stdout)
    );
}

#[test]
fn unit_files_pass_systemd_analyze_verify_when_available() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("packaging/systemd");
    let service = std::fs::read_to_string(root.join("hearth.service")).unwrap();
    let socket = std::fs::read_to_string(root.join("hearth.socket")).unwrap();
    assert!(service.contains("ExecStart=") && service.contains("hearth serve"));
    assert!(socket.contains("ListenStream=") && socket.contains("SocketMode=0600"));
    let Ok(out) = Command::new("systemd-analyze").arg("--version").output() else {
        eprintln!("skipped: systemd-analyze is not installed");
        return;
    };
    assert!(out.status.success());
    // verify needs the ExecStart binary to exist: point a copy of the unit at ours.
    let dir = tempfile::tempdir().unwrap();
    let bin = env!("CARGO_BIN_EXE_hearth");
    std::fs::write(
        dir.path().join("hearth.service"),
        service.replace("%h/.local/bin/hearth", bin),
    )
    .unwrap();
    std::fs::write(dir.path().join("hearth.socket"), socket).unwrap();
    // `--user` needs a runtime dir even to verify.
    let runtime = tempfile::tempdir().unwrap();
    let out = Command::new("systemd-analyze")
        .env("XDG_RUNTIME_DIR", runtime.path())
        .args(["--user", "verify"])
        .arg(dir.path().join("hearth.socket"))
        .arg(dir.path().join("hearth.service"))
        .output()
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let problems: Vec<&str> = text.lines().filter(|l| l.contains("hearth.s")).collect();
    assert!(out.status.success() && problems.is_empty(), "{text}");
}
