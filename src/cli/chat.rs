//! `hearth chat` and `hearth run`: one answer streamed to stdout, or an interactive session in the
//! terminal.
//!
//! The session keeps one chat across turns, streams tokens as they come, and uses rustyline for
//! line editing and history (`DATA_DIR/repl_history`). Ctrl-C during a reply cancels the reply
//! through the API (the partial reply is stored) and the session goes on; at the prompt it clears
//! the line (rustyline reads the key in raw mode, so no signal is raised there); Ctrl-D ends the
//! session. A message piped on stdin (`echo q | hearth chat`) is one non-interactive answer.

use std::io::{IsTerminal, Read, Write};
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::sys::Interrupts;
use http::Method;
use serde_json::{json, Value};

use super::lifecycle::wait_until_ready;
use super::{one_line, target, CliExit, ClientArgs, Exit, UserArgs};
use crate::client::{Client, ClientError};

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub(super) enum OnOff {
    On,
    Off,
}

/// What every chat command shares: which daemon, as whom, how long to wait, what context to use.
#[derive(clap::Args)]
pub(super) struct TurnArgs {
    #[command(flatten)]
    client: ClientArgs,
    #[command(flatten)]
    user: UserArgs,
    /// Continue this chat (its id, or a unique prefix of it) instead of starting a new one.
    #[arg(long, value_name = "ID")]
    chat: Option<String>,
    /// Search the chat's documents and the library for context (search mode `all`).
    #[arg(long)]
    docs: bool,
    /// Use long-term memory for these messages [default: the user's `use_memory` setting].
    #[arg(long, value_name = "on|off")]
    memory: Option<OnOff>,
    /// Seconds to wait for the daemon: for its socket to appear (one being started) and then for
    /// its model to load. Without it a missing daemon fails at once, and a loading model is waited
    /// for up to 30 s.
    #[arg(long, value_name = "SECS")]
    wait: Option<u64>,
    /// The model to answer with (loaded now if it is not) [default: your `model` setting, else
    /// the daemon's default].
    #[arg(long, value_name = "NAME")]
    model: Option<String>,
}

#[derive(clap::Args)]
pub(super) struct ChatArgs {
    #[command(flatten)]
    turn: TurnArgs,
    /// Sampling temperature for this message (0 = greedy).
    #[arg(long)]
    temperature: Option<f32>,
    /// Most tokens to generate.
    #[arg(long, value_name = "N")]
    max_tokens: Option<u32>,
    /// Print the answer as one JSON object (chat_id, reply, model, finish_reason, usage, sources)
    /// instead of streaming it.
    #[arg(long)]
    json: bool,
    /// The message. Without one: an interactive session on a terminal, else the message is read
    /// from stdin.
    message: Vec<String>,
}

#[derive(clap::Args)]
pub(super) struct RunArgs {
    #[command(flatten)]
    turn: TurnArgs,
    /// The model to chat with (loaded now if it is not; `hearth models` lists them).
    #[arg(value_name = "MODEL")]
    run_model: Option<String>,
}

/// How long a chat waits for a loading model when `--wait` is not given.
const DEFAULT_MODEL_WAIT: Duration = Duration::from_secs(30);
/// Chats `/chats` lists, most recent first.
const CHATS_LISTED: usize = 20;
/// Name of the session's line history in the data dir.
const HISTORY_FILE: &str = "repl_history";
/// Lines of history kept.
const HISTORY_LINES: usize = 1000;

pub(super) fn chat(config_file: Option<&Path>, args: ChatArgs) -> anyhow::Result<()> {
    let message = if args.message.is_empty() {
        stdin_message()?
    } else {
        Some(args.message.join(" "))
    };
    if message.is_none() && args.json {
        return Err(CliExit::usage("--json needs a message"));
    }
    let rt = super::runtime()?;
    let session = rt.block_on(Session::open(config_file, &args.turn))?;
    match message {
        Some(text) => {
            let mut overrides = serde_json::Map::new();
            if let Some(t) = args.temperature {
                overrides.insert("temperature".into(), json!(t));
            }
            if let Some(n) = args.max_tokens {
                overrides.insert("max_tokens".into(), json!(n));
            }
            rt.block_on(one_answer(session, &text, overrides, args.json))
        }
        None => repl(&rt, session),
    }
}

pub(super) fn run(config_file: Option<&Path>, mut args: RunArgs) -> anyhow::Result<()> {
    let rt = super::runtime()?;
    if args.run_model.is_some() {
        args.turn.model = args.run_model.take();
    }
    let session = rt.block_on(Session::open(config_file, &args.turn))?;
    match stdin_message()? {
        Some(text) => rt.block_on(one_answer(session, &text, serde_json::Map::new(), false)),
        None => repl(&rt, session),
    }
}

/// Loads `model` on the daemon (a name it does not know fails with the list of known ones).
async fn load_model(client: &Client, model: &str) -> anyhow::Result<()> {
    if std::io::stderr().is_terminal() {
        eprint!("loading {model}…");
    }
    let path = super::models::model_path(model, "/load");
    let result = client.call(Method::POST, &path, None).await;
    if std::io::stderr().is_terminal() {
        eprint!("\r\x1b[K");
    }
    result.map(drop)
}

/// The message piped on stdin; `None` when stdin is a terminal (an interactive session).
fn stdin_message() -> anyhow::Result<Option<String>> {
    if std::io::stdin().is_terminal() {
        return Ok(None);
    }
    let mut text = String::new();
    std::io::stdin().read_to_string(&mut text)?;
    if text.trim().is_empty() {
        return Err(CliExit::usage(
            "no message: give one as arguments or on stdin (or run this in a terminal)",
        ));
    }
    Ok(Some(text))
}

/// A conversation with the daemon: who, which chat, which context.
struct Session {
    client: Client,
    data_dir: PathBuf,
    user_id: String,
    /// `None` until the first message creates the chat (no empty chats from opening a session).
    chat_id: Option<String>,
    /// The model answering (shown); `chosen` is sent with each message when the user picked one.
    model: String,
    chosen: Option<String>,
    docs: bool,
    /// `None` follows the user's setting.
    memory: Option<bool>,
    /// Chat ids in the order `/chats` last showed them, for `/open N`.
    listed: Vec<String>,
}

impl Session {
    /// Waits for the daemon as `--wait` says, then resolves the user and the chat to continue.
    async fn open(config_file: Option<&Path>, args: &TurnArgs) -> anyhow::Result<Session> {
        let target = target(config_file, &args.client)?;
        let client = Client::new(&target.socket);
        let health = match args.wait {
            Some(secs) => wait_until_ready(&client, Duration::from_secs(secs), true).await?,
            None => wait_until_ready(&client, DEFAULT_MODEL_WAIT, false).await?,
        };
        let user_id = client.user_id(&args.user.name()).await?;
        if let Some(model) = &args.model {
            load_model(&client, model).await?;
        }
        let setting = client
            .call(
                Method::GET,
                &format!("/api/v1/users/{user_id}/settings"),
                None,
            )
            .await
            .ok()
            .and_then(|s| s["model"].as_str().map(str::to_string));
        let chat_id = match &args.chat {
            Some(id) => Some(resolve_chat(&client, &user_id, id).await?),
            None => None,
        };
        Ok(Session {
            client,
            data_dir: target.data_dir,
            user_id,
            chat_id,
            model: args
                .model
                .clone()
                .or(setting)
                .or_else(|| {
                    health["models"]["chat"]["name"]
                        .as_str()
                        .map(str::to_string)
                })
                .unwrap_or_else(|| "?".into()),
            chosen: args.model.clone(),
            docs: args.docs,
            memory: args.memory.map(|m| m == OnOff::On),
            listed: Vec::new(),
        })
    }

    /// The current chat, created on first use.
    async fn chat_id(&mut self) -> anyhow::Result<String> {
        if let Some(id) = &self.chat_id {
            return Ok(id.clone());
        }
        let chat = self
            .client
            .call(
                Method::POST,
                "/api/v1/chats",
                Some(&json!({"user_id": self.user_id})),
            )
            .await?;
        let id = chat["id"].as_str().unwrap_or_default().to_string();
        self.chat_id = Some(id.clone());
        Ok(id)
    }

    /// The request body of a message with this session's context choices.
    fn message_body(&self, text: &str, mut options: serde_json::Map<String, Value>) -> Value {
        if let Some(memory) = self.memory {
            options.insert("use_memory".into(), json!(memory));
        }
        if let Some(model) = &self.chosen {
            options.insert("model".into(), json!(model));
        }
        json!({
            "content": text,
            "options": options,
            "search_mode": if self.docs { "all" } else { "normal" },
        })
    }
}

/// Finds a chat of `user_id` by its id or a unique prefix of it.
pub(super) async fn resolve_chat(
    client: &Client,
    user_id: &str,
    id_or_prefix: &str,
) -> anyhow::Result<String> {
    // A whole id is used as given (the daemon says if it does not exist).
    if id_or_prefix.len() == 36 {
        return Ok(id_or_prefix.to_string());
    }
    let list = client
        .call(
            Method::GET,
            &format!("/api/v1/users/{user_id}/chats?limit=500"),
            None,
        )
        .await?;
    let matches: Vec<&str> = list["chats"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|c| c["id"].as_str())
        .filter(|id| id.starts_with(id_or_prefix))
        .collect();
    match matches.as_slice() {
        [id] => Ok((*id).to_string()),
        [] => Err(ClientError::Api {
            status: None,
            code: "chat_not_found".into(),
            message: format!("no chat of yours starts with {id_or_prefix:?}"),
        }
        .into()),
        _ => Err(CliExit::usage(format!(
            "{id_or_prefix:?} matches {} chats; give more of the id",
            matches.len()
        ))),
    }
}

/// The end of one streamed reply.
struct Reply {
    text: String,
    done: Value,
    sources: Vec<Value>,
    /// The `sources` event's `reason`: why a document search found no excerpt.
    no_source_reason: Option<String>,
}

/// Streams one reply. Tokens go to `out` as they arrive when `echo`; `interrupt` (the session's
/// SIGINT stream) cancels the reply through the API, and the stream then ends with `done`
/// (`finish_reason: cancelled`) after the partial reply is stored.
async fn stream_reply(
    client: &Client,
    chat_id: &str,
    body: &Value,
    out: &mut dyn Write,
    echo: bool,
    mut interrupt: Option<&mut Interrupts>,
) -> anyhow::Result<Reply> {
    let mut events = client
        .stream(&format!("/api/v1/chats/{chat_id}/messages"), body)
        .await?;
    let mut reply = Reply {
        text: String::new(),
        done: Value::Null,
        sources: Vec::new(),
        no_source_reason: None,
    };
    let mut cancelling = false;
    loop {
        // `EventStream::next` is cancel safe: a dropped call loses no bytes (they stay in the
        // body until a frame is returned, and a returned frame is buffered before any await).
        let event = tokio::select! {
            event = events.next() => event?,
            Some(()) = async {
                match interrupt.as_deref_mut() {
                    Some(sigint) => sigint.recv().await,
                    None => std::future::pending().await,
                }
            }, if !cancelling => {
                cancelling = true;
                client
                    .call(Method::POST, &format!("/api/v1/chats/{chat_id}/cancel"), None)
                    .await?;
                continue;
            }
        };
        let Some(event) = event else {
            anyhow::bail!("the stream ended without a final event");
        };
        match event.event.as_str() {
            "token" => {
                let piece = event.data["text"].as_str().unwrap_or("");
                reply.text.push_str(piece);
                if echo {
                    out.write_all(piece.as_bytes())?;
                    out.flush()?;
                }
            }
            "sources" => {
                reply.sources = event.data["sources"]
                    .as_array()
                    .cloned()
                    .unwrap_or_default();
                reply.no_source_reason = event.data["reason"].as_str().map(str::to_string);
            }
            "done" => {
                reply.done = event.data;
                return Ok(reply);
            }
            "error" => {
                if echo && !reply.text.is_empty() {
                    writeln!(out)?;
                }
                return Err(ClientError::event(&event.data).into());
            }
            _ => {}
        }
    }
}

/// Why a document search gave nothing, as a line under the answer.
fn no_source_line(reason: &str) -> String {
    match reason {
        "no_documents" => {
            "(no documents to search: add some with `hearth docs upload` or the drop folder)".into()
        }
        "no_match" => "(no passage of your documents matched this question)".into(),
        other => format!("(no document excerpt: {other})"),
    }
}

/// One source as a line under the answer: `[1] report.pdf, p. 2 (0.71)`; a fallback excerpt
/// that scored under the cut-off says so: `(0.18, weak match)`.
pub(super) fn source_line(source: &Value) -> String {
    let n = &source["n"];
    let weak = if source["below_threshold"].as_bool() == Some(true) {
        ", weak match"
    } else {
        ""
    };
    let score = source["score"].as_f64().unwrap_or(0.0);
    match source["type"].as_str() {
        Some("memory") => format!(
            "[{n}] memory: {} ({score:.2})",
            one_line(source["text"].as_str().unwrap_or(""), 70)
        ),
        _ => {
            let page = source["page"]
                .as_u64()
                .map(|p| format!(", p. {p}"))
                .unwrap_or_default();
            format!(
                "[{n}] {}{page} ({score:.2}{weak})",
                source["filename"].as_str().unwrap_or("?")
            )
        }
    }
}

async fn one_answer(
    mut session: Session,
    text: &str,
    options: serde_json::Map<String, Value>,
    as_json: bool,
) -> anyhow::Result<()> {
    let chat_id = session.chat_id().await?;
    let body = session.message_body(text, options);
    let mut out = std::io::stdout().lock();
    let reply = stream_reply(&session.client, &chat_id, &body, &mut out, !as_json, None).await?;
    let d = &reply.done;
    if as_json {
        return super::print_json(&json!({
            "chat_id": chat_id,
            "reply_id": d["reply_id"],
            "reply": reply.text,
            "model": d["model"],
            "finish_reason": d["finish_reason"],
            "usage": d["usage"],
            "sources": reply.sources,
            "no_source_reason": reply.no_source_reason,
        }));
    }
    writeln!(out)?;
    let mut err = std::io::stderr().lock();
    for source in &reply.sources {
        writeln!(err, "  {}", source_line(source))?;
    }
    if let Some(reason) = &reply.no_source_reason {
        writeln!(err, "  {}", no_source_line(reason))?;
    }
    writeln!(
        err,
        "[chat {chat_id} · {} tokens · {} tok/s · finish: {}; continue with --chat {chat_id}]",
        d["usage"]["completion_tokens"],
        d["timings"]["completion_tokens_per_s"],
        d["finish_reason"].as_str().unwrap_or("?"),
    )?;
    Ok(())
}

const HELP: &str = "\
Commands:
  /new              start a new chat
  /chats            list your recent chats
  /open ID|N        continue a chat (its id, a prefix of it, or its number in /chats)
  /title [TEXT]     show this chat's title, or rename it
  /docs on|off      search your documents and the library for each message
  /memory on|off    use long-term memory (default: your use_memory setting)
  /attach PATH      add a document to this chat (and turn /docs on)
  /model [NAME]     show the model answering, or switch to NAME (loaded now)
  /help             this list
Ctrl-C stops a reply; Ctrl-D (or /quit) ends the session.";

/// The interactive session.
fn repl(rt: &tokio::runtime::Runtime, mut session: Session) -> anyhow::Result<()> {
    // SIGINT becomes an event for the whole session (installed once: afterwards Ctrl-C no longer
    // ends the process while a reply streams).
    let mut sigint = {
        let _guard = rt.enter();
        Interrupts::install()?
    };
    let config = rustyline::Config::builder()
        .max_history_size(HISTORY_LINES)?
        .auto_add_history(false)
        .build();
    let mut editor: rustyline::DefaultEditor = rustyline::Editor::with_config(config)?;
    let history = session.data_dir.join(HISTORY_FILE);
    if session.data_dir.is_dir() {
        let _ = editor.load_history(&history);
    }
    {
        let mut out = std::io::stdout().lock();
        writeln!(
            out,
            "hearth · {} · {} · /help for commands, Ctrl-D to quit",
            session.model,
            match &session.chat_id {
                Some(id) => format!("chat {id}"),
                None => "new chat".into(),
            }
        )?;
    }
    loop {
        let line = match editor.readline(">>> ") {
            Ok(line) => line,
            Err(rustyline::error::ReadlineError::Interrupted) => continue,
            Err(rustyline::error::ReadlineError::Eof) => break,
            Err(err) => return Err(err.into()),
        };
        let line = line.trim();
        if line.is_empty() {
            continue;
        }
        let _ = editor.add_history_entry(line);
        let result = if let Some(command) = line.strip_prefix('/') {
            match rt.block_on(slash_command(&mut session, command)) {
                Ok(Flow::Quit) => break,
                Ok(Flow::Continue) => Ok(()),
                Err(err) => Err(err),
            }
        } else {
            // A Ctrl-C pressed after the last reply ended must not cancel this one.
            rt.block_on(async {
                while tokio::time::timeout(Duration::ZERO, sigint.recv())
                    .await
                    .is_ok()
                {}
            });
            rt.block_on(repl_turn(&mut session, line, &mut sigint))
        };
        if let Err(err) = result {
            if matches!(Exit::of(&err), Exit::NoDaemon) {
                return Err(err);
            }
            let _ = writeln!(std::io::stderr(), "error: {err:#}");
        }
    }
    if session.data_dir.is_dir() {
        let _ = editor.save_history(&history);
    }
    Ok(())
}

async fn repl_turn(
    session: &mut Session,
    text: &str,
    sigint: &mut Interrupts,
) -> anyhow::Result<()> {
    let chat_id = session.chat_id().await?;
    let body = session.message_body(text, serde_json::Map::new());
    let mut out = std::io::stdout().lock();
    let reply = stream_reply(
        &session.client,
        &chat_id,
        &body,
        &mut out,
        true,
        Some(sigint),
    )
    .await?;
    writeln!(out)?;
    match reply.done["finish_reason"].as_str() {
        Some("cancelled") => writeln!(out, "[cancelled]")?,
        Some("length") => writeln!(out, "[stopped: reply length limit]")?,
        _ => {}
    }
    if !reply.sources.is_empty() {
        writeln!(out, "sources:")?;
        for source in &reply.sources {
            writeln!(out, "  {}", source_line(source))?;
        }
    }
    if let Some(reason) = &reply.no_source_reason {
        writeln!(out, "  {}", no_source_line(reason))?;
    }
    Ok(())
}

enum Flow {
    Continue,
    Quit,
}

async fn slash_command(session: &mut Session, command: &str) -> anyhow::Result<Flow> {
    let (name, arg) = match command.split_once(char::is_whitespace) {
        Some((name, arg)) => (name, arg.trim()),
        None => (command, ""),
    };
    let mut out = std::io::stdout().lock();
    match name {
        "quit" | "exit" | "bye" => return Ok(Flow::Quit),
        "help" | "?" => {
            writeln!(out, "{HELP}")?;
            writeln!(
                out,
                "Now: chat {} · docs {} · memory {} · model {}",
                session.chat_id.as_deref().unwrap_or("(new)"),
                if session.docs { "on" } else { "off" },
                match session.memory {
                    Some(true) => "on",
                    Some(false) => "off",
                    None => "as in your settings",
                },
                session.model
            )?;
        }
        "new" => {
            session.chat_id = None;
            writeln!(out, "new chat")?;
        }
        "chats" => {
            let list = session
                .client
                .call(
                    Method::GET,
                    &format!(
                        "/api/v1/users/{}/chats?limit={CHATS_LISTED}",
                        session.user_id
                    ),
                    None,
                )
                .await?;
            let chats = list["chats"].as_array().cloned().unwrap_or_default();
            session.listed = chats
                .iter()
                .filter_map(|c| c["id"].as_str().map(str::to_string))
                .collect();
            if chats.is_empty() {
                writeln!(out, "no chats yet")?;
            }
            for (i, chat) in chats.iter().enumerate() {
                let current = chat["id"].as_str() == session.chat_id.as_deref();
                writeln!(
                    out,
                    "{}{:>2}. {}  {}  ({} messages, {})",
                    if current { "*" } else { " " },
                    i + 1,
                    chat["id"].as_str().unwrap_or("?"),
                    one_line(chat["title"].as_str().unwrap_or(""), 50),
                    chat["message_count"],
                    super::age(&chat["updated_at"]),
                )?;
            }
        }
        "open" => {
            if arg.is_empty() {
                writeln!(out, "usage: /open ID|N (see /chats)")?;
                return Ok(Flow::Continue);
            }
            let id = match arg.parse::<usize>() {
                Ok(n) if n >= 1 && n <= session.listed.len() && arg.len() <= 3 => {
                    session.listed[n - 1].clone()
                }
                _ => resolve_chat(&session.client, &session.user_id, arg).await?,
            };
            let chat = session
                .client
                .call(Method::GET, &format!("/api/v1/chats/{id}"), None)
                .await?;
            session.chat_id = Some(id.clone());
            writeln!(
                out,
                "opened chat {id}: {} ({} messages)",
                chat["title"].as_str().unwrap_or(""),
                chat["message_count"]
            )?;
            let messages = chat["messages"].as_array().cloned().unwrap_or_default();
            for m in messages.iter().skip(messages.len().saturating_sub(2)) {
                writeln!(
                    out,
                    "  {}: {}",
                    m["role"].as_str().unwrap_or("?"),
                    one_line(m["content"].as_str().unwrap_or(""), 100)
                )?;
            }
        }
        "title" => {
            let Some(id) = session.chat_id.clone() else {
                writeln!(out, "no chat yet: send a message first")?;
                return Ok(Flow::Continue);
            };
            let chat = if arg.is_empty() {
                session
                    .client
                    .call(Method::GET, &format!("/api/v1/chats/{id}"), None)
                    .await?
            } else {
                session
                    .client
                    .call(
                        Method::PATCH,
                        &format!("/api/v1/chats/{id}"),
                        Some(&json!({ "title": arg })),
                    )
                    .await?
            };
            let title = chat["title"].as_str().unwrap_or("");
            if title.is_empty() {
                writeln!(out, "no title yet")?;
            } else {
                writeln!(out, "{title}")?;
            }
        }
        "docs" | "memory" => {
            let on = match arg {
                "on" => true,
                "off" => false,
                _ => {
                    writeln!(out, "usage: /{name} on|off")?;
                    return Ok(Flow::Continue);
                }
            };
            if name == "docs" {
                session.docs = on;
            } else {
                session.memory = Some(on);
            }
            writeln!(out, "{name} {arg}")?;
        }
        "model" => {
            if arg.is_empty() || arg == session.model {
                writeln!(out, "model {}", session.model)?;
            } else {
                drop(out);
                match load_model(&session.client, arg).await {
                    Ok(()) => {
                        session.model = arg.to_string();
                        session.chosen = Some(arg.to_string());
                        writeln!(std::io::stdout(), "model {arg}")?;
                    }
                    Err(err) => writeln!(std::io::stdout(), "{err}")?,
                }
            }
        }
        "attach" => {
            if arg.is_empty() {
                writeln!(out, "usage: /attach PATH")?;
                return Ok(Flow::Continue);
            }
            drop(out);
            let chat_id = session.chat_id().await?;
            let doc = super::docs::upload_with_progress(
                &session.client,
                &format!("/api/v1/chats/{chat_id}/documents"),
                Path::new(arg),
            )
            .await?;
            session.docs = true;
            writeln!(
                std::io::stdout().lock(),
                "attached {} ({} chunks); docs on",
                doc["filename"].as_str().unwrap_or(arg),
                doc["chunks"]
            )?;
        }
        _ => writeln!(out, "unknown command /{name}; /help lists them")?,
    }
    Ok(Flow::Continue)
}
