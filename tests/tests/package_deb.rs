//! The Debian package as a sysadmin meets it: `scripts/package-deb` builds it, `dpkg -i`
//! installs it into a throwaway Debian 12 root (an overlay over the golden fixture, which has
//! systemd), and the root boots with `systemd-nspawn -b`. The service must start by itself
//! (enabled by the package) and reach `active`, which for `Type=notify` means the server
//! sent READY=1; answer its HTTP API; apply a reload (and say what waits for a restart, and
//! keep running through a broken file); run sandboxed as the unit says; stop cleanly. The
//! man pages and completions must be in place and readable.

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use ignite_e2e::container::{Container, Overlay};
use ignite_e2e::{fixture, ignite_bin, repo_root, require_tools, run, wait_until};

const MAC: &str = "52:54:00:12:34:56";
const API: &str = "http://10.77.0.1:8080";

/// What the package must ship, as `dpkg-deb -c` lists it.
const SHIPPED: &[&str] = &[
    "./usr/bin/ignite",
    "./lib/systemd/system/ignite.service",
    "./etc/ignite/server.toml",
    "./usr/share/man/man1/ignite.1.gz",
    "./usr/share/man/man1/ignite-server.1.gz",
    "./usr/share/man/man1/ignite-recovery-capture.1.gz",
    "./usr/share/bash-completion/completions/ignite",
    "./usr/share/zsh/vendor-completions/_ignite",
    "./usr/share/fish/vendor_completions.d/ignite.fish",
    "./usr/share/doc/ignite/copyright",
];

fn secs(t: Instant) -> String {
    format!("{:.1} s", t.elapsed().as_secs_f64())
}

/// `systemctl show -p PROP --value ignite`.
fn unit_prop(c: &Container, prop: &str) -> String {
    c.exec(&["systemctl", "show", "-p", prop, "--value", "ignite"])
        .trim()
        .to_string()
}

/// Waits until the service's journal has `line`; panics with the journal otherwise.
fn wait_journal(c: &Container, what: &str, line: &str) {
    wait_until(
        what,
        Duration::from_secs(60),
        || c.journal("ignite").contains(line),
        || c.journal("ignite"),
    );
}

/// The iPXE script the server gives MAC now.
fn script(c: &Container) -> String {
    c.in_netns(&[
        "curl",
        "-sS",
        &format!("{API}/ipxe/{}", MAC.replace(':', "-")),
    ])
}

/// Replaces `from` by `to` in the installed configuration.
fn edit_config(root: &Path, from: &str, to: &str) {
    let path = root.join("etc/ignite/server.toml");
    let text = std::fs::read_to_string(&path).unwrap();
    assert!(
        text.contains(from),
        "{from:?} is not in the shipped server.toml"
    );
    std::fs::write(&path, text.replacen(from, to, 1)).unwrap();
}

/// Reloads and waits for the server to log `line`; the main process must stay the same.
fn reload(c: &Container, line: &str) {
    let pid = unit_prop(c, "MainPID");
    c.exec(&["systemctl", "reload", "ignite"]);
    wait_journal(c, &format!("the reload to log {line:?}"), line);
    assert_eq!(
        unit_prop(c, "MainPID"),
        pid,
        "a reload restarted the server"
    );
    assert_eq!(unit_prop(c, "ActiveState"), "active");
}

#[test]
fn the_package_installs_and_runs_as_a_hardened_service() {
    if !require_tools(&[
        "dpkg-deb",
        "readelf",
        "strip",
        "systemd-nspawn",
        "nsenter",
        "chroot",
        "curl",
        "ss",
        "man",
    ]) {
        return;
    }
    let t0 = Instant::now();
    let tmp = tempfile::tempdir().unwrap();

    // The package, from the binary under test.
    let t = Instant::now();
    let deb = run(Command::new(repo_root().join("scripts/package-deb"))
        .arg("--binary")
        .arg(ignite_bin())
        .arg("--out")
        .arg(tmp.path()));
    let deb = Path::new(deb.trim()).to_path_buf();
    let listing = run(Command::new("dpkg-deb").arg("-c").arg(&deb));
    for f in SHIPPED {
        assert!(
            listing.lines().any(|l| l.ends_with(f)),
            "{f} is not in the package:\n{listing}"
        );
    }
    let conffiles = run(Command::new("dpkg-deb")
        .arg("--info")
        .arg(&deb)
        .arg("conffiles"));
    assert_eq!(conffiles.trim(), "/etc/ignite/server.toml");
    eprintln!("package built and listed in {}", secs(t));

    // A fresh Debian 12 with systemd: the golden fixture under an overlay. Its dpkg trims
    // man pages (a golden image leaves them out); a fresh host keeps them.
    let golden = fixture("golden");
    let root = Overlay::new(&golden[0], &tmp.path().join("root"));
    std::fs::remove_file(root.merged.join("etc/dpkg/dpkg.cfg.d/01-golden-trim")).unwrap();
    std::fs::copy(&deb, root.merged.join("tmp/ignite.deb")).unwrap();
    let t = Instant::now();
    let out = root.chroot(&["dpkg", "-i", "/tmp/ignite.deb"]);
    assert!(out.contains("Setting up ignite"), "{out}");
    let wants = root
        .merged
        .join("etc/systemd/system/multi-user.target.wants/ignite.service");
    assert!(
        wants.is_symlink(),
        "the package did not enable the service:\n{out}"
    );
    eprintln!("installed with dpkg -i in {}", secs(t));

    // This root has no network for the first start to fetch iPXE and the kernel with apt:
    // the boot files are made here and put in place, as `ignite server` tells an offline
    // host to do.
    let t = Instant::now();
    let state = root.merged.join("var/lib/ignite");
    run(Command::new(ignite_bin())
        .args(["server", "--prepare", "--state-dir"])
        .arg(&state));
    eprintln!("boot files prepared in {}", secs(t));

    let t = Instant::now();
    let name = format!("ignite-pkg-{}", std::process::id());
    let c = Container::boot(&root.merged, &name, &tmp.path().join("console.log"));
    // Enabled by the package, the unit starts at boot; `active` needs its READY=1.
    wait_until(
        "ignite.service to become active",
        Duration::from_secs(180),
        || {
            let state = unit_prop(&c, "ActiveState");
            assert_ne!(state, "failed", "ignite.service failed");
            state == "active"
        },
        || c.journal("ignite"),
    );
    eprintln!("container booted, service active in {}", secs(t));
    let status = unit_prop(&c, "StatusText");
    assert!(
        status.starts_with("serving ignite0 (10.77.0.1/24)"),
        "{status}"
    );

    // DHCP and TFTP listen on their privileged ports: CAP_NET_BIND_SERVICE is enough.
    let udp = c.in_netns(&["ss", "-Hulnp"]);
    for port in [":67 ", ":69 "] {
        assert!(
            udp.lines()
                .any(|l| l.contains(port) && l.contains("\"ignite\"")),
            "nothing of ignite listens on {port}:\n{udp}"
        );
    }

    // journald: the level became the line's priority and no timestamp is repeated.
    let infos = c.exec(&["journalctl", "-u", "ignite", "-p", "info", "-o", "cat"]);
    let ready = infos
        .lines()
        .find(|l| l.contains("ignite server ready"))
        .unwrap_or_else(|| panic!("no ready line:\n{infos}"));
    assert!(ready.trim_start().starts_with("INFO "), "{ready}");
    let warnings = c.exec(&["journalctl", "-u", "ignite", "-p", "warning", "-o", "cat"]);
    assert!(!warnings.contains("ignite server ready"), "{warnings}");

    // The HTTP API: admin routes need the token the service made in its state directory.
    let token = std::fs::read_to_string(state.join("admin.token")).unwrap();
    let code = |auth: &[&str]| {
        let mut args = vec!["curl", "-sS", "-o", "/dev/null", "-w", "%{http_code}"];
        args.extend_from_slice(auth);
        args.push("http://10.77.0.1:8080/api/stats");
        c.in_netns(&args)
    };
    assert_eq!(code(&[]), "401");
    let bearer = format!("Authorization: Bearer {}", token.trim());
    assert_eq!(code(&["-H", &bearer]), "200");

    // A reload applies the kernel command line to the next boot plan.
    c.exec(&["ignite", "client", "add", MAC, "pc1", "install", "web"]);
    assert!(script(&c).contains("console=ttyS0 ignite.server="));
    edit_config(
        &root.merged,
        "# cmdline = \"console=ttyS0\"",
        "cmdline = \"console=ttyS0 ignite.reloaded=1\"",
    );
    reload(&c, "SIGHUP: configuration reloaded");
    let s = script(&c);
    assert!(
        s.contains("console=ttyS0 ignite.reloaded=1 ignite.server="),
        "{s}"
    );
    // A socket setting waits for a restart, and says so.
    edit_config(&root.merged, "# http_port = 8080", "http_port = 8081");
    reload(&c, "changes to [network] take effect at the next restart");
    assert!(unit_prop(&c, "StatusText").contains("[network] wait for a restart"));
    // A broken file changes nothing.
    edit_config(
        &root.merged,
        "state_dir = \"/var/lib/ignite\"",
        "state_dir = 5",
    );
    reload(
        &c,
        "SIGHUP: configuration not reloaded, the running one stays",
    );
    assert!(script(&c).contains("ignite.reloaded=1"));

    // The sandbox as systemd rates it (0 best, 10 worst; 2.7 with this unit and systemd 252).
    let rating = c.exec(&[
        "systemd-analyze",
        "security",
        "--no-pager",
        "ignite.service",
    ]);
    let exposure: f64 = rating
        .lines()
        .find_map(|l| {
            l.split("Overall exposure level for ignite.service: ")
                .nth(1)
        })
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or_else(|| panic!("no overall exposure level:\n{rating}"));
    assert!(exposure <= 3.0, "the sandbox loosened:\n{rating}");
    eprintln!("systemd-analyze security: exposure {exposure}");

    // The sandbox, seen from the server's own process.
    let pid: u32 = unit_prop(&c, "MainPID").parse().unwrap();
    let host_pid = c.host_pid(pid);
    let status = std::fs::read_to_string(format!("/proc/{host_pid}/status")).unwrap();
    let field = |k: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(k))
            .map(str::trim)
            .unwrap_or_default()
            .to_string()
    };
    // CAP_NET_BIND_SERVICE (10), CAP_NET_ADMIN (12) and CAP_NET_RAW (13), nothing else.
    assert_eq!(
        field("CapBnd:"),
        format!("{:016x}", (1u64 << 10) | (1 << 12) | (1 << 13))
    );
    assert_eq!(field("CapEff:"), field("CapBnd:"));
    assert_eq!(field("NoNewPrivs:"), "1");
    let touch = |path: &str| c.in_mounts_of(pid, &["touch", path]);
    for outside in ["/etc/ignite/written", "/usr/bin/written", "/var/written"] {
        let out = touch(outside);
        assert!(
            !out.status.success()
                && String::from_utf8_lossy(&out.stderr).contains("Read-only file system"),
            "the service's view lets {outside} be written: {out:?}"
        );
    }
    assert!(touch("/var/lib/ignite/written").status.success());
    assert!(touch("/tmp/written").status.success());
    assert!(
        !root.merged.join("tmp/written").exists(),
        "the service's /tmp is the system's"
    );
    let mode =
        std::os::unix::fs::PermissionsExt::mode(&std::fs::metadata(&state).unwrap().permissions());
    assert_eq!(mode & 0o777, 0o700, "state directory mode {mode:o}");

    // Man pages and completions where man and the shells look.
    let man1 = root.merged.join("usr/share/man/man1");
    let page = run(Command::new("man")
        .args(["-P", "cat", "-l"])
        .arg(man1.join("ignite-server.1.gz"))
        .env("LANG", "C")
        .env("MANWIDTH", "100"));
    assert!(
        page.starts_with("ignite-server(1)") && page.contains("--check"),
        "{page}"
    );
    assert!(man1.join("ignite.1.gz").is_file());
    let bash = root
        .merged
        .join("usr/share/bash-completion/completions/ignite");
    let complete = run(Command::new("bash")
        .arg("-c")
        .arg(format!("source {} && complete -p ignite", bash.display())));
    assert!(complete.contains("ignite"), "{complete}");

    // A clean stop: SIGTERM, the server's own goodbye, exit status 0.
    let t = Instant::now();
    c.exec(&["systemctl", "stop", "ignite"]);
    assert_eq!(unit_prop(&c, "ActiveState"), "inactive");
    assert_eq!(unit_prop(&c, "Result"), "success");
    assert_eq!(unit_prop(&c, "ExecMainStatus"), "0");
    let journal = c.journal("ignite");
    assert!(
        journal.contains("SIGTERM: shutting down") && journal.contains("ignite server stopped"),
        "{journal}"
    );
    eprintln!("stopped in {}", secs(t));

    // A configuration that does not load keeps the service from starting, and says why.
    let refused = c.try_exec(&["systemctl", "start", "ignite"]);
    assert!(refused.is_err(), "started with a broken configuration");
    assert_eq!(unit_prop(&c, "Result"), "exit-code");
    let journal = c.journal("ignite");
    let after_stop = &journal[journal.rfind("ignite server stopped").unwrap()..];
    assert!(
        after_stop.contains("expected path string"),
        "the check's error is not in the journal:\n{after_stop}"
    );
    eprintln!("whole test {}", secs(t0));
}
