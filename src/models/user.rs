//! The user's own GGUF files: adding one (hash once, read its header from the hashed bytes, pin
//! name → path, size, sha256 in the store) and turning a pin into an [`Entry`] that loads through
//! the same verification as a manifest file.
//!
//! Nothing of an unverified file is parsed: the header is read from the descriptor that was
//! hashed, after the hash was taken, and a later load re-verifies the file against the pin (a
//! changed file is refused with `model_changed` before llama.cpp sees a byte of it).

use std::fs::File;
use std::io::{BufReader, Seek, SeekFrom};
use std::path::Path;

use super::gguf::{self, GgufInfo};
use super::{cache_key, sha256_reporting, Entry, Manifest, Role};
use crate::store::{now_millis, Store, StoreError, UserModel};

/// Longest model name: it appears in commands, URLs and tables.
pub const MAX_NAME_CHARS: usize = 64;
/// The smallest file worth hashing: a GGUF header alone is 24 bytes, a real model megabytes.
const MIN_MODEL_BYTES: u64 = 24;

#[derive(Debug, thiserror::Error)]
pub enum AddError {
    #[error("{0}")]
    BadName(String),
    #[error("'{0}' is the name of a model hearth ships; pick another --name")]
    NameTaken(String),
    #[error("path: {0}")]
    BadPath(String),
    #[error("{path} is not a usable GGUF model: {err}")]
    NotAModel { path: String, err: gguf::GgufError },
    #[error("{path}: {err}")]
    Io { path: String, err: std::io::Error },
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// A pinned model, as `add` reports it.
#[derive(Debug)]
pub struct Added {
    pub model: UserModel,
    pub info: GgufInfo,
    /// True when the name was pinned before (to this or another file) and is now re-pinned.
    pub replaced: bool,
}

/// Checks a model name: 1–64 characters of `A-Z a-z 0-9 . _ - :`, starting with a letter or
/// digit (names go into URL paths and command lines unquoted).
pub fn check_name(name: &str) -> Result<(), AddError> {
    let ok_char = |c: char| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-' | ':');
    if name.is_empty() || name.chars().count() > MAX_NAME_CHARS {
        return Err(AddError::BadName(format!(
            "name: must be 1 to {MAX_NAME_CHARS} characters"
        )));
    }
    if !name.chars().all(ok_char) || !name.starts_with(|c: char| c.is_ascii_alphanumeric()) {
        return Err(AddError::BadName(format!(
            "name: '{name}' may use only letters, digits, '.', '_', '-' and ':', and must start with a letter or digit"
        )));
    }
    Ok(())
}

/// The name a file gets without `--name`: its file name without `.gguf`, lower-cased, other
/// characters replaced by `-`.
pub fn default_name(path: &Path) -> String {
    let stem = path
        .file_name()
        .map(|n| n.to_string_lossy().to_string())
        .unwrap_or_default();
    let stem = stem
        .strip_suffix(".gguf")
        .or_else(|| stem.strip_suffix(".GGUF"))
        .unwrap_or(&stem);
    let mut name: String = stem
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-') {
                c.to_ascii_lowercase()
            } else {
                '-'
            }
        })
        .take(MAX_NAME_CHARS)
        .collect();
    while name.starts_with(['.', '_', '-']) {
        name.remove(0);
    }
    if name.is_empty() {
        name.push_str("model");
    }
    name
}

impl Entry {
    /// A pinned user file as a loadable entry (its `file` is absolute, so `models_dir.join`
    /// leaves it as it is).
    pub fn from_user(model: &UserModel) -> Entry {
        Entry {
            name: model.name.clone(),
            role: Role::Chat,
            file: model.path.clone(),
            size: model.size,
            sha256: model.sha256.clone(),
            source: "user".into(),
            group: None,
            default: false,
            user: true,
        }
    }
}

/// Adds (pins) the GGUF file at `path` under `name` (default: from the file name). Hashes the
/// whole file (reporting the share done to `progress`), reads its header from the hashed
/// descriptor with the bounded reader (a hostile header is an error, nothing is pinned), then
/// stores the pin and the verification. Blocking: run it off the async runtime. The caller makes
/// the store durable before answering.
pub fn add(
    path: &Path,
    name: Option<&str>,
    store: &Store,
    progress: &dyn Fn(f32),
) -> Result<Added, AddError> {
    if !path.is_absolute() {
        return Err(AddError::BadPath(format!(
            "'{}' must be absolute (the daemon's working directory is not yours)",
            path.display()
        )));
    }
    let Some(text) = path.to_str() else {
        return Err(AddError::BadPath("must be valid UTF-8".into()));
    };
    let name = match name {
        Some(name) => name.to_string(),
        None => default_name(path),
    };
    check_name(&name)?;
    if Manifest::builtin().entries.iter().any(|e| e.name == name) {
        return Err(AddError::NameTaken(name));
    }
    let io = |err| AddError::Io {
        path: text.to_string(),
        err,
    };
    let mut file = File::open(path).map_err(io)?;
    let meta = file.metadata().map_err(io)?;
    if !meta.is_file() {
        return Err(AddError::BadPath(format!("{text} is not a regular file")));
    }
    if meta.len() < MIN_MODEL_BYTES {
        return Err(AddError::NotAModel {
            path: text.to_string(),
            err: gguf::GgufError::Truncated,
        });
    }
    // The header first, cheaply, so a file that is no GGUF at all is refused before hashing
    // gigabytes. This read is only a pre-check: what gets pinned is re-read below from the
    // hashed bytes.
    gguf::read_from(BufReader::new(&mut file), meta.len()).map_err(|err| AddError::NotAModel {
        path: text.to_string(),
        err,
    })?;
    file.seek(SeekFrom::Start(0)).map_err(io)?;
    let sha256 = sha256_reporting(&mut file, meta.len(), progress).map_err(io)?;
    // The descriptor is the one just hashed; a file replaced meanwhile shows as a changed
    // size or mtime below and is refused.
    let after = file.metadata().map_err(io)?;
    if after.len() != meta.len() || crate::sys::mtime_ns(&after) != crate::sys::mtime_ns(&meta) {
        return Err(AddError::BadPath(format!(
            "{text} changed while it was being hashed; add it again once it is complete"
        )));
    }
    file.seek(SeekFrom::Start(0)).map_err(io)?;
    let info = gguf::read_from(BufReader::new(&mut file), meta.len()).map_err(|err| {
        AddError::NotAModel {
            path: text.to_string(),
            err,
        }
    })?;
    let model = UserModel {
        name: name.clone(),
        path: text.to_string(),
        size: meta.len(),
        sha256: sha256.clone(),
        added_at: now_millis(),
    };
    let replaced = store.user_model(&name)?.is_some();
    store.put_user_model(&model)?;
    // The first load need not hash the file again.
    store.put_verified_file(path, &cache_key(&file, &meta, &sha256))?;
    Ok(Added {
        model,
        info,
        replaced,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_checked_and_derived_from_file_names() {
        assert!(check_name("qwen2.5-coder:1.5b").is_ok());
        assert!(check_name("").is_err());
        assert!(check_name("-x").is_err());
        assert!(check_name("a/b").is_err());
        assert!(check_name("a b").is_err());
        assert!(check_name(&"a".repeat(65)).is_err());
        assert_eq!(
            default_name(Path::new("/m/Qwen2.5 Coder_Q4.gguf")),
            "qwen2.5-coder_q4"
        );
        assert_eq!(default_name(Path::new("/m/.gguf")), "model");
    }

    #[test]
    fn a_file_that_is_no_gguf_or_has_a_hostile_header_is_not_pinned() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("db"), 8 << 20).unwrap();
        let text = dir.path().join("notes.gguf");
        std::fs::write(&text, "just some text, long enough to be read").unwrap();
        assert!(matches!(
            add(&text, None, &store, &|_| {}),
            Err(AddError::NotAModel { .. })
        ));
        // A GGUF v3 header that declares 2^60 key/values.
        let mut hostile = b"GGUF".to_vec();
        hostile.extend(3u32.to_le_bytes());
        hostile.extend(0u64.to_le_bytes());
        hostile.extend((1u64 << 60).to_le_bytes());
        hostile.extend([0u8; 64]);
        let path = dir.path().join("hostile.gguf");
        std::fs::write(&path, &hostile).unwrap();
        assert!(matches!(
            add(&path, Some("h"), &store, &|_| {}),
            Err(AddError::NotAModel { .. })
        ));
        assert!(matches!(
            add(Path::new("relative.gguf"), None, &store, &|_| {}),
            Err(AddError::BadPath(_))
        ));
        assert!(matches!(
            add(&path, Some("smollm2-135m-instruct-q4_1"), &store, &|_| {}),
            Err(AddError::NameTaken(_))
        ));
        assert!(store.user_models().unwrap().is_empty());
    }
}
