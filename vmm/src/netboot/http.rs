//! A small HTTP/1.1 GET client over a smoltcp TCP socket: one request per connection
//! (`Connection: close`), bodies by Content-Length, chunked encoding or end of stream.
//! The response head and chunk framing are untrusted input.

use super::link::Stack;
use super::url::Url;
use super::MAX_FILE;
use smoltcp::socket::tcp;
use std::time::{Duration, Instant};

const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// Give up when the server sends nothing for this long.
const IDLE_TIMEOUT: Duration = Duration::from_secs(10);
const MAX_HEAD: usize = 16 << 10;

#[derive(Debug, PartialEq, Eq)]
pub struct Head {
    pub status: u16,
    pub reason: String,
    pub content_length: Option<u64>,
    pub chunked: bool,
    /// Where a redirect points.
    pub location: Option<String>,
    /// Bytes the head took, including the blank line.
    pub len: usize,
}

/// Parses the response head at the start of `buf`; `Ok(None)` if it is not complete yet.
pub fn parse_head(buf: &[u8]) -> Result<Option<Head>, String> {
    let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") else {
        if buf.len() > MAX_HEAD {
            return Err(format!("response head longer than {MAX_HEAD} bytes"));
        }
        return Ok(None);
    };
    let text = std::str::from_utf8(&buf[..end]).map_err(|_| "response head is not text")?;
    let mut lines = text.split("\r\n");
    let status_line = lines.next().unwrap_or("");
    let mut words = status_line.splitn(3, ' ');
    let (version, code) = (words.next().unwrap_or(""), words.next().unwrap_or(""));
    if !version.starts_with("HTTP/1.") || code.len() != 3 {
        return Err(format!("bad status line {status_line:?}"));
    }
    let status = code
        .parse()
        .map_err(|_| format!("bad status line {status_line:?}"))?;
    let mut head = Head {
        status,
        reason: words.next().unwrap_or("").to_owned(),
        content_length: None,
        chunked: false,
        location: None,
        len: end + 4,
    };
    for l in lines {
        let (name, value) = l
            .split_once(':')
            .ok_or_else(|| format!("bad header line {l:?}"))?;
        let value = value.trim();
        match name.trim().to_ascii_lowercase().as_str() {
            "content-length" => {
                let n = value
                    .parse()
                    .map_err(|_| format!("bad Content-Length {value:?}"))?;
                if head.content_length.is_some_and(|m| m != n) {
                    return Err("conflicting Content-Length headers".into());
                }
                head.content_length = Some(n);
            }
            "transfer-encoding" => {
                head.chunked = value
                    .rsplit(',')
                    .next()
                    .is_some_and(|v| v.trim().eq_ignore_ascii_case("chunked"))
            }
            "location" => head.location = Some(value.to_owned()),
            _ => {}
        }
    }
    Ok(Some(head))
}

/// Decodes a complete chunked body (RFC 9112 7.1); `Ok(None)` if it has not ended yet.
pub fn dechunk(mut body: &[u8]) -> Result<Option<Vec<u8>>, String> {
    let mut out = Vec::new();
    loop {
        let Some(eol) = body.windows(2).position(|w| w == b"\r\n") else {
            return Ok(None);
        };
        let line = std::str::from_utf8(&body[..eol]).map_err(|_| "chunk size is not text")?;
        let hex = line.split(';').next().unwrap_or("").trim();
        let size =
            usize::from_str_radix(hex, 16).map_err(|_| format!("bad chunk size {line:?}"))?;
        body = &body[eol + 2..];
        if size == 0 {
            // Trailers end with an empty line; we ignore them but wait for it.
            return Ok(body.windows(2).position(|w| w == b"\r\n").map(|_| out));
        }
        if size > MAX_FILE || out.len() + size > MAX_FILE {
            return Err(format!("body larger than the {MAX_FILE}-byte limit"));
        }
        if body.len() < size + 2 {
            return Ok(None);
        }
        if &body[size..size + 2] != b"\r\n" {
            return Err("chunk not followed by CRLF".into());
        }
        out.extend_from_slice(&body[..size]);
        body = &body[size + 2..];
    }
}

/// The body, if `buf` (head and all) holds a complete response; `eof` when the server closed.
pub fn body(buf: &[u8], eof: bool) -> Result<Option<(Head, Vec<u8>)>, String> {
    let Some(head) = parse_head(buf)? else {
        return if eof {
            Err("connection closed before the response head ended".into())
        } else {
            Ok(None)
        };
    };
    let rest = &buf[head.len..];
    let data = if head.chunked {
        match dechunk(rest)? {
            Some(d) => d,
            None if eof => return Err("connection closed inside a chunked body".into()),
            None => return Ok(None),
        }
    } else if let Some(n) = head.content_length {
        if n > MAX_FILE as u64 {
            return Err(format!(
                "Content-Length {n} is more than the {MAX_FILE}-byte limit"
            ));
        }
        match (rest.len() as u64).cmp(&n) {
            std::cmp::Ordering::Less if eof => {
                return Err(format!(
                    "connection closed after {} of {n} bytes",
                    rest.len()
                ))
            }
            std::cmp::Ordering::Less => return Ok(None),
            _ => rest[..n as usize].to_vec(),
        }
    } else if eof {
        rest.to_vec()
    } else {
        return Ok(None);
    };
    Ok(Some((head, data)))
}

/// Redirects followed per download, as a browser or iPXE would (a few, not forever).
const MAX_REDIRECTS: usize = 4;

/// Downloads `url` (an http URL), following redirects; returns the body and the URL it came
/// from in the end (what relative references in it are relative to). Errors name the URL.
pub fn get(stack: &mut Stack, url: &Url) -> Result<(Vec<u8>, Url), String> {
    let mut url = url.clone();
    for _ in 0..=MAX_REDIRECTS {
        match get_once(stack, &url).map_err(|e| format!("HTTP GET {url}: {e}"))? {
            Response::Body(d) => return Ok((d, url)),
            Response::Redirect(to) => {
                url = url
                    .join(&to)
                    .map_err(|e| format!("HTTP GET {url}: redirect: {e}"))?
            }
        }
    }
    Err(format!(
        "HTTP GET {url}: more than {MAX_REDIRECTS} redirects; is the server redirecting in a loop?"
    ))
}

enum Response {
    Body(Vec<u8>),
    Redirect(String),
}

fn get_once(stack: &mut Stack, url: &Url) -> Result<Response, String> {
    let sock = tcp::Socket::new(
        tcp::SocketBuffer::new(vec![0; 256 << 10]),
        tcp::SocketBuffer::new(vec![0; 4 << 10]),
    );
    let h = stack.sockets.add(sock);
    let r = fetch(stack, h, url);
    stack.sockets.get_mut::<tcp::Socket>(h).abort();
    stack.run_until(Instant::now(), |_| Some(()));
    stack.remove(h);
    r
}

fn fetch(
    stack: &mut Stack,
    h: smoltcp::iface::SocketHandle,
    url: &Url,
) -> Result<Response, String> {
    let local = 49152 + (super::random_u64() % 16000) as u16;
    let cx = stack.iface.context();
    stack
        .sockets
        .get_mut::<tcp::Socket>(h)
        .connect(cx, (url.host, url.port), local)
        .map_err(|e| format!("cannot connect: {e}"))?;
    let connected = stack.run_until(Instant::now() + CONNECT_TIMEOUT, |s| {
        let t = s.get_mut::<tcp::Socket>(h);
        match t.state() {
            tcp::State::Established => Some(true),
            tcp::State::Closed => Some(false),
            _ => None,
        }
    });
    match connected {
        None => {
            return Err(format!(
                "no answer to the connection request within {} s; is the server up and reachable?",
                CONNECT_TIMEOUT.as_secs()
            ))
        }
        Some(false) => {
            return Err("connection refused; is an HTTP server listening on that port?".into())
        }
        Some(true) => {}
    }
    let req = format!(
        "GET {} HTTP/1.1\r\nHost: {}:{}\r\nUser-Agent: ignite-vmm-netboot\r\nConnection: close\r\n\r\n",
        url.path, url.host, url.port
    );
    let mut sent = 0;
    let mut buf = Vec::new();
    loop {
        let step = stack.run_until(Instant::now() + IDLE_TIMEOUT, |s| {
            let t = s.get_mut::<tcp::Socket>(h);
            let mut progressed = false;
            if sent < req.len() && t.can_send() {
                sent += t.send_slice(&req.as_bytes()[sent..]).unwrap_or(0);
            }
            while t.can_recv() {
                match t.recv(|b| (b.len(), b.to_vec())) {
                    Ok(d) if !d.is_empty() => {
                        buf.extend_from_slice(&d);
                        progressed = true;
                    }
                    _ => break,
                }
            }
            let eof = !t.may_recv();
            (progressed || eof).then_some(eof)
        });
        let Some(eof) = step else {
            return Err(format!(
                "server silent for {} s after {} bytes",
                IDLE_TIMEOUT.as_secs(),
                buf.len()
            ));
        };
        if buf.len() > MAX_FILE + MAX_HEAD {
            return Err(format!("response larger than the {MAX_FILE}-byte limit"));
        }
        if let Some((head, data)) = body(&buf, eof)? {
            if let (301 | 302 | 303 | 307 | 308, Some(to)) = (head.status, head.location) {
                return Ok(Response::Redirect(to));
            }
            if head.status != 200 {
                return Err(format!(
                    "server answered {} {}; check the URL and the files the server serves",
                    head.status, head.reason
                ));
            }
            return Ok(Response::Body(data));
        }
        if eof {
            return Err("connection closed before the response ended".into());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn content_length_and_chunked() {
        let r = b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\nabcdef";
        let (h, d) = body(r, false).unwrap().unwrap();
        assert_eq!((h.status, d), (200, b"abc".to_vec()));
        assert_eq!(body(&r[..40], false).unwrap(), None);
        assert!(body(&r[..40], true).unwrap_err().contains("closed after"));
        let c = b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n3;x=y\r\nabc\r\n2\r\nde\r\n0\r\n\r\n";
        assert_eq!(body(c, false).unwrap().unwrap().1, b"abcde");
        assert_eq!(body(&c[..c.len() - 2], false).unwrap(), None);
        let e = b"HTTP/1.0 404 Not Found\r\nServer: x\r\n\r\nnope";
        let (h, d) = body(e, true).unwrap().unwrap();
        assert_eq!(
            (h.status, h.reason.as_str(), d),
            (404, "Not Found", b"nope".to_vec())
        );
        let r = b"HTTP/1.1 302 Found\r\nLocation: /b\r\nContent-Length: 0\r\n\r\n";
        assert_eq!(
            body(r, false).unwrap().unwrap().0.location.as_deref(),
            Some("/b")
        );
        assert!(parse_head(b"SSH-2.0\r\n\r\n").is_err());
        assert!(parse_head(b"HTTP/1.1 200 OK\r\nContent-Length: x\r\n\r\n").is_err());
        assert!(dechunk(b"zz\r\n").is_err());
        assert!(dechunk(b"2\r\nabcd").is_err());
        assert_eq!(dechunk(b"2\r\nabc").unwrap(), None);
    }

    #[test]
    fn random_responses_never_panic() {
        let mut rng = crate::netboot::tests::Rng(99);
        let seeds: [&[u8]; 2] = [
            b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\nabc",
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\nff\r\n0\r\n\r\n",
        ];
        for i in 0..30_000 {
            let p = rng.mutate(seeds[i % 2], None);
            let _ = body(&p, i % 3 == 0);
        }
    }
}
