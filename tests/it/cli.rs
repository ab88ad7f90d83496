//! The command line against real daemons: `start`/`stop`, `chat --wait` on a daemon that starts
//! later, the interactive session in a real pseudo-terminal, and every management command with
//! its `--json` output parsed and its errors' exit codes.

use std::io::Write;
use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use http::Method;
use serde_json::Value;

use crate::support::{models_dir, Daemon, Opts, REAL_MODEL, TINY_MODEL};

/// `hearth ARGS` as a client of `d` (socket and data dir from the environment, no config file).
fn hearth(d: &Daemon, args: &[&str]) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_hearth"));
    cmd.args(args)
        .env("HEARTH_SOCKET", &d.socket)
        .env("HEARTH_DATA_DIR", d.data_dir())
        .env("HEARTH_CONFIG", d.dir.path().join("none.toml"))
        .env("USER", "cli-tester")
        .env_remove("HEARTH_LOG")
        .stdin(Stdio::null());
    cmd
}

fn run(d: &Daemon, args: &[&str]) -> Output {
    hearth(d, args).output().unwrap()
}

fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// Runs a command that must succeed and prints JSON; returns it parsed.
fn json(d: &Daemon, args: &[&str]) -> Value {
    let out = run(d, args);
    assert!(
        out.status.success(),
        "hearth {args:?}: {}\n{}",
        out.status,
        stderr(&out)
    );
    serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|err| panic!("hearth {args:?}: not JSON ({err}): {}", stdout(&out)))
}

/// The `hearth serve` flags of a daemon, for `hearth start`.
fn serve_flags(d: &Daemon, model: &str) -> Vec<String> {
    vec![
        "--models-dir".into(),
        models_dir().display().to_string(),
        "--model".into(),
        model.into(),
        "--threads".into(),
        "1".into(),
        "--ctx".into(),
        "2048".into(),
        "--data-dir".into(),
        d.data_dir().display().to_string(),
        "--socket".into(),
        d.socket.display().to_string(),
    ]
}

/// Kills a detached daemon left behind by a failing test (its pid is in the lock file).
struct DetachedGuard(std::path::PathBuf);

impl Drop for DetachedGuard {
    fn drop(&mut self) {
        let Ok(text) = std::fs::read_to_string(self.0.join("hearth.lock")) else {
            return;
        };
        if let Some(pid) = text
            .split_whitespace()
            .find_map(|f| f.strip_prefix("pid="))
            .and_then(|p| p.parse::<i32>().ok())
        {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid),
                nix::sys::signal::Signal::SIGKILL,
            );
        }
    }
}

fn pid_alive(pid: i32) -> bool {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return false;
    };
    !stat
        .rsplit_once(')')
        .is_some_and(|(_, rest)| rest.trim_start().starts_with('Z'))
}

#[tokio::test]
async fn start_runs_a_detached_daemon_and_stop_ends_it_gracefully() {
    let d = Daemon::stopped(Opts::default());
    let _guard = DetachedGuard(d.data_dir());
    let flags = serve_flags(&d, TINY_MODEL);
    let mut args = vec!["start"];
    args.extend(flags.iter().map(String::as_str));

    let out = run(&d, &args);
    assert!(out.status.success(), "{}", stderr(&out));
    let text = stdout(&out);
    assert!(text.starts_with("hearth started (pid "), "{text}");
    let pid: i32 = text["hearth started (pid ".len()..]
        .split(')')
        .next()
        .unwrap()
        .parse()
        .unwrap();
    // Its own session: the terminal's Ctrl-C and hang-up never reach it.
    assert_eq!(
        nix::unistd::getsid(Some(nix::unistd::Pid::from_raw(pid)))
            .unwrap()
            .as_raw(),
        pid
    );
    let health = d.client.wait_ready(Duration::from_secs(30)).await.unwrap();
    assert_eq!(health["pid"], pid);

    // A second start finds it running and leaves it alone.
    let out = run(&d, &args);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(
        stdout(&out).contains(&format!("already running (pid {pid})")),
        "{}",
        stdout(&out)
    );

    let out = run(&d, &["stop"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(stdout(&out).starts_with(&format!("hearth stopped (pid {pid}")));
    assert!(!pid_alive(pid), "pid {pid} still running after stop");
    assert!(!d.socket.exists(), "socket left behind");
    assert!(
        !d.data_dir().join("hearth.lock").exists(),
        "lock file left behind"
    );

    // Nothing to stop: a clear message and exit code 3.
    let out = run(&d, &["stop"]);
    assert_eq!(out.status.code(), Some(3), "{}", stderr(&out));
    let err = stderr(&out);
    assert!(err.starts_with("hearth: no hearth daemon at "), "{err}");
    assert_eq!(err.trim_end().lines().count(), 1, "{err}");
}

#[tokio::test]
async fn stop_falls_back_to_the_lock_file_when_the_socket_does_not_answer() {
    let mut d = Daemon::start(Opts {
        model: TINY_MODEL,
        ..Opts::default()
    })
    .await;
    // The daemon runs, but its socket file is gone (deleted by a clean-up script, say).
    std::fs::remove_file(&d.socket).unwrap();
    let out = run(&d, &["stop"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let status = d.wait_stopped();
    assert!(status.success(), "{status}");
    assert!(!d.data_dir().join("hearth.lock").exists());
}

#[tokio::test]
async fn start_reports_why_the_daemon_could_not_start() {
    let d = Daemon::stopped(Opts::default());
    let _guard = DetachedGuard(d.data_dir());
    let empty = tempfile::tempdir().unwrap();
    let mut flags = serve_flags(&d, REAL_MODEL);
    flags[1] = empty.path().display().to_string();
    let mut args = vec!["start"];
    args.extend(flags.iter().map(String::as_str));
    let out = run(&d, &args);
    assert_eq!(out.status.code(), Some(1), "{}", stdout(&out));
    let err = stderr(&out);
    assert!(err.contains("exited during start-up"), "{err}");
    assert!(err.contains("SmolLM2-135M-Instruct.Q4_1.gguf"), "{err}");
    assert!(err.contains("./models/fetch"), "{err}");
}

#[tokio::test]
async fn chat_wait_waits_for_a_daemon_that_starts_later_and_shows_progress() {
    let mut d = Daemon::stopped(Opts::default());
    let chat = hearth(
        &d,
        &[
            "chat",
            "--wait",
            "90",
            "--temperature",
            "0",
            "What is the capital of France? Answer in one sentence.",
        ],
    )
    .stdout(Stdio::piped())
    .stderr(Stdio::piped())
    .spawn()
    .unwrap();
    // No socket yet: the client must wait for it, not fail.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    d.child = Some(d.command().spawn().unwrap());
    let out = chat.wait_with_output().unwrap();
    let err = stderr(&out);
    assert!(out.status.success(), "{err}");
    assert!(err.contains("waiting for hearth to start…"), "{err}");
    assert!(stdout(&out).contains("Paris"), "{}", stdout(&out));
    assert!(err.contains("[chat "), "{err}");
}

#[tokio::test]
async fn health_reports_the_load_stage_and_progress_while_the_model_loads() {
    let mut d = Daemon::spawn_only(Opts::default());
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut stages = Vec::new();
    loop {
        match d.client.request(Method::GET, "/api/v1/health", None).await {
            Ok((status, health)) if status == 200 => {
                assert_eq!(health["models"]["chat"]["loading"], Value::Null);
                break;
            }
            Ok((_, health)) => {
                let loading = &health["models"]["chat"]["loading"];
                let stage = loading["stage"].as_str().unwrap().to_string();
                assert!(stage == "verifying" || stage == "loading", "{health}");
                let progress = loading["progress"].as_f64().unwrap();
                assert!((0.0..=1.0).contains(&progress), "{health}");
                if stages.last() != Some(&stage) {
                    stages.push(stage);
                }
            }
            Err(_) => {}
        }
        assert!(Instant::now() < deadline, "never ready: {}", d.stderr());
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    // A fresh data dir has no cached verification: the 98 MB file is hashed first.
    assert_eq!(
        stages.first().map(String::as_str),
        Some("verifying"),
        "{stages:?}"
    );
}

#[tokio::test]
async fn one_answers_from_stdin_and_as_json() {
    let d = Daemon::start(Opts::default()).await;
    let mut child = hearth(&d, &["chat", "--max-tokens", "16"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(b"Say hello in one word.\n")
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(!stdout(&out).trim().is_empty());

    let answer = json(
        &d,
        &[
            "chat",
            "--json",
            "--temperature",
            "0",
            "What is the capital of France?",
        ],
    );
    assert!(
        answer["reply"].as_str().unwrap().contains("Paris"),
        "{answer}"
    );
    assert_eq!(answer["finish_reason"], "stop");
    let chat_id = answer["chat_id"].as_str().unwrap();
    // --chat continues it, by a unique prefix of its id.
    let again = json(
        &d,
        &[
            "chat",
            "--json",
            "--chat",
            &chat_id[..13],
            "--max-tokens",
            "8",
            "And of Spain?",
        ],
    );
    assert_eq!(again["chat_id"], chat_id);
    let chat = json(&d, &["chats", "show", chat_id, "--json"]);
    assert_eq!(chat["message_count"], 4, "{chat}");

    // An empty stdin is a usage error.
    let out = run(&d, &["chat"]);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
}

#[tokio::test]
async fn management_commands_work_against_a_live_daemon_with_json_and_exit_codes() {
    let d = Daemon::start(Opts::default()).await;

    let ps = json(&d, &["ps", "--json"]);
    assert_eq!(ps["models"]["chat"]["name"], REAL_MODEL);
    assert_eq!(ps["models"]["chat"]["state"], "ready");
    // Without a daemon: the files in a models dir, by size.
    let out = hearth(
        &d,
        &[
            "models",
            "--json",
            "--models-dir",
            models_dir().to_str().unwrap(),
        ],
    )
    .env("HEARTH_SOCKET", d.dir.path().join("nothing.sock"))
    .output()
    .unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    let models: Value = serde_json::from_slice(&out.stdout).unwrap();
    let smol = models["models"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["name"] == REAL_MODEL)
        .unwrap();
    assert_eq!(smol["state"], "present");
    assert_eq!(smol["default"], true);
    // With a daemon running, its own list: verified files with their metadata.
    let models = json(&d, &["models", "--json"]);
    let smol = models["models"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["name"] == REAL_MODEL)
        .unwrap();
    assert_eq!(smol["state"], "loaded");
    assert_eq!(smol["metadata"]["quantization"], "Q4_1");
    let text = stdout(&run(&d, &["models"]));
    assert!(text.contains("Q4_1") && text.contains("loaded"), "{text}");

    // Your own model: added by a relative path (the CLI sends it absolute), used, shown, removed.
    let files = tempfile::tempdir().unwrap();
    std::fs::copy(
        models_dir().join("tiny-random.gguf"),
        files.path().join("Mine.gguf"),
    )
    .unwrap();
    let out = hearth(&d, &["models", "add", "Mine.gguf", "--json"])
        .current_dir(files.path())
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    let added: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(added["name"], "mine");
    let answer = json(
        &d,
        &[
            "chat",
            "--json",
            "--user",
            "model-tester",
            "--model",
            "mine",
            "--max-tokens",
            "4",
            "Hi",
        ],
    );
    assert_eq!(answer["model"], "mine", "{answer}");
    let text = stdout(&run(&d, &["ps"]));
    assert!(text.contains("mine") && text.contains("MB"), "{text}");
    let text = stdout(&run(&d, &["models"]));
    assert!(text.contains("mine") && text.contains("added"), "{text}");
    let out = run(&d, &["models", "unload", "mine"]);
    assert!(stdout(&out).contains("unloaded mine"), "{}", stderr(&out));
    assert!(run(&d, &["models", "rm", "mine"]).status.success());
    assert!(files.path().join("Mine.gguf").exists());
    let out = run(&d, &["models", "rm", "mine"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains("unknown_model"), "{}", stderr(&out));

    // Chats: one from a message, then list, rename, show, rm.
    let answer = json(&d, &["chat", "--json", "--max-tokens", "8", "Hello there"]);
    let chat_id = answer["chat_id"].as_str().unwrap().to_string();
    let list = json(&d, &["chats", "--json"]);
    assert_eq!(list["chats"][0]["id"], chat_id.as_str());
    let renamed = json(&d, &["chats", "rename", &chat_id, "Greetings", "--json"]);
    assert_eq!(renamed["title"], "Greetings");
    let shown = json(&d, &["chats", "show", &chat_id[..8], "--json"]);
    assert_eq!(shown["title"], "Greetings");
    assert_eq!(shown["messages"].as_array().unwrap().len(), 2);
    let text = stdout(&run(&d, &["chats"]));
    assert!(
        text.contains(&chat_id) && text.contains("Greetings"),
        "{text}"
    );

    // Documents: upload into a chat and into the library, list, search, rm.
    let dir = tempfile::tempdir().unwrap();
    let report = dir.path().join("report.md");
    std::fs::write(
        &report,
        "# Field report\n\nThe report concludes that hedgehogs eat beetles at night.\n",
    )
    .unwrap();
    let notes = dir.path().join("notes.txt");
    std::fs::write(&notes, "The glacier moved forty metres last year.").unwrap();
    let up = json(
        &d,
        &[
            "docs",
            "upload",
            "--chat",
            &chat_id,
            report.to_str().unwrap(),
            "--json",
        ],
    );
    let doc_id = up["documents"][0]["id"].as_str().unwrap().to_string();
    assert_eq!(up["documents"][0]["filename"], "report.md");
    let lib = json(&d, &["docs", "upload", notes.to_str().unwrap(), "--json"]);
    assert_eq!(lib["documents"][0]["scope"], "library");
    let listed = json(&d, &["docs", "list", "--chat", &chat_id, "--json"]);
    assert_eq!(listed["documents"][0]["id"], doc_id.as_str());
    let hits = json(
        &d,
        &[
            "search",
            "--scope",
            &format!("chat:{chat_id}"),
            "--json",
            "what",
            "do",
            "hedgehogs",
            "eat",
        ],
    );
    assert!(hits["results"][0]["text"]
        .as_str()
        .unwrap()
        .contains("beetles"));
    let hits = json(&d, &["search", "--json", "how far did the glacier move"]);
    assert_eq!(hits["results"][0]["filename"], "notes.txt");
    let gone = json(&d, &["docs", "rm", &doc_id, "--json"]);
    assert_eq!(gone["deleted"][0]["deleted"], doc_id.as_str());

    // A chat turn with documents: sources printed under the answer.
    let out = run(
        &d,
        &[
            "chat",
            "--chat",
            &chat_id,
            "--docs",
            "--max-tokens",
            "24",
            "How far did the glacier move?",
        ],
    );
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(stderr(&out).contains("[1] notes.txt"), "{}", stderr(&out));

    let vectors = json(&d, &["embed", "--json", "hello", "world"]);
    assert_eq!(vectors["data"].as_array().unwrap().len(), 2);
    assert_eq!(
        vectors["data"][1]["embedding"].as_array().unwrap().len(),
        384
    );
    let cancel = json(&d, &["chats", "cancel", &chat_id, "--json"]);
    assert_eq!(cancel["cancelled"], false);
    let out = run(&d, &["library", "--rescan"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(
        stdout(&out).starts_with("rescan started"),
        "{}",
        stdout(&out)
    );

    // Memories: add, list, search, history, forget.
    let added = json(
        &d,
        &[
            "memories", "add", "I", "have", "a", "dog", "named", "Rex", "--json",
        ],
    );
    assert_eq!(added["change"], "added");
    let mem_id = added["memory"]["id"].as_str().unwrap().to_string();
    let mems = json(&d, &["memories", "--json"]);
    assert_eq!(mems["memories"][0]["text"], "I have a dog named Rex");
    let found = json(
        &d,
        &[
            "memories",
            "list",
            "--query",
            "what pet do I have",
            "--json",
        ],
    );
    assert_eq!(found["memories"][0]["id"], mem_id.as_str());
    let edited = json(
        &d,
        &["memories", "edit", &mem_id, "I have two dogs", "--json"],
    );
    assert_eq!(edited["text"], "I have two dogs");
    let history = json(&d, &["memories", "history", &mem_id, "--json"]);
    assert_eq!(history["history"].as_array().unwrap().len(), 2, "{history}");
    let forgot = json(&d, &["memories", "forget", "--all", "--json"]);
    assert_eq!(forgot["deleted"], 1);

    // Settings: set and read back.
    let settings = json(
        &d,
        &[
            "settings",
            "temperature=0.2",
            "use_memory=true",
            "system_prompt=Be brief.",
            "--json",
        ],
    );
    assert_eq!(settings["use_memory"], true);
    assert_eq!(settings["system_prompt"], "Be brief.");
    let settings = json(&d, &["settings", "--json"]);
    assert!((settings["temperature"].as_f64().unwrap() - 0.2).abs() < 1e-6);

    // Errors: one line with the API's code; exit codes by kind.
    let out = run(&d, &["settings", "temperature=9"]);
    assert_eq!(out.status.code(), Some(1));
    let err = stderr(&out);
    assert!(
        err.starts_with("hearth: ") && err.trim_end().ends_with("(invalid_request)"),
        "{err}"
    );
    assert_eq!(err.trim_end().lines().count(), 1, "{err}");
    let out = run(&d, &["chats", "show", "zzzz"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).trim_end().ends_with("(chat_not_found)"),
        "{}",
        stderr(&out)
    );
    let out = run(&d, &["settings", "temperature"]);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    let out = hearth(&d, &["chats"])
        .env("HEARTH_SOCKET", d.dir.path().join("nothing.sock"))
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(3), "{}", stderr(&out));

    // Chats rm last (the deleted chat's documents go with it).
    let rm = json(&d, &["chats", "rm", &chat_id, "--json"]);
    assert_eq!(rm["deleted"][0], chat_id.as_str());
    let list = json(&d, &["chats", "--json"]);
    assert!(list["chats"]
        .as_array()
        .unwrap()
        .iter()
        .all(|c| c["id"] != chat_id.as_str()));
}

#[tokio::test]
async fn events_prints_background_events_as_json_lines() {
    let d = Daemon::start(Opts::default()).await;
    let mut events = hearth(&d, &["events", "--json", "--types", "title"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    let answer = json(
        &d,
        &[
            "chat",
            "--json",
            "--max-tokens",
            "16",
            "How do I grow tomatoes on a balcony?",
        ],
    );
    let chat_id = answer["chat_id"].as_str().unwrap().to_string();
    let stdout = events.stdout.take().unwrap();
    let line = tokio::task::spawn_blocking(move || {
        let mut line = String::new();
        std::io::BufRead::read_line(&mut std::io::BufReader::new(stdout), &mut line).unwrap();
        line
    });
    let line = tokio::time::timeout(Duration::from_secs(60), line)
        .await
        .expect("no title event within 60 s")
        .unwrap();
    let _ = events.kill();
    let _ = events.wait();
    let event: Value = serde_json::from_str(&line).unwrap();
    assert_eq!(event["event"], "title");
    assert_eq!(event["data"]["chat_id"], chat_id.as_str());
}

#[tokio::test]
async fn no_arguments_says_whether_a_daemon_runs_and_what_to_do_next() {
    let d = Daemon::start(Opts {
        model: TINY_MODEL,
        ..Opts::default()
    })
    .await;
    let out = run(&d, &[]);
    assert!(out.status.success());
    let text = stdout(&out);
    assert!(text.contains("daemon:  running (pid "), "{text}");
    assert!(text.contains(&d.socket.display().to_string()), "{text}");
    assert!(text.contains("hearth chat"), "{text}");

    let out = hearth(&d, &[])
        .env("HEARTH_SOCKET", d.dir.path().join("nothing.sock"))
        .output()
        .unwrap();
    assert!(out.status.success());
    let text = stdout(&out);
    assert!(text.contains("daemon:  not running"), "{text}");
    assert!(text.contains("hearth start"), "{text}");
}

#[test]
fn completions_and_man_pages_come_from_the_same_definitions() {
    let bin = env!("CARGO_BIN_EXE_hearth");
    for (shell, needle) in [
        ("bash", "complete -F _hearth"),
        ("zsh", "#compdef hearth"),
        ("fish", "complete -c hearth"),
    ] {
        let out = Command::new(bin)
            .args(["completions", shell])
            .output()
            .unwrap();
        assert!(out.status.success(), "{shell}");
        let script = String::from_utf8_lossy(&out.stdout);
        assert!(script.contains(needle), "{shell}: {script}");
        // Every subcommand is completed.
        for sub in ["chats", "memories", "stop"] {
            assert!(script.contains(sub), "{shell} lacks {sub}");
        }
    }
    let out = Command::new(bin).arg("man").output().unwrap();
    let page = String::from_utf8_lossy(&out.stdout);
    assert!(page.contains(".TH hearth 1"), "{page}");
    assert!(page.contains("Exit codes"), "{page}");
    let dir = tempfile::tempdir().unwrap();
    let out = Command::new(bin)
        .args(["man", "--dir"])
        .arg(dir.path())
        .output()
        .unwrap();
    assert!(out.status.success());
    for page in [
        "hearth.1",
        "hearth-chat.1",
        "hearth-stop.1",
        "hearth-memories.1",
    ] {
        assert!(dir.path().join(page).exists(), "{page} missing");
    }
}

/// Regression (issue 20): `--allow-origin` was `allowed_origins` in hearth.toml and
/// `allow_origin` was rejected. Every `serve --help` setting flag is a file key with the dashes
/// made underscores, and its environment variable is that key upper-cased behind `HEARTH_`;
/// every file key is such a flag.
#[test]
fn every_serve_flag_is_a_file_key_and_an_environment_variable_of_the_same_name() {
    let bin = env!("CARGO_BIN_EXE_hearth");
    let help = Command::new(bin)
        .args(["serve", "--help"])
        .env_clear()
        .output()
        .unwrap();
    assert!(help.status.success());
    let help = String::from_utf8_lossy(&help.stdout).into_owned();
    // Flags of the `serve` command itself, not settings.
    const COMMAND_ONLY: [&str; 6] = [
        "sidecar",
        "parent-pid",
        "detach",
        "start-timeout",
        "help",
        "config",
    ];
    // Each option's entry: its flag, then its help text up to the next flag.
    let mut flags: Vec<(String, String)> = Vec::new();
    for line in help.lines() {
        let trimmed = line.trim_start();
        if let Some(rest) = trimmed.strip_prefix("--") {
            let name: String = rest
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric() || *c == '-')
                .collect();
            flags.push((name, format!("{rest} ")));
        } else if let Some((_, text)) = flags.last_mut() {
            text.push_str(trimmed);
            text.push(' ');
        }
    }
    let settings: Vec<&(String, String)> = flags
        .iter()
        .filter(|(name, _)| !COMMAND_ONLY.contains(&name.as_str()))
        .collect();
    assert!(settings.len() > 30, "{help}");
    for (flag, text) in &settings {
        let key = flag.replace('-', "_");
        let env = format!("[env: HEARTH_{}", key.to_uppercase());
        assert!(
            text.contains(&env),
            "--{flag}: expected {env}=...] in {text:?}"
        );
    }
    // The file keys hearth accepts: an unknown one is refused with the whole list.
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("hearth.toml");
    std::fs::write(&file, "not_a_setting = 1\n").unwrap();
    let out = Command::new(bin)
        .args(["status", "--socket", "/nonexistent/hearth.sock", "--config"])
        .arg(&file)
        .env_clear()
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(!out.status.success(), "{err}");
    let expected = err
        .split("expected one of")
        .nth(1)
        .unwrap_or_else(|| panic!("no list of keys: {err}"));
    let mut keys: Vec<String> = expected
        .split('`')
        .skip(1)
        .step_by(2)
        .map(str::to_string)
        .collect();
    keys.sort();
    let mut from_flags: Vec<String> = settings.iter().map(|(f, _)| f.replace('-', "_")).collect();
    from_flags.sort();
    assert_eq!(keys, from_flags, "{err}");
    // And the first spellings still work as hidden aliases.
    for (old, key) in [
        ("--allow-origin", "allowed_origins"),
        ("--compat-allow-origin", "compat_origins"),
    ] {
        let out = Command::new(bin)
            .args(["serve", old, "http://localhost:1", "--help"])
            .output()
            .unwrap();
        assert!(out.status.success(), "{old} ({key})");
    }
}

/// The interactive session in a real pseudo-terminal: two turns in one chat, Ctrl-C cancels a
/// running reply and the session goes on, `/new` starts another chat, Ctrl-D exits 0.
#[tokio::test]
async fn the_interactive_session_runs_in_a_terminal() {
    let d = Daemon::start(Opts::default()).await;
    let mut cmd = hearth(&d, &["chat"]);
    // The terminal is stdin too (rexpect makes it the child's stdio).
    cmd.stdin(Stdio::inherit()).env("TERM", "xterm-256color");
    let session = tokio::task::spawn_blocking({
        let socket = d.socket.clone();
        move || repl_script(cmd, &socket)
    });
    session.await.unwrap();
    let user = d.client.user_id("cli-tester").await.unwrap();
    let chats = d
        .client
        .call(Method::GET, &format!("/api/v1/users/{user}/chats"), None)
        .await
        .unwrap();
    let chats = chats["chats"].as_array().unwrap();
    assert_eq!(chats.len(), 2, "{chats:?}");
    // Most recent first: the /new chat has one turn, the first chat three.
    assert_eq!(chats[0]["message_count"], 2);
    assert_eq!(chats[1]["message_count"], 6);
    let first = d
        .client
        .call(
            Method::GET,
            &format!("/api/v1/chats/{}", chats[1]["id"].as_str().unwrap()),
            None,
        )
        .await
        .unwrap();
    let messages = first["messages"].as_array().unwrap();
    assert_eq!(messages[5]["finish_reason"], "cancelled", "{first}");
    assert_eq!(messages[1]["finish_reason"], "stop");
}

fn repl_script(cmd: Command, socket: &Path) {
    let mut p = rexpect::session::spawn_command(cmd, Some(60_000)).unwrap();
    p.exp_string("/help for commands").unwrap();
    p.exp_string(">>> ").unwrap();
    p.send_line("My name is Ada. Say hello to me.").unwrap();
    p.exp_string(">>> ").unwrap();
    p.send_line("What is my name?").unwrap();
    p.exp_string(">>> ").unwrap();

    // A long reply, cancelled once it is being generated.
    p.send_line("Write a very long story about a dragon who learns to cook, with many chapters.")
        .unwrap();
    let client = hearth::client::Client::new(socket);
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let (_, health) = rt
            .block_on(client.request(Method::GET, "/api/v1/health", None))
            .unwrap();
        if health["queue"]["active_turns"] == 1 {
            break;
        }
        assert!(Instant::now() < deadline, "the reply never started");
        std::thread::sleep(Duration::from_millis(20));
    }
    std::thread::sleep(Duration::from_millis(500));
    p.send_control('c').unwrap();
    p.exp_string("[cancelled]").unwrap();
    p.exp_string(">>> ").unwrap();

    // Still alive after Ctrl-C; commands work.
    p.send_line("/help").unwrap();
    p.exp_string("/docs on|off").unwrap();
    p.exp_string(">>> ").unwrap();
    p.send_line("/new").unwrap();
    p.exp_string("new chat").unwrap();
    p.exp_string(">>> ").unwrap();
    p.send_line("Hi!").unwrap();
    p.exp_string(">>> ").unwrap();
    p.send_line("/chats").unwrap();
    p.exp_string(" 2. ").unwrap();
    p.exp_string(">>> ").unwrap();
    p.send_line("/nonsense").unwrap();
    p.exp_string("unknown command /nonsense").unwrap();
    p.exp_string(">>> ").unwrap();

    p.send_control('d').unwrap();
    p.exp_eof().unwrap();
    let status = p.process().wait().unwrap();
    assert!(
        matches!(status, rexpect::process::WaitStatus::Exited(_, 0)),
        "{status:?}"
    );
}
