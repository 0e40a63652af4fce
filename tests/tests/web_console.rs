//! The web console in a real headless Chromium, against `ignite server` in a network
//! namespace (no install: seconds). The page loads without the token and shows no data
//! without it; a wrong token is refused; with the token every view shows the server's state,
//! follows changes live, and its actions (set a boot action, start and stop a guest, show
//! its console, compare two snapshots, verify the store, filter the boot log) go through
//! `/api/v1`. No script errors or policy violations on the way. Screenshots of each view go
//! to `target/screenshots/`.

use std::process::Command;
use std::time::Duration;

use ignite_e2e::browser::{self, client_row, log_in, page_errors, set_action, Browser};
use ignite_e2e::*;
use serde_json::{json, Value};

const SERVER: &str = "http://10.77.0.1:8080";
const WEB1: &str = "52:54:00:aa:00:01";
const DB1: &str = "52:54:00:aa:00:02";
const MARKER: &str = "WEB-CONSOLE-GUEST-UP";

/// `ignite ARGS --state-dir STATE`, its stdout.
fn ign(state: &std::path::Path, args: &[&str]) -> String {
    run(Command::new(ignite_bin())
        .args(args)
        .arg("--state-dir")
        .arg(state))
}

/// What `script` (run in the page) returns once it returns something other than null.
fn wait_value(b: &Browser, what: &str, script: &str) -> Value {
    b.wait_for(what, Duration::from_secs(30), |b| {
        Some(b.script(script, json!([]))).filter(|v| !v.is_null() && *v != false)
    })
}

/// The text of every cell of the rows of table body `id`, row by row.
fn rows(b: &Browser, id: &str) -> Vec<Vec<String>> {
    let v = b.script(
        "return [...document.getElementById(arguments[0]).rows].map(r => [...r.cells].map(c => c.textContent))",
        json!([id]),
    );
    serde_json::from_value(v).unwrap()
}

fn show(b: &Browser, view: &str) {
    b.click(&format!("#nav a[href=\"#{view}\"]"));
    b.wait_for(&format!("view {view}"), Duration::from_secs(10), |b| {
        (b.script(
            "return !document.getElementById(arguments[0]).hidden",
            json!([view]),
        ) == true)
            .then_some(())
    });
}

#[test]
fn the_console_shows_the_server_and_acts_through_the_api() {
    let mut need = vec!["ip", "curl", "tar", "qemu-system-x86_64"];
    need.extend(browser::prerequisites());
    if !require_tools(&need) {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let state = tmp.path().join("state");
    // Debian's kernel and an initramfs that prints MARKER and powers off: what the guest
    // boots (its console shows in the page).
    let boot = fetch_boot_files(tmp.path(), MARKER);
    let lab = Lab::new("web");
    let server = Server::start(&lab, &state, &boot, &[]);
    let token = std::fs::read_to_string(state.join("admin.token"))
        .unwrap()
        .trim()
        .to_string();

    // What there is to show: two clients, a guest (a client too, so that it boots the
    // kernel) with a capture schedule, two snapshots of a tree.
    ign(&state, &["client", "add", WEB1, "web1", "install", "lab"]);
    ign(&state, &["client", "add", DB1, "db1", "local"]);
    let create = "vm create g1 --mem 256M --disk 64M --boot net --engine qemu --net bridge=br0";
    ign(&state, &create.split(' ').collect::<Vec<_>>());
    let g1: Value = serde_json::from_str(&ign(&state, &["vm", "show", "g1", "--json"])).unwrap();
    let g1_mac = g1["nics"][0]["mac"].as_str().unwrap().to_string();
    ign(&state, &["client", "add", &g1_mac, "g1", "install", "lab"]);
    let schedule = "recovery schedule g1 --at 02:00 --every 1d --keep-daily 7";
    ign(&state, &schedule.split(' ').collect::<Vec<_>>());
    let store = state.join("store");
    let tree = tmp.path().join("tree");
    std::fs::create_dir_all(tree.join("etc")).unwrap();
    std::fs::write(tree.join("etc/hostname"), "web1\n").unwrap();
    let store_s = store.to_str().unwrap();
    run(Command::new(ignite_bin()).args(["archive", "--store", store_s, "init"]));
    let import = |n: &str| {
        let tar = tmp.path().join(format!("{n}.tar"));
        run(Command::new("tar")
            .arg("-cf")
            .arg(&tar)
            .arg("-C")
            .arg(&tree)
            .arg("."));
        run(Command::new(ignite_bin())
            .args([
                "archive",
                "--store",
                store_s,
                "import",
                "--name",
                "web1-files",
            ])
            .arg(&tar));
    };
    import("a");
    std::fs::write(tree.join("etc/motd"), "hello\n").unwrap();
    import("b");
    // A boot step for web1 in the boot log: its iPXE script, fetched from the lab.
    run(Lab::cmd(&lab.ns, "curl").args([
        "-s",
        "-o",
        "/dev/null",
        &format!("{SERVER}/ipxe/52-54-00-aa-00-01"),
    ]));

    let b = Browser::start(&lab.ns);

    // Without the token: the page (no data), the login form; the API answers 401.
    b.goto(&format!("{SERVER}/"));
    wait_value(
        &b,
        "the login form",
        "return !document.getElementById('login').hidden || null",
    );
    assert!(b.text("#clients-rows").is_empty());
    b.screenshot("login");
    let status = b.script(
        "return fetch('/api/v1/clients').then(r => r.status)",
        json!([]),
    );
    assert_eq!(status, 401, "the API without the token");
    b.type_into("#token", "0123456789abcdef0123456789abcdef");
    b.click("#login-form button");
    let refused = wait_value(
        &b,
        "the wrong token refused",
        "const s = document.getElementById('status'); return s.className === 'error' ? s.textContent : null",
    );
    assert!(
        refused.as_str().unwrap().contains("wrong token"),
        "{refused}"
    );
    let stored = b.script(
        "return sessionStorage.getItem('ignite-admin-token')",
        json!([]),
    );
    assert_eq!(stored, Value::Null, "a refused token is not kept");
    // The refusals above are logged as failed requests; nothing else may be.
    let errors: Vec<String> = page_errors(&b)
        .into_iter()
        .filter(|e| !e.contains("status of 401"))
        .collect();
    assert!(errors.is_empty(), "page errors: {errors:?}");

    // With the token: the clients.
    log_in(&b, SERVER, &token);
    let web1 = b.wait_for("web1's row", Duration::from_secs(10), |b| {
        client_row(b, WEB1)
    });
    assert_eq!(web1.2, "install lab");
    assert_eq!(web1.0, "scheduled", "{web1:?}");
    let names: Vec<String> = rows(&b, "clients-rows")
        .iter()
        .map(|r| r[0].clone())
        .collect();
    assert_eq!(names, ["db1", "g1", "web1"]);
    b.screenshot("clients");
    // Progress read by a list fetched before the latest event never moves the bar back.
    let bar = b.script(
        "const tr = clientRow(arguments[0]); \
         showInstall(tr, {status: 'active', phase: 'extracting', done: 50, total: 100}); \
         showInstall(tr, {status: 'active', phase: 'extracting', done: 40, total: 100}); \
         const v = tr.querySelector('progress').value; \
         showInstall(tr, null); \
         return v;",
        json!([DB1]),
    );
    assert_eq!(bar.as_f64(), Some(0.15 + 0.75 * 0.5), "{bar}");

    // A boot action set in the page is the server's; a bad one shows the API's reason.
    set_action(&b, DB1, "capture", "");
    let db1: Value =
        serde_json::from_str(&ign(&state, &["client", "show", "db1", "--json"])).unwrap();
    assert_eq!(db1["client"]["action"], "capture", "{db1}");
    b.script(
        "document.querySelector(`#clients-rows tr[data-mac=\"${arguments[0]}\"] select.kind`).value = 'recover'; \
         document.querySelector(`#clients-rows tr[data-mac=\"${arguments[0]}\"] form.action button`).click();",
        json!([DB1]),
    );
    let bad = wait_value(
        &b,
        "the API's reason for a bad action",
        "const s = document.getElementById('status'); return s.className === 'error' ? s.textContent : null",
    );
    assert!(bad.as_str().unwrap().contains("needs a snapshot"), "{bad}");
    let errors = page_errors(&b);
    assert!(
        errors.iter().all(|e| e.contains("status of 422")),
        "page errors: {errors:?}"
    );
    // A change made elsewhere (the local CLI) reaches the page through the event stream.
    ign(&state, &["client", "set", "web1", "local"]);
    b.wait_for(
        "web1's change by the CLI in the page",
        Duration::from_secs(20),
        |b| client_row(b, WEB1).filter(|r| r.2 == "local"),
    );

    // Guests: start one (QEMU) and stop it; start it again and see its console in the page
    // until it powers off by itself.
    show(&b, "guests");
    // The list is fetched when the view shows: under load it may not be there yet.
    let g = b.wait_for("the guests' rows", Duration::from_secs(30), |b| {
        Some(rows(b, "guests-rows")).filter(|r| !r.is_empty())
    });
    assert_eq!(&g[0][..2], ["g1", "defined"], "{g:?}");
    let button = |n: u8| format!("#guests-rows tr[data-guest=\"g1\"] button:nth-of-type({n})");
    let state_is = |want: &str| {
        let script = format!(
            "const c = document.querySelector('#guests-rows tr[data-guest=\"g1\"] .state'); \
             return c && c.textContent === '{want}' || null"
        );
        wait_value(&b, &format!("g1 {want} in the page"), &script);
    };
    b.click(&button(1));
    state_is("running");
    b.click(&button(2));
    state_is("stopped");
    b.click(&button(1));
    state_is("running");
    b.click(&button(3));
    let console = b.wait_for(
        "g1's kernel and init in the page's console",
        Duration::from_secs(180),
        |b| {
            let v = b.script(
                "return document.getElementById('console').textContent",
                json!([]),
            );
            v.as_str()
                .filter(|t| t.contains(MARKER))
                .map(str::to_string)
        },
    );
    assert!(console.contains("Run /init as init process"), "{console}");
    b.screenshot("guests");
    state_is("stopped");

    // Archives: sizes and dedup, the history of web1-files, a diff of its two snapshots.
    show(&b, "archives");
    let a = b.wait_for("two snapshots", Duration::from_secs(10), |b| {
        Some(rows(b, "archives-rows")).filter(|r| r.len() == 2)
    });
    assert!(a.iter().all(|r| r[0] == "web1-files"), "{a:?}");
    let stats = b.script(
        "return Object.fromEntries([...document.querySelectorAll('#stats div')].map(d => [d.firstChild.textContent, d.lastChild.textContent]))",
        json!([]),
    );
    assert_eq!(stats["snapshots"], "2", "{stats}");
    assert!(stats["dedup"].as_str().unwrap().ends_with('×'), "{stats}");
    // From the older (second row: newest first) to the newer.
    b.click("#archives-rows tr:nth-child(2) input[name=from]");
    b.click("#archives-rows tr:nth-child(1) input[name=to]");
    b.click("#diff");
    let diff = wait_value(
        &b,
        "the diff",
        "const p = document.getElementById('diff-out'); return p.hidden ? null : p.textContent",
    );
    let diff = diff.as_str().unwrap();
    assert!(
        diff.contains("1 added, 0 removed") && diff.contains("+ etc/motd"),
        "{diff}"
    );
    b.screenshot("archives");
    b.click("#verify");
    show(&b, "jobs");
    let job = b.wait_for("the verify job done", Duration::from_secs(60), |b| {
        rows(b, "jobs-rows")
            .into_iter()
            .find(|r| r[1] == "archive verify" && r[2] == "done")
    });
    assert!(
        job[5].contains("\"chunks_checked\":2") && job[5].contains("\"problems\":[]"),
        "{job:?}"
    );
    b.screenshot("jobs");

    show(&b, "schedules");
    let s = b.wait_for("web1's schedule", Duration::from_secs(10), |b| {
        rows(b, "schedules-rows").into_iter().next()
    });
    assert_eq!(&s[..3], ["g1", "02:00", "1d"], "{s:?}");
    assert!(!s[3].is_empty(), "a next run: {s:?}");
    b.screenshot("schedules");

    // The boot log, filtered by MAC (g1's network boot: DHCP, its script, its kernel) and
    // by text.
    show(&b, "bootlog");
    b.type_into("#bootlog-mac", &g1_mac);
    b.click("#bootlog-form button");
    let steps = b.wait_for("g1's boot steps alone", Duration::from_secs(10), |b| {
        Some(rows(b, "bootlog-rows")).filter(|r| !r.is_empty() && r.iter().all(|s| s[1] == g1_mac))
    });
    let names: Vec<&str> = steps.iter().map(|s| s[3].as_str()).collect();
    assert!(
        names.contains(&"dhcp-ack") && names.contains(&"script"),
        "{steps:?}"
    );
    b.screenshot("bootlog");
    b.type_into("#bootlog-text", "vmlinuz");
    b.click("#bootlog-form button");
    b.wait_for("the steps naming vmlinuz", Duration::from_secs(10), |b| {
        Some(rows(b, "bootlog-rows")).filter(|r| {
            r.len() < steps.len() && !r.is_empty() && r.iter().all(|s| s[4].contains("vmlinuz"))
        })
    });
    b.script(
        "document.getElementById('bootlog-text').value = ''",
        json!([]),
    );
    b.type_into("#bootlog-text", "no such step anywhere");
    b.click("#bootlog-form button");
    wait_value(
        &b,
        "no steps for a text nobody logged",
        "return document.getElementById('bootlog-rows').rows.length === 0 && !document.getElementById('bootlog-empty').hidden || null",
    );

    let errors = page_errors(&b);
    assert!(errors.is_empty(), "page errors: {errors:?}");

    // Logging out forgets the token and hides the data.
    b.click("#logout");
    wait_value(
        &b,
        "the login form again",
        "return !document.getElementById('login').hidden || null",
    );
    let stored = b.script(
        "return sessionStorage.getItem('ignite-admin-token')",
        json!([]),
    );
    assert_eq!(stored, Value::Null);
    drop(b);
    drop(server);
}
