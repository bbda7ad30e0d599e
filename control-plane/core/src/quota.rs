//! Quotas: limits on what one user holds, set per user or per role.
//!
//! A quota names its subject (a user, or a role) and any of four limits:
//! sessions (every session not being deleted), running sessions (desired
//! state Running), and the CPU and memory that the user's running sessions
//! request in total. A role quota holds each user with that role on their
//! own (it is not a pool shared by the role's members). Every quota that
//! applies to a caller is checked; the first one a change would break is
//! named in the refusal.
//!
//! Quotas come from the control plane's configuration and, with the
//! Kubernetes controller on, from `Quota` objects: [`QuotaBook`] holds one
//! list per source. The store checks a [`QuotaCheck`] inside the transaction
//! that writes the change (serialized per user), so concurrent creates never
//! overrun a limit, on any replica.

use std::collections::BTreeMap;
use std::sync::RwLock;

use serde::{Deserialize, Serialize};

use super::model::Usage;
use super::quantity;
use super::validate::{self, Invalid, invalid};

/// Who a quota applies to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Subject {
    User(String),
    Role(String),
}

impl std::fmt::Display for Subject {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Subject::User(u) => write!(f, "user {u}"),
            Subject::Role(r) => write!(f, "role {r}"),
        }
    }
}

/// A quota's limits; `None` = no limit on that resource.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Limits {
    pub sessions: Option<u64>,
    pub running: Option<u64>,
    pub cpu_millis: Option<u64>,
    pub memory_bytes: Option<u64>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Quota {
    pub name: String,
    pub subject: Subject,
    pub limits: Limits,
}

/// A quota as written by an operator (configuration file or `Quota`
/// object's spec): exactly one of `user` and `role`, and at least one limit.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct QuotaSpec {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub role: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_sessions: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_running_sessions: Option<u64>,
    /// Total CPU the user's running sessions may request ("4", "2500m";
    /// a plain number is taken as written, like Kubernetes does).
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "quantity"
    )]
    pub cpu: Option<String>,
    /// Total memory the user's running sessions may request ("8Gi").
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "quantity"
    )]
    pub memory: Option<String>,
}

/// A quantity written as a string or as a plain number (`cpu: 2`).
fn quantity<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<String>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Q {
        Text(String),
        Whole(u64),
        Decimal(f64),
    }
    Ok(Option::<Q>::deserialize(d)?.map(|q| match q {
        Q::Text(s) => s,
        Q::Whole(n) => n.to_string(),
        Q::Decimal(f) => f.to_string(),
    }))
}

/// Longest role name (a Kubernetes label value or an OIDC group).
pub const MAX_ROLE: usize = 253;

impl QuotaSpec {
    /// Checks the spec; field names in errors start with `at` (e.g.
    /// `quotas[2]` or `spec`).
    pub fn to_quota(&self, name: &str, at: &str) -> Result<Quota, Invalid> {
        let f = |field: &str| format!("{at}.{field}");
        let subject = match (&self.user, &self.role) {
            (Some(u), None) => {
                validate::user_name(&f("user"), u)?;
                Subject::User(u.clone())
            }
            (None, Some(r)) => {
                role_name(&f("role"), r)?;
                Subject::Role(r.clone())
            }
            _ => {
                return Err(invalid(
                    format!("{at}.user/{at}.role"),
                    "exactly one of user and role must be set",
                ));
            }
        };
        let cpu = self
            .cpu
            .as_deref()
            .map(|c| quantity::cpu_millis(c).map_err(|e| invalid(f("cpu"), e)))
            .transpose()?;
        let memory = self
            .memory
            .as_deref()
            .map(|m| quantity::memory_bytes(m).map_err(|e| invalid(f("memory"), e)))
            .transpose()?;
        let limits = Limits {
            sessions: self.max_sessions,
            running: self.max_running_sessions,
            cpu_millis: cpu,
            memory_bytes: memory,
        };
        if limits == Limits::default() {
            return Err(invalid(
                at,
                "sets no limit (set maxSessions, maxRunningSessions, cpu or memory)",
            ));
        }
        Ok(Quota {
            name: name.to_string(),
            subject,
            limits,
        })
    }
}

pub fn role_name(field: &str, r: &str) -> Result<(), Invalid> {
    let ok = !r.is_empty()
        && r.len() <= MAX_ROLE
        && r.chars()
            .all(|c| c.is_ascii_alphanumeric() || "._-:/@".contains(c));
    if ok {
        return Ok(());
    }
    Err(invalid(
        field,
        format!(
            "must be 1-{MAX_ROLE} characters of letters, digits and . _ - : / @, got {}",
            validate::shown(r)
        ),
    ))
}

/// What one change asks of `user`'s quotas: `add` on top of what the user's
/// sessions hold before the change (the store counts that, in the change's
/// transaction).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QuotaCheck {
    pub user: String,
    pub quotas: Vec<Quota>,
    pub add: Usage,
}

impl QuotaCheck {
    /// `Err` names the first quota the change would break, its limit, the
    /// use before the change and what the change adds.
    pub fn check(&self, used: Usage) -> Result<(), String> {
        for q in &self.quotas {
            let l = &q.limits;
            let rows: [Row; 4] = [
                (
                    "sessions",
                    l.sessions,
                    used.sessions,
                    self.add.sessions,
                    plain,
                ),
                (
                    "running sessions",
                    l.running,
                    used.running,
                    self.add.running,
                    plain,
                ),
                (
                    "cpu",
                    l.cpu_millis,
                    used.cpu_millis,
                    self.add.cpu_millis,
                    millis,
                ),
                (
                    "memory",
                    l.memory_bytes,
                    used.memory_bytes,
                    self.add.memory_bytes,
                    bytes,
                ),
            ];
            for (what, limit, now, add, show) in rows {
                let Some(limit) = limit else { continue };
                if add > 0 && now.saturating_add(add) > limit {
                    return Err(format!(
                        "quota {:?} ({}) exceeded: {what} limit {}, in use {}, this request adds {}",
                        q.name,
                        q.subject,
                        show(limit),
                        show(now),
                        show(add),
                    ));
                }
            }
        }
        Ok(())
    }
}

/// One limit of a check: its name, limit, use, addition and how to show an amount.
type Row = (&'static str, Option<u64>, u64, u64, fn(u64) -> String);

fn plain(n: u64) -> String {
    n.to_string()
}

fn millis(n: u64) -> String {
    if n.is_multiple_of(1000) {
        (n / 1000).to_string()
    } else {
        format!("{n}m")
    }
}

fn bytes(n: u64) -> String {
    for (unit, size) in [("Gi", 1u64 << 30), ("Mi", 1 << 20), ("Ki", 1 << 10)] {
        if n >= size && n.is_multiple_of(size) {
            return format!("{}{unit}", n / size);
        }
    }
    n.to_string()
}

/// The quotas in force, one list per source ("config", "kubernetes").
#[derive(Debug, Default)]
pub struct QuotaBook {
    sources: RwLock<BTreeMap<String, Vec<Quota>>>,
}

impl QuotaBook {
    /// Replaces the quotas of `source`.
    pub fn set(&self, source: &str, quotas: Vec<Quota>) {
        self.sources
            .write()
            .expect("quota lock")
            .insert(source.to_string(), quotas);
    }

    /// The quotas that hold `user` with `roles`.
    pub fn applying_to(&self, user: &str, roles: &[String]) -> Vec<Quota> {
        let sources = self.sources.read().expect("quota lock");
        sources
            .values()
            .flatten()
            .filter(|q| match &q.subject {
                Subject::User(u) => u == user,
                Subject::Role(r) => roles.iter().any(|x| x == r),
            })
            .cloned()
            .collect()
    }

    /// Every quota, by source (for operators).
    pub fn all(&self) -> Vec<(String, Quota)> {
        let sources = self.sources.read().expect("quota lock");
        sources
            .iter()
            .flat_map(|(s, qs)| qs.iter().map(move |q| (s.clone(), q.clone())))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn spec(yaml: &[(&str, &str)]) -> QuotaSpec {
        let mut s = QuotaSpec::default();
        for (k, v) in yaml {
            match *k {
                "user" => s.user = Some(v.to_string()),
                "role" => s.role = Some(v.to_string()),
                "maxSessions" => s.max_sessions = Some(v.parse().unwrap()),
                "maxRunningSessions" => s.max_running_sessions = Some(v.parse().unwrap()),
                "cpu" => s.cpu = Some(v.to_string()),
                "memory" => s.memory = Some(v.to_string()),
                _ => unreachable!(),
            }
        }
        s
    }

    fn check(limits: &[(&str, &str)], used: Usage, add: Usage) -> Result<(), String> {
        let q = spec(limits).to_quota("q", "quotas[0]").unwrap();
        QuotaCheck {
            user: "alice".into(),
            quotas: vec![q],
            add,
        }
        .check(used)
    }

    const ONE: Usage = Usage {
        sessions: 1,
        running: 1,
        cpu_millis: 500,
        memory_bytes: 1 << 30,
    };

    #[test]
    fn each_limit_refuses_with_its_numbers() {
        let used = Usage {
            sessions: 2,
            running: 1,
            cpu_millis: 1500,
            memory_bytes: 3 << 30,
        };
        let e = check(&[("user", "alice"), ("maxSessions", "2")], used, ONE).unwrap_err();
        assert_eq!(
            e,
            "quota \"q\" (user alice) exceeded: sessions limit 2, in use 2, this request adds 1"
        );
        let e = check(&[("role", "dev"), ("maxRunningSessions", "1")], used, ONE).unwrap_err();
        assert!(
            e.contains("(role dev)") && e.contains("running sessions limit 1"),
            "{e}"
        );
        let e = check(&[("user", "alice"), ("cpu", "1800m")], used, ONE).unwrap_err();
        assert!(
            e.contains("cpu limit 1800m, in use 1500m, this request adds 500m"),
            "{e}"
        );
        let e = check(&[("user", "alice"), ("memory", "3Gi")], used, ONE).unwrap_err();
        assert!(
            e.contains("memory limit 3Gi, in use 3Gi, this request adds 1Gi"),
            "{e}"
        );
        // Up to the limit exactly is within it.
        assert!(check(&[("user", "alice"), ("memory", "4Gi")], used, ONE).is_ok());
    }

    #[test]
    fn a_change_that_adds_nothing_of_a_resource_passes_its_limit() {
        // Over the running limit already (the quota was lowered), but a
        // hibernated create adds no running session.
        let used = Usage {
            running: 5,
            ..Usage::default()
        };
        let add = Usage {
            sessions: 1,
            ..Usage::default()
        };
        assert!(check(&[("user", "alice"), ("maxRunningSessions", "1")], used, add).is_ok());
    }

    #[test]
    fn bad_specs_name_the_field() {
        let e = spec(&[("maxSessions", "1")])
            .to_quota("q", "spec")
            .unwrap_err();
        assert_eq!(e.field, "spec.user/spec.role");
        let e = spec(&[("user", "a"), ("role", "b"), ("maxSessions", "1")])
            .to_quota("q", "spec")
            .unwrap_err();
        assert!(e.rule.contains("exactly one"), "{e}");
        let e = spec(&[("user", "alice")])
            .to_quota("q", "spec")
            .unwrap_err();
        assert!(e.rule.contains("sets no limit"), "{e}");
        let e = spec(&[("user", "alice"), ("cpu", "lots")])
            .to_quota("q", "quotas[3]")
            .unwrap_err();
        assert_eq!(e.field, "quotas[3].cpu");
        let e = spec(&[("role", "a b"), ("maxSessions", "1")])
            .to_quota("q", "spec")
            .unwrap_err();
        assert_eq!(e.field, "spec.role");
        let e = spec(&[("user", "../x"), ("maxSessions", "1")])
            .to_quota("q", "spec")
            .unwrap_err();
        assert_eq!(e.field, "spec.user");
    }

    #[test]
    fn the_book_finds_user_and_role_quotas_across_sources() {
        let book = QuotaBook::default();
        let q = |n: &str, kv: &[(&str, &str)]| spec(kv).to_quota(n, "q").unwrap();
        book.set(
            "config",
            vec![q("a", &[("user", "alice"), ("maxSessions", "3")])],
        );
        book.set(
            "kubernetes",
            vec![
                q("students", &[("role", "students"), ("maxSessions", "1")]),
                q("b", &[("user", "bob"), ("maxSessions", "1")]),
            ],
        );
        let names = |v: Vec<Quota>| v.into_iter().map(|q| q.name).collect::<Vec<_>>();
        assert_eq!(names(book.applying_to("alice", &[])), ["a"]);
        assert_eq!(
            names(book.applying_to("alice", &["students".into()])),
            ["a", "students"]
        );
        assert!(book.applying_to("carol", &["staff".into()]).is_empty());
        book.set("kubernetes", vec![]);
        assert_eq!(
            names(book.applying_to("alice", &["students".into()])),
            ["a"]
        );
        assert_eq!(book.all().len(), 1);
    }

    proptest! {
        /// Whatever the numbers, a change passes exactly when no limit is
        /// crossed by a resource it adds, and a refusal names numbers that
        /// prove it.
        #[test]
        fn check_agrees_with_arithmetic(
            limit in proptest::option::of(0u64..10),
            used in 0u64..10,
            add in 0u64..3,
        ) {
            let q = Quota {
                name: "q".into(),
                subject: Subject::User("u".into()),
                limits: Limits { sessions: limit, ..Limits::default() },
            };
            let c = QuotaCheck {
                user: "u".into(),
                quotas: vec![q],
                add: Usage { sessions: add, ..Usage::default() },
            };
            let over = limit.is_some_and(|l| add > 0 && used + add > l);
            let r = c.check(Usage { sessions: used, ..Usage::default() });
            prop_assert_eq!(r.is_err(), over);
            if let Err(e) = r {
                let expected = format!("in use {used}, this request adds {add}");
                prop_assert!(e.contains(&expected), "{}", e);
            }
        }

        /// Parsing never panics and every error names a field under `at`.
        #[test]
        fn to_quota_total(
            user in proptest::option::of(".{0,20}"),
            role in proptest::option::of(".{0,20}"),
            cpu in proptest::option::of(".{0,12}"),
            memory in proptest::option::of(".{0,12}"),
            n in proptest::option::of(0u64..5),
        ) {
            let s = QuotaSpec { user, role, max_sessions: n, max_running_sessions: None, cpu, memory };
            if let Err(e) = s.to_quota("q", "spec") {
                prop_assert!(e.field.starts_with("spec"), "{:?}", e);
                prop_assert!(e.rule.len() < 300);
            }
        }
    }
}
