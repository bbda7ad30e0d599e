//! The name rules of the protocol, shared by the control plane (which
//! refuses bad names at its API) and the agents (which check them again
//! before a name reaches a path, a label or an object name). An agent
//! written in another language applies the same rules; `proto/` documents
//! them where the fields are.
//!
//! - A session id, template name or agent id is a DNS-1123 label:
//!   lower-case letters, digits and '-', starting and ending with a letter
//!   or digit (sessions at most 53 characters at the API, 63 elsewhere).
//! - A user name is 1-63 of letters, digits, '.', '_', '@' and '-',
//!   starting with a letter or digit: never "." or "..", never a separator,
//!   because it names a directory on the agent.

/// Longest DNS label, user name and agent id.
pub const MAX_NAME: usize = 63;

/// Most bytes of an input that [`quote`] repeats.
pub const MAX_QUOTE: usize = 64;

/// Whether `s` is a DNS-1123 label of at most `max` characters.
pub fn is_dns_label(s: &str, max: usize) -> bool {
    let b = s.as_bytes();
    !b.is_empty()
        && b.len() <= max
        && b.iter()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == b'-')
        && b[0] != b'-'
        && b[b.len() - 1] != b'-'
}

/// Whether `s` is a valid user name.
pub fn is_user_name(s: &str) -> bool {
    let b = s.as_bytes();
    !b.is_empty()
        && b.len() <= MAX_NAME
        && b[0].is_ascii_alphanumeric()
        && b.iter()
            .all(|c| c.is_ascii_alphanumeric() || b"._@-".contains(c))
}

/// `s` as an error message may show it: quoted and escaped, the escaped text
/// cut to about [`MAX_QUOTE`] bytes (never inside an escape) with the input's
/// full length when cut, so a 64 KiB name cannot make a 64 KiB error.
pub fn quote(s: &str) -> String {
    // The bound is on what is printed: escaping can make one input byte six
    // ("\u{b}"), so a prefix of MAX_QUOTE input bytes could print 384.
    let mut out = String::with_capacity(MAX_QUOTE + 24);
    out.push('"');
    for c in s.chars() {
        let start = out.len();
        out.extend(c.escape_debug());
        if out.len() > MAX_QUOTE + 1 {
            out.truncate(start);
            return format!("{out}\"... ({} bytes)", s.len());
        }
    }
    out.push('"');
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labels_and_users() {
        assert!(is_dns_label("alice-firefox-1", 53));
        for bad in ["", "-a", "a-", "A", "a.b", "a/b", "é"] {
            assert!(!is_dns_label(bad, 53), "{bad:?}");
        }
        assert!(!is_dns_label(&"a".repeat(54), 53));
        assert!(is_user_name("Alice@example.com"));
        for bad in ["", ".", "..", ".a", "-a", "a/b", "a b", "a\0"] {
            assert!(!is_user_name(bad), "{bad:?}");
        }
        assert!(!is_user_name(&"a".repeat(64)));
    }

    #[test]
    fn quotes_are_bounded() {
        assert_eq!(quote("a\0"), "\"a\\0\"");
        let q = quote(&"é".repeat(50_000));
        assert!(q.len() < 100 && q.ends_with("(100000 bytes)"), "{q}");
        // Found by the quantity_duration fuzz target: control characters
        // print as six bytes each, and 64 of them made a 400-byte quote.
        let q = quote(&"\u{b}".repeat(200));
        assert!(q.len() < 100 && q.ends_with("(200 bytes)"), "{q}");
        assert!(q.starts_with("\"\\u{b}"), "{q}");
        assert_eq!(quote(&"a".repeat(64)), format!("\"{}\"", "a".repeat(64)));
    }
}
