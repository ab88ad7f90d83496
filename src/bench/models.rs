//! `hearth bench --models`: loading, switching and unloading chat models in the daemon, against a
//! direct llama-cpp-2 load of the same files in this process.
//!
//! - load time of each model over the API (`POST /models/{name}/load`, verification cached as it
//!   is after the first start) vs a direct load + context of the same file; runs alternate;
//! - switch time between the two with `max_loaded_models = 1` (unload one, load the other);
//! - the daemon's RSS with no model, one, and two loaded, and after the idle TTL unloaded them
//!   (it must come back to within 10% of the RSS before the load).
//!
//! Decode and prefill rates of a model over the socket vs the direct loop are the default bench's
//! (`hearth bench --model NAME`).

use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use http::Method;
use serde_json::{json, Value};

use super::{command, median, rss_kib, BenchDaemon, RemoveOnDrop, N_CTX};
use crate::client::Client;
use crate::llm::direct::DirectModel;
use crate::models::Entry;

/// Loads timed per model and side.
const LOAD_RUNS: usize = 3;
/// Idle time before the TTL unloads a model in the last part.
const KEEP_ALIVE_SECS: u64 = 1;

pub(super) fn run(
    rt: &tokio::runtime::Runtime,
    models_dir: &Path,
    a: &Entry,
    b: &Entry,
    threads: u32,
) -> anyhow::Result<String> {
    let paths = [
        crate::models::precheck(models_dir, a)?,
        crate::models::precheck(models_dir, b)?,
    ];
    let scratch = std::env::temp_dir().join(format!("hearth-bench-models-{}", std::process::id()));
    let _cleanup = RemoveOnDrop(scratch.clone());
    let n_ctx = std::num::NonZeroU32::new(N_CTX).context("n_ctx")?;
    let mut rows: Vec<(String, String, String)> = Vec::new();

    // One daemon holding up to two models, no TTL (unloads are explicit here).
    let dir = scratch.join("two");
    let mut cmd = command(&dir, models_dir, &a.name, threads)?;
    cmd.args(["--max-loaded-models", "2", "--model-ttl-secs", "0"]);
    let daemon = BenchDaemon {
        child: cmd.stdout(std::process::Stdio::null()).spawn()?,
    };
    let client = Client::new(&dir.join("hearth.sock"));
    rt.block_on(client.wait_for(Duration::from_secs(120), true, &mut |_| {}))?;
    let pid = daemon.child.id();
    // Verification of both files cached, as after a first start.
    rt.block_on(load(&client, &b.name))?;
    rt.block_on(unload(&client, &b.name))?;
    rt.block_on(unload(&client, &a.name))?;
    settle();
    let rss_none = rss_kib(pid)?;

    for (entry, path) in [a, b].into_iter().zip(&paths) {
        let (mut api, mut direct) = (Vec::new(), Vec::new());
        for _ in 0..LOAD_RUNS {
            direct
                .push(DirectModel::load_like_daemon(path, threads, n_ctx)?.as_secs_f64() * 1000.0);
            api.push(rt.block_on(load(&client, &entry.name))?);
            rt.block_on(unload(&client, &entry.name))?;
        }
        let (api, direct) = (median(&mut api), median(&mut direct));
        rows.push((
            format!("load {}, ms (API)", entry.name),
            format!("{api:.0}"),
            String::new(),
        ));
        rows.push((
            format!("load {}, ms (direct)", entry.name),
            format!("{direct:.0}"),
            String::new(),
        ));
        rows.push((
            format!("ratio direct/API, {}", entry.name),
            format!("{:.3}", direct / api),
            "≥ 0.9".into(),
        ));
    }
    rt.block_on(load(&client, &a.name))?;
    settle();
    let rss_one = rss_kib(pid)?;
    rt.block_on(load(&client, &b.name))?;
    settle();
    let rss_two = rss_kib(pid)?;
    drop(daemon);

    // Switching with room for one model: loading the other unloads the idle one first.
    let dir = scratch.join("one");
    let mut cmd = command(&dir, models_dir, &a.name, threads)?;
    cmd.args(["--max-loaded-models", "1", "--model-ttl-secs", "0"]);
    let mut daemon = BenchDaemon {
        child: cmd.stdout(std::process::Stdio::null()).spawn()?,
    };
    let client = Client::new(&dir.join("hearth.sock"));
    rt.block_on(client.wait_for(Duration::from_secs(120), true, &mut |_| {}))?;
    rt.block_on(load(&client, &b.name))?;
    let mut switches = Vec::new();
    for n in 0..LOAD_RUNS * 2 {
        let next = if n % 2 == 0 { &a.name } else { &b.name };
        switches.push(rt.block_on(load(&client, next))?);
    }
    rows.push((
        "switch between the two, ms (p50)".into(),
        format!("{:.0}", median(&mut switches)),
        String::new(),
    ));

    // TTL: RSS before a load, with the model, and after the idle TTL unloaded it.
    rt.block_on(unload(&client, &a.name))?;
    rt.block_on(unload(&client, &b.name))?;
    settle();
    let pid = daemon.child.id();
    let before = rss_kib(pid)?;
    let path = format!("/api/v1/models/{}/load", &b.name);
    rt.block_on(client.call(
        Method::POST,
        &path,
        Some(&json!({"keep_alive": KEEP_ALIVE_SECS})),
    ))?;
    let loaded = rss_kib(pid)?;
    let deadline = Instant::now() + Duration::from_secs(30);
    while rt.block_on(loaded_count(&client))? > 0 {
        if Instant::now() > deadline {
            bail!("the TTL did not unload {}", b.name);
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    settle();
    let after = rss_kib(pid)?;
    daemon.stop();

    let mib = |kib: u64| format!("{:.0}", kib as f64 / 1024.0);
    rows.push((
        "RSS, no model loaded, MiB".into(),
        mib(rss_none),
        String::new(),
    ));
    rows.push((
        format!("RSS, {} loaded, MiB", a.name),
        mib(rss_one),
        String::new(),
    ));
    rows.push(("RSS, both loaded, MiB".into(), mib(rss_two), String::new()));
    rows.push((
        format!("RSS before loading {}, MiB", b.name),
        mib(before),
        String::new(),
    ));
    rows.push((
        format!("RSS with {} loaded, MiB", b.name),
        mib(loaded),
        String::new(),
    ));
    rows.push((
        "RSS after the TTL unloaded it, MiB".into(),
        mib(after),
        String::new(),
    ));
    rows.push((
        "after / before".into(),
        format!("{:.3}", after as f64 / before.max(1) as f64),
        "≤ 1.10".into(),
    ));

    let mut out = format!(
        "hearth bench --models: {} and {}, {} thread(s), context {N_CTX}, {LOAD_RUNS} loads per side\n",
        a.name, b.name, threads
    );
    out.push_str(&format!("{:<52} {:>9}  target\n", "measure", "value"));
    for (name, value, target) in rows {
        out.push_str(&format!("{name:<52} {value:>9}  {target}\n"));
    }
    Ok(out)
}

/// `POST /models/{name}/load`; the wall time in ms.
async fn load(client: &Client, name: &str) -> anyhow::Result<f64> {
    let started = Instant::now();
    let path = format!("/api/v1/models/{}/load", name);
    client.call(Method::POST, &path, None).await?;
    Ok(started.elapsed().as_secs_f64() * 1000.0)
}

async fn unload(client: &Client, name: &str) -> anyhow::Result<()> {
    let path = format!("/api/v1/models/{}/unload", name);
    client.call(Method::POST, &path, None).await?;
    // The worker frees the model after the call returns: wait until health lists it no more.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let health: Value = client.call(Method::GET, "/api/v1/health", None).await?;
        let listed = health["models"]["loaded"]
            .as_array()
            .is_some_and(|l| l.iter().any(|m| m["name"] == name));
        if !listed {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!("{name} still loaded 30 s after unload");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn loaded_count(client: &Client) -> anyhow::Result<usize> {
    let health: Value = client.call(Method::GET, "/api/v1/health", None).await?;
    Ok(health["models"]["loaded"].as_array().map_or(0, Vec::len))
}

/// Lets the worker thread finish freeing (or the allocator settle) before RSS is read.
fn settle() {
    std::thread::sleep(Duration::from_millis(500));
}
