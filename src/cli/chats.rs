//! `hearth chats`: list, show, rename, delete a user's chats, or cancel a reply being generated.

use std::io::Write;
use std::path::Path;

use http::Method;
use serde_json::json;

use super::chat::resolve_chat;
use super::{age, connect, delete_each, fetch, one_line, ClientArgs, JsonArg, UserArgs};

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
            let Some(list) = fetch(
                &client,
                Method::GET,
                &format!("/api/v1/users/{user_id}/chats?limit={limit}"),
                None,
                args.out,
            )
            .await?
            else {
                return Ok(());
            };
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
            let Some(chat) = fetch(
                &client,
                Method::GET,
                &format!("/api/v1/chats/{id}"),
                None,
                args.out,
            )
            .await?
            else {
                return Ok(());
            };
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
            let Some(chat) = fetch(
                &client,
                Method::PATCH,
                &format!("/api/v1/chats/{id}"),
                Some(&json!({"title": title.join(" ")})),
                args.out,
            )
            .await?
            else {
                return Ok(());
            };
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
            let Some(answer) = fetch(
                &client,
                Method::POST,
                &format!("/api/v1/chats/{id}/cancel"),
                None,
                args.out,
            )
            .await?
            else {
                return Ok(());
            };
            if answer["cancelled"] == true {
                writeln!(out, "cancelled the reply in {id}")?;
            } else {
                writeln!(out, "no reply was being generated in {id}")?;
            }
        }
    }
    Ok(())
}
