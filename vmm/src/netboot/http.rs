//! A small HTTP/1.1 GET client over a smoltcp TCP socket: one request per connection
//! (`Connection: close`), bodies by Content-Length, chunked encoding or end of stream.
//! The response head and chunk framing are untrusted input.

use super::link::Stack;
use super::url::Url;
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
    let end = buf.windows(4).position(|w| w == b"\r\n\r\n");
    if end.unwrap_or(buf.len()) > MAX_HEAD {
        return Err(format!("response head longer than {MAX_HEAD} bytes"));
    }
    let Some(end) = end else {
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

/// Longest chunk-size or trailer line accepted.
const MAX_LINE: usize = 4096;

#[derive(Clone, Copy, Debug)]
enum Chunk {
    /// Reading a chunk-size line.
    Size,
    /// Bytes of chunk data still to come.
    Data(usize),
    /// After chunk data: how many bytes of its CRLF have been seen.
    DataEnd(usize),
    /// Reading trailer lines, until an empty one.
    Trailer,
    Done,
}

/// A chunked body (RFC 9112 7.1) decoded as it arrives: each byte is looked at once, so a
/// body that comes in many segments costs no more than one that comes at once.
pub struct Dechunker {
    state: Chunk,
    line: Vec<u8>,
    out: Vec<u8>,
    limit: usize,
}

impl Dechunker {
    /// A decoder that refuses bodies larger than `limit`.
    pub fn new(limit: usize) -> Dechunker {
        Dechunker {
            state: Chunk::Size,
            line: Vec::new(),
            out: Vec::new(),
            limit,
        }
    }

    /// Has the last chunk and the trailer's end arrived?
    pub fn done(&self) -> bool {
        matches!(self.state, Chunk::Done)
    }

    pub fn feed(&mut self, mut data: &[u8]) -> Result<(), String> {
        while let Some(&first) = data.first() {
            match self.state {
                Chunk::Size | Chunk::Trailer => {
                    let nl = data.iter().position(|&b| b == b'\n');
                    let take = nl.map_or(data.len(), |i| i + 1);
                    if self.line.len() + take > MAX_LINE {
                        return Err(format!("chunk line longer than {MAX_LINE} bytes"));
                    }
                    self.line.extend_from_slice(&data[..take]);
                    data = &data[take..];
                    if nl.is_some() {
                        self.end_line()?;
                    }
                }
                Chunk::Data(n) => {
                    let k = n.min(data.len());
                    self.out.extend_from_slice(&data[..k]);
                    data = &data[k..];
                    self.state = if k == n {
                        Chunk::DataEnd(0)
                    } else {
                        Chunk::Data(n - k)
                    };
                }
                Chunk::DataEnd(seen) => {
                    if first != b"\r\n"[seen] {
                        return Err("chunk not followed by CRLF".into());
                    }
                    data = &data[1..];
                    self.state = if seen == 1 {
                        Chunk::Size
                    } else {
                        Chunk::DataEnd(1)
                    };
                }
                // Whatever follows the body is not ours (Connection: close).
                Chunk::Done => return Ok(()),
            }
        }
        Ok(())
    }

    /// A complete size or trailer line is in `line`.
    fn end_line(&mut self) -> Result<(), String> {
        let line = std::mem::take(&mut self.line);
        let text = line
            .strip_suffix(b"\r\n")
            .ok_or("chunk line not ended by CRLF")?;
        let text = std::str::from_utf8(text).map_err(|_| "chunk size is not text")?;
        if let Chunk::Trailer = self.state {
            // Trailer fields are ignored; an empty line ends the body.
            if text.is_empty() {
                self.state = Chunk::Done;
            }
            return Ok(());
        }
        let hex = text.split(';').next().unwrap_or("").trim();
        let size =
            usize::from_str_radix(hex, 16).map_err(|_| format!("bad chunk size {text:?}"))?;
        if size > self.limit - self.out.len() {
            return Err(too_large(self.limit));
        }
        self.state = if size == 0 {
            Chunk::Trailer
        } else {
            Chunk::Data(size)
        };
        Ok(())
    }
}

fn too_large(limit: usize) -> String {
    format!("body larger than the {limit} bytes this boot may still load")
}

/// How the body ends.
enum Framing {
    Length(usize),
    Chunked(Dechunker),
    UntilClose,
}

/// A response read as its segments arrive: the head once it is complete, then the body
/// decoded on the fly.
pub struct Reader {
    limit: usize,
    head_buf: Vec<u8>,
    head: Option<(Head, Framing)>,
    body: Vec<u8>,
}

impl Reader {
    /// A reader that refuses bodies larger than `limit`.
    pub fn new(limit: usize) -> Reader {
        Reader {
            limit,
            head_buf: Vec::new(),
            head: None,
            body: Vec::new(),
        }
    }

    pub fn feed(&mut self, data: &[u8]) -> Result<(), String> {
        let Some((_, framing)) = &mut self.head else {
            // Only the new bytes (and three before them) can complete the blank line.
            let from = self.head_buf.len().saturating_sub(3);
            self.head_buf.extend_from_slice(data);
            if self.head_buf.len() <= MAX_HEAD
                && !self.head_buf[from..].windows(4).any(|w| w == b"\r\n\r\n")
            {
                return Ok(());
            }
            let Some(head) = parse_head(&self.head_buf)? else {
                return Ok(());
            };
            let rest = self.head_buf.split_off(head.len);
            self.head_buf = Vec::new();
            let framing = if head.chunked {
                Framing::Chunked(Dechunker::new(self.limit))
            } else if let Some(n) = head.content_length {
                if n > self.limit as u64 {
                    return Err(format!(
                        "Content-Length {n} is more than the {} bytes this boot may still load",
                        self.limit
                    ));
                }
                Framing::Length(n as usize)
            } else {
                Framing::UntilClose
            };
            self.head = Some((head, framing));
            return self.feed(&rest);
        };
        match framing {
            Framing::Chunked(c) => c.feed(data)?,
            Framing::Length(n) => {
                let k = (*n - self.body.len()).min(data.len());
                self.body.extend_from_slice(&data[..k]);
            }
            Framing::UntilClose => {
                if data.len() > self.limit - self.body.len() {
                    return Err(too_large(self.limit));
                }
                self.body.extend_from_slice(data);
            }
        }
        Ok(())
    }

    /// The response, once complete; `eof` when the server has closed the connection.
    pub fn complete(&mut self, eof: bool) -> Result<Option<(Head, Vec<u8>)>, String> {
        let Some((_, framing)) = &mut self.head else {
            return if eof {
                Err("connection closed before the response head ended".into())
            } else {
                Ok(None)
            };
        };
        let done = match framing {
            Framing::Chunked(c) if c.done() => {
                self.body = std::mem::take(&mut c.out);
                true
            }
            Framing::Chunked(_) if eof => {
                return Err("connection closed inside a chunked body".into())
            }
            Framing::Chunked(_) => false,
            Framing::Length(n) if self.body.len() == *n => true,
            Framing::Length(n) if eof => {
                return Err(format!(
                    "connection closed after {} of {n} bytes",
                    self.body.len()
                ))
            }
            Framing::Length(_) => false,
            Framing::UntilClose => eof,
        };
        if !done {
            return Ok(None);
        }
        let (head, _) = self.head.take().expect("head parsed");
        Ok(Some((head, std::mem::take(&mut self.body))))
    }
}

/// The body, if `buf` (head and all) holds a complete response; `eof` when the server closed.
pub fn body(buf: &[u8], eof: bool) -> Result<Option<(Head, Vec<u8>)>, String> {
    let mut r = Reader::new(super::MAX_TOTAL);
    r.feed(buf)?;
    r.complete(eof)
}

/// Redirects followed per download, as a browser or iPXE would (a few, not forever).
const MAX_REDIRECTS: usize = 4;

/// Downloads `url` (an http URL), following redirects; returns the body and the URL it came
/// from in the end (what relative references in it are relative to). Errors name the URL.
/// Bodies larger than `limit` are refused as soon as that shows.
pub fn get(stack: &mut Stack, url: &Url, limit: usize) -> Result<(Vec<u8>, Url), String> {
    let mut url = url.clone();
    for _ in 0..=MAX_REDIRECTS {
        match get_once(stack, &url, limit).map_err(|e| format!("HTTP GET {url}: {e}"))? {
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

fn get_once(stack: &mut Stack, url: &Url, limit: usize) -> Result<Response, String> {
    let sock = tcp::Socket::new(
        tcp::SocketBuffer::new(vec![0; 256 << 10]),
        tcp::SocketBuffer::new(vec![0; 4 << 10]),
    );
    let h = stack.sockets.add(sock);
    let r = fetch(stack, h, url, limit);
    stack.sockets.get_mut::<tcp::Socket>(h).abort();
    stack.run_until(Instant::now(), |_| Some(()));
    stack.remove(h);
    r
}

fn fetch(
    stack: &mut Stack,
    h: smoltcp::iface::SocketHandle,
    url: &Url,
    limit: usize,
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
    let mut received = 0usize;
    let mut reader = Reader::new(limit);
    loop {
        let step = stack.run_until(Instant::now() + IDLE_TIMEOUT, |s| {
            let t = s.get_mut::<tcp::Socket>(h);
            let mut progressed = Ok(false);
            if sent < req.len() && t.can_send() {
                sent += t.send_slice(&req.as_bytes()[sent..]).unwrap_or(0);
            }
            while t.can_recv() && progressed.is_ok() {
                match t.recv(|b| (b.len(), reader.feed(b).map(|()| b.len()))) {
                    Ok(Ok(n)) if n > 0 => {
                        received += n;
                        progressed = Ok(true);
                    }
                    Ok(Err(e)) => progressed = Err(e),
                    _ => break,
                }
            }
            let eof = !t.may_recv();
            match progressed {
                Err(e) => Some(Err(e)),
                Ok(p) => (p || eof).then_some(Ok(eof)),
            }
        });
        let Some(eof) = step else {
            return Err(format!(
                "server silent for {} s after {received} bytes",
                IDLE_TIMEOUT.as_secs(),
            ));
        };
        let eof = eof?;
        if let Some((head, data)) = reader.complete(eof)? {
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
        let dechunk = |b: &[u8]| {
            let mut d = Dechunker::new(100);
            d.feed(b).map(|()| d.done())
        };
        assert!(dechunk(b"zz\r\n").is_err());
        assert!(dechunk(b"2\r\nabcd").is_err());
        assert!(dechunk(b"2\nab\r\n").is_err(), "a bare LF ends no line");
        assert_eq!(
            dechunk(b"2\r\nab\r"),
            Ok(false),
            "a chunk split before its LF"
        );
        assert_eq!(dechunk(b"0\r\nX-T: 1\r\n\r\ntrailing junk"), Ok(true));
    }

    #[test]
    fn bodies_over_the_limit_are_refused_before_they_arrive() {
        let head = "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n";
        let mut r = Reader::new(16);
        r.feed(head.as_bytes()).unwrap();
        r.feed(b"10\r\n").unwrap();
        r.feed(&[b'a'; 16]).unwrap();
        let e = r.feed(b"\r\n1\r\n").unwrap_err();
        assert!(e.contains("16 bytes this boot may still load"), "{e}");
        let mut r = Reader::new(16);
        let e = r
            .feed(b"HTTP/1.1 200 OK\r\nContent-Length: 17\r\n\r\n")
            .unwrap_err();
        assert!(e.contains("Content-Length 17"), "{e}");
        let mut r = Reader::new(16);
        r.feed(b"HTTP/1.0 200 OK\r\n\r\n0123456789").unwrap();
        assert!(
            r.feed(b"0123456789").is_err(),
            "until-close body over the limit"
        );
    }

    /// A chunked body arriving in TCP-sized segments is decoded as it comes: the old loop
    /// re-decoded everything received after each segment (quadratic: minutes for this).
    #[test]
    fn a_large_chunked_body_in_small_segments_decodes_in_linear_time() {
        let mut wire = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n".to_vec();
        let mut want = Vec::new();
        for i in 0..4096u32 {
            let chunk: Vec<u8> = (0..4096u32).map(|j| (i ^ j) as u8).collect();
            wire.extend_from_slice(format!("{:x}\r\n", chunk.len()).as_bytes());
            wire.extend_from_slice(&chunk);
            wire.extend_from_slice(b"\r\n");
            want.extend_from_slice(&chunk);
        }
        wire.extend_from_slice(b"0\r\n\r\n");
        let t = std::time::Instant::now();
        let mut r = Reader::new(crate::netboot::MAX_TOTAL);
        let mut got = None;
        for seg in wire.chunks(1460) {
            r.feed(seg).unwrap();
            if let Some(done) = r.complete(false).unwrap() {
                got = Some(done.1);
            }
        }
        assert!(got.as_ref() == Some(&want), "16 MiB body decoded intact");
        assert!(
            t.elapsed() < std::time::Duration::from_secs(30),
            "16 MiB in 1460-byte segments took {:?}",
            t.elapsed()
        );
    }

    #[test]
    fn random_responses_never_panic_and_decode_split_as_whole() {
        let mut rng = crate::netboot::tests::Rng(5);
        let seeds: [&[u8]; 3] = [
            b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\nabcdef",
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3;x\r\nabc\r\n2\r\nde\r\n0\r\nT: 1\r\n\r\n",
            b"HTTP/1.0 404 Not Found\r\nServer: x\r\n\r\nnope",
        ];
        for i in 0..40_000 {
            // Half the mutations from HTTP's own alphabet, half any byte.
            let alphabet = (i % 4 < 2).then_some(&b"0123456789abcdef\r\n;: "[..]);
            let p = rng.mutate(seeds[i % 3], alphabet);
            let eof = i % 2 == 0;
            assert_eq!(
                crate::fuzzing::http_split_vs_whole(&p, 1 + rng.below(7), eof),
                Ok(()),
                "{p:?}"
            );
        }
    }
}
