//! The target root and what is mounted under it: the plan's partitions (parents first) and,
//! while something runs in the chroot, /proc, /sys and /dev. Everything is unmounted children
//! first, by `Unmount`, or when the target is dropped after a failure.

use std::collections::HashMap;
use std::ffi::CString;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use ignite_profiles::Fs;

use crate::log::Log;

pub struct Mounted {
    pub device: String,
    /// Inside the target (`/`, `/boot/efi`).
    pub mount: String,
    pub fs: Fs,
    pub options: Vec<String>,
}

pub struct Target {
    root: PathBuf,
    /// The UUID each formatted device was given.
    pub uuids: HashMap<String, String>,
    pub mounted: Vec<Mounted>,
    /// Every mount point made, in order (partitions and binds), for unmounting in reverse.
    stack: Vec<PathBuf>,
}

fn cstr(p: &Path) -> Result<CString> {
    CString::new(p.as_os_str().as_bytes()).with_context(|| format!("{} has a NUL", p.display()))
}

/// Mount flags for the options mount(2) takes as flags; the rest go to the file system.
fn split_options(options: &[String]) -> (libc::c_ulong, String) {
    let mut flags = 0;
    let mut data = Vec::new();
    for o in options {
        match o.as_str() {
            "defaults" | "rw" | "auto" | "noauto" | "nofail" | "user" | "nouser" => {}
            "ro" => flags |= libc::MS_RDONLY,
            "noatime" => flags |= libc::MS_NOATIME,
            "nodiratime" => flags |= libc::MS_NODIRATIME,
            "relatime" => flags |= libc::MS_RELATIME,
            "strictatime" => flags |= libc::MS_STRICTATIME,
            "nosuid" => flags |= libc::MS_NOSUID,
            "nodev" => flags |= libc::MS_NODEV,
            "noexec" => flags |= libc::MS_NOEXEC,
            "sync" => flags |= libc::MS_SYNCHRONOUS,
            // Applies only at boot, when the file system has an error.
            o if o.starts_with("errors=") => {}
            o => data.push(o.to_string()),
        }
    }
    (flags, data.join(","))
}

pub fn fs_type(fs: Fs) -> &'static str {
    match fs {
        Fs::Ext4 => "ext4",
        Fs::Xfs => "xfs",
        Fs::Vfat => "vfat",
        Fs::Swap => "swap",
    }
}

/// mount(2).
pub fn mount(
    source: &str,
    target: &Path,
    fstype: Option<&str>,
    flags: libc::c_ulong,
    data: &str,
) -> Result<()> {
    let src = CString::new(source)?;
    let dst = cstr(target)?;
    let ty = fstype.map(CString::new).transpose()?;
    let data = CString::new(data)?;
    // SAFETY: every pointer is a valid NUL-terminated string or null.
    let r = unsafe {
        libc::mount(
            src.as_ptr(),
            dst.as_ptr(),
            ty.as_ref().map_or(std::ptr::null(), |t| t.as_ptr()),
            flags,
            if data.as_bytes().is_empty() {
                std::ptr::null()
            } else {
                data.as_ptr().cast()
            },
        )
    };
    if r != 0 {
        bail!(
            "cannot mount {source} on {}: {}",
            target.display(),
            std::io::Error::last_os_error()
        );
    }
    Ok(())
}

/// umount2(2).
pub fn umount(p: &Path, flags: libc::c_int) -> std::io::Result<()> {
    let c = CString::new(p.as_os_str().as_bytes())?;
    // SAFETY: a valid path string.
    if unsafe { libc::umount2(c.as_ptr(), flags) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

impl Target {
    pub fn new(root: &Path) -> Result<Target> {
        std::fs::create_dir_all(root)
            .with_context(|| format!("target root {}: cannot create it", root.display()))?;
        Ok(Target {
            root: root.to_path_buf(),
            uuids: HashMap::new(),
            mounted: Vec::new(),
            stack: Vec::new(),
        })
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    /// `inside` (an absolute path in the installed system) as a path on this machine.
    pub fn path(&self, inside: &str) -> PathBuf {
        self.root.join(inside.trim_start_matches('/'))
    }

    pub fn mount(
        &mut self,
        device: &str,
        at: &str,
        fs: Fs,
        options: &[String],
        log: &mut Log,
    ) -> Result<()> {
        let dir = self.path(at);
        std::fs::create_dir_all(&dir)
            .with_context(|| format!("cannot create mount point {}", dir.display()))?;
        let (flags, data) = split_options(options);
        mount(device, &dir, Some(fs_type(fs)), flags, &data)?;
        log.line(&format!("mounted {device} on {}", dir.display()));
        self.stack.push(dir);
        self.mounted.push(Mounted {
            device: device.to_string(),
            mount: at.to_string(),
            fs,
            options: options.to_vec(),
        });
        Ok(())
    }

    /// Bind-mounts /proc, /sys and /dev of this machine into the target, for programs run
    /// in the chroot. Returns how many mounts to undo with [`Target::unbind`].
    pub fn bind_system(&mut self) -> Result<usize> {
        let before = self.stack.len();
        for d in ["proc", "sys", "dev"] {
            let dir = self.path(d);
            std::fs::create_dir_all(&dir)?;
            let r = mount(
                &format!("/{d}"),
                &dir,
                None,
                libc::MS_BIND | libc::MS_REC,
                "",
            );
            if let Err(e) = r {
                self.unbind(self.stack.len() - before)?;
                return Err(e);
            }
            self.stack.push(dir);
        }
        Ok(self.stack.len() - before)
    }

    /// Undoes the last `n` bind mounts.
    pub fn unbind(&mut self, n: usize) -> Result<()> {
        for _ in 0..n {
            if let Some(dir) = self.stack.pop() {
                // Recursive binds (/dev/pts, /sys/fs/cgroup...) go with a detaching unmount.
                umount(&dir, libc::MNT_DETACH)
                    .with_context(|| format!("cannot unmount {}", dir.display()))?;
            }
        }
        Ok(())
    }

    pub fn unmount_all(&mut self, log: &mut Log) -> Result<()> {
        rustix::fs::sync();
        while let Some(dir) = self.stack.pop() {
            umount(&dir, 0).with_context(|| format!("cannot unmount {}", dir.display()))?;
            log.line(&format!("unmounted {}", dir.display()));
        }
        self.mounted.clear();
        Ok(())
    }
}

impl Drop for Target {
    fn drop(&mut self) {
        // After a failure: leave nothing mounted, even if something still holds a file open.
        while let Some(dir) = self.stack.pop() {
            let _ = umount(&dir, libc::MNT_DETACH);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn options_split_into_flags_and_data() {
        let o: Vec<String> = ["noatime", "errors=remount-ro", "discard", "ro", "defaults"]
            .map(String::from)
            .to_vec();
        let (flags, data) = split_options(&o);
        assert_eq!(flags, libc::MS_NOATIME | libc::MS_RDONLY);
        assert_eq!(data, "discard");
    }
}
