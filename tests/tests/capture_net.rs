//! Captures over the network (issue 12, any client that is not a guest of ours):
//! - on the host: `ignite recovery capture --server` in the server's network namespace
//!   captures a directory tree as a running system at file level, with rules (a path, a
//!   directory's contents, the defaults) and an essential refused; the server is killed with
//!   SIGKILL mid-upload and restarted, the client resumes, the store verifies, the capture
//!   exports equal to the tree less what was left out, and the next capture reads and sends
//!   only what changed; an image file is captured at block level and its layout recorded;
//! - in QEMU (software emulation): a guest installed over the network captures its running
//!   system with the binary it downloads from the server, then netboots to `capture` and
//!   the agent captures its file systems from its disk; both export equal to its disk.

use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::time::{Duration, Instant};

use ignite_e2e::site::*;
use ignite_e2e::*;
use serde_json::Value;

const SERVER: &str = "http://10.77.0.1:8080";

fn sh(script: &str) -> String {
    run(Command::new("bash").args(["-euc", script]))
}

/// A small system-like tree: what a capture must keep (owners, setuid, xattrs, hard links,
/// a sparse file, symlinks, devices, a fifo) and what rules and defaults leave out (`srv`,
/// `var/cache/*`, `tmp/*`, `dev/*`), with enough distinct data that its upload takes many batches.
fn make_system(root: &Path) {
    for d in [
        "etc",
        "usr/bin",
        "data",
        "srv/big",
        "tmp/junk",
        "var/cache/apt",
        "var/lib",
        "dev",
        "proc",
    ] {
        std::fs::create_dir_all(root.join(d)).unwrap();
    }
    for i in 0..40u64 {
        std::fs::write(
            root.join(format!("data/f{i}")),
            pattern(1_000_000 + i as usize * 7_919, i + 1),
        )
        .unwrap();
    }
    std::fs::write(root.join("srv/big/blob"), pattern(4 << 20, 1000)).unwrap();
    std::fs::write(root.join("tmp/junk/x"), pattern(100_000, 1001)).unwrap();
    std::fs::write(
        root.join("var/cache/apt/pkgcache.bin"),
        pattern(300_000, 1002),
    )
    .unwrap();
    std::fs::write(root.join("var/lib/state"), "kept\n").unwrap();
    std::fs::write(root.join("etc/hostname"), "netcap-lab\n").unwrap();
    std::fs::write(root.join("etc/fstab"), "UUID=1234 / ext4 defaults 0 1\n").unwrap();
    std::fs::write(root.join("usr/bin/tool"), pattern(50_000, 1003)).unwrap();
    let sparse = std::fs::File::create(root.join("data/sparse")).unwrap();
    sparse.set_len(16 << 20).unwrap();
    std::os::unix::fs::FileExt::write_all_at(&sparse, &pattern(300_000, 1004), 8 << 20).unwrap();
    sh(&format!(
        "cd {}
         ln data/f0 data/hard
         ln -s ../data/f1 usr/link
         chown 1234:5678 data/f3
         chmod 4755 usr/bin/tool
         chmod 1777 tmp
         setfattr -n user.ignite -v kept data/f2
         mknod data/null c 1 3
         mknod dev/null c 1 3
         mkfifo data/fifo
         touch -d 2020-01-02T03:04:05 data/f6 etc",
        root.display()
    ));
}

struct Net {
    lab: Lab,
    dir: tempfile::TempDir,
    server: Option<Server>,
}

impl Net {
    fn new(tag: &str) -> Option<Net> {
        if !require_tools(&["ip", "tar", "setfattr", "mknod", "mke2fs"]) {
            return None;
        }
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("boot")).unwrap();
        Some(Net {
            lab: Lab::new(tag),
            dir,
            server: None,
        })
    }

    fn path(&self, p: &str) -> PathBuf {
        self.dir.path().join(p)
    }

    fn start(&mut self, env: &[(&str, &str)]) {
        self.server = Some(Server::start_env(
            &self.lab,
            &self.path("state"),
            &self.path("boot"),
            &[],
            env,
        ));
    }

    fn server_log(&self) -> String {
        self.server
            .as_ref()
            .map(|s| tail(&s.log_text(), 40))
            .unwrap_or_default()
    }

    /// `ignite ARGS --state-dir STATE` on the server's side.
    fn ignite(&self, args: &[&str]) -> String {
        run(ignite_cmd(args).arg("--state-dir").arg(self.path("state")))
    }

    fn ignite_json(&self, args: &[&str]) -> Value {
        serde_json::from_str(&self.ignite(args)).unwrap()
    }

    /// `ignite recovery capture --server` in the lab namespace, as a client would run it.
    fn capture_cmd(&self, token: &str, args: &[&str]) -> Command {
        let mut c = Lab::cmd(&self.lab.ns, ignite_bin());
        c.args(["recovery", "capture", "--server", SERVER, "--token", token])
            .args(args)
            .env("RUST_LOG", "warn");
        c
    }

    fn capture(&self, token: &str, args: &[&str]) -> Output2 {
        let out = self.capture_cmd(token, args).output().unwrap();
        Output2 {
            ok: out.status.success(),
            text: format!(
                "{}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            ),
        }
    }

    fn last_capture(&self, name: &str) -> Value {
        let list = self.ignite_json(&["recovery", "list", name, "--json"]);
        list.as_array().unwrap().last().unwrap().clone()
    }
}

struct Output2 {
    ok: bool,
    text: String,
}

/// Exports `spec` of the server's store into `dir`.
fn export_tree(net: &Net, spec: &str, dir: &Path) {
    let _ = std::fs::remove_dir_all(dir);
    run(ignite_cmd(&["archive", "--store"])
        .arg(net.path("state/store"))
        .args(["export", spec, "--dir"])
        .arg(dir));
}

/// GNU tar's comparison of `dir` with `tree` (contents, owners, modes, times, xattrs, links),
/// leaving out `excludes` (tar patterns relative to the tree); the differences, one a line.
fn tar_compare(tree: &Path, dir: &Path, excludes: &[&str], scratch: &Path) -> String {
    let tar = scratch.join("compare.tar");
    let ex: Vec<String> = excludes
        .iter()
        .map(|e| format!("--exclude='{e}'"))
        .collect();
    sh(&format!(
        "tar --xattrs --xattrs-include='*' --numeric-owner {} -C {} -cf {} .",
        ex.join(" "),
        tree.display(),
        tar.display()
    ));
    let out = Command::new("tar")
        .args(["--xattrs", "--xattrs-include=*", "--numeric-owner", "-C"])
        .arg(dir)
        .args(["--compare", "-f"])
        .arg(&tar)
        .output()
        .unwrap();
    let _ = std::fs::remove_file(&tar);
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// Whether a pack is being written in the store's tmp/ (uploads have reached the server).
fn upload_arrived(store: &Path) -> bool {
    std::fs::read_dir(store.join("tmp"))
        .map(|rd| {
            rd.flatten()
                .any(|e| e.metadata().is_ok_and(|m| m.len() > (1 << 20)))
        })
        .unwrap_or(false)
}

#[test]
fn a_live_file_capture_over_the_network_survives_a_killed_server_and_keeps_its_rules() {
    let Some(mut net) = Net::new("capnet") else {
        return;
    };
    let src = net.path("system");
    make_system(&src);
    let root = src.to_str().unwrap().to_string();
    // Uploads are slowed so that the server can be killed in the middle of them.
    net.start(&[("IGNITE_TEST_UPLOAD_DELAY_MS", "1500")]);

    // An essential cannot be excluded: refused when the token is made, and by the server
    // when the client asks for it, with the reason; the refusal is in the history.
    let out = ignite_cmd(&[
        "recovery",
        "token",
        "lab1",
        "-x",
        "exclude=/usr",
        "--state-dir",
    ])
    .arg(net.path("state"))
    .output()
    .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && err.contains("exclude=/usr is refused: /usr is essential"),
        "{err}"
    );
    let token = net
        .ignite(&["recovery", "token", "lab1", "-x", "exclude=/srv"])
        .trim()
        .to_string();
    let refused = net.capture(&token, &["--root", &root, "-x", "exclude=/etc/*"]);
    assert!(
        !refused.ok && refused.text.contains("exclude=/etc/* is refused"),
        "{}",
        refused.text
    );
    let row = net.last_capture("lab1");
    assert_eq!(row["result"], "failed", "{row}");
    assert!(
        row["error"].as_str().unwrap().contains("is refused"),
        "{row}"
    );

    // The capture; the server is killed once uploads have arrived, and started again.
    // The client's output goes to a file: a pipe nobody reads would stall it once full.
    let client_log = net.path("client.log");
    let log_file = std::fs::File::create(&client_log).unwrap();
    let mut client: Child = net
        .capture_cmd(&token, &["--root", &root, "-x", "exclude=/var/cache/*"])
        .stdout(log_file.try_clone().unwrap())
        .stderr(log_file)
        .spawn()
        .unwrap();
    let client_text = || std::fs::read_to_string(&client_log).unwrap_or_default();
    let store = net.path("state/store");
    wait_until(
        "the first uploads to reach the server",
        Duration::from_secs(120),
        || upload_arrived(&store),
        || net.server_log(),
    );
    net.server.as_mut().unwrap().kill();
    eprintln!("server killed mid-upload");
    assert!(
        client.try_wait().unwrap().is_none(),
        "the client must wait for the server, not give up"
    );
    net.start(&[]);
    let t = Instant::now();
    let out = loop {
        if let Some(st) = client.try_wait().unwrap() {
            break st;
        }
        if t.elapsed() > Duration::from_secs(300) {
            let _ = client.kill();
            let _ = client.wait();
            panic!(
                "client still running after 300 s:\n{}\nserver:\n{}",
                tail(&client_text(), 40),
                net.server_log()
            );
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    let text = client_text();
    assert!(
        out.success(),
        "capture failed after the restart:\n{text}\nserver:\n{}",
        net.server_log()
    );
    assert!(
        text.contains("beginning again"),
        "the client did not resume:\n{text}"
    );
    let log = net.server.as_ref().unwrap().log_text();
    assert!(
        log.contains("capture of lab1 (files, live) resumed"),
        "{log}"
    );
    run(ignite_cmd(&["archive", "--store"])
        .arg(&store)
        .arg("verify"));

    // One history row for the interrupted-and-resumed capture, ok.
    let row = net.last_capture("lab1");
    assert_eq!(
        (
            row["result"].as_str(),
            row["how"].as_str(),
            row["kind"].as_str()
        ),
        (Some("ok"), Some("live"), Some("files")),
        "{row}"
    );
    let rec = net.ignite_json(&["recovery", "show", "lab1", "--json"]);
    assert_eq!(rec["kind"], "files", "{rec}");
    assert_eq!(rec["system"]["hostname"], "netcap-lab", "{rec}");
    assert_eq!(rec["source"]["type"], "client", "{rec}");
    let excluded: Vec<&str> = rec["files"]["excluded"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap())
        .collect();
    for e in [
        "/srv (rule exclude=/srv)",
        "/var/cache/* (rule exclude=/var/cache/*)",
        "/tmp/* (left out by default)",
    ] {
        assert!(excluded.contains(&e), "{e} not in {excluded:?}");
    }

    // The capture is the tree, less what the rules and defaults left out.
    let out_dir = net.path("export");
    export_tree(&net, "lab1:files", &out_dir);
    let diffs = tar_compare(
        &src,
        &out_dir,
        &["./srv", "./tmp/*", "./var/cache/*", "./dev/*"],
        net.dir.path(),
    );
    assert!(
        diffs.trim().is_empty(),
        "export differs from the tree:\n{diffs}"
    );
    for gone in ["srv", "tmp/junk", "var/cache/apt", "dev/null"] {
        assert!(
            !out_dir.join(gone).exists(),
            "{gone} was left out, yet exported"
        );
    }
    use std::os::unix::fs::PermissionsExt;
    let tmp_mode = std::fs::metadata(out_dir.join("tmp"))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(tmp_mode & 0o7777, 0o1777, "/tmp keeps its own mode");
    assert!(out_dir.join("var/cache").is_dir() && out_dir.join("var/lib/state").is_file());

    // The next capture reads only what changed, and sends about that much.
    std::fs::write(src.join("data/new"), pattern(2 << 20, 2000)).unwrap();
    let again = net.capture(&token, &["--root", &root, "-x", "exclude=/var/cache/*"]);
    assert!(again.ok, "{}\n{}", again.text, net.server_log());
    let row = net.last_capture("lab1");
    let (read, new) = (
        row["read_bytes"].as_u64().unwrap(),
        row["new_bytes"].as_u64().unwrap(),
    );
    assert!(
        read <= (2 << 20) + (1 << 20),
        "read {read} bytes for a 2 MiB change:\n{row}"
    );
    assert!(
        new <= (2 << 20) + (256 << 10),
        "stored {new} new bytes for a 2 MiB change:\n{row}"
    );
    let notes = row["notes"].as_str().unwrap();
    let wire: u64 = notes
        .split(" bytes on the wire")
        .next()
        .unwrap()
        .parse()
        .unwrap();
    assert!(
        wire <= new + (1 << 20),
        "{wire} bytes on the wire for {new} new:\n{row}"
    );
    eprintln!("second capture: {read} read, {new} new, {wire} on the wire");
    export_tree(&net, "lab1:files", &out_dir);
    assert_eq!(
        std::fs::read(out_dir.join("data/new")).unwrap(),
        pattern(2 << 20, 2000)
    );
}

#[test]
fn an_image_captured_at_block_level_over_the_network_keeps_its_layout() {
    let Some(mut net) = Net::new("capblk") else {
        return;
    };
    net.start(&[]);
    let content = net.path("content");
    std::fs::create_dir_all(content.join("etc")).unwrap();
    std::fs::write(content.join("etc/hostname"), "blk\n").unwrap();
    std::fs::write(content.join("payload"), pattern(5 << 20, 7)).unwrap();
    let img = net.path("disk.img");
    sh(&format!(
        "truncate -s 64M {img}; mke2fs -q -t ext4 -U 0f0e0d0c-0b0a-0908-0706-050403020100 -d {} {img}",
        content.display(),
        img = img.display()
    ));
    let token = net
        .ignite(&["recovery", "token", "img1", "--kind", "block"])
        .trim()
        .to_string();
    // A file capture is not what this token is for.
    let wrong = net.capture(&token, &["--root", content.to_str().unwrap()]);
    assert!(
        !wrong.ok && wrong.text.contains("is for a block capture"),
        "{}",
        wrong.text
    );
    let out = net.capture(&token, &["--disk", img.to_str().unwrap()]);
    assert!(out.ok, "{}\n{}", out.text, net.server_log());
    let rec = net.ignite_json(&["recovery", "show", "img1", "--json"]);
    assert_eq!(rec["kind"], "block", "{rec}");
    let fs = &rec["disks"][0]["layout"]["partitions"][0]["fs"];
    assert_eq!(fs["fs_type"], "ext4", "{rec}");
    assert_eq!(fs["uuid"], "0f0e0d0c-0b0a-0908-0706-050403020100", "{rec}");
    let back = net.path("back.img");
    run(ignite_cmd(&["archive", "--store"])
        .arg(net.path("state/store"))
        .args(["export", "img1:disk0", "--image"])
        .arg(&back));
    assert_eq!(
        std::fs::read(&back).unwrap(),
        std::fs::read(&img).unwrap(),
        "exported image differs"
    );
    let row = net.last_capture("img1");
    assert_eq!(
        (row["result"].as_str(), row["how"].as_str()),
        (Some("ok"), Some("live")),
        "{row}"
    );
}

/// `curl` in namespace `ns` with `args`; the HTTP status and the body.
fn curl(ns: &str, args: &[&str]) -> (u16, String) {
    let out = Lab::cmd(ns, "curl")
        .args(["-s", "-w", "\n%{http_code}"])
        .args(args)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let (body, code) = text.rsplit_once('\n').unwrap_or(("", &text));
    (code.trim().parse().unwrap_or(0), body.to_string())
}

#[test]
fn forged_uploads_and_borrowed_tokens_are_refused_and_the_binary_is_served() {
    let Some(mut net) = Net::new("capsec") else {
        return;
    };
    if !require_tools(&["curl"]) {
        return;
    }
    net.start(&[]);
    let token = net
        .ignite(&["recovery", "token", "forge1"])
        .trim()
        .to_string();
    let auth = format!("Authorization: Bearer {token}");
    let begin = format!("{SERVER}/api/capture/begin");
    let ns = net.lab.ns.clone();
    let (code, body) = curl(&ns, &["-X", "POST", &begin]);
    assert_eq!(code, 401, "no token: {body}");
    let (code, body) = curl(
        &ns,
        &["-H", "Authorization: Bearer 00ff", "--data", "{}", &begin],
    );
    assert_eq!(code, 403, "unknown token: {body}");
    let ask = r#"{"kind":"files","rules":[],"client":"forger"}"#;
    let (code, body) = curl(&ns, &["-H", &auth, "--data", ask, &begin]);
    assert_eq!(code, 200, "{body}\n{}", net.server_log());
    let session: Value = serde_json::from_str(&body).unwrap();
    let session = session["session"].as_str().unwrap().to_string();

    // A chunk whose data does not hash to its id is refused, and nothing of it is stored.
    use ignite_archive::chunk_stream::{encode_upload, StoredChunk};
    let forged = StoredChunk {
        id: ignite_archive::ChunkId::of(b"what the id claims"),
        codec: ignite_archive::pack::Codec::Raw,
        raw_len: 9,
        data: b"forged!!!".to_vec(),
    };
    let upload = net.path("forged.bin");
    std::fs::write(&upload, encode_upload(&[forged])).unwrap();
    let chunks = format!("{SERVER}/api/capture/{session}/chunks");
    let from_file = format!("@{}", upload.display());
    let (code, body) = curl(&ns, &["-H", &auth, "--data-binary", &from_file, &chunks]);
    assert_eq!(code, 422, "forged chunk: {body}\n{}", net.server_log());
    assert!(body.contains("uploaded chunk refused"), "{body}");
    run(ignite_cmd(&["archive", "--store"])
        .arg(net.path("state/store"))
        .arg("verify"));

    // The token is bound to the address that used it first: from another one it opens
    // nothing, not even the session it began.
    let other = net.lab.add_client(1);
    run(Lab::cmd(&other, "ip").args(["addr", "add", "10.77.0.50/24", "dev", "c0"]));
    let (code, body) = curl(&other, &["-H", &auth, "--data", ask, &begin]);
    assert_eq!(code, 403, "borrowed token: {body}");
    assert!(body.contains("bound to another address"), "{body}");
    let (code, body) = curl(&other, &["-H", &auth, "--data-binary", &from_file, &chunks]);
    assert_eq!(code, 403, "borrowed session: {body}");

    // The client's binary is this very `ignite`, for anyone on the boot network.
    let fetched = net.path("fetched-ignite");
    run(Lab::cmd(&other, "curl")
        .args(["-sSf", "-o"])
        .arg(&fetched)
        .arg(format!("{SERVER}/ignite")));
    assert!(
        std::fs::read(&fetched).unwrap() == std::fs::read(ignite_bin()).unwrap(),
        "GET /ignite did not serve the server's binary"
    );
}

/// Installed by a profile hook: on the first boot of the installed system, fetch `ignite`
/// from the server (the image has neither curl nor wget; its perl does the HTTP GET),
/// capture the running system with it, say how that went on the console, power off.
fn live_capture_hook(token: &str) -> String {
    format!(
        r#"cat >/usr/local/sbin/ignite-fetch <<'FETCH'
#!/usr/bin/perl
use strict;
use IO::Socket::INET;
my $s;
for (1 .. 60) {{
    $s = IO::Socket::INET->new(PeerAddr => "10.77.0.1:8080", Timeout => 5) and last;
    sleep 1;
}}
$s or die "cannot reach the server: $!\n";
print $s "GET /ignite HTTP/1.0\r\nHost: 10.77.0.1\r\n\r\n";
binmode $s;
local $/;
my ($head, $body) = split /\r\n\r\n/, <$s>, 2;
$head =~ m{{^HTTP/1\.[01] 200}} or die "server answered: $head\n";
open my $f, ">", $ARGV[0] or die "$ARGV[0]: $!\n";
binmode $f;
print $f $body;
close $f or die "$ARGV[0]: $!\n";
FETCH
cat >/usr/local/sbin/ignite-live-capture <<'CAPTURE'
#!/bin/sh
exec >/dev/ttyS0 2>&1
echo IGNITE-LIVE-START
if perl /usr/local/sbin/ignite-fetch /usr/local/bin/ignite && chmod 755 /usr/local/bin/ignite; then
    /usr/local/bin/ignite recovery capture --server http://10.77.0.1:8080 --token {token} -x 'exclude=/var/cache/*'
    echo "IGNITE-LIVE-DONE rc=$?"
else
    echo "IGNITE-LIVE-DONE rc=fetch"
fi
touch /var/lib/ignite-live-done
systemctl poweroff
CAPTURE
chmod 755 /usr/local/sbin/ignite-fetch /usr/local/sbin/ignite-live-capture
cat >/etc/systemd/system/ignite-live-capture.service <<'UNIT'
[Unit]
Description=Capture this machine to the Ignite server, once (Ignite tests)
Wants=network-online.target
After=network-online.target
# Before the console's getty, which hangs up every other user of ttyS0 when it starts.
Before=getty.target serial-getty@ttyS0.service
ConditionPathExists=!/var/lib/ignite-live-done
[Service]
Type=oneshot
ExecStart=/usr/local/sbin/ignite-live-capture
[Install]
WantedBy=multi-user.target
UNIT
systemctl enable ignite-live-capture.service"#
    )
}

/// A guest's disk image mounted read-only on the host as the guest mounts it (root, then
/// /var and /boot/efi from its fstab), but for file systems the host's kernel cannot mount
/// (this one has no vfat); unmounted on drop.
struct Mounted {
    dir: tempfile::TempDir,
    mounts: Vec<PathBuf>,
    loops: Vec<String>,
    /// Mount points left unmounted, as tar patterns (`./boot/efi`).
    unreadable: Vec<String>,
}

fn blkid(dev: &str, tag: &str) -> String {
    let out = Command::new("blkid")
        .args(["-p", "-o", "value", "-s", tag, dev])
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

impl Mounted {
    fn new(image: &Path) -> Mounted {
        let mut m = Mounted {
            dir: tempfile::tempdir().unwrap(),
            mounts: Vec::new(),
            loops: Vec::new(),
            unreadable: Vec::new(),
        };
        let kernel_has = std::fs::read_to_string("/proc/filesystems").unwrap();
        let table: Value =
            serde_json::from_str(&run(Command::new("sfdisk").arg("--json").arg(image))).unwrap();
        for p in table["partitiontable"]["partitions"].as_array().unwrap() {
            let (start, size) = (
                p["start"].as_u64().unwrap() * 512,
                p["size"].as_u64().unwrap() * 512,
            );
            let dev = run(Command::new("losetup")
                .args([
                    "--find",
                    "--show",
                    "--read-only",
                    "--offset",
                    &start.to_string(),
                    "--sizelimit",
                    &size.to_string(),
                ])
                .arg(image))
            .trim()
            .to_string();
            m.loops.push(dev);
        }
        let root = m
            .loops
            .iter()
            .find(|d| blkid(d, "TYPE") == "ext4")
            .expect("an ext4 root")
            .clone();
        m.mount(&root, "/", "ext4", "ro,noload");
        let fstab = std::fs::read_to_string(m.dir.path().join("etc/fstab")).unwrap();
        for line in fstab.lines().filter(|l| !l.trim_start().starts_with('#')) {
            let f: Vec<&str> = line.split_whitespace().collect();
            if f.len() < 4 || f[1] == "/" || !f[1].starts_with('/') || f[2] == "swap" {
                continue;
            }
            if !kernel_has
                .lines()
                .any(|l| l.split_whitespace().last() == Some(f[2]))
            {
                m.unreadable.push(format!(".{}", f[1]));
                continue;
            }
            let uuid = f[0].trim_start_matches("UUID=");
            let dev = m
                .loops
                .iter()
                .find(|d| blkid(d, "UUID").eq_ignore_ascii_case(uuid))
                .unwrap_or_else(|| panic!("no partition for {line}"))
                .clone();
            let opts = match f[2] {
                "xfs" => "ro,norecovery".to_string(),
                "vfat" => format!("ro,{}", f[3]),
                _ => "ro".to_string(),
            };
            m.mount(&dev, f[1], f[2], &opts);
        }
        m
    }

    fn mount(&mut self, dev: &str, at: &str, ty: &str, opts: &str) {
        let target = self.dir.path().join(at.trim_start_matches('/'));
        run(Command::new("mount")
            .args(["-t", ty, "-o", opts, dev])
            .arg(&target));
        self.mounts.push(target);
    }

    fn root(&self) -> &Path {
        self.dir.path()
    }
}

impl Drop for Mounted {
    fn drop(&mut self) {
        for m in self.mounts.iter().rev() {
            let _ = Command::new("umount").arg(m).status();
        }
        for l in &self.loops {
            let _ = Command::new("losetup").args(["-d", l]).status();
        }
    }
}

/// What every file capture of the guest leaves out (the defaults and the tests' rule), as
/// tar patterns.
const LEFT_OUT: &[&str] = &[
    "./proc/*",
    "./sys/*",
    "./dev/*",
    "./run/*",
    "./tmp/*",
    "./var/cache/*",
];

fn last_row(site: &Site, name: &str) -> Value {
    let rows: Value =
        serde_json::from_str(&site.ignite(&["recovery", "list", name, "--json"])).unwrap();
    rows.as_array().unwrap().last().unwrap().clone()
}

#[test]
fn an_installed_guest_is_captured_live_then_by_the_netbooted_agent() {
    if !require_tools(&[
        "qemu-system-x86_64",
        "ip",
        "apt-get",
        "debootstrap",
        "sfdisk",
        "losetup",
        "blkid",
        "tar",
    ]) {
        return;
    }
    let site = Site::new(&[]);
    site.ignite(&["client", "add", "52:54:00:78:00:01", "g1", "install", "lab"]);
    let token = site
        .ignite(&["recovery", "token", "g1", "--ttl", "2h"])
        .trim()
        .to_string();
    std::fs::write(
        site.state.join("profiles/lab.toml"),
        profile(&[&live_capture_hook(&token)]),
    )
    .unwrap();
    let lab = Lab::new("capq");
    let mut server = site.server(&lab, "ignite.after=poweroff");
    let mut guest = Guest::start(&lab, site.tmp.path(), 1, Firmware::Bios, 3 << 30, 1);
    let seen = |g: &Guest, s: &Server| {
        format!(
            "console:\n{}\nserver:\n{}",
            tail(&g.console(), 40),
            tail(&s.log_text(), 40)
        )
    };
    let wait_off = |g: &mut Guest, s: &Server, what: &str, limit: Duration| {
        let t = Instant::now();
        while !g.exited() {
            assert!(
                t.elapsed() < limit,
                "timed out after {limit:?} waiting for {what}\n{}",
                seen(g, s)
            );
            std::thread::sleep(Duration::from_millis(500));
        }
        eprintln!("{what}: {:?}", t.elapsed());
    };

    // 1. The network install (the agent powers the guest off when done).
    wait_off(&mut guest, &server, "the install", Duration::from_secs(900));
    assert!(
        guest.console().contains("install done"),
        "{}",
        seen(&guest, &server)
    );

    // 2. The installed system captures itself live; the server is killed while the upload
    //    runs and started again: the client resumes.
    guest.boot_again(&lab, "live");
    let store = site.state.join("store");
    wait_until(
        "the live capture's first uploads",
        Duration::from_secs(900),
        || upload_arrived(&store) || guest.console().contains("IGNITE-LIVE-DONE"),
        || seen(&guest, &server),
    );
    assert!(
        !guest.console().contains("IGNITE-LIVE-DONE"),
        "the capture ended before the server could be killed\n{}",
        seen(&guest, &server)
    );
    server.kill();
    eprintln!("server killed during the live capture");
    let server = site.server(&lab, "ignite.after=poweroff");
    wait_off(
        &mut guest,
        &server,
        "the live capture",
        Duration::from_secs(1200),
    );
    let console = guest.console();
    assert!(
        console.contains("IGNITE-LIVE-DONE rc=0"),
        "{}",
        seen(&guest, &server)
    );
    assert!(
        console.contains("beginning again"),
        "the live capture did not resume:\n{}",
        seen(&guest, &server)
    );
    assert!(
        server
            .log_text()
            .contains("capture of g1 (files, live) resumed"),
        "{}",
        seen(&guest, &server)
    );
    run(ignite_cmd(&["archive", "--store"])
        .arg(&store)
        .arg("verify"));
    let live = last_row(&site, "g1");
    assert_eq!(
        (live["result"].as_str(), live["how"].as_str()),
        (Some("ok"), Some("live")),
        "{live}"
    );
    eprintln!(
        "live capture: {} bytes, {} read, {} new, {}",
        live["logical_bytes"], live["read_bytes"], live["new_bytes"], live["notes"]
    );
    let rec: Value =
        serde_json::from_str(&site.ignite(&["recovery", "show", "g1", "--json"])).unwrap();
    let live_spec = format!("g1:files@{}", rec["files"]["snapshot"].as_str().unwrap());

    // The live capture holds the root file system as it is on the disk (the running system
    // wrote only to /var meanwhile).
    let scratch = site.tmp.path().join("scratch");
    std::fs::create_dir_all(&scratch).unwrap();
    let live_export = site.tmp.path().join("export-live");
    {
        let disk = Mounted::new(guest.disk());
        run(ignite_cmd(&["archive", "--store"])
            .arg(&store)
            .args(["export", &live_spec, "--dir"])
            .arg(&live_export));
        let root_only = tempfile::tempdir().unwrap();
        run(Command::new("mount")
            .args(["--bind", "-o", "ro"])
            .arg(disk.root())
            .arg(root_only.path()));
        let mut ex = LEFT_OUT.to_vec();
        ex.extend(["./var", "./boot/efi"]);
        let diffs = tar_compare(root_only.path(), &live_export, &ex, &scratch);
        let _ = Command::new("umount").arg(root_only.path()).status();
        assert!(
            diffs.trim().is_empty(),
            "live capture differs from the root file system:\n{diffs}"
        );
        assert!(
            live_export.join("usr/local/bin/ignite").is_file(),
            "the downloaded binary is part of the system"
        );
    }

    // 3. Booted to `capture`, the agent captures the file systems from the disk, with the
    //    options prepared for it; it dedups against the live capture.
    site.ignite(&[
        "recovery",
        "token",
        "g1",
        "--agent",
        "--kind",
        "files",
        "-x",
        "exclude=/var/cache/*",
    ]);
    site.ignite(&["client", "set", "g1", "capture"]);
    guest.boot_again(&lab, "agent");
    wait_off(
        &mut guest,
        &server,
        "the agent's capture",
        Duration::from_secs(1200),
    );
    assert!(
        guest.console().contains("capture done"),
        "{}",
        seen(&guest, &server)
    );
    let agent = last_row(&site, "g1");
    assert_eq!(
        (
            agent["result"].as_str(),
            agent["how"].as_str(),
            agent["kind"].as_str()
        ),
        (Some("ok"), Some("agent"), Some("files")),
        "{agent}"
    );
    let (logical, new) = (
        agent["logical_bytes"].as_u64().unwrap(),
        agent["new_bytes"].as_u64().unwrap(),
    );
    eprintln!(
        "agent capture: {logical} bytes, {new} new, {}",
        agent["notes"]
    );
    assert!(new * 10 < logical, "the agent's capture stored {new} new bytes of {logical}: no dedup against the live one\n{agent}");
    let client: Value =
        serde_json::from_str(&site.ignite(&["client", "show", "g1", "--json"])).unwrap();
    assert_eq!(
        client["client"]["action"], "local",
        "after its capture the client boots its disk: {client}"
    );
    let rec: Value =
        serde_json::from_str(&site.ignite(&["recovery", "show", "g1", "--json"])).unwrap();
    assert_eq!(rec["system"]["boot_loader"], "grub", "{rec}");
    assert!(
        rec["system"]["hostname"]
            .as_str()
            .unwrap()
            .starts_with("lab-"),
        "{rec}"
    );
    let parts = rec["source"]["facts"]["disks"][0]["layout"]["partitions"]
        .as_array()
        .unwrap()
        .len();
    assert_eq!(parts, 4, "the disk's layout is recorded: {rec}");

    // The agent's capture is the disk's file systems, less what was left out; those the
    // host cannot mount are as the running system showed them to the live capture.
    let disk = Mounted::new(guest.disk());
    let export = site.tmp.path().join("export");
    run(ignite_cmd(&["archive", "--store"])
        .arg(&store)
        .args(["export", "g1:files", "--dir"])
        .arg(&export));
    let mut ex = LEFT_OUT.to_vec();
    ex.extend(disk.unreadable.iter().map(String::as_str));
    let diffs = tar_compare(disk.root(), &export, &ex, &scratch);
    assert!(
        diffs.trim().is_empty(),
        "agent capture differs from the disk:\n{diffs}"
    );
    for m in &disk.unreadable {
        let (live, agent) = (live_export.join(m), export.join(m));
        let files = std::fs::read_dir(&agent).map(|d| d.count()).unwrap_or(0);
        assert!(files > 0, "{m} is empty in the agent's capture");
        let diffs = tar_compare(&live, &agent, &[], &scratch);
        assert!(
            diffs.trim().is_empty(),
            "{m} differs between the live and the agent's capture:\n{diffs}"
        );
        eprintln!("{m}: not mountable here; the agent's capture equals the live one");
    }
    for gone in LEFT_OUT {
        let dir = export.join(gone.trim_start_matches("./").trim_end_matches("/*"));
        let n = std::fs::read_dir(&dir).map(|d| d.count()).unwrap_or(0);
        assert_eq!(n, 0, "{} should be empty in the capture", dir.display());
    }
    eprintln!("left out of both captures: {LEFT_OUT:?}");
}
