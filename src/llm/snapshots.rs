//! Per-conversation KV snapshots on disk (`DATA_DIR/kv/`): when a chat's KV sequence is evicted
//! (another conversation needs the cells, the model is unloaded, the daemon stops), its state is
//! saved with the tokens it holds; when a prompt extends a saved token list, the state is
//! restored into a free sequence and only the new tokens are evaluated. On 2 cores a 1.5B model
//! evaluates a prompt at 25–80 tokens/s, so a 3,000-token history costs a minute; reading its
//! ~80 MB of KV state back costs a fraction of a second.
//!
//! Why files are never trusted: a snapshot belongs to one model file and one context layout
//! ([`model_key`]: the model's sha256, the cache type and flash attention), and to one exact token
//! list. Each file carries its header (model key, conversation, tokens) and a blake3 checksum of
//! everything; anything that does not match (other model, edited history, torn or corrupt file)
//! is deleted, never handed to llama.cpp.
//!
//! Why writes happen on a thread of their own: copying a sequence's state out of the context is
//! a memory copy on the inference thread, but hashing and writing ~100 MB is not done while
//! streams wait for their next token. Queued bytes are bounded ([`MAX_PENDING_BYTES`]); a
//! snapshot that does not fit is skipped (the conversation is re-evaluated later, nothing is
//! lost). The directory is bounded by `kv_cache_bytes`, least recently used first.
//!
//! A deleted conversation's snapshots are deleted with it, and a save still queued for it is
//! dropped ([`KvSnapshots::forget`]).

use std::collections::{HashSet, VecDeque};
use std::fs::File;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::sync::{Arc, Condvar, Mutex, PoisonError};
use std::time::{Duration, SystemTime};

use llama_cpp_2::token::LlamaToken;
use serde::{Deserialize, Serialize};

use crate::metrics::METRICS;

/// Conversations shorter than this are not saved: re-evaluating them costs about what reading
/// their state back does (a 135M model evaluates ~1,000 tokens/s).
pub(super) const MIN_TOKENS: usize = 128;
/// A snapshot is restored only when it saves at least this many tokens over what a slot already
/// holds.
pub(super) const MIN_GAIN: usize = 64;
/// Tokens at the end of an older snapshot a newer one of the same token history may differ in
/// (a reply re-tokenized at the chat template's seam) and still replace it.
const SEAM_SLACK: usize = 8;
/// Bytes of snapshots waiting for the writer; a save beyond it is skipped (a slow disk never
/// grows memory without bound).
const MAX_PENDING_BYTES: u64 = 1 << 30;
/// The largest header: the token list of a 1M-token context as JSON fits in it.
const MAX_HEADER_BYTES: u32 = 16 << 20;
/// Deleted conversations remembered, so a save queued or made after the delete is dropped.
const FORGOTTEN_KEPT: usize = 4096;
/// How long a delete waits for the writer to settle the conversation's queued saves.
const FORGET_WAIT: Duration = Duration::from_secs(10);

const MAGIC: &[u8; 8] = b"HEARTHKV";
const VERSION: u32 = 1;
const EXT: &str = "kv";

/// What a snapshot belongs to besides its tokens: the model file and the KV layout.
pub(super) fn model_key(sha256: &str, flash_attention: bool) -> String {
    format!("{sha256}.f16.fa{}", u8::from(flash_attention))
}

/// A file's header.
#[derive(Serialize, Deserialize)]
struct Header {
    model: String,
    conversation: Option<String>,
    tokens: Vec<i32>,
}

#[derive(Clone)]
struct Entry {
    file: String,
    model: String,
    conversation: Option<String>,
    tokens: Arc<[i32]>,
    bytes: u64,
    used: SystemTime,
}

#[derive(Default)]
struct Index {
    entries: Vec<Entry>,
    bytes: u64,
    /// Bytes handed to the writer and not yet written.
    pending: u64,
    forgotten: HashSet<String>,
    forgotten_order: VecDeque<String>,
}

enum Job {
    Write {
        header: Header,
        file: String,
        payload: Vec<u8>,
    },
    /// Deletes a conversation's snapshots (after any write queued before it), then signals.
    Forget(String, mpsc::Sender<()>),
}

struct Inner {
    dir: PathBuf,
    limit: u64,
    index: Mutex<Index>,
    /// Signalled when `pending` drops.
    written: Condvar,
    tx: Mutex<Option<mpsc::Sender<Job>>>,
}

/// The snapshot directory: an index of what is on disk and the writer thread. Cheap to clone.
#[derive(Clone)]
pub struct KvSnapshots {
    inner: Arc<Inner>,
}

/// A snapshot that matches a prompt.
pub(super) struct Hit {
    pub(super) file: String,
    /// The tokens the saved state holds.
    pub(super) tokens: Arc<[i32]>,
    /// How many of them the prompt shares (and fewer than the prompt's length).
    pub(super) usable: usize,
}

/// Why a snapshot was not used.
#[derive(Debug, thiserror::Error)]
pub(super) enum Discard {
    #[error("cannot read it: {0}")]
    Io(#[from] std::io::Error),
    #[error("it is damaged: {0}")]
    Damaged(&'static str),
}

impl KvSnapshots {
    /// Opens `dir` (creating it), indexing the snapshots there and deleting what is damaged or
    /// left over from an interrupted write; `limit` bytes are kept at most (0: snapshots off).
    pub fn open(dir: &Path, limit: u64) -> std::io::Result<KvSnapshots> {
        std::fs::create_dir_all(dir)?;
        let mut index = Index::default();
        let mut damaged = 0;
        for item in std::fs::read_dir(dir)? {
            let item = item?;
            let path = item.path();
            let name = item.file_name().to_string_lossy().to_string();
            if path.extension().and_then(|e| e.to_str()) != Some(EXT) {
                if name.ends_with(".tmp") {
                    let _ = std::fs::remove_file(&path);
                }
                continue;
            }
            match read_header(&path) {
                Ok((header, bytes, used)) => index.insert(Entry {
                    file: name,
                    model: header.model,
                    conversation: header.conversation,
                    tokens: header.tokens.into(),
                    bytes,
                    used,
                }),
                Err(err) => {
                    damaged += 1;
                    tracing::warn!(file = %path.display(), error = %err, "deleting a KV snapshot");
                    let _ = std::fs::remove_file(&path);
                }
            }
        }
        let inner = Arc::new(Inner {
            dir: dir.to_path_buf(),
            limit,
            index: Mutex::new(index),
            written: Condvar::new(),
            tx: Mutex::new(None),
        });
        inner.trim();
        let (tx, rx) = mpsc::channel();
        let writer = inner.clone();
        std::thread::Builder::new()
            .name("hearth-kv-writer".into())
            .spawn(move || writer.write_loop(&rx))?;
        *inner.tx.lock().unwrap_or_else(PoisonError::into_inner) = Some(tx);
        let (count, bytes) = {
            let index = inner.lock();
            (index.entries.len(), index.bytes)
        };
        tracing::info!(dir = %dir.display(), snapshots = count, bytes, damaged, "KV snapshots indexed");
        Ok(KvSnapshots { inner })
    }

    /// Snapshots on disk and their bytes.
    pub fn usage(&self) -> (usize, u64) {
        let index = self.inner.lock();
        (index.entries.len(), index.bytes)
    }

    /// Whether a sequence holding `tokens` is worth saving now: long enough, not saved already
    /// (an identical snapshot is only marked used), its conversation not deleted, and room in
    /// the writer's queue for about `bytes`.
    pub(super) fn wants(
        &self,
        model: &str,
        conversation: Option<&str>,
        tokens: &[LlamaToken],
        bytes: usize,
    ) -> bool {
        if self.inner.limit == 0 || tokens.len() < MIN_TOKENS {
            return false;
        }
        let mut index = self.inner.lock();
        if conversation.is_some_and(|c| index.forgotten.contains(c)) {
            return false;
        }
        if let Some(entry) = index
            .entries
            .iter_mut()
            .find(|e| e.model == model && same(&e.tokens, tokens))
        {
            entry.used = SystemTime::now();
            return false;
        }
        let bytes = bytes as u64;
        if bytes > self.inner.limit || index.pending + bytes > MAX_PENDING_BYTES {
            tracing::debug!(
                bytes,
                pending = index.pending,
                "KV snapshot skipped: the writer is behind"
            );
            return false;
        }
        true
    }

    /// Queues `payload` (a sequence's state holding `tokens`) for writing.
    pub(super) fn save(
        &self,
        model: &str,
        conversation: Option<&str>,
        tokens: &[LlamaToken],
        payload: Vec<u8>,
    ) {
        let tokens: Vec<i32> = tokens.iter().map(|t| t.0).collect();
        let file = file_name(model, &tokens);
        let header = Header {
            model: model.to_string(),
            conversation: conversation.map(str::to_string),
            tokens,
        };
        self.inner.lock().pending += payload.len() as u64;
        let len = payload.len() as u64;
        let sent = self.inner.send(Job::Write {
            header,
            file,
            payload,
        });
        if !sent {
            self.inner.done_pending(len);
        }
    }

    /// The snapshot of `model` sharing the longest prefix with `prompt`, among those the prompt
    /// continues: it starts with the snapshot's whole token list, give or take `slack` tokens at
    /// the end (a stored reply can tokenize differently at the template's seam than it did when
    /// it was generated). Snapshots of the same conversation that the prompt no longer continues
    /// (its history was edited or cut) are deleted.
    pub(super) fn find(
        &self,
        model: &str,
        conversation: Option<&str>,
        prompt: &[LlamaToken],
        slack: usize,
    ) -> Option<Hit> {
        if self.inner.limit == 0 || prompt.is_empty() {
            return None;
        }
        let mut stale = Vec::new();
        let hit = {
            let mut index = self.inner.lock();
            let mut best: Option<(&Entry, usize)> = None;
            for entry in index.entries.iter().filter(|e| e.model == model) {
                let shared = shared_prefix(&entry.tokens, prompt);
                if shared >= MIN_TOKENS && shared + slack >= entry.tokens.len() {
                    if best.is_none_or(|(_, b)| b < shared) {
                        best = Some((entry, shared));
                    }
                } else if conversation.is_some() && entry.conversation.as_deref() == conversation {
                    stale.push(entry.file.clone());
                }
            }
            let hit = best.map(|(e, shared)| Hit {
                file: e.file.clone(),
                tokens: e.tokens.clone(),
                // At least one prompt token is evaluated, for logits.
                usable: shared.min(prompt.len() - 1),
            });
            for file in &stale {
                index.remove(file);
            }
            hit
        };
        for file in stale {
            tracing::debug!(
                file,
                "deleting a KV snapshot its conversation no longer extends"
            );
            let _ = std::fs::remove_file(self.inner.dir.join(file));
        }
        hit
    }

    /// Reads `hit`'s state, checking it whole; a damaged file is deleted.
    pub(super) fn load(&self, hit: &Hit, model: &str) -> Result<Vec<u8>, Discard> {
        let path = self.inner.dir.join(&hit.file);
        let result = read_whole(&path, model, &hit.tokens);
        match &result {
            Ok(_) => {
                let now = SystemTime::now();
                if let Some(e) = self
                    .inner
                    .lock()
                    .entries
                    .iter_mut()
                    .find(|e| e.file == hit.file)
                {
                    e.used = now;
                }
                // The least recently used go first after a restart too.
                if let Ok(file) = File::options().write(true).open(&path) {
                    let _ = file.set_modified(now);
                }
            }
            Err(err) => self.discard(&hit.file, err),
        }
        result
    }

    /// Deletes a snapshot llama.cpp or the checks refused.
    pub(super) fn discard(&self, file_name: &str, why: &dyn std::fmt::Display) {
        tracing::warn!(file = file_name, reason = %why, "deleting a KV snapshot");
        METRICS.kv_discarded.inc();
        self.inner.lock().remove(file_name);
        let _ = std::fs::remove_file(self.inner.dir.join(file_name));
    }

    /// Deletes `conversation`'s snapshots, including saves queued for it; later saves for it
    /// are refused. Blocks until the writer settled it (at most [`FORGET_WAIT`]).
    pub fn forget(&self, conversation: &str) {
        {
            let mut index = self.inner.lock();
            if index.forgotten.insert(conversation.to_string()) {
                index.forgotten_order.push_back(conversation.to_string());
                while index.forgotten_order.len() > FORGOTTEN_KEPT {
                    if let Some(old) = index.forgotten_order.pop_front() {
                        index.forgotten.remove(&old);
                    }
                }
            }
        }
        let (done_tx, done_rx) = mpsc::channel();
        let sent = self
            .inner
            .send(Job::Forget(conversation.to_string(), done_tx));
        if !sent || done_rx.recv_timeout(FORGET_WAIT).is_err() {
            self.inner.forget_now(conversation);
        }
    }

    /// Waits until the queued snapshots are written, at most `wait` (daemon shutdown).
    pub fn flush(&self, wait: Duration) {
        let deadline = std::time::Instant::now() + wait;
        let mut index = self.inner.lock();
        while index.pending > 0 {
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            if left.is_zero() {
                tracing::warn!(
                    pending = index.pending,
                    "KV snapshots still being written at exit"
                );
                return;
            }
            index = self
                .inner
                .written
                .wait_timeout(index, left)
                .unwrap_or_else(PoisonError::into_inner)
                .0;
        }
    }
}

impl Index {
    fn insert(&mut self, entry: Entry) {
        self.remove(&entry.file);
        self.bytes += entry.bytes;
        self.entries.push(entry);
    }

    fn remove(&mut self, file: &str) -> bool {
        let Some(i) = self.entries.iter().position(|e| e.file == file) else {
            return false;
        };
        let entry = self.entries.swap_remove(i);
        self.bytes -= entry.bytes;
        true
    }
}

impl Inner {
    fn lock(&self) -> std::sync::MutexGuard<'_, Index> {
        self.index.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Hands `job` to the writer thread; false when it is gone.
    fn send(&self, job: Job) -> bool {
        self.tx
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .as_ref()
            .is_some_and(|tx| tx.send(job).is_ok())
    }

    fn done_pending(&self, bytes: u64) {
        let mut index = self.lock();
        index.pending = index.pending.saturating_sub(bytes);
        self.written.notify_all();
    }

    fn write_loop(&self, rx: &mpsc::Receiver<Job>) {
        while let Ok(job) = rx.recv() {
            match job {
                Job::Write {
                    header,
                    file,
                    payload,
                } => {
                    let len = payload.len() as u64;
                    self.write(header, file, &payload);
                    drop(payload);
                    self.done_pending(len);
                }
                Job::Forget(conversation, done) => {
                    self.forget_now(&conversation);
                    let _ = done.send(());
                }
            }
        }
    }

    fn write(&self, header: Header, file: String, payload: &[u8]) {
        if header
            .conversation
            .as_deref()
            .is_some_and(|c| self.lock().forgotten.contains(c))
        {
            return;
        }
        let started = std::time::Instant::now();
        let path = self.dir.join(&file);
        let tmp = self.dir.join(format!("{file}.tmp"));
        let bytes = match write_file(&tmp, &path, &header, payload) {
            Ok(bytes) => bytes,
            Err(err) => {
                tracing::warn!(file = %path.display(), error = %err, "cannot write a KV snapshot");
                let _ = std::fs::remove_file(&tmp);
                return;
            }
        };
        METRICS.kv_saved.inc();
        tracing::debug!(
            file,
            tokens = header.tokens.len(),
            bytes,
            ms = started.elapsed().as_millis() as u64,
            "KV snapshot written"
        );
        let tokens: Arc<[i32]> = header.tokens.into();
        let superseded: Vec<String> = {
            let mut index = self.lock();
            // Deleted while it was being written: it goes too.
            if header
                .conversation
                .as_deref()
                .is_some_and(|c| index.forgotten.contains(c))
            {
                drop(index);
                let _ = std::fs::remove_file(&path);
                return;
            }
            // A chat's history only grows (an edited one makes the older state useless too):
            // its latest state replaces the others. Without a chat id, a snapshot this one
            // continues (give or take the template seam) is never the best match again.
            let superseded: Vec<String> = index
                .entries
                .iter()
                .filter(|e| {
                    e.model == header.model
                        && e.conversation == header.conversation
                        && e.file != file
                        && (e.conversation.is_some()
                            || (e.tokens.len() <= tokens.len()
                                && shared_i32(&e.tokens, &tokens) + SEAM_SLACK >= e.tokens.len()))
                })
                .map(|e| e.file.clone())
                .collect();
            for f in &superseded {
                index.remove(f);
            }
            index.insert(Entry {
                file,
                model: header.model,
                conversation: header.conversation,
                tokens,
                bytes,
                used: SystemTime::now(),
            });
            superseded
        };
        for f in superseded {
            let _ = std::fs::remove_file(self.dir.join(f));
        }
        self.trim();
    }

    fn forget_now(&self, conversation: &str) {
        let files: Vec<String> = {
            let mut index = self.lock();
            let files: Vec<String> = index
                .entries
                .iter()
                .filter(|e| e.conversation.as_deref() == Some(conversation))
                .map(|e| e.file.clone())
                .collect();
            for f in &files {
                index.remove(f);
            }
            files
        };
        for f in files {
            if let Err(err) = std::fs::remove_file(self.dir.join(&f)) {
                tracing::warn!(file = f, error = %err, "cannot delete a deleted chat's KV snapshot");
            }
        }
    }

    /// Deletes the least recently used snapshots until the directory is within its limit.
    fn trim(&self) {
        let victims: Vec<String> = {
            let mut index = self.lock();
            let mut victims = Vec::new();
            while index.bytes > self.limit {
                let Some(oldest) = index
                    .entries
                    .iter()
                    .min_by_key(|e| e.used)
                    .map(|e| e.file.clone())
                else {
                    break;
                };
                index.remove(&oldest);
                victims.push(oldest);
            }
            victims
        };
        for f in victims {
            tracing::debug!(file = f, "KV snapshot evicted (kv_cache_bytes)");
            let _ = std::fs::remove_file(self.dir.join(f));
        }
    }
}

/// Whether `a` and `b` are the same tokens.
fn same(a: &[i32], b: &[LlamaToken]) -> bool {
    a.len() == b.len() && shared_prefix(a, b) == a.len()
}

fn shared_i32(a: &[i32], b: &[i32]) -> usize {
    a.iter().zip(b).take_while(|(x, y)| x == y).count()
}

fn shared_prefix(a: &[i32], b: &[LlamaToken]) -> usize {
    a.iter().zip(b).take_while(|(x, y)| **x == y.0).count()
}

/// One name per (model, token list): saving the same state again replaces the file.
fn file_name(model: &str, tokens: &[i32]) -> String {
    let mut hasher = blake3::Hasher::new();
    hasher.update(model.as_bytes());
    for t in tokens {
        hasher.update(&t.to_le_bytes());
    }
    let hex = hasher.finalize().to_hex();
    format!("{}.{EXT}", &hex[..32])
}

/// magic, version, header length, header (JSON), payload length, payload, blake3 of all before.
fn write_file(tmp: &Path, path: &Path, header: &Header, payload: &[u8]) -> std::io::Result<u64> {
    let header = serde_json::to_vec(header).map_err(std::io::Error::other)?;
    let header_len = u32::try_from(header.len()).map_err(std::io::Error::other)?;
    let mut out = std::io::BufWriter::with_capacity(1 << 20, File::create(tmp)?);
    let mut hasher = blake3::Hasher::new();
    let mut put = |bytes: &[u8]| -> std::io::Result<()> {
        hasher.update(bytes);
        out.write_all(bytes)
    };
    put(MAGIC)?;
    put(&VERSION.to_le_bytes())?;
    put(&header_len.to_le_bytes())?;
    put(&header)?;
    put(&(payload.len() as u64).to_le_bytes())?;
    put(payload)?;
    out.write_all(hasher.finalize().as_bytes())?;
    let file = out.into_inner().map_err(|e| e.into_error())?;
    // A cache, but a torn file must never carry the final name: written, synced, renamed.
    file.sync_all()?;
    drop(file);
    std::fs::rename(tmp, path)?;
    Ok(std::fs::metadata(path)?.len())
}

/// The fixed part before the header.
const PREAMBLE: usize = 8 + 4 + 4;

fn read_preamble(file: &mut File) -> Result<u32, Discard> {
    let mut pre = [0u8; PREAMBLE];
    file.read_exact(&mut pre)?;
    if &pre[..8] != MAGIC {
        return Err(Discard::Damaged("not a hearth KV snapshot"));
    }
    if pre[8..12] != VERSION.to_le_bytes() {
        return Err(Discard::Damaged("another snapshot version"));
    }
    let header_len = u32::from_le_bytes([pre[12], pre[13], pre[14], pre[15]]);
    if header_len > MAX_HEADER_BYTES {
        return Err(Discard::Damaged("header too long"));
    }
    Ok(header_len)
}

/// The header, the file's length and its time of last use; the length must be exactly what
/// the header and payload length say.
fn read_header(path: &Path) -> Result<(Header, u64, SystemTime), Discard> {
    let mut file = File::open(path)?;
    let meta = file.metadata()?;
    let header_len = read_preamble(&mut file)?;
    let mut header = vec![0u8; header_len as usize];
    file.read_exact(&mut header)?;
    let header: Header =
        serde_json::from_slice(&header).map_err(|_| Discard::Damaged("unreadable header"))?;
    let mut len = [0u8; 8];
    file.read_exact(&mut len)?;
    let payload = u64::from_le_bytes(len);
    let expected = (PREAMBLE as u64 + u64::from(header_len) + 8)
        .checked_add(payload)
        .and_then(|n| n.checked_add(32));
    if expected != Some(meta.len()) {
        return Err(Discard::Damaged("truncated or padded"));
    }
    let used = meta.modified().unwrap_or(SystemTime::UNIX_EPOCH);
    Ok((header, meta.len(), used))
}

/// The payload of a whole, checked file whose header names `model` and `tokens`.
fn read_whole(path: &Path, model: &str, tokens: &[i32]) -> Result<Vec<u8>, Discard> {
    let mut all = Vec::new();
    File::open(path)?.read_to_end(&mut all)?;
    if all.len() < PREAMBLE + 8 + 32 {
        return Err(Discard::Damaged("truncated"));
    }
    let (body, sum) = all.split_at(all.len() - 32);
    if blake3::hash(body).as_bytes() != sum {
        return Err(Discard::Damaged("checksum mismatch"));
    }
    let mut cursor = std::io::Cursor::new(body);
    let mut pre = [0u8; PREAMBLE];
    cursor.read_exact(&mut pre)?;
    let header_len = u32::from_le_bytes([pre[12], pre[13], pre[14], pre[15]]) as usize;
    if &pre[..8] != MAGIC || pre[8..12] != VERSION.to_le_bytes() {
        return Err(Discard::Damaged("not a hearth KV snapshot"));
    }
    let start = PREAMBLE + header_len + 8;
    if start > body.len() {
        return Err(Discard::Damaged("truncated"));
    }
    let header: Header = serde_json::from_slice(&body[PREAMBLE..PREAMBLE + header_len])
        .map_err(|_| Discard::Damaged("unreadable header"))?;
    if header.model != model || header.tokens[..] != tokens[..] {
        return Err(Discard::Damaged("header differs from its index entry"));
    }
    let mut payload = all;
    payload.truncate(payload.len() - 32);
    payload.drain(..start);
    Ok(payload)
}

/// The raw per-sequence state calls. llama-cpp-2's safe `state_seq_get`/`state_seq_set` keep
/// the bytes opaque (they cannot leave the process or come back from disk), so saving to a
/// file off the inference thread needs the raw copy. Only bytes this module wrote and checked
/// whole (blake3) ever reach `set`, and llama.cpp checks the layout on top.
#[allow(unsafe_code)]
pub(super) mod ffi {
    use llama_cpp_2::context::LlamaContext;
    use llama_cpp_2::LlamaStateSeqFlags;

    /// The bytes of `seq`'s state (cells, positions, keys and values).
    pub(in crate::llm) fn get(ctx: &LlamaContext<'_>, seq: i32) -> Option<Vec<u8>> {
        let flags = LlamaStateSeqFlags::empty();
        let size = ctx.state_seq_get_size_ext(seq, flags);
        // Measured: 571 tokens of the 1.5B model (16 MB) take 12.7 ms, nearly all of it
        // llama.cpp's serialisation (skipping the zeroing saved nothing measurable).
        let mut bytes = vec![0u8; size];
        // SAFETY: `bytes` holds exactly the size llama.cpp reported for this sequence on this
        // thread, and nothing changes the context between the two calls.
        let n = unsafe { ctx.state_seq_get_data_ext(bytes.as_mut_ptr(), seq, flags) };
        (n == size).then_some(bytes)
    }

    /// Restores `bytes` (from [`get`], checked) into `seq`; false when llama.cpp refuses them.
    pub(in crate::llm) fn set(ctx: &mut LlamaContext<'_>, seq: i32, bytes: &[u8]) -> bool {
        // SAFETY: llama.cpp reads at most `bytes.len()` bytes and validates the layout; the
        // bytes are a state llama.cpp produced, verified by checksum before this call.
        unsafe { ctx.state_seq_set_data_ext(bytes, seq, LlamaStateSeqFlags::empty()) }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn toks(n: i32) -> Vec<LlamaToken> {
        (0..n).map(LlamaToken::new).collect()
    }

    fn wait_written(s: &KvSnapshots) {
        s.flush(Duration::from_secs(10));
    }

    #[test]
    fn a_saved_state_comes_back_only_for_prompts_that_extend_it() {
        let dir = tempfile::tempdir().unwrap();
        let s = KvSnapshots::open(dir.path(), 1 << 30).unwrap();
        let tokens = toks(200);
        assert!(s.wants("m", Some("c1"), &tokens, 1000));
        s.save("m", Some("c1"), &tokens, vec![7u8; 1000]);
        wait_written(&s);
        assert!(!s.wants("m", Some("c1"), &tokens, 1000), "saved already");
        let mut prompt = toks(200);
        prompt.push(LlamaToken::new(5));
        let hit = s.find("m", Some("c1"), &prompt, 0).expect("extends it");
        assert_eq!((hit.tokens.len(), hit.usable), (200, 200));
        assert_eq!(s.load(&hit, "m").unwrap(), vec![7u8; 1000]);
        assert!(s.find("other-model", None, &prompt, 0).is_none());
        let hit = s.find("m", None, &tokens, 0).unwrap();
        assert_eq!(hit.usable, 199, "one prompt token is left to evaluate");
        // The template's seam: the last tokens differ, within the slack.
        let mut seam = toks(197);
        seam.extend([
            LlamaToken::new(-5),
            LlamaToken::new(-6),
            LlamaToken::new(-7),
        ]);
        assert!(s.find("m", None, &seam, 0).is_none());
        assert_eq!(s.find("m", None, &seam, 8).unwrap().usable, 197);

        // Reopened (a restart): the index is rebuilt from the files.
        drop(s);
        let s = KvSnapshots::open(dir.path(), 1 << 30).unwrap();
        assert_eq!(s.usage().0, 1);
        let hit = s.find("m", None, &prompt, 0).unwrap();
        assert_eq!(s.load(&hit, "m").unwrap().len(), 1000);

        // An edited history: the chat's prompt no longer extends it, so it goes.
        let mut edited = toks(300);
        edited[10] = LlamaToken::new(-1);
        assert!(s.find("m", Some("c1"), &edited, 8).is_none());
        assert_eq!(s.usage().0, 0);
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
    }

    #[test]
    fn a_damaged_file_is_deleted_never_loaded() {
        let dir = tempfile::tempdir().unwrap();
        let s = KvSnapshots::open(dir.path(), 1 << 30).unwrap();
        s.save("m", None, &toks(150), vec![1u8; 4096]);
        wait_written(&s);
        let path = std::fs::read_dir(dir.path())
            .unwrap()
            .next()
            .unwrap()
            .unwrap()
            .path();
        let mut bytes = std::fs::read(&path).unwrap();
        let n = bytes.len();
        bytes[n - 100] ^= 0x40;
        std::fs::write(&path, &bytes).unwrap();
        let hit = s.find("m", None, &toks(151), 0).unwrap();
        assert!(matches!(
            s.load(&hit, "m"),
            Err(Discard::Damaged("checksum mismatch"))
        ));
        assert!(!path.exists());

        // A truncated file is dropped when the index is rebuilt; a leftover temp file too.
        s.save("m", None, &toks(150), vec![1u8; 4096]);
        wait_written(&s);
        std::fs::write(dir.path().join("x.kv.tmp"), b"partial").unwrap();
        let path = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().path())
            .find(|p| p.extension().is_some_and(|e| e == "kv"))
            .unwrap();
        let bytes = std::fs::read(&path).unwrap();
        std::fs::write(&path, &bytes[..bytes.len() - 10]).unwrap();
        let s = KvSnapshots::open(dir.path(), 1 << 30).unwrap();
        assert_eq!(s.usage(), (0, 0));
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
    }

    #[test]
    fn the_directory_keeps_its_limit_and_a_longer_save_supersedes_a_shorter() {
        let dir = tempfile::tempdir().unwrap();
        let s = KvSnapshots::open(dir.path(), 10_000).unwrap();
        s.save("m", Some("a"), &toks(130), vec![0u8; 3000]);
        s.save("m", Some("a"), &toks(140), vec![0u8; 3000]);
        wait_written(&s);
        assert_eq!(s.usage().0, 1, "the longer one replaces the shorter");
        let other: Vec<LlamaToken> = (100..300).map(LlamaToken::new).collect();
        s.save("m", Some("b"), &other, vec![0u8; 3000]);
        let third: Vec<LlamaToken> = (500..700).map(LlamaToken::new).collect();
        s.save("m", Some("c"), &third, vec![0u8; 3000]);
        wait_written(&s);
        let (count, bytes) = s.usage();
        assert!(bytes <= 10_000, "{bytes}");
        assert_eq!(count, 2, "the least recently used went");
        assert!(
            s.find("m", None, &toks(141), 0).is_none(),
            "chat a was the oldest"
        );
    }

    #[test]
    fn a_deleted_conversation_loses_its_snapshots_and_later_saves() {
        let dir = tempfile::tempdir().unwrap();
        let s = KvSnapshots::open(dir.path(), 1 << 30).unwrap();
        s.save("m", Some("gone"), &toks(150), vec![0u8; 100]);
        s.save("m", Some("kept"), &toks(160)[10..].to_vec(), vec![0u8; 100]);
        s.forget("gone");
        assert_eq!(s.usage().0, 1);
        assert!(!s.wants("m", Some("gone"), &toks(170), 100));
        s.save("m", Some("gone"), &toks(170), vec![0u8; 100]);
        wait_written(&s);
        assert_eq!(s.usage().0, 1);
    }

    #[test]
    fn off_means_nothing_is_saved_or_found() {
        let dir = tempfile::tempdir().unwrap();
        let s = KvSnapshots::open(dir.path(), 0).unwrap();
        assert!(!s.wants("m", None, &toks(500), 10));
        assert!(s.find("m", None, &toks(500), 0).is_none());
    }
}
