//! The set-up scripts: `scripts/deps --check` decides from exactly the files bindgen loads, on a
//! fake system root (`HEARTH_DEPS_SYSROOT`) that has what a fresh Debian image has.

use std::path::Path;
use std::process::{Command, Output};

fn touch(root: &Path, rel: &str) {
    let path = root.join(rel);
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(path, b"").unwrap();
}

/// A PATH holding only stand-ins for `tools`.
fn bin_with(tools: &[&str]) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    for tool in tools {
        let path = dir.path().join(tool);
        std::fs::write(&path, "#!/bin/sh\nexit 0\n").unwrap();
        let mut perms = std::fs::metadata(&path).unwrap().permissions();
        std::os::unix::fs::PermissionsExt::set_mode(&mut perms, 0o755);
        std::fs::set_permissions(&path, perms).unwrap();
    }
    dir
}

fn deps_check(root: &Path, bin: &Path) -> Output {
    Command::new("/bin/bash")
        .arg(Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/deps"))
        .arg("--check")
        .env("HEARTH_DEPS_SYSROOT", root)
        .env("PATH", bin)
        .env_remove("LIBCLANG_PATH")
        .output()
        .unwrap()
}

#[test]
fn deps_check_needs_the_libclang_bindgen_loads_not_libclang_cpp() {
    let root = tempfile::tempdir().unwrap();
    let bin = bin_with(&["cmake", "curl"]);
    // A fresh Debian 12 image: clang-cpp's library only (the old check took it for libclang).
    touch(root.path(), "usr/lib/llvm-14/lib/libclang-cpp.so.14");
    touch(root.path(), "usr/lib/x86_64-linux-gnu/libclang-cpp.so.14");
    let out = deps_check(root.path(), bin.path());
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{text}");
    assert!(text.contains("missing libclang"), "{text}");
    assert!(!text.contains("cmake"), "{text}");

    // libclang itself, but not clang's builtin headers (stddef.h): bindgen would still fail.
    touch(root.path(), "usr/lib/llvm-14/lib/libclang-14.so.1");
    let out = deps_check(root.path(), bin.path());
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{text}");
    assert!(text.contains("clang builtin headers"), "{text}");

    touch(
        root.path(),
        "usr/lib/llvm-14/lib/clang/14.0.6/include/stddef.h",
    );
    let out = deps_check(root.path(), bin.path());
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );

    // Without cmake on the PATH.
    let bin = bin_with(&["curl"]);
    let out = deps_check(root.path(), bin.path());
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{text}");
    assert!(text.contains("missing cmake"), "{text}");
}

#[test]
fn deps_check_accepts_libclang_under_its_plain_name_too() {
    let root = tempfile::tempdir().unwrap();
    let bin = bin_with(&["cmake", "curl"]);
    touch(root.path(), "usr/lib/llvm-16/lib/libclang.so.1");
    touch(root.path(), "usr/lib/llvm-16/lib/clang/16/include/stddef.h");
    let out = deps_check(root.path(), bin.path());
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
}
