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
    /// Models dir to look in when no daemon runs (a running daemon lists its own)
    /// [default: as `hearth serve` would use].
    #[arg(long, env = "HEARTH_MODELS_DIR", value_name = "DIR")]
    models_dir: Option<PathBuf>,
    #[command(flatten)]
    out: JsonArg,
}

pub(super) async fn models(config_file: Option<&Path>, args: ModelsArgs) -> anyhow::Result<()> {
    let target = target(config_file, &args.client)?;
    // A running daemon knows more (verified headers, what is loaded): ask it first.
    if let Ok((status, list)) = Client::new(&target.socket)
        .request(Method::GET, "/api/v1/models", None)
        .await
    {
        if status.is_success() {
            if args.out.json {
                return print_json(&list);
            }
            return models_table(list["models"].as_array().map_or(&[][..], Vec::as_slice));
        }
    }
    let dir = match &args.models_dir {
        Some(dir) => std::path::absolute(dir)?,
        None => target.models_dir.clone(),
    };
    // No daemon: what the files in the models dir look like, by size (hashing every file would
    // take seconds; the daemon verifies each before it reads it).
    let rows: Vec<Value> = Manifest::builtin()
        .entries
        .iter()
        .filter(|e| e.role.as_str() != "tokenizer" && e.role.as_str() != "runtime")
        .map(|e| {
            let state = match std::fs::metadata(dir.join(&e.file)) {
                Ok(meta) if meta.len() == e.size => "present",
                Ok(_) => "changed",
                Err(_) => "missing",
            };
            json!({
                "name": e.name,
                "source": "manifest",
                "role": e.role.as_str(),
                "file": e.file,
                "size": e.size,
                "sha256": e.sha256,
                "group": e.group,
                "default": e.default,
                "state": state,
                "metadata": null,
                "fetch": (state != "present")
                    .then(|| e.group.as_ref().map(|g| format!("./models/fetch {g}"))),
            })
        })
        .collect();
    if args.out.json {
        return print_json(&json!({"models_dir": dir, "models": rows}));
    }
    writeln!(
        std::io::stdout().lock(),
        "models dir: {} (no daemon running: start one to see each file verified, with its metadata)",
        dir.display()
    )?;
    models_table(&rows)
}

/// The model list as a table.
fn models_table(rows: &[Value]) -> anyhow::Result<()> {
    let mut out = std::io::stdout().lock();
    writeln!(
        out,
        "{:<30} {:<5} {:>8} {:>7} {:<7} {:>6}  {:<9} NOTE",
        "NAME", "ROLE", "SIZE", "PARAMS", "QUANT", "CTX", "STATE"
    )?;
    let mut fetch = Vec::new();
    for row in rows {
        let meta = &row["metadata"];
        let params = meta["parameters"]
            .as_u64()
            .map(|p| format!("{:.2}B", p as f64 / 1e9))
            .unwrap_or_else(|| "-".into());
        let ctx = meta["context_length"]
            .as_u64()
            .map(|c| format!("{}k", c / 1024))
            .unwrap_or_else(|| "-".into());
        let mut note = Vec::new();
        if row["default"] == true {
            note.push("default".to_string());
        }
        if let Some(family) = meta["template_family"].as_str() {
            note.push(format!("{family} template"));
        }
        if let Some(command) = row["fetch"].as_str() {
            if !fetch.contains(&command) {
                fetch.push(command);
            }
        }
        writeln!(
            out,
            "{:<30} {:<5} {:>5} MB {:>7} {:<7} {:>6}  {:<9} {}",
            one_line(row["name"].as_str().unwrap_or("?"), 30),
            row["role"].as_str().unwrap_or("?"),
            row["size"].as_u64().unwrap_or(0) / 1_000_000,
            params,
            meta["quantization"].as_str().unwrap_or("-"),
            ctx,
            row["state"].as_str().unwrap_or("?"),
            note.join(", ")
        )?;
    }
    for command in fetch {
        writeln!(out, "to fetch: {command}")?;
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
