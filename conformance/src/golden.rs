//! Golden transcripts: `<dir>/<case>.txt`, the transcript of the reference
//! (Rust) agent. A case that passed its rule is also compared with its golden
//! file; a difference fails it with a line diff.

use std::path::Path;

use crate::error::{Error, Result};

pub fn path(dir: &Path, case: &str) -> std::path::PathBuf {
    dir.join(format!("{case}.txt"))
}

pub fn write(dir: &Path, case: &str, text: &str) -> Result<()> {
    let p = path(dir, case);
    std::fs::create_dir_all(dir).map_err(|e| Error::io("creating", dir, e))?;
    std::fs::write(&p, text).map_err(|e| Error::io("writing", &p, e))
}

/// None when `got` equals the golden file, else a diff (or why there is none).
pub fn compare(dir: &Path, case: &str, got: &str) -> Option<String> {
    let p = path(dir, case);
    match std::fs::read_to_string(&p) {
        Err(e) => Some(format!(
            "no golden transcript {} ({e}); run with --update-golden to record it",
            p.display()
        )),
        Ok(want) if want == got => None,
        Ok(want) => Some(format!(
            "the transcript differs from {} (- golden, + this run):\n{}",
            p.display(),
            diff(&want, got)
        )),
    }
}

/// A line diff (longest common subsequence), `-`/`+`/` ` prefixed.
pub fn diff(a: &str, b: &str) -> String {
    let (a, b): (Vec<&str>, Vec<&str>) = (a.lines().collect(), b.lines().collect());
    let mut lcs = vec![vec![0usize; b.len() + 1]; a.len() + 1];
    for i in (0..a.len()).rev() {
        for j in (0..b.len()).rev() {
            lcs[i][j] = if a[i] == b[j] {
                lcs[i + 1][j + 1] + 1
            } else {
                lcs[i + 1][j].max(lcs[i][j + 1])
            };
        }
    }
    let (mut i, mut j, mut out) = (0, 0, String::new());
    while i < a.len() || j < b.len() {
        if i < a.len() && j < b.len() && a[i] == b[j] {
            out += &format!("  {}\n", a[i]);
            i += 1;
            j += 1;
        } else if j < b.len() && (i == a.len() || lcs[i][j + 1] >= lcs[i + 1][j]) {
            out += &format!("+ {}\n", b[j]);
            j += 1;
        } else {
            out += &format!("- {}\n", a[i]);
            i += 1;
        }
    }
    out
}

#[cfg(test)]
mod tests {
    #[test]
    fn diff_marks_changed_lines() {
        assert_eq!(
            super::diff("a\nb\nc\n", "a\nx\nc\n"),
            "  a\n+ x\n- b\n  c\n"
        );
    }
}
