//! The Windows side of `library::access`. Windows has no `openat`, so every open goes by full
//! path and is then checked on the handle it gave:
//! - the last component is opened with `FILE_FLAG_OPEN_REPARSE_POINT`, so a symbolic link or
//!   junction there is opened itself, seen by its attribute, and never followed;
//! - the handle's final path (`GetFinalPathNameByHandleW`, every link on the way resolved) must
//!   be exactly the root's path plus the expected names: a junction swapped in for a folder
//!   anywhere on the way makes it differ, and the open is refused as leaving the folder;
//! - it must be a file or folder on a disk (a device name such as `NUL` has no final path);
//! - names with `:` (alternate data streams), `\` or a DOS device name are refused before any
//!   call.
//!
//! A folder being listed is held open without delete sharing while it is read, which also
//! keeps its parents from being renamed, so the listing is of the folder that was checked.
//! File names that are not valid Unicode cannot be keys (keys are UTF-8) and are left out of
//! listings with a warning.

use std::fs::File;
use std::io;
use std::os::windows::fs::{MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use super::{components, read_limited, AccessError, Kind, Root};
use crate::sys;
use crate::sys::file_flags::{
    FILE_ATTRIBUTE_DIRECTORY, FILE_ATTRIBUTE_REPARSE_POINT, FILE_FLAG_BACKUP_SEMANTICS,
    FILE_FLAG_OPEN_REPARSE_POINT, FILE_LIST_DIRECTORY, FILE_READ_ATTRIBUTES, FILE_SHARE_DELETE,
    FILE_SHARE_READ, FILE_SHARE_WRITE,
};

/// What a root holds: a handle on the folder (all sharing allowed: the user may still rename or
/// delete it, which [`Root::verify`] then notices).
pub(super) type Handle = File;

/// `ERROR_FILE_NOT_FOUND`, `ERROR_PATH_NOT_FOUND`.
const NOT_FOUND: [i32; 2] = [2, 3];
/// `ERROR_DIRECTORY`: a file where a folder was expected.
const NOT_A_DIRECTORY: i32 = 267;

/// Names Win32 maps to devices in any folder (`C:\drop\NUL` is the NUL device).
const DEVICE_NAMES: [&str; 6] = ["CON", "PRN", "AUX", "NUL", "CONIN$", "CONOUT$"];

fn io(err: io::Error) -> AccessError {
    match err.raw_os_error() {
        Some(code) if NOT_FOUND.contains(&code) => AccessError::NotFound,
        Some(NOT_A_DIRECTORY) => AccessError::Symlink,
        _ => AccessError::Io(err),
    }
}

/// Opens the folder at `path` (the root itself).
pub(super) fn open_root(path: &Path) -> Result<File, AccessError> {
    std::fs::OpenOptions::new()
        .access_mode(FILE_LIST_DIRECTORY | FILE_READ_ATTRIBUTES)
        .share_mode(FILE_SHARE_READ | FILE_SHARE_WRITE | FILE_SHARE_DELETE)
        .custom_flags(FILE_FLAG_BACKUP_SEMANTICS)
        .open(path)
        .map_err(io)
}

/// True for a name that must never reach `CreateFileW` below a root.
fn unsafe_name(name: &str) -> bool {
    if name.contains([':', '\\']) || name.ends_with(['.', ' ']) {
        return true;
    }
    let stem = name.split('.').next().unwrap_or(name).trim_end();
    DEVICE_NAMES.iter().any(|d| stem.eq_ignore_ascii_case(d))
        || ((stem.len() == 4)
            && (stem[..3].eq_ignore_ascii_case("COM") || stem[..3].eq_ignore_ascii_case("LPT"))
            && stem.as_bytes()[3].is_ascii_digit())
}

/// The names of `relative`, checked (see the module doc).
fn names(relative: &[u8]) -> Result<Vec<&str>, AccessError> {
    components(relative)?
        .into_iter()
        .map(|part| {
            let name = std::str::from_utf8(part).map_err(|_| AccessError::NotFound)?;
            if unsafe_name(name) {
                return Err(AccessError::Escapes);
            }
            Ok(name)
        })
        .collect()
}

/// How an entry is opened: to read its attributes only (no sharing conflict with anybody), to
/// list it (a folder, held against rename and delete), or to read it.
#[derive(Clone, Copy, PartialEq)]
enum Purpose {
    Attributes,
    List,
    Read,
}

fn kind_of(meta: &std::fs::Metadata, links: u64, follow_hardlinks: bool) -> Kind {
    let attributes = meta.file_attributes();
    if attributes & FILE_ATTRIBUTE_REPARSE_POINT != 0 {
        Kind::Symlink
    } else if attributes & FILE_ATTRIBUTE_DIRECTORY != 0 {
        Kind::Dir
    } else if links > 1 && !follow_hardlinks {
        Kind::Hardlink
    } else {
        Kind::File {
            size: meta.len(),
            mtime_ns: sys::mtime_ns(meta),
        }
    }
}

/// Compares two paths as Windows does (case-insensitively).
fn same_path(a: &Path, b: &Path) -> bool {
    a.to_string_lossy().to_lowercase() == b.to_string_lossy().to_lowercase()
}

/// True while the held folder still exists somewhere: its own final path still names a folder.
pub(super) fn still_exists(held: &File) -> bool {
    sys::final_path(held).is_ok_and(|p| p.is_dir())
}

/// True when two handles are the same folder (volume serial and file index).
pub(super) fn same_folder(a: &File, b: &File) -> bool {
    matches!((sys::file_id(a), sys::file_id(b)), (Ok(a), Ok(b)) if a == b)
}

impl Root {
    /// Opens `names` below the root for `purpose`, the last one not followed, and checks the
    /// handle's final path. Returns the handle, its metadata and its kind.
    fn open_below(
        &self,
        names: &[&str],
        purpose: Purpose,
    ) -> Result<(File, std::fs::Metadata, Kind), AccessError> {
        let mut expected: PathBuf = self.path.clone();
        expected.extend(names);
        let mut options = std::fs::OpenOptions::new();
        options.custom_flags(FILE_FLAG_OPEN_REPARSE_POINT | FILE_FLAG_BACKUP_SEMANTICS);
        match purpose {
            Purpose::Attributes => options
                .access_mode(FILE_READ_ATTRIBUTES)
                .share_mode(FILE_SHARE_READ | FILE_SHARE_WRITE | FILE_SHARE_DELETE),
            Purpose::List => options
                .access_mode(FILE_LIST_DIRECTORY | FILE_READ_ATTRIBUTES)
                .share_mode(FILE_SHARE_READ | FILE_SHARE_WRITE),
            Purpose::Read => options
                .read(true)
                .share_mode(FILE_SHARE_READ | FILE_SHARE_WRITE),
        };
        let file = options.open(&expected).map_err(io)?;
        let meta = file.metadata().map_err(io)?;
        let links = sys::link_count(&file).map_err(io)?;
        let kind = kind_of(&meta, links, self.follow_hardlinks);
        if kind != Kind::Symlink {
            // A link opened as itself has its own final path; anything else must resolve to
            // exactly where it was asked for.
            let real = sys::final_path(&file).map_err(|_| AccessError::NotRegular)?;
            if !same_path(&real, &expected) {
                return Err(AccessError::Escapes);
            }
        }
        Ok((file, meta, kind))
    }

    /// The kind of `relative`, links not followed.
    pub fn stat(&self, relative: &[u8]) -> Result<Kind, AccessError> {
        let names = names(relative)?;
        if names.is_empty() {
            return Ok(Kind::Dir);
        }
        let (_, _, kind) = self.open_below(&names, Purpose::Attributes)?;
        Ok(kind)
    }

    /// Reads a regular file below the root, at most `limit` bytes. Returns the bytes and the
    /// size and mtime of the handle that was read.
    pub fn read(&self, relative: &[u8], limit: u64) -> Result<(Vec<u8>, Kind), AccessError> {
        let names = names(relative)?;
        if names.is_empty() {
            return Err(AccessError::NotRegular);
        }
        let (file, _, kind) = self.open_below(&names, Purpose::Read)?;
        let Kind::File { size, .. } = kind else {
            return Err(match kind {
                Kind::Hardlink => AccessError::Hardlink,
                Kind::Symlink => AccessError::Symlink,
                _ => AccessError::NotRegular,
            });
        };
        if size > limit {
            return Err(AccessError::TooLarge { limit });
        }
        Ok((read_limited(file, size, limit)?, kind))
    }

    /// The entries of directory `relative`: name bytes and kind (links not followed). Hard links
    /// show as files here (a listing has no link count); reading one finds it out.
    pub fn list(&self, relative: &[u8]) -> Result<Vec<(Vec<u8>, Kind)>, AccessError> {
        let names = names(relative)?;
        // The root itself is checked by `verify` before every scan; a folder below it is held
        // while it is listed by name (see the module doc).
        let held = if names.is_empty() {
            None
        } else {
            let (held, _, kind) = self.open_below(&names, Purpose::List)?;
            if kind != Kind::Dir {
                return Err(AccessError::Symlink);
            }
            Some(held)
        };
        let mut path = self.path.clone();
        path.extend(&names);
        let listed = list_dir(&path, self.follow_hardlinks);
        drop(held);
        listed
    }
}

fn list_dir(path: &Path, follow_hardlinks: bool) -> Result<Vec<(Vec<u8>, Kind)>, AccessError> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(path).map_err(io)? {
        let entry = entry.map_err(io)?;
        let name = entry.file_name();
        let Some(name) = name.to_str() else {
            tracing::warn!(folder = %path.display(), name = ?name, "a file name that is not valid Unicode is left out");
            continue;
        };
        match entry.metadata() {
            // The directory entry's own data: links are not followed.
            Ok(meta) => out.push((
                name.as_bytes().to_vec(),
                kind_of(&meta, 1, follow_hardlinks),
            )),
            Err(err) if err.kind() == io::ErrorKind::NotFound => {}
            Err(err) => return Err(io(err)),
        }
    }
    Ok(out)
}
