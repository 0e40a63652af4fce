//! Loading the kernel modules the initramfs carries. The builder writes, for exactly those
//! modules, under `/lib/modules/<release>`:
//!
//! ```text
//! modules.dep      kernel/fs/xfs/xfs.ko: kernel/lib/libcrc32c.ko    (direct dependencies)
//! modules.alias    alias pci:v*d*sv*sd*bc01sc08i02* nvme            (kmod's format)
//! modules.always   ext4                                              (one name a line)
//! ```
//!
//! The `always` modules (file systems, checksums, packet sockets) load whatever the
//! hardware. Drivers load as devices ask for them, the way udev does it: each
//! `/sys/bus/*/devices/*/modalias` is matched against the alias patterns (globs, as modprobe
//! matches them) and every module that matches is loaded, dependencies first. Loading a bus
//! driver (virtio_pci, an HBA) makes new devices appear, so [`Modules::poll`] runs again and
//! again while the agent waits for its disks and NIC.

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};

/// `modules.dep` as (module path, its dependencies' paths).
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

/// `modules.alias` as (pattern, module name); comments and other lines are skipped.
pub fn parse_alias(text: &str) -> Vec<(String, String)> {
    text.lines()
        .filter_map(|l| {
            let mut w = l.split_whitespace();
            match (w.next(), w.next(), w.next()) {
                (Some("alias"), Some(pattern), Some(name)) => {
                    Some((pattern.to_string(), name.replace('-', "_")))
                }
                _ => None,
            }
        })
        .collect()
}

/// The name a module is asked for by: file stem, with `-` and `_` alike.
pub fn module_name(path: &str) -> String {
    let file = path.rsplit('/').next().unwrap_or(path);
    let stem = [".ko", ".ko.xz", ".ko.zst", ".ko.gz"]
        .iter()
        .find_map(|s| file.strip_suffix(s))
        .unwrap_or(file);
    stem.replace('-', "_")
}

/// fnmatch(3) without flags, as kmod matches aliases: `*` any run, `?` one character,
/// `[abc]`, `[a-z]`, `[!a]` one of a set; anything else itself.
pub fn glob_match(pattern: &str, text: &str) -> bool {
    let (p, t): (Vec<char>, Vec<char>) = (pattern.chars().collect(), text.chars().collect());
    let (mut pi, mut ti) = (0, 0);
    // Where the last `*` was, and the text position it is now taken to cover up to.
    let mut star: Option<(usize, usize)> = None;
    while ti < t.len() {
        let step = match p.get(pi) {
            Some('*') => {
                star = Some((pi, ti));
                pi += 1;
                continue;
            }
            Some('?') => Some(pi + 1),
            Some('[') => match set_match(&p[pi..], t[ti]) {
                Some((true, len)) => Some(pi + len),
                Some((false, _)) => None,
                // An unclosed `[` is a plain character.
                None => (t[ti] == '[').then_some(pi + 1),
            },
            Some(&c) => (c == t[ti]).then_some(pi + 1),
            None => None,
        };
        match (step, star) {
            (Some(next), _) => {
                pi = next;
                ti += 1;
            }
            (None, Some((sp, st))) => {
                // Let the last `*` swallow one more character and try again from there.
                pi = sp + 1;
                ti = st + 1;
                star = Some((sp, st + 1));
            }
            (None, None) => return false,
        }
    }
    p[pi..].iter().all(|&c| c == '*')
}

/// Matches `c` against the set starting at `p[0] == '['`: (matched, pattern length), or
/// None if the set is not closed.
fn set_match(p: &[char], c: char) -> Option<(bool, usize)> {
    let mut i = 1;
    let negate = matches!(p.get(i), Some('!') | Some('^'));
    if negate {
        i += 1;
    }
    let mut hit = false;
    let mut first = true;
    loop {
        let &x = p.get(i)?;
        if x == ']' && !first {
            return Some((hit != negate, i + 1));
        }
        first = false;
        if p.get(i + 1) == Some(&'-') && p.get(i + 2).is_some_and(|&e| e != ']') {
            hit |= x <= c && c <= p[i + 2];
            i += 3;
        } else {
            hit |= x == c;
            i += 1;
        }
    }
}

/// Every device's modalias under `sys_bus` (`/sys/bus`), sorted and without repeats.
pub fn modaliases(sys_bus: &Path) -> Vec<String> {
    let mut out = Vec::new();
    for bus in std::fs::read_dir(sys_bus).into_iter().flatten().flatten() {
        for dev in std::fs::read_dir(bus.path().join("devices"))
            .into_iter()
            .flatten()
            .flatten()
        {
            if let Ok(a) = std::fs::read_to_string(dev.path().join("modalias")) {
                let a = a.trim();
                if !a.is_empty() {
                    out.push(a.to_string());
                }
            }
        }
    }
    out.sort();
    out.dedup();
    out
}

/// finit_module(2); a module already loaded is fine.
fn load(path: &Path) -> std::io::Result<()> {
    let f = std::fs::File::open(path)?;
    match rustix::system::finit_module(&f, c"", 0) {
        Err(rustix::io::Errno::EXIST) => Ok(()),
        r => r.map_err(std::io::Error::from),
    }
}

/// The modules of one initramfs and what has been done with them.
pub struct Modules {
    dir: PathBuf,
    /// Module name → (path, direct dependencies' paths).
    deps: HashMap<String, (String, Vec<String>)>,
    aliases: Vec<(String, String)>,
    always: Vec<String>,
    /// Modaliases already matched.
    seen: HashSet<String>,
    /// Paths tried (loaded or failed): each is tried once.
    tried: HashSet<String>,
    pub loaded: Vec<String>,
    /// `module: error` for each that would not load (a driver may refuse hardware it
    /// does not handle; that is not fatal by itself).
    pub failed: Vec<String>,
    load_fn: fn(&Path) -> std::io::Result<()>,
}

impl Modules {
    /// No modules: on a running system (`ignite agent run`) its own udev loads drivers.
    pub fn none() -> Modules {
        Modules {
            dir: PathBuf::new(),
            deps: HashMap::new(),
            aliases: Vec::new(),
            always: Vec::new(),
            seen: HashSet::new(),
            tried: HashSet::new(),
            loaded: Vec::new(),
            failed: Vec::new(),
            load_fn: load,
        }
    }

    /// The modules under `dir` (`/lib/modules/<release>`).
    pub fn open(dir: &Path) -> Result<Modules> {
        let read = |name: &str| {
            let p = dir.join(name);
            std::fs::read_to_string(&p).with_context(|| {
                format!(
                    "cannot read {}; the initramfs has no modules for this kernel",
                    p.display()
                )
            })
        };
        Ok(Modules {
            dir: dir.to_path_buf(),
            deps: parse_dep(&read("modules.dep")?)
                .into_iter()
                .map(|(p, d)| (module_name(&p), (p, d)))
                .collect(),
            aliases: parse_alias(&read("modules.alias")?),
            always: read("modules.always")?
                .lines()
                .map(|l| l.trim().replace('-', "_"))
                .filter(|l| !l.is_empty())
                .collect(),
            ..Modules::none()
        })
    }

    /// Loads the modules every machine gets.
    pub fn load_always(&mut self) {
        for name in self.always.clone() {
            self.load_name(&name);
        }
    }

    /// Loads the drivers the devices under `sys_bus` ask for and that were not asked for
    /// before. Returns the names loaded now.
    pub fn poll(&mut self, sys_bus: &Path) -> Vec<String> {
        let before = self.loaded.len();
        for alias in modaliases(sys_bus) {
            if !self.seen.insert(alias.clone()) {
                continue;
            }
            for name in self.wanted_by(&alias) {
                self.load_name(&name);
            }
        }
        self.loaded[before..].to_vec()
    }

    /// The modules whose aliases match `modalias`, each once, in alias-file order.
    pub fn wanted_by(&self, modalias: &str) -> Vec<String> {
        let mut out: Vec<String> = Vec::new();
        for (pattern, name) in &self.aliases {
            if !out.contains(name) && glob_match(pattern, modalias) {
                out.push(name.clone());
            }
        }
        out
    }

    fn load_name(&mut self, name: &str) {
        match self.deps.get(name).map(|(p, _)| p.clone()) {
            Some(path) => self.load_path(&path),
            None => self
                .failed
                .push(format!("{name}: not in this initramfs's modules.dep")),
        }
    }

    /// Loads `path` after its dependencies (modules.dep lists direct ones; theirs are
    /// loaded the same way).
    fn load_path(&mut self, path: &str) {
        if !self.tried.insert(path.to_string()) {
            return;
        }
        let deps = self
            .deps
            .get(&module_name(path))
            .map(|(_, d)| d.clone())
            .unwrap_or_default();
        for d in deps {
            self.load_path(&d);
        }
        match (self.load_fn)(&self.dir.join(path)) {
            Ok(()) => self.loaded.push(module_name(path)),
            Err(e) => self.failed.push(format!("{path}: {e}")),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Lines of a real modules.alias (Debian's 6.1.0-57-amd64, from the modules' modinfo).
    const REAL_ALIASES: &str = "\
alias pci:v*d*sv*sd*bc01sc08i02* nvme
alias pci:v0000106Bd00002005sv*sd*bc*sc*i* nvme
alias pci:v*d*sv*sd*bc01sc06i01* ahci
alias pci:v00008086d00007010sv*sd*bc*sc*i* ata_piix
alias pci:v00001000d00000060sv*sd*bc*sc*i* megaraid_sas
alias pci:v00001000d00000079sv*sd*bc*sc*i* megaraid_sas
alias pci:v00001AF4d*sv*sd*bc*sc*i* virtio_pci
alias virtio:d00000002v* virtio_blk
alias virtio:d00000001v* virtio_net
alias scsi:t-0x00* sd_mod
alias scsi:t-0x0e* sd_mod
alias scsi:t-0x05* sr_mod
alias pci:v00008086d000010D3sv*sd*bc*sc*i* e1000e
alias pci:v000010ECd00008168sv*sd*bc*sc*i* r8169
alias usb:v*p*d*dc*dsc*dp*ic08isc06ip50in* usb_storage
alias pci:v*d*sv*sd*bc0Csc03i30* xhci_pci
alias cpu:type:x86,ven*fam*mod*:feature:*0094* crc32c_intel
alias fs-xfs xfs
";

    fn wanted(modalias: &str) -> Vec<String> {
        Modules {
            aliases: parse_alias(REAL_ALIASES),
            ..Modules::none()
        }
        .wanted_by(modalias)
    }

    #[test]
    fn real_aliases_pick_the_driver_each_qemu_device_needs() {
        // Modaliases as QEMU 7.2's devices show them in /sys/bus/*/devices/*/modalias.
        for (modalias, want) in [
            // -device nvme
            (
                "pci:v00001B36d00000010sv00001AF4sd00001100bc01sc08i02",
                "nvme",
            ),
            // q35's ICH9 AHCI
            (
                "pci:v00008086d00002922sv00001AF4sd00001100bc01sc06i01",
                "ahci",
            ),
            // i440fx's PIIX3 IDE
            (
                "pci:v00008086d00007010sv00001AF4sd00001100bc01sc01i80",
                "ata_piix",
            ),
            // -device megasas (MegaRAID SAS 1078)
            (
                "pci:v00001000d00000060sv00001000sd00001013bc01sc04i00",
                "megaraid_sas",
            ),
            (
                "pci:v00001AF4d00001001sv00001AF4sd00000002bc01sc00i00",
                "virtio_pci",
            ),
            ("virtio:d00000002v00001AF4", "virtio_blk"),
            ("virtio:d00000001v00001AF4", "virtio_net"),
            ("scsi:t-0x00", "sd_mod"),
            ("scsi:t-0x05", "sr_mod"),
            // -device e1000e (82574L)
            (
                "pci:v00008086d000010D3sv00008086sd00000000bc02sc00i00",
                "e1000e",
            ),
            (
                "usb:v46F4p0001d0000dc00dsc00dp00ic08isc06ip50in00",
                "usb_storage",
            ),
            (
                "pci:v00001B36d0000000Dsv00001AF4sd00001100bc0Csc03i30",
                "xhci_pci",
            ),
        ] {
            assert_eq!(wanted(modalias), [want], "{modalias}");
        }
        // An rtl8139 and a plain bridge ask for nothing we carry.
        assert!(wanted("pci:v000010ECd00008139sv00001AF4sd00001100bc02sc00i00").is_empty());
        assert!(wanted("pci:v00008086d00001237sv00001AF4sd00001100bc06sc00i00").is_empty());
        // A virtio device is not the virtio-net driver's because the vendor matched.
        assert!(wanted("virtio:d00000003v00001AF4").is_empty());
    }

    #[test]
    fn globs_match_as_fnmatch_does() {
        for (p, t, ok) in [
            ("a*b", "ab", true),
            ("a*b", "axxb", true),
            ("a*b", "axxbc", false),
            ("a*b*c", "abxbc", true),
            ("*", "", true),
            ("", "x", false),
            ("a?c", "abc", true),
            ("a?c", "ac", false),
            ("acpi*:PNP0A0[38]:*", "acpi:PNP0A08:", true),
            ("acpi*:PNP0A0[38]:*", "acpi:PNP0A05:", false),
            ("x[a-c]y", "xby", true),
            ("x[!a-c]y", "xby", false),
            ("x[!a-c]y", "xdy", true),
            ("x[]]y", "x]y", true),
            ("x[ab", "x[ab", true),
            (
                "pci:v*d*sv*sd*bc01sc08i02*",
                "pci:v1d2sv3sd4bc01sc08i02",
                true,
            ),
        ] {
            assert_eq!(glob_match(p, t), ok, "{p:?} vs {t:?}");
        }
    }

    #[test]
    fn devices_load_their_drivers_after_the_dependencies_once() {
        let d = tempfile::tempdir().unwrap();
        let m = d.path().join("lib");
        std::fs::create_dir_all(&m).unwrap();
        std::fs::write(
            m.join("modules.dep"),
            "kernel/nvme-core.ko:\nkernel/nvme.ko: kernel/nvme-core.ko\n\
             kernel/libcrc32c.ko:\nkernel/xfs.ko: kernel/libcrc32c.ko\nkernel/ahci.ko:\n",
        )
        .unwrap();
        std::fs::write(m.join("modules.alias"), REAL_ALIASES).unwrap();
        std::fs::write(m.join("modules.always"), "xfs\n").unwrap();
        let sys = d.path().join("sys");
        let dev = |bus: &str, name: &str, alias: &str| {
            let p = sys.join(bus).join("devices").join(name);
            std::fs::create_dir_all(&p).unwrap();
            std::fs::write(p.join("modalias"), format!("{alias}\n")).unwrap();
        };
        dev(
            "pci",
            "0000:00:04.0",
            "pci:v00001B36d00000010sv00001AF4sd00001100bc01sc08i02",
        );
        let mut mods = Modules::open(&m).unwrap();
        mods.load_fn = |p| match p.ends_with("kernel/ahci.ko") {
            true => Err(std::io::Error::from_raw_os_error(19)),
            false => Ok(()),
        };
        mods.load_always();
        assert_eq!(mods.loaded, ["libcrc32c", "xfs"]);
        assert_eq!(mods.poll(&sys), ["nvme_core", "nvme"]);
        assert!(mods.poll(&sys).is_empty(), "each device asks once");
        // A device that appears later (behind a driver just loaded) gets its driver then.
        dev(
            "pci",
            "0000:00:1f.2",
            "pci:v00008086d00002922sv00001AF4sd00001100bc01sc06i01",
        );
        dev("scsi", "0:0:0:0", "scsi:t-0x00");
        assert!(mods.poll(&sys).is_empty());
        assert_eq!(
            mods.failed,
            [
                "kernel/ahci.ko: No such device (os error 19)",
                "sd_mod: not in this initramfs's modules.dep"
            ]
        );
    }
}
