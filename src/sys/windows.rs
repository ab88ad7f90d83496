//! The Windows side of the platform layer (see `sys/mod.rs`). Every Win32 call hearth makes
//! outside the named-pipe listener is here, each in a small safe function whose handles are
//! owned (`OwnedHandle`, closed on drop) and whose buffers are sized by the call itself.
#![allow(unsafe_code)] // Win32 calls; each block states what it relies on

use std::ffi::OsString;
use std::fs::File;
use std::io;
use std::os::windows::ffi::OsStringExt;
use std::os::windows::fs::OpenOptionsExt;
use std::os::windows::io::{AsRawHandle, FromRawHandle, OwnedHandle};
use std::os::windows::process::CommandExt;
use std::path::{Path, PathBuf};

use windows_sys::Win32::Foundation::{FILETIME, HANDLE, INVALID_HANDLE_VALUE, WAIT_TIMEOUT};
use windows_sys::Win32::Storage::FileSystem::{
    GetFileInformationByHandle, GetFinalPathNameByHandleW, LockFileEx, BY_HANDLE_FILE_INFORMATION,
    FILE_FLAG_BACKUP_SEMANTICS, FILE_NAME_NORMALIZED, FILE_READ_ATTRIBUTES, FILE_SHARE_READ,
    LOCKFILE_EXCLUSIVE_LOCK, LOCKFILE_FAIL_IMMEDIATELY,
};
use windows_sys::Win32::System::Diagnostics::ToolHelp::{
    CreateToolhelp32Snapshot, Process32FirstW, Process32NextW, PROCESSENTRY32W, TH32CS_SNAPPROCESS,
};
use windows_sys::Win32::System::JobObjects::{
    AssignProcessToJobObject, CreateJobObjectW, JobObjectExtendedLimitInformation,
    SetInformationJobObject, JOBOBJECT_EXTENDED_LIMIT_INFORMATION, JOB_OBJECT_LIMIT_ACTIVE_PROCESS,
    JOB_OBJECT_LIMIT_DIE_ON_UNHANDLED_EXCEPTION, JOB_OBJECT_LIMIT_PROCESS_MEMORY,
    JOB_OBJECT_LIMIT_PROCESS_TIME,
};
use windows_sys::Win32::System::ProcessStatus::{K32GetProcessMemoryInfo, PROCESS_MEMORY_COUNTERS};
use windows_sys::Win32::System::Threading::{
    GetCurrentProcess, GetProcessTimes, OpenProcess, TerminateProcess, WaitForSingleObject,
    CREATE_NEW_PROCESS_GROUP, CREATE_NO_WINDOW, PROCESS_SYNCHRONIZE, PROCESS_TERMINATE,
};
use windows_sys::Win32::System::IO::OVERLAPPED;

use super::FileId;

/// The `CreateFileW` flags and attribute bits `library::access` opens and checks with (plain
/// constants; re-exported so that only this layer names `windows_sys`).
pub mod file_flags {
    pub use windows_sys::Win32::Storage::FileSystem::{
        FILE_ATTRIBUTE_DIRECTORY, FILE_ATTRIBUTE_REPARSE_POINT, FILE_FLAG_BACKUP_SEMANTICS,
        FILE_FLAG_OPEN_REPARSE_POINT, FILE_LIST_DIRECTORY, FILE_READ_ATTRIBUTES, FILE_SHARE_DELETE,
        FILE_SHARE_READ, FILE_SHARE_WRITE,
    };
}

/// `ERROR_LOCK_VIOLATION`: the range is locked by another handle.
const ERROR_LOCK_VIOLATION: i32 = 33;

/// Where the instance lock's one byte sits: far beyond any content, because a Windows lock is
/// mandatory for reads of its range and the owner line must stay readable by a second instance.
const LOCK_OFFSET: u64 = 1 << 62;

fn by_handle(file: &File) -> io::Result<BY_HANDLE_FILE_INFORMATION> {
    // SAFETY: the handle is open for the borrow's duration; the struct is plain data that the
    // call fills in whole when it returns non-zero.
    unsafe {
        let mut info: BY_HANDLE_FILE_INFORMATION = std::mem::zeroed();
        if GetFileInformationByHandle(file.as_raw_handle() as HANDLE, &mut info) == 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(info)
    }
}

/// The identity of an open file: volume serial number and file index.
pub fn file_id(file: &File) -> io::Result<FileId> {
    let info = by_handle(file)?;
    Ok(FileId {
        device: u64::from(info.dwVolumeSerialNumber),
        index: (u64::from(info.nFileIndexHigh) << 32) | u64::from(info.nFileIndexLow),
    })
}

/// How many names an open file has (hard links).
pub fn link_count(file: &File) -> io::Result<u64> {
    Ok(u64::from(by_handle(file)?.nNumberOfLinks))
}

/// Opens `path` (a file or a folder: `FILE_FLAG_BACKUP_SEMANTICS` lets a folder be opened) only
/// to ask its identity; no data access, every sharing mode allowed.
pub fn open_for_identity(path: &Path) -> io::Result<File> {
    std::fs::OpenOptions::new()
        .access_mode(FILE_READ_ATTRIBUTES)
        .custom_flags(FILE_FLAG_BACKUP_SEMANTICS)
        .open(path)
}

/// The path an open handle really names now (links and junctions resolved), without the `\\?\`
/// prefix when it is a plain drive path.
pub fn final_path(file: &File) -> io::Result<PathBuf> {
    let handle = file.as_raw_handle() as HANDLE;
    let mut buf = vec![0u16; 512];
    loop {
        let capacity = u32::try_from(buf.len()).unwrap_or(u32::MAX);
        // SAFETY: `buf` holds `capacity` u16s; the call writes at most that many and returns the
        // length written (without the NUL), or the size needed when it is too small.
        let n = unsafe {
            GetFinalPathNameByHandleW(handle, buf.as_mut_ptr(), capacity, FILE_NAME_NORMALIZED)
        } as usize;
        if n == 0 {
            return Err(io::Error::last_os_error());
        }
        if n < buf.len() {
            buf.truncate(n);
            break;
        }
        buf.resize(n + 1, 0);
    }
    let text = OsString::from_wide(&buf);
    let path = PathBuf::from(text);
    Ok(strip_verbatim(&path))
}

/// `\\?\C:\x` → `C:\x`; `\\?\UNC\server\share` → `\\server\share`; others unchanged.
fn strip_verbatim(path: &Path) -> PathBuf {
    let text = path.to_string_lossy();
    if let Some(rest) = text.strip_prefix(r"\\?\UNC\") {
        return PathBuf::from(format!(r"\\{rest}"));
    }
    if let Some(rest) = text.strip_prefix(r"\\?\") {
        if rest.as_bytes().get(1) == Some(&b':') {
            return PathBuf::from(rest);
        }
    }
    path.to_path_buf()
}

/// Takes `file`'s lock without waiting: `Ok(false)` when another handle holds it. Released when
/// `file` is closed. The lock covers one byte at [`LOCK_OFFSET`], not the content.
pub fn try_lock(file: &File, exclusive: bool) -> io::Result<bool> {
    let mut flags = LOCKFILE_FAIL_IMMEDIATELY;
    if exclusive {
        flags |= LOCKFILE_EXCLUSIVE_LOCK;
    }
    // SAFETY: a zeroed OVERLAPPED with the offset set is what a synchronous LockFileEx reads; it
    // lives across the call, which does not keep it (the handle is not overlapped).
    let ok = unsafe {
        let mut overlapped: OVERLAPPED = std::mem::zeroed();
        overlapped.Anonymous.Anonymous.Offset = LOCK_OFFSET as u32;
        overlapped.Anonymous.Anonymous.OffsetHigh = (LOCK_OFFSET >> 32) as u32;
        LockFileEx(
            file.as_raw_handle() as HANDLE,
            flags,
            0,
            1,
            0,
            &mut overlapped,
        )
    };
    if ok != 0 {
        return Ok(true);
    }
    let err = io::Error::last_os_error();
    if err.raw_os_error() == Some(ERROR_LOCK_VIOLATION) {
        return Ok(false);
    }
    Err(err)
}

/// Creates `dir` if missing. Below the user's profile (the default data dir) the inherited ACL
/// already keeps other users out; a dir the user names elsewhere keeps the ACL they gave it.
pub fn ensure_private_dir(dir: &Path) -> anyhow::Result<()> {
    use anyhow::Context;
    std::fs::create_dir_all(dir)
        .with_context(|| format!("{}: cannot create directory", dir.display()))
}

/// Creates (or truncates) `path` for writing (its folder's ACL applies, see
/// [`ensure_private_dir`]).
pub fn create_private_file(path: &Path) -> io::Result<File> {
    std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .open(path)
}

fn own_handle(raw: HANDLE) -> io::Result<OwnedHandle> {
    if raw.is_null() || raw == INVALID_HANDLE_VALUE {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: a valid handle just returned to us, owned by nobody else.
    Ok(unsafe { OwnedHandle::from_raw_handle(raw as _) })
}

/// This process's parent, from a process snapshot (Windows keeps the creator's pid even after
/// the creator exited; [`Watched`] then finds it gone).
pub fn parent_pid() -> Option<u32> {
    let me = std::process::id();
    // SAFETY: the snapshot handle is owned at once; PROCESSENTRY32W is plain data whose dwSize
    // the walk functions require set before the first call.
    unsafe {
        let snapshot = own_handle(CreateToolhelp32Snapshot(TH32CS_SNAPPROCESS, 0)).ok()?;
        let raw = snapshot.as_raw_handle() as HANDLE;
        let mut entry: PROCESSENTRY32W = std::mem::zeroed();
        entry.dwSize = std::mem::size_of::<PROCESSENTRY32W>() as u32;
        let mut more = Process32FirstW(raw, &mut entry) != 0;
        while more {
            if entry.th32ProcessID == me {
                // 0: no Windows parent (started from outside, as Wine does from Linux).
                return (entry.th32ParentProcessID != 0).then_some(entry.th32ParentProcessID);
            }
            more = Process32NextW(raw, &mut entry) != 0;
        }
    }
    None
}

fn open_process(pid: u32, access: u32) -> io::Result<OwnedHandle> {
    // SAFETY: plain call; the result is checked and owned.
    own_handle(unsafe { OpenProcess(access, 0, pid) })
}

/// True when the process behind `handle` has ended: signalled, or the wait itself failed (the
/// handle is no use any more either way).
fn ended(handle: &OwnedHandle) -> bool {
    // SAFETY: the handle is open (owned) and has SYNCHRONIZE access; a zero timeout only polls.
    let state = unsafe { WaitForSingleObject(handle.as_raw_handle() as HANDLE, 0) };
    state != WAIT_TIMEOUT
}

/// A process whose end is awaited (a sidecar's app), held by handle: pids are reused on Windows,
/// a handle always names the process it was opened on.
pub struct Watched {
    /// `None`: the process exists but may not be opened (another user's, or elevated); it is
    /// then not watched (stdin EOF still ends a sidecar), never taken for dead.
    handle: Option<OwnedHandle>,
}

/// `ERROR_INVALID_PARAMETER`: what `OpenProcess` says for a pid no process has.
const NO_SUCH_PROCESS: i32 = 87;

impl Watched {
    /// Starts watching `pid`; `None` if no such process exists (it is gone already).
    pub fn new(pid: u32) -> Option<Watched> {
        match open_process(pid, PROCESS_SYNCHRONIZE) {
            Ok(handle) => Some(Watched {
                handle: Some(handle),
            }),
            Err(err) if err.raw_os_error() == Some(NO_SUCH_PROCESS) => None,
            Err(err) => {
                tracing::warn!(pid, error = %err, "cannot watch the parent process; only stdin EOF ends this sidecar");
                Some(Watched { handle: None })
            }
        }
    }

    /// True once the process has exited.
    pub fn gone(&self) -> bool {
        self.handle.as_ref().is_some_and(ended)
    }
}

/// True once `pid` has exited (no such process any more).
pub fn process_gone(pid: u32) -> bool {
    match open_process(pid, PROCESS_SYNCHRONIZE) {
        Ok(handle) => ended(&handle),
        Err(err) => err.raw_os_error() == Some(NO_SUCH_PROCESS),
    }
}

/// Windows has no signal a detached daemon without a console could receive: a graceful stop
/// goes through the API (`POST /api/v1/shutdown`, what `hearth stop` does first).
pub fn terminate(pid: u32) -> io::Result<()> {
    Err(io::Error::new(
        io::ErrorKind::Unsupported,
        format!(
            "hearth (pid {pid}) does not answer on its pipe, and Windows has no graceful stop \
             signal for a background process; `hearth stop --force` ends it"
        ),
    ))
}

/// Ends `pid` at once (TerminateProcess).
pub fn kill(pid: u32) -> io::Result<()> {
    let handle = open_process(pid, PROCESS_TERMINATE)?;
    // SAFETY: the handle is open with PROCESS_TERMINATE access.
    if unsafe { TerminateProcess(handle.as_raw_handle() as HANDLE, 1) } == 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// A detached daemon on Windows is started without a console ([`detach`]); nothing to leave.
pub fn leave_terminal_session() -> io::Result<()> {
    Ok(())
}

/// Starts a detached daemon with no console window and in its own process group, so the
/// console's Ctrl-C never reaches it.
pub fn detach(command: &mut std::process::Command) {
    command.creation_flags(CREATE_NO_WINDOW | CREATE_NEW_PROCESS_GROUP);
}

/// The variables a Windows process needs to start and use system DLLs (Winsock and the crypto
/// provider look up `SystemRoot`), kept for a child whose environment is otherwise cleared.
pub fn process_essentials() -> Vec<(String, std::ffi::OsString)> {
    ["SystemRoot", "windir", "SystemDrive"]
        .into_iter()
        .filter_map(|name| Some((name.to_string(), std::env::var_os(name)?)))
        .collect()
}

/// Resolves when the system asks the daemon to stop (Ctrl-C, Ctrl-Break, the console closing,
/// log-off or shutdown), naming what asked.
pub async fn shutdown_requested() -> io::Result<&'static str> {
    use tokio::signal::windows;
    let mut c = windows::ctrl_c()?;
    let mut brk = windows::ctrl_break()?;
    let mut close = windows::ctrl_close()?;
    let mut logoff = windows::ctrl_logoff()?;
    let mut shutdown = windows::ctrl_shutdown()?;
    Ok(tokio::select! {
        _ = c.recv() => "Ctrl-C",
        _ = brk.recv() => "Ctrl-Break",
        _ = close.recv() => "console closed",
        _ = logoff.recv() => "log-off",
        _ = shutdown.recv() => "system shutdown",
    })
}

/// Ctrl-C as a stream of events (the REPL's "stop this reply").
pub struct Interrupts(tokio::signal::windows::CtrlC);

impl Interrupts {
    /// Installs the handler; from then on Ctrl-C no longer ends the process. Needs a runtime.
    pub fn install() -> io::Result<Interrupts> {
        tokio::signal::windows::ctrl_c().map(Interrupts)
    }

    pub async fn recv(&mut self) -> Option<()> {
        self.0.recv().await
    }
}

/// The process's working set (its resident memory).
pub fn resident_memory_bytes() -> Option<u64> {
    // SAFETY: the pseudo-handle of the current process needs no closing; the counters struct is
    // plain data whose size is passed.
    unsafe {
        let mut counters: PROCESS_MEMORY_COUNTERS = std::mem::zeroed();
        let size = std::mem::size_of::<PROCESS_MEMORY_COUNTERS>() as u32;
        counters.cb = size;
        if K32GetProcessMemoryInfo(GetCurrentProcess(), &mut counters, size) == 0 {
            return None;
        }
        Some(counters.WorkingSetSize as u64)
    }
}

/// The binary to start workers from. A running `.exe` cannot be replaced or deleted on Windows,
/// so its path keeps naming this build.
pub fn this_program() -> PathBuf {
    std::env::current_exe().unwrap_or_else(|_| PathBuf::from("hearth.exe"))
}

/// The canonical absolute form of `path` (links resolved), as a plain drive or UNC path: `std`
/// gives the `\\?\` form, which no user writes and which would make every key differ.
pub fn canonicalize(path: &Path) -> io::Result<PathBuf> {
    std::fs::canonicalize(path).map(|p| strip_verbatim(&p))
}

/// Opens a model file to verify it, sharing it for reading only: while this handle is open (until
/// the load is done) nobody can write, replace, rename or delete the file, so the loader reads
/// by path exactly the bytes that were hashed.
pub fn open_model(path: &Path) -> io::Result<File> {
    std::fs::OpenOptions::new()
        .read(true)
        .share_mode(FILE_SHARE_READ)
        .open(path)
}

/// The path the loader gets: the path itself, pinned by [`open_model`]'s share mode.
pub fn loader_path(_file: &File, path: &Path) -> PathBuf {
    path.to_path_buf()
}

/// The extraction worker's Job Object (see `ingest::sandbox`): created once, this process put in
/// it, and its handle kept for the process's life (closing it would lift the limits).
static WORKER_JOB: std::sync::OnceLock<Option<OwnedHandle>> = std::sync::OnceLock::new();

/// The limits the worker's job holds: a cap on the process's committed memory, no child
/// process at all, no error dialog on a crash, and (after [`allow_cpu`]) a user-time limit.
fn job_limits(
    memory_bytes: u64,
    cpu_limit_100ns: Option<i64>,
) -> JOBOBJECT_EXTENDED_LIMIT_INFORMATION {
    // SAFETY: a plain-data struct; zero is "no limit" for every field not set below.
    let mut info: JOBOBJECT_EXTENDED_LIMIT_INFORMATION = unsafe { std::mem::zeroed() };
    let basic = &mut info.BasicLimitInformation;
    basic.LimitFlags = JOB_OBJECT_LIMIT_PROCESS_MEMORY
        | JOB_OBJECT_LIMIT_ACTIVE_PROCESS
        | JOB_OBJECT_LIMIT_DIE_ON_UNHANDLED_EXCEPTION;
    basic.ActiveProcessLimit = 1;
    if let Some(limit) = cpu_limit_100ns {
        basic.LimitFlags |= JOB_OBJECT_LIMIT_PROCESS_TIME;
        basic.PerProcessUserTimeLimit = limit;
    }
    info.ProcessMemoryLimit = usize::try_from(memory_bytes).unwrap_or(usize::MAX);
    info
}

fn set_limits(job: &OwnedHandle, info: &JOBOBJECT_EXTENDED_LIMIT_INFORMATION) -> io::Result<()> {
    // SAFETY: the job handle is open; `info` is the struct this class expects, with its size.
    let ok = unsafe {
        SetInformationJobObject(
            job.as_raw_handle() as HANDLE,
            JobObjectExtendedLimitInformation,
            std::ptr::from_ref(info).cast(),
            std::mem::size_of::<JOBOBJECT_EXTENDED_LIMIT_INFORMATION>() as u32,
        )
    };
    if ok == 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Puts this process (the extraction worker) in a Job Object capped at `memory_bytes` of
/// committed memory and one process. Returns what could not be applied.
pub fn confine_worker(memory_bytes: u64) -> Vec<String> {
    let mut missing = Vec::new();
    let job = (|| -> io::Result<OwnedHandle> {
        // SAFETY: an unnamed job with default security; the result is checked and owned.
        let job = own_handle(unsafe { CreateJobObjectW(std::ptr::null(), std::ptr::null()) })?;
        set_limits(&job, &job_limits(memory_bytes, None))?;
        // SAFETY: both handles are valid; the pseudo-handle of this process needs no closing.
        if unsafe { AssignProcessToJobObject(job.as_raw_handle() as HANDLE, GetCurrentProcess()) }
            == 0
        {
            return Err(io::Error::last_os_error());
        }
        Ok(job)
    })();
    let job = match job {
        Ok(job) => Some(job),
        Err(err) => {
            missing.push(format!("memory and process limits (Job Object): {err}"));
            None
        }
    };
    let _ = WORKER_JOB.set(job);
    missing.push(
        "file-system and network filter: only on Linux (a restricted token or AppContainer \
         would be Windows' answer)"
            .to_string(),
    );
    missing
}

/// Lets the coming job use `secs` more seconds of user time: the job's per-process limit is
/// raised to the time used so far plus `secs`; past it Windows ends the worker.
pub fn allow_cpu(memory_bytes: u64, secs: u64) {
    let Some(Some(job)) = WORKER_JOB.get() else {
        return;
    };
    // SAFETY: FILETIMEs are plain data the call fills; the pseudo-handle needs no closing.
    let used = unsafe {
        let mut t: [FILETIME; 4] = std::mem::zeroed();
        let [created, exited, kernel, user] = &mut t;
        if GetProcessTimes(GetCurrentProcess(), created, exited, kernel, user) == 0 {
            return;
        }
        (i64::from(user.dwHighDateTime) << 32) | i64::from(user.dwLowDateTime)
    };
    let allowance = i64::try_from(secs.max(1)).unwrap_or(i64::MAX / 2) * 10_000_000;
    let _ = set_limits(
        job,
        &job_limits(memory_bytes, Some(used.saturating_add(allowance))),
    );
}
