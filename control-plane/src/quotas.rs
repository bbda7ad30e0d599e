//! The `--quotas` file: quotas from the control plane's configuration, a
//! YAML map from quota name to the same spec a `Quota` object has:
//!
//! ```yaml
//! quotas:
//!   students:            # the name refusals give
//!     role: students     # or user: alice
//!     maxSessions: 3
//!     maxRunningSessions: 1
//!     cpu: "2"
//!     memory: 4Gi
//! ```
//!
//! Read once at start; a file that does not parse stops the start with the
//! offending field named.

use std::collections::BTreeMap;
use std::path::Path;

use serde::Deserialize;

use crate::core::quota::{Quota, QuotaSpec};
use crate::core::validate;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct QuotaFile {
    #[serde(default)]
    quotas: BTreeMap<String, QuotaSpec>,
}

/// Parses the text of a quotas file.
pub fn parse(text: &str) -> Result<Vec<Quota>, String> {
    let file: QuotaFile = serde_yaml::from_str(text).map_err(|e| {
        let mut m = e.to_string();
        m.truncate(300);
        m
    })?;
    file.quotas
        .iter()
        .map(|(name, spec)| {
            let at = format!("quotas.{}", validate::shown(name));
            validate::dns_label(&at, name, validate::MAX_NAME).map_err(|e| e.to_string())?;
            spec.to_quota(name, &at).map_err(|e| e.to_string())
        })
        .collect()
}

/// Reads and parses the quotas file at `path`.
pub fn load(path: &Path) -> Result<Vec<Quota>, String> {
    let text = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
    parse(&text).map_err(|e| format!("{}: {e}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::quota::Subject;
    use proptest::prelude::*;

    #[test]
    fn a_file_with_user_and_role_quotas() {
        let q = parse(
            "quotas:\n  students:\n    role: students\n    maxSessions: 3\n    cpu: \"2\"\n  alice:\n    user: alice\n    memory: 4Gi\n",
        )
        .unwrap();
        assert_eq!(q.len(), 2);
        assert_eq!(q[0].name, "alice");
        assert_eq!(q[0].subject, Subject::User("alice".into()));
        assert_eq!(q[0].limits.memory_bytes, Some(4 << 30));
        assert_eq!(q[1].limits.sessions, Some(3));
        assert_eq!(q[1].limits.cpu_millis, Some(2000));
        assert!(parse("").unwrap().is_empty());
        // Plain numbers are quantities too (what `helm --set` and YAML give).
        let q = parse("quotas:\n  n:\n    user: bob\n    cpu: 2\n    memory: 0.5\n").unwrap();
        assert_eq!(q[0].limits.cpu_millis, Some(2000));
        assert_eq!(q[0].limits.memory_bytes, Some(1));
    }

    #[test]
    fn errors_name_the_field() {
        let e = parse("quotas:\n  a:\n    user: alice\n    cpu: lots\n").unwrap_err();
        assert!(e.starts_with("quotas.\"a\".cpu:"), "{e}");
        let e = parse("quotas:\n  Bad_Name:\n    user: alice\n    maxSessions: 1\n").unwrap_err();
        assert!(e.contains("quotas.\"Bad_Name\""), "{e}");
        let e = parse("quotas:\n  a:\n    user: alice\n    maxSesions: 1\n").unwrap_err();
        assert!(e.contains("unknown field `maxSesions`"), "{e}");
        let e = parse("quota: {}\n").unwrap_err();
        assert!(e.contains("unknown field `quota`"), "{e}");
    }

    proptest! {
        /// Any text: a parse or a bounded error, never a panic.
        #[test]
        fn any_text(text in ".{0,300}") {
            if let Err(e) = parse(&text) {
                prop_assert!(e.len() <= 400, "{}", e.len());
            }
        }
    }
}
