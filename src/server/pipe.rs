//! The Windows named-pipe listener: the Windows counterpart of the Unix socket in `server/mod.rs`.
//!
//! Kept small and on its own: it depends only on `std`, `tokio`, `windows-sys` and the pipe's
//! naming rules (`sys/pipe_name.rs`, which config uses too), so `tests/windows-pipe/` compiles
//! these very files for `x86_64-pc-windows-gnu` and runs the listener's tests under Wine (the
//! whole daemon's sidecar is tested by `scripts/windows-test`).
//!
//! Security rests on the pipe, as on Unix it rests on the socket file:
//! - the name is per user and per data dir (`\\.\pipe\hearth-<user>-<hash>`), so two users or two
//!   apps never share one;
//! - the first instance is created with `FILE_FLAG_FIRST_PIPE_INSTANCE`: if anybody (another
//!   process, another user squatting on the name) already owns the name, binding fails instead of
//!   silently joining their pipe;
//! - `PIPE_REJECT_REMOTE_CLIENTS`, and the DACL also denies the NETWORK logon group;
//! - an owner-only, protected DACL (`D:P(D;;GA;;;NU)(A;;GA;;;<our SID>)`) on every instance, so other
//!   local users cannot open it at all (Windows would otherwise give Everyone read access).

// This module is compiled into the daemon only on Windows (`#[cfg(windows)] mod pipe;` in
// `server/mod.rs`); `tests/windows-pipe` includes it with `#[path]`.

pub use crate::sys::pipe_name::{check_pipe_name, default_pipe_name};

#[cfg(windows)]
pub use listener::{client_process_id, PipeListener};

#[cfg(windows)]
#[allow(unsafe_code)] // the security descriptor: Win32 calls, see `OwnerOnly`
mod listener {
    use std::ffi::c_void;
    use std::io;

    use tokio::net::windows::named_pipe::{
        ClientOptions, NamedPipeServer, PipeMode, ServerOptions,
    };
    use windows_sys::Win32::Foundation::{CloseHandle, LocalFree, HANDLE};
    use windows_sys::Win32::Security::Authorization::{
        ConvertSidToStringSidW, ConvertStringSecurityDescriptorToSecurityDescriptorW,
        SDDL_REVISION_1,
    };
    use windows_sys::Win32::Security::{
        GetTokenInformation, TokenUser, PSECURITY_DESCRIPTOR, SECURITY_ATTRIBUTES, TOKEN_QUERY,
        TOKEN_USER,
    };
    use windows_sys::Win32::System::Threading::{GetCurrentProcess, OpenProcessToken};

    /// Bytes of the pipe's in/out buffers (a hint to the kernel; requests larger than this
    /// simply take more reads).
    const PIPE_BUFFER_BYTES: u32 = 64 * 1024;

    /// A listening named pipe. There is always one instance waiting for a client; `accept`
    /// hands the connected one out and creates the next.
    pub struct PipeListener {
        name: String,
        security: OwnerOnly,
        waiting: NamedPipeServer,
    }

    impl PipeListener {
        /// Creates the first instance. Fails if the name is already taken by anyone. Must be
        /// called inside a tokio runtime (the pipe registers with its reactor).
        pub fn bind(name: &str) -> io::Result<PipeListener> {
            super::check_pipe_name(name)
                .map_err(|msg| io::Error::new(io::ErrorKind::InvalidInput, msg))?;
            // As on Unix: if something answers on the name, say so plainly. This probe is only
            // for the message (and for Wine, which ignores the flag below); the race-free
            // guarantee is FILE_FLAG_FIRST_PIPE_INSTANCE.
            match ClientOptions::new().open(name) {
                Ok(_) => return Err(in_use(name, "another process is answering on it")),
                Err(err) if err.raw_os_error() == Some(ERROR_PIPE_BUSY) => {
                    return Err(in_use(
                        name,
                        "another process is serving it (all instances busy)",
                    ))
                }
                Err(_) => {}
            }
            let security = OwnerOnly::for_current_user()?;
            let waiting = create(name, &security, true).map_err(|err| {
                if err.raw_os_error() == Some(ERROR_ACCESS_DENIED)
                    || err.raw_os_error() == Some(ERROR_PIPE_BUSY)
                {
                    in_use(name, &format!("another process owns the name ({err})"))
                } else {
                    err
                }
            })?;
            Ok(PipeListener {
                name: name.to_owned(),
                security,
                waiting,
            })
        }

        /// The pipe's name, as clients open it.
        pub fn name(&self) -> &str {
            &self.name
        }

        /// The security descriptor every instance gets, in SDDL (for logs and tests).
        pub fn sddl(&self) -> &str {
            &self.security.sddl
        }

        /// Waits for a client and returns its connected instance. Cancel safe (tokio's
        /// `connect` is): dropped inside `select!`, no client is lost — the same instance keeps
        /// waiting for the next call.
        pub async fn accept(&mut self) -> io::Result<NamedPipeServer> {
            self.waiting.connect().await?;
            // The next instance exists before the connected one is handed out, so a client
            // arriving right now finds one (otherwise it gets ERROR_PIPE_BUSY).
            let next = create(&self.name, &self.security, false)?;
            Ok(std::mem::replace(&mut self.waiting, next))
        }
    }

    /// The process id of the client connected to `pipe` (the Windows counterpart of
    /// `SO_PEERCRED`'s pid: per-process connection slots). Only our own user can be connected:
    /// the DACL admits nobody else.
    pub fn client_process_id(pipe: &NamedPipeServer) -> Option<u32> {
        use std::os::windows::io::AsRawHandle;
        let mut pid = 0u32;
        // SAFETY: the pipe handle is open for the borrow; the call writes one u32.
        let ok = unsafe {
            windows_sys::Win32::System::Pipes::GetNamedPipeClientProcessId(
                pipe.as_raw_handle() as HANDLE,
                &mut pid,
            )
        };
        (ok != 0 && pid != 0).then_some(pid)
    }

    fn in_use(name: &str, why: &str) -> io::Error {
        io::Error::new(
            io::ErrorKind::AddrInUse,
            format!("{name} is already in use: {why}; stop it or pick another --socket"),
        )
    }

    const ERROR_ACCESS_DENIED: i32 = 5;
    const ERROR_PIPE_BUSY: i32 = 231;

    fn create(name: &str, security: &OwnerOnly, first: bool) -> io::Result<NamedPipeServer> {
        let mut options = ServerOptions::new();
        options
            .first_pipe_instance(first)
            .reject_remote_clients(true)
            .pipe_mode(PipeMode::Byte)
            .in_buffer_size(PIPE_BUFFER_BYTES)
            .out_buffer_size(PIPE_BUFFER_BYTES);
        let mut attributes = SECURITY_ATTRIBUTES {
            nLength: std::mem::size_of::<SECURITY_ATTRIBUTES>() as u32,
            lpSecurityDescriptor: security.descriptor,
            bInheritHandle: 0,
        };
        // SAFETY: `attributes` is a valid SECURITY_ATTRIBUTES for the duration of the call and
        // its descriptor is a valid self-relative descriptor owned by `security`, which outlives
        // the call (CreateNamedPipeW copies what it needs).
        unsafe {
            options.create_with_security_attributes_raw(
                name,
                (&mut attributes as *mut SECURITY_ATTRIBUTES).cast::<c_void>(),
            )
        }
    }

    /// An owner-only, protected security descriptor: the current user gets full access, the
    /// NETWORK group is denied, nobody else has an entry (so nobody else gets in).
    struct OwnerOnly {
        descriptor: PSECURITY_DESCRIPTOR,
        sddl: String,
    }

    // The descriptor is an immutable heap block owned by this value.
    unsafe impl Send for OwnerOnly {}
    unsafe impl Sync for OwnerOnly {}

    impl OwnerOnly {
        fn for_current_user() -> io::Result<OwnerOnly> {
            let sid = current_user_sid()?;
            let sddl = format!("D:P(D;;GA;;;NU)(A;;GA;;;{sid})");
            let wide: Vec<u16> = sddl.encode_utf16().chain(Some(0)).collect();
            let mut descriptor: PSECURITY_DESCRIPTOR = std::ptr::null_mut();
            // SAFETY: `wide` is NUL-terminated; on success `descriptor` receives a LocalAlloc'd
            // block that `Drop` frees.
            let ok = unsafe {
                ConvertStringSecurityDescriptorToSecurityDescriptorW(
                    wide.as_ptr(),
                    SDDL_REVISION_1,
                    &mut descriptor,
                    std::ptr::null_mut(),
                )
            };
            if ok == 0 {
                return Err(io::Error::last_os_error());
            }
            Ok(OwnerOnly { descriptor, sddl })
        }
    }

    impl Drop for OwnerOnly {
        fn drop(&mut self) {
            // SAFETY: allocated by ConvertStringSecurityDescriptorToSecurityDescriptorW.
            unsafe { LocalFree(self.descriptor as _) };
        }
    }

    /// The process user's SID as a string (`S-1-5-21-…`).
    fn current_user_sid() -> io::Result<String> {
        let mut token: HANDLE = std::ptr::null_mut();
        // SAFETY: the pseudo-handle needs no closing; `token` is closed below.
        if unsafe { OpenProcessToken(GetCurrentProcess(), TOKEN_QUERY, &mut token) } == 0 {
            return Err(io::Error::last_os_error());
        }
        let result = token_user_sid(token);
        // SAFETY: opened above, closed once.
        unsafe { CloseHandle(token) };
        result
    }

    fn token_user_sid(token: HANDLE) -> io::Result<String> {
        let mut needed = 0u32;
        // SAFETY: a size query (null buffer, length 0) is the documented way to learn the size.
        unsafe { GetTokenInformation(token, TokenUser, std::ptr::null_mut(), 0, &mut needed) };
        if needed == 0 {
            return Err(io::Error::last_os_error());
        }
        // u64 elements: TOKEN_USER holds pointers, so the buffer must be pointer-aligned.
        let mut buffer = vec![0u64; (needed as usize).div_ceil(8)];
        // SAFETY: `buffer` has at least `needed` bytes and is aligned for TOKEN_USER.
        let ok = unsafe {
            GetTokenInformation(
                token,
                TokenUser,
                buffer.as_mut_ptr().cast::<c_void>(),
                needed,
                &mut needed,
            )
        };
        if ok == 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: GetTokenInformation(TokenUser) filled the buffer with a TOKEN_USER whose SID
        // points into the same buffer, which lives until the end of this function.
        let sid = unsafe { (*buffer.as_ptr().cast::<TOKEN_USER>()).User.Sid };
        let mut text: *mut u16 = std::ptr::null_mut();
        // SAFETY: `sid` is valid (above); `text` receives a LocalAlloc'd NUL-terminated string.
        if unsafe { ConvertSidToStringSidW(sid, &mut text) } == 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: `text` is NUL-terminated (above); read up to the NUL, then freed once.
        let string = unsafe {
            let len = (0..).take_while(|&i| *text.add(i) != 0).count();
            let string = String::from_utf16_lossy(std::slice::from_raw_parts(text, len));
            LocalFree(text as _);
            string
        };
        Ok(string)
    }
}
