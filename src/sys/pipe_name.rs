//! The named pipe's name on Windows: the default one per user and per data dir, and the check of a
//! name the user gives. Pure string rules, built on every platform (config resolves the default
//! endpoint with them; `server/pipe.rs` binds it), and tested on Linux.

use std::path::Path;

/// Longest pipe name Windows accepts (`\\.\pipe\` included).
const MAX_PIPE_NAME: usize = 256;

/// The default pipe name for `user` and `data_dir`: per user, and per data dir so that several
/// apps, each with its own data dir, never collide (the same rule as the socket path on Unix).
///
/// Characters other than ASCII letters, digits, `-`, `_` and `.` in the user name become `_`
/// (a pipe name may not contain `\`); the data dir enters only as a short hash.
pub fn default_pipe_name(user: &str, data_dir: &Path) -> String {
    let user: String = user
        .chars()
        .take(64)
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.') {
                c
            } else {
                '_'
            }
        })
        .collect();
    let user = if user.is_empty() { "user".into() } else { user };
    let dir = data_dir.to_string_lossy().to_lowercase();
    let name = format!(r"\\.\pipe\hearth-{user}-{:016x}", fnv1a(dir.as_bytes()));
    debug_assert!(name.len() <= MAX_PIPE_NAME);
    name
}

/// A stable, dependency-free hash for the name (not for security: the DACL and
/// `FILE_FLAG_FIRST_PIPE_INSTANCE` are what keep others out).
fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |hash, &b| {
        (hash ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    })
}

/// Checks a pipe name given by the user (`--socket` on Windows).
pub fn check_pipe_name(name: &str) -> Result<(), String> {
    let Some(rest) = name.strip_prefix(r"\\.\pipe\") else {
        return Err(format!(r"{name}: a pipe name starts with \\.\pipe\"));
    };
    if rest.is_empty() || rest.contains('\\') {
        return Err(format!(
            r"{name}: the part after \\.\pipe\ must be non-empty and contain no '\'"
        ));
    }
    if name.len() > MAX_PIPE_NAME {
        return Err(format!("{name}: longer than {MAX_PIPE_NAME} characters"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_names_are_per_user_and_per_data_dir() {
        let a = default_pipe_name("ada", Path::new(r"C:\Users\ada\AppData\Local\hearth"));
        let b = default_pipe_name("ada", Path::new(r"C:\Users\ada\AppData\Local\other-app"));
        let c = default_pipe_name("bob", Path::new(r"C:\Users\ada\AppData\Local\hearth"));
        assert!(a.starts_with(r"\\.\pipe\hearth-ada-"), "{a}");
        assert_ne!(a, b);
        assert_ne!(a, c);
        // Windows paths are case-insensitive: the same dir spelled differently is the same pipe.
        assert_eq!(
            a,
            default_pipe_name("ada", Path::new(r"c:\users\ADA\appdata\local\HEARTH"))
        );
        for name in [&a, &b, &c] {
            check_pipe_name(name).unwrap();
        }
    }

    #[test]
    fn user_names_cannot_break_out_of_the_pipe_namespace() {
        let name = default_pipe_name(r"evil\..\name with space", Path::new("x"));
        check_pipe_name(&name).unwrap();
        assert!(
            name.starts_with(r"\\.\pipe\hearth-evil_.._name_with_space-"),
            "{name}"
        );
        assert!(default_pipe_name("", Path::new("x")).starts_with(r"\\.\pipe\hearth-user-"));
    }

    #[test]
    fn bad_pipe_names_are_refused() {
        assert!(check_pipe_name("/tmp/hearth.sock").is_err());
        assert!(check_pipe_name(r"\\.\pipe\").is_err());
        assert!(check_pipe_name(r"\\.\pipe\a\b").is_err());
        assert!(check_pipe_name(r"\\remote\pipe\hearth").is_err());
        assert!(check_pipe_name(&format!(r"\\.\pipe\{}", "x".repeat(300))).is_err());
        assert!(check_pipe_name(r"\\.\pipe\hearth-ada").is_ok());
    }
}
