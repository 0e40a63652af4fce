//! The install API end to end on the host: `ignite server` in a network namespace with a real
//! store and profiles, the agent's network side (`ignite install-extract`) in the same
//! namespace, the token read from the iPXE script the server writes for the client.

use ignite_e2e::*;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Duration;

const SERVER: &str = "http://10.77.0.1:8080";

const PROFILE: &str = r#"archive = "golden"

[disk]

[[disk.partitions]]
type = "bios_boot"
size = "1M"

[[disk.partitions]]
size = "rest"
fs = "ext4"
mount = "/"
"#;

fn sh(script: &str) -> String {
    run(Command::new("sh").args(["-euc", script]))
}

fn arc(store: &Path, args: &[&str]) -> String {
    run(Command::new(ignite_bin())
        .arg("archive")
        .arg("--store")
        .arg(store)
        .args(args))
}

/// A tree with everything extraction must keep: owners, setuid, xattrs, hard links, a sparse
/// file, a symlink, a device node, a fifo, and enough distinct data for many chunks.
fn make_tree(src: &Path) {
    std::fs::create_dir_all(src.join("data")).unwrap();
    std::fs::create_dir_all(src.join("dev")).unwrap();
    std::fs::create_dir_all(src.join("etc")).unwrap();
    for i in 0..24u64 {
        let len = 150_000 + (i as usize * 37_000);
        std::fs::write(src.join(format!("data/f{i}")), pattern(len, i + 1)).unwrap();
    }
    std::fs::write(src.join("data/big"), pattern(3 << 20, 99)).unwrap();
    std::fs::write(src.join("etc/hostname"), "golden\n").unwrap();
    let sparse = std::fs::File::create(src.join("sparse")).unwrap();
    sparse.set_len(8 << 20).unwrap();
    std::os::unix::fs::FileExt::write_all_at(&sparse, &pattern(200_000, 77), 4 << 20).unwrap();
    let s = src.display();
    sh(&format!(
        "cd {s}
         ln data/f0 data/hard
         ln -s data/f1 link
         chown 1234:5678 data/f3
         chmod 4755 data/f4
         setfattr -n user.ignite -v kept data/f2
         mknod dev/null c 1 3
         mkfifo dev/fifo
         touch -d 2020-01-02T03:04:05 data/f6 etc"
    ));
}

struct Setup {
    lab: Lab,
    dir: tempfile::TempDir,
    server: Option<Server>,
    env: Vec<(&'static str, &'static str)>,
}

impl Setup {
    fn new(tag: &str, env: &[(&'static str, &'static str)]) -> Option<Setup> {
        if !require_tools(&["ip", "curl", "tar", "setfattr", "mknod"]) {
            return None;
        }
        let dir = tempfile::tempdir().unwrap();
        let src = dir.path().join("src");
        make_tree(&src);
        let tar = dir.path().join("golden.tar");
        sh(&format!(
            "tar --xattrs --xattrs-include='*' --numeric-owner -C {} -cf {} .",
            src.display(),
            tar.display()
        ));
        let store = dir.path().join("state/store");
        arc(&store, &["init"]);
        // The directory, not the tar: our tar importer takes no PAX sparse files, and the tar
        // (for GNU tar's --compare) needs PAX for xattrs.
        arc(
            &store,
            &["import", "--name", "golden", src.to_str().unwrap()],
        );
        std::fs::create_dir_all(dir.path().join("state/profiles")).unwrap();
        std::fs::create_dir_all(dir.path().join("boot")).unwrap();
        std::fs::write(dir.path().join("state/profiles/web.toml"), PROFILE).unwrap();
        let mut s = Setup {
            lab: Lab::new(tag),
            dir,
            server: None,
            env: env.to_vec(),
        };
        s.start();
        Some(s)
    }

    fn path(&self, p: &str) -> PathBuf {
        self.dir.path().join(p)
    }

    /// The server, with its store and profiles in the default places under the state dir.
    fn start(&mut self) {
        self.server = Some(Server::start_env(
            &self.lab,
            &self.path("state"),
            &self.path("boot"),
            &[],
            &self.env,
        ));
    }

    fn client(&self, args: &[&str]) -> String {
        run(Command::new(ignite_bin())
            .arg("client")
            .arg("--state-dir")
            .arg(self.path("state"))
            .args(args))
    }

    fn curl(&self, args: &[&str]) -> String {
        run(Lab::cmd(&self.lab.ns, "curl").arg("-s").args(args))
    }

    /// Registers client `n` to install `profile`; returns its MAC and token.
    fn schedule(&self, n: u8, profile: &str) -> (String, String) {
        let mac = format!("52:54:00:77:01:{n:02x}");
        self.client(&["add", &mac, &format!("web{n}"), "install", profile]);
        let token = self.token(&mac);
        (mac, token)
    }

    /// The token on the kernel command line of the client's iPXE script.
    fn token(&self, mac: &str) -> String {
        let script = self.curl(&[&format!("{SERVER}/ipxe/{}", mac.replace(':', "-"))]);
        let token = script
            .split_whitespace()
            .find_map(|w| w.strip_prefix("ignite.token="))
            .unwrap_or_else(|| panic!("no ignite.token= in the boot script:\n{script}"))
            .to_string();
        assert_eq!(token.len(), 32, "{script}");
        token
    }

    fn extract_cmd(&self, mac: &str, token: &str, to: &Path, extra: &[&str]) -> Command {
        let mut c = Lab::cmd(&self.lab.ns, ignite_bin());
        c.args([
            "install-extract",
            "--server",
            SERVER,
            "--mac",
            mac,
            "--token",
            token,
        ])
        .arg("--to")
        .arg(to)
        .args(extra);
        c
    }

    fn extract(&self, mac: &str, token: &str, to: &Path, extra: &[&str]) -> Output {
        self.extract_cmd(mac, token, to, extra).output().unwrap()
    }

    fn stats(&self) -> serde_json::Value {
        serde_json::from_str(&self.curl(&[&format!("{SERVER}/api/stats")])).unwrap()
    }

    fn unique_chunks(&self) -> u64 {
        let v: serde_json::Value = serde_json::from_str(&arc(
            &self.path("state/store"),
            &["show", "golden", "--json"],
        ))
        .unwrap();
        v["manifest"]["stats"]["new_chunks"].as_u64().unwrap()
    }

    /// The extracted tree equals the archived one: GNU tar compares contents, owners,
    /// modes, mtimes, links and devices; our own diff also xattrs and hard-link structure.
    fn assert_same_tree(&self, out: &Path) {
        sh(&format!(
            "tar --numeric-owner --xattrs --xattrs-include='*' -C {} --compare -f {}",
            out.display(),
            self.path("golden.tar").display()
        ));
        let store = self.path("state/store");
        let name = format!("check-{}", out.file_name().unwrap().to_string_lossy());
        arc(&store, &["import", "--name", &name, out.to_str().unwrap()]);
        let d: serde_json::Value =
            serde_json::from_str(&arc(&store, &["diff", "golden", &name, "--json"])).unwrap();
        assert_eq!(d["changes"].as_array().unwrap().len(), 0, "{d}");
        // The holes stayed holes: 8 MiB long, 200 kB of data.
        let blocks: u64 = sh(&format!("stat -c %b {}/sparse", out.display()))
            .trim()
            .parse()
            .unwrap();
        assert!(blocks * 512 < 1 << 20, "sparse file takes {blocks} blocks");
    }
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

#[test]
fn extract_matches_the_archive_and_done_flips_to_local() {
    let Some(s) = Setup::new("ia-ok", &[]) else {
        return;
    };
    let (mac, token) = s.schedule(1, "web");
    let out = s.path("out1");
    let o = s.extract(&mac, &token, &out, &["--done"]);
    assert!(o.status.success(), "{}", stderr(&o));
    s.assert_same_tree(&out);
    let v: serde_json::Value =
        serde_json::from_str(&s.client(&["show", "web1", "--json"])).unwrap();
    assert_eq!(v["client"]["action"], "local", "{v}");
    assert_eq!(v["install"]["status"], "done", "{v}");
    let phases: Vec<&str> = v["phases"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["phase"].as_str().unwrap())
        .collect();
    assert_eq!(phases.last(), Some(&"done"), "{v}");
    assert!(phases.contains(&"extracted"), "{v}");
    let show = s.client(&["show", "web1"]);
    assert!(
        show.contains("extracted") && show.contains("total"),
        "{show}"
    );
    let log = s.client(&["log", "web1"]);
    assert!(
        log.contains("extracted") && log.contains("bytes of golden@"),
        "{log}"
    );
    // The install is over: its token no longer works.
    let o = s.extract(&mac, &token, &s.path("again"), &[]);
    assert!(!o.status.success());
    assert!(
        stderr(&o).contains("install has finished"),
        "{}",
        stderr(&o)
    );
    // A client not in the registry installs under the default action, then is registered
    // (by its hostname) to boot from its disk.
    s.client(&["default", "install", "web"]);
    let mac = "52:54:00:77:01:09";
    let token = s.token(mac);
    let o = s.extract(mac, &token, &s.path("out9"), &["--done"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let v: serde_json::Value = serde_json::from_str(&s.client(&["show", mac, "--json"])).unwrap();
    assert_eq!(
        (v["client"]["name"].as_str(), v["client"]["action"].as_str()),
        (Some("ignite-770109"), Some("local")),
        "{v}"
    );
}

#[test]
fn refusals_say_what_is_wrong() {
    let Some(s) = Setup::new("ia-bad", &[]) else {
        return;
    };
    let (mac, token) = s.schedule(1, "web");
    let out = s.path("out");
    let fails = |mac: &str, token: &str, extra: &[&str]| -> String {
        let o = s.extract(mac, token, &out, extra);
        assert!(!o.status.success(), "expected a failure");
        stderr(&o)
    };
    // Tokens: wrong, another client's, missing (straight HTTP).
    let e = fails(&mac, "00112233445566778899aabbccddeeff", &[]);
    assert!(e.contains("token refused") && e.contains("(403)"), "{e}");
    let (mac2, token2) = s.schedule(2, "web");
    let e = fails(&mac2, &token, &[]);
    assert!(e.contains("token refused"), "{e}");
    let code = s.curl(&[
        "-o",
        "/dev/null",
        "-w",
        "%{http_code}",
        "-X",
        "POST",
        "--data",
        "{}",
        &format!("{SERVER}/api/install/{mac}/plan"),
    ]);
    assert_eq!(code, "401");
    // The plan pins its snapshot: a re-import of the archive changes nothing for this
    // install, while a newly scheduled one gets the new snapshot.
    let plan_id = |mac: &str, token: &str| -> String {
        let body = s.curl(&[
            "-H",
            &format!("Authorization: Bearer {token}"),
            "--data",
            &format!(r#"{{"mac":"{mac}","disks":[{{"path":"/dev/vda","size":10000000000,"serial":null}}],"hostname":null}}"#),
            &format!("{SERVER}/api/install/{mac}/plan"),
        ]);
        let v: serde_json::Value = serde_json::from_str(&body).expect(&body);
        v["archive"]["id"].as_str().unwrap().to_string()
    };
    let pinned = plan_id(&mac, &token);
    // Chunk requests: ids must be whole, few enough, and of this install's snapshot.
    let chunks = |body: &str| -> String {
        s.curl(&[
            "-H",
            &format!("Authorization: Bearer {token}"),
            "-w",
            " %{http_code}",
            "--data-binary",
            body,
            &format!("{SERVER}/api/install/{mac}/chunks"),
        ])
    };
    let e = chunks("short");
    assert!(e.contains("ids of 32 bytes") && e.ends_with(" 400"), "{e}");
    let e = chunks(&"x".repeat(32 * 1025));
    assert!(e.contains("not 32800 bytes") && e.ends_with(" 400"), "{e}");
    let e = chunks(&"x".repeat(32));
    assert!(
        e.contains("is not part of the snapshot this install extracts") && e.ends_with(" 404"),
        "{e}"
    );
    std::fs::write(s.path("src/etc/motd"), "new\n").unwrap();
    let src = s.path("src");
    arc(
        &s.path("state/store"),
        &["import", "--name", "golden", src.to_str().unwrap()],
    );
    assert_eq!(plan_id(&mac, &token), pinned);
    let (mac3, token3) = s.schedule(3, "web");
    assert_ne!(plan_id(&mac3, &token3), pinned);
    // No server: retried, then a clear give-up.
    let o = Lab::cmd(&s.lab.ns, ignite_bin())
        .args(["install-extract", "--server", "http://10.77.0.1:8081"])
        .args([
            "--mac",
            &mac,
            "--token",
            &token,
            "--give-up-after",
            "2",
            "--to",
        ])
        .arg(&out)
        .output()
        .unwrap();
    let e = stderr(&o);
    assert!(
        !o.status.success() && e.contains("has not answered for 2 s"),
        "{e}"
    );
    // Bad JSON is a 400 with a message.
    let body = s.curl(&[
        "-H",
        &format!("Authorization: Bearer {token}"),
        "--data",
        "{not json",
        &format!("{SERVER}/api/install/{mac}/phase"),
    ]);
    assert!(body.contains("not valid JSON"), "{body}");
    // A disk too small for the layout.
    let e = fails(&mac, &token, &["--disk", "/dev/vda:1M"]);
    assert!(
        e.contains("disk /dev/vda has") && e.contains("(422)"),
        "{e}"
    );
    // A profile that does not exist, then a broken one.
    s.client(&["set", "web2", "install", "nosuch"]);
    let token2b = s.token(&mac2);
    assert_ne!(token2b, token2, "rescheduling must issue a fresh token");
    let e = fails(&mac2, &token2, &[]);
    assert!(e.contains("token refused"), "{e}");
    let e = fails(&mac2, &token2b, &[]);
    assert!(
        e.contains("profile nosuch") && e.contains("does not exist"),
        "{e}"
    );
    std::fs::write(
        s.path("state/profiles/broken.toml"),
        "archive = \"golden\"\n[disk]\nsize_of_nothing = 3\n",
    )
    .unwrap();
    s.client(&["set", "web1", "install", "broken"]);
    let e = fails(&mac, &s.token(&mac), &[]);
    assert!(
        e.contains("profile broken is broken") && e.contains("size_of_nothing"),
        "{e}"
    );
    // A profile whose archive is missing.
    std::fs::write(
        s.path("state/profiles/web.toml"),
        PROFILE.replace("\"golden\"", "\"debian-99\""),
    )
    .unwrap();
    s.client(&["set", "web1", "install", "web"]);
    let e = fails(&mac, &s.token(&mac), &[]);
    assert!(
        e.contains("debian-99") && e.contains("no snapshot matches"),
        "{e}"
    );
}

#[test]
fn server_killed_mid_extract_and_restarted_resumes() {
    let Some(mut s) = Setup::new("ia-kill", &[("IGNITE_TEST_CHUNK_DELAY_MS", "100")]) else {
        return;
    };
    let (mac, token) = s.schedule(1, "web");
    let out = s.path("out");
    let agent = s
        .extract_cmd(&mac, &token, &out, &["--fetchers", "2"])
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // Stop the server once the agent has written something (a batch of chunks).
    wait_for("extraction progress", Duration::from_secs(30), || {
        let list = s.client(&["list"]);
        list.contains("extracting") && !list.contains("extracting 0%")
    });
    drop(s.server.take()); // SIGKILL
    std::thread::sleep(Duration::from_secs(2));
    s.start();
    let o = agent.wait_with_output().unwrap();
    assert!(o.status.success(), "{}", stderr(&o));
    s.assert_same_tree(&out);
    let after_restart = s.stats()["chunk_requests"].as_u64().unwrap();
    // A full run against the same server, for comparison.
    let o = s.extract(&mac, &token, &s.path("full"), &[]);
    assert!(o.status.success(), "{}", stderr(&o));
    let full = s.stats()["chunk_requests"].as_u64().unwrap() - after_restart;
    // A chunk shared by files in different batches is asked for once per batch.
    assert!(full >= s.unique_chunks());
    assert!(
        after_restart > 0 && after_restart < full,
        "resumed extraction asked for {after_restart} chunks, a full one {full}"
    );
}

#[test]
fn four_concurrent_extracts_read_each_chunk_once() {
    let Some(s) = Setup::new("ia-four", &[("IGNITE_TEST_CHUNK_DELAY_MS", "5")]) else {
        return;
    };
    let agents: Vec<_> = (1..=4u8)
        .map(|n| {
            let (mac, token) = s.schedule(n, "web");
            let out = s.path(&format!("out{n}"));
            (
                out.clone(),
                s.extract_cmd(&mac, &token, &out, &[]).spawn().unwrap(),
            )
        })
        .collect();
    for (out, mut a) in agents {
        assert!(a.wait().unwrap().success());
        s.assert_same_tree(&out);
    }
    let st = s.stats();
    let unique = s.unique_chunks();
    assert_eq!(
        st["chunk_cache"]["disk_reads"].as_u64(),
        Some(unique),
        "{st}"
    );
    let requests = st["chunk_cache"]["requests"].as_u64().unwrap();
    assert!(requests >= 4 * unique && requests.is_multiple_of(4), "{st}");
}

#[test]
fn a_corrupt_chunk_is_refused_by_name() {
    let Some(s) = Setup::new("ia-corrupt", &[]) else {
        return;
    };
    // Flip a byte in the middle of the first chunk of a pack.
    let pack = sh(&format!(
        "find {} -name '*.pack' | head -1",
        s.path("state/store/packs").display()
    ));
    let pack = PathBuf::from(pack.trim());
    let entries = ignite_archive::pack::read_trailer(&pack).unwrap();
    let victim = entries[0];
    let mut bytes = std::fs::read(&pack).unwrap();
    bytes[(victim.offset + u64::from(victim.stored_len) / 2) as usize] ^= 0x55;
    std::fs::write(&pack, bytes).unwrap();
    let (mac, token) = s.schedule(1, "web");
    let o = s.extract(&mac, &token, &s.path("out"), &[]);
    assert!(!o.status.success());
    let e = stderr(&o);
    assert!(
        e.contains(&format!("chunk {} is corrupt", victim.id.to_hex())),
        "{e}"
    );
}

/// extlinux on UEFI boots copies of the kernel and initrd from the ESP (syslinux.efi reads
/// no other partition). Only the archive knows their size: the plan is refused when the
/// profile's ESP cannot hold them, before the agent writes anything, and the message says
/// what ESP size would do; that size is then accepted.
#[test]
fn extlinux_uefi_plan_is_refused_when_the_esp_cannot_hold_the_kernel() {
    let Some(s) = Setup::new("ia-esp", &[]) else {
        return;
    };
    // A 30 MiB kernel and initrd, as holes: their sizes count, no data is stored.
    std::fs::create_dir_all(s.path("src/boot")).unwrap();
    for f in ["vmlinuz-6.1.0-1-amd64", "initrd.img-6.1.0-1-amd64"] {
        std::fs::File::create(s.path("src/boot").join(f))
            .unwrap()
            .set_len(30 << 20)
            .unwrap();
    }
    arc(
        &s.path("state/store"),
        &[
            "import",
            "--name",
            "golden",
            s.path("src").to_str().unwrap(),
        ],
    );
    let profile = |esp: &str| {
        format!(
            "archive = \"golden\"\n\
             [[disk.partitions]]\ntype = \"efi\"\nsize = \"{esp}\"\n\
             [[disk.partitions]]\nsize = \"rest\"\nfs = \"ext4\"\nmount = \"/\"\n\
             [boot]\nloader = \"extlinux\"\nfirmware = \"uefi\"\n"
        )
    };
    let plan = |n: u8, esp: &str| -> (String, String) {
        let name = format!("esp{n}");
        std::fs::write(
            s.path("state/profiles").join(format!("{name}.toml")),
            profile(esp),
        )
        .unwrap();
        let (mac, token) = s.schedule(n, &name);
        let out = s.curl(&[
            "-w",
            "\n%{http_code}",
            "-H",
            &format!("Authorization: Bearer {token}"),
            "--data",
            &format!(r#"{{"mac":"{mac}","disks":[{{"path":"/dev/vda","size":10000000000,"serial":null}}],"hostname":null}}"#),
            &format!("{SERVER}/api/install/{mac}/plan"),
        ]);
        let (body, code) = out.trim_end().rsplit_once('\n').unwrap();
        (code.to_string(), body.to_string())
    };
    let (code, body) = plan(1, "48M");
    assert_eq!(code, "422", "{body}");
    assert!(
        body.contains("profile esp1 with archive golden: extlinux on UEFI boots copies of the kernel and initrd from the EFI system partition")
            && body.contains("cannot hold vmlinuz-6.1.0-1-amd64 and initrd.img-6.1.0-1-amd64 (61 MiB with the loader)"),
        "{body}"
    );
    let want = body
        .split("size = \"")
        .nth(1)
        .and_then(|x| x.split('"').next())
        .unwrap()
        .to_string();
    let (code, body) = plan(2, &want);
    assert_eq!(code, "200", "{body}");
    // GRUB reads /boot itself: the same small ESP is fine for it.
    std::fs::write(
        s.path("state/profiles/grub.toml"),
        profile("48M").replace("extlinux", "grub"),
    )
    .unwrap();
    let (mac, token) = s.schedule(3, "grub");
    let body = s.curl(&[
        "-H",
        &format!("Authorization: Bearer {token}"),
        "--data",
        &format!(r#"{{"mac":"{mac}","disks":[{{"path":"/dev/vda","size":10000000000,"serial":null}}],"hostname":null}}"#),
        &format!("{SERVER}/api/install/{mac}/plan"),
    ]);
    assert!(body.contains("\"steps\""), "{body}");
}
