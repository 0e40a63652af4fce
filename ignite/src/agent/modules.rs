//! Loading the kernel modules the initramfs carries, dependencies first, from its
//! `modules.dep` (which the initramfs builder wrote for exactly those modules).

use std::collections::HashSet;
use std::path::Path;

use anyhow::{Context, Result};

/// `modules.dep` as (module path, its dependencies in the order modprobe lists them).
pub fn parse_dep(text: &str) -> Vec<(String, Vec<String>)> {
    text.lines()
        .filter_map(|l| {
            let (m, deps) = l.split_once(':')?;
            Some((
                m.trim().to_string(),
                deps.split_whitespace().map(String::from).collect(),
            ))
        })
        .collect()
}

/// Every module of `deps` in an order where each comes after all it depends on.
pub fn load_order(deps: &[(String, Vec<String>)]) -> Vec<String> {
    let mut order = Vec::new();
    let mut seen = HashSet::new();
    for (m, d) in deps {
        // modules.dep lists the full closure, the module that needs nothing else last.
        for x in d.iter().rev().chain(std::iter::once(m)) {
            if seen.insert(x.clone()) {
                order.push(x.clone());
            }
        }
    }
    order
}

/// finit_module(2); a module already loaded is fine.
fn load(path: &Path) -> std::io::Result<()> {
    let f = std::fs::File::open(path)?;
    match rustix::system::finit_module(&f, c"", 0) {
        Err(rustix::io::Errno::EXIST) => Ok(()),
        r => r.map_err(std::io::Error::from),
    }
}

/// Loads every module under `dir` (`/lib/modules/<release>`). Returns how many loaded and
/// the failures (a driver for hardware that is absent may refuse; that is not fatal).
pub fn load_all(dir: &Path) -> Result<(usize, Vec<String>)> {
    let dep = dir.join("modules.dep");
    let text = std::fs::read_to_string(&dep).with_context(|| {
        format!(
            "cannot read {}; the initramfs has no modules for this kernel",
            dep.display()
        )
    })?;
    let mut loaded = 0;
    let mut failed = Vec::new();
    for m in load_order(&parse_dep(&text)) {
        match load(&dir.join(&m)) {
            Ok(()) => loaded += 1,
            Err(e) => failed.push(format!("{m}: {e}")),
        }
    }
    Ok((loaded, failed))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dependencies_load_first() {
        let text = "kernel/drivers/block/virtio_blk.ko: kernel/drivers/virtio/virtio_ring.ko kernel/drivers/virtio/virtio.ko\n\
                    kernel/drivers/virtio/virtio.ko:\n\
                    kernel/fs/ext4/ext4.ko: kernel/fs/jbd2/jbd2.ko kernel/fs/mbcache.ko kernel/lib/crc16.ko\n";
        let order = load_order(&parse_dep(text));
        let pos = |m: &str| order.iter().position(|x| x.ends_with(m)).unwrap();
        assert!(pos("virtio.ko") < pos("virtio_ring.ko"));
        assert!(pos("virtio_ring.ko") < pos("virtio_blk.ko"));
        assert!(pos("jbd2.ko") < pos("ext4.ko") && pos("crc16.ko") < pos("ext4.ko"));
        assert_eq!(order.len(), 7);
    }
}
