//! The extraction worker's own side: `hearth extract-worker`, the process that parses untrusted
//! files (PDF, DOCX, HTML, every format) so that a parser's bug or a hostile file costs that
//! process, never the daemon.
//!
//! Why a process: a Rust thread cannot be stopped or capped. A PDF whose streams inflate to
//! gigabytes grew the daemon to 4.5 GB, and a parser stuck in a loop kept a core busy after
//! its file was gone. A process gets hard limits from the kernel and can be killed at once.
//!
//! Before it reads a byte of a job, the worker confines itself ([`confine`]):
//! - **Memory**: `RLIMIT_AS` (config `extract_memory_mib`): an allocation past it fails, the
//!   worker aborts, the file fails with `extract_resource_limit`.
//! - **CPU**: `RLIMIT_CPU`, raised before each job to the time used so far plus that job's
//!   allowance, so a spinning parser gets SIGXCPU even if the daemon's own clock misses it.
//! - **Files**: `RLIMIT_NOFILE` of [`MAX_OPEN_FILES`], `RLIMIT_FSIZE` 0 (no byte written to any
//!   file; stdout is a pipe), no core dumps; on Linux, the system-call filter below refuses
//!   opening, creating, renaming or deleting any path at all: a job's bytes arrive on stdin.
//! - **Network**: on Linux, a new (empty) network namespace when the kernel allows unprivileged
//!   user namespaces, and in any case a seccomp filter that refuses `socket` and its kin, plus
//!   `execve`, `fork`, `ptrace` and `io_uring` (which could bypass the filter). Refused calls
//!   fail with EPERM rather than killing the process, so a library probing for a file gets an
//!   error it handles.
//!
//! The protocol (frames on stdin/stdout, see [`super::worker`]) is driven by the daemon; the
//! first frame the worker writes says which confinements took effect.

use std::io::{Read, Write};
use std::process::ExitCode;

use super::worker::{read_frame, write_frame, Hello, Job, Reply, MAX_HEADER_BYTES};

/// Open files the worker may hold: stdin, stdout, stderr and a few for the runtime.
#[cfg(unix)]
const MAX_OPEN_FILES: u64 = 16;

/// What confined the worker (the hello frame; health and logs show it).
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Confinement {
    /// `RLIMIT_AS` in bytes.
    pub memory_bytes: u64,
    /// The seccomp filter is installed.
    pub seccomp: bool,
    /// The worker runs in a network namespace of its own (no interfaces but loopback, down).
    pub network_namespace: bool,
    /// Why a confinement could not be applied (empty when all were).
    pub missing: Vec<String>,
}

/// Runs the worker until stdin closes. `probe`: confine, then try what the confinement must
/// refuse and print what happened as JSON (the integration test of the sandbox itself).
pub fn worker_main(memory_mib: u64, probe: bool) -> ExitCode {
    let confinement = confine(memory_mib.saturating_mul(1024 * 1024));
    if probe {
        return run_probe(&confinement);
    }
    let mut stdin = std::io::stdin().lock();
    // One write per frame: stdout is line-buffered, and a frame's length prefix or text may
    // hold newline bytes anywhere.
    let mut stdout = std::io::BufWriter::with_capacity(1 << 16, std::io::stdout().lock());
    let confinement_memory = confinement.memory_bytes;
    let hello = Hello {
        confinement,
        pid: std::process::id(),
    };
    if write_frame(&mut stdout, &hello).is_err() {
        return ExitCode::FAILURE;
    }
    loop {
        let job: Job = match read_frame(&mut stdin, MAX_HEADER_BYTES) {
            Ok(Some(job)) => job,
            // The daemon closed the pipe: it is done with this worker.
            Ok(None) => return ExitCode::SUCCESS,
            Err(_) => return ExitCode::FAILURE,
        };
        let mut bytes = Vec::new();
        if let Err(err) = (&mut stdin).take(job.len).read_to_end(&mut bytes) {
            let _ = writeln!(std::io::stderr(), "cannot read the job: {err}");
            return ExitCode::FAILURE;
        }
        if bytes.len() as u64 != job.len {
            return ExitCode::FAILURE;
        }
        allow_cpu(confinement_memory, job.cpu_secs);
        let reply = match std::panic::catch_unwind(|| {
            super::extract::extract(&job.name, &bytes, &job.limits)
        }) {
            Ok(Ok(extracted)) => Reply::Extracted(extracted),
            Ok(Err(err)) => Reply::Failed(err),
            Err(panic) => Reply::Crashed(panic_message(&panic)),
        };
        drop(bytes);
        if write_frame(&mut stdout, &reply).is_err() {
            return ExitCode::FAILURE;
        }
    }
}

fn panic_message(panic: &Box<dyn std::any::Any + Send>) -> String {
    panic
        .downcast_ref::<&str>()
        .map(|s| (*s).to_string())
        .or_else(|| panic.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "the parser panicked".to_string())
}

/// Applies every confinement the platform offers; what failed is listed, never fatal (the
/// daemon logs it once and health shows it).
#[cfg(windows)]
fn confine(memory_bytes: u64) -> Confinement {
    Confinement {
        memory_bytes,
        missing: crate::sys::confine_worker(memory_bytes),
        ..Confinement::default()
    }
}

/// Applies every confinement the platform offers; what failed is listed, never fatal (the
/// daemon logs it once and health shows it).
#[cfg(unix)]
fn confine(memory_bytes: u64) -> Confinement {
    use nix::sys::resource::{setrlimit, Resource};
    let mut c = Confinement {
        memory_bytes,
        ..Confinement::default()
    };
    let mut limit = |what: &str, resource: Resource, value: u64| {
        if let Err(err) = setrlimit(resource, value, value) {
            c.missing.push(format!("{what}: {err}"));
        }
    };
    limit("core dumps", Resource::RLIMIT_CORE, 0);
    limit("file size", Resource::RLIMIT_FSIZE, 0);
    limit("open files", Resource::RLIMIT_NOFILE, MAX_OPEN_FILES);
    limit("address space", Resource::RLIMIT_AS, memory_bytes);
    #[cfg(target_os = "linux")]
    linux::confine(&mut c);
    #[cfg(not(target_os = "linux"))]
    c.missing
        .push("network and system-call filter: only on Linux".to_string());
    c
}

/// Lets the coming job use `secs` more seconds of user time (the Job Object's per-process limit;
/// Windows ends the worker past it).
#[cfg(windows)]
fn allow_cpu(memory_bytes: u64, secs: u64) {
    crate::sys::allow_cpu(memory_bytes, secs);
}

/// Lets the coming job use `secs` more seconds of CPU (soft limit: SIGXCPU ends the worker).
#[cfg(unix)]
fn allow_cpu(_memory_bytes: u64, secs: u64) {
    use nix::sys::resource::{getrlimit, getrusage, setrlimit, Resource, UsageWho};
    let Ok(usage) = getrusage(UsageWho::RUSAGE_SELF) else {
        return;
    };
    let used = usage.user_time().tv_sec() + usage.system_time().tv_sec();
    let soft = u64::try_from(used).unwrap_or(0) + secs.max(1);
    let hard = getrlimit(Resource::RLIMIT_CPU).map_or(u64::MAX, |(_, hard)| hard);
    let _ = setrlimit(Resource::RLIMIT_CPU, soft.min(hard), hard);
}

#[cfg(target_os = "linux")]
mod linux {
    use std::collections::BTreeMap;

    use seccompiler::{SeccompAction, SeccompFilter};

    use super::Confinement;

    /// System calls the worker never needs once it reads jobs from stdin: networking, opening
    /// or changing paths, starting programs, touching other processes, and io_uring (its
    /// operations are not seen by seccomp).
    const DENIED: &[i64] = &[
        libc::SYS_socket,
        libc::SYS_socketpair,
        libc::SYS_connect,
        libc::SYS_bind,
        libc::SYS_listen,
        libc::SYS_accept4,
        libc::SYS_openat,
        libc::SYS_openat2,
        libc::SYS_open_by_handle_at,
        libc::SYS_name_to_handle_at,
        libc::SYS_execve,
        libc::SYS_execveat,
        libc::SYS_ptrace,
        libc::SYS_process_vm_readv,
        libc::SYS_process_vm_writev,
        libc::SYS_kill,
        libc::SYS_unlinkat,
        libc::SYS_renameat,
        libc::SYS_renameat2,
        libc::SYS_mkdirat,
        libc::SYS_linkat,
        libc::SYS_symlinkat,
        libc::SYS_fchmodat,
        libc::SYS_fchownat,
        libc::SYS_truncate,
        libc::SYS_mknodat,
        libc::SYS_mount,
        libc::SYS_umount2,
        libc::SYS_chroot,
        libc::SYS_pivot_root,
        libc::SYS_setns,
        libc::SYS_io_uring_setup,
        libc::SYS_io_uring_enter,
        libc::SYS_io_uring_register,
        libc::SYS_memfd_create,
        libc::SYS_userfaultfd,
        libc::SYS_bpf,
        libc::SYS_perf_event_open,
    ];

    /// The same for the older calls x86-64 still has next to their `*at` forms.
    #[cfg(target_arch = "x86_64")]
    const DENIED_LEGACY: &[i64] = &[
        libc::SYS_accept,
        libc::SYS_open,
        libc::SYS_creat,
        libc::SYS_fork,
        libc::SYS_vfork,
        libc::SYS_unlink,
        libc::SYS_rename,
        libc::SYS_mkdir,
        libc::SYS_rmdir,
        libc::SYS_link,
        libc::SYS_symlink,
        libc::SYS_chmod,
        libc::SYS_chown,
        libc::SYS_lchown,
        libc::SYS_mknod,
    ];
    #[cfg(not(target_arch = "x86_64"))]
    const DENIED_LEGACY: &[i64] = &[];

    pub(super) fn confine(c: &mut Confinement) {
        use nix::sched::{unshare, CloneFlags};
        // A user namespace makes the network namespace possible without privileges; it must
        // come first, while the process has one thread (it still has: no runtime here).
        match unshare(CloneFlags::CLONE_NEWUSER | CloneFlags::CLONE_NEWNET) {
            Ok(()) => c.network_namespace = true,
            Err(err) => c.missing.push(format!("network namespace: {err}")),
        }
        match filter() {
            Ok(program) => match seccompiler::apply_filter(&program) {
                Ok(()) => c.seccomp = true,
                Err(err) => c.missing.push(format!("seccomp: {err}")),
            },
            Err(err) => c.missing.push(format!("seccomp: {err}")),
        }
    }

    fn filter() -> Result<seccompiler::BpfProgram, seccompiler::Error> {
        let rules: BTreeMap<i64, Vec<seccompiler::SeccompRule>> = DENIED
            .iter()
            .chain(DENIED_LEGACY)
            .map(|&call| (call, Vec::new()))
            .collect();
        let arch = std::env::consts::ARCH.try_into()?;
        let filter = SeccompFilter::new(
            rules,
            SeccompAction::Allow,
            SeccompAction::Errno(libc::EPERM as u32),
            arch,
        )
        .map_err(seccompiler::Error::Backend)?;
        filter.try_into().map_err(seccompiler::Error::Backend)
    }
}

/// Tries what the confinement must refuse and prints one JSON object: each attempt's error
/// (or `"allowed"`), and the confinement itself.
fn run_probe(c: &Confinement) -> ExitCode {
    fn outcome<T>(r: std::io::Result<T>) -> String {
        match r {
            Ok(_) => "allowed".to_string(),
            Err(err) => format!("refused: {err}"),
        }
    }
    let network = outcome(std::net::TcpStream::connect(("127.0.0.1", 9)));
    let udp = outcome(std::net::UdpSocket::bind(("127.0.0.1", 0)));
    let read_file = outcome(std::fs::File::open("/etc/hostname"));
    let scratch = std::env::temp_dir().join(format!("hearth-probe-{}", std::process::id()));
    let create_file = outcome(std::fs::File::create(&scratch));
    let _ = std::fs::remove_file(&scratch);
    let exec = outcome(std::process::Command::new("/bin/true").status());
    let memory = match Vec::<u8>::new().try_reserve_exact(c.memory_bytes as usize) {
        Ok(()) => "allowed".to_string(),
        Err(err) => format!("refused: {err}"),
    };
    let report = serde_json::json!({
        "confinement": c,
        "tcp_connect": network,
        "udp_bind": udp,
        "read_file": read_file,
        "create_file": create_file,
        "exec": exec,
        "allocate_limit": memory,
    });
    let _ = writeln!(std::io::stdout(), "{report}");
    ExitCode::SUCCESS
}
