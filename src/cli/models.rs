//! `hearth models`: the model list (from the running daemon, else from the files), and adding,
//! removing, loading and unloading models through the daemon.

use std::io::{IsTerminal, Write};
use std::path::{Path, PathBuf};
use std::time::Duration;

use http::Method;
use serde_json::{json, Value};

use super::{connect, one_line, percent_encode, print_json, target, ClientArgs, JsonArg};
use crate::client::Client;
use crate::models::Manifest;

/// How often `hearth models add` asks for the hashing progress.
const PROGRESS_EVERY: Duration = Duration::from_millis(300);

#[derive(clap::Args)]
#[command(args_conflicts_with_subcommands = true)]
pub(super) struct ModelsArgs {
    #[command(subcommand)]
    action: Option<Action>,
    #[command(flatten)]
    client: ClientArgs,
    /// Models dir to look in when no daemon runs (a running daemon lists its own)
    /// [default: as `hearth serve` would use].
    #[arg(long, env = "HEARTH_MODELS_DIR", value_name = "DIR")]
    models_dir: Option<PathBuf>,
    #[command(flatten)]
    out: JsonArg,
}

#[derive(clap::Subcommand)]
enum Action {
    /// List the models: shipped, added, the embedder; size, parameters, state, TTL left.
    List,
    /// Add a GGUF file of yours: hashed once and pinned by sha256 (re-verified before every
    /// load; a changed file is refused). The file stays where it is.
    Add {
        /// The .gguf file.
        path: PathBuf,
        /// Name to use it by [default: the file name without .gguf, lower-cased].
        #[arg(long)]
        name: Option<String>,
    },
    /// Remove an added model (unloads it; the file is not deleted).
    Rm { name: String },
    /// Load a model now (requests load one on demand too).
    Load {
        name: String,
        /// Seconds it stays loaded once idle [default: the daemon's model_ttl_secs].
        #[arg(long, value_name = "SECS")]
        keep_alive: Option<u64>,
    },
    /// Unload a model now.
    Unload { name: String },
}

pub(super) async fn models(config_file: Option<&Path>, args: ModelsArgs) -> anyhow::Result<()> {
    match args.action {
        None | Some(Action::List) => {
            list(config_file, &args.client, args.models_dir, args.out).await
        }
        Some(Action::Add { path, name }) => {
            let client = connect(config_file, &args.client)?;
            add(&client, &path, name.as_deref(), args.out.json).await
        }
        Some(Action::Rm { name }) => {
            let client = connect(config_file, &args.client)?;
            let answer = client
                .call(Method::DELETE, &model_path(&name, ""), None)
                .await?;
            if args.out.json {
                return print_json(&answer);
            }
            writeln!(
                std::io::stdout(),
                "removed {name} (the file was not touched)"
            )?;
            Ok(())
        }
        Some(Action::Load { name, keep_alive }) => {
            let client = connect(config_file, &args.client)?;
            let body = json!({ "keep_alive": keep_alive });
            let answer = client
                .call(Method::POST, &model_path(&name, "/load"), Some(&body))
                .await?;
            if args.out.json {
                return print_json(&answer);
            }
            writeln!(
                std::io::stdout(),
                "loaded {name} in {:.1} s · {}",
                answer["load_ms"].as_f64().unwrap_or(0.0) / 1000.0,
                expiry(&answer["model"]["expires_at"])
            )?;
            Ok(())
        }
        Some(Action::Unload { name }) => {
            let client = connect(config_file, &args.client)?;
            let answer = client
                .call(Method::POST, &model_path(&name, "/unload"), None)
                .await?;
            if args.out.json {
                return print_json(&answer);
            }
            if answer["unloaded"] == true {
                writeln!(std::io::stdout(), "unloaded {name}")?;
            } else {
                writeln!(std::io::stdout(), "{name} was not loaded")?;
            }
            Ok(())
        }
    }
}

/// A model's API path. Names are letters, digits and `._-:` (all valid in a path segment);
/// anything else is encoded, and the daemon then answers `unknown_model`.
pub(super) fn model_path(name: &str, tail: &str) -> String {
    let segment: String = name
        .split(':')
        .map(percent_encode)
        .collect::<Vec<_>>()
        .join(":");
    format!("/api/v1/models/{segment}{tail}")
}

/// Adds a model: the daemon hashes it (seconds to minutes for multi-GB files) while this shows
/// the share done.
async fn add(client: &Client, path: &Path, name: Option<&str>, json: bool) -> anyhow::Result<()> {
    // The daemon's working directory is not ours: send an absolute path.
    let path = std::path::absolute(path)?;
    let body = json!({
        "path": path.to_str().ok_or_else(|| anyhow::anyhow!("{}: not a UTF-8 path", path.display()))?,
        "name": name,
    });
    let show = !json && std::io::stderr().is_terminal();
    let request = client.call(Method::POST, "/api/v1/models", Some(&body));
    tokio::pin!(request);
    let answer = loop {
        tokio::select! {
            answer = &mut request => break answer,
            () = tokio::time::sleep(PROGRESS_EVERY), if show => {
                if let Ok((_, list)) = client.request(Method::GET, "/api/v1/models", None).await {
                    if let Some(progress) = list["adding"][0]["progress"].as_f64() {
                        eprint!("\rhashing {}: {:>3.0}%", path.display(), progress * 100.0);
                    }
                }
            }
        }
    };
    if show {
        eprint!("\r\x1b[K");
    }
    let answer = answer?;
    if json {
        return print_json(&answer);
    }
    let meta = &answer["metadata"];
    writeln!(
        std::io::stdout(),
        "{} {} ({} MB, {}, {}, {} template) · sha256 {}",
        if answer["replaced"] == true {
            "re-added"
        } else {
            "added"
        },
        answer["name"].as_str().unwrap_or("?"),
        answer["size"].as_u64().unwrap_or(0) / 1_000_000,
        meta["architecture"].as_str().unwrap_or("?"),
        meta["quantization"].as_str().unwrap_or("?"),
        meta["template_family"]
            .as_str()
            .unwrap_or(if meta["chat_template"] == true {
                "own"
            } else {
                "no"
            }),
        answer["sha256"].as_str().unwrap_or("?")
    )?;
    writeln!(
        std::io::stdout(),
        "use it: hearth chat --model {0} · hearth models load {0}",
        answer["name"].as_str().unwrap_or("?")
    )?;
    Ok(())
}

async fn list(
    config_file: Option<&Path>,
    client_args: &ClientArgs,
    models_dir: Option<PathBuf>,
    out: JsonArg,
) -> anyhow::Result<()> {
    let target = target(config_file, client_args)?;
    // A running daemon knows more (verified headers, what is loaded): ask it first.
    if let Ok((status, list)) = Client::new(&target.socket)
        .request(Method::GET, "/api/v1/models", None)
        .await
    {
        if status.is_success() {
            if out.json {
                return print_json(&list);
            }
            return models_table(list["models"].as_array().map_or(&[][..], Vec::as_slice));
        }
    }
    let dir = match &models_dir {
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
    if out.json {
        return print_json(&json!({"models_dir": dir, "models": rows}));
    }
    writeln!(
        std::io::stdout().lock(),
        "models dir: {} (no daemon running: start one to see each file verified, with its metadata, and your added models)",
        dir.display()
    )?;
    models_table(&rows)
}

/// "unloads in 29 min" from an `expires_at` (ms since the epoch), or "stays loaded".
pub(super) fn expiry(expires_at: &Value) -> String {
    let Some(at) = expires_at.as_u64() else {
        return "stays loaded while in use or with no TTL".into();
    };
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX));
    let left = at.saturating_sub(now) / 1000;
    match left {
        0..=59 => format!("unloads in {left} s"),
        60..=7199 => format!("unloads in {} min", left / 60),
        _ => format!("unloads in {} h", left / 3600),
    }
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
        if row["source"] == "user" {
            note.push("added".to_string());
        }
        if let Some(family) = meta["template_family"].as_str() {
            note.push(format!("{family} template"));
        }
        if row["state"] == "loaded" {
            note.push(expiry(&row["expires_at"]));
        }
        if let Some(error) = row["error"].as_str() {
            note.push(one_line(error, 60));
        }
        if row["state"] == "unpinned" {
            note.push("not added: hearth models add FILE".to_string());
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
