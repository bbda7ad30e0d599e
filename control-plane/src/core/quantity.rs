//! Kubernetes quantity parsing for CPU ("500m", "2", "0.5") and memory
//! ("512Mi", "1Gi", "1G", "1000"). Enough of the grammar to validate input
//! and compare requests with limits; the original text is what gets stored.

/// Parses a CPU quantity into millicores.
pub fn cpu_millis(s: &str) -> Result<u64, String> {
    let (num, milli) = match s.strip_suffix('m') {
        Some(n) => (n, true),
        None => (s, false),
    };
    let v = decimal(num, s)?;
    let m = if milli { v } else { v * 1000.0 };
    if m.fract() != 0.0 {
        return Err(format!("{s:?} is finer than 1m"));
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
    if v > u64::MAX as f64 {
        return Err(format!("{s:?} is too large"));
    }
    Ok(v.ceil() as u64)
}

fn decimal(num: &str, whole: &str) -> Result<f64, String> {
    if num.starts_with('-') {
        return Err(format!("{whole:?} is negative; quantities must be >= 0"));
    }
    let ok = !num.is_empty()
        && num.len() <= 20
        && num.chars().all(|c| c.is_ascii_digit() || c == '.')
        && num.matches('.').count() <= 1
        && num != ".";
    if !ok {
        return Err(format!(
            "{whole:?} is not a quantity (expected e.g. \"500m\", \"2\", \"512Mi\", \"1Gi\")"
        ));
    }
    num.parse::<f64>()
        .map_err(|_| format!("{whole:?} is not a quantity"))
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
    }
}
