//! The URLs the boot firmware follows: `tftp://IP[:port]/path` and `http://IP[:port]/path`,
//! and relative references resolved against the URL of the script that holds them.

use std::fmt;
use std::net::Ipv4Addr;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Scheme {
    Tftp,
    Http,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Url {
    pub scheme: Scheme,
    pub host: Ipv4Addr,
    pub port: u16,
    /// Starts with `/` for HTTP; for TFTP the file name as the server knows it.
    pub path: String,
}

impl fmt::Display for Url {
    fn fmt(&self, f: &mut fmt::Formatter) -> fmt::Result {
        match self.scheme {
            Scheme::Http => write!(f, "http://{}:{}{}", self.host, self.port, self.path),
            Scheme::Tftp => write!(f, "tftp://{}/{}", self.host, self.path),
        }
    }
}

impl Url {
    /// A TFTP file name as DHCP hands it out.
    pub fn tftp(host: Ipv4Addr, file: &str) -> Url {
        Url {
            scheme: Scheme::Tftp,
            host,
            port: 69,
            path: file.to_owned(),
        }
    }

    pub fn parse(s: &str) -> Result<Url, String> {
        let (scheme, rest) = s
            .split_once("://")
            .ok_or_else(|| format!("{s:?} is not a URL"))?;
        let (scheme, default_port) = match scheme.to_ascii_lowercase().as_str() {
            "http" => (Scheme::Http, 80),
            "tftp" => (Scheme::Tftp, 69),
            other => {
                return Err(format!(
                    "URL {s:?}: scheme {other} is not supported by the monitor's boot firmware; use http:// or tftp://"
                ))
            }
        };
        let (authority, path) = match rest.find('/') {
            Some(i) => (&rest[..i], &rest[i..]),
            None => (rest, "/"),
        };
        let (host, port) = match authority.rsplit_once(':') {
            Some((h, p)) => (
                h,
                p.parse()
                    .map_err(|_| format!("URL {s:?}: port {p:?} is not a number"))?,
            ),
            None => (authority, default_port),
        };
        let host: Ipv4Addr = host.parse().map_err(|_| {
            format!("URL {s:?}: host {host:?} is not an IPv4 address and the boot firmware does no DNS; use the server's address")
        })?;
        let path = match scheme {
            // TFTP file names are relative to the server's root.
            Scheme::Tftp => path.trim_start_matches('/').to_owned(),
            Scheme::Http => path.to_owned(),
        };
        Ok(Url {
            scheme,
            host,
            port,
            path,
        })
    }

    /// `r` (absolute, host-relative `/x` or directory-relative `x`) against this URL.
    pub fn join(&self, r: &str) -> Result<Url, String> {
        if r.contains("://") {
            return Url::parse(r);
        }
        let path = if let Some(abs) = r.strip_prefix('/') {
            match self.scheme {
                Scheme::Http => r.to_owned(),
                Scheme::Tftp => abs.to_owned(),
            }
        } else {
            let dir = match self.path.rfind('/') {
                Some(i) => &self.path[..=i],
                None => "",
            };
            format!("{dir}{r}")
        };
        Ok(Url {
            path,
            ..self.clone()
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_and_join() {
        let u = Url::parse("http://10.0.0.1:8080/ipxe/x").unwrap();
        assert_eq!(u.to_string(), "http://10.0.0.1:8080/ipxe/x");
        assert_eq!(u.join("k.elf").unwrap().path, "/ipxe/k.elf");
        assert_eq!(u.join("/files/k").unwrap().path, "/files/k");
        let t = Url::parse("tftp://10.0.0.2/boot/s.ipxe").unwrap();
        assert_eq!((t.port, t.path.as_str()), (69, "boot/s.ipxe"));
        assert_eq!(t.join("k").unwrap().to_string(), "tftp://10.0.0.2/boot/k");
        assert_eq!(
            Url::tftp(Ipv4Addr::new(1, 2, 3, 4), "s.ipxe")
                .join("k")
                .unwrap()
                .path,
            "k"
        );
        assert_eq!(t.join("http://10.0.0.3/a").unwrap().scheme, Scheme::Http);
        assert!(Url::parse("https://10.0.0.1/")
            .unwrap_err()
            .contains("http:// or tftp://"));
        assert!(Url::parse("http://boot.example/")
            .unwrap_err()
            .contains("no DNS"));
        assert!(Url::parse("http://10.0.0.1:x/").is_err());
        assert!(Url::parse("nonsense").is_err());
    }
}
