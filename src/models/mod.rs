//! Model files: the manifest compiled into the binary, and sha256 verification of a file before
//! any parser (llama.cpp, onnxruntime) sees it.
//!
//! The manifest (`models/manifest.toml`) is the allow-list: a GGUF is a parser input with a long
//! CVE history, so hearth only hands llama.cpp a file whose bytes hash to a pinned value. Hashing
//! 100 MB takes ~0.3 s, so a successful check is cached in the store keyed by inode, size and
//! mtime; a restart on an unchanged file does not hash again.
//!
//! The file the loader reads is the one that was checked (`sys::open_model`, `sys::loader_path`):
//! on Linux the loader gets `/proc/self/fd/N` of the descriptor that was hashed; on Windows the
//! file stays open with read-only sharing until the load is done, so nobody can change it. Either
//! way, swapping the file between check and load changes nothing.

pub mod gguf;
pub mod user;

use std::fs::File;
use std::io::Read;
use std::path::{Path, PathBuf};

use serde::Deserialize;
use sha2::{Digest, Sha256};

use crate::store::{Store, VerifiedFile};

/// The manifest as built into this binary.
const MANIFEST_TOML: &str = include_str!("../../models/manifest.toml");

/// The script that fetches pinned model files, run from a hearth source checkout.
pub const FETCH_SCRIPT: &str = "./models/fetch";

#[derive(Debug, Clone, Deserialize)]
pub struct Manifest {
    #[serde(rename = "model")]
    pub entries: Vec<Entry>,
}

/// One pinned file.
#[derive(Debug, Clone, Deserialize)]
pub struct Entry {
    pub name: String,
    pub role: Role,
    pub file: String,
    pub size: u64,
    pub sha256: String,
    pub source: String,
    #[serde(default)]
    pub group: Option<String>,
    #[serde(default)]
    pub default: bool,
    /// A file the user added (pinned in the store), not one of the manifest's.
    #[serde(skip)]
    pub user: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    Chat,
    Embed,
    Tokenizer,
    Runtime,
    /// Random-weight files for mechanical tests; loadable as chat models.
    Test,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Chat => "chat",
            Role::Embed => "embed",
            Role::Tokenizer => "tokenizer",
            Role::Runtime => "runtime",
            Role::Test => "test",
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ModelError {
    #[error("unknown model '{0}'; known chat models: {1}")]
    Unknown(String, String),
    #[error("model file {path} is missing; fetch it with `{fetch}`", path = .path.display())]
    Missing { path: PathBuf, fetch: String },
    #[error("model file {path} is not a regular file", path = .0.display())]
    NotAFile(PathBuf),
    #[error("model file {path} has size {found}, the manifest pins {expected}; re-fetch it with `{fetch}`", path = .path.display())]
    WrongSize {
        path: PathBuf,
        found: u64,
        expected: u64,
        fetch: String,
    },
    #[error("model file {path} has sha256 {found}, the manifest pins {expected}; refusing to load it", path = .path.display())]
    WrongHash {
        path: PathBuf,
        found: String,
        expected: String,
    },
    #[error("model file {path}: {err}", path = .path.display())]
    Io { path: PathBuf, err: std::io::Error },
    /// A user's pinned file is gone.
    #[error("the file of model '{name}' is gone ({path}); put it back, or unpin it with `hearth models rm {name}`", path = .path.display())]
    Gone { name: String, path: PathBuf },
    /// A user's pinned file no longer has the pinned bytes: never parsed.
    #[error("the file of model '{name}' changed since it was added ({detail}); it is not loaded. If the change is yours, add it again: `hearth models add {path} --name {name}`", path = .path.display())]
    Changed {
        name: String,
        path: PathBuf,
        detail: String,
    },
}

impl Manifest {
    /// The manifest compiled into this binary.
    pub fn builtin() -> Manifest {
        // A unit test parses the same text, so this cannot fail in a tested build.
        toml::from_str(MANIFEST_TOML).expect("models/manifest.toml is valid")
    }

    /// Any entry by name.
    pub fn entry(&self, name: &str) -> Result<&Entry, ModelError> {
        self.entries.iter().find(|e| e.name == name).ok_or_else(|| {
            let known: Vec<_> = self.entries.iter().map(|e| e.name.as_str()).collect();
            ModelError::Unknown(name.to_string(), known.join(", "))
        })
    }

    /// The chat model by name, or the default one.
    pub fn chat_model(&self, name: Option<&str>) -> Result<&Entry, ModelError> {
        let loadable = |e: &&Entry| matches!(e.role, Role::Chat | Role::Test);
        let found = match name {
            Some(name) => self
                .entries
                .iter()
                .filter(loadable)
                .find(|e| e.name == name),
            None => self.entries.iter().filter(loadable).find(|e| e.default),
        };
        found.ok_or_else(|| {
            let known: Vec<_> = self
                .entries
                .iter()
                .filter(loadable)
                .map(|e| e.name.as_str())
                .collect();
            ModelError::Unknown(name.unwrap_or("(default)").to_string(), known.join(", "))
        })
    }
}

/// The chat model called `name` (a manifest chat/test model or a user's pin); `None` is
/// `default`. An unknown name lists every known one.
pub fn resolve(store: &Store, name: &str) -> Result<Entry, ModelError> {
    let manifest = Manifest::builtin();
    if let Ok(entry) = manifest.chat_model(Some(name)) {
        return Ok(entry.clone());
    }
    let pinned = store.user_models().unwrap_or_default();
    if let Some(model) = pinned.iter().find(|m| m.name == name) {
        return Ok(Entry::from_user(model));
    }
    let known: Vec<String> = manifest
        .entries
        .iter()
        .filter(|e| matches!(e.role, Role::Chat | Role::Test))
        .map(|e| e.name.clone())
        .chain(pinned.into_iter().map(|m| m.name))
        .collect();
    Err(ModelError::Unknown(name.to_string(), known.join(", ")))
}

/// A model file whose bytes matched the manifest. Holds the checked descriptor open.
#[derive(Debug)]
pub struct VerifiedModel {
    pub name: String,
    /// The path the user knows the file by (for messages).
    pub path: PathBuf,
    /// The path to hand to a loader: the checked descriptor where the OS allows it.
    pub load_path: PathBuf,
    /// Whether the hash was computed now (false when the cache vouched for the file).
    pub hashed: bool,
    /// The pinned (and checked) sha256: what KV snapshots of this model are keyed by.
    pub sha256: String,
    _file: File,
}

/// Cheap checks that need no hashing: present, a regular file, the pinned size. Run before the
/// daemon binds, so a missing model is a one-line startup error.
pub fn precheck(models_dir: &Path, entry: &Entry) -> Result<PathBuf, ModelError> {
    precheck_file(models_dir, entry).map_err(|err| for_user(entry, err))
}

/// A user's file has no fetch command and no manifest: its errors say "gone" and "changed".
fn for_user(entry: &Entry, err: ModelError) -> ModelError {
    if !entry.user {
        return err;
    }
    match err {
        ModelError::Missing { path, .. } => ModelError::Gone {
            name: entry.name.clone(),
            path,
        },
        ModelError::WrongSize {
            path,
            found,
            expected,
            ..
        } => ModelError::Changed {
            name: entry.name.clone(),
            path,
            detail: format!("size {found}, pinned {expected}"),
        },
        ModelError::WrongHash {
            path,
            found,
            expected,
        } => ModelError::Changed {
            name: entry.name.clone(),
            path,
            detail: format!("sha256 {found}, pinned {expected}"),
        },
        other => other,
    }
}

fn precheck_file(models_dir: &Path, entry: &Entry) -> Result<PathBuf, ModelError> {
    let path = models_dir.join(&entry.file);
    let meta = match std::fs::metadata(&path) {
        Ok(meta) => meta,
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => {
            return Err(ModelError::Missing {
                path,
                fetch: fetch_command(models_dir, entry),
            })
        }
        Err(err) => return Err(ModelError::Io { path, err }),
    };
    if !meta.is_file() {
        return Err(ModelError::NotAFile(path));
    }
    if meta.len() != entry.size {
        return Err(ModelError::WrongSize {
            path,
            found: meta.len(),
            expected: entry.size,
            fetch: fetch_command(models_dir, entry),
        });
    }
    Ok(path)
}

/// A manifest model as the model list shows it.
#[derive(Debug)]
pub struct Listing {
    pub entry: Entry,
    pub file: FileCheck,
    /// The GGUF header of a verified chat model (never read from an unverified file).
    pub info: Option<gguf::GgufInfo>,
    /// Why the header of a verified file could not be read.
    pub info_error: Option<String>,
}

/// What the model list knows of a model's file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FileCheck {
    /// Present with the pinned size and sha256.
    Verified,
    /// Not in the models dir.
    Missing,
    /// Present but not the pinned bytes (size or sha256 differ): never loaded.
    Changed(String),
    /// A `.gguf` file in the models dir that nothing pins: never read; `hearth models add`
    /// pins it.
    Unpinned,
}

/// Every manifest model (chat, test and embedding roles; the embedder's tokenizer and runtime
/// files belong to it and are not listed) with its file's state and, for a verified GGUF file,
/// its header. A file whose verification is not cached is hashed now, once (the store remembers
/// it). Blocking: run it off the async runtime.
pub fn list(models_dir: &Path, store: &Store) -> Vec<Listing> {
    let pinned = match store.user_models() {
        Ok(pinned) => pinned,
        Err(err) => {
            tracing::warn!(error = %err, "cannot read the pinned models");
            Vec::new()
        }
    };
    let manifest = Manifest::builtin();
    let mut known: Vec<PathBuf> = manifest
        .entries
        .iter()
        .map(|e| models_dir.join(&e.file))
        .chain(pinned.iter().map(|m| PathBuf::from(&m.path)))
        .collect();
    known.sort();
    let mut listings: Vec<Listing> = manifest
        .entries
        .into_iter()
        .filter(|e| matches!(e.role, Role::Chat | Role::Test | Role::Embed))
        .chain(pinned.iter().map(Entry::from_user))
        .map(|entry| match verify(models_dir, &entry, store) {
            Ok(verified) => {
                let (info, info_error) = if entry.role == Role::Embed {
                    (None, None)
                } else {
                    // The descriptor that was hashed, so the header read is of verified bytes.
                    match gguf::read(&verified.load_path) {
                        Ok(info) => (Some(info), None),
                        Err(err) => (None, Some(err.to_string())),
                    }
                };
                Listing {
                    entry,
                    file: FileCheck::Verified,
                    info,
                    info_error,
                }
            }
            Err(ModelError::Missing { .. } | ModelError::Gone { .. }) => Listing {
                entry,
                file: FileCheck::Missing,
                info: None,
                info_error: None,
            },
            Err(err) => Listing {
                entry,
                file: FileCheck::Changed(err.to_string()),
                info: None,
                info_error: None,
            },
        })
        .collect();
    listings.extend(unpinned(models_dir, &known));
    listings
}

/// Most unpinned files listed: a models dir is not a download folder, but it might be one.
const MAX_UNPINNED: usize = 256;

/// The `.gguf` files directly in `models_dir` that neither the manifest nor a pin names (by
/// size only; nothing is read).
fn unpinned(models_dir: &Path, known: &[PathBuf]) -> Vec<Listing> {
    let Ok(dir) = std::fs::read_dir(models_dir) else {
        return Vec::new();
    };
    let mut out: Vec<Listing> = dir
        .filter_map(Result::ok)
        .filter(|e| {
            e.file_name()
                .to_str()
                .is_some_and(|n| n.to_ascii_lowercase().ends_with(".gguf"))
        })
        .filter(|e| known.binary_search(&e.path()).is_err())
        .filter_map(|e| {
            let meta = e.metadata().ok().filter(std::fs::Metadata::is_file)?;
            let file = e.file_name().to_str()?.to_string();
            Some(Listing {
                entry: Entry {
                    name: user::default_name(&e.path()),
                    role: Role::Chat,
                    file,
                    size: meta.len(),
                    sha256: String::new(),
                    source: "unpinned".into(),
                    group: None,
                    default: false,
                    user: true,
                },
                file: FileCheck::Unpinned,
                info: None,
                info_error: None,
            })
        })
        .take(MAX_UNPINNED)
        .collect();
    out.sort_by(|a, b| a.entry.file.cmp(&b.entry.file));
    out
}

/// The exact command that fetches `entry`'s group into `models_dir` (the script's own default
/// directory is the checkout's `models/`, which need not be the one in use).
pub fn fetch_command(models_dir: &Path, entry: &Entry) -> String {
    let group = entry.group.as_deref().unwrap_or("--all");
    format!(
        "HEARTH_MODELS_DIR={} {FETCH_SCRIPT} {group}",
        models_dir.display()
    )
}

/// Verifies `entry`'s file in `models_dir` against its pinned sha256 (using the store's cache).
pub fn verify(
    models_dir: &Path,
    entry: &Entry,
    store: &Store,
) -> Result<VerifiedModel, ModelError> {
    verify_with_progress(models_dir, entry, store, &|_| {})
}

/// [`verify`], reporting the share of the file hashed so far (`0.0..=1.0`) to `progress`; a
/// cached verification reports nothing.
pub fn verify_with_progress(
    models_dir: &Path,
    entry: &Entry,
    store: &Store,
    progress: &dyn Fn(f32),
) -> Result<VerifiedModel, ModelError> {
    verify_file(models_dir, entry, store, progress).map_err(|err| for_user(entry, err))
}

fn verify_file(
    models_dir: &Path,
    entry: &Entry,
    store: &Store,
    progress: &dyn Fn(f32),
) -> Result<VerifiedModel, ModelError> {
    let path = precheck_file(models_dir, entry)?;
    let io = |err| ModelError::Io {
        path: path.clone(),
        err,
    };
    let mut file = crate::sys::open_model(&path).map_err(io)?;
    let meta = file.metadata().map_err(io)?;
    if !meta.is_file() {
        return Err(ModelError::NotAFile(path));
    }
    let key = cache_key(&file, &meta, &entry.sha256);
    let cached = store.verified_file(&path).ok().flatten();
    let hashed = cached.as_ref() != Some(&key);
    if hashed {
        let found = sha256_reporting(&mut file, meta.len(), progress).map_err(io)?;
        if found != entry.sha256 {
            return Err(ModelError::WrongHash {
                path,
                found,
                expected: entry.sha256.clone(),
            });
        }
        if let Err(err) = store.put_verified_file(&path, &key) {
            tracing::warn!(error = %err, "cannot cache model verification");
        }
    }
    let load_path = crate::sys::loader_path(&file, &path);
    Ok(VerifiedModel {
        name: entry.name.clone(),
        path,
        load_path,
        hashed,
        sha256: entry.sha256.clone(),
        _file: file,
    })
}

/// What the verification cache keys a file's hash by: size, mtime and inode (file index).
fn cache_key(file: &File, meta: &std::fs::Metadata, sha256: &str) -> VerifiedFile {
    VerifiedFile {
        size: meta.len(),
        mtime_ns: crate::sys::mtime_ns(meta),
        inode: crate::sys::file_id(file).map_or(0, |id| id.index),
        sha256: sha256.to_string(),
    }
}

/// [`sha256_of`] of a file of `len` bytes, reporting the share hashed to `progress`.
fn sha256_reporting(file: &mut File, len: u64, progress: &dyn Fn(f32)) -> std::io::Result<String> {
    let total = len.max(1);
    let mut done = 0u64;
    sha256_with(file, &mut |n| {
        done += n;
        progress(done as f32 / total as f32);
    })
}

/// Streams a file through sha256 (1 MiB reads: bounded memory for any file size).
pub fn sha256_of(file: &mut File) -> std::io::Result<String> {
    sha256_with(file, &mut |_| {})
}

/// [`sha256_of`], telling `on_read` how many bytes each read added.
fn sha256_with(file: &mut File, on_read: &mut dyn FnMut(u64)) -> std::io::Result<String> {
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = file.read(&mut buf)?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
        on_read(n as u64);
    }
    Ok(hasher
        .finalize()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn builtin_manifest_parses_and_has_one_default_chat_model() {
        let manifest = Manifest::builtin();
        let defaults: Vec<_> = manifest.entries.iter().filter(|e| e.default).collect();
        assert_eq!(defaults.len(), 1);
        assert_eq!(defaults[0].role, Role::Chat);
        assert_eq!(manifest.chat_model(None).unwrap().name, defaults[0].name);
        for entry in &manifest.entries {
            assert_eq!(entry.sha256.len(), 64, "{}", entry.name);
            assert!(!entry.file.contains('/'), "{}", entry.name);
        }
        assert!(matches!(
            manifest.chat_model(Some("nope")),
            Err(ModelError::Unknown(..))
        ));
    }

    #[test]
    fn verification_rejects_missing_resized_and_tampered_files_and_caches_success() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("db"), 8 << 20).unwrap();
        let body = b"not really a model";
        let mut entry = Entry {
            name: "t".into(),
            role: Role::Test,
            file: "t.gguf".into(),
            size: body.len() as u64,
            sha256: sha256_of(&mut tempfile_with(dir.path(), "probe", body)).unwrap(),
            source: "test".into(),
            group: None,
            default: false,
            user: false,
        };
        assert!(matches!(
            verify(dir.path(), &entry, &store),
            Err(ModelError::Missing { .. })
        ));
        std::fs::write(dir.path().join("t.gguf"), body).unwrap();
        let first = verify(dir.path(), &entry, &store).unwrap();
        assert!(first.hashed);
        let second = verify(dir.path(), &entry, &store).unwrap();
        assert!(!second.hashed, "second check must come from the cache");

        entry.sha256 = "0".repeat(64);
        assert!(matches!(
            verify(dir.path(), &entry, &store),
            Err(ModelError::WrongHash { .. })
        ));
        entry.size += 1;
        assert!(matches!(
            verify(dir.path(), &entry, &store),
            Err(ModelError::WrongSize { .. })
        ));
    }

    fn tempfile_with(dir: &Path, name: &str, body: &[u8]) -> File {
        let path = dir.join(name);
        std::fs::write(&path, body).unwrap();
        File::open(path).unwrap()
    }
}
