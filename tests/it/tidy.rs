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
/// `unsafe` is allowed in three places: the Windows pipe's security descriptor, the Windows side
/// of the platform layer (`sys/windows.rs`, Win32 calls), and the raw copy of a KV sequence's
/// state to and from a snapshot file (`llm/snapshots.rs`). Win32 is named only by those two
/// Windows files. (That Unix-only calls stay behind `cfg(unix)` is checked by the Windows build
/// itself, `scripts/windows-build`.)
#[test]
fn architecture_boundaries_hold() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let rules: [(&str, &[&str]); 5] = [
        ("llama_cpp_2", &["llm"]),
        ("sled::", &["store"]),
        ("hyper::server", &["server"]),
        (
            "allow(unsafe_code)",
            &["server/pipe", "llm/snapshots", "sys/windows"],
        ),
        ("windows_sys", &["server/pipe", "sys/windows"]),
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

/// The layers of ARCHITECTURE.md, enforced: which top-level module may use which. Lower layers
/// never reach up, and the table itself is checked to have no cycle.
#[test]
fn modules_import_only_the_layers_below_them() {
    use std::collections::{BTreeMap, BTreeSet};
    let allowed: BTreeMap<&str, &[&str]> = BTreeMap::from([
        ("error_code", &[][..]),
        ("sys", &[]),
        ("config", &["sys"]),
        ("client", &[]),
        ("priority", &[]),
        ("metrics", &[]),
        ("store", &["error_code"]),
        ("models", &["store", "sys"]),
        ("index", &["priority", "store"]),
        ("events", &["error_code", "store"]),
        ("llm", &["config", "metrics", "models", "priority"]),
        ("embed", &["metrics", "models", "priority", "store"]),
        ("ingest", &["embed", "error_code", "index", "store", "sys"]),
        ("pool", &["config", "llm", "models", "store"]),
        ("memory", &["embed", "llm", "store"]),
        (
            "jobs",
            &["embed", "events", "llm", "memory", "pool", "store"],
        ),
        (
            "chat",
            &[
                "embed",
                "error_code",
                "index",
                "jobs",
                "llm",
                "memory",
                "pool",
                "store",
            ],
        ),
        (
            "library",
            &[
                "config",
                "embed",
                "error_code",
                "events",
                "ingest",
                "store",
                "sys",
            ],
        ),
        (
            "server",
            &[
                "chat",
                "config",
                "embed",
                "error_code",
                "events",
                "index",
                "ingest",
                "jobs",
                "library",
                "llm",
                "memory",
                "metrics",
                "models",
                "pool",
                "store",
                "sys",
            ],
        ),
        (
            "daemon",
            &[
                "chat",
                "config",
                "embed",
                "error_code",
                "events",
                "index",
                "ingest",
                "jobs",
                "library",
                "llm",
                "memory",
                "models",
                "pool",
                "priority",
                "server",
                "store",
                "sys",
            ],
        ),
        (
            "bench",
            &[
                "client", "config", "embed", "index", "ingest", "llm", "models", "store",
            ],
        ),
        (
            "cli",
            &[
                "bench",
                "client",
                "config",
                "daemon",
                "error_code",
                "library",
                "models",
                "server",
                "sys",
            ],
        ),
    ]);
    // The table is a DAG: every module's allowed imports come before it in some order.
    let mut placed = BTreeSet::new();
    while placed.len() < allowed.len() {
        let next: Vec<&str> = allowed
            .iter()
            .filter(|(m, deps)| !placed.contains(*m) && deps.iter().all(|d| placed.contains(d)))
            .map(|(m, _)| *m)
            .collect();
        assert!(
            !next.is_empty(),
            "the layer table has a cycle among {allowed:?}"
        );
        placed.extend(next);
    }
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut wrong = Vec::new();
    visit(&root, &mut |path| {
        let rel = path
            .strip_prefix(&root)
            .unwrap()
            .to_string_lossy()
            .to_string();
        let module = rel.split(['/', '.']).next().unwrap().to_string();
        if module == "main" || module == "lib" {
            return;
        }
        let text = std::fs::read_to_string(path).unwrap();
        // Unit tests may reach anywhere; comments may name anything.
        let code = text.split("#[cfg(test)]").next().unwrap();
        let deps = allowed
            .get(module.as_str())
            .unwrap_or_else(|| panic!("{rel}: module {module} is not in the layer table"));
        for line in code.lines().filter(|l| !l.trim_start().starts_with("//")) {
            for (i, _) in line.match_indices("crate::") {
                let used: String = line[i + 7..]
                    .chars()
                    .take_while(|c| c.is_ascii_lowercase() || *c == '_')
                    .collect();
                if used != module && !deps.contains(&used.as_str()) {
                    wrong.push(format!("{rel}: {module} uses {used}"));
                }
            }
        }
    });
    assert!(wrong.is_empty(), "imports against the layers: {wrong:#?}");
}

/// README's error table names exactly the codes of `ErrorCode`: none missing, none invented.
#[test]
fn readme_error_table_matches_the_error_codes() {
    use std::collections::BTreeSet;
    let readme =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("README.md")).unwrap();
    let start = readme
        .find("### Error codes")
        .expect("README has an error-code section");
    let section = &readme[start..];
    let section = &section[..section[3..].find("\n#").map_or(section.len(), |i| i + 3)];
    let table: BTreeSet<&str> = section
        .lines()
        .filter(|line| line.starts_with('|'))
        .flat_map(|line| line.split('`').skip(1).step_by(2))
        .filter(|word| {
            word.chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
                && word.contains('_')
                || matches!(*word, "unauthorized" | "internal" | "symlink" | "hardlink")
        })
        .collect();
    let codes: BTreeSet<&str> = hearth::error_code::ErrorCode::ALL
        .iter()
        .map(|c| c.as_str())
        .collect();
    let missing: Vec<_> = codes.difference(&table).collect();
    let unknown: Vec<_> = table.difference(&codes).collect();
    assert!(
        missing.is_empty(),
        "codes missing from README's table: {missing:?}"
    );
    assert!(
        unknown.is_empty(),
        "README's table names codes that do not exist: {unknown:?}"
    );
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
