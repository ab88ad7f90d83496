//! `hearth ps` and `hearth events`: what the daemon has loaded, and its background events as
//! they happen.

use std::io::Write;
use std::path::Path;

use http::Method;
use serde_json::json;

use super::{connect, one_line, percent_encode, print_json, ClientArgs, JsonArg};

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
    writeln!(
        out,
        "{:<8} {:<32} {:<9} {:>9} {:>6}  DETAIL",
        "ROLE", "MODEL", "STATE", "RAM", "CTX"
    )?;
    let chat = &health["models"]["chat"];
    let loaded = health["models"]["loaded"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    if loaded.is_empty() {
        writeln!(
            out,
            "{:<8} {:<32} {:<9} {:>9} {:>6}  default; loads on the next request",
            "chat",
            one_line(chat["name"].as_str().unwrap_or("?"), 32),
            "unloaded",
            "-",
            "-"
        )?;
    }
    for model in &loaded {
        let mut detail = Vec::new();
        if model["name"] == chat["name"] {
            detail.push("default".to_string());
        }
        if let Some(stage) = model["loading"]["stage"].as_str() {
            detail.push(format!(
                "{stage} {:.0}%",
                model["loading"]["progress"].as_f64().unwrap_or(0.0) * 100.0
            ));
        }
        if let Some(err) = model["error"].as_str() {
            detail.push(one_line(err, 80));
        }
        if model["active"].as_u64().unwrap_or(0) > 0 {
            detail.push(format!("{} in use", model["active"]));
        } else if model["state"] == "loaded" {
            detail.push(super::models::expiry(&model["expires_at"]));
        }
        writeln!(
            out,
            "{:<8} {:<32} {:<9} {:>6} MB {:>6}  {}",
            "chat",
            one_line(model["name"].as_str().unwrap_or("?"), 32),
            model["state"].as_str().unwrap_or("?"),
            model["ram_bytes"].as_u64().unwrap_or(0) / 1_000_000,
            model["n_ctx"],
            detail.join(", ")
        )?;
    }
    let embed = &health["models"]["embed"];
    writeln!(
        out,
        "{:<8} {:<32} {:<9} {:>9} {:>6}  {}",
        "embed",
        one_line(embed["name"].as_str().unwrap_or("?"), 32),
        embed["state"].as_str().unwrap_or("?"),
        "-",
        "-",
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

#[derive(clap::Args)]
pub(super) struct MetricsArgs {
    #[command(flatten)]
    client: ClientArgs,
}

/// `hearth metrics`: the daemon's `GET /metrics`, as Prometheus scrapes it.
pub(super) async fn metrics(config_file: Option<&Path>, args: MetricsArgs) -> anyhow::Result<()> {
    let client = connect(config_file, &args.client)?;
    let text = client.text("/metrics").await?;
    std::io::stdout().write_all(text.as_bytes())?;
    Ok(())
}
