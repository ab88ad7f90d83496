//! The drop-folder endpoints: `GET /library` (roots, state counts, queue), `GET /library/files`
//! (per-file state, paged), `POST /library/rescan`. Uploads into the library scope and its
//! document list share the document handlers (`docs.rs`).

use http::{Response, StatusCode};
use serde::{Deserialize, Serialize};
use serde_json::json;

use super::body;
use super::error::ApiError;
use super::respond::{json_response, ok, ResBody};
use super::App;
use crate::store::{DocumentId, FileKey, FileRecord, FileState, Millis};

/// Page size bounds for the file list.
const DEFAULT_FILES_PAGE: usize = 100;
const MAX_FILES_PAGE: usize = 1000;

/// `GET /library`
pub fn status(app: &App) -> Result<Response<ResBody>, ApiError> {
    let s = app.library.status()?;
    ok(&json!({
        "roots": s.roots,
        "watching": s.watching,
        "watcher_error": s.watcher_error.map(|e| json!({
            "code": e.code.as_str(),
            "root": e.root,
            "message": e.message,
        })),
        "counts": s.counts,
        "jobs": s.jobs,
        "waiting": s.waiting,
        "orphans": s.orphans,
        "scans": s.scans,
        "last_scan_ms": s.last_scan_ms,
        "last_scan_files": s.last_scan_files,
    }))
}

/// `POST /library/rescan`: a full reconcile scan now (it runs in the background).
pub fn rescan(app: &App) -> Result<Response<ResBody>, ApiError> {
    app.library.rescan();
    Ok(json_response(
        StatusCode::ACCEPTED,
        &json!({"rescan": "started"}),
    ))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct FilesQuery {
    state: Option<String>,
    limit: Option<usize>,
    /// `next_after` of the previous page.
    after: Option<String>,
}

#[derive(Serialize)]
struct FileOut {
    path: String,
    root: String,
    relative_path: String,
    /// False when the file name is not valid UTF-8 (`path` shows it with U+FFFD).
    path_is_utf8: bool,
    size: u64,
    state: &'static str,
    reason: Option<crate::error_code::ErrorCode>,
    message: Option<String>,
    chunks: u32,
    document_id: Option<DocumentId>,
    indexed_at: Option<Millis>,
    updated_at: Millis,
}

impl FileOut {
    fn new(key: &FileKey, record: FileRecord, state: FileState) -> FileOut {
        FileOut {
            path: key.display(),
            root: key.root().to_string(),
            relative_path: String::from_utf8_lossy(key.relative()).into_owned(),
            path_is_utf8: std::str::from_utf8(key.relative()).is_ok(),
            size: record.size,
            state: state.as_str(),
            reason: record.reason,
            message: record.message,
            chunks: record.chunks,
            document_id: record.document_id,
            indexed_at: record.indexed_at,
            updated_at: record.updated_at,
        }
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn unhex(text: &str) -> Option<Vec<u8>> {
    if !text.len().is_multiple_of(2) {
        return None;
    }
    (0..text.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(text.get(i..i + 2)?, 16).ok())
        .collect()
}

/// `GET /library/files?state=&limit=&after=`
pub fn files(app: &App, query: Option<&str>) -> Result<Response<ResBody>, ApiError> {
    let q: FilesQuery = body::query(query)?;
    let state = match q.state.as_deref() {
        None | Some("") => None,
        Some(text) => Some(FileState::parse(text).ok_or_else(|| {
            ApiError::invalid(format!(
                "state: '{text}' is not one of queued, indexing, indexed, failed, skipped, unavailable"
            ))
        })?),
    };
    let limit = q.limit.unwrap_or(DEFAULT_FILES_PAGE);
    if limit == 0 || limit > MAX_FILES_PAGE {
        return Err(ApiError::invalid(format!(
            "limit: must be between 1 and {MAX_FILES_PAGE}"
        )));
    }
    let after =
        match q.after.as_deref() {
            None => None,
            Some(text) => Some(unhex(text).ok_or_else(|| {
                ApiError::invalid("after: not a cursor returned by this endpoint")
            })?),
        };
    // `indexing` is a runtime overlay on stored `queued` records.
    let stored = match state {
        Some(FileState::Indexing) => Some(FileState::Queued),
        // A runtime overlay on any stored state (the folder's files as they were).
        Some(FileState::Unavailable) => None,
        other => other,
    };
    let mut out = Vec::new();
    let mut cursor = after;
    let mut next_after = None;
    'pages: loop {
        let page = app.store.files_page(cursor.as_deref(), limit, stored)?;
        let full = page.len() == limit;
        for (key, record) in page {
            cursor = Some(key.as_bytes().to_vec());
            let reported = app.library.reported_state(&key, &record);
            if state.is_some_and(|s| s != reported) {
                continue;
            }
            out.push(FileOut::new(&key, record, reported));
            if out.len() == limit {
                next_after = Some(hex(key.as_bytes()));
                break 'pages;
            }
        }
        if !full {
            break;
        }
    }
    ok(&json!({ "files": out, "next_after": next_after }))
}
