//! `GET /metrics`: the daemon's counters and current state in the Prometheus text format
//! (version 0.0.4), on the local socket and on the token-guarded TCP listener.
//!
//! Counters and histograms come from [`crate::metrics::METRICS`]; the gauges are read from their
//! owners at scrape time (the model pool, the chat service, the library, the background
//! scheduler), each from state or counters those owners keep: a scrape reads a handful of store
//! keys and walks no tree, whatever the size of the library (`store/counts.rs`).
//!
//! Requests are counted by route pattern (`/api/v1/chats/{id}/messages`), never by raw path, so
//! the label set stays bounded whatever clients send.

use std::fmt::Write as _;

use http::header::{HeaderValue, CONTENT_TYPE};
use http::{Response, StatusCode};
use http_body_util::{BodyExt, Full};

use super::error::ApiError;
use super::respond::ResBody;
use super::App;
use crate::llm::ModelState;
use crate::metrics::{HistogramSnapshot, FINISHES, METRICS};

/// Where the metrics are served (outside `/api/v1`, where scrapers look by default).
pub(super) const PATH: &str = "/metrics";

/// The text format's content type.
const CONTENT_TYPE_TEXT: &str = "text/plain; version=0.0.4; charset=utf-8";

/// Every route the daemon serves, as the pattern requests are counted under. A path matching
/// none is counted as `other`.
const ROUTES: &[&str] = &[
    "/api/v1/health",
    "/api/v1/models",
    "/api/v1/models/{name}",
    "/api/v1/models/{name}/load",
    "/api/v1/models/{name}/unload",
    "/api/v1/shutdown",
    "/api/v1/users",
    "/api/v1/users/{id}",
    "/api/v1/users/{id}/settings",
    "/api/v1/users/{id}/chats",
    "/api/v1/users/{id}/memories",
    "/api/v1/users/{id}/memories/history",
    "/api/v1/memories/{id}",
    "/api/v1/memories/{id}/history",
    "/api/v1/chats",
    "/api/v1/chats/{id}",
    "/api/v1/chats/{id}/messages",
    "/api/v1/chats/{id}/documents",
    "/api/v1/chats/{id}/cancel",
    "/api/v1/documents/{id}",
    "/api/v1/search",
    "/api/v1/embeddings",
    "/api/v1/library",
    "/api/v1/library/files",
    "/api/v1/library/rescan",
    "/api/v1/library/documents",
    "/api/v1/events",
    "/v1/chat/completions",
    "/v1/completions",
    "/v1/embeddings",
    "/v1/models",
    "/v1/models/{id}",
    PATH,
];

/// The route pattern `path` is counted under: a literal segment must match exactly, a `{…}`
/// segment matches any one non-empty segment; literal patterns are listed before any pattern
/// they could shadow.
pub(super) fn route_pattern(path: &str) -> &'static str {
    let segments: Vec<&str> = path.split('/').collect();
    ROUTES
        .iter()
        .find(|pattern| {
            let parts: Vec<&str> = pattern.split('/').collect();
            parts.len() == segments.len()
                && parts.iter().zip(&segments).all(|(p, s)| {
                    if p.starts_with('{') {
                        !s.is_empty()
                    } else {
                        p == s
                    }
                })
        })
        .copied()
        .unwrap_or("other")
}

pub(super) fn metrics(app: &App) -> Result<Response<ResBody>, ApiError> {
    let mut out = Text::default();
    counters(&mut out);
    gauges(app, &mut out);
    let mut response = Response::new(Full::new(bytes::Bytes::from(out.0)).boxed_unsync());
    *response.status_mut() = StatusCode::OK;
    response
        .headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static(CONTENT_TYPE_TEXT));
    Ok(response)
}

fn counters(out: &mut Text) {
    out.family(
        "hearth_http_requests_total",
        "counter",
        "Responses by route pattern and status code.",
    );
    for ((route, status), n) in METRICS.requests() {
        out.sample(
            "hearth_http_requests_total",
            &[("route", route), ("status", &status.to_string())],
            n as f64,
        );
    }
    let evaluated = METRICS.prompt_evaluated.get();
    let reused = METRICS.prompt_reused.get();
    out.single(
        "hearth_prompt_tokens_evaluated_total",
        "counter",
        "Prompt tokens the model evaluated.",
        evaluated as f64,
    );
    out.single(
        "hearth_prompt_tokens_reused_total",
        "counter",
        "Prompt tokens taken from the KV cache instead of being evaluated.",
        reused as f64,
    );
    let total = evaluated + reused;
    out.single(
        "hearth_prompt_cache_hit_ratio",
        "gauge",
        "Share of prompt tokens since start that came from the KV cache.",
        if total == 0 {
            0.0
        } else {
            reused as f64 / total as f64
        },
    );
    out.single(
        "hearth_generated_tokens_total",
        "counter",
        "Tokens generated (chat and background work).",
        METRICS.generated.get() as f64,
    );
    out.family(
        "hearth_generations_total",
        "counter",
        "Generations ended, by how they ended.",
    );
    for (finish, counter) in FINISHES.iter().zip(&METRICS.generations) {
        out.sample(
            "hearth_generations_total",
            &[("finish", finish)],
            counter.get() as f64,
        );
    }
    out.histogram(
        "hearth_time_to_first_token_seconds",
        "Chat generations: from entering the queue to the first token.",
        &METRICS.ttft.snapshot(),
    );
    out.histogram(
        "hearth_token_latency_seconds",
        "Chat generations: the decode step of each generated token.",
        &METRICS.token_latency.snapshot(),
    );
    out.single(
        "hearth_embeddings_total",
        "counter",
        "Texts embedded (queries and document chunks).",
        METRICS.embedded.get() as f64,
    );
    out.single(
        "hearth_kv_snapshots_saved_total",
        "counter",
        "Conversations' KV state written to disk when their sequence was evicted or unloaded.",
        METRICS.kv_saved.get() as f64,
    );
    out.single(
        "hearth_kv_snapshots_restored_total",
        "counter",
        "KV snapshots restored instead of evaluating their prompt tokens.",
        METRICS.kv_restored.get() as f64,
    );
    out.single(
        "hearth_kv_snapshot_tokens_restored_total",
        "counter",
        "Prompt tokens restored from KV snapshots (also in hearth_prompt_tokens_reused_total).",
        METRICS.kv_restored_tokens.get() as f64,
    );
    out.single(
        "hearth_kv_snapshots_discarded_total",
        "counter",
        "KV snapshots deleted as damaged or refused.",
        METRICS.kv_discarded.get() as f64,
    );
    out.histogram(
        "hearth_embedding_batch_size",
        "Texts per batch handed to the embedding model.",
        &METRICS.embed_batch.snapshot(),
    );
}

fn gauges(app: &App, out: &mut Text) {
    let loaded = app.pool.loaded();
    let (snapshots, snapshot_bytes) = app.snapshots.usage();
    out.single(
        "hearth_kv_snapshots",
        "gauge",
        "KV snapshots on disk.",
        snapshots as f64,
    );
    out.single(
        "hearth_kv_snapshot_bytes",
        "gauge",
        "Bytes of KV snapshots on disk (bounded by kv_cache_bytes).",
        snapshot_bytes as f64,
    );
    out.single(
        "hearth_streams_active",
        "gauge",
        "Chat generations evaluating their prompt or decoding now.",
        METRICS.streams_active.get() as f64,
    );
    out.single(
        "hearth_streams_queued",
        "gauge",
        "Generations waiting in the models' queues (all priorities).",
        loaded.iter().map(|m| m.queued).sum::<usize>() as f64,
    );
    out.single(
        "hearth_chat_turns_active",
        "gauge",
        "Chat turns in progress (queued, generating, or storing the reply).",
        app.chat.active_turns() as f64,
    );
    out.family(
        "hearth_model_loaded",
        "gauge",
        "Chat models in memory (1 each), by name and state.",
    );
    for m in &loaded {
        let state = match &m.state {
            ModelState::Loading { .. } => "loading",
            ModelState::Ready => "ready",
            ModelState::Failed(_) => "failed",
            ModelState::Unloaded => "unloaded",
        };
        let state = if m.unloading { "unloading" } else { state };
        out.sample(
            "hearth_model_loaded",
            &[("model", &m.name), ("state", state)],
            1.0,
        );
    }
    out.family(
        "hearth_model_memory_bytes",
        "gauge",
        "Memory of each loaded chat model: weights and KV cache.",
    );
    for m in &loaded {
        out.sample(
            "hearth_model_memory_bytes",
            &[("model", &m.name)],
            m.memory_bytes as f64,
        );
    }
    if let Ok(library) = app.library.status() {
        out.family(
            "hearth_library_files",
            "gauge",
            "Files of the watched folders by state.",
        );
        let mut states: Vec<_> = library.counts.iter().collect();
        states.sort();
        for (state, n) in states {
            out.sample("hearth_library_files", &[("state", state)], *n as f64);
        }
        out.single(
            "hearth_library_queue_length",
            "gauge",
            "Drop-folder jobs queued (index or remove a file).",
            library.jobs as f64,
        );
        out.single(
            "hearth_library_waiting_files",
            "gauge",
            "Files seen changing, waiting to be stable before they are queued.",
            library.waiting as f64,
        );
    }
    let jobs = app.jobs.status();
    out.single(
        "hearth_background_jobs_pending",
        "gauge",
        "Background jobs (titles, memory extraction) stored, the running one included.",
        jobs.pending as f64,
    );
    out.single(
        "hearth_background_jobs_finished_total",
        "counter",
        "Background jobs finished since start.",
        jobs.finished as f64,
    );
    out.single(
        "hearth_background_preemptions_total",
        "counter",
        "Background generations a chat preempted since start.",
        jobs.preempted as f64,
    );
    if let Some(rss) = crate::sys::resident_memory_bytes() {
        out.single(
            "process_resident_memory_bytes",
            "gauge",
            "Resident memory of the daemon process.",
            rss as f64,
        );
    }
    out.single(
        "hearth_uptime_seconds",
        "gauge",
        "Seconds since the daemon started.",
        app.started.elapsed().as_secs_f64(),
    );
}

/// The exposition being written.
#[derive(Default)]
struct Text(String);

impl Text {
    fn family(&mut self, name: &str, kind: &str, help: &str) {
        let _ = writeln!(self.0, "# HELP {name} {help}");
        let _ = writeln!(self.0, "# TYPE {name} {kind}");
    }

    fn sample(&mut self, name: &str, labels: &[(&str, &str)], value: f64) {
        self.0.push_str(name);
        if !labels.is_empty() {
            self.0.push('{');
            for (i, (key, value)) in labels.iter().enumerate() {
                if i > 0 {
                    self.0.push(',');
                }
                let _ = write!(self.0, "{key}=\"{}\"", escape(value));
            }
            self.0.push('}');
        }
        let _ = writeln!(self.0, " {}", number(value));
    }

    fn single(&mut self, name: &str, kind: &str, help: &str, value: f64) {
        self.family(name, kind, help);
        self.sample(name, &[], value);
    }

    fn histogram(&mut self, name: &str, help: &str, h: &HistogramSnapshot) {
        self.family(name, "histogram", help);
        let bucket = format!("{name}_bucket");
        for (bound, n) in &h.buckets {
            self.sample(&bucket, &[("le", &number(*bound))], *n as f64);
        }
        self.sample(&bucket, &[("le", "+Inf")], h.count as f64);
        self.sample(&format!("{name}_sum"), &[], h.sum);
        self.sample(&format!("{name}_count"), &[], h.count as f64);
    }
}

/// A label value with `\`, `"` and newlines escaped, as the format requires.
fn escape(value: &str) -> String {
    value
        .replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

/// A sample value: integers without a fraction, others in Rust's shortest round-trip form.
fn number(v: f64) -> String {
    if v.is_finite() && v.fract() == 0.0 && v.abs() < 1e15 {
        format!("{}", v as i64)
    } else if v.is_nan() {
        "NaN".into()
    } else if v.is_infinite() {
        if v > 0.0 { "+Inf" } else { "-Inf" }.into()
    } else {
        format!("{v}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_count_under_their_route_pattern_and_unknown_paths_under_other() {
        assert_eq!(
            route_pattern("/api/v1/chats/0193a1b2-aaaa/messages"),
            "/api/v1/chats/{id}/messages"
        );
        assert_eq!(route_pattern("/api/v1/health"), "/api/v1/health");
        assert_eq!(
            route_pattern("/api/v1/library/files"),
            "/api/v1/library/files"
        );
        assert_eq!(route_pattern("/v1/models/smol"), "/v1/models/{id}");
        assert_eq!(route_pattern("/metrics"), "/metrics");
        assert_eq!(route_pattern("/api/v1/chats//messages"), "other");
        assert_eq!(route_pattern("/api/v1/nothing/here"), "other");
        assert_eq!(route_pattern("/../../etc/passwd"), "other");
    }

    #[test]
    fn samples_escape_labels_and_histograms_end_in_inf_sum_and_count() {
        let mut t = Text::default();
        t.sample("m", &[("model", "a\"b\\c\nd")], 1.5);
        assert_eq!(t.0, "m{model=\"a\\\"b\\\\c\\nd\"} 1.5\n");
        let mut t = Text::default();
        t.histogram(
            "h",
            "help",
            &HistogramSnapshot {
                buckets: vec![(0.5, 1), (1.0, 2)],
                count: 3,
                sum: 4.25,
            },
        );
        assert!(
            t.0.ends_with(
                "h_bucket{le=\"0.5\"} 1\nh_bucket{le=\"1\"} 2\nh_bucket{le=\"+Inf\"} 3\nh_sum 4.25\nh_count 3\n"
            ),
            "{}",
            t.0
        );
    }
}
