//! Handlers for documents, search and embeddings: multipart upload with live progress over SSE
//! (or one JSON answer), document listing and deletion, vector search per scope, and raw
//! embeddings.

use std::sync::Arc;

use bytes::Bytes;
use futures_util::StreamExt;
use http::header::{ACCEPT, CONTENT_LENGTH, CONTENT_TYPE};
use http::{Request, Response, StatusCode};
use http_body_util::BodyStream;
use hyper::body::Incoming;
use serde::{Deserialize, Serialize};
use serde_json::json;
use tokio::sync::mpsc;

use super::chats::require_chat;
use super::error::{scrub_paths, ApiError};
use super::respond::{json_response, ok, sse_response, ResBody};
use super::sse::SseEvent;
use super::{body, App};
use crate::config::ServerConfig;
use crate::embed::Urgency;
use crate::error_code::ErrorCode;
use crate::ingest::{IngestError, Progress};
use crate::store::{Document, DocumentId, Scope};

/// Most texts one embeddings request may carry: bounds the work a single request can queue.
const MAX_EMBED_INPUTS: usize = 256;
/// Longest text one embeddings request may carry, in bytes (the model reads 256 tokens anyway).
const MAX_EMBED_INPUT_BYTES: usize = 64 * 1024;
/// Most results a search may ask for.
const MAX_SEARCH_K: usize = 100;
/// Progress events buffered towards a slow client; older percentages may be skipped.
const PROGRESS_BUFFER: usize = 64;

/// A document as the API shows it.
#[derive(Serialize)]
pub struct DocumentOut<'a> {
    id: DocumentId,
    scope: String,
    filename: &'a str,
    format: &'a str,
    size: u64,
    pages: Option<u32>,
    chunks: u32,
    content_hash: &'a str,
    model: &'a str,
    created_at: u64,
}

impl<'a> From<&'a Document> for DocumentOut<'a> {
    fn from(d: &'a Document) -> Self {
        DocumentOut {
            id: d.id,
            scope: d.scope.to_string(),
            filename: &d.filename,
            format: &d.format,
            size: d.size,
            pages: d.pages,
            chunks: d.chunk_count,
            content_hash: &d.content_hash,
            model: &d.model_id,
            created_at: d.created_at,
        }
    }
}

/// `POST /api/v1/chats/{id}/documents`: multipart field `file`.
pub async fn upload(
    app: &App,
    scope: Scope,
    req: Request<Incoming>,
) -> Result<Response<ResBody>, ApiError> {
    if let Scope::Chat(chat) = &scope {
        require_chat(app, *chat)?;
    }
    let wants_json = req
        .headers()
        .get(ACCEPT)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.contains("application/json") && !v.contains("text/event-stream"));
    let form = read_form(req, app.rag.max_upload_bytes, &app.config).await?;
    let name = document_name(&form)?;
    let mut file = form
        .file
        .ok_or_else(|| ApiError::invalid("multipart body has no `file` field"))?;
    if let Some(name) = name {
        file.filename = name;
    }
    if wants_json {
        let (tx, _rx) = mpsc::channel(1);
        let doc = app
            .ingestor
            .ingest(scope, &file.filename, Arc::new(file.bytes), &tx)
            .await
            .map_err(ingest_error)?;
        return Ok(json_response(StatusCode::OK, &DocumentOut::from(&doc)));
    }
    let events = ingest_streaming(
        app,
        scope,
        file,
        Vec::new(),
        |p| vec![progress_event(p)],
        |result| match result {
            Ok(doc) => SseEvent::json("ready", &json!({ "document": DocumentOut::from(doc) })),
            Err(err) => SseEvent::json(
                "error",
                &json!({"code": err.code, "message": scrub_paths(&err.message)}),
            ),
        },
    );
    Ok(sse_response(events))
}

/// Ingests `file` in a task of its own and streams its progress: `head` first, then `progress`
/// turns each step into events (or none), `last` the outcome into the final event, which is
/// never dropped. A slow client may miss intermediate percentages, never the end.
pub(super) fn ingest_streaming(
    app: &App,
    scope: Scope,
    file: UploadedFile,
    head: Vec<SseEvent>,
    mut progress: impl FnMut(&Progress) -> Vec<SseEvent> + Send + 'static,
    last: impl FnOnce(Result<&Document, &ApiError>) -> SseEvent + Send + 'static,
) -> mpsc::Receiver<SseEvent> {
    let ingestor = app.ingestor.clone();
    let (events_tx, events_rx) = mpsc::channel(PROGRESS_BUFFER + head.len());
    for event in head {
        let _ = events_tx.try_send(event);
    }
    app.tasks.spawn(async move {
        let (progress_tx, mut progress_rx) = mpsc::channel::<Progress>(PROGRESS_BUFFER);
        let work = ingestor.ingest(scope, &file.filename, Arc::new(file.bytes), &progress_tx);
        tokio::pin!(work);
        let mut forward = |p: &Progress| {
            for event in progress(p) {
                let _ = events_tx.try_send(event);
            }
        };
        let result = loop {
            tokio::select! {
                result = &mut work => break result,
                Some(p) = progress_rx.recv() => forward(&p),
            }
        };
        while let Ok(p) = progress_rx.try_recv() {
            forward(&p);
        }
        let event = match result.map_err(ingest_error) {
            Ok(doc) => last(Ok(&doc)),
            Err(err) => last(Err(&err)),
        };
        // The terminal event must not be dropped: wait for room.
        let _ = events_tx.send(event).await;
    });
    events_rx
}

fn progress_event(p: &Progress) -> SseEvent {
    SseEvent::json(
        "progress",
        &json!({
            "stage": p.stage.as_str(),
            "progress": p.percent,
            "chunks_done": p.chunks_done,
            "chunks_total": p.chunks_total,
        }),
    )
}

/// Maps ingestion failures onto the API's error codes (the one place that decides statuses for
/// them is `error.rs`'s `ApiError`; here only the document-specific codes are chosen).
pub(super) fn ingest_error(err: IngestError) -> ApiError {
    let code = err.code();
    let status = match &err {
        IngestError::Extract(crate::ingest::extract::ExtractError::TooLarge { .. }) => {
            StatusCode::PAYLOAD_TOO_LARGE
        }
        // The file is what is too costly to read.
        IngestError::Extract(_) | IngestError::Timeout(_) | IngestError::ResourceLimit(_) => {
            StatusCode::UNPROCESSABLE_ENTITY
        }
        // A parser's crash is hearth's failure, not the client's.
        IngestError::Crashed(_) => StatusCode::INTERNAL_SERVER_ERROR,
        IngestError::Embed(_) | IngestError::Tokenizer(_) => StatusCode::SERVICE_UNAVAILABLE,
        IngestError::Store(_) => StatusCode::SERVICE_UNAVAILABLE,
        IngestError::Task(_) => StatusCode::INTERNAL_SERVER_ERROR,
    };
    ApiError::new(status, code, err.to_string())
}

/// An uploaded file as the multipart body carried it.
pub(super) struct UploadedFile {
    /// The base name (no directories), `upload` when the client sent none.
    pub filename: String,
    /// The part's `Content-Type`, as the client declared it.
    pub content_type: Option<String>,
    pub bytes: Vec<u8>,
}

/// A multipart body: its `file` field and its small text fields.
pub(super) struct Form {
    pub file: Option<UploadedFile>,
    pub fields: Vec<(String, String)>,
}

impl Form {
    pub(super) fn field(&self, name: &str) -> Option<&str> {
        self.fields
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }
}

/// Longest `name` an upload may give its document, in characters.
const MAX_DOCUMENT_NAME_CHARS: usize = 1024;

/// The upload's optional `name` field: the document's name instead of the file part's file name
/// (which is cut to its last path component, as browsers send it). `hearth ingest` sends the
/// file's absolute path, so ingested files are named like drop-folder files.
fn document_name(form: &Form) -> Result<Option<String>, ApiError> {
    let Some(name) = form.field("name") else {
        return Ok(None);
    };
    if name.trim().is_empty()
        || name.chars().any(char::is_control)
        || name.chars().count() > MAX_DOCUMENT_NAME_CHARS
    {
        return Err(ApiError::invalid(format!(
            "form field name: must be 1 to {MAX_DOCUMENT_NAME_CHARS} characters without control characters"
        )));
    }
    Ok(Some(name.to_string()))
}

/// Most text fields a form may carry besides `file`, and the longest one: uploads name a chat
/// or a user, nothing more.
const MAX_FORM_FIELDS: usize = 16;
const MAX_FORM_FIELD_BYTES: usize = 4096;

/// Reads a multipart body: the `file` field (at most `limit` bytes, enforced while reading:
/// 413 before the whole body is buffered) and small text fields.
pub(super) async fn read_form(
    req: Request<Incoming>,
    limit: u64,
    config: &ServerConfig,
) -> Result<Form, ApiError> {
    let too_large = || {
        ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            ErrorCode::BodyTooLarge,
            format!("upload is larger than {limit} bytes"),
        )
    };
    let content_type = req
        .headers()
        .get(CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    let boundary = multer::parse_boundary(content_type).map_err(|_| {
        ApiError::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            ErrorCode::UnsupportedMediaType,
            "expected multipart/form-data with a `file` field",
        )
    })?;
    let declared = req
        .headers()
        .get(CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    // Multipart framing (and the text fields) add a little around the file.
    let framing = 64 * 1024;
    if declared.is_some_and(|len| len > limit + framing) {
        return Err(too_large());
    }
    let data = BodyStream::new(req.into_body()).filter_map(|frame| async move {
        match frame {
            Ok(frame) => frame.into_data().ok().map(Ok::<Bytes, hyper::Error>),
            Err(err) => Some(Err(err)),
        }
    });
    // Each piece must arrive before the pace's deadline; a late one ends the stream with
    // `TooSlow`, which multer returns inside its error.
    let pace = body::Pace::new(config);
    let stream = futures_util::stream::unfold(
        (Box::pin(data), pace, false),
        |(mut data, mut pace, failed)| async move {
            if failed {
                return None;
            }
            match tokio::time::timeout_at(pace.deadline(), data.next()).await {
                Err(_) => {
                    let err: Box<dyn std::error::Error + Send + Sync> = Box::new(body::TooSlow);
                    Some((Err(err), (data, pace, true)))
                }
                Ok(None) => None,
                Ok(Some(Ok(bytes))) => {
                    pace.received(bytes.len());
                    Some((Ok(bytes), (data, pace, false)))
                }
                Ok(Some(Err(err))) => Some((Err(err.into()), (data, pace, true))),
            }
        },
    );
    let constraints = multer::Constraints::new().size_limit(
        multer::SizeLimit::new()
            .whole_stream(limit + framing)
            .per_field(limit),
    );
    let mut multipart = multer::Multipart::with_constraints(stream, boundary, constraints);
    let multipart_error = |err: multer::Error| match err {
        multer::Error::StreamSizeExceeded { .. } | multer::Error::FieldSizeExceeded { .. } => {
            too_large()
        }
        multer::Error::StreamReadFailed(err) if err.is::<body::TooSlow>() => {
            body::body_timeout(&format!(
                "an upload must average {} KiB/s after {} s",
                config.min_upload_bytes_per_sec / 1024,
                config.body_timeout.as_secs()
            ))
        }
        err => ApiError::bad_request(
            ErrorCode::BadMultipart,
            format!("malformed multipart body: {err}"),
        ),
    };
    let mut form = Form {
        file: None,
        fields: Vec::new(),
    };
    while let Some(field) = multipart.next_field().await.map_err(multipart_error)? {
        let name = field.name().unwrap_or_default().to_string();
        if name != "file" {
            let too_many = || {
                ApiError::invalid(format!(
                    "form fields: at most {MAX_FORM_FIELDS}, each at most {MAX_FORM_FIELD_BYTES} bytes"
                ))
            };
            if form.fields.len() == MAX_FORM_FIELDS {
                return Err(too_many());
            }
            // Read piece by piece: a huge text field is refused before it is buffered.
            let mut field = field;
            let mut text = Vec::new();
            while let Some(chunk) = field.chunk().await.map_err(multipart_error)? {
                if text.len() + chunk.len() > MAX_FORM_FIELD_BYTES {
                    return Err(too_many());
                }
                text.extend_from_slice(&chunk);
            }
            let text = String::from_utf8(text)
                .map_err(|_| ApiError::invalid(format!("form field {name}: not UTF-8")))?;
            form.fields.push((name, text));
            continue;
        }
        let filename = field
            .file_name()
            .map(|n| n.rsplit(['/', '\\']).next().unwrap_or(n).to_string())
            .filter(|n| !n.trim().is_empty())
            .unwrap_or_else(|| "upload".to_string());
        let content_type = field.content_type().map(ToString::to_string);
        let data = field.bytes().await.map_err(multipart_error)?;
        if data.len() as u64 > limit {
            return Err(too_large());
        }
        form.file = Some(UploadedFile {
            filename,
            content_type,
            bytes: data.to_vec(),
        });
    }
    Ok(form)
}

/// `GET /api/v1/chats/{id}/documents`
pub fn list(app: &App, scope: Scope) -> Result<Response<ResBody>, ApiError> {
    if let Scope::Chat(chat) = &scope {
        require_chat(app, *chat)?;
    }
    let docs = app.store.documents_in(&scope)?;
    let out: Vec<_> = docs.iter().map(DocumentOut::from).collect();
    ok(&json!({ "documents": out }))
}

fn document_id(text: &str) -> Result<DocumentId, ApiError> {
    text.parse().map_err(|_| {
        ApiError::bad_request(
            ErrorCode::InvalidId,
            format!("'{text}' is not a valid document id"),
        )
    })
}

/// `GET /api/v1/documents/{id}`
pub fn get(app: &App, id: &str) -> Result<Response<ResBody>, ApiError> {
    let id = document_id(id)?;
    let doc = app.store.document(id)?.ok_or_else(|| {
        ApiError::not_found(ErrorCode::DocumentNotFound, format!("no document {id}"))
    })?;
    ok(&DocumentOut::from(&doc))
}

/// `DELETE /api/v1/documents/{id}`: the document, its chunks, vectors and index entries.
pub async fn delete(app: &App, id: &str) -> Result<Response<ResBody>, ApiError> {
    let id = document_id(id)?;
    let doc = app.ingestor.delete(id).await?.ok_or_else(|| {
        ApiError::not_found(ErrorCode::DocumentNotFound, format!("no document {id}"))
    })?;
    ok(&json!({"deleted": doc.id, "chunks_deleted": doc.chunk_count}))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct SearchRequest {
    scope: String,
    query: String,
    #[serde(default = "default_k")]
    k: usize,
}

fn default_k() -> usize {
    5
}

/// `POST /api/v1/search` `{"scope","query","k"}` → best chunks first. No threshold: this endpoint
/// is for clients and for debugging retrieval, so it shows scores as they are.
pub async fn search(app: &App, req: Request<Incoming>) -> Result<Response<ResBody>, ApiError> {
    let body: SearchRequest = body::json(req, &app.config).await?;
    let scope: Scope = body.scope.parse().map_err(ApiError::invalid)?;
    if body.query.trim().is_empty() {
        return Err(ApiError::invalid("query: must not be empty"));
    }
    if body.k == 0 || body.k > MAX_SEARCH_K {
        return Err(ApiError::invalid(format!(
            "k: must be between 1 and {MAX_SEARCH_K}"
        )));
    }
    if let Scope::Chat(chat) = &scope {
        require_chat(app, *chat)?;
    }
    let vector = app
        .embedder
        .embed(vec![body.query], Urgency::Query)
        .await
        .map_err(embed_error)?
        .pop()
        .unwrap_or_default();
    let found = app
        .index
        .find(vec![scope], vector, body.k, f32::MIN)
        .await?;
    let results: Vec<_> = found
        .into_iter()
        .map(|f| {
            json!({
                "document_id": f.document.id,
                "filename": f.document.filename,
                "page": f.chunk.page,
                "heading_path": f.chunk.heading_path,
                "start": f.chunk.start,
                "end": f.chunk.end,
                "score": f.score,
                "text": f.chunk.text,
            })
        })
        .collect();
    ok(&json!({ "results": results }))
}

fn embed_error(err: crate::embed::EmbedError) -> ApiError {
    ApiError::unavailable(ErrorCode::EmbedderUnavailable, err.to_string(), 5)
}

#[derive(Deserialize)]
#[serde(untagged)]
enum Input {
    One(String),
    Many(Vec<String>),
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct EmbeddingsRequest {
    input: Input,
    /// Accepted for OpenAI-style clients; must name this daemon's model if given.
    model: Option<String>,
}

/// `POST /api/v1/embeddings` `{"input": "text" | ["texts"]}`.
pub async fn embeddings(app: &App, req: Request<Incoming>) -> Result<Response<ResBody>, ApiError> {
    let body: EmbeddingsRequest = body::json(req, &app.config).await?;
    let inputs = match body.input {
        Input::One(text) => vec![text],
        Input::Many(texts) => texts,
    };
    let model = app.embedder.model_id().to_string();
    if let Some(asked) = &body.model {
        if !model.starts_with(asked.as_str()) {
            return Err(ApiError::invalid(format!(
                "model: this daemon embeds with {model}"
            )));
        }
    }
    let (vectors, tokens) = embed_texts(app, inputs).await?;
    let data: Vec<_> = vectors
        .into_iter()
        .enumerate()
        .map(|(index, embedding)| json!({"object": "embedding", "index": index, "embedding": embedding}))
        .collect();
    ok(&json!({
        "object": "list",
        "data": data,
        "model": model,
        "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
    }))
}

/// Embeds `inputs` (1 to [`MAX_EMBED_INPUTS`] texts, each at most [`MAX_EMBED_INPUT_BYTES`])
/// at query urgency; the vectors and the tokens the model read. Shared with `/v1/embeddings`.
pub(super) async fn embed_texts(
    app: &App,
    inputs: Vec<String>,
) -> Result<(Vec<Vec<f32>>, usize), ApiError> {
    if inputs.is_empty() || inputs.len() > MAX_EMBED_INPUTS {
        return Err(ApiError::invalid(format!(
            "input: must hold 1 to {MAX_EMBED_INPUTS} texts"
        )));
    }
    if let Some(n) = inputs.iter().position(|t| t.len() > MAX_EMBED_INPUT_BYTES) {
        return Err(ApiError::invalid(format!(
            "input[{n}]: longer than {MAX_EMBED_INPUT_BYTES} bytes"
        )));
    }
    let tokens = app
        .ingestor
        .count_tokens(&inputs)
        .await
        .map_err(ingest_error)?;
    let vectors = app
        .embedder
        .embed(inputs, Urgency::Query)
        .await
        .map_err(embed_error)?;
    Ok((vectors, tokens))
}
