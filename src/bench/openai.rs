//! `hearth bench --openai`: hearth's `/v1/chat/completions` against llama-cpp-python's own
//! OpenAI-compatible server (`python -m llama_cpp.server`, the stack of the backend hearth
//! replaces), on the same GGUF file, thread count, context size and prompt, both over loopback
//! TCP (hearth's token-guarded listener), both streamed.
//!
//! Figures: decode tokens/s (client side, first to last content chunk), time to first content
//! chunk, RSS after the runs. Runs alternate (hearth, peer, hearth, …) so background noise hits
//! both alike; only one server generates at a time. llama-cpp-python is not a dependency of
//! hearth: `scripts/bench-peer` installs it (a source build of its bundled llama.cpp with the
//! same portable AVX2 flags hearth's build uses) and passes its directory here.

use std::net::{SocketAddr, TcpListener};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};

use super::decode::{openai_run, SocketRun};
use super::{command, median, rss_kib, BenchDaemon, RemoveOnDrop, N_CTX};
use crate::client::Client;
use crate::models::Entry;

/// How long either server may take to become ready (the peer imports a lot of Python).
const READY_TIMEOUT: Duration = Duration::from_secs(120);

pub(super) fn run(
    rt: &tokio::runtime::Runtime,
    models_dir: &Path,
    entry: &Entry,
    peer_dir: &Path,
    threads: u32,
    tokens: u32,
    runs: usize,
) -> anyhow::Result<String> {
    let model_path = crate::models::precheck(models_dir, entry)?;
    if !peer_dir.join("llama_cpp").is_dir() {
        bail!(
            "{} holds no llama_cpp package; install it with scripts/bench-peer",
            peer_dir.display()
        );
    }
    let scratch = std::env::temp_dir().join(format!("hearth-bench-openai-{}", std::process::id()));
    let _cleanup = RemoveOnDrop(scratch.clone());
    let (mut hearth, hearth_client) = tcp_daemon(rt, &scratch, models_dir, &entry.name, threads)?;
    let (mut peer, peer_client) = spawn_peer(rt, &model_path, peer_dir, threads)?;

    let mut sides = [Side::default(), Side::default()];
    // One warm-up each, then measured runs.
    for run in 0..=runs {
        let h = rt.block_on(openai_run(&hearth_client, tokens))?;
        let p = rt.block_on(openai_run(&peer_client, tokens))?;
        if run == 0 {
            continue;
        }
        sides[0].push(&h);
        sides[1].push(&p);
    }
    let rss = [
        rss_kib(hearth.child.id())? as f64 / 1024.0,
        rss_kib(peer.child.id())? as f64 / 1024.0,
    ];
    hearth.stop();
    peer.stop();

    let [h, p] = &mut sides;
    let (h_rate, p_rate) = (median(&mut h.rates), median(&mut p.rates));
    let (h_ttft, p_ttft) = (median(&mut h.ttft), median(&mut p.ttft));
    let rows = [
        (
            "decode tok/s hearth | peer (p50)".to_string(),
            format!("{h_rate:.2} | {p_rate:.2}"),
            String::new(),
        ),
        (
            "ratio hearth ÷ peer".to_string(),
            format!("{:.3}", h_rate / p_rate),
            "≥ 1.05".to_string(),
        ),
        (
            "TTFT ms hearth | peer (p50)".to_string(),
            format!("{h_ttft:.1} | {p_ttft:.1}"),
            String::new(),
        ),
        (
            "ratio peer TTFT ÷ hearth TTFT".to_string(),
            format!("{:.3}", p_ttft / h_ttft),
            "≥ 1.05".to_string(),
        ),
        (
            "completion tokens hearth | peer (last run)".to_string(),
            format!("{} | {}", h.last_tokens, p.last_tokens),
            String::new(),
        ),
        (
            "RSS MiB after the runs hearth | peer".to_string(),
            format!("{:.0} | {:.0}", rss[0], rss[1]),
            String::new(),
        ),
    ];
    let mut out = format!(
        "OpenAI surface vs llama-cpp-python's server: model {}, {threads} thread(s), n_ctx {N_CTX}, \
         {tokens} tokens, {runs} runs, greedy, streamed over loopback TCP\n",
        entry.name
    );
    for (name, value, target) in rows {
        out.push_str(&format!("{name:<44} {value:>18}  {target}\n"));
    }
    Ok(out)
}

#[derive(Default)]
struct Side {
    rates: Vec<f64>,
    ttft: Vec<f64>,
    last_tokens: usize,
}

impl Side {
    fn push(&mut self, run: &SocketRun) {
        // n chunks span n-1 intervals.
        self.rates
            .push(run.tokens.saturating_sub(1) as f64 / run.first_to_last.as_secs_f64().max(1e-9));
        self.ttft.push(run.ttft_ms);
        self.last_tokens = run.tokens;
    }
}

/// A hearth daemon on `scratch` with its token-guarded TCP listener on a free loopback port,
/// ready, and a client of that listener.
pub(super) fn tcp_daemon(
    rt: &tokio::runtime::Runtime,
    scratch: &Path,
    models_dir: &Path,
    model: &str,
    threads: u32,
) -> anyhow::Result<(BenchDaemon, Client)> {
    let addr = free_port()?;
    let daemon = BenchDaemon {
        child: command(scratch, models_dir, model, threads)?
            .arg("--tcp")
            .arg(addr.to_string())
            .stdout(Stdio::null())
            .spawn()
            .context("cannot spawn hearth serve")?,
    };
    let socket = Client::new(&scratch.join("hearth.sock"));
    rt.block_on(socket.wait_ready(READY_TIMEOUT))?;
    // The daemon writes its TCP token into the data dir before it listens.
    let token = std::fs::read_to_string(scratch.join("data").join("tcp-token"))
        .context("hearth wrote no tcp-token")?;
    Ok((daemon, Client::tcp(addr, Some(token.trim().to_string()))))
}

/// llama-cpp-python's server (from `peer_dir`) on `model_path` with `threads` and the benches'
/// context size, ready, and a client of it.
pub(super) fn spawn_peer(
    rt: &tokio::runtime::Runtime,
    model_path: &Path,
    peer_dir: &Path,
    threads: u32,
) -> anyhow::Result<(BenchDaemon, Client)> {
    let addr = free_port()?;
    let mut peer = BenchDaemon {
        child: Command::new("python3")
            .args(["-m", "llama_cpp.server", "--model"])
            .arg(model_path)
            .args(["--n_threads", &threads.to_string()])
            .args(["--n_threads_batch", &threads.to_string()])
            .args(["--n_ctx", &N_CTX.to_string()])
            // By default a new request interrupts the one being served; queue them instead, as
            // a server shared by several clients must.
            .args(["--interrupt_requests", "False"])
            .args(["--host", "127.0.0.1", "--port", &addr.port().to_string()])
            .env("PYTHONPATH", peer_dir)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .context("cannot spawn python3 -m llama_cpp.server")?,
    };
    let client = Client::tcp(addr, None);
    rt.block_on(wait_models(&client, &mut peer))?;
    Ok((peer, client))
}

/// Waits until the peer answers `GET /v1/models` (it loads the model before it listens).
async fn wait_models(client: &Client, peer: &mut BenchDaemon) -> anyhow::Result<()> {
    let deadline = Instant::now() + READY_TIMEOUT;
    loop {
        if let Ok((status, _)) = client.request(http::Method::GET, "/v1/models", None).await {
            if status.is_success() {
                return Ok(());
            }
        }
        if let Some(status) = peer.child.try_wait()? {
            bail!("llama_cpp.server exited ({status}) before it was ready");
        }
        if Instant::now() > deadline {
            bail!("llama_cpp.server not ready within {READY_TIMEOUT:?}");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// A loopback port nothing listens on right now.
fn free_port() -> anyhow::Result<SocketAddr> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?)
}
