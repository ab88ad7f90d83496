//! Reading watched folders without ever leaving them. What follows is the Unix way
//! (`access/unix.rs`); Windows has no `openat` and gets the same guarantees by checking each
//! opened handle's final path (`access/windows.rs`, whose module doc says how). The types, the
//! path rules and [`Root::verify`] are shared.
//!
//! Everything below a root is reached through directory file descriptors, one path component at
//! a time, with `O_NOFOLLOW`: a symlink anywhere on the way (also one swapped in after a scan
//! saw a plain file) makes the open fail instead of leading outside. `..` and empty components
//! are refused before any system call. The final open is non-blocking and its result is checked
//! with `fstat`, so a FIFO or device put in a file's place is never read. The checks happen at
//! open time, on the descriptor actually read, not only when the folder was scanned.
//!
//! A regular file with more than one hard link is another name for bytes that may live outside
//! the folder (a link made to a private file): unless the user opts in, it is reported as
//! [`Kind::Hardlink`] and never read, checked again on the opened descriptor.
//!
//! A root is followed by identity: the descriptor opened at start keeps pointing at the folder
//! it opened, wherever that folder goes, so [`Root::verify`] re-opens the configured path before
//! every scan (and before a watcher event is acted on) and compares device and inode. A deleted
//! folder ([`RootProblem::Missing`]) or one moved away ([`RootProblem::Moved`]) is not read
//! through the stale descriptor; a folder recreated or replaced at the path
//! ([`RootProblem::Replaced`]) is opened anew.

use std::borrow::Cow;
use std::ffi::OsStr;
use std::io::Read;
use std::path::{Component, Path, PathBuf};
use std::sync::{Arc, PoisonError, RwLock};

use crate::error_code::ErrorCode;

#[cfg(unix)]
mod unix;
#[cfg(unix)]
use unix::{open_root, same_folder, still_exists, Handle};

#[cfg(windows)]
mod windows;
#[cfg(windows)]
use windows::{open_root, same_folder, still_exists, Handle};

/// Directories deeper than this below a root are not walked (a loop of bind mounts or an
/// absurd tree cannot keep the scan busy forever).
pub const MAX_DEPTH: usize = 64;

/// A watched folder, opened once.
pub struct Root {
    /// Canonical absolute path (also the root part of every file key).
    pub path: PathBuf,
    /// `path` as UTF-8 (roots must be UTF-8; file names below them need not be).
    pub name: String,
    /// The folder's descriptor; replaced when the folder at `path` is another one.
    dir: RwLock<Arc<Handle>>,
    /// Read files with more than one hard link (`watch_follow_hardlinks`).
    follow_hardlinks: bool,
}

/// What a name in a folder is, from `lstat` (links are never followed).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    File {
        size: u64,
        mtime_ns: i128,
    },
    Dir,
    Symlink,
    /// FIFO, socket, character or block device.
    Special,
    /// A regular file with more than one hard link, not followed (see the module doc).
    Hardlink,
    /// A directory at [`MAX_DEPTH`]: listed as skipped, its contents not walked (made by the
    /// scan, never by `lstat`).
    TooDeep,
}

/// What [`Root::verify`] found wrong with a root.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RootProblem {
    /// Nothing is at the configured path and the folder that was is deleted.
    Missing,
    /// Nothing (or no folder) is at the configured path, but the folder that was still exists
    /// elsewhere (it or a parent was renamed): it is not read there.
    Moved,
    /// Another folder is at the configured path (deleted and recreated, or swapped): the root
    /// is to be [`Root::reopen`]ed, scanned and watched anew.
    Replaced,
}

impl RootProblem {
    pub fn code(self) -> ErrorCode {
        match self {
            RootProblem::Missing => ErrorCode::RootMissing,
            RootProblem::Moved => ErrorCode::RootMoved,
            RootProblem::Replaced => ErrorCode::RootReplaced,
        }
    }

    pub fn message(self) -> &'static str {
        match self {
            RootProblem::Missing => "the watched folder was deleted; its files are kept as they were until it is back",
            RootProblem::Moved => "the watched folder was moved or renamed away from its configured path; it is not read at its new place",
            RootProblem::Replaced => "another folder is at the watched path now; it was opened and scanned",
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum AccessError {
    #[error("a symbolic link is on the path (links are not followed)")]
    Symlink,
    #[error("not a regular file")]
    NotRegular,
    #[error("the file has more than one hard link (watch_follow_hardlinks is off)")]
    Hardlink,
    #[error("the path leaves the watched folder")]
    Escapes,
    #[error("no longer exists")]
    NotFound,
    #[error("larger than the limit of {limit} bytes")]
    TooLarge { limit: u64 },
    #[error("{0}")]
    Io(#[from] std::io::Error),
}

impl AccessError {
    /// Stable reason code for the file's state.
    pub fn code(&self) -> ErrorCode {
        match self {
            AccessError::Symlink => ErrorCode::Symlink,
            AccessError::NotRegular => ErrorCode::NotRegularFile,
            AccessError::Hardlink => ErrorCode::Hardlink,
            AccessError::Escapes => ErrorCode::OutsideRoot,
            AccessError::NotFound => ErrorCode::NotFound,
            AccessError::TooLarge { .. } => ErrorCode::TooLarge,
            AccessError::Io(_) => ErrorCode::ReadError,
        }
    }
}

/// Splits a relative path into components, refusing anything that could climb out.
fn components(relative: &[u8]) -> Result<Vec<&[u8]>, AccessError> {
    if relative.is_empty() {
        return Ok(Vec::new());
    }
    let parts: Vec<&[u8]> = relative.split(|&b| b == b'/').collect();
    if parts
        .iter()
        .any(|p| p.is_empty() || *p == b"." || *p == b"..")
    {
        return Err(AccessError::Escapes);
    }
    Ok(parts)
}

/// Reads an opened regular file of `size` bytes, at most `limit` (it may have grown since).
fn read_limited(file: std::fs::File, size: u64, limit: u64) -> Result<Vec<u8>, AccessError> {
    let mut bytes = Vec::with_capacity(usize::try_from(size.min(limit)).unwrap_or(0));
    file.take(limit + 1).read_to_end(&mut bytes)?;
    if bytes.len() as u64 > limit {
        return Err(AccessError::TooLarge { limit });
    }
    Ok(bytes)
}

/// A name or `/`-separated key below a root as the system's string. On Unix any bytes; on
/// Windows keys are UTF-8 (names that are not valid Unicode are skipped when listed), so this
/// only turns them back.
pub fn os_str(bytes: &[u8]) -> Cow<'_, OsStr> {
    #[cfg(unix)]
    {
        use std::os::unix::ffi::OsStrExt;
        Cow::Borrowed(OsStr::from_bytes(bytes))
    }
    #[cfg(not(unix))]
    match std::str::from_utf8(bytes) {
        Ok(text) => Cow::Borrowed(OsStr::new(text)),
        Err(_) => Cow::Owned(String::from_utf8_lossy(bytes).into_owned().into()),
    }
}

/// The key of a path below a root (as the watcher reports it): its components joined with `/`,
/// whatever the platform's separator. `None` for a component that is not a plain name, or (on
/// Windows) not valid Unicode.
pub fn key_of(relative: &Path) -> Option<Vec<u8>> {
    let mut key = Vec::new();
    for part in relative.components() {
        let Component::Normal(name) = part else {
            return None;
        };
        if !key.is_empty() {
            key.push(b'/');
        }
        #[cfg(unix)]
        key.extend_from_slice(std::os::unix::ffi::OsStrExt::as_bytes(name));
        #[cfg(not(unix))]
        key.extend_from_slice(name.to_str()?.as_bytes());
    }
    Some(key)
}

impl Root {
    /// Opens a folder to watch. The path is canonicalized once here (the user's own symlinks
    /// to the folder itself are fine); nothing below it is followed.
    pub fn open(path: &Path, follow_hardlinks: bool) -> Result<Root, String> {
        let canonical = crate::sys::canonicalize(path)
            .map_err(|err| format!("watch folder {}: {err}", path.display()))?;
        let name = canonical
            .to_str()
            .ok_or_else(|| format!("watch folder {}: path is not UTF-8", canonical.display()))?
            .to_string();
        let dir = open_root(&canonical)
            .map_err(|err| format!("watch folder {}: {err}", canonical.display()))?;
        Ok(Root {
            path: canonical,
            name,
            dir: RwLock::new(Arc::new(dir)),
            follow_hardlinks,
        })
    }

    fn dir(&self) -> Arc<Handle> {
        self.dir
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// Checks that the folder at the configured path is the one held (see the module doc).
    pub fn verify(&self) -> Result<(), RootProblem> {
        let held = self.dir();
        let gone = if still_exists(&held) {
            RootProblem::Moved
        } else {
            RootProblem::Missing
        };
        let Ok(now) = open_root(&self.path) else {
            return Err(gone);
        };
        if same_folder(&now, &held) {
            Ok(())
        } else {
            Err(RootProblem::Replaced)
        }
    }

    /// Holds the folder now at the configured path from here on.
    pub fn reopen(&self) -> Result<(), AccessError> {
        let now = open_root(&self.path)?;
        *self.dir.write().unwrap_or_else(PoisonError::into_inner) = Arc::new(now);
        Ok(())
    }
}

#[cfg(all(test, unix))]
mod tests {
    use super::*;
    use std::os::unix::fs::symlink;

    #[test]
    fn links_fifos_and_dotdot_never_lead_outside() {
        let outside = tempfile::tempdir().unwrap();
        std::fs::write(outside.path().join("secret.txt"), "secret").unwrap();
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("sub")).unwrap();
        std::fs::write(dir.path().join("sub/ok.txt"), "hello").unwrap();
        symlink(
            outside.path().join("secret.txt"),
            dir.path().join("link.txt"),
        )
        .unwrap();
        symlink(outside.path(), dir.path().join("linkdir")).unwrap();
        nix::unistd::mkfifo(&dir.path().join("fifo"), nix::sys::stat::Mode::S_IRWXU).unwrap();
        std::fs::write(outside.path().join("private.txt"), "private").unwrap();
        std::fs::hard_link(
            outside.path().join("private.txt"),
            dir.path().join("hard.txt"),
        )
        .unwrap();
        let root = Root::open(dir.path(), false).unwrap();
        assert_eq!(root.stat(b"hard.txt").unwrap(), Kind::Hardlink);
        assert!(matches!(
            root.read(b"hard.txt", 100),
            Err(AccessError::Hardlink)
        ));
        let following = Root::open(dir.path(), true).unwrap();
        assert_eq!(following.read(b"hard.txt", 100).unwrap().0, b"private");

        let (bytes, kind) = root.read(b"sub/ok.txt", 100).unwrap();
        assert_eq!(bytes, b"hello");
        assert!(matches!(kind, Kind::File { size: 5, .. }));
        assert!(matches!(
            root.read(b"link.txt", 100),
            Err(AccessError::Symlink)
        ));
        assert!(matches!(
            root.read(b"linkdir/secret.txt", 100),
            Err(AccessError::Symlink)
        ));
        assert!(matches!(
            root.read(b"fifo", 100),
            Err(AccessError::NotRegular)
        ));
        assert!(matches!(
            root.read(b"sub/../link.txt", 100),
            Err(AccessError::Escapes)
        ));
        assert!(matches!(
            root.read(b"sub/ok.txt", 3),
            Err(AccessError::TooLarge { limit: 3 })
        ));
        assert!(matches!(root.read(b"nope", 3), Err(AccessError::NotFound)));
        assert_eq!(root.stat(b"link.txt").unwrap(), Kind::Symlink);
        assert_eq!(root.stat(b"fifo").unwrap(), Kind::Special);
        let mut names: Vec<_> = root
            .list(b"")
            .unwrap()
            .into_iter()
            .map(|(n, k)| (String::from_utf8(n).unwrap(), k))
            .collect();
        names.sort_by(|a, b| a.0.cmp(&b.0));
        let kinds: Vec<_> = names.iter().map(|(n, k)| (n.as_str(), *k)).collect();
        assert_eq!(kinds[0], ("fifo", Kind::Special));
        assert_eq!(kinds[1], ("hard.txt", Kind::Hardlink));
        assert_eq!(kinds[2], ("link.txt", Kind::Symlink));
        assert_eq!(kinds[3], ("linkdir", Kind::Symlink));
        assert_eq!(kinds[4], ("sub", Kind::Dir));
    }
}
