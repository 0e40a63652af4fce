//! Whether a boot file is a PE image (what UEFI firmware runs) and whether it carries an
//! Authenticode signature, which Secure Boot firmware needs before it runs a file.
//!
//! Layout read: `MZ` at 0, the PE header's offset at 0x3c, `PE\0\0` there, the 20-byte COFF
//! header, then the optional header (magic 0x10b PE32 / 0x20b PE32+), whose data directory
//! 4 (the certificate table: file offset and size) is non-empty in a signed image. Whether
//! the signature is one the firmware trusts is the firmware's business: this only tells a
//! file nobody signed (iPXE as Debian ships it) from one somebody did (shim, GRUB, the
//! kernel).

/// Bytes of a file enough for [`signature`]: PE headers sit in the first few hundred bytes.
pub const HEADER_BYTES: usize = 4096;

/// What [`signature`] found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PeSignature {
    /// Not a PE image (or its headers are not within the bytes given).
    NotPe,
    /// A PE image without a certificate table.
    Unsigned,
    /// A PE image with a certificate table.
    Signed,
}

/// Reads the first bytes of a file (at least up to its optional header's data directories;
/// [`HEADER_BYTES`] is plenty for any real image).
pub fn signature(head: &[u8]) -> PeSignature {
    let u16_at = |at: usize| {
        head.get(at..at + 2)
            .map(|b| u16::from_le_bytes([b[0], b[1]]))
    };
    let u32_at = |at: usize| {
        head.get(at..at + 4)
            .map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    };
    if head.get(..2) != Some(b"MZ") {
        return PeSignature::NotPe;
    }
    let Some(pe) = u32_at(0x3c).map(|o| o as usize) else {
        return PeSignature::NotPe;
    };
    if pe.checked_add(4).and_then(|end| head.get(pe..end)) != Some(b"PE\0\0") {
        return PeSignature::NotPe;
    }
    let opt = pe + 24;
    // Where NumberOfRvaAndSizes sits, and where the data directories start.
    let (count_at, dirs_at) = match u16_at(opt) {
        Some(0x10b) => (opt + 92, opt + 96),
        Some(0x20b) => (opt + 108, opt + 112),
        _ => return PeSignature::NotPe,
    };
    const SECURITY: usize = 4;
    let Some(count) = u32_at(count_at) else {
        return PeSignature::NotPe;
    };
    if (count as usize) <= SECURITY {
        return PeSignature::Unsigned;
    }
    match u32_at(dirs_at + SECURITY * 8 + 4) {
        None => PeSignature::NotPe,
        Some(0) => PeSignature::Unsigned,
        Some(_) => PeSignature::Signed,
    }
}

/// [`signature`] of the file at `path` (its first [`HEADER_BYTES`]); `NotPe` when it
/// cannot be read.
pub fn file_signature(path: &std::path::Path) -> PeSignature {
    use std::io::Read;
    let mut head = Vec::with_capacity(HEADER_BYTES);
    match std::fs::File::open(path) {
        Ok(f) => match f.take(HEADER_BYTES as u64).read_to_end(&mut head) {
            Ok(_) => signature(&head),
            Err(_) => PeSignature::NotPe,
        },
        Err(_) => PeSignature::NotPe,
    }
}

/// The headers of a PE image (`magic` 0x10b PE32 or 0x20b PE32+) with `dirs` data
/// directories and a certificate table of `cert` bytes: for tests of code that handles boot
/// files (this crate's and the server's), which need no real image.
pub fn test_headers(magic: u16, dirs: u32, cert: u32) -> Vec<u8> {
    let mut b = vec![0u8; 512];
    b[..2].copy_from_slice(b"MZ");
    b[0x3c..0x40].copy_from_slice(&0x80u32.to_le_bytes());
    b[0x80..0x84].copy_from_slice(b"PE\0\0");
    let opt = 0x80 + 24;
    b[opt..opt + 2].copy_from_slice(&magic.to_le_bytes());
    let (count_at, dirs_at) = if magic == 0x20b {
        (opt + 108, opt + 112)
    } else {
        (opt + 92, opt + 96)
    };
    b[count_at..count_at + 4].copy_from_slice(&dirs.to_le_bytes());
    let cert_size = dirs_at + 4 * 8 + 4;
    b[cert_size..cert_size + 4].copy_from_slice(&cert.to_le_bytes());
    b
}

/// [`test_headers`] of a PE32+ image, signed or not.
pub fn test_image(signed: bool) -> Vec<u8> {
    test_headers(0x20b, 16, if signed { 0x5c8 } else { 0 })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_certificate_table() {
        assert_eq!(
            signature(&test_headers(0x20b, 16, 0x5c8)),
            PeSignature::Signed
        );
        assert_eq!(
            signature(&test_headers(0x10b, 16, 0x5c8)),
            PeSignature::Signed
        );
        assert_eq!(
            signature(&test_headers(0x20b, 16, 0)),
            PeSignature::Unsigned
        );
        assert_eq!(
            signature(&test_headers(0x20b, 4, 0x5c8)),
            PeSignature::Unsigned,
            "no directory 4"
        );
        assert_eq!(signature(&test_headers(0x107, 16, 1)), PeSignature::NotPe);
        assert_eq!(signature(b"\x7fELF"), PeSignature::NotPe);
        assert_eq!(signature(b""), PeSignature::NotPe);
    }

    #[test]
    fn truncated_and_hostile_headers_never_panic() {
        let full = test_headers(0x20b, 16, 8);
        // The certificate table's size field ends here.
        let needed = 0x80 + 24 + 112 + 4 * 8 + 8;
        for n in 0..full.len() {
            let signed = signature(&full[..n]) == PeSignature::Signed;
            assert_eq!(signed, n >= needed, "{n} bytes");
        }
        let mut far = full.clone();
        far[0x3c..0x40].copy_from_slice(&u32::MAX.to_le_bytes());
        assert_eq!(signature(&far), PeSignature::NotPe);
        let mut x = 0x2545_f491_4f6c_dd1du64;
        for _ in 0..20_000 {
            let mut b = full.clone();
            for _ in 0..4 {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                let i = (x as usize) % b.len();
                b[i] = (x >> 32) as u8;
            }
            signature(&b);
        }
    }

    /// Debian's iPXE (package ipxe, in scripts/deps/netboot.apt): the UEFI build is an
    /// unsigned PE image, the BIOS one no PE at all. (Signed files are checked where
    /// `ignite server` prepares shim and GRUB, and by the Secure Boot end-to-end test.)
    #[test]
    fn debian_ipxe_is_unsigned() {
        for (path, want) in [
            ("/usr/lib/ipxe/ipxe.efi", PeSignature::Unsigned),
            ("/usr/lib/ipxe/undionly.kpxe", PeSignature::NotPe),
        ] {
            let p = std::path::Path::new(path);
            if p.is_file() {
                assert_eq!(file_signature(p), want, "{path}");
            } else {
                assert!(
                    std::env::var_os("IGNITE_CI").is_none(),
                    "{path} missing (package ipxe)"
                );
                eprintln!("skipped: {path} not installed (package ipxe)");
            }
        }
    }
}
