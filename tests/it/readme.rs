//! The docs run as written: every shell block of README.md, packaging/README.md and
//! packaging/electron/README.md is marked ```` ```sh run ```` or ```` ```sh skip: <reason> ````,
//! and the runnable ones are executed in order, in one bash, against a real daemon with the real
//! default models — as a new user would, after `./scripts/quickstart`, on a fresh home directory.
//!
//! A block fails the test on any non-zero exit (`set -e`, `pipefail`), and on an `# expect: RE`
//! line whose extended regex does not match the output of the lines above it (back to the
//! previous group of `expect` lines). `curl` gets `--fail-with-body` from a shell function: an example answered 4xx is a
//! broken example even though plain curl exits 0. Skipped blocks print their reason.

use std::path::Path;
use std::process::Command;

use crate::support::models_dir;

/// The documents, in the order a reader meets them.
const DOCS: [&str; 3] = [
    "README.md",
    "packaging/README.md",
    "packaging/electron/README.md",
];

/// One fenced block.
struct Block {
    file: &'static str,
    /// 1-based line of the opening fence.
    line: usize,
    info: String,
    body: Vec<String>,
}

fn blocks(root: &Path) -> Vec<Block> {
    let mut out = Vec::new();
    for file in DOCS {
        let text = std::fs::read_to_string(root.join(file)).unwrap();
        let mut open: Option<Block> = None;
        for (i, line) in text.lines().enumerate() {
            let trimmed = line.trim_start();
            match (&mut open, trimmed.strip_prefix("```")) {
                (None, Some(info)) => {
                    open = Some(Block {
                        file,
                        line: i + 1,
                        info: info.trim().to_string(),
                        body: Vec::new(),
                    })
                }
                (Some(_), Some(rest)) if rest.trim().is_empty() => {
                    out.extend(open.take());
                }
                (Some(block), _) => block.body.push(line.to_string()),
                (None, None) => {}
            }
        }
        assert!(open.is_none(), "{file}: a block is not closed");
    }
    out
}

/// A shell-quoted string (single quotes).
fn quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', r"'\''"))
}

/// The bash script that runs every `sh run` block; skipped blocks print their reason.
fn script(blocks: &[Block]) -> String {
    let mut s = String::from(
        r#"set -eEuo pipefail
__out=$DOCS_OUT
curl() { command curl --fail-with-body "$@"; }
# The trap may fire inside a group whose output goes to $__out: it writes there, and the test
# prints that file. (No extra descriptor is opened: a daemon started here would inherit it.)
trap '__rc=$?; echo; echo "DOCS FAILED at $__where: exit $__rc in: $BASH_COMMAND" >> "$__out"' ERR
__expect() {
  if ! grep -Eq -- "$1" "$__out"; then
    echo "DOCS FAILED at $__where: expected /$1/ in the output above" | tee -a "$__out"
    exit 1
  fi
}
"#,
    );
    for block in blocks {
        let at = format!("{}:{}", block.file, block.line);
        if let Some(reason) = block.info.strip_prefix("sh skip:") {
            s.push_str(&format!(
                "echo {}\n",
                quote(&format!("=== {at}: skipped: {}", reason.trim()))
            ));
            continue;
        }
        if block.info != "sh run" {
            continue;
        }
        s.push_str(&format!("echo {}\n", quote(&format!("=== {at}: run"))));
        s.push_str(&format!("__where={}\n", quote(&at)));
        // Lines up to each `# expect:` run as one group with their output captured; the group
        // runs in this shell, so variables and `cd` carry on to the next block.
        let mut group: Vec<&str> = Vec::new();
        let flush = |group: &mut Vec<&str>, s: &mut String| {
            if group.iter().any(|l| !l.trim().is_empty()) {
                // The output of these lines alone: the `expect`s after them check it.
                s.push_str(": > \"$__out\"\n{\n");
                for line in group.iter() {
                    s.push_str(line);
                    s.push('\n');
                }
                s.push_str("} >> \"$__out\" 2>&1\ncat \"$__out\"\n");
            }
            group.clear();
        };
        for (i, line) in block.body.iter().enumerate() {
            if let Some(re) = line.trim_start().strip_prefix("# expect:") {
                flush(&mut group, &mut s);
                s.push_str(&format!(
                    "__where={}\n__expect {}\n",
                    quote(&format!("{}:{}", block.file, block.line + 1 + i)),
                    quote(re.trim())
                ));
            } else {
                group.push(line);
            }
        }
        flush(&mut group, &mut s);
    }
    s.push_str("echo '=== all runnable blocks passed'\n");
    s
}

#[test]
fn every_shell_block_is_marked_run_or_skip_with_a_reason() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let all = blocks(root);
    let mut runnable = 0;
    for block in &all {
        let lang = block.info.split_whitespace().next().unwrap_or("");
        if !matches!(lang, "sh" | "bash" | "shell" | "console") {
            continue;
        }
        match block.info.as_str() {
            "sh run" => runnable += 1,
            info if info.strip_prefix("sh skip:").is_some_and(|r| r.trim().len() > 5) => {}
            info => panic!(
                "{}:{}: a shell block is marked `{info}`; mark it `sh run` or `sh skip: <why it cannot run here>`",
                block.file, block.line
            ),
        }
    }
    assert!(runnable >= 6, "only {runnable} runnable blocks");
}

/// Runs the docs (a few minutes: real model answers and document ingestion).
#[test]
fn the_runnable_examples_of_the_docs_work_as_written() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let all = blocks(root);
    let tmp = tempfile::tempdir().unwrap();
    let home = tmp.path().join("home");
    let run = tmp.path().join("run");
    let bin = tmp.path().join("bin");
    let work = tmp.path().join("work");
    for dir in [&home, &run, &bin, &work] {
        std::fs::create_dir_all(dir).unwrap();
    }
    use std::os::unix::fs::{symlink, PermissionsExt};
    std::fs::set_permissions(&run, std::fs::Permissions::from_mode(0o700)).unwrap();
    symlink(env!("CARGO_BIN_EXE_hearth"), bin.join("hearth")).unwrap();
    // The reader's shell stands in a checkout: repository paths resolve, new files land in
    // a scratch directory.
    for entry in ["target", "models", "packaging", "scripts"] {
        symlink(root.join(entry), work.join(entry)).unwrap();
    }
    // What `./scripts/quickstart` leaves behind: the config naming the fetched models.
    let config_dir = home.join(".config/hearth");
    std::fs::create_dir_all(&config_dir).unwrap();
    std::fs::write(
        config_dir.join("hearth.toml"),
        format!("models_dir = {:?}\n", models_dir().display().to_string()),
    )
    .unwrap();
    let out_path = tmp.path().join("docs.out");
    std::fs::write(&out_path, "").unwrap();
    let script_path = tmp.path().join("docs.sh");
    std::fs::write(&script_path, script(&all)).unwrap();
    let path = format!(
        "{}:{}",
        bin.display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let out = Command::new("bash")
        .arg(&script_path)
        .current_dir(&work)
        .env_clear()
        .env("PATH", &path)
        .env("HOME", &home)
        .env("XDG_RUNTIME_DIR", &run)
        .env("LANG", "C.UTF-8")
        .env("DOCS_OUT", &out_path)
        // One inference thread per daemon, as in every test (2 shared cores).
        .env("HEARTH_THREADS", "1")
        .output()
        .unwrap();
    // Whatever happened, no daemon is left behind.
    let _ = Command::new(bin.join("hearth"))
        .args(["stop", "--timeout", "30", "--force"])
        .env_clear()
        .env("HOME", &home)
        .env("XDG_RUNTIME_DIR", &run)
        .output();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    eprintln!("{stdout}\n{stderr}");
    if !out.status.success() {
        // The failing group's output and the failure, which went to the capture file.
        eprintln!(
            "--- last output ---\n{}",
            std::fs::read_to_string(&out_path).unwrap_or_default()
        );
    }
    assert!(
        out.status.success() && stdout.contains("=== all runnable blocks passed"),
        "the docs failed; see the output above"
    );
    let skipped: Vec<&str> = stdout
        .lines()
        .filter(|l| l.contains(": skipped: "))
        .collect();
    let ran = stdout.lines().filter(|l| l.ends_with(": run")).count();
    eprintln!("{ran} blocks ran, {} skipped", skipped.len());
}
