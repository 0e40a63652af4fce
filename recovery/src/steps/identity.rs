//! Identity steps: hostname, machine-id, SSH host keys, root's authorized keys, users.

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;
use std::process::Command;

use anyhow::{bail, Context, Result};
use ignite_profiles::User;

use super::chroot;
use super::mount::Target;
use crate::log::Log;
use crate::random;
use crate::tree::Tree;

fn write(path: &Path, text: &str) -> Result<()> {
    if let Some(d) = path.parent() {
        std::fs::create_dir_all(d).with_context(|| format!("cannot create {}", d.display()))?;
    }
    std::fs::write(path, text).with_context(|| format!("cannot write {}", path.display()))
}

/// `/etc/hostname` and `/etc/hosts` for `name` (written without following symlinks).
pub fn hostname(root: &Path, name: &str, log: &mut Log) -> Result<()> {
    let tree = Tree::open(root)?;
    tree.write("etc/hostname", format!("{name}\n").as_bytes(), 0o644)?;
    let short = name.split('.').next().unwrap_or(name);
    let alias = if short == name {
        name.to_string()
    } else {
        format!("{name} {short}")
    };
    tree.write(
        "etc/hosts",
        format!(
            "127.0.0.1\tlocalhost\n127.0.1.1\t{alias}\n\n\
             ::1\tlocalhost ip6-localhost ip6-loopback\nff02::1\tip6-allnodes\nff02::2\tip6-allrouters\n"
        )
        .as_bytes(),
        0o644,
    )?;
    log.line(&format!("hostname {name}"));
    Ok(())
}

/// A fresh `/etc/machine-id` (and the D-Bus copy older images keep as a file; a symlink to
/// /etc/machine-id needs nothing). Returns it.
pub fn machine_id(root: &Path, log: &mut Log) -> Result<String> {
    let tree = Tree::open(root)?;
    let id = random::hex(16)?;
    tree.write("etc/machine-id", format!("{id}\n").as_bytes(), 0o444)?;
    if tree
        .read("var/lib/dbus/machine-id", 64)
        .is_ok_and(|f| f.is_some())
    {
        tree.write(
            "var/lib/dbus/machine-id",
            format!("{id}\n").as_bytes(),
            0o444,
        )?;
    }
    log.line(&format!("machine-id {id}"));
    Ok(id)
}

pub fn ssh_host_keys(target: &mut Target, log: &mut Log) -> Result<()> {
    let dir = target.path("/etc/ssh");
    let mut removed = 0;
    if let Ok(rd) = std::fs::read_dir(&dir) {
        for e in rd.flatten() {
            if e.file_name().to_string_lossy().starts_with("ssh_host_") {
                std::fs::remove_file(e.path())
                    .with_context(|| format!("cannot remove {}", e.path().display()))?;
                removed += 1;
            }
        }
    }
    let keygen = ["usr/bin/ssh-keygen", "bin/ssh-keygen"]
        .iter()
        .any(|p| target.root().join(p).exists());
    if !keygen {
        log.line(&format!(
            "no ssh-keygen in the image ({removed} old host keys removed): it has no SSH server to key"
        ));
        return Ok(());
    }
    chroot::run(target, Command::new("ssh-keygen").arg("-A"), log)?;
    log.line(&format!(
        "SSH host keys: {removed} old removed, fresh ones generated"
    ));
    Ok(())
}

fn authorized_keys(home: &Path, keys: &[String], uid: u32, gid: u32) -> Result<()> {
    let ssh = home.join(".ssh");
    std::fs::create_dir_all(&ssh).with_context(|| format!("cannot create {}", ssh.display()))?;
    std::fs::set_permissions(&ssh, std::fs::Permissions::from_mode(0o700))?;
    let file = ssh.join("authorized_keys");
    write(&file, &(keys.join("\n") + "\n"))?;
    std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o600))?;
    std::os::unix::fs::chown(&ssh, Some(uid), Some(gid))?;
    std::os::unix::fs::chown(&file, Some(uid), Some(gid))?;
    Ok(())
}

pub fn root_authorized_keys(root: &Path, keys: &[String]) -> Result<()> {
    authorized_keys(&root.join("root"), keys, 0, 0)
}

pub fn user(target: &mut Target, u: &User, log: &mut Log) -> Result<()> {
    let mut cmd = Command::new("useradd");
    cmd.args(["--create-home", "--shell", &u.shell]);
    if let Some(uid) = u.uid {
        cmd.args(["--uid", &uid.to_string()]);
    }
    if !u.groups.is_empty() {
        cmd.args(["--groups", &u.groups.join(",")]);
    }
    cmd.arg(&u.name);
    chroot::run(target, &mut cmd, log)?;
    if u.authorized_keys.is_empty() {
        return Ok(());
    }
    let passwd = std::fs::read_to_string(target.path("/etc/passwd"))?;
    let Some(home) = passwd
        .lines()
        .map(|l| l.split(':').collect::<Vec<_>>())
        .find(|f| f.len() >= 7 && f[0] == u.name)
        .map(|f| f[5].to_string())
    else {
        bail!("user {}: useradd ran but /etc/passwd has no entry", u.name);
    };
    let home = target.path(&home);
    let md = std::fs::metadata(&home)
        .with_context(|| format!("user {}: no home directory {}", u.name, home.display()))?;
    authorized_keys(&home, &u.authorized_keys, md.uid(), md.gid())
}
