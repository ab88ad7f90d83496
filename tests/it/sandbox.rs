//! Untrusted files are parsed in sandboxed `hearth extract-worker` processes: the worker refuses
//! network, files and programs; a decompression bomb hits the worker's memory limit, not the
//! daemon's; a killed worker fails its file and is replaced; a watched file deleted while it is
//! parsed stops its worker job at once.

use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use http::Method;
use serde_json::Value;

use crate::docs::upload;
use crate::library::{files, wait_files, watching};
use crate::support::{tiny, Daemon, Opts};

/// A one-page PDF whose content stream is a small Flate stream that inflates to `inflated`
/// bytes of text operators: under the 256 MiB inflation cap the daemon checks first, so only
/// the worker's own limits stand between it and the parser's appetite.
fn pdf_bomb(inflated: usize) -> Vec<u8> {
    let line = b"BT /F1 12 Tf 72 712 Td (bomb) Tj ET\n";
    crate::docs::pdf_fixture::flate_pdf(&[line.repeat(inflated / line.len())])
}

/// Resident memory of a process, in bytes.
fn rss(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let kb = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))?
        .trim()
        .trim_end_matches(" kB")
        .trim()
        .parse::<u64>()
        .ok()?;
    Some(kb * 1024)
}

/// The daemon's extraction workers (its children running `extract-worker`).
fn workers(daemon: u32) -> Vec<u32> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
            continue;
        };
        // ppid is the 2nd field after the parenthesised command name.
        let ppid = stat
            .rsplit_once(')')
            .and_then(|(_, rest)| rest.split_whitespace().nth(1))
            .and_then(|p| p.parse::<u32>().ok());
        let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
        if ppid == Some(daemon) && String::from_utf8_lossy(&cmdline).contains("extract-worker") {
            out.push(pid);
        }
    }
    out
}

/// A worker of the daemon that is parsing a bomb (its memory grows past 48 MiB while it does).
async fn busy_worker(daemon: u32) -> u32 {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let busy = workers(daemon)
            .into_iter()
            .find(|&w| rss(w).is_some_and(|r| r > 48 << 20));
        if let Some(worker) = busy {
            return worker;
        }
        assert!(
            Instant::now() < deadline,
            "no worker got busy with the file"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

async fn extraction(d: &Daemon) -> Value {
    let health = d
        .client
        .call(Method::GET, "/api/v1/health", None)
        .await
        .unwrap();
    health["extraction"].clone()
}

/// Samples a process's resident memory on a thread until dropped; the peak.
struct PeakRss {
    stop: Arc<AtomicBool>,
    peak: Arc<AtomicU64>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl PeakRss {
    fn start(pid: u32) -> PeakRss {
        let stop = Arc::new(AtomicBool::new(false));
        let peak = Arc::new(AtomicU64::new(0));
        let (s, p) = (stop.clone(), peak.clone());
        let thread = std::thread::spawn(move || {
            while !s.load(Ordering::Relaxed) {
                if let Some(now) = rss(pid) {
                    p.fetch_max(now, Ordering::Relaxed);
                }
                std::thread::sleep(Duration::from_millis(20));
            }
        });
        PeakRss {
            stop,
            peak,
            thread: Some(thread),
        }
    }

    fn stop(mut self) -> u64 {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        self.peak.load(Ordering::Relaxed)
    }
}

#[test]
fn the_worker_refuses_network_files_programs_and_memory_past_its_limit() {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_hearth"))
        .args(["extract-worker", "--probe", "--memory-mib", "512"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    let report: Value = serde_json::from_slice(&out.stdout).unwrap();
    eprintln!("{report:#}");
    assert_eq!(report["confinement"]["memory_bytes"], 512u64 << 20);
    for attempt in [
        "tcp_connect",
        "udp_bind",
        "read_file",
        "create_file",
        "exec",
        "allocate_limit",
    ] {
        let outcome = report[attempt].as_str().unwrap();
        assert!(outcome.starts_with("refused"), "{attempt}: {outcome}");
    }
    if cfg!(target_os = "linux") {
        assert_eq!(report["confinement"]["seccomp"], true, "{report}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_decompression_bomb_fails_in_the_worker_and_the_daemon_stays_small() {
    let d = Daemon::start(Opts {
        extra: vec!["--extract-memory-mib".into(), "512".into()],
        ..tiny()
    })
    .await;
    let chat = d.new_chat("bomb").await;
    let bomb = pdf_bomb(200 << 20);
    let pid = d.pid() as u32;
    let before = rss(pid).unwrap();
    let peak = PeakRss::start(pid);
    let started = Instant::now();
    let events = tokio::task::block_in_place(|| upload(&d, &chat, "bomb.pdf", &bomb));
    let took = started.elapsed();
    let peak = peak.stop();
    let (event, data) = events.last().unwrap();
    assert_eq!(event, "error", "{events:?}");
    assert_eq!(data["code"], "extract_resource_limit", "{data}");
    eprintln!(
        "bomb: {} KiB file refused in {took:?}; daemon RSS {} MiB before, peak {} MiB",
        bomb.len() / 1024,
        before >> 20,
        peak >> 20
    );
    // The daemon held the 600 KiB file; the 200 MiB of text and the parser's objects were the
    // worker's (in process this file took the daemon past 1 GiB).
    assert!(
        peak < before + (50 << 20),
        "daemon RSS grew from {before} to {peak}"
    );
    let status = extraction(&d).await;
    assert_eq!(status["resource_limits"], 1, "{status}");

    // A new worker takes the next file.
    let events = tokio::task::block_in_place(|| {
        upload(
            &d,
            &chat,
            "after.txt",
            b"The heron waits by the reed bed at dawn.",
        )
    });
    assert_eq!(events.last().unwrap().0, "ready", "{events:?}");
    let status = extraction(&d).await;
    assert!(status["started"].as_u64().unwrap() >= 2, "{status}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_killed_mid_file_fails_that_file_as_crashed_and_is_replaced() {
    let d = Daemon::start(tiny()).await;
    let chat = d.new_chat("crash").await;
    let pid = d.pid() as u32;
    let bomb = pdf_bomb(200 << 20);
    let upload_task = {
        let socket = d.socket.clone();
        let chat = chat.clone();
        std::thread::spawn(move || crate::docs::upload_to(&socket, &chat, "slow.pdf", &bomb))
    };
    // Kill the worker once it is busy with the file.
    let killed = busy_worker(pid).await;
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(killed as i32),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();
    let events = upload_task.join().unwrap();
    let (event, data) = events.last().unwrap();
    assert_eq!(event, "error", "{events:?}");
    assert_eq!(data["code"], "extract_crashed", "worker {killed}: {data}");
    let events = tokio::task::block_in_place(|| {
        upload(
            &d,
            &chat,
            "after.txt",
            b"The heron waits by the reed bed at dawn.",
        )
    });
    assert_eq!(events.last().unwrap().0, "ready", "{events:?}");
    let status = extraction(&d).await;
    assert!(status["crashed"].as_u64().unwrap() >= 1, "{status}");
    assert!(!workers(pid).contains(&killed));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_watched_file_deleted_while_parsed_stops_its_worker_at_once() {
    let dir = tempfile::tempdir().unwrap();
    let d = Daemon::start(watching(dir.path(), &[])).await;
    let pid = d.pid() as u32;
    let path = dir.path().join("slow.pdf");
    std::fs::write(&path, pdf_bomb(200 << 20)).unwrap();
    let worker = busy_worker(pid).await;
    let deleted = Instant::now();
    std::fs::remove_file(&path).unwrap();
    while Path::new(&format!("/proc/{worker}")).exists()
        && !std::fs::read_to_string(format!("/proc/{worker}/stat")).is_ok_and(|s| {
            s.rsplit_once(')')
                .is_some_and(|(_, r)| r.trim_start().starts_with('Z'))
        })
    {
        assert!(
            deleted.elapsed() < Duration::from_secs(5),
            "the worker still parses a deleted file"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let stopped = deleted.elapsed();
    eprintln!("worker {worker} stopped {stopped:?} after the file was deleted");
    wait_files(
        &d,
        Duration::from_secs(15),
        "the file to leave the list",
        |l| !l.contains_key("slow.pdf"),
    )
    .await;
    assert!(!files(&d).await.contains_key("slow.pdf"));
    let status = extraction(&d).await;
    assert!(status["killed"].as_u64().unwrap() >= 1, "{status}");
}
