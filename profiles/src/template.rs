//! Hostname templates: literal text plus `{mac}` (12 hex digits), `{mac6}` (the last 6) and
//! `{name}` (the per-client hostname given when the client was registered).

pub const VARIABLES: [&str; 3] = ["mac", "mac6", "name"];

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Piece {
    Text(String),
    Var(String),
}

/// Split a template into pieces. The error is a message for the user.
pub fn parse_template(s: &str) -> Result<Vec<Piece>, String> {
    let mut out = Vec::new();
    let mut rest = s;
    if s.is_empty() {
        return Err("hostname is empty; use e.g. \"web-{mac6}\" or \"{name}\"".into());
    }
    while !rest.is_empty() {
        match rest.find(['{', '}']) {
            Some(i) if rest.as_bytes()[i] == b'}' => {
                return Err(format!(
                    "hostname template {s:?} has a '}}' without '{{'; write variables as {{mac6}}"
                ))
            }
            Some(i) => {
                if i > 0 {
                    out.push(Piece::Text(rest[..i].to_string()));
                }
                let after = &rest[i + 1..];
                let Some(j) = after.find('}') else {
                    return Err(format!(
                        "hostname template {s:?} has a '{{' without '}}'; write variables as {{mac6}}"
                    ));
                };
                let var = &after[..j];
                if !VARIABLES.contains(&var) {
                    let hint = crate::suggest(var, &VARIABLES)
                        .map(|v| format!("did you mean {{{v}}}? "))
                        .unwrap_or_default();
                    return Err(format!(
                        "hostname template {s:?} uses unknown variable {{{var}}}; {hint}known variables are {{mac}}, {{mac6}} and {{name}}"
                    ));
                }
                out.push(Piece::Var(var.to_string()));
                rest = &after[j + 1..];
            }
            None => {
                out.push(Piece::Text(rest.to_string()));
                rest = "";
            }
        }
    }
    for p in &out {
        if let Piece::Text(t) = p {
            if let Some(c) = t
                .chars()
                .find(|c| !(c.is_ascii_alphanumeric() || *c == '-' || *c == '.'))
            {
                return Err(format!(
                    "hostname template {s:?} contains {c:?}; hostnames use letters, digits, '-' and '.'"
                ));
            }
        }
    }
    Ok(out)
}

/// Normalise a MAC address to 12 lower-case hex digits.
pub fn normalize_mac(mac: &str) -> Option<String> {
    let hex: String = mac
        .chars()
        .filter(|c| !matches!(c, ':' | '-' | '.'))
        .collect();
    if hex.len() == 12 && hex.chars().all(|c| c.is_ascii_hexdigit()) {
        Some(hex.to_ascii_lowercase())
    } else {
        None
    }
}

/// Expand a parsed template. `Err(var)` names a variable with no value.
pub fn expand(pieces: &[Piece], mac12: &str, name: Option<&str>) -> Result<String, String> {
    let mut s = String::new();
    for p in pieces {
        match p {
            Piece::Text(t) => s.push_str(t),
            Piece::Var(v) => match v.as_str() {
                "mac" => s.push_str(mac12),
                "mac6" => s.push_str(&mac12[6..]),
                _ => s.push_str(name.ok_or_else(|| v.clone())?),
            },
        }
    }
    Ok(s)
}

/// Why a hostname is not valid, if it is not.
pub fn hostname_problem(h: &str) -> Option<String> {
    if h.is_empty() {
        return Some("is empty".into());
    }
    if h.len() > 253 {
        return Some("is longer than 253 characters".into());
    }
    for label in h.split('.') {
        if label.is_empty() {
            return Some("has an empty label".into());
        }
        if label.len() > 63 {
            return Some(format!("has a label longer than 63 characters ({label:?})"));
        }
        if label.starts_with('-') || label.ends_with('-') {
            return Some(format!(
                "has a label starting or ending with '-' ({label:?})"
            ));
        }
        if let Some(c) = label
            .chars()
            .find(|c| !(c.is_ascii_alphanumeric() || *c == '-'))
        {
            return Some(format!("contains {c:?}"));
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn templates_expand() {
        let p = parse_template("web-{mac6}").unwrap();
        assert_eq!(expand(&p, "525400abcdef", None).unwrap(), "web-abcdef");
        let p = parse_template("{mac}").unwrap();
        assert_eq!(expand(&p, "525400abcdef", None).unwrap(), "525400abcdef");
        let p = parse_template("{name}.lab").unwrap();
        assert_eq!(expand(&p, "525400abcdef", Some("db1")).unwrap(), "db1.lab");
        assert_eq!(expand(&p, "525400abcdef", None), Err("name".to_string()));
        let p = parse_template("plain").unwrap();
        assert_eq!(p, vec![Piece::Text("plain".into())]);
    }

    #[test]
    fn template_errors() {
        let e = parse_template("web-{mca6}").unwrap_err();
        assert!(e.contains("unknown variable {mca6}"), "{e}");
        assert!(e.contains("did you mean {mac6}?"), "{e}");
        assert!(parse_template("web-{mac6")
            .unwrap_err()
            .contains("without '}'"));
        assert!(parse_template("web-mac6}")
            .unwrap_err()
            .contains("without '{'"));
        assert!(parse_template("web_{mac6}").unwrap_err().contains("'_'"));
        assert!(parse_template("").is_err());
    }

    #[test]
    fn macs_and_hostnames() {
        assert_eq!(
            normalize_mac("52:54:00:AB:cd:EF").as_deref(),
            Some("525400abcdef")
        );
        assert_eq!(
            normalize_mac("52-54-00-ab-cd-ef").as_deref(),
            Some("525400abcdef")
        );
        assert_eq!(normalize_mac("52:54:00:ab:cd"), None);
        assert_eq!(normalize_mac("zz:54:00:ab:cd:ef"), None);
        assert_eq!(hostname_problem("web-1.example.com"), None);
        assert!(hostname_problem("-web").is_some());
        assert!(hostname_problem("a..b").is_some());
        assert!(hostname_problem(&"a".repeat(64)).is_some());
        assert!(hostname_problem("").is_some());
    }
}
