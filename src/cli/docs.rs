//! `hearth docs`, `hearth search` and `hearth embed`: documents of the library or of a chat
//! (uploads with a progress bar from the upload's SSE events), search over them, raw embeddings.

use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::Context;
use http::Method;
use serde_json::{json, Value};

use super::chat::resolve_chat;
use super::{
    age, connect, delete_each, fetch, one_line, print_json, CliExit, ClientArgs, JsonArg, UserArgs,
};
use crate::client::{Client, ClientError};

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
            let Some(list) = fetch(&client, Method::GET, &path, None, args.out).await? else {
                return Ok(());
            };
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
    let Some(answer) = fetch(
        &client,
        Method::POST,
        "/api/v1/search",
        Some(&body),
        args.out,
    )
    .await?
    else {
        return Ok(());
    };
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
