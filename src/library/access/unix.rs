//! The Unix side of `library::access`: directory descriptors, `openat` one component at a time
//! with `O_NOFOLLOW`, and `fstat` on what was opened (see the module doc of `access`).

use std::ffi::OsStr;
use std::os::fd::OwnedFd;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

use rustix::fs::{AtFlags, FileType, Mode, OFlags};
use rustix::io::Errno;

use super::{components, read_limited, AccessError, Kind, Root};

/// What a root holds: the folder's descriptor.
pub(super) type Handle = OwnedFd;

/// Opens the folder at `path` (the root itself: the configured path was canonicalized, and the
/// user's own links up to it are fine).
pub(super) fn open_root(path: &Path) -> Result<OwnedFd, AccessError> {
    rustix::fs::open(
        path,
        OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC,
        Mode::empty(),
    )
    .map_err(io)
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

/// True while the held folder still exists somewhere: a deleted directory has no links left; a
/// moved one still has its own.
pub(super) fn still_exists(held: &OwnedFd) -> bool {
    rustix::fs::fstat(held).is_ok_and(|s| s.st_nlink > 0)
}

/// True when two descriptors are the same folder (device and inode).
pub(super) fn same_folder(a: &OwnedFd, b: &OwnedFd) -> bool {
    match (rustix::fs::fstat(a), rustix::fs::fstat(b)) {
        (Ok(a), Ok(b)) => a.st_dev == b.st_dev && a.st_ino == b.st_ino,
        _ => false,
    }
}

impl Root {
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
        Ok((read_limited(std::fs::File::from(fd), size, limit)?, kind))
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
