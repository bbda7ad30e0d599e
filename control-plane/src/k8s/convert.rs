//! Custom resource <-> domain conversion for the controller and the mirror.

use kube::ResourceExt;

use super::crd::{
    EnvVar, ResourceQuantities, Session, SessionResources, SessionSpec, SessionState, TemplatePort,
    TemplateSpec,
};
use crate::core::NewSession;
use crate::core::model::{
    Desired, Port, ResourceList, Resources, Session as Stored, Template, Timeouts,
};

pub fn rfc3339(ms: i64) -> String {
    k8s_openapi::jiff::Timestamp::from_millisecond(ms)
        .map(|t| t.to_string())
        .unwrap_or_default()
}

/// "1h30m" -> seconds; None if malformed (the schema already refuses those)
/// or too large to count in seconds (the schema allows any number of digits:
/// "3333333333333333271m" must not wrap around to a short timeout).
pub fn duration_secs(s: &str) -> Option<u64> {
    let (mut total, mut num) = (0u64, String::new());
    for c in s.chars() {
        if c.is_ascii_digit() {
            num.push(c);
            continue;
        }
        let n: u64 = num.parse().ok()?;
        num.clear();
        let unit = match c {
            'h' => 3600,
            'm' => 60,
            's' => 1,
            _ => return None,
        };
        total = total.checked_add(n.checked_mul(unit)?)?;
    }
    num.is_empty().then_some(total)
}

fn secs_to_duration(s: u64) -> Option<String> {
    (s > 0).then(|| format!("{s}s"))
}

fn list(q: &Option<ResourceQuantities>) -> ResourceList {
    let q = q.clone().unwrap_or_default();
    ResourceList {
        cpu: q.cpu.unwrap_or_default(),
        memory: q.memory.unwrap_or_default(),
    }
}

pub fn resources(r: &Option<SessionResources>) -> Resources {
    let r = r.clone().unwrap_or_default();
    Resources {
        requests: list(&r.requests),
        limits: list(&r.limits),
    }
}

fn quantities(l: &ResourceList) -> Option<ResourceQuantities> {
    let q = ResourceQuantities {
        cpu: Some(l.cpu.clone()).filter(|v| !v.is_empty()),
        memory: Some(l.memory.clone()).filter(|v| !v.is_empty()),
    };
    (q != ResourceQuantities::default()).then_some(q)
}

/// A create request for the session an object describes.
pub fn new_session(obj: &Session) -> NewSession {
    let s = &obj.spec;
    NewSession {
        name: obj.name_any(),
        template: s.template.clone(),
        user: s.user.clone(),
        resources: resources(&s.resources),
        persistent_home: Some(s.persistent_home),
        timeouts: Timeouts {
            idle_secs: s
                .idle_timeout
                .as_deref()
                .and_then(duration_secs)
                .unwrap_or(0),
            max_secs: s
                .max_session_duration
                .as_deref()
                .and_then(duration_secs)
                .unwrap_or(0),
        },
        selector: Default::default(),
        desired: Some(match s.state {
            SessionState::Running => Desired::Running,
            SessionState::Hibernated => Desired::Hibernated,
            SessionState::Terminated => Desired::Terminated,
        }),
        external_id: obj.uid(),
    }
}

pub fn state(d: Desired) -> SessionState {
    match d {
        Desired::Running => SessionState::Running,
        Desired::Hibernated => SessionState::Hibernated,
        Desired::Terminated => SessionState::Terminated,
    }
}

/// The spec of the object that mirrors an API-created session.
pub fn spec_of(s: &Stored) -> SessionSpec {
    let r = &s.workload.resources;
    let res = SessionResources {
        requests: quantities(&r.requests),
        limits: quantities(&r.limits),
    };
    SessionSpec {
        user: s.user.clone(),
        template: s.template.clone(),
        state: state(s.desired),
        resources: (res != SessionResources::default()).then_some(res),
        persistent_home: s.workload.persistent_home,
        idle_timeout: secs_to_duration(s.workload.timeouts.idle_secs),
        max_session_duration: secs_to_duration(s.workload.timeouts.max_secs),
    }
}

/// A catalog template from a Template object.
pub fn template(name: &str, t: &TemplateSpec) -> Template {
    Template {
        name: name.to_string(),
        display_name: t.display_name.clone(),
        description: t.description.clone(),
        image: t.image.clone(),
        command: t.command.clone(),
        ports: t
            .ports
            .iter()
            .map(|p: &TemplatePort| Port {
                name: p.name.clone(),
                container_port: p.container_port,
            })
            .collect(),
        streaming_port: t.streaming_port.clone(),
        env: t
            .env
            .iter()
            .map(|e: &EnvVar| (e.name.clone(), e.value.clone()))
            .collect(),
        default_resources: resources(&t.default_resources),
        persistent_home: t.persistent_home,
        timeouts: Timeouts::default(),
        home_size: String::new(),
        run_as_root: t.run_as_root,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(duration_secs("30m"), Some(1800));
        assert_eq!(duration_secs("1h30m"), Some(5400));
        assert_eq!(duration_secs("45s"), Some(45));
        assert_eq!(duration_secs("30"), None);
        assert_eq!(duration_secs("3d"), None);
    }

    /// Found by the crd_session/quantity_duration fuzz targets: digits the
    /// schema allows overflowed the multiplication (a panic in a debug build,
    /// a wrapped, much shorter timeout in a release build).
    #[test]
    fn durations_too_large_to_count_are_refused_not_wrapped() {
        assert_eq!(duration_secs("02m3333333333333333271m05m"), None);
        assert_eq!(duration_secs("18446744073709551615s"), Some(u64::MAX));
        assert_eq!(duration_secs("18446744073709551615s1s"), None);
        assert_eq!(duration_secs("5124095576030432h"), None);
    }
}
