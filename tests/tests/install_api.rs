//! The install API end to end on the host: `ignite server` in a network namespace with a real
//! store and profiles, and each client in a namespace of its own with its MAC and a DHCP
//! lease from the server: the agent's network side (`ignite install-extract`) runs there,
//! with the token read from the iPXE script the server writes for the client.

use ignite_e2e::*;
use std::collections::HashMap;
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
    args: Vec<String>,
    /// Client namespaces by MAC, each holding a lease.
    clients: HashMap<String, String>,
}

impl Setup {
    fn new(tag: &str, env: &[(&'static str, &'static str)]) -> Option<Setup> {
        Setup::with_args(tag, env, &[], "")
    }

    /// With `args` added to `ignite server`'s command line, and `config` (TOML) as its
    /// configuration file unless empty.
    fn with_args(
        tag: &str,
        env: &[(&'static str, &'static str)],
        args: &[&str],
        config: &str,
    ) -> Option<Setup> {
        if !require_tools(&[
            "ip", "curl", "tar", "setfattr", "mknod", "udhcpc", "openssl",
        ]) {
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
        let mut args: Vec<String> = args.iter().map(|a| a.to_string()).collect();
        if !config.is_empty() {
            let p = dir.path().join("server.toml");
            std::fs::write(&p, config).unwrap();
            args.extend(["--config".to_string(), p.display().to_string()]);
        }
        let mut s = Setup {
            lab: Lab::new(tag),
            dir,
            server: None,
            env: env.to_vec(),
            args,
            clients: HashMap::new(),
        };
        s.start();
        Some(s)
    }

    fn path(&self, p: &str) -> PathBuf {
        self.dir.path().join(p)
    }

    /// The server, with its store and profiles in the default places under the state dir.
    fn start(&mut self) {
        let args: Vec<&str> = self.args.iter().map(String::as_str).collect();
        self.server = Some(Server::start_env(
            &self.lab,
            &self.path("state"),
            &self.path("boot"),
            &args,
            &self.env,
        ));
    }

    /// The namespace of the client with `mac`, made (with a lease) on first use.
    fn ns(&mut self, mac: &str) -> String {
        if let Some(ns) = self.clients.get(mac) {
            return ns.clone();
        }
        let n = self.clients.len() as u8 + 1;
        let ns = self.lab.add_client_with_mac(n, mac);
        Lab::lease(&ns);
        self.clients.insert(mac.to_string(), ns.clone());
        ns
    }

    fn client(&self, args: &[&str]) -> String {
        run(Command::new(ignite_bin())
            .arg("client")
            .arg("--state-dir")
            .arg(self.path("state"))
            .args(args))
    }

    /// curl on the server's own host.
    fn curl(&self, args: &[&str]) -> String {
        run(Lab::cmd(&self.lab.ns, "curl").arg("-s").args(args))
    }

    /// curl from the client with `mac`; a failure shows the server log's tail.
    fn curl_as(&mut self, mac: &str, args: &[&str]) -> String {
        let ns = self.ns(mac);
        let o = Lab::cmd(&ns, "curl")
            .arg("-sS")
            .args(args)
            .output()
            .unwrap();
        if !o.status.success() {
            let log = self
                .server
                .as_ref()
                .map(|s| s.log_text())
                .unwrap_or_default();
            let tail: Vec<&str> = log.lines().rev().take(40).collect();
            panic!(
                "curl {args:?} from {mac} failed ({}): {}\n--- server log tail:\n{}",
                o.status,
                String::from_utf8_lossy(&o.stderr),
                tail.into_iter().rev().collect::<Vec<_>>().join("\n")
            );
        }
        String::from_utf8_lossy(&o.stdout).into_owned()
    }

    /// The `Authorization` header with the admin token.
    fn admin(&self) -> String {
        let t = std::fs::read_to_string(self.path("state/admin.token")).unwrap();
        format!("Authorization: Bearer {}", t.trim())
    }

    /// Registers client `n` to install `profile`; returns its MAC and token.
    fn schedule(&mut self, n: u8, profile: &str) -> (String, String) {
        let mac = format!("52:54:00:77:01:{n:02x}");
        self.client(&["add", &mac, &format!("web{n}"), "install", profile]);
        let token = self.token(&mac);
        (mac, token)
    }

    /// The client's iPXE script, as the client fetches it.
    fn script(&mut self, mac: &str) -> String {
        self.curl_as(mac, &[&format!("{SERVER}/ipxe/{}", mac.replace(':', "-"))])
    }

    /// The token on the kernel command line of the client's iPXE script.
    fn token(&mut self, mac: &str) -> String {
        let script = self.script(mac);
        let token = script
            .split_whitespace()
            .find_map(|w| w.strip_prefix("ignite.token="))
            .unwrap_or_else(|| panic!("no ignite.token= in the boot script:\n{script}"))
            .to_string();
        assert_eq!(token.len(), 32, "{script}");
        token
    }

    /// The HTTP status of a plan request for `mac` with `token`, sent from the client
    /// `from` to the plain port.
    fn plan_status(&mut self, from: &str, mac: &str, token: &str) -> String {
        let url = format!("{SERVER}/api/install/{mac}/plan");
        let auth = format!("Authorization: Bearer {token}");
        let body = facts(mac);
        let args = [
            "-o",
            "/dev/null",
            "-w",
            "%{http_code}",
            "-H",
            &auth,
            "--data",
            &body,
            &url,
        ];
        self.curl_as(from, &args)
    }

    fn extract_cmd(&mut self, mac: &str, token: &str, to: &Path, extra: &[&str]) -> Command {
        self.extract_from(SERVER, mac, token, to, extra)
    }

    /// `install-extract` from the client with `mac`, asking `server`.
    fn extract_from(
        &mut self,
        server: &str,
        mac: &str,
        token: &str,
        to: &Path,
        extra: &[&str],
    ) -> Command {
        let mut c = Lab::cmd(&self.ns(mac), ignite_bin());
        c.args([
            "install-extract",
            "--server",
            server,
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

    fn extract(&mut self, mac: &str, token: &str, to: &Path, extra: &[&str]) -> Output {
        self.extract_cmd(mac, token, to, extra).output().unwrap()
    }

    fn stats(&self) -> serde_json::Value {
        let body = self.curl(&["-H", &self.admin(), &format!("{SERVER}/api/stats")]);
        serde_json::from_str(&body).expect(&body)
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

/// `install-extract` that must fail; its stderr.
fn fails(s: &mut Setup, mac: &str, token: &str, extra: &[&str]) -> String {
    let out = s.path("out");
    let o = s.extract(mac, token, &out, extra);
    assert!(!o.status.success(), "expected a failure");
    stderr(&o)
}

/// A plan request body for a client with one 10 GB disk.
fn facts(mac: &str) -> String {
    format!(
        r#"{{"mac":"{mac}","disks":[{{"path":"/dev/vda","size":10000000000,"serial":null}}],"hostname":null}}"#
    )
}

/// `POST .../plan` from the client; the pinned snapshot id.
fn plan_id(s: &mut Setup, mac: &str, token: &str) -> String {
    let body = s.curl_as(
        mac,
        &[
            "-H",
            &format!("Authorization: Bearer {token}"),
            "--data",
            &facts(mac),
            &format!("{SERVER}/api/install/{mac}/plan"),
        ],
    );
    let v: serde_json::Value = serde_json::from_str(&body).expect(&body);
    v["archive"]["id"].as_str().unwrap().to_string()
}

/// `POST .../chunks` with `body` (a file) from the client; the answer and its status.
fn chunks(s: &mut Setup, mac: &str, token: &str, body: &Path) -> (String, String) {
    let out = s.curl_as(
        mac,
        &[
            "-H",
            &format!("Authorization: Bearer {token}"),
            "-w",
            "\n%{http_code}",
            "--data-binary",
            &format!("@{}", body.display()),
            &format!("{SERVER}/api/install/{mac}/chunks"),
        ],
    );
    let (body, code) = out.rsplit_once('\n').unwrap();
    (body.to_string(), code.to_string())
}

/// The chunk ids of the snapshot the client's install pinned, as the tree route serves it.
fn tree_chunks(s: &mut Setup, mac: &str, token: &str) -> Vec<ignite_archive::ChunkId> {
    let tree = s.path("tree.bin");
    s.curl_as(
        mac,
        &[
            "-H",
            &format!("Authorization: Bearer {token}"),
            "-o",
            tree.to_str().unwrap(),
            &format!("{SERVER}/api/install/{mac}/tree"),
        ],
    );
    let entries =
        ignite_archive::snapshot::decode_tree("served", &std::fs::read(&tree).unwrap()).unwrap();
    let mut ids: Vec<_> = ignite_archive::snapshot::tree_chunks(&entries).collect();
    ids.sort_by_key(|id| id.0);
    ids.dedup();
    ids
}

#[test]
fn extract_matches_the_archive_and_done_flips_to_local() {
    let Some(mut s) = Setup::with_args("ia-ok", &[], &["--install-unregistered"], "") else {
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
    let e = fails(&mut s, &mac, &token, &[]);
    assert!(e.contains("install has finished"), "{e}");
    // A client not in the registry installs under the default action (the server was
    // started with --install-unregistered), then is registered (by its hostname) to boot
    // from its disk.
    s.client(&["default", "install", "web"]);
    let mac = "52:54:00:77:01:09";
    let token = s.token(mac);
    let out9 = s.path("out9");
    let o = s.extract(mac, &token, &out9, &["--done"]);
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
    let Some(mut s) = Setup::new("ia-bad", &[]) else {
        return;
    };
    let (mac, token) = s.schedule(1, "web");
    // Tokens: wrong, another client's, missing (straight HTTP).
    let e = fails(&mut s, &mac, "00112233445566778899aabbccddeeff", &[]);
    assert!(e.contains("token refused") && e.contains("(403)"), "{e}");
    let (mac2, token2) = s.schedule(2, "web");
    let e = fails(&mut s, &mac2, &token, &[]);
    assert!(e.contains("token refused"), "{e}");
    let code = s.curl_as(
        &mac,
        &[
            "-o",
            "/dev/null",
            "-w",
            "%{http_code}",
            "-X",
            "POST",
            "--data",
            "{}",
            &format!("{SERVER}/api/install/{mac}/plan"),
        ],
    );
    assert_eq!(code, "401");
    // The plan pins its snapshot: a re-import of the archive changes nothing for this
    // install, while a newly scheduled one gets the new snapshot.
    let pinned = plan_id(&mut s, &mac, &token);
    // Chunk requests: ids must be whole, few enough, none twice, and of this install's
    // snapshot.
    let req = s.path("req.bin");
    let ask = |s: &mut Setup, body: Vec<u8>| {
        std::fs::write(&req, body).unwrap();
        chunks(s, &mac, &token, &req)
    };
    let (e, code) = ask(&mut s, b"short".to_vec());
    assert!(
        e.contains("5 bytes") && e.contains("ids of 32 bytes") && code == "400",
        "{e}"
    );
    let (e, code) = ask(&mut s, vec![b'x'; 32 * 1025]);
    assert!(e.contains("1025 ids") && code == "400", "{e}");
    let (e, code) = ask(&mut s, vec![b'x'; 32]);
    assert!(
        e.contains("is not part of the snapshot this install extracts") && code == "404",
        "{e}"
    );
    // One chunk a thousand times over would make the server read and send it a thousand
    // times: refused.
    let ids = tree_chunks(&mut s, &mac, &token);
    let (e, code) = ask(&mut s, ids[0].0.repeat(1000));
    assert!(e.contains("asked for twice") && code == "400", "{e}");
    // Every chunk of the snapshot, each once, is one fine (streamed) answer.
    let all: Vec<u8> = ids.iter().flat_map(|id| id.0).collect();
    std::fs::write(&req, &all).unwrap();
    let got = s.path("reply.bin");
    s.curl_as(
        &mac,
        &[
            "-H",
            &format!("Authorization: Bearer {token}"),
            "--data-binary",
            &format!("@{}", req.display()),
            "-o",
            got.to_str().unwrap(),
            &format!("{SERVER}/api/install/{mac}/chunks"),
        ],
    );
    let reply = std::fs::read(&got).unwrap();
    let decoded = ignite_archive::chunk_stream::decode(&ids, &reply, 16 << 20).unwrap();
    assert_eq!(decoded.len(), ids.len());
    std::fs::write(s.path("src/etc/motd"), "new\n").unwrap();
    let src = s.path("src");
    arc(
        &s.path("state/store"),
        &["import", "--name", "golden", src.to_str().unwrap()],
    );
    assert_eq!(plan_id(&mut s, &mac, &token), pinned);
    let (mac3, token3) = s.schedule(3, "web");
    assert_ne!(plan_id(&mut s, &mac3, &token3), pinned);
    // No server: retried, then a clear give-up.
    let out = s.path("out");
    let o = Lab::cmd(&s.ns(&mac), ignite_bin())
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
    let body = s.curl_as(
        &mac,
        &[
            "-H",
            &format!("Authorization: Bearer {token}"),
            "--data",
            "{not json",
            &format!("{SERVER}/api/install/{mac}/phase"),
        ],
    );
    assert!(body.contains("not valid JSON"), "{body}");
    // A disk too small for the layout.
    let e = fails(&mut s, &mac, &token, &["--disk", "/dev/vda:1M"]);
    assert!(
        e.contains("disk /dev/vda has") && e.contains("(422)"),
        "{e}"
    );
    // A profile that does not exist, then a broken one.
    s.client(&["set", "web2", "install", "nosuch"]);
    let token2b = s.token(&mac2);
    assert_ne!(token2b, token2, "rescheduling must issue a fresh token");
    let e = fails(&mut s, &mac2, &token2, &[]);
    assert!(e.contains("token refused"), "{e}");
    let e = fails(&mut s, &mac2, &token2b, &[]);
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
    let t = s.token(&mac);
    let e = fails(&mut s, &mac, &t, &[]);
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
    let t = s.token(&mac);
    let e = fails(&mut s, &mac, &t, &[]);
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
    let full_dir = s.path("full");
    let o = s.extract(&mac, &token, &full_dir, &[]);
    assert!(o.status.success(), "{}", stderr(&o));
    let full = s.stats()["chunk_requests"].as_u64().unwrap() - after_restart;
    // A chunk shared by files in different batches is asked for once per batch.
    assert!(full >= s.unique_chunks());
    assert!(
        after_restart > 0 && after_restart < full,
        "resumed extraction asked for {after_restart} chunks, a full one {full}"
    );
}

/// `install-extract --discard` (scripts/bench-fleet's simulated agent) asks for every chunk
/// of the archive exactly once, checks them, and writes nothing.
#[test]
fn a_simulated_agent_fetches_every_chunk_once_and_writes_nothing() {
    let Some(mut s) = Setup::new("ia-disc", &[]) else {
        return;
    };
    let (mac, token) = s.schedule(1, "web");
    let ns = s.ns(&mac);
    let o = Lab::cmd(&ns, ignite_bin())
        .args([
            "install-extract",
            "--server",
            SERVER,
            "--mac",
            &mac,
            "--token",
            &token,
        ])
        .arg("--discard")
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", stderr(&o));
    let text = String::from_utf8_lossy(&o.stdout);
    let unique = s.unique_chunks();
    assert!(
        text.contains(&format!(" in {unique} chunks of archive ")) && text.contains("p99"),
        "{text}"
    );
    assert_eq!(s.stats()["chunk_requests"].as_u64().unwrap(), unique);
}

#[test]
fn four_concurrent_extracts_read_each_chunk_once() {
    let Some(mut s) = Setup::new("ia-four", &[("IGNITE_TEST_CHUNK_DELAY_MS", "5")]) else {
        return;
    };
    let mut agents = Vec::new();
    for n in 1..=4u8 {
        let (mac, token) = s.schedule(n, "web");
        let out = s.path(&format!("out{n}"));
        let a = s.extract_cmd(&mac, &token, &out, &[]).spawn().unwrap();
        agents.push((out, a));
    }
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
    let Some(mut s) = Setup::new("ia-corrupt", &[]) else {
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
    let e = fails(&mut s, &mac, &token, &[]);
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
    let Some(mut s) = Setup::new("ia-esp", &[]) else {
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
    let plan = |s: &mut Setup, n: u8, esp: &str| -> (String, String) {
        let name = format!("esp{n}");
        std::fs::write(
            s.path("state/profiles").join(format!("{name}.toml")),
            profile(esp),
        )
        .unwrap();
        let (mac, token) = s.schedule(n, &name);
        let out = s.curl_as(
            &mac,
            &[
                "-w",
                "\n%{http_code}",
                "-H",
                &format!("Authorization: Bearer {token}"),
                "--data",
                &facts(&mac),
                &format!("{SERVER}/api/install/{mac}/plan"),
            ],
        );
        let (body, code) = out.trim_end().rsplit_once('\n').unwrap();
        (code.to_string(), body.to_string())
    };
    let (code, body) = plan(&mut s, 1, "48M");
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
    let (code, body) = plan(&mut s, 2, &want);
    assert_eq!(code, "200", "{body}");
    // GRUB reads /boot itself: the same small ESP is fine for it.
    std::fs::write(
        s.path("state/profiles/grub.toml"),
        profile("48M").replace("extlinux", "grub"),
    )
    .unwrap();
    let (mac, token) = s.schedule(3, "grub");
    let body = s.curl_as(
        &mac,
        &[
            "-H",
            &format!("Authorization: Bearer {token}"),
            "--data",
            &facts(&mac),
            &format!("{SERVER}/api/install/{mac}/plan"),
        ],
    );
    assert!(body.contains("\"steps\""), "{body}");
}

/// Issue 18, item 2: a client's token is in its boot script only for the address holding
/// its DHCP lease; from another address the token is refused; it expires; a default install
/// action gives unregistered MACs nothing unless the server opted in.
#[test]
fn tokens_go_only_to_the_lease_holder_stay_bound_and_expire() {
    let Some(mut s) = Setup::with_args("ia-tok", &[], &[], "[install]\ntoken_ttl_secs = 8\n")
    else {
        return;
    };
    let (victim, _) = s.schedule(1, "web");
    let attacker = "52:54:00:77:02:01";
    let script_url = format!("{SERVER}/ipxe/{}", victim.replace(':', "-"));
    // From another leased address, over HTTP and TFTP: the plan, no token.
    for url in [
        script_url.clone(),
        format!("tftp://10.77.0.1/ipxe/{}", victim.replace(':', "-")),
        format!(
            "tftp://10.77.0.1/pxelinux.cfg/01-{}",
            victim.replace(':', "-")
        ),
    ] {
        let got = s.curl_as(attacker, &[&url]);
        assert!(got.contains("ignite.profile=web"), "{url}: {got}");
        assert!(
            !got.contains("ignite.token="),
            "{url} leaked the token: {got}"
        );
    }
    // From the server's own host (no lease) neither.
    let got = s.curl(&[&script_url]);
    assert!(!got.contains("ignite.token="), "{got}");
    // The victim's own token, used from the attacker's address: refused.
    let token = s.token(&victim);
    let code = s.plan_status(attacker, &victim, &token);
    assert_eq!(code, "403");
    let e = s.curl_as(
        attacker,
        &[
            "-H",
            &format!("Authorization: Bearer {token}"),
            &format!("{SERVER}/api/install/{victim}/tree"),
        ],
    );
    assert!(
        e.contains("bound to 10.77.0.") && e.contains("this request came from"),
        "{e}"
    );
    // The victim itself is served.
    let token = s.token(&victim);
    let released = std::time::Instant::now();
    plan_id(&mut s, &victim, &token);
    // Made-up MACs under a default install action get a local boot and leave no install.
    s.client(&["default", "install", "web"]);
    let stranger = "52:54:00:77:02:02";
    let got = s.script(stranger);
    assert!(got.contains("exit") && !got.contains("kernel"), "{got}");
    let got = s.curl_as(attacker, &[&format!("{SERVER}/ipxe/02-00-00-00-00-01")]);
    assert!(got.contains("exit") && !got.contains("token"), "{got}");
    let list = s.client(&["list", "--json"]);
    assert!(
        !list.contains(stranger) && !list.contains("02:00:00:00:00:01"),
        "{list}"
    );
    // After its time the token is refused; booting again hands out a fresh one.
    std::thread::sleep(Duration::from_secs(9).saturating_sub(released.elapsed()));
    let e = fails(&mut s, &victim, &token, &[]);
    assert!(e.contains("expired") && e.contains("(403)"), "{e}");
    let fresh = s.token(&victim);
    assert_ne!(fresh, token);
    plan_id(&mut s, &victim, &fresh);
}

/// Issue 18, items 3 and 11: the admin API needs the admin token, from anywhere; the state
/// directory, the database, the token and the store are private.
#[test]
fn admin_routes_need_the_admin_token_and_state_is_private() {
    let Some(mut s) = Setup::new("ia-admin", &[]) else {
        return;
    };
    let (mac, _) = s.schedule(1, "web");
    let code = |s: &mut Setup, from: Option<&str>, args: &[&str]| -> String {
        let mut a = vec!["-o", "/dev/null", "-w", "%{http_code}"];
        a.extend_from_slice(args);
        match from {
            Some(m) => s.curl_as(m, &a),
            None => s.curl(&a),
        }
    };
    let installed = format!("{SERVER}/api/clients/{mac}/installed");
    let wrong =
        "Authorization: Bearer 0000000000000000000000000000000000000000000000000000000000000000";
    for from in [Some(mac.as_str()), None] {
        for args in [
            vec![format!("{SERVER}/api/clients")],
            vec![format!("{SERVER}/api/stats")],
            vec!["-X".into(), "POST".into(), installed.clone()],
            vec!["-H".into(), wrong.into(), format!("{SERVER}/api/clients")],
        ] {
            let a: Vec<&str> = args.iter().map(String::as_str).collect();
            assert_eq!(code(&mut s, from, &a), "401", "{from:?} {args:?}");
        }
        // A path no route has is a 404, not an admin 401.
        let none = format!("{SERVER}/api/no-such-thing");
        assert_eq!(code(&mut s, from, &[&none]), "404", "{from:?}");
    }
    let v: serde_json::Value =
        serde_json::from_str(&s.client(&["show", "web1", "--json"])).unwrap();
    assert_eq!(v["client"]["action"], "install", "nobody flipped it: {v}");
    let admin = s.admin();
    let list = s.curl(&["-H", &admin, &format!("{SERVER}/api/clients")]);
    assert!(list.contains("\"web1\""), "{list}");
    assert_eq!(
        code(&mut s, None, &["-H", &admin, "-X", "POST", &installed]),
        "200"
    );
    let v: serde_json::Value =
        serde_json::from_str(&s.client(&["show", "web1", "--json"])).unwrap();
    assert_eq!(v["client"]["action"], "local", "{v}");
    // Nothing under the state directory (database, tokens, store packs and snapshots,
    // made by `ignite archive` and `ignite server` under the test's umask 022) is open to
    // group or others.
    let state = s.path("state");
    let mut open = Vec::new();
    let mut seen = 0;
    let mut stack = vec![state.clone()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let e = e.unwrap();
            let meta = e.metadata().unwrap();
            let name = e.file_name().to_string_lossy().into_owned();
            // The servers' logs are the test's own files; the local API socket is 0660 by
            // design (root and the state directory's group), reached only through the 0700
            // state directory.
            if name.starts_with("server-") && name.ends_with(".log")
                || name == "profiles"
                || name == "api.sock"
            {
                continue;
            }
            seen += 1;
            if std::os::unix::fs::PermissionsExt::mode(&meta.permissions()) & 0o077 != 0 {
                open.push(e.path());
            }
            if meta.is_dir() {
                stack.push(e.path());
            }
        }
    }
    let mode =
        std::os::unix::fs::PermissionsExt::mode(&std::fs::metadata(&state).unwrap().permissions());
    assert_eq!(mode & 0o777, 0o700);
    assert!(seen > 5, "walked {seen} files");
    assert!(open.is_empty(), "open to others: {open:#?}");
}

/// Issue 18, item 4: a chunk request's answer is capped in bytes, and only so many are
/// produced at once (here one, each chunk taking 300 ms: two requests take twice as long).
#[test]
fn chunk_batches_are_bounded_in_bytes_and_at_once() {
    let Some(mut s) = Setup::with_args(
        "ia-batch",
        &[("IGNITE_TEST_CHUNK_DELAY_MS", "300")],
        &[],
        "[limits]\nchunk_batches = 1\n",
    ) else {
        return;
    };
    // A snapshot with more incompressible data than one answer may carry.
    let big = s.path("big");
    std::fs::create_dir_all(&big).unwrap();
    std::fs::write(big.join("noise"), pattern(72 << 20, 5)).unwrap();
    arc(
        &s.path("state/store"),
        &["import", "--name", "big", big.to_str().unwrap()],
    );
    std::fs::write(
        s.path("state/profiles/big.toml"),
        PROFILE.replace("\"golden\"", "\"big\""),
    )
    .unwrap();
    let (mac, token) = s.schedule(1, "big");
    plan_id(&mut s, &mac, &token);
    let ids = tree_chunks(&mut s, &mac, &token);
    let req = s.path("all.bin");
    std::fs::write(&req, ids.iter().flat_map(|id| id.0).collect::<Vec<u8>>()).unwrap();
    let (e, code) = chunks(&mut s, &mac, &token, &req);
    assert_eq!(code, "413", "{e}");
    assert!(e.contains("ask for fewer at once"), "{e}");
    // Two requests of 4 chunks at once: served one after the other.
    let four = s.path("four.bin");
    std::fs::write(
        &four,
        ids[..4].iter().flat_map(|id| id.0).collect::<Vec<u8>>(),
    )
    .unwrap();
    let ns = s.ns(&mac);
    let t = std::time::Instant::now();
    let kids: Vec<_> = (0..2)
        .map(|_| {
            Lab::cmd(&ns, "curl")
                .args(["-s", "-o", "/dev/null", "-w", "%{http_code}", "-H"])
                .arg(format!("Authorization: Bearer {token}"))
                .arg("--data-binary")
                .arg(format!("@{}", four.display()))
                .arg(format!("{SERVER}/api/install/{mac}/chunks"))
                .stdout(std::process::Stdio::piped())
                .spawn()
                .unwrap()
        })
        .collect();
    for k in kids {
        let o = k.wait_with_output().unwrap();
        assert_eq!(String::from_utf8_lossy(&o.stdout), "200");
    }
    let took = t.elapsed();
    // Each request takes 4 x 300 ms: at once, they took as long as one after the other.
    assert!(
        took >= Duration::from_millis(2400),
        "two batches at once took {took:?}"
    );
}

/// Issue 18, item 16: what clients send (file names, install logs, failure messages) is
/// printed by `ignite client` with its control characters escaped.
#[test]
fn what_clients_send_reaches_the_terminal_escaped() {
    let Some(mut s) = Setup::new("ia-esc", &[]) else {
        return;
    };
    let (mac, token) = s.schedule(1, "web");
    s.curl_as(
        &mac,
        &[&format!("{SERVER}/files/%1b%5d0%3bpwned%07%1b%5b2J")],
    );
    let post = |s: &mut Setup, what: &str, body: &str| {
        s.curl_as(
            &mac,
            &[
                "-H",
                &format!("Authorization: Bearer {token}"),
                "--data-binary",
                body,
                &format!("{SERVER}/api/install/{mac}/{what}"),
            ],
        )
    };
    post(&mut s, "log", "mkfs \u{1b}[31mred\u{1b}[0m\r\n");
    post(
        &mut s,
        "phase",
        r#"{"phase":"failed","error":"disk \u001b[2J gone","log_tail":"x"}"#,
    );
    wait_for("the boot step in the log", Duration::from_secs(10), || {
        s.client(&["show", "web1"]).contains("http-missing")
    });
    for out in [
        s.client(&["show", "web1"]),
        s.client(&["list"]),
        s.client(&["log", "web1"]),
    ] {
        assert!(
            !out.contains('\u{1b}') && !out.contains('\u{7}') && !out.contains('\r'),
            "{out:?}"
        );
        assert!(out.contains("\\u{1b}"), "{out}");
    }
}

/// Boot action `recover`: the client's token serves its capture's plan, block lists and
/// chunks — nothing of other snapshots, and no install plan — and `done` sets it back to
/// local. (The agent writing the disk back is in the `install_qemu` lab.)
#[test]
fn a_recovery_serves_its_capture_and_nothing_else() {
    let Some(mut s) = Setup::new("ia-recov", &[]) else {
        return;
    };
    // A stopped guest with a 3 MiB disk of distinct data is captured.
    let state = s.path("state");
    let disk = s.path("cap1.img");
    std::fs::write(&disk, pattern(3 << 20, 5)).unwrap();
    let ig = |args: &[&str]| {
        run(Command::new(ignite_bin())
            .args(args)
            .env("IGNITE_STATE_DIR", &state))
    };
    ig(&["vm", "create", "cap1", "--disk", disk.to_str().unwrap()]);
    ig(&["recovery", "capture", "cap1"]);
    let mac = "52:54:00:77:01:21";
    s.client(&["add", mac, "db1", "recover", "cap1@latest"]);
    let token = s.token(mac);
    let auth = format!("Authorization: Bearer {token}");
    let api = |p: &str| format!("{SERVER}/api/install/{mac}/{p}");
    // No install plan for a recovery.
    let out = s.curl_as(mac, &["-H", &auth, "--data", &facts(mac), &api("plan")]);
    assert!(out.contains("set to recover cap1@latest"), "{out}");
    let plan: serde_json::Value =
        serde_json::from_str(&s.curl_as(mac, &["-H", &auth, "-X", "POST", &api("recover")]))
            .unwrap();
    assert!(
        plan["capture"].as_str().unwrap().starts_with("cap1@"),
        "{plan}"
    );
    let d = &plan["disks"][0];
    assert_eq!(d["size"].as_u64(), Some(3 << 20), "{plan}");
    let (bs, snapshot) = (
        d["block_size"].as_u64().unwrap(),
        d["snapshot"].as_str().unwrap(),
    );
    let image = s.path("image.bin");
    s.curl_as(
        mac,
        &["-H", &auth, "-o", image.to_str().unwrap(), &api("image/0")],
    );
    let blocks = ignite_archive::snapshot::decode_image(
        snapshot,
        &std::fs::read(&image).unwrap(),
        (3u64 << 20).div_ceil(bs),
    )
    .unwrap();
    // The block list is the disk's: each id the SHA-256 of its block.
    let data = std::fs::read(&disk).unwrap();
    for (i, b) in blocks.iter().enumerate() {
        let at = i * bs as usize;
        let want = ignite_archive::ChunkId::of(&data[at..(at + bs as usize).min(data.len())]);
        assert_eq!(*b, Some(want), "block {i}");
    }
    let out = s.curl_as(mac, &["-H", &auth, "-w", "%{http_code}", &api("image/1")]);
    assert!(out.contains("no disk 1") && out.ends_with("404"), "{out}");
    // Its chunks are served; another snapshot's are not.
    let ask = s.path("ask.bin");
    std::fs::write(&ask, blocks[0].unwrap().0).unwrap();
    let (_, status) = chunks(&mut s, mac, &token, &ask);
    assert_eq!(status, "200");
    let other = {
        let (gmac, gtoken) = s.schedule(22, "web");
        plan_id(&mut s, &gmac, &gtoken);
        tree_chunks(&mut s, &gmac, &gtoken)[0]
    };
    std::fs::write(&ask, other.0).unwrap();
    let (body, status) = chunks(&mut s, mac, &token, &ask);
    assert_eq!(status, "404", "{body}");
    // Done: the client boots its disk again.
    let out = s.curl_as(
        mac,
        &[
            "-H",
            &auth,
            "-w",
            "%{http_code}",
            "--data",
            r#"{"phase":"done"}"#,
            &api("phase"),
        ],
    );
    assert_eq!(out, "204");
    let v: serde_json::Value = serde_json::from_str(&s.client(&["show", "db1", "--json"])).unwrap();
    assert_eq!(v["client"]["action"], "local", "{v}");
}

/// `[install] tls`: the boot script sends the agent to the HTTPS port and pins the server's
/// authority; the agent installs over HTTPS, refuses a server whose authority differs from
/// the pin, and the plain port serves no install API. curl (OpenSSL) verifies the server's
/// certificate against the authority too, by the server's IP address.
#[test]
fn with_tls_the_agent_pins_the_servers_authority() {
    let Some(mut s) = Setup::with_args("ia-tls", &[], &[], "[install]\ntls = true\n") else {
        return;
    };
    let (mac, token) = s.schedule(1, "web");
    let script = s.script(&mac);
    let arg = |k: &str| {
        script
            .split_whitespace()
            .find_map(|w| w.strip_prefix(k))
            .unwrap_or_else(|| panic!("no {k} in the boot script:\n{script}"))
            .to_string()
    };
    let (api, pin) = (arg("ignite.server="), arg("ignite.tls="));
    assert_eq!(api, "https://10.77.0.1:8443", "{script}");
    let ca = s.path("state/tls-ca.der");
    let digest = sh(&format!("sha256sum {}", ca.display()));
    assert_eq!(digest.split_whitespace().next(), Some(pin.as_str()));
    // Another pin: the agent stops before it asks for anything, and writes nothing.
    let wrong = format!("{:064x}", 7);
    let out = s.path("out-wrong");
    let o = s
        .extract_from(&api, &mac, &token, &out, &["--tls-pin", &wrong])
        .output()
        .unwrap();
    let e = stderr(&o);
    assert!(
        !o.status.success() && e.contains(&format!("not the pinned {wrong}")),
        "{e}"
    );
    assert!(!out.exists() || std::fs::read_dir(&out).unwrap().next().is_none());
    // No pin for an https:// server is refused as such.
    let o = s
        .extract_from(&api, &mac, &token, &out, &[])
        .output()
        .unwrap();
    assert!(
        stderr(&o).contains("pin the server's certificate authority"),
        "{}",
        stderr(&o)
    );
    // The plain port serves boot files only.
    let plain = s.plan_status(&mac, &mac, &token);
    assert_eq!(plain, "404");
    // OpenSSL agrees: the certificate chains to the authority and names the address.
    let pem = s.path("ca.pem");
    sh(&format!(
        "openssl x509 -inform der -in {} -out {}",
        ca.display(),
        pem.display()
    ));
    let got = s.curl_as(
        &mac,
        &[
            "-o",
            "/dev/null",
            "-w",
            "%{http_code}",
            "--cacert",
            pem.to_str().unwrap(),
            &format!("{api}/tls/ca.der"),
        ],
    );
    assert_eq!(got, "200");
    // The install itself, over HTTPS.
    let out = s.path("out1");
    let o = s
        .extract_from(&api, &mac, &token, &out, &["--tls-pin", &pin, "--done"])
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", stderr(&o));
    s.assert_same_tree(&out);
}
