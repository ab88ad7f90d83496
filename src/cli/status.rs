//! `hearth ps`, `hearth models` and `hearth events`: what the daemon has loaded, which pinned
//! model files are present, and its background events as they happen.

use std::io::Write;
use std::path::{Path, PathBuf};

use http::Method;
use serde_json::{json, Value};

use super::{connect, one_line, percent_encode, print_json, target, ClientArgs, JsonArg};
use crate::client::Client;
use crate::models::Manifest;

#[derive(clap::Args)]
pub(super) struct PsArgs {
    #[command(flatten)]
    client: ClientArgs,
    #[command(flatten)]
    out: JsonArg,
}

pub(super) async fn ps(config_file: Option<&Path>, args: PsArgs) -> anyhow::Result<()> {
    let client = connect(config_file, &args.client)?;
    let (_, health) = client.request(Method::GET, "/api/v1/health", None).await?;
    if args.out.json {
        return print_json(&health);
    }
    let mut out = std::io::stdout().lock();
    writeln!(
        out,
        "hearth {} · pid {} · up {} s",
        health["version"].as_str().unwrap_or("?"),
        health["pid"],
        health["uptime_ms"].as_u64().unwrap_or(0) / 1000
    )?;
    writeln!(out, "{:<8} {:<36} {:<10} DETAIL", "ROLE", "MODEL", "STATE")?;
    let chat = &health["models"]["chat"];
    let mut detail = format!("context {} tokens", chat["n_ctx"]);
    if let Some(stage) = chat["loading"]["stage"].as_str() {
        detail = format!(
            "{stage} {:.0}%",
            chat["loading"]["progress"].as_f64().unwrap_or(0.0) * 100.0
        );
    }
    if let Some(err) = chat["error"].as_str() {
        detail = one_line(err, 80);
    }
    writeln!(
        out,
        "{:<8} {:<36} {:<10} {detail}",
        "chat",
        chat["name"].as_str().unwrap_or("?"),
        chat["state"].as_str().unwrap_or("?")
    )?;
    let embed = &health["models"]["embed"];
    writeln!(
        out,
        "{:<8} {:<36} {:<10} {}",
        "embed",
        embed["name"].as_str().unwrap_or("?"),
        embed["state"].as_str().unwrap_or("?"),
        embed["error"]
            .as_str()
            .map(|e| one_line(e, 80))
            .unwrap_or_else(|| "loaded on first use".into())
    )?;
    writeln!(
        out,
        "queue: {} replying, {} waiting (of {}) · background: {} pending",
        health["queue"]["active_turns"],
        health["queue"]["waiting"],
        health["queue"]["capacity"],
        health["background"]["pending"]
    )?;
    Ok(())
}

#[derive(clap::Args)]
pub(super) struct ModelsArgs {
    #[command(flatten)]
    client: ClientArgs,
    /// Models dir to look in [default: as `hearth serve` would use].
    #[arg(long, env = "HEARTH_MODELS_DIR", value_name = "DIR")]
    models_dir: Option<PathBuf>,
    #[command(flatten)]
    out: JsonArg,
}

pub(super) async fn models(config_file: Option<&Path>, args: ModelsArgs) -> anyhow::Result<()> {
    let target = target(config_file, &args.client)?;
    let dir = match &args.models_dir {
        Some(dir) => std::path::absolute(dir)?,
        None => target.models_dir.clone(),
    };
    // The running daemon, if any, says which chat model it serves.
    let loaded = Client::new(&target.socket)
        .request(Method::GET, "/api/v1/health", None)
        .await
        .ok()
        .and_then(|(_, h)| h["models"]["chat"]["name"].as_str().map(str::to_string));
    let rows: Vec<Value> = Manifest::builtin()
        .entries
        .iter()
        .map(|e| {
            // Size only: hashing every file would take seconds; the daemon hashes before loading.
            let file = match std::fs::metadata(dir.join(&e.file)) {
                Ok(meta) if meta.len() == e.size => "present",
                Ok(_) => "wrong_size",
                Err(_) => "missing",
            };
            json!({
                "name": e.name,
                "role": e.role.as_str(),
                "file": e.file,
                "size": e.size,
                "sha256": e.sha256,
                "group": e.group,
                "default": e.default,
                "file_state": file,
                "loaded": loaded.as_deref() == Some(e.name.as_str()),
            })
        })
        .collect();
    if args.out.json {
        return print_json(&json!({"models_dir": dir, "models": rows}));
    }
    let mut out = std::io::stdout().lock();
    writeln!(out, "models dir: {}", dir.display())?;
    writeln!(
        out,
        "{:<36} {:<9} {:>9}  {:<10} NOTE",
        "NAME", "ROLE", "SIZE", "FILE"
    )?;
    let mut missing_groups = Vec::new();
    for row in &rows {
        let mut note = Vec::new();
        if row["default"] == true {
            note.push("default");
        }
        if row["loaded"] == true {
            note.push("loaded");
        }
        if row["file_state"] != "present" {
            if let Some(group) = row["group"].as_str() {
                if !missing_groups.contains(&group) {
                    missing_groups.push(group);
                }
            }
        }
        writeln!(
            out,
            "{:<36} {:<9} {:>6} MB  {:<10} {}",
            row["name"].as_str().unwrap_or("?"),
            row["role"].as_str().unwrap_or("?"),
            row["size"].as_u64().unwrap_or(0) / 1_000_000,
            row["file_state"].as_str().unwrap_or("?"),
            note.join(", ")
        )?;
    }
    if !missing_groups.is_empty() {
        writeln!(
            out,
            "fetch what is missing: HEARTH_MODELS_DIR={} ./models/fetch {}",
            dir.display(),
            missing_groups.join(" ")
        )?;
    }
    Ok(())
}

#[derive(clap::Args)]
pub(super) struct EventsArgs {
    #[command(flatten)]
    client: ClientArgs,
    /// Only these event types, comma-separated (e.g. `title,memory_extracted`).
    #[arg(long, value_name = "TYPES")]
    types: Option<String>,
    /// Print each event as one JSON line `{"event","data"}`.
    #[arg(long)]
    json: bool,
}

pub(super) async fn events(config_file: Option<&Path>, args: EventsArgs) -> anyhow::Result<()> {
    let client = connect(config_file, &args.client)?;
    let path = match &args.types {
        Some(types) => format!("/api/v1/events?types={}", percent_encode(types)),
        None => "/api/v1/events".into(),
    };
    let mut events = client.subscribe(&path).await?;
    while let Some(event) = events.next().await? {
        let mut out = std::io::stdout().lock();
        if args.json {
            writeln!(out, "{}", json!({"event": event.event, "data": event.data}))?;
        } else {
            writeln!(out, "{:<18} {}", event.event, event.data)?;
        }
        out.flush()?;
    }
    Ok(())
}
