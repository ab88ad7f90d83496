//! The platform layer: the few things hearth does differently on Unix and on Windows, behind one
//! set of names, so every other module stays shared code.
//!
//! What differs, and lives here: the instance lock (`flock` / `LockFileEx`), file identity
//! (device and inode / volume serial and file index), private files and folders (modes / the
//! user profile's own ACL), processes (parent, liveness, termination, a new session), the signals
//! that mean "shut down" (SIGINT/SIGTERM / Ctrl-C, Ctrl-Break, close, log-off, shutdown), the
//! resident memory figure, the path workers are started from, and how a verified model file is
//! handed to its loader unchanged. The local listener (Unix socket / named pipe) stays in
//! `server`, the only module that knows transports; the safe open below a watched root stays in
//! `library::access`, which uses [`FileId`] and, on Windows, [`final_path`] from here.
//!
//! Only `sys/windows.rs` calls Win32 (it is one of the few modules allowed `unsafe`; see
//! ARCHITECTURE.md); `sys/unix.rs` uses the safe wrappers of `nix` and `rustix`.

use std::path::Path;
use std::time::UNIX_EPOCH;

pub mod pipe_name;

#[cfg(unix)]
mod unix;
#[cfg(unix)]
pub use unix::*;

#[cfg(windows)]
mod windows;
#[cfg(windows)]
pub use windows::*;

/// Which file a handle or path is: equal ids are the same file, whatever its names.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FileId {
    /// Device (Unix) or volume serial number (Windows).
    pub device: u64,
    /// Inode (Unix) or file index (Windows).
    pub index: u64,
}

/// A file's modification time in nanoseconds since the Unix epoch (0 where the platform has
/// none). The same value on every platform: `std` reads it from `stat` or the file's FILETIME.
pub fn mtime_ns(meta: &std::fs::Metadata) -> i128 {
    match meta.modified().map(|t| t.duration_since(UNIX_EPOCH)) {
        Ok(Ok(since)) => i128::try_from(since.as_nanos()).unwrap_or(i128::MAX),
        // Before 1970: negative, as `stat` would say.
        Ok(Err(before)) => -i128::try_from(before.duration().as_nanos()).unwrap_or(i128::MAX),
        Err(_) => 0,
    }
}

/// The identity of the file at `path` (links followed), for comparing with a held handle.
pub fn file_id_of_path(path: &Path) -> std::io::Result<FileId> {
    file_id(&open_for_identity(path)?)
}

/// 32 bytes from the operating system's random source, as 64 hex digits (tokens).
pub fn random_hex_32() -> std::io::Result<String> {
    let mut bytes = [0u8; 32];
    getrandom::fill(&mut bytes).map_err(std::io::Error::other)?;
    Ok(bytes.iter().map(|b| format!("{b:02x}")).collect())
}
