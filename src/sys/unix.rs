//! The Unix side of the platform layer (see `sys/mod.rs`): safe `nix`/`rustix`/`std` calls only.

use std::fs::File;
use std::io;
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use anyhow::{bail, Context};
use nix::errno::Errno;
use nix::sys::signal::{kill as send, Signal};
use nix::unistd::{getppid, Pid};

use super::FileId;

/// The identity of an open file.
pub fn file_id(file: &File) -> io::Result<FileId> {
    let meta = file.metadata()?;
    Ok(FileId {
        device: meta.dev(),
        index: meta.ino(),
    })
}

/// Opens `path` (a file or a folder) only to ask its identity.
pub fn open_for_identity(path: &Path) -> io::Result<File> {
    File::open(path)
}

/// Takes `file`'s advisory lock without waiting: `Ok(false)` when another open file holds it.
/// Released when `file` is closed. Shared locks let other shared holders in.
pub fn try_lock(file: &File, exclusive: bool) -> io::Result<bool> {
    let taken = if exclusive {
        file.try_lock()
    } else {
        file.try_lock_shared()
    };
    match taken {
        Ok(()) => Ok(true),
        Err(std::fs::TryLockError::WouldBlock) => Ok(false),
        Err(std::fs::TryLockError::Error(err)) => Err(err),
    }
}

/// Creates `dir` 0700 if missing; an existing one must be ours and not open to others.
pub fn ensure_private_dir(dir: &Path) -> anyhow::Result<()> {
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .with_context(|| format!("{}: cannot create directory", dir.display()))?;
    let meta = std::fs::metadata(dir)?;
    let me = nix::unistd::geteuid().as_raw();
    if meta.uid() != me {
        bail!(
            "{} belongs to uid {}, not to us (uid {me}); refusing to use it",
            dir.display(),
            meta.uid()
        );
    }
    if meta.mode() & 0o077 != 0 {
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))
            .with_context(|| format!("{}: cannot make it private", dir.display()))?;
    }
    Ok(())
}

/// Creates (or truncates) `path` for writing, readable by the owner only from birth (0600).
pub fn create_private_file(path: &Path) -> io::Result<File> {
    std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)
}

/// This process's parent.
pub fn parent_pid() -> Option<u32> {
    Some(getppid().as_raw().unsigned_abs())
}

fn pid(pid: u32) -> io::Result<Pid> {
    i32::try_from(pid)
        .map(Pid::from_raw)
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "pid out of range"))
}

/// A process whose end is awaited (a sidecar's app).
pub struct Watched {
    pid: Pid,
    /// Watching our own parent: reparenting also means it died (a zombie of it may linger).
    is_real_parent: bool,
}

impl Watched {
    /// Starts watching `pid`; `None` if it cannot be watched (then it is treated as gone).
    pub fn new(raw: u32) -> Option<Watched> {
        let pid = pid(raw).ok()?;
        let is_real_parent = getppid() == pid;
        if is_real_parent {
            // The kernel's backstop: SIGTERM when the parent thread exits.
            #[cfg(target_os = "linux")]
            let _ = nix::sys::prctl::set_pdeathsig(Signal::SIGTERM);
        }
        Some(Watched {
            pid,
            is_real_parent,
        })
    }

    /// True once the process has exited. Cheap: polled every second.
    pub fn gone(&self) -> bool {
        (self.is_real_parent && getppid() != self.pid)
            || matches!(send(self.pid, None), Err(Errno::ESRCH))
    }
}

/// True once `pid` has exited: no such process, or (on Linux) a zombie its parent has not
/// reaped yet *and* no thread of it is still running. While a multi-threaded process exits, its
/// first thread shows `Z` as soon as it is done, but the others (sled's I/O threads finishing a
/// write) still hold its files and locks: a new daemon started then finds its store locked.
pub fn process_gone(raw: u32) -> bool {
    let Ok(nix_pid) = pid(raw) else {
        return true;
    };
    if matches!(send(nix_pid, None), Err(Errno::ESRCH)) {
        return true;
    }
    #[cfg(target_os = "linux")]
    {
        // /proc/PID/stat: "pid (comm) S ..."; comm may hold spaces and parentheses.
        if let Ok(stat) = std::fs::read_to_string(format!("/proc/{raw}/stat")) {
            if let Some((_, rest)) = stat.rsplit_once(')') {
                let threads = std::fs::read_dir(format!("/proc/{raw}/task"))
                    .map(|dir| dir.count())
                    .unwrap_or(0);
                return rest.trim_start().starts_with('Z') && threads <= 1;
            }
        }
    }
    false
}

/// Asks `pid` to shut down gracefully (SIGTERM).
pub fn terminate(raw: u32) -> io::Result<()> {
    send(pid(raw)?, Signal::SIGTERM).map_err(io::Error::from)
}

/// Ends `pid` at once (SIGKILL).
pub fn kill(raw: u32) -> io::Result<()> {
    send(pid(raw)?, Signal::SIGKILL).map_err(io::Error::from)
}

/// A session of our own, so the terminal's hang-up and Ctrl-C never reach a detached daemon.
pub fn leave_terminal_session() -> io::Result<()> {
    nix::unistd::setsid().map(drop).map_err(io::Error::from)
}

/// Flags for starting a detached daemon (none needed on Unix: it calls
/// [`leave_terminal_session`] itself).
pub fn detach(_command: &mut std::process::Command) {}

/// The variables a process needs from the environment to start at all (none on Unix).
pub fn process_essentials() -> Vec<(String, std::ffi::OsString)> {
    Vec::new()
}

/// Resolves when the system asks the daemon to stop (SIGTERM or SIGINT), naming what asked.
pub async fn shutdown_requested() -> io::Result<&'static str> {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    Ok(tokio::select! {
        _ = term.recv() => "SIGTERM",
        _ = int.recv() => "SIGINT",
    })
}

/// Ctrl-C as a stream of events (the REPL's "stop this reply").
pub struct Interrupts(tokio::signal::unix::Signal);

impl Interrupts {
    /// Installs the handler; from then on Ctrl-C no longer ends the process. Needs a runtime.
    pub fn install() -> io::Result<Interrupts> {
        use tokio::signal::unix::{signal, SignalKind};
        signal(SignalKind::interrupt()).map(Interrupts)
    }

    pub async fn recv(&mut self) -> Option<()> {
        self.0.recv().await
    }
}

/// The process's resident set size (`VmRSS` of `/proc/self/status`); `None` where there is no
/// procfs.
pub fn resident_memory_bytes() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let kib: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))?
        .trim()
        .strip_suffix("kB")?
        .trim()
        .parse()
        .ok()?;
    Some(kib * 1024)
}

/// The binary to start workers from: on Linux `/proc/self/exe`, which stays this very build
/// even after a package upgrade replaced or deleted the file at its path.
pub fn this_program() -> PathBuf {
    let proc_self = PathBuf::from("/proc/self/exe");
    if cfg!(target_os = "linux") && proc_self.exists() {
        return proc_self;
    }
    std::env::current_exe().unwrap_or_else(|_| PathBuf::from("hearth"))
}

/// The canonical absolute form of `path` (links resolved).
pub fn canonicalize(path: &Path) -> io::Result<PathBuf> {
    std::fs::canonicalize(path)
}

/// Opens a model file to verify it. Its bytes may still change under it; see [`loader_path`].
pub fn open_model(path: &Path) -> io::Result<File> {
    File::open(path)
}

/// The path the loader gets for a verified, still open `file`: on Linux `/proc/self/fd/N` of that
/// very descriptor, so swapping the file at `path` between check and load changes nothing.
pub fn loader_path(file: &File, path: &Path) -> PathBuf {
    #[cfg(target_os = "linux")]
    {
        use std::os::fd::AsRawFd;
        let fd = PathBuf::from(format!("/proc/self/fd/{}", file.as_raw_fd()));
        if fd.exists() {
            return fd;
        }
    }
    let _ = file;
    path.to_path_buf()
}
