//! hearth: an offline local AI daemon in one binary.
//!
//! # Layout
//!
//! - [`config`]: defaults < file < environment < flags, validated before anything binds.
//! - [`models`]: the pinned model manifest and sha256 verification before any parser runs.
//! - [`store`]: every persistent record, in sled; the only module that knows sled.
//! - [`llm`]: llama.cpp inference on a dedicated thread; the only module with FFI.
//! - [`chat`]: a chat turn from message to stored reply; prompt assembly within a token budget;
//!   retrieval of document chunks as cited context.
//! - [`embed`]: ONNX sentence embeddings on a dedicated thread, loaded on first use.
//! - [`ingest`]: a file → extracted text → chunks → vectors → one stored document.
//! - [`index`]: vector search per scope (exact scan; an HNSW graph for large scopes).
//! - [`library`]: the drop folder: watched folders kept in sync with the `library` scope.
//! - [`memory`]: long-term memories (dedup, recall, extraction prompt and grammar) and titles.
//! - [`jobs`]: the background scheduler (titles, memory extraction) below chat priority.
//! - [`priority`]: background threads (embedding, index builds) below the OS priority of chat.
//! - [`error_code`]: the one closed vocabulary of error codes.
//! - [`events`]: notifications of background work for UIs (`/api/v1/events`).
//! - [`server`]: HTTP + SSE on a Unix socket; the only module that knows HTTP.
//! - [`daemon`]: start-up order, instance lock and the one shutdown path.
//! - [`client`], [`cli`]: the command line and the small client it (and the tests) use.
//! - `bench` (cargo feature `bench`): `hearth bench`, the daemon against a direct decode loop
//!   (`--rag`: documents, `--library`, `--memory`, `--health`: health on a large store).
//!
//! See ARCHITECTURE.md for the invariants that hold these together.

#[cfg(feature = "bench")]
pub mod bench;
pub mod chat;
pub mod cli;
pub mod client;
pub mod config;
pub mod daemon;
pub mod embed;
pub mod error_code;
pub mod events;
pub mod index;
pub mod ingest;
pub mod jobs;
pub mod library;
pub mod llm;
pub mod memory;
pub mod metrics;
pub mod models;
pub mod pool;
pub mod priority;
pub mod server;
pub mod store;
pub mod sys;
