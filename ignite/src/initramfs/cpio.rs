//! The cpio "newc" archive writer: the format of initramfs images (the kernel unpacks it
//! plain or compressed).

use std::io::Write;

pub enum Entry {
    Dir {
        path: String,
        mode: u32,
    },
    File {
        path: String,
        mode: u32,
        data: Vec<u8>,
    },
    CharDev {
        path: String,
        mode: u32,
        major: u32,
        minor: u32,
    },
    Symlink {
        path: String,
        target: String,
    },
}

fn header(out: &mut Vec<u8>, ino: u32, mode: u32, size: usize, rdev: (u32, u32), name: &str) {
    let fields = [
        ino,
        mode,
        0,
        0,
        1,
        0,
        size as u32,
        0,
        0,
        rdev.0,
        rdev.1,
        name.len() as u32 + 1,
        0,
    ];
    out.extend_from_slice(b"070701");
    for f in fields {
        // Writing to a Vec cannot fail.
        let _ = write!(out, "{f:08x}");
    }
    out.extend_from_slice(name.as_bytes());
    out.push(0);
    while !out.len().is_multiple_of(4) {
        out.push(0);
    }
}

/// The archive bytes for `entries` (parents must come before children).
pub fn cpio(entries: &[Entry]) -> Vec<u8> {
    let mut out = Vec::new();
    for (i, e) in entries.iter().enumerate() {
        let ino = i as u32 + 1;
        match e {
            Entry::Dir { path, mode } => header(&mut out, ino, 0o040000 | mode, 0, (0, 0), path),
            Entry::CharDev {
                path,
                mode,
                major,
                minor,
            } => header(&mut out, ino, 0o020000 | mode, 0, (*major, *minor), path),
            Entry::File { path, mode, data } => {
                header(&mut out, ino, 0o100000 | mode, data.len(), (0, 0), path);
                out.extend_from_slice(data);
                while !out.len().is_multiple_of(4) {
                    out.push(0);
                }
            }
            Entry::Symlink { path, target } => {
                header(&mut out, ino, 0o120777, target.len(), (0, 0), path);
                out.extend_from_slice(target.as_bytes());
                while !out.len().is_multiple_of(4) {
                    out.push(0);
                }
            }
        }
    }
    header(&mut out, 0, 0, 0, (0, 0), "TRAILER!!!");
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpio_layout() {
        let a = cpio(&[Entry::File {
            path: "init".into(),
            mode: 0o755,
            data: b"abc".to_vec(),
        }]);
        assert!(a.starts_with(b"070701"));
        assert_eq!(a.len() % 4, 0);
        // header 110 + "init\0" (5) padded to 116, data 3 padded to 4.
        assert_eq!(&a[116..119], b"abc");
        assert_eq!(&a[120..126], b"070701");
        assert!(a.windows(10).any(|w| w == b"TRAILER!!!"));
        // mode field of the file: 0o100755.
        assert_eq!(&a[14..22], format!("{:08x}", 0o100755).as_bytes());
    }
}
