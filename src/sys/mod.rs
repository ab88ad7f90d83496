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

#[cfg(all(test, unix))]
mod tests {
    use super::*;
    use std::os::unix::fs::MetadataExt;

    #[test]
    fn mtime_is_the_nanoseconds_the_verification_cache_always_used() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f");
        std::fs::write(&path, "x").unwrap();
        let meta = std::fs::metadata(&path).unwrap();
        // Stores written before this layer keyed model checks by exactly this value.
        let old = i128::from(meta.mtime()) * 1_000_000_000 + i128::from(meta.mtime_nsec());
        assert_eq!(mtime_ns(&meta), old);
    }

    #[test]
    fn the_instance_lock_excludes_a_second_holder_until_the_first_closes() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("lock");
        let first = std::fs::File::create(&path).unwrap();
        assert!(try_lock(&first, true).unwrap());
        let second = std::fs::File::open(&path).unwrap();
        assert!(!try_lock(&second, true).unwrap());
        assert!(
            !try_lock(&second, false).unwrap(),
            "a shared probe sees it held"
        );
        drop(first);
        assert!(
            try_lock(&second, false).unwrap(),
            "closing the file released it"
        );
    }

    #[test]
    fn file_identity_follows_the_file_not_its_name() {
        let dir = tempfile::tempdir().unwrap();
        let (a, b) = (dir.path().join("a"), dir.path().join("b"));
        std::fs::write(&a, "1").unwrap();
        std::fs::write(&b, "2").unwrap();
        let held = std::fs::File::open(&a).unwrap();
        let id = file_id(&held).unwrap();
        assert_eq!(file_id_of_path(&a).unwrap(), id);
        assert_ne!(file_id_of_path(&b).unwrap(), id);
        std::fs::rename(&a, dir.path().join("c")).unwrap();
        assert_eq!(file_id_of_path(&dir.path().join("c")).unwrap(), id);
        assert_eq!(
            file_id_of_path(dir.path()).unwrap(),
            file_id_of_path(dir.path()).unwrap()
        );
    }

    #[test]
    fn a_watched_process_is_gone_once_it_exits() {
        let mut child = std::process::Command::new("sleep")
            .arg("30")
            .spawn()
            .unwrap();
        let watched = Watched::new(child.id()).unwrap();
        assert!(!watched.gone());
        assert!(!process_gone(child.id()));
        kill(child.id()).unwrap();
        child.wait().unwrap();
        assert!(watched.gone());
        assert!(process_gone(child.id()));
        assert_eq!(random_hex_32().unwrap().len(), 64);
        assert_ne!(random_hex_32().unwrap(), random_hex_32().unwrap());
    }
}
