//! The management API `/api/v1` end to end: a real `ignite server` on loopback (DHCP and
//! TFTP off, so no root is needed) with a temporary state directory and store; every route
//! through a real HTTP client, each error code, a verify job followed to done, the event
//! stream read until the expected events arrive, and the CLI with `--server` printing what
//! it prints on the local state.

use std::io::BufRead;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use serde_json::{json, Value};

/// `ignite server` on 127.0.0.1 with its own state directory; killed on drop.
struct Server {
    child: Child,
    dir: tempfile::TempDir,
    url: String,
    token: String,
    log: PathBuf,
}

impl Server {
    fn start() -> Server {
        Server::start_with(|_| {})
    }

    /// A server whose state directory `prepare` saw first.
    fn start_with(prepare: impl FnOnce(&Path)) -> Server {
        Server::start_configured("", prepare)
    }

    /// A server with `config` added to its configuration.
    fn start_configured(config_more: &str, prepare: impl FnOnce(&Path)) -> Server {
        let dir = tempfile::tempdir().unwrap();
        let state = dir.path().join("state");
        std::fs::create_dir_all(state.join("boot")).unwrap();
        prepare(&state);
        let config = dir.path().join("server.toml");
        std::fs::write(
            &config,
            format!("[network]\ndhcp = false\ntftp = false\n{config_more}"),
        )
        .unwrap();
        // A port free a moment ago; the server binds it on all addresses.
        let port = std::net::TcpListener::bind("0.0.0.0:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let log = dir.path().join("server.log");
        let child = Command::new(env!("CARGO_BIN_EXE_ignite"))
            .args(["server", "--interface", "lo", "--no-prepare", "--config"])
            .arg(&config)
            .arg("--state-dir")
            .arg(&state)
            .args(["--http-port", &port.to_string()])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .unwrap();
        let mut s = Server {
            child,
            dir,
            url: format!("http://127.0.0.1:{port}"),
            token: String::new(),
            log,
        };
        let t = Instant::now();
        loop {
            // The token is written before the listener binds: a refused connection means
            // "not yet".
            if let Ok(t) = std::fs::read_to_string(state.join("admin.token")) {
                s.token = t.trim().to_string();
                let health = Self::agent()
                    .get(format!("{}/api/v1/health", s.url))
                    .header("Authorization", format!("Bearer {}", s.token))
                    .call();
                if health.is_ok_and(|r| r.status() == 200) {
                    break;
                }
            }
            if let Ok(Some(code)) = s.child.try_wait() {
                panic!("ignite server exited ({code}):\n{}", s.log_text());
            }
            assert!(
                t.elapsed() < Duration::from_secs(60),
                "the server did not answer within 60 s:\n{}",
                s.log_text()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        s
    }

    fn state(&self) -> PathBuf {
        self.dir.path().join("state")
    }

    fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    fn agent() -> ureq::Agent {
        ureq::Agent::config_builder()
            .http_status_as_error(false)
            .timeout_global(Some(Duration::from_secs(120)))
            .build()
            .into()
    }

    /// `method path` with `auth` as the bearer token (None: no header) and a JSON body;
    /// the status and the answer as JSON (Null when it is not JSON).
    fn request(
        &self,
        method: &str,
        path: &str,
        auth: Option<&str>,
        body: Option<Value>,
    ) -> (u16, Value) {
        let a = Self::agent();
        let url = format!("{}{path}", self.url);
        let h = auth.map(|t| format!("Bearer {t}")).unwrap_or_default();
        let r = match (method, body) {
            ("GET", _) => {
                let mut r = a.get(&url);
                if auth.is_some() {
                    r = r.header("Authorization", &h);
                }
                r.call()
            }
            ("DELETE", _) => a.delete(&url).header("Authorization", &h).call(),
            ("POST", None) => a.post(&url).header("Authorization", &h).send_empty(),
            ("POST", Some(b)) => a.post(&url).header("Authorization", &h).send_json(b),
            ("PUT", Some(b)) => a.put(&url).header("Authorization", &h).send_json(b),
            (m, _) => panic!("{m}"),
        };
        let mut r = r.unwrap_or_else(|e| panic!("{method} {path}: {e}\n{}", self.log_text()));
        let status = r.status().as_u16();
        let text = r.body_mut().read_to_string().unwrap();
        (status, serde_json::from_str(&text).unwrap_or(Value::Null))
    }

    /// `POST path` with `body` sent as it is (not JSON); the status and the JSON answer.
    fn post_raw(&self, path: &str, body: impl ureq::AsSendBody) -> (u16, Value) {
        let r = Self::agent()
            .post(format!("{}{path}", self.url))
            .header("Authorization", &format!("Bearer {}", self.token))
            .send(body);
        let mut r = r.unwrap_or_else(|e| panic!("POST {path}: {e}\n{}", self.log_text()));
        let status = r.status().as_u16();
        let text = r.body_mut().read_to_string().unwrap();
        (status, serde_json::from_str(&text).unwrap_or(Value::Null))
    }

    fn get(&self, path: &str) -> (u16, Value) {
        self.request("GET", path, Some(&self.token.clone()), None)
    }

    fn call(&self, method: &str, path: &str, body: Option<Value>) -> (u16, Value) {
        self.request(method, path, Some(&self.token.clone()), body)
    }

    /// `ignite ARGS` with this server's state directory and store; (ok, stdout, stderr).
    fn ignite(&self, args: &[&str], env: &[(&str, &str)]) -> (bool, String, String) {
        let out = Command::new(env!("CARGO_BIN_EXE_ignite"))
            .args(args)
            .env("IGNITE_STATE_DIR", self.state())
            .env("IGNITE_STORE", self.state().join("store"))
            .env_remove("IGNITE_SERVER")
            .env_remove("IGNITE_TOKEN")
            .envs(env.iter().copied())
            .output()
            .unwrap();
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    }

    /// A guest `name` (never started here: its kernel is no kernel).
    fn define_guest(&self, name: &str) {
        let args = ["create", name, "--mem", "64M", "--boot", "kernel=/bin/true"];
        self.ok(&[&["vm"], &args[..], &["--engine", "bundled"]].concat());
    }

    fn ok(&self, args: &[&str]) -> String {
        let (ok, out, err) = self.ignite(args, &[]);
        assert!(ok, "ignite {args:?}: {err}");
        out
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Asserts the `/api/v1` error shape with `code`; returns the message.
fn error(what: &str, got: (u16, Value), status: u16, code: &str) -> String {
    assert_eq!(got.0, status, "{what}: {}", got.1);
    assert_eq!(got.1["error"]["code"], code, "{what}: {}", got.1);
    let m = got.1["error"]["message"].as_str().unwrap_or_default();
    assert!(!m.is_empty(), "{what}: {}", got.1);
    m.to_string()
}

/// The lines of `GET /api/v1/events`, as they arrive.
fn events(s: &Server) -> mpsc::Receiver<String> {
    let (tx, rx) = mpsc::channel();
    let url = format!("{}/api/v1/events", s.url);
    let auth = format!("Bearer {}", s.token);
    let resp = ureq::Agent::config_builder()
        .build()
        .new_agent()
        .get(&url)
        .header("Authorization", &auth)
        .call()
        .unwrap();
    assert_eq!(resp.status(), 200);
    let ct = resp
        .headers()
        .get("content-type")
        .unwrap()
        .to_str()
        .unwrap()
        .to_string();
    assert!(ct.starts_with("text/event-stream"), "{ct}");
    std::thread::spawn(move || {
        let reader = std::io::BufReader::new(resp.into_body().into_reader());
        for line in reader.lines() {
            let Ok(line) = line else { return };
            if tx.send(line).is_err() {
                return;
            }
        }
    });
    rx
}

/// Reads `rx` until an event's data satisfies `want`; panics with what came after 30 s.
fn wait_event(
    s: &Server,
    rx: &mpsc::Receiver<String>,
    what: &str,
    want: impl Fn(&Value) -> bool,
) -> Value {
    let t = Instant::now();
    let mut seen = Vec::new();
    while t.elapsed() < Duration::from_secs(30) {
        let Ok(line) = rx.recv_timeout(Duration::from_millis(200)) else {
            continue;
        };
        seen.push(line.clone());
        if let Some(data) = line.strip_prefix("data: ") {
            let v: Value = serde_json::from_str(data).unwrap();
            if want(&v) {
                return v;
            }
        }
    }
    panic!(
        "no {what} event within 30 s; the stream said:\n{}\nthe server's log:\n{}",
        seen.join("\n"),
        s.log_text()
    );
}

/// Job `id` once it ended, polled; panics with what it showed after 60 s.
fn follow(s: &Server, id: u64) -> Value {
    let t = Instant::now();
    loop {
        let (code, j) = s.get(&format!("/api/v1/jobs/{id}"));
        assert_eq!(code, 200, "{j}");
        if j["state"] != "running" {
            return j;
        }
        assert!(
            t.elapsed() < Duration::from_secs(60),
            "job still running: {j}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// `POST path` with `body`, answered 202 with a job; the job once it ended.
fn run_job(s: &Server, path: &str, body: Option<Value>) -> Value {
    let (code, started) = s.call("POST", path, body);
    assert_eq!(code, 202, "POST {path}: {started}");
    follow(s, started["job"].as_u64().unwrap())
}

/// `POST path` with each case's body, refused with its status and code.
fn refusals(s: &Server, path: &str, cases: Vec<(&str, Value, u16, &str)>) {
    for (what, body, status, code) in cases {
        error(what, s.call("POST", path, Some(body)), status, code);
    }
}

/// A store with two snapshots of `golden` (one file changed, one added between them).
fn make_store(s: &Server) {
    let src = s.dir.path().join("src");
    std::fs::create_dir_all(src.join("etc")).unwrap();
    std::fs::write(src.join("etc/hostname"), "golden\n").unwrap();
    std::fs::write(src.join("data"), vec![7u8; 300_000]).unwrap();
    if !s.state().join("store").exists() {
        s.ok(&["archive", "init"]);
    }
    s.ok(&[
        "archive",
        "import",
        "--name",
        "golden",
        src.to_str().unwrap(),
    ]);
    std::fs::write(src.join("etc/hostname"), "golden2\n").unwrap();
    std::fs::write(src.join("new"), "new\n").unwrap();
    s.ok(&[
        "archive",
        "import",
        "--name",
        "golden",
        src.to_str().unwrap(),
    ]);
}

#[test]
fn the_management_api_end_to_end() {
    let s = Server::start();

    // Health, and the token it needs.
    let (code, h) = s.get("/api/v1/health");
    assert_eq!(code, 200, "{h}");
    assert_eq!(h["version"], env!("CARGO_PKG_VERSION"));
    assert_eq!(h["state_dir"], s.state().display().to_string());
    assert!(h["uptime_secs"].as_u64().is_some(), "{h}");
    let m = error(
        "no token",
        s.request("GET", "/api/v1/health", None, None),
        401,
        "unauthorized",
    );
    assert!(m.contains("no token") && m.contains("admin.token"), "{m}");
    let wrong = "0".repeat(64);
    let m = error(
        "wrong token",
        s.request("GET", "/api/v1/clients", Some(&wrong), None),
        401,
        "unauthorized",
    );
    assert!(m.contains("wrong token"), "{m}");
    // A path no route has is 404 for anyone, not 401.
    assert_eq!(s.request("GET", "/api/v1/nothing-here", None, None).0, 404);

    // The document is served to anyone, and is the checked-in one.
    let (code, doc) = s.request("GET", "/api/v1/openapi.json", None, None);
    assert_eq!(code, 200);
    let checked_in: Value = serde_json::from_str(
        &std::fs::read_to_string(
            Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs/openapi.json"),
        )
        .unwrap(),
    )
    .unwrap();
    assert_eq!(
        doc, checked_in,
        "the served OpenAPI document differs from docs/openapi.json; regenerate it with \
         `cargo run -p ignite -- generate-docs --openapi docs/openapi.json`"
    );
    // A path parameter is one the path names (a query struct left without
    // `#[into_params(parameter_in = Query)]` comes out as a required path parameter).
    for (path, ops) in doc["paths"].as_object().unwrap() {
        for (method, op) in ops.as_object().unwrap() {
            for p in op["parameters"].as_array().into_iter().flatten() {
                let name = p["name"].as_str().unwrap();
                assert!(
                    p["in"] != "path" || path.contains(&format!("{{{name}}}")),
                    "{method} {path}: `{name}` is not in the path; is it a query parameter?"
                );
            }
        }
    }
    assert!(doc["paths"]["/api/v1/clients/{client}/action"]["put"].is_object());

    let ev = events(&s);

    // Clients.
    let web1 = "52:54:00:aa:00:01";
    let (code, c) = s.call(
        "POST",
        "/api/v1/clients",
        Some(json!({"mac": "52-54-00-AA-00-01", "name": "web1", "action": "install web"})),
    );
    assert_eq!(code, 201, "{c}");
    assert_eq!(
        (c["mac"].as_str(), c["action"].as_str(), c["arg"].as_str()),
        (Some(web1), Some("install"), Some("web"))
    );
    assert_eq!(
        s.call(
            "POST",
            "/api/v1/clients",
            Some(json!({"mac": "52:54:00:aa:00:02", "name": "db1"}))
        )
        .0,
        201
    );
    error(
        "a bad MAC",
        s.call(
            "POST",
            "/api/v1/clients",
            Some(json!({"mac": "nonsense", "name": "x"})),
        ),
        422,
        "invalid",
    );
    let m = error(
        "an unknown action",
        s.call(
            "POST",
            "/api/v1/clients",
            Some(json!({"mac": "52:54:00:aa:00:03", "name": "x", "action": "reboot"})),
        ),
        422,
        "invalid",
    );
    assert!(m.contains("not a boot action"), "{m}");
    error(
        "a taken MAC",
        s.call(
            "POST",
            "/api/v1/clients",
            Some(json!({"mac": web1, "name": "other"})),
        ),
        409,
        "conflict",
    );
    error(
        "a taken name",
        s.call(
            "POST",
            "/api/v1/clients",
            Some(json!({"mac": "52:54:00:aa:00:09", "name": "web1"})),
        ),
        409,
        "conflict",
    );
    let (code, list) = s.get("/api/v1/clients");
    assert_eq!(code, 200);
    let names: Vec<&str> = list
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["db1", "web1"]);
    assert_eq!(list[1]["install"]["status"], "active", "{list}");
    let (code, d) = s.get("/api/v1/clients/web1");
    assert_eq!(code, 200);
    assert_eq!(d["client"]["mac"], web1);
    assert_eq!(d["install"]["profile"], "web");
    assert!(d["phases"].as_array().unwrap().is_empty());
    let (code, d) = s.get(&format!("/api/v1/clients/{web1}"));
    assert_eq!((code, d["client"]["name"].as_str()), (200, Some("web1")));
    error(
        "an unknown client",
        s.get("/api/v1/clients/nobody"),
        404,
        "not_found",
    );
    let (code, log) = s.get("/api/v1/clients/web1/log?after=0");
    assert_eq!(code, 200, "{log}");
    assert_eq!(log["lines"], json!([]));
    assert_eq!(
        (
            log["install"]["profile"].as_str(),
            log["install"]["status"].as_str()
        ),
        (Some("web"), Some("active"))
    );
    let (code, _) = s.get(&format!("/api/v1/clients/{}/log", "52:54:00:aa:00:77"));
    assert_eq!(code, 404, "an unregistered MAC without an install");
    error(
        "a client never installed",
        s.get("/api/v1/clients/db1/log"),
        404,
        "not_found",
    );

    // A boot action set through the API is an event on the stream.
    let (code, c) = s.call(
        "PUT",
        "/api/v1/clients/db1/action",
        Some(json!({"action": "recover db1@latest"})),
    );
    assert_eq!(
        (code, c["action"].as_str(), c["arg"].as_str()),
        (200, Some("recover"), Some("db1@latest")),
        "{c}"
    );
    wait_event(&s, &ev, "client db1 set to recover", |v| {
        v["type"] == "client" && v["name"] == "db1" && v["action"] == "recover db1@latest"
    });
    error(
        "an unknown action",
        s.call(
            "PUT",
            "/api/v1/clients/db1/action",
            Some(json!({"action": "reboot twice"})),
        ),
        422,
        "invalid",
    );
    error(
        "setting an unknown client",
        s.call(
            "PUT",
            "/api/v1/clients/nobody/action",
            Some(json!({"action": "local"})),
        ),
        404,
        "not_found",
    );
    assert_eq!(
        s.get("/api/v1/clients/db1").1["client"]["action"],
        "recover"
    );
    // A change from the local CLI is seen too.
    s.ok(&["client", "set", "web1", "local"]);
    wait_event(&s, &ev, "web1's change made by the local CLI", |v| {
        v["type"] == "client" && v["name"] == "web1" && v["action"] == "local"
    });

    // The boot log, leases and schedules (empty on a server no client booted from).
    assert_eq!(s.get("/api/v1/bootlog").0, 200);
    assert_eq!(
        s.get(&format!("/api/v1/bootlog?mac={web1}&limit=5")),
        (200, json!([]))
    );
    error(
        "a bad MAC filter",
        s.get("/api/v1/bootlog?mac=zz"),
        422,
        "invalid",
    );
    error(
        "a zero limit",
        s.get("/api/v1/bootlog?limit=0"),
        422,
        "invalid",
    );
    assert_eq!(s.get("/api/v1/leases"), (200, json!([])));
    assert_eq!(s.get("/api/v1/schedules"), (200, json!([])));

    // Archives: none yet, then a store with two snapshots.
    error("no store", s.get("/api/v1/archives"), 404, "not_found");
    make_store(&s);
    let (code, snaps) = s.get("/api/v1/archives?name=golden");
    assert_eq!(code, 200);
    let snaps = snaps.as_array().unwrap().clone();
    assert_eq!(snaps.len(), 2);
    let (first, second) = (
        snaps[0]["id"].as_str().unwrap(),
        snaps[1]["id"].as_str().unwrap(),
    );
    assert_eq!(s.get("/api/v1/archives?name=other"), (200, json!([])));
    let (code, one) = s.get("/api/v1/archives/golden");
    assert_eq!(
        (code, one["manifest"]["id"].as_str()),
        (200, Some(second)),
        "the latest: {one}"
    );
    assert!(one["entries"].is_null());
    let (_, one) = s.get(&format!("/api/v1/archives/{first}?entries=true"));
    assert!(
        one["entries"].as_array().is_some_and(|e| e.len() >= 3),
        "{one}"
    );
    error(
        "an unknown snapshot",
        s.get("/api/v1/archives/nothing"),
        404,
        "not_found",
    );
    let (code, diff) = s.get(&format!("/api/v1/archives/diff?from={first}&to={second}"));
    assert_eq!(code, 200, "{diff}");
    assert_eq!(diff["kind"], "tree");
    let changes = diff["changes"].to_string();
    assert!(
        changes.contains("etc/hostname") && changes.contains("\"new\""),
        "{diff}"
    );
    error(
        "a diff from nothing",
        s.get(&format!("/api/v1/archives/diff?from=nothing&to={second}")),
        404,
        "not_found",
    );
    let (code, st) = s.get("/api/v1/archives/stats");
    assert_eq!((code, st["snapshots"].as_u64()), (200, Some(2)), "{st}");

    // Verify as a job, followed to done, its progress on the event stream too.
    error(
        "a bad sample",
        s.call("POST", "/api/v1/archives/verify?sample=3", None),
        422,
        "invalid",
    );
    let (code, started) = s.call("POST", "/api/v1/archives/verify", None);
    assert_eq!(code, 202, "{started}");
    let id = started["job"].as_u64().unwrap();
    let job = follow(&s, id);
    assert_eq!(job["state"], "done", "{job}");
    assert_eq!(
        (job["done"].as_u64(), job["total"].as_u64()),
        (Some(1), Some(1))
    );
    assert_eq!(job["result"]["problems"], json!([]), "{job}");
    assert!(
        job["log"][0]
            .as_str()
            .unwrap()
            .starts_with("verifying store"),
        "{job}"
    );
    wait_event(&s, &ev, "the verify job done", |v| {
        v["type"] == "job" && v["id"] == id && v["state"] == "done"
    });
    assert!(s
        .get("/api/v1/jobs")
        .1
        .as_array()
        .unwrap()
        .iter()
        .any(|j| j["id"] == id));
    // An uploaded tar imported as a job: its bytes read are its progress.
    let tar = s.dir.path().join("up.tar");
    let st = Command::new("tar")
        .arg("-cf")
        .arg(&tar)
        .arg("-C")
        .arg(s.dir.path().join("src"))
        .arg(".")
        .status()
        .unwrap();
    assert!(st.success());
    let bytes = std::fs::read(&tar).unwrap();
    let upload = |name: &str, bytes: &[u8]| {
        s.post_raw(&format!("/api/v1/archives/import?name={name}"), bytes)
    };
    error(
        "a bad snapshot name",
        upload("bad@name", b""),
        422,
        "invalid",
    );
    let (code, started) = upload("uploaded", &bytes);
    assert_eq!(code, 202, "{started}");
    let job = follow(&s, started["job"].as_u64().unwrap());
    assert_eq!(job["state"], "done", "{job}");
    assert_eq!(job["done"], job["total"], "{job}");
    assert!(job["total"].as_u64().unwrap() >= 300_000, "{job}");
    assert_eq!(job["result"]["name"], "uploaded");
    let (_, snaps) = s.get("/api/v1/archives?name=uploaded");
    assert_eq!(snaps[0]["id"], job["result"]["id"], "{snaps}");
    let left = std::fs::read_dir(s.state().join("uploads"))
        .unwrap()
        .count();
    assert_eq!(left, 0, "the upload was not removed");

    error(
        "an unknown job",
        s.get("/api/v1/jobs/999"),
        404,
        "not_found",
    );
    error(
        "a job id that is no number",
        s.get("/api/v1/jobs/x"),
        404,
        "not_found",
    );

    // Guests: defined, not running.
    s.define_guest("g1");
    let (code, g) = s.get("/api/v1/guests");
    assert_eq!(
        (code, g[0]["name"].as_str(), g[0]["state"].as_str()),
        (200, Some("g1"), Some("defined")),
        "{g}"
    );
    assert_eq!(s.get("/api/v1/guests/g1").1["mem"], 64 << 20);
    error(
        "an unknown guest",
        s.get("/api/v1/guests/nope"),
        404,
        "not_found",
    );
    error(
        "starting an unknown guest",
        s.call("POST", "/api/v1/guests/nope/start", None),
        404,
        "not_found",
    );
    error(
        "stopping a guest not running",
        s.call("POST", "/api/v1/guests/g1/stop", None),
        409,
        "conflict",
    );
    error(
        "a stop waiting too long",
        s.call("POST", "/api/v1/guests/g1/stop?timeout=1000", None),
        422,
        "invalid",
    );

    // Removal last: the client goes, and says so on the stream.
    let (code, c) = s.call("DELETE", "/api/v1/clients/web1", None);
    assert_eq!((code, c["name"].as_str()), (200, Some("web1")));
    error(
        "removing it again",
        s.call("DELETE", "/api/v1/clients/web1", None),
        404,
        "not_found",
    );
    wait_event(&s, &ev, "web1 gone", |v| {
        v["type"] == "client" && v["name"] == "web1" && v["action"].is_null()
    });

    // The action for clients not in the registry: unset, set, refused when not an action.
    assert_eq!(
        s.get("/api/v1/clients/default"),
        (200, json!({"action": null}))
    );
    let (code, d) = s.call(
        "PUT",
        "/api/v1/clients/default",
        Some(json!({"action": "install web"})),
    );
    assert_eq!((code, d), (200, json!({"action": "install web"})));
    assert_eq!(s.ok(&["client", "default"]), "install web\n");
    error(
        "a default that is no action",
        s.call(
            "PUT",
            "/api/v1/clients/default",
            Some(json!({"action": "reboot"})),
        ),
        422,
        "invalid",
    );
    error(
        "no token",
        s.request(
            "PUT",
            "/api/v1/clients/default",
            None,
            Some(json!({"action": "local"})),
        ),
        401,
        "unauthorized",
    );
    assert_eq!(s.get("/api/v1/clients/default").1["action"], "install web");
}

#[test]
fn the_cli_prints_the_same_through_the_server_as_locally() {
    let s = Server::start();
    make_store(&s);
    s.ok(&[
        "client",
        "add",
        "52:54:00:bb:00:01",
        "web1",
        "install",
        "web",
    ]);
    s.ok(&["client", "add", "52:54:00:bb:00:02", "db1"]);
    s.define_guest("g1");
    let url = s.url.clone();
    let remote = [("IGNITE_SERVER", url.as_str())];
    for args in [
        vec!["client", "list"],
        vec!["client", "list", "--json"],
        vec!["client", "show", "web1"],
        vec!["client", "show", "52:54:00:bb:00:02", "--json"],
        vec!["archive", "list"],
        vec!["archive", "list", "--json", "--name", "golden"],
        vec!["archive", "show", "golden", "--entries"],
        vec!["archive", "stats"],
        vec!["archive", "stats", "--json"],
        vec!["netboot", "leases"],
        vec!["netboot", "leases", "--json"],
        vec!["vm", "list"],
        vec!["vm", "show", "g1"],
    ] {
        let local = s.ignite(&args, &[]);
        let via = s.ignite(&args, &remote);
        assert!(
            local.0 && via.0,
            "{args:?}: local {} / server {}",
            local.2,
            via.2
        );
        assert_eq!(
            via.1, local.1,
            "{args:?} through the server differs from local"
        );
        // Quiet on stderr when the server answered.
        assert_eq!(via.2, "", "{args:?}");
        assert!(!local.1.is_empty(), "{args:?}");
    }
    // A diff, with its count of changes on stderr.
    let first = s.get("/api/v1/archives?name=golden").1[0]["id"]
        .as_str()
        .unwrap()[..10]
        .to_string();
    for args in [
        vec!["archive", "diff", &first, "golden"],
        vec!["archive", "diff", &first, "golden@latest", "--json"],
    ] {
        let via = s.ignite(&args, &remote);
        assert!(via.0 && via.1.contains("etc/hostname"), "{args:?}: {via:?}");
        assert_eq!(via, s.ignite(&args, &[]), "{args:?}");
    }
    // A verify through the server is its job, its log the report.
    let (ok, out, err) = s.ignite(&["archive", "verify", "--sample", "50%"], &remote);
    assert!(
        ok && out.contains("verifying store") && out.contains("referenced chunks read"),
        "{out}{err}"
    );
    // An install's log (none written yet), and a client that never installed.
    for args in [["client", "log", "web1"], ["client", "log", "db1"]] {
        let local = s.ignite(&args, &[]);
        let via = s.ignite(&args, &remote);
        assert_eq!((via.0, &via.1), (local.0, &local.1), "{args:?}: {}", via.2);
    }
    let (ok, _, err) = s.ignite(&["client", "log", "db1"], &remote);
    assert!(
        !ok && err.contains("no install was ever scheduled"),
        "{err}"
    );
    // `--server` on the command line, changes through the API, errors from it.
    let out = s.ok(&["client", "--server", &url, "set", "db1", "capture"]);
    assert_eq!(out, "client db1 (52:54:00:bb:00:02): capture\n");
    assert_eq!(
        s.get("/api/v1/clients/db1").1["client"]["action"],
        "capture"
    );
    let (ok, _, err) = s.ignite(&["client", "set", "db1", "reboot"], &remote);
    assert!(!ok && err.contains("not a boot action"), "{err}");
    let (ok, _, err) = s.ignite(&["client", "show", "nobody"], &remote);
    assert!(!ok && err.contains("not registered"), "{err}");
    let out = s.ok(&["client", "remove", "db1", "--server", &url]);
    assert_eq!(out, "removed client db1 (52:54:00:bb:00:02)\n");
    assert_eq!(s.get("/api/v1/clients/db1").0, 404);
    // The default action: set and shown through the server, as locally.
    let (ok, out, err) = s.ignite(&["client", "default"], &remote);
    assert!(ok, "{err}");
    assert_eq!(out, s.ok(&["client", "default"]));
    assert_eq!(
        s.ignite(&["client", "default", "install", "web"], &remote)
            .1,
        "unknown clients: install web\n"
    );
    assert_eq!(s.ok(&["client", "default"]), "install web\n");
    let (ok, _, err) = s.ignite(&["client", "default", "reboot"], &remote);
    assert!(!ok && err.contains("not a boot action"), "{err}");
    let (ok, _, err) = s.ignite(&["vm", "stop", "g1"], &remote);
    assert!(!ok && err.contains("guest g1 is not running"), "{err}");
    // A wrong token is refused, and said so.
    let (ok, _, err) = s.ignite(&["client", "list", "--token", &"0".repeat(64)], &remote);
    assert!(!ok && err.contains("wrong token"), "{err}");

    // Only the commands that go through the API read IGNITE_SERVER: a local capture with
    // it set stays a capture of a local guest, not one over the network.
    let (ok, _, err) = s.ignite(&["recovery", "capture", "nosuchguest"], &remote);
    assert!(
        !ok && err.contains("guest nosuchguest is not defined"),
        "{err}"
    );
    // A server that does not answer: the local state, said on stderr.
    let gone = [("IGNITE_SERVER", "http://127.0.0.1:9")];
    let local = s.ignite(&["client", "list"], &[]);
    let (ok, out, err) = s.ignite(&["client", "list"], &gone);
    assert!(ok, "{err}");
    assert_eq!(out, local.1);
    assert!(
        err.contains("http://127.0.0.1:9 is unreachable") && err.contains("using the local state"),
        "{err}"
    );
}

/// Starting a running guest is a conflict; a bundled guest program started and stopped
/// through the API. Needs /dev/kvm.
#[test]
fn guests_start_and_stop_through_the_api() {
    if !ignite_e2e::require_all(&[("/dev/kvm (read-write)", ignite_e2e::have_kvm())]) {
        return;
    }
    let s = Server::start();
    let prog = s.dir.path().join("console.elf");
    std::fs::write(&prog, ignite_vmm::guest::program("console").unwrap()).unwrap();
    let boot = format!("kernel={},cmdline=expect=never", prog.display());
    s.ok(&[
        "vm", "create", "con1", "--mem", "64M", "--boot", &boot, "--engine", "bundled",
    ]);
    let (code, st) = s.call("POST", "/api/v1/guests/con1/start", None);
    assert_eq!(code, 200, "{st}\n{}", s.log_text());
    assert_eq!(st["engine"], "bundled");
    assert_eq!(s.get("/api/v1/guests/con1").1["state"], "running");
    let m = error(
        "starting it again",
        s.call("POST", "/api/v1/guests/con1/start", None),
        409,
        "conflict",
    );
    assert!(m.contains("already running"), "{m}");
    let m = error(
        "removing it while it runs",
        s.call("DELETE", "/api/v1/guests/con1", None),
        409,
        "conflict",
    );
    assert!(m.contains("is running"), "{m}");
    let pid = st["pid"].as_u64().unwrap();
    let (code, v) = s.call(
        "POST",
        "/api/v1/guests/con1/stop?force=true&timeout=20",
        None,
    );
    assert_eq!((code, v["state"].as_str()), (200, Some("stopped")), "{v}");
    // The supervisor, the server's child, was waited for: no zombie stays behind.
    let stat = format!("/proc/{pid}/stat");
    let t = Instant::now();
    while let Ok(st) = std::fs::read_to_string(&stat) {
        assert!(
            t.elapsed() < Duration::from_secs(20),
            "the supervisor {pid} was not reaped: {st}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Profiles of the server's profiles directory: listed, shown, checked when posted, rendered
/// for a client as `ignite profile render --json` renders them; the CLI's `profile check`
/// and `render` print the same through the server.
#[test]
fn profiles_through_the_api() {
    let s = Server::start();
    let dir = s.state().join("profiles");
    std::fs::create_dir_all(&dir).unwrap();
    let examples = Path::new(env!("CARGO_MANIFEST_DIR")).join("../profiles/examples");
    for p in ["base.toml", "web.toml"] {
        std::fs::copy(examples.join(p), dir.join(p)).unwrap();
    }
    let base = std::fs::read_to_string(dir.join("base.toml")).unwrap();
    let bad_line = base.lines().position(|l| l == "size = \"1G\"").unwrap() + 1;
    let broken = base.replace("size = \"1G\"", "size = \"1X\"");
    std::fs::write(dir.join("broken.toml"), &broken).unwrap();

    let (code, list) = s.get("/api/v1/profiles");
    assert_eq!(code, 200, "{list}");
    let seen: Vec<(&str, bool)> = list
        .as_array()
        .unwrap()
        .iter()
        .map(|p| (p["name"].as_str().unwrap(), p["ok"].as_bool().unwrap()))
        .collect();
    assert_eq!(seen, [("base", true), ("broken", false), ("web", true)]);
    assert_eq!(list[1]["errors"][0]["line"], bad_line, "{list}");
    let (code, web) = s.get("/api/v1/profiles/web");
    assert_eq!(code, 200, "{web}");
    assert_eq!(
        web["text"].as_str(),
        Some(
            std::fs::read_to_string(dir.join("web.toml"))
                .unwrap()
                .as_str()
        )
    );
    assert_eq!(
        (web["archive"].as_str(), web["partitions"].as_u64()),
        (Some("debian-12"), Some(5)),
        "{web}"
    );
    error(
        "an unknown profile",
        s.get("/api/v1/profiles/nope"),
        404,
        "not_found",
    );
    error(
        "a hidden file",
        s.get("/api/v1/profiles/.web"),
        422,
        "invalid",
    );
    error(
        "no token",
        s.request("GET", "/api/v1/profiles", None, None),
        401,
        "unauthorized",
    );

    // A posted check: the problems with their lines, or ok and the plan for a client.
    let post =
        |query: &str, text: &str| s.post_raw(&format!("/api/v1/profiles/check{query}"), text);
    let (code, c) = post("?file=mine.toml", &broken);
    assert_eq!(code, 200, "{c}");
    assert_eq!(c["ok"], false);
    let e = &c["errors"][0];
    assert_eq!(
        (e["file"].as_str(), e["line"].as_u64()),
        (Some("mine.toml"), Some(bad_line as u64)),
        "{c}"
    );
    assert!(e["text"].as_str().unwrap().contains("\"1X\""), "{c}");
    let mac = "52:54:00:12:34:56";
    let (code, c) = post(
        &format!("?mac={mac}&disk=/dev/vda:20G&hostname=w9"),
        "extends = \"web\"\n",
    );
    assert_eq!((code, c["ok"].as_bool()), (200, Some(true)), "{c}");
    assert_eq!(c["plan"]["hostname"], "web-123456", "{c}");
    let (code, c) = post("", "extends = \"web\"\n");
    assert_eq!((code, c["plan"].is_null()), (200, true), "{c}");
    error(
        "a mac without disks",
        post(&format!("?mac={mac}"), &base),
        422,
        "invalid",
    );
    error(
        "a bad disk",
        post(&format!("?mac={mac}&disk=vda"), &base),
        422,
        "invalid",
    );
    let m = error(
        "a disk too small",
        post(
            &format!("?mac={mac}&disk=/dev/vda:4G"),
            "extends = \"web\"\n",
        ),
        422,
        "invalid",
    );
    assert!(m.contains("no disk of the client matches"), "{m}");

    // Rendered by name: the plan the local CLI renders from the same file.
    let (code, plan) = s.get(&format!(
        "/api/v1/profiles/web/render?mac={mac}&disk=/dev/vda:20G"
    ));
    assert_eq!(code, 200, "{plan}");
    let web_file = dir.join("web.toml");
    let args = [
        "profile",
        "render",
        web_file.to_str().unwrap(),
        "--mac",
        mac,
        "--disk",
        "/dev/vda:20G",
        "--json",
    ];
    let local: Value = serde_json::from_str(&s.ok(&args)).unwrap();
    assert_eq!(plan, local);
    error(
        "rendering without a client",
        s.get("/api/v1/profiles/web/render"),
        422,
        "invalid",
    );
    let m = error(
        "rendering a broken profile",
        s.get(&format!(
            "/api/v1/profiles/broken/render?mac={mac}&disk=/dev/vda:20G"
        )),
        422,
        "invalid",
    );
    assert!(m.contains("\"1X\""), "{m}");
    error(
        "rendering an unknown profile",
        s.get(&format!(
            "/api/v1/profiles/nope/render?mac={mac}&disk=/dev/vda:20G"
        )),
        404,
        "not_found",
    );

    // The CLI prints the same through the server (web extends base: both are the server's).
    let remote = [("IGNITE_SERVER", s.url.as_str())];
    let broken_file = dir.join("broken.toml");
    for args in [
        vec!["profile", "check", web_file.to_str().unwrap()],
        vec![
            "profile",
            "check",
            broken_file.to_str().unwrap(),
            web_file.to_str().unwrap(),
        ],
        vec!["profile", "check", "/nonexistent/x.toml"],
        vec![
            "profile",
            "render",
            web_file.to_str().unwrap(),
            "--mac",
            mac,
            "--disk",
            "/dev/vda:20G",
            "--disk",
            "/dev/vdb:30G:SER1",
        ],
        vec![
            "profile",
            "render",
            web_file.to_str().unwrap(),
            "--mac",
            mac,
            "--disk",
            "/dev/vda:4G",
        ],
    ] {
        let local = s.ignite(&args, &[]);
        let via = s.ignite(&args, &remote);
        assert_eq!(
            via.0, local.0,
            "{args:?}: local {} / server {}",
            local.2, via.2
        );
        assert_eq!(
            via.1, local.1,
            "{args:?} through the server differs from local"
        );
        assert_eq!(
            via.2.replace(&s.url, ""),
            local.2,
            "{args:?}: stderr through the server differs"
        );
        assert!(!(local.1.is_empty() && local.2.is_empty()), "{args:?}");
    }
}

/// Guests defined and removed through the API with `ignite vm create`'s checks; media of
/// the library put into and taken out of their drives; the CLI the same through the server.
#[test]
fn guests_and_media_through_the_api() {
    let s = Server::start();
    let guest = |name: &str| {
        json!({"name": name, "mem": "64M", "boot": "kernel=/bin/true", "engine": "bundled",
               "cdroms": [""], "tapes": [""]})
    };
    let (code, d) = s.call("POST", "/api/v1/guests", Some(guest("g2")));
    assert_eq!(code, 201, "{d}");
    assert_eq!(
        (d["name"].as_str(), d["mem"].as_u64()),
        (Some("g2"), Some(64 << 20))
    );
    assert_eq!(s.get("/api/v1/guests/g2").1["state"], "defined");
    let m = error(
        "the same name again",
        s.call("POST", "/api/v1/guests", Some(guest("g2"))),
        409,
        "conflict",
    );
    assert!(m.contains("already defined"), "{m}");
    let boot = "kernel=/bin/true";
    refusals(
        &s,
        "/api/v1/guests",
        vec![
            (
                "a bad name",
                json!({"name": "bad name", "boot": boot}),
                422,
                "invalid",
            ),
            (
                "too little memory",
                json!({"name": "g9", "mem": "1K", "boot": boot}),
                422,
                "invalid",
            ),
            ("boot from no disk", json!({"name": "g9"}), 422, "invalid"),
            (
                "an unknown ISO",
                json!({"name": "g9", "boot": boot, "cdroms": ["nosuch"]}),
                422,
                "invalid",
            ),
        ],
    );
    // A body that is not the definition: refused in the same error shape.
    let m = error(
        "an unknown field",
        s.call(
            "POST",
            "/api/v1/guests",
            Some(json!({"name": "g9", "bogus": 1})),
        ),
        422,
        "invalid",
    );
    assert!(m.contains("bogus"), "{m}");
    assert!(
        !s.state().join("guests/g9").exists(),
        "a refused guest left files"
    );
    error(
        "no token",
        s.request("POST", "/api/v1/guests", None, Some(guest("g8"))),
        401,
        "unauthorized",
    );

    // The CLI defines through the server, and is refused as locally.
    let remote = [("IGNITE_SERVER", s.url.as_str())];
    let args = [
        "vm",
        "create",
        "g3",
        "--mem",
        "64M",
        "--boot",
        "kernel=/bin/true",
        "--engine",
        "bundled",
        "--tape",
    ];
    let (ok, out, err) = s.ignite(&args, &remote);
    assert!(ok, "{err}");
    assert_eq!(out, "guest g3 defined\n");
    assert_eq!(s.get("/api/v1/guests/g3").1["name"], "g3");
    let local = s.ignite(&args, &[]);
    let via = s.ignite(&args, &remote);
    assert!(!local.0 && !via.0);
    assert_eq!(via.2, local.2, "the refusal through the server differs");

    // Relative paths are the caller's, not the server's (here through the local socket).
    std::fs::write(s.dir.path().join("img.raw"), vec![0u8; 1 << 20]).unwrap();
    std::fs::write(s.dir.path().join("k.elf"), b"kernel").unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_ignite"))
        .args(["vm", "create", "g4", "--mem", "64M", "--engine", "bundled"])
        .args([
            "--disk",
            "img.raw",
            "--boot",
            "kernel=k.elf,initrd=img.raw,cmdline=a=b,c",
        ])
        .env("IGNITE_STATE_DIR", s.state())
        .env_remove("IGNITE_SERVER")
        .current_dir(s.dir.path())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let g4 = s.get("/api/v1/guests/g4").1;
    let here = std::fs::canonicalize(s.dir.path()).unwrap();
    assert_eq!(
        g4["disks"][0]["path"].as_str(),
        here.join("img.raw").to_str(),
        "{g4}"
    );
    assert!(
        s.log_text().contains("API: defined guest g4"),
        "not through the server"
    );
    let boot = g4["boot"].to_string();
    assert!(
        boot.contains(here.join("k.elf").to_str().unwrap()) && boot.contains("a=b,c"),
        "{g4}"
    );
    assert_eq!(s.call("DELETE", "/api/v1/guests/g4", None).0, 200);

    // Media: an ISO shared, a tape owned by one guest at a time.
    let iso = s.dir.path().join("tools.iso");
    std::fs::write(&iso, vec![0u8; 4096]).unwrap();
    s.ok(&["media", "add", iso.to_str().unwrap()]);
    let tape = s.dir.path().join("t1.tap");
    s.ok(&["media", "add", tape.to_str().unwrap()]);
    let (code, r) = s.call(
        "POST",
        "/api/v1/guests/g2/media",
        Some(json!({"media": "tools"})),
    );
    assert_eq!(code, 200, "{r}");
    let cd = r["drive"].as_str().unwrap().to_string();
    assert_eq!(
        (r["guest"].as_str(), r["live"].as_bool()),
        (Some("g2"), Some(false)),
        "{r}"
    );
    assert!(r["taken_from"].is_null(), "{r}");
    error(
        "an unknown medium",
        s.call(
            "POST",
            "/api/v1/guests/g2/media",
            Some(json!({"media": "nosuch"})),
        ),
        404,
        "not_found",
    );
    error(
        "an unknown guest",
        s.call(
            "POST",
            "/api/v1/guests/nope/media",
            Some(json!({"media": "tools"})),
        ),
        404,
        "not_found",
    );
    error(
        "an unknown drive",
        s.call(
            "POST",
            "/api/v1/guests/g2/media",
            Some(json!({"media": "tools", "drive": "zz"})),
        ),
        422,
        "invalid",
    );
    let (code, r) = s.call(
        "POST",
        "/api/v1/guests/g2/media",
        Some(json!({"media": "t1"})),
    );
    assert_eq!(code, 200, "{r}");
    let m = error(
        "a tape another guest holds",
        s.call(
            "POST",
            "/api/v1/guests/g3/media",
            Some(json!({"media": "t1"})),
        ),
        409,
        "conflict",
    );
    assert!(m.contains("guest g2"), "{m}");
    let (code, r) = s.call(
        "POST",
        "/api/v1/guests/g3/media",
        Some(json!({"media": "t1", "take": true})),
    );
    assert_eq!(code, 200, "{r}");
    assert_eq!(r["taken_from"]["guest"], "g2", "{r}");
    let (code, r) = s.call("DELETE", &format!("/api/v1/guests/g2/media/{cd}"), None);
    assert_eq!((code, r["media"].as_str()), (200, Some("tools")), "{r}");
    let (code, r) = s.call("DELETE", &format!("/api/v1/guests/g2/media/{cd}"), None);
    assert_eq!((code, r["media"].is_null()), (200, true), "{r}");
    error(
        "ejecting a drive it lacks",
        s.call("DELETE", "/api/v1/guests/g2/media/zz", None),
        422,
        "invalid",
    );

    // The CLI inserts and ejects through the server, printing what it prints locally (each
    // change made twice, once each way, from the same starting point).
    let insert = ["vm", "media", "insert", "g2", "tools"];
    let eject = ["vm", "media", "eject", "g2", "--drive", &cd];
    for (args, undo) in [(&insert[..], &eject[..]), (&eject[..], &insert[..])] {
        let via = s.ignite(args, &remote);
        s.ok(undo);
        let local = s.ignite(args, &[]);
        assert!(via.0, "{args:?}: {}", via.2);
        assert_eq!(
            (via.0, &via.1, &via.2),
            (local.0, &local.1, &local.2),
            "{args:?}"
        );
    }
    let (ok, _, err) = s.ignite(&["vm", "media", "insert", "g2", "nosuch"], &remote);
    assert!(!ok && err.contains("not in the library"), "{err}");

    // Removal: the guest and its directory go.
    let (code, r) = s.call("DELETE", "/api/v1/guests/g2", None);
    assert_eq!((code, r["name"].as_str()), (200, Some("g2")), "{r}");
    assert!(!s.state().join("guests/g2").exists());
    error(
        "removing it again",
        s.call("DELETE", "/api/v1/guests/g2", None),
        404,
        "not_found",
    );
    let (ok, out, err) = s.ignite(&["vm", "remove", "g3"], &remote);
    assert!(ok, "{err}");
    assert_eq!(out, "guest g3 removed\n");
    assert_eq!(s.get("/api/v1/guests"), (200, json!([])));
}

/// Captures, restores and clones of a (stopped) guest and a prune of the store, each a job
/// followed to its end; every refusal before a job starts.
#[test]
fn recovery_and_prune_as_jobs() {
    let s = Server::start();
    s.ok(&[
        "vm", "create", "gr", "--mem", "64M", "--disk", "8M", "--engine", "bundled",
    ]);
    // Something on the disk to find again after the restore.
    let disk = s.state().join("guests/gr/disk0.img");
    let mut content = std::fs::read(&disk).unwrap();
    content[1 << 20..(1 << 20) + 11].copy_from_slice(b"hello world");
    std::fs::write(&disk, &content).unwrap();

    error(
        "capturing an unknown guest",
        s.call("POST", "/api/v1/recovery/nope/capture", None),
        404,
        "not_found",
    );
    let job = run_job(&s, "/api/v1/recovery/gr/capture", None);
    assert_eq!(
        (job["state"].as_str(), job["kind"].as_str()),
        (Some("done"), Some("recovery capture")),
        "{job}"
    );
    let snapshot = job["result"]["snapshot"].as_str().unwrap().to_string();
    assert_eq!(job["result"]["record"]["name"], "gr", "{job}");

    // Onto an image file: the same bytes.
    let out = s.dir.path().join("restored.img");
    let restore = "/api/v1/recovery/gr/restore";
    let job = run_job(
        &s,
        restore,
        Some(json!({"snapshot": &snapshot[..12], "to": [out]})),
    );
    assert_eq!(job["state"], "done", "{job}");
    assert_eq!(
        std::fs::read(&out).unwrap(),
        content,
        "the restored image differs"
    );
    assert_eq!(job["done"], job["total"], "{job}");
    refusals(
        &s,
        restore,
        vec![
            ("no target", json!({}), 422, "invalid"),
            (
                "a relative path",
                json!({"to": ["restored.img"]}),
                422,
                "invalid",
            ),
            (
                "two targets for one disk",
                json!({"to": ["/tmp/a.img", "/tmp/b.img"]}),
                422,
                "invalid",
            ),
            (
                "both targets",
                json!({"to": [out], "as_guest": "x"}),
                422,
                "invalid",
            ),
            ("a taken name", json!({"as_guest": "gr"}), 409, "conflict"),
            ("a bad name", json!({"as_guest": "-x"}), 422, "invalid"),
            (
                "an unknown capture",
                json!({"snapshot": "ffffffff", "as_guest": "x"}),
                404,
                "not_found",
            ),
            ("an unknown field", json!({"as": "x"}), 422, "invalid"),
        ],
    );
    refusals(
        &s,
        "/api/v1/recovery/nope/restore",
        vec![(
            "restoring what was never captured",
            json!({"as_guest": "x"}),
            404,
            "not_found",
        )],
    );

    // As a new guest: defined with the recorded definition.
    let job = run_job(&s, restore, Some(json!({"as_guest": "gr2"})));
    assert_eq!(job["state"], "done", "{job}");
    assert_eq!(job["result"]["definition"]["name"], "gr2", "{job}");
    assert_eq!(s.get("/api/v1/guests/gr2").1["mem"], 64 << 20);

    // A clone: refused names first, then the job (an empty disk has no system whose
    // identity it could change: the job fails and says why, as the CLI does, and leaves no
    // guest).
    let clone = "/api/v1/recovery/gr/clone";
    refusals(
        &s,
        clone,
        vec![
            (
                "a bad hostname",
                json!({"as": "gr3", "hostname": "bad host"}),
                422,
                "invalid",
            ),
            (
                "a bad MAC",
                json!({"as": "gr3", "mac": ["zz"]}),
                422,
                "invalid",
            ),
            ("a taken name", json!({"as": "gr2"}), 409, "conflict"),
        ],
    );
    let job = run_job(&s, clone, Some(json!({"as": "gr3"})));
    let local = s.ignite(&["recovery", "clone", "gr", "--as", "gr4"], &[]);
    match job["state"].as_str() {
        Some("done") => {
            assert!(
                local.0,
                "the job cloned where the CLI could not: {}",
                local.2
            );
            assert_eq!(s.get("/api/v1/guests/gr3").0, 200);
        }
        _ => {
            assert!(!local.0, "the CLI cloned where the job failed: {job}");
            let why = job["error"].as_str().unwrap().replace("gr3", "gr4");
            assert!(local.2.contains(&why), "job: {why}\nCLI: {}", local.2);
            assert_eq!(s.get("/api/v1/guests/gr3").0, 404);
        }
    }

    // The CLI through the API (`--server`): the same jobs, their logs printed.
    let remote = [("IGNITE_SERVER", s.url.as_str())];
    let (ok, out, err) = s.ignite(&["recovery", "capture", "gr", "--server", &s.url], &[]);
    assert!(ok && out.contains("captured gr as gr@"), "{out}{err}");
    let first = &snapshot[..12];
    for args in [
        vec!["recovery", "list"],
        vec!["recovery", "list", "gr", "--json"],
        vec!["recovery", "show", "gr"],
        vec!["recovery", "show", "gr@latest", "--json"],
        vec!["recovery", "show", &format!("gr@{first}")],
        vec!["recovery", "diff", "gr"],
        vec!["recovery", "diff", "gr", first, "--json"],
        vec!["recovery", "check", "gr"],
        vec!["recovery", "check", "gr", "--json"],
    ] {
        let via = s.ignite(&args, &remote);
        assert!(via.0, "{args:?}: {}", via.2);
        assert_eq!(
            via,
            s.ignite(&args, &[]),
            "{args:?} through the server and locally"
        );
    }
    // The record as an install profile, through the server as locally: a capture of a disk
    // with a GPT and an ext4 partition renders with the archive named; a block capture with
    // none named is refused alike (the server's reason is the last line of the local error).
    if ignite_e2e::require_tools(&["sgdisk", "mkfs.ext4"]) {
        s.ok(&[
            "vm", "create", "gp", "--mem", "64M", "--disk", "8M", "--engine", "bundled",
        ]);
        let disk = s.state().join("guests/gp/disk0.img");
        ignite_e2e::run(
            Command::new("sgdisk")
                .args(["-n", "1:2048:0", "-t", "1:8300"])
                .arg(&disk),
        );
        ignite_e2e::run(
            Command::new("mkfs.ext4")
                .args(["-q", "-F", "-E", "offset=1048576,nodiscard"])
                .arg(&disk)
                .arg("6M"),
        );
        s.ok(&["recovery", "capture", "gp"]);
        let args = ["recovery", "show", "gp", "--profile", "--archive", "golden"];
        let via = s.ignite(&args, &remote);
        assert!(
            via.0 && via.1.contains("archive = \"golden\"") && via.1.contains("fs = \"ext4\""),
            "{via:?}"
        );
        assert_eq!(
            via,
            s.ignite(&args, &[]),
            "{args:?} through the server and locally"
        );
        let args = ["recovery", "show", "gp", "--profile"];
        let (via, here) = (s.ignite(&args, &remote), s.ignite(&args, &[]));
        assert!(!via.0 && !here.0 && via.1.is_empty(), "{via:?}");
        let why = here.2.trim().lines().last().unwrap();
        let why = why.trim_start_matches("ignite: ");
        assert!(
            why.contains("is a block capture") && via.2.contains(why),
            "through the server {}, locally {}",
            via.2,
            here.2
        );
    }
    let (ok, _, err) = s.ignite(&["recovery", "show", "nope", "--profile"], &remote);
    assert!(!ok && err.contains("nope"), "{err}");
    let (ok, _, err) = s.ignite(&["recovery", "show", "nope"], &remote);
    assert!(!ok && err.contains("nope"), "{err}");
    let (ok, _, err) = s.ignite(&["recovery", "check", "nope"], &remote);
    assert!(!ok && err.contains("nope is not defined"), "{err}");
    let (ok, _, err) = s.ignite(&["recovery", "diff", "nope"], &remote);
    assert!(!ok && err.contains("fewer than 2 captures"), "{err}");
    let out2 = s.dir.path().join("restored2.img");
    let (ok, out, err) = s.ignite(
        &[
            "recovery",
            "restore",
            "gr@latest",
            "--to",
            out2.to_str().unwrap(),
        ],
        &remote,
    );
    assert!(ok && out.contains("restored gr@"), "{out}{err}");
    assert!(
        std::fs::read(&out2).unwrap() == content,
        "the restore through the CLI differs"
    );
    let (ok, _, err) = s.ignite(&["recovery", "restore", "gr", "--to", "rel.img"], &remote);
    assert!(!ok && err.contains("absolute"), "{err}");
    let (ok, out, err) = s.ignite(&["recovery", "restore", "gr", "--as-guest", "gr5"], &remote);
    assert!(ok && out.contains("as guest gr5"), "{out}{err}");
    assert_eq!(s.get("/api/v1/guests/gr5").1["mem"], 64 << 20);
    let (ok, _, err) = s.ignite(&["recovery", "clone", "gr", "--as", "gr6"], &remote);
    assert_eq!(
        ok,
        s.get("/api/v1/guests/gr3").0 == 200,
        "the CLI's clone through the API went otherwise than the API's: {err}"
    );
    // Schedules: set, listed and removed through the server as locally.
    let set = [
        "recovery",
        "schedule",
        "gr",
        "--at",
        "03:30",
        "--every",
        "12h",
        "--keep-last",
        "3",
    ];
    let (ok, via, err) = s.ignite(&set, &remote);
    assert!(
        ok && via.contains("captured at 03:30 UTC every 12h, keeping last 3"),
        "{via}{err}"
    );
    let put = s.get("/api/v1/schedules").1;
    assert_eq!(
        (put[0]["name"].as_str(), put[0]["at_minute"].as_u64()),
        (Some("gr"), Some(210)),
        "{put}"
    );
    for args in [
        vec!["recovery", "schedule", "list"],
        vec!["recovery", "schedule", "list", "--json"],
    ] {
        let via = s.ignite(&args, &remote);
        assert!(via.0, "{args:?}: {}", via.2);
        assert_eq!(via, s.ignite(&args, &[]), "{args:?}");
    }
    let (ok, _, err) = s.ignite(&["recovery", "schedule", "nope"], &remote);
    assert!(!ok && err.contains("nope is not one"), "{err}");
    let (ok, _, err) = s.ignite(&["recovery", "schedule", "gr", "--at", "25:00"], &remote);
    assert!(!ok && err.contains("not HH:MM"), "{err}");
    let (ok, out, err) = s.ignite(&["recovery", "schedule", "remove", "gr"], &remote);
    assert!(ok && out == "schedule of gr removed\n", "{out}{err}");
    assert_eq!(s.get("/api/v1/schedules"), (200, json!([])));
    let (ok, _, err) = s.ignite(&["recovery", "schedule", "remove", "gr"], &remote);
    assert!(!ok && err.contains("no capture schedule"), "{err}");
    // A prune says the same through the server as locally; then it forgets.
    let dry = ["recovery", "prune", "gr", "--keep-last", "1", "--dry-run"];
    let (ok, via, err) = s.ignite(&dry, &remote);
    assert!(ok, "{err}");
    assert_eq!(via, s.ok(&dry));
    assert!(via.contains("would remove gr@"), "{via}");
    let (ok, _, err) = s.ignite(&["recovery", "prune", "gr", "--keep-last", "1"], &remote);
    assert!(ok, "{err}");
    let captures: Value =
        serde_json::from_str(&s.ok(&["archive", "list", "--json", "--name", "gr"])).unwrap();
    assert_eq!(captures.as_array().unwrap().len(), 1, "{captures}");
    let (ok, _, err) = s.ignite(&["recovery", "prune", "gr"], &remote);
    assert!(!ok && err.contains("no keep_* rule"), "{err}");

    // Prune: refused without a rule, a dry run changes nothing, then it forgets.
    make_store(&s);
    let prune = "/api/v1/archives/prune";
    refusals(
        &s,
        prune,
        vec![
            ("no rule", json!({"dry_run": true}), 422, "invalid"),
            (
                "a bad duration",
                json!({"keep_within": "soon"}),
                422,
                "invalid",
            ),
        ],
    );
    let count = || {
        s.get("/api/v1/archives?name=golden")
            .1
            .as_array()
            .unwrap()
            .len()
    };
    let gone = |j: &Value| {
        j["result"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|d| d["keep"] == false && d["name"].as_str().unwrap().starts_with("golden "))
            .count()
    };
    let job = run_job(&s, prune, Some(json!({"keep_last": 1, "dry_run": true})));
    assert_eq!(
        (job["state"].as_str(), gone(&job), count()),
        (Some("done"), 1, 2),
        "{job}"
    );
    assert!(
        job["log"].to_string().contains("would remove golden"),
        "{job}"
    );
    let dry = ["archive", "prune", "--keep-last", "1", "--dry-run"];
    let via = s.ignite(&dry, &remote);
    assert!(via.0, "{}", via.2);
    assert_eq!(
        via,
        s.ignite(&dry, &[]),
        "archive prune through the server and locally"
    );
    let job = run_job(&s, prune, Some(json!({"keep_last": 1})));
    assert_eq!(
        (job["state"].as_str(), gone(&job), count()),
        (Some("done"), 1, 1),
        "{job}"
    );
    // gc through the server frees what the prunes left unneeded; a local gc then finds
    // nothing more.
    let (ok, out, err) = s.ignite(&["archive", "gc"], &remote);
    assert!(ok && out.starts_with("gc: "), "{out}{err}");
    assert!(!out.contains("; 0 chunks removed"), "{out}");
    let (ok, out, err) = s.ignite(&["archive", "gc", "--json"], &[]);
    assert!(ok, "{err}");
    let r: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(
        (r["chunks_removed"].as_u64(), r["packs_deleted"].as_u64()),
        (Some(0), Some(0)),
        "{r}"
    );
}

/// The local socket: 0660 in the state directory's group; the CLI uses it without
/// `--server` and without a token; root passes, another uid that may connect gets 403 in
/// the JSON error shape; a server stopped by SIGTERM removes it.
#[test]
fn the_local_socket_admits_root_and_the_owner_only() {
    use std::os::unix::fs::{MetadataExt, PermissionsExt};
    if !ignite_e2e::require_all(&[("root (to run the CLI as uid 65534)", ignite_e2e::is_root())])
        || !ignite_e2e::require_tools(&["setpriv"])
    {
        return;
    }
    let mut s = Server::start_with(|state| {
        std::os::unix::fs::chown(state, None, Some(65534)).unwrap();
    });
    // uid 65534 may reach the socket: through the directories (the server keeps its state
    // directory 0700; an admin opened it to the group), and by its group.
    let state = s.state();
    std::fs::set_permissions(&state, std::fs::Permissions::from_mode(0o750)).unwrap();
    std::fs::set_permissions(s.dir.path(), std::fs::Permissions::from_mode(0o711)).unwrap();
    let sock = state.join("api.sock");
    let meta = std::fs::metadata(&sock).unwrap();
    assert_eq!(
        (meta.permissions().mode() & 0o777, meta.gid()),
        (0o660, 65534),
        "the socket's mode and group"
    );

    // No --server, no token: the CLI's work is done by the server (its log says so).
    let out = s.ok(&["client", "add", "52:54:00:cc:00:01", "sock1"]);
    assert_eq!(out, "added client sock1 (52:54:00:cc:00:01): local\n");
    let t = Instant::now();
    while !s.log_text().contains("API: added client sock1") {
        assert!(
            t.elapsed() < Duration::from_secs(30),
            "the add did not go through the server:\n{}",
            s.log_text()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(s.get("/api/v1/clients/sock1").0, 200);

    // Another uid: refused by the server, in words.
    let out = Command::new("setpriv")
        .args(["--reuid", "65534", "--regid", "65534", "--clear-groups"])
        .arg(env!("CARGO_BIN_EXE_ignite"))
        .args(["client", "list"])
        .env("IGNITE_STATE_DIR", s.state())
        .env_remove("IGNITE_SERVER")
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "uid 65534 listed the clients: {err}");
    // The message alone: the CLI read it from the JSON error shape.
    assert!(
        err.contains("ignite: local API: uid 65534 is neither root nor the owner"),
        "{err}"
    );

    // A graceful stop takes the socket away; the CLI then works on the local state.
    let pid = s.child.id().to_string();
    assert!(Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .unwrap()
        .success());
    let t = Instant::now();
    while s.child.try_wait().unwrap().is_none() {
        assert!(
            t.elapsed() < Duration::from_secs(30),
            "the server did not stop"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(!sock.exists(), "the socket outlived the server");
    let (ok, out, err) = s.ignite(&["client", "list"], &[]);
    assert!(ok && out.contains("sock1") && err.is_empty(), "{out}{err}");
}

/// An upload over `[limits] api_upload_bytes` is refused with 413 (whether it says its size
/// or not) and leaves nothing behind; `ignite archive import --server` uploads a tar, follows
/// the job and prints the snapshot as a local import does.
#[test]
fn uploads_are_capped_and_the_cli_imports_through_the_server() {
    let s = Server::start_configured("[limits]\napi_upload_bytes = 100000\n", |_| {});
    make_store(&s);
    let tar = |name: &str, files: &[(&str, usize)]| {
        let src = s.dir.path().join(format!("{name}-src"));
        std::fs::create_dir_all(&src).unwrap();
        for (f, size) in files {
            std::fs::write(src.join(f), vec![b'x'; *size]).unwrap();
        }
        let out = s.dir.path().join(format!("{name}.tar"));
        let st = Command::new("tar")
            .arg("-cf")
            .arg(&out)
            .arg("-C")
            .arg(&src)
            .arg(".")
            .status()
            .unwrap();
        assert!(st.success());
        out
    };
    // Far over the cap: a server that stops reading it closes the connection under the sender.
    let big = tar("big", &[("a", 4_000_000)]);
    let small = tar("small", &[("b", 1000)]);
    let path = "/api/v1/archives/import?name=big";
    let bytes = std::fs::read(&big).unwrap();
    let m = error(
        "a sized upload too large",
        s.post_raw(path, &bytes[..]),
        413,
        "too_large",
    );
    assert!(m.contains("at most 100000"), "{m}");
    let mut reader = std::io::Cursor::new(bytes.clone());
    let streamed = s.post_raw(path, ureq::SendBody::from_reader(&mut reader));
    error("a streamed upload too large", streamed, 413, "too_large");
    let left = std::fs::read_dir(s.state().join("uploads")).map_or(0, |d| d.count());
    assert_eq!(left, 0, "a refused upload was kept");

    let remote = [("IGNITE_SERVER", s.url.as_str())];
    let (ok, out, err) = s.ignite(
        &[
            "archive",
            "import",
            "--name",
            "small",
            small.to_str().unwrap(),
        ],
        &remote,
    );
    assert!(ok, "{err}");
    let (_, snaps) = s.get("/api/v1/archives?name=small");
    let id = snaps[0]["id"].as_str().unwrap();
    assert!(
        out.starts_with(&format!("snapshot {id} small (tree): ")) && out.contains(" in 2 entries;"),
        "{out}"
    );
    // Locally the same line, but for the id and what it measured.
    let local = s.ok(&[
        "archive",
        "import",
        "--name",
        "small2",
        small.to_str().unwrap(),
    ]);
    assert!(
        local.contains(" small2 (tree): ") && local.contains(" in 2 entries;"),
        "{local}"
    );
    let (ok, _, err) = s.ignite(
        &["archive", "import", "--name", "big", big.to_str().unwrap()],
        &remote,
    );
    assert!(!ok && err.contains("at most 100000"), "{err}");
    let dir = s.dir.path().join("small-src");
    let (ok, _, err) = s.ignite(
        &["archive", "import", "--name", "d", dir.to_str().unwrap()],
        &remote,
    );
    assert!(!ok && err.contains("import a tar file"), "{err}");
}
