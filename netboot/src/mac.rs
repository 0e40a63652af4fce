//! Ethernet MAC addresses as the boot configuration keys clients by.

use std::fmt;
use std::str::FromStr;

#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct MacAddr(pub [u8; 6]);

impl MacAddr {
    /// From a DHCP `chaddr` field; `None` unless it holds at least 6 bytes.
    pub fn from_chaddr(chaddr: &[u8]) -> Option<MacAddr> {
        let b: [u8; 6] = chaddr.get(..6)?.try_into().ok()?;
        Some(MacAddr(b))
    }

    /// `aa-bb-cc-dd-ee-ff`, as pxelinux file names and URLs use it (no `:` to escape).
    pub fn dashed(&self) -> String {
        self.to_string().replace(':', "-")
    }
}

impl fmt::Display for MacAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let b = self.0;
        write!(
            f,
            "{:02x}:{:02x}:{:02x}:{:02x}:{:02x}:{:02x}",
            b[0], b[1], b[2], b[3], b[4], b[5]
        )
    }
}

impl fmt::Debug for MacAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

#[derive(Debug, thiserror::Error)]
#[error("{0:?} is not a MAC address; use six hex pairs like 52:54:00:12:34:56")]
pub struct BadMac(pub String);

impl FromStr for MacAddr {
    type Err = BadMac;
    /// Accepts `:`- or `-`-separated pairs, any case.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let parts: Vec<&str> = s.split([':', '-']).collect();
        if parts.len() != 6 {
            return Err(BadMac(s.to_string()));
        }
        let mut out = [0u8; 6];
        for (o, p) in out.iter_mut().zip(parts) {
            if p.len() != 2 {
                return Err(BadMac(s.to_string()));
            }
            *o = u8::from_str_radix(p, 16).map_err(|_| BadMac(s.to_string()))?;
        }
        Ok(MacAddr(out))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_both_separators_and_prints_lowercase() {
        let m: MacAddr = "52:54:00:AB:cd:0f".parse().unwrap();
        assert_eq!(m.to_string(), "52:54:00:ab:cd:0f");
        assert_eq!(m, "52-54-00-ab-cd-0f".parse().unwrap());
        assert_eq!(m.dashed(), "52-54-00-ab-cd-0f");
    }

    #[test]
    fn rejects_garbage() {
        for s in [
            "",
            "52:54:00:ab:cd",
            "52:54:00:ab:cd:0g",
            "525:4:00:ab:cd:0f",
            "1:2:3:4:5:6",
        ] {
            assert!(s.parse::<MacAddr>().is_err(), "{s}");
        }
    }
}
