//! Kubernetes quantity parsing for CPU ("500m", "2", "0.5") and memory
//! ("512Mi", "1Gi", "1G", "1000"), shared by the control plane (validation,
//! placement, quotas) and the agents (what their sessions request, reported
//! in heartbeats). Enough of the grammar to validate input and compare
//! requests with limits; the original text is what gets stored.
//! Both kinds have an upper bound far above any real session, so that no
//! number reaches the store or a runtime that it cannot represent.

use crate::names::quote as shown;

/// Most CPU a session may ask for: 1,024 cores.
pub const MAX_CPU_MILLIS: u64 = 1024 * 1000;
/// Most memory a session may ask for: 16 TiB.
pub const MAX_MEMORY_BYTES: u64 = 16 << 40;

/// Parses a CPU quantity into millicores.
pub fn cpu_millis(s: &str) -> Result<u64, String> {
    let (num, milli) = match s.strip_suffix('m') {
        Some(n) => (n, true),
        None => (s, false),
    };
    let v = decimal(num, s)?;
    let m = if milli { v } else { v * 1000.0 };
    if m.fract() != 0.0 {
        return Err(format!("{} is finer than 1m", shown(s)));
    }
    if m > MAX_CPU_MILLIS as f64 {
        return Err(format!(
            "must be at most {} (cores), got {}",
            MAX_CPU_MILLIS / 1000,
            shown(s)
        ));
    }
    Ok(m as u64)
}

/// Parses a memory quantity into bytes.
pub fn memory_bytes(s: &str) -> Result<u64, String> {
    const SUFFIXES: &[(&str, f64)] = &[
        ("Ki", 1024.0),
        ("Mi", 1048576.0),
        ("Gi", 1073741824.0),
        ("Ti", 1099511627776.0),
        ("Pi", 1125899906842624.0),
        ("Ei", 1152921504606846976.0),
        ("k", 1e3),
        ("M", 1e6),
        ("G", 1e9),
        ("T", 1e12),
        ("P", 1e15),
        ("E", 1e18),
    ];
    let (num, mult) = SUFFIXES
        .iter()
        .find_map(|(suf, m)| s.strip_suffix(suf).map(|n| (n, *m)))
        .unwrap_or((s, 1.0));
    let v = decimal(num, s)? * mult;
    if v > MAX_MEMORY_BYTES as f64 {
        return Err(format!("must be at most 16Ti, got {}", shown(s)));
    }
    Ok(v.ceil() as u64)
}

fn decimal(num: &str, whole: &str) -> Result<f64, String> {
    if num.starts_with('-') {
        return Err(format!(
            "{} is negative; quantities must be >= 0",
            shown(whole)
        ));
    }
    let ok = !num.is_empty()
        && num.len() <= 20
        && num.chars().all(|c| c.is_ascii_digit() || c == '.')
        && num.matches('.').count() <= 1
        && num != ".";
    if !ok {
        return Err(format!(
            "{} is not a quantity (expected e.g. \"500m\", \"2\", \"512Mi\", \"1Gi\")",
            shown(whole)
        ));
    }
    num.parse::<f64>()
        .map_err(|_| format!("{} is not a quantity", shown(whole)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpu() {
        assert_eq!(cpu_millis("500m"), Ok(500));
        assert_eq!(cpu_millis("2"), Ok(2000));
        assert_eq!(cpu_millis("0.25"), Ok(250));
        assert!(cpu_millis("-1").unwrap_err().contains("negative"));
        assert!(cpu_millis("abc").is_err());
        assert!(cpu_millis("").is_err());
        assert!(cpu_millis("1.5.2").is_err());
        assert!(cpu_millis("0.0001").is_err());
        assert_eq!(cpu_millis("1024"), Ok(1_024_000));
        let e = cpu_millis("99999999999999999999").unwrap_err();
        assert!(e.contains("at most 1024"), "{e}");
        assert!(cpu_millis("1025").is_err());
    }

    #[test]
    fn errors_echo_a_bounded_prefix() {
        let long = "9".repeat(10_000);
        for e in [cpu_millis(&long), memory_bytes(&long)] {
            let e = e.unwrap_err();
            assert!(e.len() < 200, "{} bytes: {e}", e.len());
        }
    }

    #[test]
    fn memory() {
        assert_eq!(memory_bytes("1Gi"), Ok(1 << 30));
        assert_eq!(memory_bytes("512Mi"), Ok(512 << 20));
        assert_eq!(memory_bytes("1G"), Ok(1_000_000_000));
        assert_eq!(memory_bytes("1000"), Ok(1000));
        assert!(memory_bytes("1Gb").is_err());
        assert!(memory_bytes("-5Mi").unwrap_err().contains("negative"));
        assert!(memory_bytes("Mi").is_err());
        assert_eq!(memory_bytes("16Ti"), Ok(16 << 40));
        assert!(memory_bytes("17Ti").unwrap_err().contains("at most 16Ti"));
        assert!(memory_bytes("99999999999999999999").is_err());
    }
}
