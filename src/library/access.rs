//! Reading watched folders without ever leaving them.
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

use std::ffi::OsStr;
use std::io::Read;
use std::os::fd::OwnedFd;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, PoisonError, RwLock};

use crate::error_code::ErrorCode;
use rustix::fs::{AtFlags, FileType, Mode, OFlags};
use rustix::io::Errno;

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
    dir: RwLock<Arc<OwnedFd>>,
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

fn io(err: Errno) -> AccessError {
    match err {
        Errno::LOOP | Errno::MLINK => AccessError::Symlink,
        Errno::NOENT => AccessError::NotFound,
        // An intermediate component that is no directory (a file or a link swapped in).
        Errno::NOTDIR => AccessError::Symlink,
        other => AccessError::Io(other.into()),
    }
}

fn kind_of(stat: &rustix::fs::Stat, follow_hardlinks: bool) -> Kind {
    match FileType::from_raw_mode(stat.st_mode) {
        FileType::RegularFile if stat.st_nlink > 1 && !follow_hardlinks => Kind::Hardlink,
        FileType::RegularFile => Kind::File {
            size: u64::try_from(stat.st_size).unwrap_or(0),
            mtime_ns: i128::from(stat.st_mtime) * 1_000_000_000 + i128::from(stat.st_mtime_nsec),
        },
        FileType::Directory => Kind::Dir,
        FileType::Symlink => Kind::Symlink,
        _ => Kind::Special,
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

impl Root {
    /// Opens a folder to watch. The path is canonicalized once here (the user's own symlinks
    /// to the folder itself are fine); nothing below it is followed.
    pub fn open(path: &Path, follow_hardlinks: bool) -> Result<Root, String> {
        let canonical = std::fs::canonicalize(path)
            .map_err(|err| format!("watch folder {}: {err}", path.display()))?;
        let name = canonical
            .to_str()
            .ok_or_else(|| format!("watch folder {}: path is not UTF-8", canonical.display()))?
            .to_string();
        let dir = rustix::fs::open(
            &canonical,
            OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC,
            Mode::empty(),
        )
        .map_err(|err| format!("watch folder {}: {err}", canonical.display()))?;
        Ok(Root {
            path: canonical,
            name,
            dir: RwLock::new(Arc::new(dir)),
            follow_hardlinks,
        })
    }

    fn dir(&self) -> Arc<OwnedFd> {
        self.dir
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// Checks that the folder at the configured path is the one held (see the module doc).
    pub fn verify(&self) -> Result<(), RootProblem> {
        let held = self.dir();
        // A deleted directory has no links left; a moved one still has its own.
        let held_alive = rustix::fs::fstat(&*held).is_ok_and(|s| s.st_nlink > 0);
        let gone = if held_alive {
            RootProblem::Moved
        } else {
            RootProblem::Missing
        };
        let Ok(now) = rustix::fs::open(
            &self.path,
            OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC,
            Mode::empty(),
        ) else {
            return Err(gone);
        };
        let same = match (rustix::fs::fstat(&now), rustix::fs::fstat(&*held)) {
            (Ok(a), Ok(b)) => a.st_dev == b.st_dev && a.st_ino == b.st_ino,
            _ => false,
        };
        if same {
            Ok(())
        } else {
            Err(RootProblem::Replaced)
        }
    }

    /// Holds the folder now at the configured path from here on.
    pub fn reopen(&self) -> Result<(), AccessError> {
        let now = rustix::fs::open(
            &self.path,
            OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC,
            Mode::empty(),
        )
        .map_err(io)?;
        *self.dir.write().unwrap_or_else(PoisonError::into_inner) = Arc::new(now);
        Ok(())
    }

    /// The directory `relative` (empty = the root), reached without following links.
    fn open_dir(&self, relative: &[u8]) -> Result<OwnedFd, AccessError> {
        let mut dir = rustix::io::dup(&*self.dir()).map_err(io)?;
        for part in components(relative)? {
            dir = rustix::fs::openat(
                &dir,
                OsStr::from_bytes(part),
                OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
                Mode::empty(),
            )
            .map_err(io)?;
        }
        Ok(dir)
    }

    /// `lstat` of `relative`, its parent directories reached without following links.
    pub fn stat(&self, relative: &[u8]) -> Result<Kind, AccessError> {
        let parts = components(relative)?;
        let Some((last, parents)) = parts.split_last() else {
            return Ok(Kind::Dir);
        };
        let dir = self.open_dir(&parents.join(&b'/'))?;
        let stat = rustix::fs::statat(&dir, OsStr::from_bytes(last), AtFlags::SYMLINK_NOFOLLOW)
            .map_err(io)?;
        Ok(kind_of(&stat, self.follow_hardlinks))
    }

    /// Reads a regular file below the root, at most `limit` bytes. Returns the bytes and the
    /// size and mtime of the descriptor that was read.
    pub fn read(&self, relative: &[u8], limit: u64) -> Result<(Vec<u8>, Kind), AccessError> {
        let parts = components(relative)?;
        let Some((last, parents)) = parts.split_last() else {
            return Err(AccessError::NotRegular);
        };
        let dir = self.open_dir(&parents.join(&b'/'))?;
        // Non-blocking: a FIFO swapped in for the file must not hang the open.
        let fd = rustix::fs::openat(
            &dir,
            OsStr::from_bytes(last),
            OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::NONBLOCK | OFlags::CLOEXEC | OFlags::NOCTTY,
            Mode::empty(),
        )
        .map_err(io)?;
        let kind = kind_of(&rustix::fs::fstat(&fd).map_err(io)?, self.follow_hardlinks);
        let Kind::File { size, .. } = kind else {
            return Err(if kind == Kind::Hardlink {
                AccessError::Hardlink
            } else {
                AccessError::NotRegular
            });
        };
        if size > limit {
            return Err(AccessError::TooLarge { limit });
        }
        let mut bytes = Vec::with_capacity(usize::try_from(size).unwrap_or(0));
        std::fs::File::from(fd)
            .take(limit + 1)
            .read_to_end(&mut bytes)?;
        if bytes.len() as u64 > limit {
            return Err(AccessError::TooLarge { limit });
        }
        Ok((bytes, kind))
    }

    /// The entries of directory `relative`: name bytes and kind (links not followed).
    pub fn list(&self, relative: &[u8]) -> Result<Vec<(Vec<u8>, Kind)>, AccessError> {
        let dir = self.open_dir(relative)?;
        let mut out = Vec::new();
        for entry in rustix::fs::Dir::read_from(&dir).map_err(io)? {
            let entry = entry.map_err(io)?;
            let name = entry.file_name().to_bytes();
            if name == b"." || name == b".." {
                continue;
            }
            match rustix::fs::statat(&dir, entry.file_name(), AtFlags::SYMLINK_NOFOLLOW) {
                Ok(stat) => out.push((name.to_vec(), kind_of(&stat, self.follow_hardlinks))),
                // Deleted between readdir and stat: it is simply not there.
                Err(Errno::NOENT) => {}
                Err(err) => return Err(io(err)),
            }
        }
        Ok(out)
    }
}

#[cfg(test)]
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
