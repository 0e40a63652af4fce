//! From a merged TOML tree to a checked [`Profile`]: types, unknown keys, formats and the
//! semantic rules, every problem collected with its position.

use crate::error::Diagnostic;
use crate::model::*;
use crate::size::{parse_range, parse_size, Size, MIB};
use crate::source::{Loc, Node, Sources, Table, Value};
use crate::template::parse_template;
use std::net::IpAddr;

pub(crate) struct Decoder<'a> {
    src: &'a Sources,
    pub errs: Vec<Diagnostic>,
    /// Where "missing" problems of the whole profile point: the start of the top file.
    top: Loc,
}

const ROOT_KEYS: &[&str] = &[
    "extends",
    "description",
    "archive",
    "disk",
    "identity",
    "network",
    "boot",
    "raid",
    "lvm",
    "hooks",
];
const DISK_KEYS: &[&str] = &[
    "path",
    "by_id",
    "serial",
    "size",
    "transport",
    "media",
    "pick",
    "table",
    "count",
    "partitions",
];
const PART_KEYS: &[&str] = &["name", "type", "size", "fs", "mount", "options"];
const RAID_KEYS: &[&str] = &["level"];
const LVM_KEYS: &[&str] = &["vg", "volumes"];
const VOLUME_KEYS: &[&str] = &["name", "size", "fs", "mount", "options"];
/// The most disks one layout goes on.
const MAX_DISKS: i64 = 16;
const IDENTITY_KEYS: &[&str] = &[
    "hostname",
    "fresh_machine_id",
    "fresh_ssh_host_keys",
    "root_authorized_keys",
    "users",
];
const USER_KEYS: &[&str] = &["name", "uid", "groups", "shell", "authorized_keys"];
const NETWORK_KEYS: &[&str] = &["format", "interfaces"];
const IFACE_KEYS: &[&str] = &["dhcp", "address", "gateway", "dns"];
const BOOT_KEYS: &[&str] = &["loader", "firmware"];

const SSH_KEY_TYPES: &[&str] = &[
    "ssh-ed25519",
    "ssh-rsa",
    "ssh-dss",
    "ecdsa-sha2-nistp256",
    "ecdsa-sha2-nistp384",
    "ecdsa-sha2-nistp521",
    "sk-ssh-ed25519@openssh.com",
    "sk-ecdsa-sha2-nistp256@openssh.com",
];

/// A value and where it was written.
type At<T> = (T, Loc);

impl<'a> Decoder<'a> {
    pub fn new(src: &'a Sources, top: usize) -> Self {
        Decoder {
            src,
            errs: Vec::new(),
            top: Loc {
                file: top,
                start: 0,
                end: 0,
            },
        }
    }

    fn err(&mut self, loc: Loc, msg: impl Into<String>) {
        self.errs.push(self.src.diag(loc, msg));
    }

    fn keys(&mut self, t: &Table, what: &str, allowed: &[&str]) {
        for e in &t.entries {
            if !allowed.contains(&e.key.as_str()) {
                let hint = match crate::suggest(&e.key, allowed) {
                    Some(s) => format!("did you mean \"{s}\"? "),
                    None => String::new(),
                };
                self.err(
                    e.key_loc,
                    format!(
                        "unknown key \"{}\" in {what}; {hint}known keys: {}",
                        e.key,
                        allowed.join(", ")
                    ),
                );
            }
        }
    }

    fn wrong_type(&mut self, node: &Node, path: &str, want: &str, example: &str) {
        let msg = format!(
            "{path} is {}, not {want}; write e.g. {example}",
            node.v.type_name()
        );
        self.err(node.loc, msg);
    }

    fn str(&mut self, t: &Table, path: &str, key: &str, example: &str) -> Option<At<String>> {
        let e = t.get(key)?;
        match &e.node.v {
            Value::Str(s) => Some((s.clone(), e.node.loc)),
            _ => {
                self.wrong_type(&e.node, &format!("{path}{key}"), "a string", example);
                None
            }
        }
    }

    fn bool(&mut self, t: &Table, path: &str, key: &str) -> Option<At<bool>> {
        let e = t.get(key)?;
        match &e.node.v {
            Value::Bool(b) => Some((*b, e.node.loc)),
            _ => {
                self.wrong_type(
                    &e.node,
                    &format!("{path}{key}"),
                    "a boolean",
                    &format!("{key} = true"),
                );
                None
            }
        }
    }

    fn int(&mut self, t: &Table, path: &str, key: &str, example: &str) -> Option<At<i64>> {
        let e = t.get(key)?;
        match &e.node.v {
            Value::Int(Some(i)) => Some((*i, e.node.loc)),
            Value::Int(None) => {
                self.err(
                    e.node.loc,
                    format!("{path}{key} is too large; write e.g. {example}"),
                );
                None
            }
            _ => {
                self.wrong_type(&e.node, &format!("{path}{key}"), "an integer", example);
                None
            }
        }
    }

    fn table<'t>(&mut self, t: &'t Table, path: &str, key: &str) -> Option<At<&'t Table>> {
        let e = t.get(key)?;
        match &e.node.v {
            Value::Table(x) => Some((x, e.node.loc)),
            _ => {
                self.wrong_type(
                    &e.node,
                    &format!("{path}{key}"),
                    "a table",
                    &format!("[{path}{key}]"),
                );
                None
            }
        }
    }

    /// An array of strings; wrong elements are reported and skipped.
    fn str_array(
        &mut self,
        t: &Table,
        path: &str,
        key: &str,
        example: &str,
    ) -> Option<At<Vec<At<String>>>> {
        let e = t.get(key)?;
        let Value::Array(items) = &e.node.v else {
            self.wrong_type(&e.node, &format!("{path}{key}"), "an array", example);
            return None;
        };
        let mut out = Vec::new();
        for (i, n) in items.iter().enumerate() {
            match &n.v {
                Value::Str(s) => out.push((s.clone(), n.loc)),
                _ => self.wrong_type(n, &format!("{path}{key}[{}]", i + 1), "a string", example),
            }
        }
        Some((out, e.node.loc))
    }

    /// An array of tables (`[[x]]` or `x = [{...}]`).
    fn tables<'t>(
        &mut self,
        t: &'t Table,
        path: &str,
        key: &str,
    ) -> Option<At<Vec<At<&'t Table>>>> {
        let e = t.get(key)?;
        let example = format!("[[{path}{key}]]");
        let Value::Array(items) = &e.node.v else {
            self.wrong_type(
                &e.node,
                &format!("{path}{key}"),
                "an array of tables",
                &example,
            );
            return None;
        };
        let mut out = Vec::new();
        for (i, n) in items.iter().enumerate() {
            match &n.v {
                Value::Table(x) => out.push((x, n.loc)),
                _ => self.wrong_type(n, &format!("{path}{key}[{}]", i + 1), "a table", &example),
            }
        }
        Some((out, e.node.loc))
    }

    fn choice<T: Copy>(
        &mut self,
        t: &Table,
        path: &str,
        key: &str,
        choices: &[(&str, T)],
    ) -> Option<At<T>> {
        let names: Vec<&str> = choices.iter().map(|c| c.0).collect();
        let example = format!("{key} = \"{}\"", names[0]);
        let (s, loc) = self.str(t, path, key, &example)?;
        if let Some((_, v)) = choices.iter().find(|c| c.0 == s) {
            return Some((*v, loc));
        }
        let hint = match crate::suggest(&s, &names) {
            Some(x) => format!("did you mean \"{x}\"? "),
            None => String::new(),
        };
        let list: Vec<String> = names.iter().map(|n| format!("\"{n}\"")).collect();
        self.err(
            loc,
            format!(
                "{path}{key} {s:?} is not known; {hint}use one of {}",
                list.join(", ")
            ),
        );
        None
    }

    pub fn profile(&mut self, name: &str, chain: Vec<String>, root: &Table) -> Option<Profile> {
        self.keys(root, "the profile", ROOT_KEYS);
        let description = self
            .str(root, "", "description", "description = \"web servers\"")
            .map(|d| d.0);
        let archive = self.archive(root);
        let disk = self.disk(root);
        let identity = self.identity(root);
        let network = self.network(root);
        let boot = self.boot(root);
        let raid = self.raid(root);
        let lvm = self.lvm(root);
        let hooks = self.hooks(root);
        if let (Some(disk), Some(raid), Some(lvm)) = (&disk, &raid, &lvm) {
            self.volume_rules(disk, *raid, lvm.as_ref());
        }
        if let (Some(disk), Some(boot), Some(lvm)) = (&disk, &boot, &lvm) {
            if disk.complete {
                self.boot_vs_disk(disk, lvm.as_ref(), boot);
            }
        }
        let (
            Some(archive),
            Some(disk),
            Some((identity, template)),
            Some(network),
            Some(boot),
            Some(raid),
            Some(lvm),
            Some(hooks),
        ) = (archive, disk, identity, network, boot, raid, lvm, hooks)
        else {
            return None;
        };
        if !self.errs.is_empty() || !disk.complete || lvm.as_ref().is_some_and(|l| !l.complete) {
            return None;
        }
        Some(Profile {
            name: name.to_string(),
            description,
            archive,
            disk: DiskSpec {
                select: disk.select,
                table: PartitionTable::Gpt,
                count: disk.count.0,
                partitions: disk.parts.into_iter().map(|p| p.spec).collect(),
            },
            raid: raid.map(|r| r.0),
            lvm: lvm.map(|l| LvmSpec {
                vg: l.vg,
                volumes: l.volumes.into_iter().map(|v| v.spec).collect(),
            }),
            identity,
            network,
            boot: Boot {
                loader: boot.loader.0,
                firmware: boot.firmware.0,
            },
            hooks,
            chain,
            hostname_template: template,
        })
    }

    fn archive(&mut self, root: &Table) -> Option<ArchiveRef> {
        let example = "archive = \"debian-12\" or \"debian-12@<id>\"";
        let Some((s, loc)) = self.str(root, "", "archive", example) else {
            if root.get("archive").is_none() {
                self.err(self.top, format!("no golden archive; add {example}"));
            }
            return None;
        };
        let (name, id) = match s.split_once('@') {
            Some((n, i)) => (n.to_string(), Some(i.to_string())),
            None => (s.clone(), None),
        };
        let name_ok = !name.is_empty()
            && name.len() <= 128
            && name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "-_.:+".contains(c));
        if !name_ok {
            self.err(
                loc,
                format!("archive {s:?}: {name:?} is not a snapshot name (1-128 letters, digits and - _ . : +); write e.g. {example}"),
            );
            return None;
        }
        if let Some(id) = &id {
            let ok = id == "latest"
                || (!id.is_empty()
                    && id.len() <= 64
                    && id
                        .chars()
                        .all(|c| c.is_ascii_digit() || ('a'..='f').contains(&c)));
            if !ok {
                self.err(
                    loc,
                    format!("archive {s:?}: {id:?} is not a snapshot id; after '@' write a lower-case hex id (prefix) or \"latest\", e.g. \"{name}@3fa9c2\""),
                );
                return None;
            }
        }
        Some(ArchiveRef { name, id })
    }

    fn disk(&mut self, root: &Table) -> Option<DiskDecoded> {
        let Some((t, tloc)) = self.table(root, "", "disk") else {
            if root.get("disk").is_none() {
                self.err(
                    self.top,
                    "no [disk]; add a [disk] table with [[disk.partitions]] (e.g. size = \"rest\", fs = \"ext4\", mount = \"/\")",
                );
            }
            return None;
        };
        self.keys(t, "[disk]", DISK_KEYS);
        let mut ok = true;
        let mut select = DiskSelect::default();
        if let Some((p, loc)) = self.str(t, "disk.", "path", "path = \"/dev/vda\"") {
            if !p.starts_with('/') {
                self.err(loc, format!("disk.path {p:?} is not an absolute device path; write e.g. path = \"/dev/vda\""));
                ok = false;
            }
            select.path = Some(p);
        }
        if let Some((s, loc)) = self.str(t, "disk.", "serial", "serial = \"QM00001\"") {
            if s.trim().is_empty() {
                self.err(
                    loc,
                    "disk.serial is empty; write the disk's serial number or remove the key",
                );
                ok = false;
            }
            select.serial = Some(s);
        }
        if let Some((s, loc)) = self.str(t, "disk.", "size", "size = \"10G..100G\"") {
            match parse_range(&s) {
                Ok(r) => select.size = Some(r),
                Err(m) => {
                    self.err(loc, m);
                    ok = false;
                }
            }
        }
        if let Some((s, loc)) = self.str(
            t,
            "disk.",
            "by_id",
            "by_id = \"nvme-Samsung_SSD_980_S64ANS0T1234\"",
        ) {
            let name = s.trim_start_matches("/dev/disk/by-id/").to_string();
            if name.is_empty() || name.contains('/') {
                self.err(loc, format!("disk.by_id {s:?} is not a /dev/disk/by-id/ name; write e.g. by_id = \"nvme-Samsung_SSD_980_S64ANS0T1234\""));
                ok = false;
            }
            select.by_id = Some(name);
        }
        select.transport = self
            .choice(t, "disk.", "transport", &Transport::ALL)
            .map(|c| c.0);
        select.media = self
            .choice(
                t,
                "disk.",
                "media",
                &[("ssd", Media::Ssd), ("hdd", Media::Hdd)],
            )
            .map(|c| c.0);
        if let Some((p, _)) = self.choice(
            t,
            "disk.",
            "pick",
            &[("first", Pick::First), ("smallest", Pick::Smallest)],
        ) {
            select.pick = p;
        }
        self.choice(t, "disk.", "table", &[("gpt", PartitionTable::Gpt)]);
        let mut count = (1, None);
        if let Some((n, loc)) = self.int(t, "disk.", "count", "count = 2") {
            if (1..=MAX_DISKS).contains(&n) {
                count = (n as usize, Some(loc));
            } else {
                self.err(loc, format!("disk.count {n} is not a number of disks; write 1 to {MAX_DISKS}, e.g. count = 2 for a mirror"));
                ok = false;
            }
        }
        let Some((parts, ploc)) = self.tables(t, "disk.", "partitions") else {
            if t.get("partitions").is_none() {
                self.err(tloc, "[disk] has no partitions; add [[disk.partitions]] entries (e.g. size = \"rest\", fs = \"ext4\", mount = \"/\")");
            }
            return None;
        };
        if parts.is_empty() {
            self.err(ploc, "disk.partitions is empty; add [[disk.partitions]] entries (e.g. size = \"rest\", fs = \"ext4\", mount = \"/\")");
            return None;
        }
        let (out, parts_ok) = self.partitions(Holder::Disk, &parts);
        ok &= parts_ok;
        // The cross-partition rules run on whatever decoded, so their errors come out with
        // the others; "/ is missing" only when every partition decoded (no false alarm).
        self.layout_rules(&out);
        // Returned with its errors too: the rules across tables still run on what decoded.
        let complete = out.len() == parts.len();
        Some(DiskDecoded {
            select,
            count,
            parts: out,
            loc: ploc,
            complete: ok && complete,
        })
    }

    /// Each of `tables` as a partition (or volume) of `on`; false when any had an error.
    fn partitions(&mut self, on: Holder, tables: &[At<&Table>]) -> (Vec<PartDecoded>, bool) {
        let mut ok = true;
        let mut out = Vec::new();
        for (i, (t, loc)) in tables.iter().enumerate() {
            match self.partition(on, i + 1, t, *loc) {
                Some(p) => {
                    ok &= p.ok;
                    out.push(p);
                }
                None => ok = false,
            }
        }
        (out, ok)
    }

    /// A partition, or a logical volume (written the same way, without `type`).
    fn partition(&mut self, on: Holder, n: usize, t: &Table, loc: Loc) -> Option<PartDecoded> {
        let (what, path) = match on {
            Holder::Disk => (
                format!("[[disk.partitions]] #{n}"),
                format!("disk.partitions[{n}]."),
            ),
            Holder::Lvm => (
                format!("[[lvm.volumes]] #{n}"),
                format!("lvm.volumes[{n}]."),
            ),
        };
        self.keys(
            t,
            &what,
            match on {
                Holder::Disk => PART_KEYS,
                Holder::Lvm => VOLUME_KEYS,
            },
        );
        let mut ok = true;
        let kind = match on {
            Holder::Disk => self.choice(
                t,
                &path,
                "type",
                &[
                    ("linux", PartKind::Linux),
                    ("efi", PartKind::Efi),
                    ("bios_boot", PartKind::BiosBoot),
                    ("swap", PartKind::Swap),
                    ("raid", PartKind::Raid),
                    ("lvm", PartKind::Lvm),
                ],
            ),
            Holder::Lvm => None,
        };
        if kind.is_none() && t.get("type").is_some() {
            ok = false;
        }
        let fs = self.choice(
            t,
            &path,
            "fs",
            &[
                ("ext4", Fs::Ext4),
                ("xfs", Fs::Xfs),
                ("vfat", Fs::Vfat),
                ("swap", Fs::Swap),
            ],
        );
        if fs.is_none() && t.get("fs").is_some() {
            ok = false;
        }
        let size = match self.str(t, &path, "size", "size = \"10G\"") {
            Some((s, sloc)) => match parse_size(&s) {
                Ok(v) => Some((v, sloc)),
                Err(m) => {
                    self.err(sloc, m);
                    None
                }
            },
            None => {
                if t.get("size").is_none() {
                    self.err(
                        loc,
                        format!("{what} has no size; add e.g. size = \"10G\", \"20%\" or \"rest\""),
                    );
                }
                None
            }
        };
        let mount = self.str(t, &path, "mount", "mount = \"/srv\"");
        if let Some((m, mloc)) = &mount {
            if !m.starts_with('/') {
                self.err(
                    *mloc,
                    format!(
                        "mount point {m:?} is not absolute; write e.g. \"/{}\"",
                        m.trim_start_matches("./")
                    ),
                );
                ok = false;
            } else if m.len() > 1 && m.ends_with('/') {
                self.err(
                    *mloc,
                    format!(
                        "mount point {m:?} ends with '/'; write {:?}",
                        m.trim_end_matches('/')
                    ),
                );
                ok = false;
            } else if m.split('/').any(|c| c == ".." || c == ".") || m.contains("//") {
                self.err(*mloc, format!("mount point {m:?} has '.', '..' or an empty component; write a plain absolute path such as \"/srv/data\""));
                ok = false;
            } else if m.chars().any(|c| c.is_whitespace() || c.is_control()) {
                self.err(*mloc, format!("mount point {m:?} contains white space; fstab cannot hold it, choose a path without spaces"));
                ok = false;
            }
        }
        let options = self.str_array(t, &path, "options", "options = [\"noatime\"]");
        let mut opts = Vec::new();
        if let Some((list, _)) = &options {
            for (o, oloc) in list {
                if o.is_empty() || o.contains(',') || o.chars().any(char::is_whitespace) {
                    self.err(*oloc, format!("mount option {o:?} must be one option without ',' or spaces; write each option as its own string, e.g. options = [\"noatime\", \"nodev\"]"));
                    ok = false;
                } else {
                    opts.push(o.clone());
                }
            }
        }
        let name = self.str(t, &path, "name", "name = \"root\"");
        if let Some((nm, nloc)) = &name {
            if nm.encode_utf16().count() > 36 || nm.is_empty() {
                self.err(*nloc, format!("partition name {nm:?} must be 1 to 36 characters (a GPT limit); write a shorter name"));
                ok = false;
            }
        }
        // Defaults and consistency between type, fs and mount.
        let mut kind_v = kind.map(|k| k.0);
        let mut fs_v = fs.map(|f| f.0);
        let mut mount_v = mount.as_ref().map(|m| m.0.clone());
        match (kind_v, fs_v) {
            (None, Some(Fs::Swap)) => kind_v = Some(PartKind::Swap),
            (Some(PartKind::Swap), None) => fs_v = Some(Fs::Swap),
            (Some(PartKind::Efi), None) => fs_v = Some(Fs::Vfat),
            _ => {}
        }
        let kind_v = kind_v.unwrap_or(PartKind::Linux);
        if kind_v == PartKind::Efi && mount.is_none() && fs_v == Some(Fs::Vfat) {
            mount_v = Some("/boot/efi".into());
        }
        match (kind_v, fs_v) {
            (PartKind::Efi, Some(f)) if f != Fs::Vfat => {
                let l = fs.map(|x| x.1).unwrap_or(loc);
                self.err(
                    l,
                    "an EFI system partition must be vfat; write fs = \"vfat\" (or leave fs out)",
                );
                ok = false;
            }
            (PartKind::BiosBoot, Some(_)) => {
                let l = fs.map(|x| x.1).unwrap_or(loc);
                self.err(l, "a bios_boot partition holds GRUB's core image, not a file system; remove fs (and mount)");
                ok = false;
            }
            (PartKind::Raid | PartKind::Lvm, Some(_)) => {
                let l = fs.map(|x| x.1).unwrap_or(loc);
                let (k, on) = if kind_v == PartKind::Raid {
                    ("raid", "the RAID array, through [lvm] volumes")
                } else {
                    ("lvm", "[lvm] volumes")
                };
                self.err(l, format!("a {k} partition holds no file system of its own; remove fs (and mount) and put file systems on {on}"));
                ok = false;
            }
            (PartKind::Swap, Some(f)) if f != Fs::Swap => {
                let l = fs.map(|x| x.1).unwrap_or(loc);
                self.err(
                    l,
                    "a swap partition takes fs = \"swap\"; remove fs or set type = \"linux\"",
                );
                ok = false;
            }
            (PartKind::Linux, Some(Fs::Swap)) => {
                let l = fs.map(|x| x.1).unwrap_or(loc);
                self.err(
                    l,
                    "fs = \"swap\" needs type = \"swap\"; remove type (swap sets it)",
                );
                ok = false;
            }
            _ => {}
        }
        if let Some((m, mloc)) = &mount {
            if fs_v == Some(Fs::Swap) {
                self.err(*mloc, format!("swap is not mounted; remove mount = {m:?}"));
                ok = false;
            } else if fs_v.is_none() && t.get("fs").is_none() {
                self.err(
                    *mloc,
                    format!(
                        "mount point {m:?} needs a file system; add fs = \"ext4\" (or xfs, vfat)"
                    ),
                );
                ok = false;
            }
        }
        if !opts.is_empty() && mount_v.is_none() {
            let l = options.as_ref().map(|o| o.1).unwrap_or(loc);
            self.err(
                l,
                "mount options without a mount point; add mount = \"/...\" or remove options",
            );
            ok = false;
        }
        // A bad or missing size is already reported; the partition still takes part in the
        // cross-partition rules (mount points), with its size left out of them.
        let size_ok = size.is_some();
        ok &= size_ok;
        let (size, size_loc) = size.unwrap_or((Size::Bytes(MIB), loc));
        let default_name = match (kind_v, mount_v.as_deref()) {
            (PartKind::Efi, _) => "efi".to_string(),
            (PartKind::BiosBoot, _) => "bios_boot".to_string(),
            (PartKind::Swap, _) => "swap".to_string(),
            (PartKind::Raid, _) => "raid".to_string(),
            (PartKind::Lvm, _) => "lvm".to_string(),
            (_, Some("/")) => "root".to_string(),
            (_, Some(m)) => m.trim_start_matches('/').replace('/', "-"),
            (_, None) if on == Holder::Lvm => format!("lv{n}"),
            (_, None) => format!("part{n}"),
        };
        if let (Holder::Lvm, Some((nm, nloc))) = (on, &name) {
            if let Some(why) = lvm_name_problem(nm) {
                self.err(*nloc, format!("volume name {nm:?} {why}"));
                ok = false;
            }
        }
        Some(PartDecoded {
            on,
            spec: PartitionSpec {
                name: name.map(|n| n.0).unwrap_or(default_name),
                kind: kind_v,
                size,
                fs: fs_v,
                mount: mount_v,
                options: opts,
            },
            loc,
            size_loc,
            mount_loc: mount.map(|m| m.1),
            fs_loc: fs.map(|f| f.1),
            n,
            ok,
            size_ok,
        })
    }

    /// Sizes within one container (a disk's partitions, or a volume group's volumes): one
    /// "rest" at most, percentages within 100.
    fn layout_rules(&mut self, parts: &[PartDecoded]) {
        let mut rest_seen: Option<usize> = None;
        let mut pct = 0u32;
        for p in parts {
            match if p.size_ok {
                p.spec.size
            } else {
                Size::Bytes(MIB)
            } {
                Size::Rest => {
                    if let Some(first) = rest_seen {
                        let noun = p.on.noun();
                        self.err(p.size_loc, format!("{noun} {} also has size \"rest\" ({noun} {first} already takes the rest); give it a size such as \"10G\" or \"20%\"", p.n));
                    } else {
                        rest_seen = Some(p.n);
                    }
                }
                Size::Percent(n) => {
                    let before = pct;
                    pct += n;
                    if pct > 100 && before <= 100 {
                        self.err(p.size_loc, format!("percentages add up to {pct}% with this {} (over 100%); lower \"{n}%\" to at most \"{}%\" or use \"rest\"", p.on.noun(), 100 - before));
                    }
                }
                Size::Bytes(_) => {}
            }
        }
    }

    /// Mount points across the partitions and the volumes: each used once, and "/" among
    /// them (said only when everything decoded, so there is no false alarm).
    fn mount_rules(&mut self, disk: &DiskDecoded, lvm: Option<&LvmDecoded>) {
        let all: Vec<&PartDecoded> = disk
            .parts
            .iter()
            .chain(lvm.iter().flat_map(|l| &l.volumes))
            .collect();
        let mut mounts: Vec<(&str, &PartDecoded)> = Vec::new();
        for p in &all {
            let Some(m) = &p.spec.mount else { continue };
            if let Some((_, q)) = mounts.iter().find(|x| x.0 == m) {
                let l = p.mount_loc.unwrap_or(p.loc);
                self.err(
                    l,
                    format!(
                        "mount point {m:?} is already used by {} {}; use each mount point once",
                        q.on.noun(),
                        q.n
                    ),
                );
            } else {
                mounts.push((m, p));
            }
        }
        let complete = disk.complete && lvm.is_none_or(|l| l.complete);
        let has_fs = all
            .iter()
            .any(|p| matches!(p.spec.fs, Some(Fs::Ext4 | Fs::Xfs | Fs::Vfat)));
        if complete && has_fs && !mounts.iter().any(|m| m.0 == "/") {
            let (l, what) = match lvm {
                Some(l) => (l.loc, "volume"),
                None => (disk.loc, "partition"),
            };
            self.err(l, format!("no {what} is mounted at \"/\"; add mount = \"/\" to the root {what} (e.g. size = \"rest\", fs = \"ext4\", mount = \"/\")"));
        }
    }

    /// `[raid]` and `[lvm]` against the partitions: what holds each, on how many disks.
    fn volume_rules(
        &mut self,
        disk: &DiskDecoded,
        raid: Option<At<RaidSpec>>,
        lvm: Option<&LvmDecoded>,
    ) {
        self.mount_rules(disk, lvm);
        let of = |k: PartKind| -> Vec<&PartDecoded> {
            disk.parts.iter().filter(|p| p.spec.kind == k).collect()
        };
        let (raids, lvms) = (of(PartKind::Raid), of(PartKind::Lvm));
        let (count, count_loc) = disk.count;
        match (raid, raids.as_slice()) {
            (Some((_, rloc)), []) => self.err(rloc, "[raid] has no members; add a partition of type = \"raid\" (e.g. size = \"rest\") to [[disk.partitions]]: each disk's one is a member"),
            (None, [p, ..]) => self.err(p.loc, format!("partition {} is of type \"raid\" but the profile has no [raid]; add [raid] level = 1 (and disk.count = 2)", p.n)),
            (Some(_), [_, p, ..]) => self.err(p.loc, format!("partition {} is a second raid partition; one array is made, from one raid partition on each disk", p.n)),
            (Some((_, rloc)), [_]) if count < 2 => self.err(count_loc.unwrap_or(rloc), format!("[raid] level 1 mirrors disks, but disk.count is {count}; set disk.count = 2 in [disk]")),
            _ => {}
        }
        if let Some(l) = lvm {
            if raid.is_some() && !lvms.is_empty() {
                self.err(lvms[0].loc, format!("partition {} is of type \"lvm\" but with [raid] the volume group is on the array; remove it or change it to type = \"raid\"", lvms[0].n));
            }
            if raid.is_none() && lvms.is_empty() {
                self.err(l.loc, "[lvm] has no physical volume: add [raid] (the array becomes its physical volume) or a partition of type = \"lvm\"");
            }
        } else if let Some(p) = lvms.first() {
            self.err(p.loc, format!("partition {} is of type \"lvm\" but the profile has no [lvm]; add [lvm] vg = \"vg0\" with [[lvm.volumes]]", p.n));
        } else if let (Some((_, rloc)), false) = (raid, raids.is_empty()) {
            self.err(rloc, "[raid] makes an array but nothing goes on it; add [lvm] with [[lvm.volumes]] (the array becomes its physical volume)");
        }
        // Several disks each get the layout: their own file systems would share mount
        // points, so only the ESP (one per disk, each bootable) may have one.
        if count > 1 {
            for p in &disk.parts {
                if p.spec.fs.is_some() && p.spec.kind != PartKind::Efi {
                    let l = p.fs_loc.unwrap_or(p.loc);
                    self.err(l, format!("partition {} has a file system, but disk.count = {count} puts this layout on every disk; on several disks only the EFI partition has one of its own: put file systems on [lvm] volumes", p.n));
                }
            }
        }
    }

    fn boot_vs_disk(&mut self, disk: &DiskDecoded, lvm: Option<&LvmDecoded>, boot: &BootDecoded) {
        let (loader, lloc) = boot.loader;
        let (fw, floc) = boot.firmware;
        if loader == Loader::None {
            return;
        }
        if loader == Loader::Extlinux {
            let on_lvm = lvm.and_then(|l| {
                ["/boot", "/"].iter().find_map(|m| {
                    let in_volume = l
                        .volumes
                        .iter()
                        .find(|v| v.spec.mount.as_deref() == Some(*m));
                    let in_partition = disk
                        .parts
                        .iter()
                        .any(|p| p.spec.mount.as_deref() == Some(*m));
                    if in_partition {
                        None
                    } else {
                        in_volume
                    }
                })
            });
            if let Some(v) = on_lvm {
                let l = v.mount_loc.unwrap_or(v.loc);
                self.err(l, format!("extlinux cannot read LVM, but {} is on volume {}; use loader = \"grub\" (it reads LVM and RAID) or put /boot on its own partition", v.spec.mount.as_deref().unwrap_or("/"), v.n));
            }
        }
        let has = |k: PartKind| disk.parts.iter().any(|p| p.spec.kind == k);
        if matches!(fw, Firmware::Uefi | Firmware::Both) && !has(PartKind::Efi) {
            self.err(floc, format!("boot firmware \"{}\" needs an EFI system partition; add [[disk.partitions]] type = \"efi\", size = \"512M\"", fw_name(fw)));
        }
        if loader == Loader::Grub
            && matches!(fw, Firmware::Bios | Firmware::Both)
            && !has(PartKind::BiosBoot)
        {
            let l = if boot.explicit { lloc } else { disk.loc };
            self.err(l, "GRUB on BIOS with a GPT disk needs a bios_boot partition; add [[disk.partitions]] type = \"bios_boot\", size = \"1M\" (or set [boot] firmware = \"uefi\", or loader = \"extlinux\" or \"none\")");
        }
        if loader == Loader::Extlinux && matches!(fw, Firmware::Bios | Firmware::Both) {
            self.extlinux_bios(disk);
        }
    }

    /// Syslinux on BIOS reads the kernel from the file system that holds /boot (where
    /// `extlinux --install` puts ldlinux.sys), so that file system must be one it can read.
    /// (On UEFI the agent copies the kernel to the EFI system partition, so any /boot does.)
    fn extlinux_bios(&mut self, disk: &DiskDecoded) {
        let holder = ["/boot", "/"].iter().find_map(|m| {
            disk.parts
                .iter()
                .find(|p| p.spec.mount.as_deref() == Some(*m))
        });
        let Some(p) = holder else {
            return; // no "/" at all is reported by the layout rules
        };
        let mount = p.spec.mount.as_deref().unwrap_or("/");
        let what = if mount == "/boot" {
            "/boot".to_string()
        } else {
            "/ (which holds /boot)".to_string()
        };
        let fix = "put /boot on its own ext4 partition (e.g. [[disk.partitions]] size = \"512M\", fs = \"ext4\", mount = \"/boot\") or use loader = \"grub\"";
        let l = p.fs_loc.or(p.mount_loc).unwrap_or(p.loc);
        match p.spec.fs {
            Some(Fs::Ext4 | Fs::Vfat) | None => {}
            Some(Fs::Xfs) => self.err(
                l,
                format!("extlinux on BIOS cannot boot from {what} on xfs: xfs keeps its superblock in the partition's first sector, where Syslinux's boot sector has to go; {fix}"),
            ),
            Some(Fs::Swap) => {}
        }
    }

    /// `[raid]`: Some(None) when the profile has none.
    fn raid(&mut self, root: &Table) -> Option<Option<At<RaidSpec>>> {
        let Some((t, tloc)) = self.table(root, "", "raid") else {
            return root.get("raid").is_none().then_some(None);
        };
        self.keys(t, "[raid]", RAID_KEYS);
        let Some((level, lloc)) = self.int(t, "raid.", "level", "level = 1") else {
            if t.get("level").is_none() {
                self.err(
                    tloc,
                    "[raid] has no level; add level = 1 (a mirror across the disks)",
                );
            }
            return None;
        };
        if level != 1 {
            self.err(lloc, format!("raid.level {level} is not supported; use level = 1 (a mirror: either disk alone holds everything and boots)"));
            return None;
        }
        Some(Some((RaidSpec { level: 1 }, tloc)))
    }

    /// `[lvm]`: Some(None) when the profile has none.
    fn lvm(&mut self, root: &Table) -> Option<Option<LvmDecoded>> {
        let Some((t, tloc)) = self.table(root, "", "lvm") else {
            return root.get("lvm").is_none().then_some(None);
        };
        self.keys(t, "[lvm]", LVM_KEYS);
        let mut ok = true;
        let vg = match self.str(t, "lvm.", "vg", "vg = \"vg0\"") {
            Some((vg, loc)) => {
                if let Some(why) = lvm_name_problem(&vg) {
                    self.err(loc, format!("volume group name {vg:?} {why}"));
                    ok = false;
                }
                vg
            }
            None => {
                ok &= t.get("vg").is_none();
                "vg0".to_string()
            }
        };
        let Some((vols, vloc)) = self.tables(t, "lvm.", "volumes") else {
            if t.get("volumes").is_none() {
                self.err(tloc, "[lvm] has no volumes; add [[lvm.volumes]] entries (e.g. name = \"root\", size = \"rest\", fs = \"ext4\", mount = \"/\")");
            }
            return None;
        };
        if vols.is_empty() {
            self.err(vloc, "lvm.volumes is empty; add [[lvm.volumes]] entries (e.g. name = \"root\", size = \"rest\", fs = \"ext4\", mount = \"/\")");
            return None;
        }
        let (volumes, vols_ok) = self.partitions(Holder::Lvm, &vols);
        ok &= vols_ok;
        self.layout_rules(&volumes);
        let mut names: Vec<&str> = Vec::new();
        for v in &volumes {
            if names.contains(&v.spec.name.as_str()) {
                self.err(
                    v.loc,
                    format!(
                        "volume name {:?} is used twice; give each volume its own name",
                        v.spec.name
                    ),
                );
                ok = false;
            }
            names.push(&v.spec.name);
        }
        let complete = ok && volumes.len() == vols.len();
        Some(Some(LvmDecoded {
            vg,
            complete,
            volumes,
            loc: tloc,
        }))
    }

    fn identity(&mut self, root: &Table) -> Option<(Identity, Vec<crate::template::Piece>)> {
        let empty = Table::default();
        let t = match self.table(root, "", "identity") {
            Some((t, _)) => t,
            None if root.get("identity").is_some() => return None,
            None => &empty,
        };
        self.keys(t, "[identity]", IDENTITY_KEYS);
        let mut ok = true;
        let (hostname, template) =
            match self.str(t, "identity.", "hostname", "hostname = \"web-{mac6}\"") {
                Some((h, loc)) => match parse_template(&h) {
                    Ok(p) => (h, p),
                    Err(m) => {
                        self.err(loc, m);
                        ok = false;
                        (h, Vec::new())
                    }
                },
                None => {
                    ok &= t.get("hostname").is_none();
                    let h = "ignite-{mac6}".to_string();
                    let p = parse_template(&h).expect("default template");
                    (h, p)
                }
            };
        let fresh_machine_id = self.bool(t, "identity.", "fresh_machine_id");
        ok &= fresh_machine_id.is_some() || t.get("fresh_machine_id").is_none();
        let fresh_ssh = self.bool(t, "identity.", "fresh_ssh_host_keys");
        ok &= fresh_ssh.is_some() || t.get("fresh_ssh_host_keys").is_none();
        let root_keys = self.keys_list(t, "identity.", "root_authorized_keys", &mut ok);
        let mut users: Vec<User> = Vec::new();
        let mut seen: Vec<(String, Option<u32>)> = Vec::new();
        if let Some((list, _)) = self.tables(t, "identity.", "users") {
            for (i, (ut, uloc)) in list.iter().enumerate() {
                match self.user(i + 1, ut, *uloc, &seen) {
                    Some(u) => {
                        seen.push((u.name.clone(), u.uid));
                        users.push(u);
                    }
                    None => ok = false,
                }
            }
        } else if t.get("users").is_some() {
            ok = false;
        }
        if !ok {
            return None;
        }
        Some((
            Identity {
                hostname,
                fresh_machine_id: fresh_machine_id.map(|b| b.0).unwrap_or(true),
                fresh_ssh_host_keys: fresh_ssh.map(|b| b.0).unwrap_or(true),
                root_authorized_keys: root_keys,
                users,
            },
            template,
        ))
    }

    fn keys_list(&mut self, t: &Table, path: &str, key: &str, ok: &mut bool) -> Vec<String> {
        let example = format!("{key} = [\"ssh-ed25519 AAAA... admin@example\"]");
        let Some((list, _)) = self.str_array(t, path, key, &example) else {
            *ok &= t.get(key).is_none();
            return Vec::new();
        };
        let mut out = Vec::new();
        for (k, loc) in list {
            let words: Vec<&str> = k.split_whitespace().collect();
            let good = words
                .iter()
                .position(|w| SSH_KEY_TYPES.contains(w))
                .is_some_and(|i| words.get(i + 1).is_some_and(|b| b.starts_with("AAAA")));
            if good {
                out.push(k);
            } else {
                let short: String = k.chars().take(30).collect();
                self.err(loc, format!("{short:?} is not an SSH public key; paste a line of a .pub file, e.g. \"ssh-ed25519 AAAAC3Nza... admin@example\""));
                *ok = false;
            }
        }
        if let Some(e) = t.get(key) {
            if let Value::Array(a) = &e.node.v {
                if a.len() != out.len() {
                    *ok = false;
                }
            }
        }
        out
    }

    fn user(
        &mut self,
        n: usize,
        t: &Table,
        loc: Loc,
        seen: &[(String, Option<u32>)],
    ) -> Option<User> {
        let what = format!("[[identity.users]] #{n}");
        let path = format!("identity.users[{n}].");
        self.keys(t, &what, USER_KEYS);
        let mut ok = true;
        let name = self.str(t, &path, "name", "name = \"admin\"");
        if let Some((nm, nloc)) = &name {
            let valid = !nm.is_empty()
                && nm.len() <= 32
                && nm.starts_with(|c: char| c.is_ascii_lowercase() || c == '_')
                && nm
                    .chars()
                    .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_' || c == '-');
            if !valid {
                self.err(*nloc, format!("user name {nm:?} is not a valid login; use lower-case letters, digits, '_' and '-', starting with a letter, at most 32 characters"));
                ok = false;
            } else if nm == "root" {
                self.err(*nloc, "user \"root\" already exists; put root's keys in identity.root_authorized_keys instead");
                ok = false;
            } else if seen.iter().any(|s| &s.0 == nm) {
                self.err(
                    *nloc,
                    format!("user {nm:?} is defined twice; give each user once"),
                );
                ok = false;
            }
        } else {
            if t.get("name").is_none() {
                self.err(
                    loc,
                    format!("{what} has no name; add e.g. name = \"admin\""),
                );
            }
            ok = false;
        }
        let mut uid = None;
        if let Some((u, uloc)) = self.int(t, &path, "uid", "uid = 1000") {
            if !(1..=65533).contains(&u) {
                self.err(
                    uloc,
                    format!("uid {u} is out of range; use 1 to 65533 (0 is root), e.g. uid = 1000"),
                );
                ok = false;
            } else if let Some(s) = seen.iter().find(|s| s.1 == Some(u as u32)) {
                self.err(
                    uloc,
                    format!(
                        "uid {u} is already used by user {:?}; give each user its own uid",
                        s.0
                    ),
                );
                ok = false;
            } else {
                uid = Some(u as u32);
            }
        } else if t.get("uid").is_some() {
            ok = false;
        }
        let mut groups = Vec::new();
        if let Some((g, _)) = self.str_array(t, &path, "groups", "groups = [\"sudo\"]") {
            for (gname, gloc) in g {
                if gname.is_empty()
                    || gname.contains(|c: char| c == ',' || c == ':' || c.is_whitespace())
                {
                    self.err(gloc, format!("group {gname:?} is not a group name; write e.g. groups = [\"sudo\", \"adm\"]"));
                    ok = false;
                } else {
                    groups.push(gname);
                }
            }
        } else if t.get("groups").is_some() {
            ok = false;
        }
        let shell = match self.str(t, &path, "shell", "shell = \"/bin/bash\"") {
            Some((s, sloc)) => {
                if !s.starts_with('/') {
                    self.err(
                        sloc,
                        format!(
                            "shell {s:?} is not an absolute path; write e.g. shell = \"/bin/bash\""
                        ),
                    );
                    ok = false;
                }
                s
            }
            None => {
                ok &= t.get("shell").is_none();
                "/bin/bash".into()
            }
        };
        let authorized_keys = self.keys_list(t, &path, "authorized_keys", &mut ok);
        if !ok {
            return None;
        }
        Some(User {
            name: name?.0,
            uid,
            groups,
            shell,
            authorized_keys,
        })
    }

    fn network(&mut self, root: &Table) -> Option<Network> {
        let empty = Table::default();
        let t = match self.table(root, "", "network") {
            Some((t, _)) => t,
            None if root.get("network").is_some() => return None,
            None => &empty,
        };
        self.keys(t, "[network]", NETWORK_KEYS);
        let mut ok = true;
        let format = self.choice(
            t,
            "network.",
            "format",
            &[
                ("auto", NetFormat::Auto),
                ("ifupdown", NetFormat::Ifupdown),
                ("networkd", NetFormat::Networkd),
                ("systemd-networkd", NetFormat::Networkd),
                ("netplan", NetFormat::Netplan),
            ],
        );
        ok &= format.is_some() || t.get("format").is_none();
        let mut interfaces = Vec::new();
        match self.table(t, "network.", "interfaces") {
            Some((it, _)) => {
                for e in &it.entries {
                    let name = &e.key;
                    if name.is_empty()
                        || name.len() > 15
                        || name.contains(|c: char| c == '/' || c.is_whitespace() || c == ':')
                    {
                        self.err(e.key_loc, format!("interface name {name:?} is not valid; use at most 15 characters without '/', ':' or spaces (e.g. \"eth0\", or \"boot\" for the NIC the client booted from)"));
                        ok = false;
                        continue;
                    }
                    let Value::Table(x) = &e.node.v else {
                        self.wrong_type(
                            &e.node,
                            &format!("network.interfaces.{name}"),
                            "a table",
                            &format!("[network.interfaces.{name}] dhcp = true"),
                        );
                        ok = false;
                        continue;
                    };
                    match self.interface(name, x, e.key_loc) {
                        Some(i) => interfaces.push(i),
                        None => ok = false,
                    }
                }
            }
            None => {
                ok &= t.get("interfaces").is_none();
                interfaces.push(Interface {
                    name: "boot".into(),
                    dhcp: true,
                    address: None,
                    gateway: None,
                    dns: Vec::new(),
                });
            }
        }
        if !ok {
            return None;
        }
        Some(Network {
            format: format.map(|f| f.0).unwrap_or(NetFormat::Auto),
            interfaces,
        })
    }

    fn interface(&mut self, name: &str, t: &Table, loc: Loc) -> Option<Interface> {
        let path = format!("network.interfaces.{name}.");
        self.keys(t, &format!("[network.interfaces.{name}]"), IFACE_KEYS);
        let mut ok = true;
        let dhcp = self.bool(t, &path, "dhcp");
        ok &= dhcp.is_some() || t.get("dhcp").is_none();
        let mut address = None;
        let mut net: Option<(IpAddr, u8)> = None;
        if let Some((a, aloc)) = self.str(t, &path, "address", "address = \"192.0.2.10/24\"") {
            match parse_cidr(&a) {
                Ok(c) => {
                    net = Some(c);
                    address = Some(a);
                }
                Err(m) => {
                    self.err(aloc, m);
                    ok = false;
                }
            }
        } else {
            ok &= t.get("address").is_none();
        }
        let mut gateway = None;
        if let Some((g, gloc)) = self.str(t, &path, "gateway", "gateway = \"192.0.2.1\"") {
            match g.parse::<IpAddr>() {
                Ok(ip) => {
                    if let Some((a, prefix)) = net {
                        if a.is_ipv4() != ip.is_ipv4() {
                            self.err(gloc, format!("gateway {g:?} is not the same IP version as address {}; write a gateway inside the address's network", address.as_deref().unwrap_or("")));
                            ok = false;
                        } else if !same_net(a, ip, prefix) {
                            self.err(gloc, format!("gateway {g:?} is outside {}; write a gateway inside that network", address.as_deref().unwrap_or("")));
                            ok = false;
                        }
                    }
                    gateway = Some(ip);
                }
                Err(_) => {
                    self.err(gloc, format!("gateway {g:?} is not an IP address; write e.g. gateway = \"192.0.2.1\""));
                    ok = false;
                }
            }
        } else {
            ok &= t.get("gateway").is_none();
        }
        let mut dns = Vec::new();
        if let Some((list, _)) = self.str_array(t, &path, "dns", "dns = [\"192.0.2.53\"]") {
            for (d, dloc) in list {
                match d.parse::<IpAddr>() {
                    Ok(ip) => dns.push(ip),
                    Err(_) => {
                        self.err(dloc, format!("dns server {d:?} is not an IP address; write e.g. dns = [\"192.0.2.53\"]"));
                        ok = false;
                    }
                }
            }
        } else {
            ok &= t.get("dns").is_none();
        }
        let static_given = t.get("address").is_some();
        let dhcp_v = match (dhcp, static_given) {
            (Some((true, dloc)), true) => {
                self.err(dloc, format!("interface {name:?} has both dhcp = true and a static address; remove one of them"));
                ok = false;
                true
            }
            (Some((false, dloc)), false) => {
                self.err(dloc, format!("interface {name:?} has dhcp = false and no address; add address = \"192.0.2.10/24\" or set dhcp = true"));
                ok = false;
                false
            }
            (Some((b, _)), _) => b,
            (None, a) => !a,
        };
        if dhcp_v && gateway.is_some() {
            self.err(loc, format!("interface {name:?} uses DHCP but sets a gateway; remove gateway or give a static address"));
            ok = false;
        }
        if !ok {
            return None;
        }
        Some(Interface {
            name: name.to_string(),
            dhcp: dhcp_v,
            address,
            gateway,
            dns,
        })
    }

    fn boot(&mut self, root: &Table) -> Option<BootDecoded> {
        let empty = Table::default();
        let (t, tloc) = match self.table(root, "", "boot") {
            Some(x) => x,
            None if root.get("boot").is_some() => return None,
            None => (&empty, self.top),
        };
        self.keys(t, "[boot]", BOOT_KEYS);
        let loader = self.choice(
            t,
            "boot.",
            "loader",
            &[
                ("grub", Loader::Grub),
                ("extlinux", Loader::Extlinux),
                ("none", Loader::None),
            ],
        );
        let firmware = self.choice(
            t,
            "boot.",
            "firmware",
            &[
                ("bios", Firmware::Bios),
                ("uefi", Firmware::Uefi),
                ("both", Firmware::Both),
            ],
        );
        if (loader.is_none() && t.get("loader").is_some())
            || (firmware.is_none() && t.get("firmware").is_some())
        {
            return None;
        }
        Some(BootDecoded {
            loader: loader.unwrap_or((Loader::Grub, tloc)),
            firmware: firmware.unwrap_or((Firmware::Bios, tloc)),
            explicit: loader.is_some() || firmware.is_some(),
        })
    }

    fn hooks(&mut self, root: &Table) -> Option<Vec<String>> {
        let Some((list, _)) =
            self.str_array(root, "", "hooks", "hooks = [\"apt-get -y install nginx\"]")
        else {
            return if root.get("hooks").is_some() {
                None
            } else {
                Some(Vec::new())
            };
        };
        let mut ok = true;
        for (h, loc) in &list {
            if h.trim().is_empty() {
                self.err(*loc, "hook is empty; write a shell command, e.g. \"systemctl enable nginx\", or remove it");
                ok = false;
            }
        }
        if let Some(e) = root.get("hooks") {
            if let Value::Array(a) = &e.node.v {
                ok &= a.len() == list.len();
            }
        }
        ok.then(|| list.into_iter().map(|h| h.0).collect())
    }
}

fn fw_name(f: Firmware) -> &'static str {
    match f {
        Firmware::Bios => "bios",
        Firmware::Uefi => "uefi",
        Firmware::Both => "both",
    }
}

/// `address/prefix`.
pub(crate) fn parse_cidr(s: &str) -> Result<(IpAddr, u8), String> {
    let hint = "write e.g. address = \"192.0.2.10/24\" (or an IPv6 address/prefix)";
    let Some((a, p)) = s.split_once('/') else {
        return Err(format!("address {s:?} has no prefix length; {hint}"));
    };
    let ip: IpAddr = a
        .parse()
        .map_err(|_| format!("address {s:?}: {a:?} is not an IP address; {hint}"))?;
    let max = if ip.is_ipv4() { 32 } else { 128 };
    match p.parse::<u8>() {
        Ok(n) if (1..=max).contains(&n) => Ok((ip, n)),
        _ => Err(format!(
            "address {s:?}: prefix length {p:?} is not 1 to {max}; {hint}"
        )),
    }
}

fn same_net(a: IpAddr, b: IpAddr, prefix: u8) -> bool {
    match (a, b) {
        (IpAddr::V4(a), IpAddr::V4(b)) => {
            let mask = if prefix == 0 {
                0
            } else {
                u32::MAX << (32 - prefix as u32)
            };
            (u32::from(a) & mask) == (u32::from(b) & mask)
        }
        (IpAddr::V6(a), IpAddr::V6(b)) => {
            let mask = if prefix == 0 {
                0
            } else {
                u128::MAX << (128 - prefix as u32)
            };
            (u128::from(a) & mask) == (u128::from(b) & mask)
        }
        _ => false,
    }
}

/// What a decoded partition-like entry belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Holder {
    Disk,
    Lvm,
}

impl Holder {
    fn noun(self) -> &'static str {
        match self {
            Holder::Disk => "partition",
            Holder::Lvm => "volume",
        }
    }
}

/// Why a name cannot be an LVM volume group or logical volume name, if it cannot (the
/// characters LVM takes, without '-', which device-mapper names double).
fn lvm_name_problem(name: &str) -> Option<String> {
    if name.is_empty() || name.len() > 64 {
        return Some("must be 1 to 64 characters".into());
    }
    if name.starts_with('.') || name.starts_with("snapshot") || name.starts_with("pvmove") {
        return Some("is reserved by LVM; choose e.g. \"vg0\" or \"root\"".into());
    }
    if !name
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || "_.+".contains(c))
    {
        return Some("may only hold letters, digits and _ . +".into());
    }
    None
}

struct LvmDecoded {
    vg: String,
    volumes: Vec<PartDecoded>,
    loc: Loc,
    /// Every volume decoded without error.
    complete: bool,
}

struct PartDecoded {
    on: Holder,
    spec: PartitionSpec,
    loc: Loc,
    size_loc: Loc,
    mount_loc: Option<Loc>,
    fs_loc: Option<Loc>,
    /// 1-based position in the profile's list.
    n: usize,
    /// False when the partition had an error (already reported).
    ok: bool,
    size_ok: bool,
}

struct DiskDecoded {
    select: DiskSelect,
    /// How many disks get the layout, and where that was said.
    count: (usize, Option<Loc>),
    parts: Vec<PartDecoded>,
    loc: Loc,
    /// Every partition decoded without error.
    complete: bool,
}

struct BootDecoded {
    loader: At<Loader>,
    firmware: At<Firmware>,
    explicit: bool,
}
