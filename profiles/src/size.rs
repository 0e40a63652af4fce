//! Sizes: `"512M"`, `"1.5G"`, `"20%"`, `"rest"`; binary units (K = 1024).

use serde::{Deserialize, Serialize};
use std::fmt;

pub const MIB: u64 = 1 << 20;

/// A partition size as written in a profile.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Size {
    /// An exact size in bytes (rounded up to whole MiB when laid out).
    Bytes(u64),
    /// A percentage (1-100) of the disk's usable space, rounded down to whole MiB.
    Percent(u32),
    /// Whatever is left once every other partition has its size.
    Rest,
}

impl fmt::Display for Size {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Size::Bytes(b) => f.write_str(&human(*b)),
            Size::Percent(p) => write!(f, "{p}%"),
            Size::Rest => f.write_str("rest"),
        }
    }
}

const HINT: &str = "use e.g. \"10G\", \"512M\", \"20%\" or \"rest\"";

/// Parse a partition size. The error is a full message for the user.
pub fn parse_size(s: &str) -> Result<Size, String> {
    let t = s.trim();
    if t.eq_ignore_ascii_case("rest") {
        return Ok(Size::Rest);
    }
    if let Some(p) = t.strip_suffix('%') {
        return match p.trim().parse::<u32>() {
            Ok(n) if (1..=100).contains(&n) => Ok(Size::Percent(n)),
            Ok(_) => Err(format!(
                "size {s:?}: a percentage must be between 1% and 100%; {HINT}"
            )),
            Err(_) => Err(format!(
                "size {s:?}: {p:?} is not a whole number of percent; {HINT}"
            )),
        };
    }
    parse_bytes(s).map(Size::Bytes)
}

/// Parse a byte size with a unit (`"512M"`, `"1.5GiB"`, `"4096B"`).
pub fn parse_bytes(s: &str) -> Result<u64, String> {
    let t = s.trim();
    let split = t
        .find(|c: char| !(c.is_ascii_digit() || c == '.' || c == '_'))
        .unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let num = num.replace('_', "");
    let mult: u64 = match unit.trim().to_ascii_lowercase().as_str() {
        "b" => 1,
        "k" | "kb" | "kib" => 1 << 10,
        "m" | "mb" | "mib" => 1 << 20,
        "g" | "gb" | "gib" => 1 << 30,
        "t" | "tb" | "tib" => 1 << 40,
        "p" | "pb" | "pib" => 1 << 50,
        "" if !num.is_empty() => {
            return Err(format!(
            "size {s:?} has no unit; write e.g. \"{num}M\" or \"{num}G\" (or \"{num}B\" for bytes)"
        ))
        }
        _ => return Err(format!("size {s:?} is not a size; {HINT}")),
    };
    if num.is_empty() || num.matches('.').count() > 1 || num == "." {
        return Err(format!("size {s:?} is not a size; {HINT}"));
    }
    let (int, frac) = num.split_once('.').unwrap_or((&num, ""));
    let int: u64 = if int.is_empty() {
        0
    } else {
        int.parse()
            .map_err(|_| format!("size {s:?} is too large; {HINT}"))?
    };
    let mut bytes = int
        .checked_mul(mult)
        .ok_or_else(|| format!("size {s:?} is too large; {HINT}"))?;
    if !frac.is_empty() {
        // fractional part, exactly: frac / 10^len * mult (digits beyond 9 ignored)
        let f = &frac[..frac.len().min(9)];
        let fv: u128 = f.parse().unwrap_or(0);
        let add = fv * mult as u128 / 10u128.pow(f.len() as u32);
        bytes = bytes
            .checked_add(add as u64)
            .ok_or_else(|| format!("size {s:?} is too large; {HINT}"))?;
    }
    if bytes == 0 {
        return Err(format!("size {s:?} is zero; {HINT}"));
    }
    if bytes > 1 << 60 {
        return Err(format!("size {s:?} is too large; {HINT}"));
    }
    Ok(bytes)
}

/// A disk size range for selecting a disk: `"10G..100G"`, `"10G.."`, `"..2T"`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct SizeRange {
    pub min: Option<u64>,
    pub max: Option<u64>,
}

impl SizeRange {
    pub fn contains(&self, bytes: u64) -> bool {
        self.min.is_none_or(|m| bytes >= m) && self.max.is_none_or(|m| bytes <= m)
    }
}

impl fmt::Display for SizeRange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let h = |b: Option<u64>| b.map(human).unwrap_or_default();
        write!(f, "{}..{}", h(self.min), h(self.max))
    }
}

pub fn parse_range(s: &str) -> Result<SizeRange, String> {
    const RHINT: &str = "use e.g. \"10G..100G\", \"10G..\" or \"..2T\"";
    let Some((a, b)) = s.split_once("..") else {
        return Err(format!("size range {s:?} has no \"..\"; {RHINT}"));
    };
    let side = |x: &str| -> Result<Option<u64>, String> {
        if x.trim().is_empty() {
            Ok(None)
        } else {
            parse_bytes(x)
                .map(Some)
                .map_err(|_| format!("size range {s:?}: {x:?} is not a size; {RHINT}"))
        }
    };
    let r = SizeRange {
        min: side(a)?,
        max: side(b)?,
    };
    if r.min.is_none() && r.max.is_none() {
        return Err(format!("size range {s:?} has no bounds; {RHINT}"));
    }
    if let (Some(lo), Some(hi)) = (r.min, r.max) {
        if lo > hi {
            return Err(format!(
                "size range {s:?}: the minimum is above the maximum; {RHINT}"
            ));
        }
    }
    Ok(r)
}

/// Bytes for people: `"20 GiB"`, `"512 MiB"`, `"1.5 GiB"`, exact when it is not round.
pub fn human(b: u64) -> String {
    const UNITS: [(&str, u64); 5] = [
        ("PiB", 1 << 50),
        ("TiB", 1 << 40),
        ("GiB", 1 << 30),
        ("MiB", 1 << 20),
        ("KiB", 1 << 10),
    ];
    for (name, m) in UNITS {
        if b >= m {
            if b.is_multiple_of(m) {
                return format!("{} {name}", b / m);
            }
            return format!("{:.1} {name} ({b} bytes)", b as f64 / m as f64);
        }
    }
    format!("{b} bytes")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_parse() {
        assert_eq!(parse_size("512M"), Ok(Size::Bytes(512 << 20)));
        assert_eq!(parse_size("10G"), Ok(Size::Bytes(10 << 30)));
        assert_eq!(parse_size("10GiB"), Ok(Size::Bytes(10 << 30)));
        assert_eq!(parse_size("1.5G"), Ok(Size::Bytes(3 << 29)));
        assert_eq!(parse_size("4096B"), Ok(Size::Bytes(4096)));
        assert_eq!(parse_size("2T"), Ok(Size::Bytes(2 << 40)));
        assert_eq!(parse_size("20%"), Ok(Size::Percent(20)));
        assert_eq!(parse_size("100%"), Ok(Size::Percent(100)));
        assert_eq!(parse_size("rest"), Ok(Size::Rest));
    }

    #[test]
    fn bad_sizes_say_what_to_write() {
        let e = parse_size("10X").unwrap_err();
        assert_eq!(
            e,
            "size \"10X\" is not a size; use e.g. \"10G\", \"512M\", \"20%\" or \"rest\""
        );
        assert!(parse_size("512").unwrap_err().contains("\"512M\""));
        assert!(parse_size("0%")
            .unwrap_err()
            .contains("between 1% and 100%"));
        assert!(parse_size("101%").is_err());
        assert!(parse_size("abc%").is_err());
        assert!(parse_size("0M").unwrap_err().contains("zero"));
        assert!(parse_size("").is_err());
        assert!(parse_size("G").is_err());
        assert!(parse_size("1.2.3G").is_err());
        assert!(parse_size("99999999999999999999G")
            .unwrap_err()
            .contains("too large"));
        assert!(parse_size("99999999T").unwrap_err().contains("too large"));
    }

    #[test]
    fn ranges() {
        let r = parse_range("10G..100G").unwrap();
        assert!(r.contains(10 << 30) && r.contains(100 << 30) && !r.contains(9 << 30));
        assert!(parse_range("..2T").unwrap().contains(1));
        assert!(!parse_range("10G..").unwrap().contains(1 << 30));
        assert!(parse_range("10G").is_err());
        assert!(parse_range("..").is_err());
        assert!(parse_range("2G..1G").is_err());
        assert!(parse_range("x..1G").is_err());
    }

    #[test]
    fn human_sizes() {
        assert_eq!(human(20 << 30), "20 GiB");
        assert_eq!(human(512 << 20), "512 MiB");
        assert_eq!(human(100), "100 bytes");
        assert!(human((3 << 29) + 1).starts_with("1.5 GiB"));
    }
}
