//! hearth's integration tests: one binary (fast to link), real daemon processes, real models,
//! real sockets. Run with `cargo test --release` after `./models/fetch`.

mod api;
mod batch;
mod chat;
mod cli;
mod compat;
mod docs;
mod library;
mod lifecycle;
mod memory;
mod metrics;
mod models;
mod openai;
mod readme;
mod sandbox;
mod setup;
mod sidecar;
mod snapshots;
mod support;
mod tidy;
