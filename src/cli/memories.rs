//! `hearth memories` and `hearth settings`: a user's long-term memories and their history, and
//! the generation settings.

use std::io::Write;
use std::path::Path;

use http::Method;
use serde_json::{json, Value};

use super::{
    age, connect, delete_each, fetch, one_line, percent_encode, print_json, CliExit, ClientArgs,
    JsonArg, UserArgs,
};

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
            let Some(list) = fetch(&client, Method::GET, &path, None, args.out).await? else {
                return Ok(());
            };
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
            let Some(answer) = fetch(
                &client,
                Method::POST,
                &format!("/api/v1/users/{user_id}/memories"),
                Some(&json!({"text": text.join(" "), "infer": infer})),
                args.out,
            )
            .await?
            else {
                return Ok(());
            };
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
            let edited = fetch(
                &client,
                Method::PATCH,
                &format!("/api/v1/memories/{id}?user_id={user_id}"),
                Some(&json!({"text": text.join(" ")})),
                args.out,
            )
            .await?;
            if edited.is_some() {
                writeln!(out, "edited {id}")?;
            }
        }
        MemoriesAction::Forget { all: true, .. } => {
            let Some(answer) = fetch(
                &client,
                Method::DELETE,
                &format!("/api/v1/users/{user_id}/memories"),
                None,
                args.out,
            )
            .await?
            else {
                return Ok(());
            };
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
            let Some(answer) = fetch(&client, Method::GET, &path, None, args.out).await? else {
                return Ok(());
            };
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
