//! Caller identities and the patterns policy matches them with.
//!
//! An identity is a stable string: `token:<name>` for a static API token,
//! `oidc:<issuer>:<subject>` for an OIDC JWT. A pattern is an identity in
//! which `*` matches any run of characters (including none) and `?` matches
//! one character; nothing else is special.

/// Whether `identity` matches `pattern`.
pub fn matches(pattern: &str, identity: &str) -> bool {
    let p: Vec<char> = pattern.chars().collect();
    let s: Vec<char> = identity.chars().collect();
    // Iterative wildcard matching with one backtrack point (linear in
    // practice, never exponential).
    let (mut pi, mut si) = (0usize, 0usize);
    let mut star: Option<(usize, usize)> = None;
    while si < s.len() {
        if pi < p.len() && (p[pi] == '?' || p[pi] == s[si]) {
            pi += 1;
            si += 1;
        } else if pi < p.len() && p[pi] == '*' {
            star = Some((pi, si));
            pi += 1;
        } else if let Some((sp, ss)) = star {
            pi = sp + 1;
            si = ss + 1;
            star = Some((sp, ss + 1));
        } else {
            return false;
        }
    }
    while pi < p.len() && p[pi] == '*' {
        pi += 1;
    }
    pi == p.len()
}

/// Whether `identity` matches any of `patterns`.
pub fn matches_any<S: AsRef<str>>(patterns: &[S], identity: &str) -> bool {
    patterns.iter().any(|p| matches(p.as_ref(), identity))
}

/// Checks a pattern or identity is well-formed: it starts with the literal
/// `token:` or `oidc:`, is printable and at most 512 characters.
pub fn check_pattern(pattern: &str) -> Result<(), String> {
    if pattern.is_empty() || pattern.chars().count() > 512 {
        return Err("must be 1 to 512 characters".into());
    }
    if pattern.chars().any(char::is_control) {
        return Err("must not contain control characters".into());
    }
    // The kind is literal, so a pattern never spans both kinds.
    if !pattern.starts_with("token:") && !pattern.starts_with("oidc:") {
        return Err("must start with `token:` or `oidc:`".into());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wildcards_match_as_documented() {
        let cases = [
            ("token:alice", "token:alice", true),
            ("token:alice", "token:alicex", false),
            ("token:*", "token:", true),
            ("token:*", "token:bob", true),
            ("token:a?c", "token:abc", true),
            ("token:a?c", "token:ac", false),
            (
                "oidc:https://gh:repo:acme/*",
                "oidc:https://gh:repo:acme/app:ref:main",
                true,
            ),
            (
                "oidc:https://gh:repo:acme/*",
                "oidc:https://gh:repo:acmex/app",
                false,
            ),
            ("*:bob", "token:bob", true),
            ("token:*b*", "token:aaaab", true),
            ("token:[ab]", "token:a", false),
            ("token:[ab]", "token:[ab]", true),
            ("token:ü*", "token:über", true),
        ];
        for (p, s, want) in cases {
            assert_eq!(matches(p, s), want, "{p} ~ {s}");
        }
    }

    #[test]
    fn pathological_patterns_stay_fast() {
        let p = format!("token:{}b", "*a".repeat(50));
        let s = format!("token:{}", "a".repeat(500));
        let start = std::time::Instant::now();
        assert!(!matches(&p, &s));
        assert!(start.elapsed() < std::time::Duration::from_secs(1));
    }

    #[test]
    fn patterns_are_checked() {
        for ok in ["token:alice", "oidc:https://idp:*", "token:*"] {
            check_pattern(ok).unwrap();
        }
        for bad in ["", "alice", "ldap:x", "token:a\nb", "*"] {
            assert!(check_pattern(bad).is_err(), "{bad}");
        }
    }
}
