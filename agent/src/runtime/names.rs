//! Names that come from the control plane (session ids, user names) and the
//! paths built from them. The control plane validates them too; this is the
//! agent's own line of defence, because a name reaches the file system (a
//! home directory is `<data>/homes/<user>`, and stopping a session may delete
//! it) and the Kubernetes API (object names, labels).
//!
//! Every runtime checks the names of a command before it touches anything,
//! and every path built from input goes through [`child_path`], which joins
//! exactly one validated component under a root. Deleting a tree goes
//! through [`remove_tree_under`], which refuses anything that is not strictly
//! inside its root.

use std::path::{Component, Path, PathBuf};

use streamspace::v1 as pb;

use super::RuntimeError;

/// Longest session id or user name (a DNS label's limit).
pub use streamspace::names::MAX_NAME;

/// Why a name or a path component was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NameError {
    #[error("{field}: expected {expected}, found {found}")]
    Invalid {
        field: &'static str,
        expected: &'static str,
        found: String,
    },
}

impl From<NameError> for RuntimeError {
    fn from(e: NameError) -> Self {
        RuntimeError::new(pb::FailureReason::Invalid, e.to_string(), false)
    }
}

pub use streamspace::names::quote;

/// At most `max` characters of `s`, saying how long it was when cut.
pub fn truncate(s: &str, max: usize) -> String {
    let n = s.chars().count();
    if n <= max {
        return s.to_string();
    }
    let head: String = s.chars().take(max).collect();
    format!("{head}... ({n} characters)")
}

fn invalid(field: &'static str, expected: &'static str, found: &str) -> NameError {
    NameError::Invalid {
        field,
        expected,
        found: quote(found),
    }
}

/// A session id: a DNS-1123 label (1-63 of `a-z0-9-`, alphanumeric at both
/// ends), so it is a file name, a Kubernetes object name and a host name.
pub fn check_session(id: &str) -> Result<(), NameError> {
    const EXPECTED: &str =
        "a DNS label: 1-63 of a-z, 0-9 and '-', starting and ending with a letter or digit";
    if streamspace::names::is_dns_label(id, MAX_NAME) {
        Ok(())
    } else {
        Err(invalid("session_id", EXPECTED, id))
    }
}

/// A user name: 1-63 characters, a letter or digit first, then letters,
/// digits, '.', '_', '@' and '-'. So never "." or "..", never a separator.
pub fn check_user(user: &str) -> Result<(), NameError> {
    const EXPECTED: &str =
        "1-63 of letters, digits, '.', '_', '@' and '-', starting with a letter or digit";
    if streamspace::names::is_user_name(user) {
        Ok(())
    } else {
        Err(invalid("user", EXPECTED, user))
    }
}

/// Whether `s` is usable as one path component: not empty, not "." or "..",
/// no separator, no NUL.
fn plain_component(s: &str) -> bool {
    !s.is_empty() && s != "." && s != ".." && !s.contains(['/', '\0'])
}

/// `root/<component>`, refusing any component that is not exactly one plain
/// name (absolute paths, separators, "..", ".", NUL, empty). `field` names the
/// input in the error.
pub fn child_path(root: &Path, field: &'static str, component: &str) -> Result<PathBuf, NameError> {
    if !plain_component(component) {
        return Err(invalid(
            field,
            "one path component (not empty, '.', '..', no '/' or NUL)",
            component,
        ));
    }
    let p = root.join(component);
    // Belt and braces: the join added exactly one normal component.
    match p
        .strip_prefix(root)
        .map(|r| r.components().collect::<Vec<_>>())
    {
        Ok(c) if matches!(c.as_slice(), [Component::Normal(_)]) => Ok(p),
        _ => Err(invalid(field, "one path component", component)),
    }
}

/// Why a tree was not removed.
#[derive(Debug, thiserror::Error)]
pub enum RemoveError {
    #[error("refusing to remove {path}: it is not a directory directly inside {root}")]
    Outside { path: String, root: String },
    #[error("removing {path}: {source}")]
    Io {
        path: String,
        #[source]
        source: std::io::Error,
    },
}

/// Removes `path` and everything below it, but only if `path` is exactly one
/// plain component below `root` (so never `root` itself, its parent or
/// anything beside it). A missing `path` is not an error. A symbolic link at
/// `path` is removed, not followed.
pub fn remove_tree_under(root: &Path, path: &Path) -> Result<(), RemoveError> {
    let outside = || RemoveError::Outside {
        path: quote(&path.display().to_string()),
        root: root.display().to_string(),
    };
    let rest = path.strip_prefix(root).map_err(|_| outside())?;
    let mut parts = rest.components();
    match (parts.next(), parts.next()) {
        (Some(Component::Normal(c)), None) if c.to_str().is_some_and(plain_component) => {}
        _ => return Err(outside()),
    }
    match std::fs::remove_dir_all(path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(source) => Err(RemoveError::Io {
            path: path.display().to_string(),
            source,
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn session_ids() {
        for ok in ["s1", "a", "my-session-2", &"a".repeat(63)] {
            check_session(ok).unwrap();
        }
        for bad in [
            "",
            "-a",
            "a-",
            "A",
            "a.b",
            "a/b",
            "..",
            ".",
            "a\0",
            "ü",
            &"a".repeat(64),
        ] {
            let e = check_session(bad).unwrap_err().to_string();
            assert!(e.starts_with("session_id: expected"), "{e}");
        }
    }

    #[test]
    fn users() {
        for ok in [
            "alice",
            "Alice@example.com",
            "a.b_c-d",
            "1",
            &"u".repeat(63),
        ] {
            check_user(ok).unwrap();
        }
        for bad in [
            "",
            ".",
            "..",
            ".alice",
            "-a",
            "a/b",
            "../x",
            "a\0",
            "ä",
            "a b",
            &"u".repeat(64),
        ] {
            let e = check_user(bad).unwrap_err().to_string();
            assert!(e.starts_with("user: expected"), "{e}");
        }
    }

    #[test]
    fn messages_are_bounded() {
        let e = check_user(&"x/".repeat(50_000)).unwrap_err().to_string();
        assert!(e.len() < 300, "{} characters", e.len());
        assert!(e.contains("(100000 bytes)"), "{e}");
    }

    #[test]
    fn child_path_takes_exactly_one_component() {
        let root = Path::new("/data/homes");
        assert_eq!(
            child_path(root, "user", "alice").unwrap(),
            Path::new("/data/homes/alice")
        );
        for bad in ["", ".", "..", "/etc", "a/b", "a/../..", "a\0b", "/"] {
            assert!(child_path(root, "user", bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn remove_tree_refuses_the_root_and_anything_outside() {
        let d = tempfile::tempdir().unwrap();
        let root = d.path().join("homes");
        std::fs::create_dir_all(root.join("alice")).unwrap();
        std::fs::write(d.path().join("precious"), "x").unwrap();
        for bad in [
            root.clone(),
            root.join(".."),
            root.join("alice/.."),
            root.join("alice/sub"),
            d.path().to_path_buf(),
            PathBuf::from("/"),
        ] {
            assert!(
                matches!(
                    remove_tree_under(&root, &bad),
                    Err(RemoveError::Outside { .. })
                ),
                "{bad:?}"
            );
        }
        assert!(d.path().join("precious").exists());
        remove_tree_under(&root, &root.join("alice")).unwrap();
        assert!(!root.join("alice").exists());
        remove_tree_under(&root, &root.join("alice")).unwrap();
    }

    fn hostile() -> impl Strategy<Value = String> {
        prop_oneof![
            Just(".".to_string()),
            Just("..".to_string()),
            "[./a\\\\\0-]{0,8}",
            "\\PC{0,80}",
            "[a-z./]{0,20}",
            proptest::collection::vec(any::<char>(), 0..300).prop_map(|v| v.into_iter().collect()),
        ]
    }

    proptest! {
        /// Whatever the input, a path is either refused or exactly one
        /// component below the root.
        #[test]
        fn no_input_leaves_the_root(s in hostile()) {
            let root = Path::new("/data/homes");
            if let Ok(p) = child_path(root, "user", &s) {
                prop_assert_eq!(p.parent(), Some(root));
                prop_assert!(p != root);
            }
            if check_user(&s).is_ok() {
                prop_assert!(child_path(root, "user", &s).is_ok());
            }
            if check_session(&s).is_ok() {
                prop_assert!(child_path(root, "session_id", &s).is_ok());
            }
            for e in [check_user(&s).err(), check_session(&s).err()].into_iter().flatten() {
                prop_assert!(e.to_string().len() < 300);
            }
        }
    }
}
