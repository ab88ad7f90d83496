//! `hearth ingest` and `hearth library`: one-shot uploads of files and folders into the library
//! (walked with the drop folder's own rules), and the drop folder's state.

use std::io::Write;
use std::path::{Path, PathBuf};

use http::Method;

use super::{connect, ClientArgs};
use crate::error_code::ErrorCode;

#[derive(clap::Args)]
pub(super) struct IngestArgs {
    #[command(flatten)]
    client: ClientArgs,
    /// Extra ignore globs (as `watch_ignore`), on top of the built-in rules.
    #[arg(long, value_name = "GLOB")]
    ignore: Vec<String>,
    /// Files and folders (folders are walked; links inside them are not followed).
    #[arg(required = true, num_args = 1..)]
    paths: Vec<PathBuf>,
}

#[derive(clap::Args)]
pub(super) struct LibraryArgs {
    #[command(flatten)]
    client: ClientArgs,
    /// Most failed/skipped files to list.
    #[arg(long, value_name = "N", default_value_t = 50)]
    limit: usize,
    /// Start a full reconcile scan of the watched folders now (it runs in the background).
    #[arg(long)]
    rescan: bool,
}

/// One file `hearth ingest` found, or why it is left out.
enum Found {
    File { path: PathBuf, size: u64 },
    Skipped { path: PathBuf, reason: String },
}

/// Walks the command line's paths with the drop folder's rules: named files are taken as they
/// are (also through a link: the user named them); inside folders, links and special files are
/// skipped and ignored names left out.
fn collect(paths: &[PathBuf], rules: &crate::library::rules::Rules) -> Vec<Found> {
    use crate::library::access::{os_str, Kind, Root};
    let mut found = Vec::new();
    for path in paths {
        match std::fs::metadata(path) {
            Ok(meta) if meta.is_file() => found.push(Found::File {
                path: path.clone(),
                size: meta.len(),
            }),
            Ok(meta) if meta.is_dir() => {
                // Hard links are read: the user named this folder and can read its files
                // anyway (the drop folder skips them: anyone may drop a link there).
                let root = match Root::open(path, true) {
                    Ok(root) => root,
                    Err(reason) => {
                        found.push(Found::Skipped {
                            path: path.clone(),
                            reason,
                        });
                        continue;
                    }
                };
                let mut stack: Vec<Vec<u8>> = vec![Vec::new()];
                while let Some(dir) = stack.pop() {
                    let entries = match root.list(&dir) {
                        Ok(entries) => entries,
                        Err(err) => {
                            found.push(Found::Skipped {
                                path: root.path.join(os_str(&dir)),
                                reason: err.to_string(),
                            });
                            continue;
                        }
                    };
                    for (name, kind) in entries {
                        let mut relative = dir.clone();
                        if !relative.is_empty() {
                            relative.push(b'/');
                        }
                        relative.extend_from_slice(&name);
                        if rules.ignored(&relative, &name, kind == Kind::Dir) {
                            continue;
                        }
                        let full = root.path.join(os_str(&relative));
                        match kind {
                            Kind::Dir => stack.push(relative),
                            Kind::File { size, .. } => found.push(Found::File { path: full, size }),
                            Kind::Symlink => found.push(Found::Skipped {
                                path: full,
                                reason: "symbolic link (not followed)".into(),
                            }),
                            Kind::Special | Kind::Hardlink | Kind::TooDeep => {
                                found.push(Found::Skipped {
                                    path: full,
                                    reason: "not a regular file".into(),
                                })
                            }
                        }
                    }
                }
            }
            Ok(_) => found.push(Found::Skipped {
                path: path.clone(),
                reason: "not a regular file".into(),
            }),
            Err(err) => found.push(Found::Skipped {
                path: path.clone(),
                reason: err.to_string(),
            }),
        }
    }
    found
}

pub(super) async fn ingest(config_file: Option<&Path>, args: IngestArgs) -> anyhow::Result<()> {
    // A path the user named that is not there is a mistake (a typo, a wrong folder), not a
    // skip: nothing is uploaded and the exit status says so.
    let missing: Vec<String> = args
        .paths
        .iter()
        .filter_map(|p| match std::fs::metadata(p) {
            Ok(_) => None,
            Err(err) => Some(format!("{}: {err}", p.display())),
        })
        .collect();
    if !missing.is_empty() {
        anyhow::bail!("cannot read {}; nothing was uploaded", missing.join("; "));
    }
    let client = connect(config_file, &args.client)?;
    client.request(Method::GET, "/api/v1/health", None).await?;
    let rules = crate::library::rules::Rules::new(&args.ignore).map_err(anyhow::Error::msg)?;
    let found = collect(&args.paths, &rules);
    let total: u64 = found
        .iter()
        .map(|f| match f {
            Found::File { size, .. } => *size,
            Found::Skipped { .. } => 0,
        })
        .sum();
    let bar = indicatif::ProgressBar::new(total);
    bar.set_style(
        indicatif::ProgressStyle::with_template(
            "{spinner} [{elapsed_precise}] {wide_bar} {bytes}/{total_bytes} ({eta}) {msg}",
        )
        .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
    );
    let (mut indexed, mut skipped, mut failed) = (0usize, Vec::new(), Vec::new());
    for item in found {
        let (path, size) = match item {
            Found::File { path, size } => (path, size),
            Found::Skipped { path, reason } => {
                skipped.push((path, reason));
                continue;
            }
        };
        let name = path.to_string_lossy().into_owned();
        bar.set_message(name.clone());
        // Named by the absolute path, as drop-folder files are: two `report.pdf`s stay apart.
        let full = std::path::absolute(&path).unwrap_or_else(|_| path.clone());
        let full = full.to_string_lossy();
        let file_name = path
            .file_name()
            .map_or_else(|| name.clone(), |n| n.to_string_lossy().into_owned());
        let result = match std::fs::read(&path) {
            Ok(bytes) => {
                client
                    .upload_named("/api/v1/library/documents", &file_name, Some(&full), &bytes)
                    .await
            }
            Err(err) => Err(anyhow::Error::from(err)),
        };
        bar.inc(size);
        match result {
            Ok((status, _)) if status.is_success() => indexed += 1,
            Ok((_, body)) => {
                let code = body["error"]["code"].as_str().and_then(ErrorCode::parse);
                let text = crate::client::error_text(&body);
                // "Not a document" (unsupported, empty, too large) is a skip, not a failure.
                if code.is_some_and(ErrorCode::is_skip) {
                    skipped.push((path, text));
                } else {
                    failed.push((path, text));
                }
            }
            Err(err) => failed.push((path, format!("{err:#}"))),
        }
    }
    bar.finish_and_clear();
    let mut out = std::io::stdout().lock();
    writeln!(
        out,
        "indexed {indexed}, skipped {}, failed {}",
        skipped.len(),
        failed.len()
    )?;
    for (path, reason) in &skipped {
        writeln!(out, "  skipped {}: {reason}", path.display())?;
    }
    for (path, reason) in &failed {
        writeln!(out, "  failed  {}: {reason}", path.display())?;
    }
    if !failed.is_empty() {
        anyhow::bail!("{} file(s) failed", failed.len());
    }
    Ok(())
}

pub(super) async fn library(config_file: Option<&Path>, args: LibraryArgs) -> anyhow::Result<()> {
    let client = connect(config_file, &args.client)?;
    if args.rescan {
        client
            .call(Method::POST, "/api/v1/library/rescan", None)
            .await?;
        writeln!(std::io::stdout().lock(), "rescan started")?;
    }
    let status = client.call(Method::GET, "/api/v1/library", None).await?;
    let mut out = std::io::stdout().lock();
    let roots = status["roots"].as_array().cloned().unwrap_or_default();
    if roots.is_empty() {
        writeln!(out, "no watched folders (add `watch = [\"~/Documents/notes\"]` to hearth.toml or pass --watch DIR)")?;
    }
    for root in &roots {
        writeln!(out, "watching {}", root.as_str().unwrap_or("?"))?;
    }
    if let Some(err) = status["watcher_error"]["message"].as_str() {
        writeln!(
            out,
            "watcher off ({err}); periodic scans keep the library in sync"
        )?;
    }
    let counts = &status["counts"];
    writeln!(
        out,
        "indexed {} · queued {} · indexing {} · failed {} · skipped {} · waiting to settle {}",
        counts["indexed"],
        counts["queued"],
        counts["indexing"],
        counts["failed"],
        counts["skipped"],
        status["waiting"]
    )?;
    for state in ["failed", "skipped"] {
        let page = client
            .call(
                Method::GET,
                &format!(
                    "/api/v1/library/files?state={state}&limit={}",
                    args.limit.clamp(1, 1000)
                ),
                None,
            )
            .await?;
        for file in page["files"].as_array().into_iter().flatten() {
            writeln!(
                out,
                "  {state} {}: {} ({})",
                file["path"].as_str().unwrap_or("?"),
                file["message"].as_str().unwrap_or(""),
                file["reason"].as_str().unwrap_or("?"),
            )?;
        }
    }
    Ok(())
}
