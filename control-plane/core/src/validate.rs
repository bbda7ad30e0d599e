//! Input rules at the edge of the domain. Every error names the field and the
//! rule it broke, e.g. `name: must be a DNS-1123 label ...`, and never echoes
//! more than 64 bytes of what it was given (see [`shown`]). The name rules
//! themselves are the protocol's (`streamspace::names`), shared with agents.
//!
//! Names reach file paths (a process session's home is `homes/<user>`),
//! Kubernetes labels and object names, and URLs, so every name-like rule
//! here also rules out `.`, `..`, separators and control characters.

use super::NewSession;
use super::model::{Desired, Port, Resources, Template, Timeouts};
use super::quantity::{cpu_millis, memory_bytes};

/// A rule broken by one field of a request.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {rule}")]
pub struct Invalid {
    /// Dotted path of the field, e.g. `resources.limits.cpu`.
    pub field: String,
    /// What was expected and what was found.
    pub rule: String,
}

pub fn invalid(field: impl Into<String>, rule: impl Into<String>) -> Invalid {
    Invalid {
        field: field.into(),
        rule: rule.into(),
    }
}

/// Longest session name: leaves room for suffixes on Kubernetes object names.
pub const MAX_SESSION_NAME: usize = 53;
/// Longest template, user, platform or region name.
pub const MAX_NAME: usize = 63;
/// Longest free-text field (description, env value, message).
pub const MAX_TEXT: usize = 4096;
/// Longest timeout: 30 days.
pub const MAX_TIMEOUT_SECS: u64 = 30 * 24 * 3600;
/// `value` quoted for an error message, at most 64 bytes of it (see
/// [`streamspace::names::quote`]).
pub use streamspace::names::quote as shown;

/// A DNS-1123 label: lower-case alphanumerics and '-', starting and ending alphanumeric.
pub fn dns_label(field: &str, value: &str, max: usize) -> Result<(), Invalid> {
    if value.is_empty() {
        return Err(invalid(field, "is required"));
    }
    if value.len() > max {
        return Err(invalid(
            field,
            format!("must be at most {max} characters, got {}", value.len()),
        ));
    }
    if !streamspace::names::is_dns_label(value, max) {
        return Err(invalid(
            field,
            format!(
                "must be a DNS-1123 label (lower-case letters, digits and '-', starting and ending with a letter or digit), got {}",
                shown(value)
            ),
        ));
    }
    Ok(())
}

/// A user name: 1-63 characters of letters, digits, '.', '_', '@' and '-',
/// starting with a letter or digit (so never `.` or `..`: a user name is a
/// directory name on the agent).
pub fn user_name(field: &str, value: &str) -> Result<(), Invalid> {
    if streamspace::names::is_user_name(value) {
        return Ok(());
    }
    // Say which part of the rule it broke.
    let rule = if value.is_empty() {
        "is required".to_string()
    } else if value.len() > MAX_NAME {
        format!("must be at most {MAX_NAME} characters, got {}", value.len())
    } else if value.starts_with(|c: char| c.is_ascii_alphanumeric()) {
        format!(
            "may contain only letters, digits, '.', '_', '@' and '-', got {}",
            shown(value)
        )
    } else {
        format!("must start with a letter or digit, got {}", shown(value))
    };
    Err(invalid(field, rule))
}

/// An optional short label-like value (platform, region): at most 63 printable characters.
pub fn short_text(field: &str, value: &str) -> Result<(), Invalid> {
    if value.len() > MAX_NAME {
        return Err(invalid(
            field,
            format!("must be at most {MAX_NAME} characters, got {}", value.len()),
        ));
    }
    if value.chars().any(|c| c.is_control() || c.is_whitespace()) {
        return Err(invalid(
            field,
            "must not contain whitespace or control characters",
        ));
    }
    Ok(())
}

/// Free text up to [`MAX_TEXT`] bytes.
pub fn text(field: &str, value: &str) -> Result<(), Invalid> {
    if value.len() > MAX_TEXT {
        return Err(invalid(
            field,
            format!("must be at most {MAX_TEXT} bytes, got {}", value.len()),
        ));
    }
    Ok(())
}

/// Quantities parse, are non-negative, and limits are not below requests.
pub fn resources(field: &str, r: &Resources) -> Result<(), Invalid> {
    let cpu = |f: &str, v: &str| -> Result<Option<u64>, Invalid> {
        if v.is_empty() {
            return Ok(None);
        }
        cpu_millis(v)
            .map(Some)
            .map_err(|e| invalid(format!("{field}.{f}.cpu"), e))
    };
    let mem = |f: &str, v: &str| -> Result<Option<u64>, Invalid> {
        if v.is_empty() {
            return Ok(None);
        }
        memory_bytes(v)
            .map(Some)
            .map_err(|e| invalid(format!("{field}.{f}.memory"), e))
    };
    let (rc, lc) = (
        cpu("requests", &r.requests.cpu)?,
        cpu("limits", &r.limits.cpu)?,
    );
    let (rm, lm) = (
        mem("requests", &r.requests.memory)?,
        mem("limits", &r.limits.memory)?,
    );
    if let (Some(req), Some(lim)) = (rc, lc)
        && lim < req
    {
        return Err(invalid(
            format!("{field}.limits.cpu"),
            format!(
                "must be >= requests.cpu ({}), got {}",
                r.requests.cpu, r.limits.cpu
            ),
        ));
    }
    if let (Some(req), Some(lim)) = (rm, lm)
        && lim < req
    {
        return Err(invalid(
            format!("{field}.limits.memory"),
            format!(
                "must be >= requests.memory ({}), got {}",
                r.requests.memory, r.limits.memory
            ),
        ));
    }
    Ok(())
}

/// A session's own resources over its template's defaults, checked as the
/// workload will get them. The session's own quantities were checked alone
/// (see [`new_session`]); what remains is a request of the session's against
/// a limit of the template's, or the other way round, and the error names the
/// field the caller set and where the other side came from.
pub fn over_defaults(
    field: &str,
    own: &Resources,
    defaults: &Resources,
) -> Result<Resources, Invalid> {
    let merged = own.or(defaults);
    let pairs = [
        (
            "cpu",
            &own.requests.cpu,
            &own.limits.cpu,
            &merged.requests.cpu,
            &merged.limits.cpu,
        ),
        (
            "memory",
            &own.requests.memory,
            &own.limits.memory,
            &merged.requests.memory,
            &merged.limits.memory,
        ),
    ];
    for (kind, own_req, own_lim, req, lim) in pairs {
        let parse = |v: &str| match kind {
            "cpu" => cpu_millis(v).ok(),
            _ => memory_bytes(v).ok(),
        };
        let (Some(r), Some(l)) = (parse(req), parse(lim)) else {
            continue;
        };
        if l >= r {
            continue;
        }
        return Err(match (own_req.is_empty(), own_lim.is_empty()) {
            (false, true) => invalid(
                format!("{field}.requests.{kind}"),
                format!(
                    "must be <= the template's default limits.{kind} ({lim}), got {req}; set limits.{kind} too"
                ),
            ),
            (true, false) => invalid(
                format!("{field}.limits.{kind}"),
                format!("must be >= the template's default requests.{kind} ({req}), got {lim}"),
            ),
            _ => invalid(
                format!("{field}.limits.{kind}"),
                format!("must be >= requests.{kind} ({req}), got {lim}"),
            ),
        });
    }
    resources(field, &merged)?;
    Ok(merged)
}

pub fn timeouts(field: &str, t: &Timeouts) -> Result<(), Invalid> {
    for (name, v) in [
        ("idle_timeout", t.idle_secs),
        ("max_session_duration", t.max_secs),
    ] {
        if v > MAX_TIMEOUT_SECS {
            return Err(invalid(
                format!("{field}.{name}"),
                format!("must be at most 30 days, got {v}s"),
            ));
        }
    }
    Ok(())
}

fn ports(ports: &[Port], streaming: &str) -> Result<(), Invalid> {
    let mut seen = std::collections::HashSet::new();
    for (i, p) in ports.iter().enumerate() {
        dns_label(&format!("template.ports[{i}].name"), &p.name, 15)?;
        if !seen.insert(p.name.as_str()) {
            return Err(invalid(
                format!("template.ports[{i}].name"),
                format!("duplicate port name {}", shown(&p.name)),
            ));
        }
        if p.container_port == 0 || p.container_port > 65535 {
            return Err(invalid(
                format!("template.ports[{i}].container_port"),
                format!("must be 1-65535, got {}", p.container_port),
            ));
        }
    }
    if !streaming.is_empty() && !ports.iter().any(|p| p.name == streaming) {
        return Err(invalid(
            "template.streaming_port",
            format!("must name one of template.ports, got {}", shown(streaming)),
        ));
    }
    Ok(())
}

/// A template is complete and every field within its rules.
/// Everything about a new session that needs no store: its name, template
/// name, user (the caller's when empty), resources, timeouts, selector and
/// desired state. Returns the user the session is for.
/// A session's own idle and maximum-duration timeouts (0 = the template's).
/// The template's values are the defaults and the ceilings: a session may
/// shorten them, never lengthen them or turn them off. A template without a
/// value (0) leaves the session free.
pub fn timeouts_within(field: &str, own: &Timeouts, t: &Template) -> Result<Timeouts, Invalid> {
    let one = |name: &str, own: u64, ceiling: u64| -> Result<u64, Invalid> {
        match (own, ceiling) {
            (0, c) => Ok(c),
            (o, 0) => Ok(o),
            (o, c) if o <= c => Ok(o),
            (o, c) => Err(invalid(
                format!("{field}.{name}"),
                format!(
                    "must be at most {c}s (the limit template {:?} allows), got {o}s",
                    t.name
                ),
            )),
        }
    };
    Ok(Timeouts {
        idle_secs: one("idle_timeout", own.idle_secs, t.timeouts.idle_secs)?,
        max_secs: one("max_session_duration", own.max_secs, t.timeouts.max_secs)?,
    })
}

pub fn new_session(caller: &str, req: &NewSession) -> Result<String, Invalid> {
    dns_label("name", &req.name, MAX_SESSION_NAME)?;
    if req.template.is_empty() {
        return Err(invalid("template", "is required"));
    }
    dns_label("template", &req.template, MAX_NAME)?;
    let user = if req.user.is_empty() {
        caller.to_string()
    } else {
        req.user.clone()
    };
    user_name("user", &user)?;
    resources("resources", &req.resources)?;
    timeouts("timeouts", &req.timeouts)?;
    short_text("selector.platform", &req.selector.platform)?;
    short_text("selector.region", &req.selector.region)?;
    if req.desired == Some(Desired::Terminated) {
        return Err(invalid(
            "desired_state",
            "must be RUNNING or HIBERNATED on create",
        ));
    }
    Ok(user)
}

pub fn template(t: &Template) -> Result<(), Invalid> {
    dns_label("template.name", &t.name, MAX_NAME)?;
    text("template.display_name", &t.display_name)?;
    text("template.description", &t.description)?;
    text("template.image", &t.image)?;
    if t.image.is_empty() && t.command.is_empty() {
        return Err(invalid(
            "template.image",
            "an image (kubernetes runtime) or a command (process runtime) is required",
        ));
    }
    if t.command.len() > 256 {
        return Err(invalid(
            "template.command",
            "must have at most 256 arguments",
        ));
    }
    for (i, a) in t.command.iter().enumerate() {
        text(&format!("template.command[{i}]"), a)?;
    }
    ports(&t.ports, &t.streaming_port)?;
    if t.env.len() > 256 {
        return Err(invalid("template.env", "must have at most 256 variables"));
    }
    for (k, v) in &t.env {
        let ok = !k.is_empty()
            && k.len() <= 256
            && !k.starts_with(|c: char| c.is_ascii_digit())
            && k.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_');
        if !ok {
            return Err(invalid(
                format!("template.env[{}]", shown(k)),
                "variable names must match [A-Za-z_][A-Za-z0-9_]* (at most 256 characters)",
            ));
        }
        text(&format!("template.env[{}]", shown(k)), v)?;
    }
    resources("template.default_resources", &t.default_resources)?;
    timeouts("template.timeouts", &t.timeouts)?;
    if !t.home_size.is_empty() {
        memory_bytes(&t.home_size).map_err(|e| invalid("template.home_size", e))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::ResourceList;

    #[test]
    fn session_timeouts_stay_within_the_template() {
        let t = Template {
            name: "desk".into(),
            timeouts: Timeouts {
                idle_secs: 1800,
                max_secs: 0,
            },
            ..Template::default()
        };
        let own = |idle_secs, max_secs| Timeouts {
            idle_secs,
            max_secs,
        };
        // Unset: the template's; shorter: the session's; no template limit: free.
        assert_eq!(
            timeouts_within("timeouts", &own(0, 0), &t),
            Ok(own(1800, 0))
        );
        assert_eq!(timeouts_within("timeouts", &own(60, 0), &t), Ok(own(60, 0)));
        assert_eq!(
            timeouts_within("timeouts", &own(0, 99_999), &t),
            Ok(own(1800, 99_999))
        );
        let e = timeouts_within("timeouts", &own(7200, 0), &t).unwrap_err();
        assert_eq!(e.field, "timeouts.idle_timeout");
        assert_eq!(
            e.rule,
            "must be at most 1800s (the limit template \"desk\" allows), got 7200s"
        );
    }

    #[test]
    fn labels() {
        assert!(dns_label("name", "alice-firefox-1", 53).is_ok());
        assert_eq!(dns_label("name", "", 53).unwrap_err().rule, "is required");
        assert!(
            dns_label("name", "Alice", 53)
                .unwrap_err()
                .rule
                .contains("DNS-1123")
        );
        assert!(dns_label("name", "-a", 53).is_err());
        assert!(
            dns_label("name", &"a".repeat(54), 53)
                .unwrap_err()
                .rule
                .contains("at most 53")
        );
    }

    #[test]
    fn limits_below_requests() {
        let r = Resources {
            requests: ResourceList {
                cpu: "2".into(),
                memory: "1Gi".into(),
            },
            limits: ResourceList {
                cpu: "1".into(),
                memory: "2Gi".into(),
            },
        };
        let e = resources("resources", &r).unwrap_err();
        assert_eq!(e.field, "resources.limits.cpu");
    }

    fn list(cpu: &str, memory: &str) -> ResourceList {
        ResourceList {
            cpu: cpu.into(),
            memory: memory.into(),
        }
    }

    #[test]
    fn a_session_over_its_templates_defaults_names_its_own_field() {
        let defaults = Resources {
            requests: list("500m", "512Mi"),
            limits: list("1", "1Gi"),
        };
        let own = |requests, limits| Resources { requests, limits };
        // A request above the template's limit: the caller's request is named.
        let e =
            over_defaults("resources", &own(list("7", ""), list("", "")), &defaults).unwrap_err();
        assert_eq!(e.field, "resources.requests.cpu");
        assert_eq!(
            e.rule,
            "must be <= the template's default limits.cpu (1), got 7; set limits.cpu too"
        );
        // A limit below the template's request: the caller's limit is named.
        let e = over_defaults(
            "resources",
            &own(list("", ""), list("", "256Mi")),
            &defaults,
        )
        .unwrap_err();
        assert_eq!(e.field, "resources.limits.memory");
        assert!(
            e.rule
                .contains("default requests.memory (512Mi), got 256Mi")
        );
        // Both set by the session: taken as given, the rest from the template.
        let got = over_defaults("resources", &own(list("7", ""), list("8", "")), &defaults);
        assert_eq!(got, Ok(own(list("7", "512Mi"), list("8", "1Gi"))));
    }
}
