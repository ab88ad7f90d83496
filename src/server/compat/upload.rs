//! The original's streaming upload, `POST /documents/upload/stream`: multipart `file`, `chatId`
//! and `userId` (the **username**, as the app sends it), answered with `data:` progress events
//! in the original's stages and a final `ready` event carrying the document (or `error`).
//!
//! The ingestion is hearth's (any format it reads, the same chunking and index); only the stage
//! names and percentages are translated. The body is read in full before the stream starts.
//! Failures after that (a file hearth cannot read) are an `error` event in a 200 stream, as in
//! the original; failures before it (no file, over the size limit) are statuses.

use http::{Request, Response};
use hyper::body::Incoming;
use serde_json::{json, Value};

use super::super::docs::{ingest_streaming, read_form};
use super::super::error::{scrub_paths, ApiError};
use super::super::respond::{sse_response, ResBody};
use super::super::sse::SseEvent;
use super::super::App;
use super::chats::ensure_chat;
use super::iso;
use crate::ingest::{Progress, Stage};
use crate::store::{Scope, SearchMode};

/// `POST /documents/upload/stream`
pub(super) async fn stream(
    app: &App,
    req: Request<Incoming>,
) -> Result<Response<ResBody>, ApiError> {
    let form = read_form(req, app.rag.max_upload_bytes, &app.config).await?;
    let missing = |field: &str| ApiError::invalid(format!("field required: {field}"));
    let chat_text = form
        .field("chatId")
        .ok_or_else(|| missing("chatId"))?
        .to_string();
    let username = form
        .field("userId")
        .ok_or_else(|| missing("userId"))?
        .to_string();
    let file = form.file.ok_or_else(|| missing("file"))?;
    let title = format!("Document Upload - {}", file.filename);
    let chat = ensure_chat(
        app,
        &chat_text,
        || {
            // The original looked the uploader up by username, creating the user if new.
            let name = super::super::body::clean_text(
                "userId",
                &username,
                super::super::users::MAX_NAME_CHARS,
            )?;
            Ok(app.store.create_user(&name)?.user.id)
        },
        Some(&title),
        SearchMode::Docs,
    )
    .await?;
    let name = file.filename.clone();
    let size = file.bytes.len();
    let content_type = file.content_type.clone();
    // The first two stages happened while the body was read.
    let head = vec![stage("uploading", 0, None), stage("uploaded", 20, None)];
    let mut steps = Steps::default();
    let events = ingest_streaming(
        app,
        Scope::Chat(chat.id),
        file,
        head,
        move |p| steps.translate(p),
        move |result| match result {
            Ok(doc) => SseEvent::json(
                "",
                &json!({
                    "stage": "ready",
                    "progress": 100,
                    "document": {
                        "id": doc.id,
                        "name": name,
                        "size": size,
                        "uploadedAt": format!("{}+00:00", iso(doc.created_at)),
                        "contentType": content_type,
                        "chunks": doc.chunk_count,
                    },
                }),
            ),
            Err(err) => SseEvent::json(
                "",
                &json!({"stage": "error", "error": scrub_paths(&err.message)}),
            ),
        },
    );
    Ok(sse_response(events))
}

/// The original's stages after `uploaded`, in order; hearth's progress moves through them, and
/// a stage hearth skipped is still sent (in order) before a later one.
#[derive(Default)]
struct Steps {
    /// How many of [`Steps::FIXED`] were sent.
    sent: usize,
    /// The last `current_chunk` sent.
    chunk: Option<usize>,
}

impl Steps {
    /// extracting (20), extracted and chunking (40), chunking_complete (50, with the total).
    const FIXED: [(&'static str, usize); 4] = [
        ("extracting", 20),
        ("extracted", 40),
        ("chunking", 40),
        ("chunking_complete", 50),
    ];

    /// hearth's progress → the original's events: the fixed stages up to where hearth is, then
    /// `embedding` at 50 + 45 × done/total.
    fn translate(&mut self, p: &Progress) -> Vec<SseEvent> {
        let reached = match p.stage {
            Stage::Received => 0,
            Stage::Extracting => 1,
            Stage::Chunking => 3,
            Stage::Embedding | Stage::Indexing => 4,
        };
        let total = p.chunks_total;
        let mut out = Vec::new();
        while self.sent < reached {
            let (name, progress) = Self::FIXED[self.sent];
            let extra = (name == "chunking_complete").then(|| json!({"total_chunks": total}));
            out.push(stage(name, progress, extra));
            self.sent += 1;
        }
        if reached == 4 {
            let done = p.chunks_done.min(total);
            if self.chunk != Some(done) {
                self.chunk = Some(done);
                let progress = 50 + (done * 45).checked_div(total).unwrap_or(0);
                out.push(stage(
                    "embedding",
                    progress,
                    Some(json!({"current_chunk": done, "total_chunks": total})),
                ));
            }
        }
        out
    }
}

fn stage(name: &str, progress: usize, extra: Option<Value>) -> SseEvent {
    let mut value = json!({"stage": name, "progress": progress});
    if let Some(Value::Object(extra)) = extra {
        if let Value::Object(map) = &mut value {
            map.extend(extra);
        }
    }
    SseEvent::json("", &value)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(events: &[SseEvent]) -> Vec<String> {
        events
            .iter()
            .map(|e| {
                let v: Value = serde_json::from_str(&e.data).unwrap();
                format!("{}:{}", v["stage"].as_str().unwrap(), v["progress"])
            })
            .collect()
    }

    #[test]
    fn hearths_progress_becomes_the_originals_stages_in_order() {
        let mut steps = Steps::default();
        let p = |stage, done, total| Progress {
            stage,
            percent: 0,
            chunks_done: done,
            chunks_total: total,
        };
        assert_eq!(
            names(&steps.translate(&p(Stage::Extracting, 0, 0))),
            ["extracting:20"]
        );
        // Chunking skipped by hearth: its stages still come, in order, before embedding.
        assert_eq!(
            names(&steps.translate(&p(Stage::Embedding, 0, 20))),
            [
                "extracted:40",
                "chunking:40",
                "chunking_complete:50",
                "embedding:50"
            ]
        );
        assert_eq!(
            names(&steps.translate(&p(Stage::Embedding, 10, 20))),
            ["embedding:72"]
        );
        assert!(steps.translate(&p(Stage::Embedding, 10, 20)).is_empty());
        assert_eq!(
            names(&steps.translate(&p(Stage::Indexing, 20, 20))),
            ["embedding:95"]
        );
    }
}
