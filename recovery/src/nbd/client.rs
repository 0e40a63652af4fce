//! The NBD client: just
//! what a capture of a running QEMU guest needs: fixed newstyle negotiation over a Unix
//! socket, structured replies, `NBD_OPT_SET_META_CONTEXT` for `base:allocation` and
//! `qemu:dirty-bitmap:NAME`, `NBD_CMD_READ` and `NBD_CMD_BLOCK_STATUS`.
//!
//! Everything the server sends is parsed by the pure functions at the bottom (fuzzed by
//! `recovery/fuzz nbd_reply`): lengths are checked against what was asked before anything is
//! allocated, and a reply for another request or beyond the requested range is an error.

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::sync::Mutex;
use std::time::Duration;

use anyhow::{bail, Context, Result};

use super::*;

/// Largest read sent in one request (QEMU's server accepts up to 32 MiB).
pub const MAX_READ: u32 = 4 << 20;
/// Largest option reply or chunk payload accepted from a server (bounded allocations).
const MAX_PAYLOAD: u32 = MAX_READ + 64;
/// Block status is asked for at most this much at once (descriptors stay few).
const STATUS_SPAN: u64 = 1 << 30;

/// One extent of a block status reply.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Extent {
    pub length: u32,
    pub flags: u32,
}

/// A parsed structured reply chunk header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ChunkHeader {
    pub flags: u16,
    pub kind: u16,
    pub cookie: u64,
    pub length: u32,
}

/// A connection to one export.
pub struct Client {
    stream: UnixStream,
    size: u64,
    /// Meta context ids by name, as the server assigned them.
    contexts: Vec<(u32, String)>,
    cookie: u64,
}

impl Client {
    /// Connects to `socket`, negotiates structured replies and the meta `contexts`, and opens
    /// `export`.
    pub fn connect(socket: &Path, export: &str, contexts: &[&str]) -> Result<Client> {
        let stream = UnixStream::connect(socket)
            .with_context(|| format!("NBD server {}", socket.display()))?;
        stream.set_read_timeout(Some(Duration::from_secs(60)))?;
        let mut c = Client {
            stream,
            size: 0,
            contexts: Vec::new(),
            cookie: 0,
        };
        c.handshake(export, contexts)
            .with_context(|| format!("NBD export {export:?} on {}", socket.display()))?;
        Ok(c)
    }

    pub fn size(&self) -> u64 {
        self.size
    }

    fn handshake(&mut self, export: &str, contexts: &[&str]) -> Result<()> {
        let mut greeting = [0u8; 18];
        self.stream.read_exact(&mut greeting)?;
        let flags = parse_greeting(&greeting)?;
        if flags & FLAG_FIXED_NEWSTYLE == 0 {
            bail!("the server does not speak fixed newstyle");
        }
        let client_flags = u32::from(FLAG_FIXED_NEWSTYLE | (flags & FLAG_NO_ZEROES));
        self.stream.write_all(&client_flags.to_be_bytes())?;

        self.option(OPT_STRUCTURED_REPLY, &[])?;
        let (kind, _) = self.option_reply(OPT_STRUCTURED_REPLY)?;
        if kind != REP_ACK {
            bail!("the server refused structured replies (reply {kind:#x})");
        }

        if !contexts.is_empty() {
            let mut data = name_field(export);
            data.extend((contexts.len() as u32).to_be_bytes());
            for q in contexts {
                data.extend(name_field(q));
            }
            self.option(OPT_SET_META_CONTEXT, &data)?;
            loop {
                match self.option_reply(OPT_SET_META_CONTEXT)? {
                    (REP_ACK, _) => break,
                    (REP_META_CONTEXT, payload) => {
                        self.contexts.push(parse_meta_context(&payload)?)
                    }
                    (kind, payload) => bail!(
                        "meta contexts {contexts:?}: server says {kind:#x} {}",
                        String::from_utf8_lossy(&payload)
                    ),
                }
            }
            for q in contexts {
                if !self.contexts.iter().any(|(_, n)| n == q) {
                    bail!("the server does not offer meta context {q:?}");
                }
            }
        }

        let mut data = name_field(export);
        data.extend(0u16.to_be_bytes()); // no extra info requests: INFO_EXPORT always comes
        self.option(OPT_GO, &data)?;
        let mut size = None;
        loop {
            match self.option_reply(OPT_GO)? {
                (REP_ACK, _) => break,
                (REP_INFO, payload) => {
                    if let Some(s) = parse_info_export(&payload)? {
                        size = Some(s);
                    }
                }
                (kind, payload) => bail!(
                    "server refused the export: {kind:#x} {}",
                    String::from_utf8_lossy(&payload)
                ),
            }
        }
        self.size = size.context("the server did not say the export's size")?;
        Ok(())
    }

    fn option(&mut self, opt: u32, data: &[u8]) -> Result<()> {
        let mut b = Vec::with_capacity(16 + data.len());
        b.extend(IHAVEOPT.to_be_bytes());
        b.extend(opt.to_be_bytes());
        b.extend((data.len() as u32).to_be_bytes());
        b.extend(data);
        self.stream.write_all(&b)?;
        Ok(())
    }

    /// One option reply for `opt`: (reply type, payload).
    fn option_reply(&mut self, opt: u32) -> Result<(u32, Vec<u8>)> {
        let mut h = [0u8; 20];
        self.stream.read_exact(&mut h)?;
        let (got, kind, len) = parse_option_reply_header(&h)?;
        if got != opt {
            bail!("reply to option {got}, expected {opt}");
        }
        let mut payload = vec![0u8; len as usize];
        self.stream.read_exact(&mut payload)?;
        if kind & REP_ERROR_BIT != 0 {
            bail!(
                "server error {kind:#x} for option {opt}: {}",
                String::from_utf8_lossy(&payload)
            );
        }
        Ok((kind, payload))
    }

    fn request(&mut self, cmd: u16, offset: u64, length: u32) -> Result<u64> {
        self.cookie += 1;
        let mut b = [0u8; 28];
        b[0..4].copy_from_slice(&REQUEST_MAGIC.to_be_bytes());
        b[6..8].copy_from_slice(&cmd.to_be_bytes());
        b[8..16].copy_from_slice(&self.cookie.to_be_bytes());
        b[16..24].copy_from_slice(&offset.to_be_bytes());
        b[24..28].copy_from_slice(&length.to_be_bytes());
        self.stream.write_all(&b)?;
        Ok(self.cookie)
    }

    /// The next reply chunk for `cookie`: header and payload.
    fn chunk(&mut self, cookie: u64) -> Result<(ChunkHeader, Vec<u8>)> {
        let mut m = [0u8; 4];
        self.stream.read_exact(&mut m)?;
        let magic = u32::from_be_bytes(m);
        if magic == SIMPLE_REPLY_MAGIC {
            // Only errors come as simple replies once structured replies are on.
            let mut rest = [0u8; 12];
            self.stream.read_exact(&mut rest)?;
            let err = u32::from_be_bytes(rest[0..4].try_into().unwrap());
            bail!("server error {err} (simple reply)");
        }
        let mut h = [0u8; 16];
        self.stream.read_exact(&mut h)?;
        let header = parse_chunk_header(magic, &h)?;
        if header.cookie != cookie {
            bail!("reply for request {}, expected {cookie}", header.cookie);
        }
        let mut payload = vec![0u8; header.length as usize];
        self.stream.read_exact(&mut payload)?;
        if header.kind & REPLY_TYPE_ERROR_BIT != 0 {
            bail!("server error: {}", parse_error_payload(&payload));
        }
        Ok((header, payload))
    }

    /// Reads `buf.len()` bytes at `offset`.
    pub fn read(&mut self, buf: &mut [u8], offset: u64) -> Result<()> {
        let end = offset
            .checked_add(buf.len() as u64)
            .filter(|&e| e <= self.size)
            .context("read past the end of the export")?;
        let mut pos = offset;
        while pos < end {
            let n = (end - pos).min(u64::from(MAX_READ)) as u32;
            let cookie = self.request(CMD_READ, pos, n)?;
            let part = &mut buf[(pos - offset) as usize..(pos - offset) as usize + n as usize];
            loop {
                let (h, payload) = self.chunk(cookie)?;
                place_read_chunk(&h, &payload, pos, part)?;
                if h.flags & REPLY_FLAG_DONE != 0 {
                    break;
                }
            }
            pos += u64::from(n);
        }
        Ok(())
    }

    /// Extents of `[offset, offset+length)` in meta context `context`, in order, covering
    /// the range exactly.
    pub fn block_status(&mut self, context: &str, offset: u64, length: u64) -> Result<Vec<Extent>> {
        let id = self
            .contexts
            .iter()
            .find(|(_, n)| n == context)
            .map(|(i, _)| *i)
            .with_context(|| format!("meta context {context:?} was not negotiated"))?;
        let end = offset
            .checked_add(length)
            .filter(|&e| e <= self.size)
            .context("block status past the end of the export")?;
        let mut out = Vec::new();
        let mut pos = offset;
        while pos < end {
            let n = (end - pos).min(STATUS_SPAN) as u32;
            let cookie = self.request(CMD_BLOCK_STATUS, pos, n)?;
            let mut got = 0u64;
            loop {
                let (h, payload) = self.chunk(cookie)?;
                if h.kind == REPLY_TYPE_BLOCK_STATUS {
                    let (ctx, extents) = parse_block_status(&payload)?;
                    if ctx == id {
                        for e in extents {
                            // Servers may describe more than asked; keep what was asked.
                            let len = u64::from(e.length).min(u64::from(n) - got);
                            if len > 0 {
                                out.push(Extent {
                                    length: len as u32,
                                    flags: e.flags,
                                });
                                got += len;
                            }
                        }
                    }
                } else if h.kind != REPLY_TYPE_NONE {
                    bail!("unexpected reply type {} to block status", h.kind);
                }
                if h.flags & REPLY_FLAG_DONE != 0 {
                    break;
                }
            }
            if got == 0 {
                bail!("the server described no extent at {pos}");
            }
            pos += got;
        }
        Ok(out)
    }

    /// Byte ranges (offset, length) whose extents in `context` have any of `flags`.
    pub fn ranges_with(&mut self, context: &str, flags: u32) -> Result<Vec<(u64, u64)>> {
        let extents = self.block_status(context, 0, self.size)?;
        Ok(ranges(&extents, |f| f & flags != 0))
    }

    /// Byte ranges that may hold data (neither a hole nor known zeros).
    pub fn data_ranges(&mut self) -> Result<Vec<(u64, u64)>> {
        let extents = self.block_status("base:allocation", 0, self.size)?;
        Ok(ranges(&extents, |f| f & (STATE_HOLE | STATE_ZERO) == 0))
    }

    /// Ends the session politely.
    pub fn disconnect(mut self) {
        let _ = self.request(CMD_DISC, 0, 0);
    }
}

/// Merged byte ranges (offset, length) of consecutive `extents` from 0 whose flags match.
pub fn ranges(extents: &[Extent], keep: impl Fn(u32) -> bool) -> Vec<(u64, u64)> {
    let mut out: Vec<(u64, u64)> = Vec::new();
    let mut pos = 0u64;
    for e in extents {
        let len = u64::from(e.length);
        if keep(e.flags) {
            match out.last_mut() {
                Some((s, l)) if *s + *l == pos => *l += len,
                _ => out.push((pos, len)),
            }
        }
        pos += len;
    }
    out
}

/// An export read through one client (requests serialized), as the archive's imports read.
pub struct Reader {
    client: Mutex<Client>,
    size: u64,
    name: String,
}

impl Reader {
    pub fn new(client: Client, name: &str) -> Reader {
        Reader {
            size: client.size(),
            client: Mutex::new(client),
            name: name.to_string(),
        }
    }

    fn client(&self) -> std::sync::MutexGuard<'_, Client> {
        self.client.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Byte ranges set in `qemu:dirty-bitmap:NAME` (negotiated at connect).
    pub fn dirty_ranges(&self, bitmap: &str) -> Result<Vec<(u64, u64)>> {
        self.client()
            .ranges_with(&format!("qemu:dirty-bitmap:{bitmap}"), STATE_DIRTY)
    }
}

impl ignite_archive::ImageReader for Reader {
    fn size(&self) -> u64 {
        self.size
    }

    fn read_at(&self, buf: &mut [u8], offset: u64) -> std::io::Result<()> {
        self.client()
            .read(buf, offset)
            .map_err(|e| std::io::Error::other(format!("{e:#}")))
    }

    fn data_ranges(&self) -> std::io::Result<Vec<(u64, u64)>> {
        self.client()
            .data_ranges()
            .map_err(|e| std::io::Error::other(format!("{e:#}")))
    }

    fn name(&self) -> String {
        self.name.clone()
    }
}

// ---- parsing what the server sends (pure; fuzzed) ----

/// The 18-byte greeting: magic, IHAVEOPT, handshake flags.
pub fn parse_greeting(b: &[u8; 18]) -> Result<u16> {
    if be64(b, 0) != NBDMAGIC || be64(b, 8) != IHAVEOPT {
        bail!("not an NBD newstyle server");
    }
    Ok(be16(b, 16))
}

/// An option reply header: (option, reply type, payload length).
pub fn parse_option_reply_header(h: &[u8; 20]) -> Result<(u32, u32, u32)> {
    if be64(h, 0) != OPT_REPLY_MAGIC {
        bail!("bad option reply magic");
    }
    let len = be32(h, 16);
    if len > MAX_PAYLOAD {
        bail!("option reply of {len} bytes is too large");
    }
    Ok((be32(h, 8), be32(h, 12), len))
}

/// `NBD_REP_META_CONTEXT`: (context id, name).
pub fn parse_meta_context(p: &[u8]) -> Result<(u32, String)> {
    if p.len() < 4 {
        bail!("meta context reply too short");
    }
    Ok((be32(p, 0), String::from_utf8_lossy(&p[4..]).into_owned()))
}

/// `NBD_REP_INFO`: the export size from `NBD_INFO_EXPORT`, `None` for other info types.
pub fn parse_info_export(p: &[u8]) -> Result<Option<u64>> {
    if p.len() < 2 {
        bail!("info reply too short");
    }
    if be16(p, 0) != INFO_EXPORT {
        return Ok(None);
    }
    if p.len() != 12 {
        bail!("export info of {} bytes, expected 12", p.len());
    }
    Ok(Some(be64(p, 2)))
}

/// A structured reply chunk header (after its magic).
pub fn parse_chunk_header(magic: u32, h: &[u8; 16]) -> Result<ChunkHeader> {
    if magic != STRUCTURED_REPLY_MAGIC {
        bail!("bad reply magic {magic:#x}");
    }
    let length = be32(h, 12);
    if length > MAX_PAYLOAD {
        bail!("reply chunk of {length} bytes is too large");
    }
    Ok(ChunkHeader {
        flags: be16(h, 0),
        kind: be16(h, 2),
        cookie: be64(h, 4),
        length,
    })
}

/// An error chunk's message.
pub fn parse_error_payload(p: &[u8]) -> String {
    if p.len() < 6 {
        return "(malformed error)".into();
    }
    let code = be32(p, 0);
    let len = (be16(p, 4) as usize).min(p.len() - 6);
    format!("{} (errno {code})", String::from_utf8_lossy(&p[6..6 + len]))
}

/// Places one read reply chunk into `part` (the buffer for the request at `start`).
pub fn place_read_chunk(h: &ChunkHeader, p: &[u8], start: u64, part: &mut [u8]) -> Result<()> {
    let span = |off: u64, len: u64| -> Result<std::ops::Range<usize>> {
        let rel = off
            .checked_sub(start)
            .context("reply before the requested range")?;
        let end = rel.checked_add(len).context("reply range overflows")?;
        if end > part.len() as u64 {
            bail!("reply beyond the requested range");
        }
        Ok(rel as usize..end as usize)
    };
    match h.kind {
        REPLY_TYPE_NONE => Ok(()),
        REPLY_TYPE_OFFSET_DATA => {
            if p.len() < 8 {
                bail!("data chunk too short");
            }
            let r = span(be64(p, 0), (p.len() - 8) as u64)?;
            part[r].copy_from_slice(&p[8..]);
            Ok(())
        }
        REPLY_TYPE_OFFSET_HOLE => {
            if p.len() != 12 {
                bail!("hole chunk of {} bytes", p.len());
            }
            let r = span(be64(p, 0), u64::from(be32(p, 8)))?;
            part[r].fill(0);
            Ok(())
        }
        k => bail!("unexpected reply type {k} to a read"),
    }
}

/// A block status chunk: (context id, extents).
pub fn parse_block_status(p: &[u8]) -> Result<(u32, Vec<Extent>)> {
    if p.len() < 4 || !(p.len() - 4).is_multiple_of(8) {
        bail!("block status chunk of {} bytes", p.len());
    }
    let extents = p[4..]
        .chunks(8)
        .map(|c| Extent {
            length: be32(c, 0),
            flags: be32(c, 4),
        })
        .collect();
    Ok((be32(p, 0), extents))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges_merge_matching_extents() {
        let e = |length, flags| Extent { length, flags };
        let ex = [e(10, 1), e(5, 1), e(7, 0), e(3, 1)];
        assert_eq!(ranges(&ex, |f| f == 1), vec![(0, 15), (22, 3)]);
        assert_eq!(ranges(&ex, |f| f == 0), vec![(15, 7)]);
    }

    #[test]
    fn replies_outside_the_request_are_refused() {
        let h = ChunkHeader {
            flags: 1,
            kind: REPLY_TYPE_OFFSET_DATA,
            cookie: 1,
            length: 12,
        };
        let mut part = [0u8; 8];
        let mut p = 100u64.to_be_bytes().to_vec();
        p.extend([1, 2, 3, 4]);
        place_read_chunk(&h, &p, 100, &mut part).unwrap();
        assert_eq!(&part[..4], &[1, 2, 3, 4]);
        place_read_chunk(&h, &p, 96, &mut part).unwrap();
        assert!(place_read_chunk(&h, &p, 101, &mut part).is_err()); // before the range
        assert!(place_read_chunk(&h, &p, 90, &mut part).is_err()); // past its end
        let hole = ChunkHeader {
            kind: REPLY_TYPE_OFFSET_HOLE,
            ..h
        };
        let mut p = 100u64.to_be_bytes().to_vec();
        p.extend(u32::MAX.to_be_bytes());
        assert!(place_read_chunk(&hole, &p, 100, &mut part).is_err());
        assert!(parse_block_status(&[0, 0, 0, 1, 0, 0]).is_err());
        let big = [0u8; 16];
        let mut hdr = big;
        hdr[12..16].copy_from_slice(&u32::MAX.to_be_bytes());
        assert!(parse_chunk_header(STRUCTURED_REPLY_MAGIC, &hdr).is_err());
    }
}
