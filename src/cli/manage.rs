//! The commands that manage what a running daemon holds: `chats`, `docs`, `search`, `memories`,
//! `settings`, and the read-only `ps`, `models` and `events`. Each is a thin layer over one or two
//! API calls: it prints a short table for people, or the API's own JSON with `--json` for scripts.

use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::Context;
use http::Method;
use serde_json::{json, Value};

use super::chat::resolve_chat;
use super::{age, connect, one_line, print_json, target, CliExit, ClientArgs, UserArgs};
use crate::client::{Client, ClientError};
use crate::models::Manifest;

/// `--json`: the API's JSON instead of a table.
#[derive(clap::Args, Clone, Copy)]
pub(super) struct JsonArg {
    /// Print the API's JSON answer instead of a table.
    #[arg(long, global = true)]
    json: bool,
}

/// Runs `delete` for each id; prints the line it returns per id, or with `--json` one object
/// `{"deleted": [...]}` of the values it returns. Stops at the first failure.
async fn delete_each(
    ids: Vec<String>,
    as_json: bool,
    mut delete: impl AsyncFnMut(String) -> anyhow::Result<(String, Value)>,
) -> anyhow::Result<()> {
    let mut deleted = Vec::new();
    for id in ids {
        let (line, value) = delete(id).await?;
        if !as_json {
            writeln!(std::io::stdout().lock(), "{line}")?;
        }
        deleted.push(value);
    }
    if as_json {
        print_json(&json!({ "deleted": deleted }))?;
    }
    Ok(())
}

// === ps / models ===

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

// === chats ===

#[derive(clap::Args)]
pub(super) struct ChatsArgs {
    #[command(flatten)]
    client: ClientArgs,
    #[command(flatten)]
    user: UserArgs,
    #[command(flatten)]
    out: JsonArg,
    #[command(subcommand)]
    action: Option<ChatsAction>,
}

#[derive(clap::Subcommand)]
enum ChatsAction {
    /// Your chats, most recently updated first (the default).
    List {
        /// Most chats to list.
        #[arg(long, value_name = "N", default_value_t = 50)]
        limit: u32,
    },
    /// A chat with its messages and their sources.
    Show { id: String },
    /// Give a chat a title (automatic titles never replace it).
    Rename {
        id: String,
        #[arg(required = true, num_args = 1..)]
        title: Vec<String>,
    },
    /// Delete chats with their messages and documents.
    Rm {
        #[arg(required = true, num_args = 1..)]
        ids: Vec<String>,
    },
    /// Stop the reply being generated in a chat (the partial reply is kept).
    Cancel { id: String },
}

pub(super) async fn chats(config_file: Option<&Path>, args: ChatsArgs) -> anyhow::Result<()> {
    let client = connect(config_file, &args.client)?;
    let user_id = client.user_id(&args.user.name()).await?;
    let mut out = std::io::stdout().lock();
    match args.action.unwrap_or(ChatsAction::List { limit: 50 }) {
        ChatsAction::List { limit } => {
            let list = client
                .call(
                    Method::GET,
                    &format!("/api/v1/users/{user_id}/chats?limit={limit}"),
                    None,
                )
                .await?;
            if args.out.json {
                return print_json(&list);
            }
            let chats = list["chats"].as_array().cloned().unwrap_or_default();
            if chats.is_empty() {
                writeln!(out, "no chats yet (start one with `hearth chat`)")?;
                return Ok(());
            }
            writeln!(out, "{:<36}  {:>4}  {:<9}  TITLE", "ID", "MSGS", "UPDATED")?;
            for chat in &chats {
                writeln!(
                    out,
                    "{:<36}  {:>4}  {:<9}  {}",
                    chat["id"].as_str().unwrap_or("?"),
                    chat["message_count"].as_u64().unwrap_or(0),
                    age(&chat["updated_at"]),
                    one_line(chat["title"].as_str().unwrap_or(""), 60)
                )?;
            }
        }
        ChatsAction::Show { id } => {
            let id = resolve_chat(&client, &user_id, &id).await?;
            let chat = client
                .call(Method::GET, &format!("/api/v1/chats/{id}"), None)
                .await?;
            if args.out.json {
                return print_json(&chat);
            }
            writeln!(
                out,
                "{} · {} · {} messages",
                chat["id"].as_str().unwrap_or("?"),
                chat["title"]
                    .as_str()
                    .filter(|t| !t.is_empty())
                    .unwrap_or("(untitled)"),
                chat["message_count"]
            )?;
            for m in chat["messages"].as_array().into_iter().flatten() {
                let who = match m["role"].as_str() {
                    Some("user") => "you",
                    Some(other) => other,
                    None => "?",
                };
                writeln!(out, "\n{who}: {}", m["content"].as_str().unwrap_or(""))?;
                for s in m["sources"].as_array().into_iter().flatten() {
                    writeln!(out, "  {}", super::chat::source_line(s))?;
                }
            }
        }
        ChatsAction::Rename { id, title } => {
            let id = resolve_chat(&client, &user_id, &id).await?;
            let chat = client
                .call(
                    Method::PATCH,
                    &format!("/api/v1/chats/{id}"),
                    Some(&json!({"title": title.join(" ")})),
                )
                .await?;
            if args.out.json {
                return print_json(&chat);
            }
            writeln!(
                out,
                "renamed {id}: {}",
                chat["title"].as_str().unwrap_or("")
            )?;
        }
        ChatsAction::Rm { ids } => {
            delete_each(ids, args.out.json, async |id| {
                let id = resolve_chat(&client, &user_id, &id).await?;
                client
                    .call(Method::DELETE, &format!("/api/v1/chats/{id}"), None)
                    .await?;
                Ok((format!("deleted {id}"), json!(id)))
            })
            .await?;
        }
        ChatsAction::Cancel { id } => {
            let id = resolve_chat(&client, &user_id, &id).await?;
            let answer = client
                .call(Method::POST, &format!("/api/v1/chats/{id}/cancel"), None)
                .await?;
            if args.out.json {
                return print_json(&answer);
            }
            if answer["cancelled"] == true {
                writeln!(out, "cancelled the reply in {id}")?;
            } else {
                writeln!(out, "no reply was being generated in {id}")?;
            }
        }
    }
    Ok(())
}

// === docs / search / embed ===

#[derive(clap::Args)]
pub(super) struct DocsArgs {
    #[command(flatten)]
    client: ClientArgs,
    #[command(flatten)]
    user: UserArgs,
    #[command(flatten)]
    out: JsonArg,
    #[command(subcommand)]
    action: Option<DocsAction>,
}

#[derive(clap::Subcommand)]
enum DocsAction {
    /// Documents of the library, or of one chat (the default).
    List {
        /// A chat's documents instead of the library's.
        #[arg(long, value_name = "ID")]
        chat: Option<String>,
    },
    /// Upload files (with progress); into the library unless --chat.
    Upload {
        /// Upload into this chat instead of the library.
        #[arg(long, value_name = "ID")]
        chat: Option<String>,
        #[arg(required = true, num_args = 1..)]
        paths: Vec<PathBuf>,
    },
    /// Delete documents with their chunks and vectors.
    Rm {
        #[arg(required = true, num_args = 1..)]
        ids: Vec<String>,
    },
}

/// The documents path of the library or of a chat.
async fn docs_path(client: &Client, user: &UserArgs, chat: Option<&str>) -> anyhow::Result<String> {
    Ok(match chat {
        Some(chat) => {
            let user_id = client.user_id(&user.name()).await?;
            let id = resolve_chat(client, &user_id, chat).await?;
            format!("/api/v1/chats/{id}/documents")
        }
        None => "/api/v1/library/documents".into(),
    })
}

pub(super) async fn docs(config_file: Option<&Path>, args: DocsArgs) -> anyhow::Result<()> {
    let client = connect(config_file, &args.client)?;
    match args.action.unwrap_or(DocsAction::List { chat: None }) {
        DocsAction::List { chat } => {
            let path = docs_path(&client, &args.user, chat.as_deref()).await?;
            let list = client.call(Method::GET, &path, None).await?;
            if args.out.json {
                return print_json(&list);
            }
            let mut out = std::io::stdout().lock();
            let docs = list["documents"].as_array().cloned().unwrap_or_default();
            if docs.is_empty() {
                writeln!(
                    out,
                    "no documents (add some with `hearth docs upload FILE`)"
                )?;
                return Ok(());
            }
            writeln!(
                out,
                "{:<36}  {:<8}  {:>6}  {:>9}  {:<9}  FILE",
                "ID", "FORMAT", "CHUNKS", "SIZE", "ADDED"
            )?;
            for d in &docs {
                writeln!(
                    out,
                    "{:<36}  {:<8}  {:>6}  {:>6} KB  {:<9}  {}",
                    d["id"].as_str().unwrap_or("?"),
                    d["format"].as_str().unwrap_or("?"),
                    d["chunks"].as_u64().unwrap_or(0),
                    d["size"].as_u64().unwrap_or(0).div_ceil(1024),
                    age(&d["created_at"]),
                    d["filename"].as_str().unwrap_or("?")
                )?;
            }
        }
        DocsAction::Upload { chat, paths } => {
            let path = docs_path(&client, &args.user, chat.as_deref()).await?;
            let mut done = Vec::new();
            let mut failed = 0usize;
            for file in &paths {
                match upload_with_progress(&client, &path, file).await {
                    Ok(doc) => {
                        if !args.out.json {
                            writeln!(
                                std::io::stdout().lock(),
                                "{}  {} ({} chunks)",
                                doc["id"].as_str().unwrap_or("?"),
                                file.display(),
                                doc["chunks"]
                            )?;
                        }
                        done.push(doc);
                    }
                    Err(err) if paths.len() > 1 => {
                        failed += 1;
                        writeln!(std::io::stderr().lock(), "{}: {err:#}", file.display())?;
                    }
                    Err(err) => return Err(err.context(file.display().to_string())),
                }
            }
            if args.out.json {
                print_json(&json!({ "documents": done }))?;
            }
            if failed > 0 {
                anyhow::bail!("{failed} of {} files failed", paths.len());
            }
        }
        DocsAction::Rm { ids } => {
            delete_each(ids, args.out.json, async |id| {
                let answer = client
                    .call(Method::DELETE, &format!("/api/v1/documents/{id}"), None)
                    .await?;
                let line = format!("deleted {id} ({} chunks)", answer["chunks_deleted"]);
                Ok((line, answer))
            })
            .await?;
        }
    }
    Ok(())
}

/// Uploads one file to `path` (a documents endpoint) with a progress bar on stderr; returns the
/// stored document.
pub(super) async fn upload_with_progress(
    client: &Client,
    path: &str,
    file: &Path,
) -> anyhow::Result<Value> {
    let bytes = std::fs::read(file).with_context(|| file.display().to_string())?;
    let name = file
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| file.display().to_string());
    let bar = indicatif::ProgressBar::new(100);
    bar.set_style(
        indicatif::ProgressStyle::with_template("{spinner} {prefix} {wide_bar} {pos:>3}% {msg}")
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
    );
    bar.set_prefix(one_line(&name, 40));
    bar.set_message("uploading");
    let result = async {
        let mut events = client.upload_stream(path, &name, &bytes).await?;
        while let Some(event) = events.next().await? {
            match event.event.as_str() {
                "progress" => {
                    bar.set_position(event.data["progress"].as_u64().unwrap_or(0));
                    bar.set_message(event.data["stage"].as_str().unwrap_or("").to_string());
                }
                "ready" => return Ok(event.data["document"].clone()),
                "error" => return Err(ClientError::event(&event.data).into()),
                _ => {}
            }
        }
        anyhow::bail!("the upload stream ended without a result")
    }
    .await;
    bar.finish_and_clear();
    result
}

#[derive(clap::Args)]
pub(super) struct SearchArgs {
    #[command(flatten)]
    client: ClientArgs,
    #[command(flatten)]
    user: UserArgs,
    #[command(flatten)]
    out: JsonArg,
    /// Where to search: `library`, or `chat:ID` (a chat's documents).
    #[arg(long, default_value = "library", value_name = "library|chat:ID")]
    scope: String,
    /// How many excerpts.
    #[arg(short, long, default_value_t = 5)]
    k: u32,
    #[arg(required = true, num_args = 1..)]
    query: Vec<String>,
}

pub(super) async fn search(config_file: Option<&Path>, args: SearchArgs) -> anyhow::Result<()> {
    let client = connect(config_file, &args.client)?;
    let scope = match args.scope.strip_prefix("chat:") {
        Some(id) => {
            let user_id = client.user_id(&args.user.name()).await?;
            format!("chat:{}", resolve_chat(&client, &user_id, id).await?)
        }
        None if args.scope == "library" => args.scope.clone(),
        None => {
            return Err(CliExit::usage(format!(
                "--scope: `library` or `chat:ID`, not {:?}",
                args.scope
            )))
        }
    };
    let body = json!({"scope": scope, "query": args.query.join(" "), "k": args.k});
    let answer = client
        .call(Method::POST, "/api/v1/search", Some(&body))
        .await?;
    if args.out.json {
        return print_json(&answer);
    }
    let mut out = std::io::stdout().lock();
    let results = answer["results"].as_array().cloned().unwrap_or_default();
    if results.is_empty() {
        writeln!(out, "nothing found in {scope}")?;
    }
    for r in &results {
        let page = r["page"]
            .as_u64()
            .map(|p| format!(", p. {p}"))
            .unwrap_or_default();
        writeln!(
            out,
            "{:.2}  {}{page}\n      {}",
            r["score"].as_f64().unwrap_or(0.0),
            r["filename"].as_str().unwrap_or("?"),
            one_line(r["text"].as_str().unwrap_or(""), 160)
        )?;
    }
    Ok(())
}

#[derive(clap::Args)]
pub(super) struct EmbedArgs {
    #[command(flatten)]
    client: ClientArgs,
    /// Print the API's whole answer (every vector) as JSON.
    #[arg(long)]
    json: bool,
    /// Texts to embed, one vector each.
    #[arg(required = true, num_args = 1..)]
    texts: Vec<String>,
}

pub(super) async fn embed(config_file: Option<&Path>, args: EmbedArgs) -> anyhow::Result<()> {
    let client = connect(config_file, &args.client)?;
    let answer = client
        .call(
            Method::POST,
            "/api/v1/embeddings",
            Some(&json!({ "input": args.texts })),
        )
        .await?;
    if args.json {
        return print_json(&answer);
    }
    let mut out = std::io::stdout().lock();
    for item in answer["data"].as_array().into_iter().flatten() {
        let vector = item["embedding"].as_array().cloned().unwrap_or_default();
        let head: Vec<String> = vector
            .iter()
            .take(4)
            .map(|v| format!("{:.4}", v.as_f64().unwrap_or(0.0)))
            .collect();
        let index = item["index"].as_u64().unwrap_or(0);
        let text = usize::try_from(index)
            .ok()
            .and_then(|i| args.texts.get(i))
            .map(|t| one_line(t, 40))
            .unwrap_or_default();
        writeln!(
            out,
            "{text:<40}  {} dims  [{}, …]",
            vector.len(),
            head.join(", ")
        )?;
    }
    Ok(())
}

// === memories / settings ===

#[derive(clap::Args)]
pub(super) struct MemoriesArgs {
    #[command(flatten)]
    client: ClientArgs,
    #[command(flatten)]
    user: UserArgs,
    #[command(flatten)]
    out: JsonArg,
    #[command(subcommand)]
    action: Option<MemoriesAction>,
}

#[derive(clap::Subcommand)]
enum MemoriesAction {
    /// Your memories, newest first (the default), or the ones closest to --query.
    List {
        #[arg(long, value_name = "TEXT")]
        query: Option<String>,
        #[arg(long, value_name = "N", default_value_t = 50)]
        limit: u32,
    },
    /// Remember a fact as written, or (--infer) let the model pick the facts out of the text.
    Add {
        #[arg(long)]
        infer: bool,
        #[arg(required = true, num_args = 1..)]
        text: Vec<String>,
    },
    /// Replace a memory's text.
    Edit {
        id: String,
        #[arg(required = true, num_args = 1..)]
        text: Vec<String>,
    },
    /// Forget memories by id, or all of them with --all.
    Forget {
        #[arg(long, conflicts_with = "ids")]
        all: bool,
        #[arg(required_unless_present = "all")]
        ids: Vec<String>,
    },
    /// Every change to your memories (or to one memory), with its source.
    History { id: Option<String> },
}

pub(super) async fn memories(config_file: Option<&Path>, args: MemoriesArgs) -> anyhow::Result<()> {
    let client = connect(config_file, &args.client)?;
    let user_id = client.user_id(&args.user.name()).await?;
    let mut out = std::io::stdout().lock();
    let action = args.action.unwrap_or(MemoriesAction::List {
        query: None,
        limit: 50,
    });
    match action {
        MemoriesAction::List { query, limit } => {
            let mut path = format!("/api/v1/users/{user_id}/memories?limit={limit}");
            if let Some(q) = &query {
                path.push_str("&query=");
                path.push_str(&percent_encode(q));
            }
            let list = client.call(Method::GET, &path, None).await?;
            if args.out.json {
                return print_json(&list);
            }
            let memories = list["memories"].as_array().cloned().unwrap_or_default();
            if memories.is_empty() {
                writeln!(out, "no memories")?;
            }
            for m in &memories {
                let score = m["score"]
                    .as_f64()
                    .map(|s| format!("{s:.2}  "))
                    .unwrap_or_default();
                writeln!(
                    out,
                    "{}  {score}{:<9}  {}",
                    m["id"].as_str().unwrap_or("?"),
                    m["origin"].as_str().unwrap_or("?"),
                    m["text"].as_str().unwrap_or("")
                )?;
            }
        }
        MemoriesAction::Add { infer, text } => {
            let answer = client
                .call(
                    Method::POST,
                    &format!("/api/v1/users/{user_id}/memories"),
                    Some(&json!({"text": text.join(" "), "infer": infer})),
                )
                .await?;
            if args.out.json {
                return print_json(&answer);
            }
            if answer["queued"] == true {
                writeln!(
                    out,
                    "queued: the model will pick out the facts (`hearth events` shows the result)"
                )?;
            } else {
                writeln!(
                    out,
                    "{} {}: {}",
                    answer["change"].as_str().unwrap_or("?"),
                    answer["memory"]["id"].as_str().unwrap_or("?"),
                    answer["memory"]["text"].as_str().unwrap_or("")
                )?;
            }
        }
        MemoriesAction::Edit { id, text } => {
            let answer = client
                .call(
                    Method::PATCH,
                    &format!("/api/v1/memories/{id}?user_id={user_id}"),
                    Some(&json!({"text": text.join(" ")})),
                )
                .await?;
            if args.out.json {
                return print_json(&answer);
            }
            writeln!(out, "edited {id}")?;
        }
        MemoriesAction::Forget { all: true, .. } => {
            let answer = client
                .call(
                    Method::DELETE,
                    &format!("/api/v1/users/{user_id}/memories"),
                    None,
                )
                .await?;
            if args.out.json {
                return print_json(&answer);
            }
            writeln!(out, "forgot {} memories", answer["deleted"])?;
        }
        MemoriesAction::Forget { ids, .. } => {
            delete_each(ids, args.out.json, async |id| {
                client
                    .call(
                        Method::DELETE,
                        &format!("/api/v1/memories/{id}?user_id={user_id}"),
                        None,
                    )
                    .await?;
                Ok((format!("forgot {id}"), json!(id)))
            })
            .await?;
        }
        MemoriesAction::History { id } => {
            let path = match &id {
                Some(id) => format!("/api/v1/memories/{id}/history?user_id={user_id}"),
                None => format!("/api/v1/users/{user_id}/memories/history"),
            };
            let answer = client.call(Method::GET, &path, None).await?;
            if args.out.json {
                return print_json(&answer);
            }
            for e in answer["history"].as_array().into_iter().flatten() {
                let text = match (e["old_text"].as_str(), e["new_text"].as_str()) {
                    (Some(old), Some(new)) => format!("{old} → {new}"),
                    (None, Some(text)) | (Some(text), None) => text.to_string(),
                    (None, None) => e["detail"].as_str().unwrap_or("").to_string(),
                };
                writeln!(
                    out,
                    "{:<9}  {:<14}  {}",
                    age(&e["at"]),
                    e["event"].as_str().unwrap_or("?"),
                    one_line(&text, 100)
                )?;
            }
        }
    }
    Ok(())
}

/// Percent-encodes a query parameter value (RFC 3986 unreserved characters stay).
fn percent_encode(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for byte in text.bytes() {
        if byte.is_ascii_alphanumeric() || b"-._~".contains(&byte) {
            out.push(char::from(byte));
        } else {
            out.push_str(&format!("%{byte:02X}"));
        }
    }
    out
}

#[derive(clap::Args)]
pub(super) struct SettingsArgs {
    #[command(flatten)]
    client: ClientArgs,
    #[command(flatten)]
    user: UserArgs,
    #[command(flatten)]
    out: JsonArg,
    /// Settings to change, as KEY=VALUE (values are JSON where they parse as JSON, else text):
    /// `temperature=0.2 use_memory=true system_prompt="Be brief"`. None: show them.
    changes: Vec<String>,
}

pub(super) async fn settings(config_file: Option<&Path>, args: SettingsArgs) -> anyhow::Result<()> {
    let client = connect(config_file, &args.client)?;
    let user_id = client.user_id(&args.user.name()).await?;
    let path = format!("/api/v1/users/{user_id}/settings");
    let settings = if args.changes.is_empty() {
        client.call(Method::GET, &path, None).await?
    } else {
        let mut patch = serde_json::Map::new();
        for change in &args.changes {
            let Some((key, value)) = change.split_once('=') else {
                return Err(CliExit::usage(format!(
                    "{change:?}: write KEY=VALUE, e.g. temperature=0.2"
                )));
            };
            let value = serde_json::from_str(value).unwrap_or_else(|_| json!(value));
            patch.insert(key.trim().to_string(), value);
        }
        client
            .call(Method::PUT, &path, Some(&Value::Object(patch)))
            .await?
    };
    if args.out.json {
        return print_json(&settings);
    }
    let mut out = std::io::stdout().lock();
    if let Some(map) = settings.as_object() {
        for (key, value) in map {
            writeln!(out, "{key} = {value}")?;
        }
    }
    Ok(())
}

// === events ===

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
