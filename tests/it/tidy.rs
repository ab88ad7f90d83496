//! Repository rules that are cheaper to enforce by test than by review.

use std::path::Path;

/// Every Rust file opens with a `//!` comment saying what it owns and why.
#[test]
fn every_rust_file_starts_with_a_module_doc() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut missing = Vec::new();
    let mut seen = 0;
    for dir in ["src", "tests"] {
        visit(&root.join(dir), &mut |path| {
            seen += 1;
            let text = std::fs::read_to_string(path).unwrap();
            if !text.trim_start().starts_with("//!") {
                missing.push(path.display().to_string());
            }
        });
    }
    assert!(seen > 10, "found only {seen} files");
    assert!(
        missing.is_empty(),
        "files without a //! header: {missing:?}"
    );
}

/// Only `llm` may use llama.cpp, only `store` may use sled, only `server` may use hyper's server;
/// `unsafe` is allowed in one place, the Windows pipe's security descriptor.
#[test]
fn architecture_boundaries_hold() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let rules: [(&str, &[&str]); 5] = [
        ("llama_cpp_2", &["llm"]),
        ("sled::", &["store"]),
        ("hyper::server", &["server"]),
        ("allow(unsafe_code)", &["server/pipe"]),
        ("windows_sys", &["server/pipe"]),
    ];
    visit(&root, &mut |path| {
        let text = std::fs::read_to_string(path).unwrap();
        let rel = path
            .strip_prefix(&root)
            .unwrap()
            .to_string_lossy()
            .to_string();
        for (needle, allowed) in rules {
            let ok = allowed
                .iter()
                .any(|m| rel.starts_with(&format!("{m}/")) || rel == format!("{m}.rs"));
            if !ok {
                assert!(
                    !text.contains(needle),
                    "{rel} uses {needle}, which belongs to {allowed:?}"
                );
            }
        }
    });
}

fn visit(dir: &Path, f: &mut dyn FnMut(&Path)) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            // Build output of the nested Windows check crate (tests/windows-pipe).
            if path.file_name().is_some_and(|n| n == "target") {
                continue;
            }
            visit(&path, f);
        } else if path.extension().is_some_and(|e| e == "rs") {
            f(&path);
        }
    }
}
