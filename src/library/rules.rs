//! Which names in a watched folder are not documents at all: hidden files and folders (`.git`
//! among them), dependency trees, editor and download temporaries, plus the user's own globs.
//!
//! Ignored names are not recorded anywhere (a `node_modules` tree would drown the file list);
//! names that are documents but cannot be ingested are recorded as `skipped` with a reason.
//! `hearth ingest` applies the same rules, so a folder ingests the same either way.

use std::path::Path;

use globset::{Glob, GlobSet, GlobSetBuilder};

/// Folders that hold tools' files, not the user's documents.
const IGNORED_DIRS: &[&[u8]] = &[b"node_modules", b"__pycache__"];

/// Name patterns of files that are still being written or are an editor's scratch copy.
const TEMP_PREFIXES: &[&[u8]] = &[b"~$", b".#", b"#"];
const TEMP_SUFFIXES: &[&[u8]] = &[
    b".swp",
    b".swo",
    b".swx",
    b"~",
    b".tmp",
    b".temp",
    b".part",
    b".partial",
    b".crdownload",
    b".download",
    b".!qB",
];

/// The ignore rules of one daemon.
#[derive(Clone, Debug)]
pub struct Rules {
    user: GlobSet,
}

impl Rules {
    /// Built-in rules plus `globs` (matched against the path below the root, e.g. `drafts/**`,
    /// and against the bare name, e.g. `*.log`).
    pub fn new(globs: &[String]) -> Result<Rules, String> {
        let mut builder = GlobSetBuilder::new();
        for glob in globs {
            builder.add(Glob::new(glob).map_err(|err| format!("ignore glob '{glob}': {err}"))?);
        }
        Ok(Rules {
            user: builder
                .build()
                .map_err(|err| format!("ignore globs: {err}"))?,
        })
    }

    /// True when the entry `name` at `relative` (its path below the root) is not a document.
    pub fn ignored(&self, relative: &[u8], name: &[u8], is_dir: bool) -> bool {
        if name.starts_with(b".") {
            return true;
        }
        if is_dir && IGNORED_DIRS.contains(&name) {
            return true;
        }
        if !is_dir
            && (TEMP_PREFIXES.iter().any(|p| name.starts_with(p))
                || TEMP_SUFFIXES.iter().any(|s| name.ends_with(s)))
        {
            return true;
        }
        self.user
            .is_match(Path::new(&*super::access::os_str(relative)))
            || self.user.is_match(Path::new(&*super::access::os_str(name)))
    }

    /// True when any component of `relative` is ignored (for paths reported by the watcher).
    pub fn ignored_path(&self, relative: &[u8], is_dir: bool) -> bool {
        let parts: Vec<&[u8]> = relative.split(|&b| b == b'/').collect();
        let last = parts.len().saturating_sub(1);
        let mut end = 0;
        for (i, part) in parts.iter().enumerate() {
            end += part.len() + usize::from(i > 0);
            if self.ignored(&relative[..end], part, i < last || is_dir) {
                return true;
            }
        }
        false
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn builtin_and_user_rules() {
        let rules = Rules::new(&["*.log".into(), "drafts/**".into()]).unwrap();
        for (path, dir) in [
            (&b".git/config"[..], false),
            (b"a/.hidden.md", false),
            (b"node_modules/x/readme.md", false),
            (b"notes/~$report.docx", false),
            (b"notes/report.docx.swp", false),
            (b"dl/movie.mkv.part", false),
            (b"dl/file.pdf.crdownload", false),
            (b"server.log", false),
            (b"drafts/one.md", false),
            (b"node_modules", true),
        ] {
            assert!(
                rules.ignored_path(path, dir),
                "{}",
                String::from_utf8_lossy(path)
            );
        }
        for path in [
            &b"notes/report.docx"[..],
            b"a/b/c.md",
            b"target.md",
            b"\xffname.txt",
        ] {
            assert!(
                !rules.ignored_path(path, false),
                "{}",
                String::from_utf8_lossy(path)
            );
        }
        assert!(Rules::new(&["[".into()]).is_err());
    }
}
