//! A headless Chromium driven through chromedriver's WebDriver protocol (W3C: JSON over
//! HTTP), for the web console's tests; and what those tests do with the console (log in,
//! watch an install's progress bar, set a boot action).
//!
//! chromedriver runs inside a network namespace, so the browser it starts reaches the
//! server there; the test talks to chromedriver through sockets opened in that namespace
//! ([`crate::lab::in_netns`]). Each browser gets a new empty profile and none of the
//! background traffic (this machine's network is closed).

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::lab::{in_netns, Lab};

/// chromedriver's port inside the namespace (each test has namespaces of its own).
const DRIVER_PORT: u16 = 9515;
/// The key W3C WebDriver names an element by.
const ELEMENT: &str = "element-6066-11e4-a52e-4f735466cecf";

/// Whether a browser test can run here: Debian's chromium and chromium-driver.
pub fn prerequisites() -> Vec<&'static str> {
    vec!["chromium", "chromedriver"]
}

/// The browser binary itself: Debian's `/usr/bin/chromium` is a shell wrapper.
fn chromium() -> PathBuf {
    let real = Path::new("/usr/lib/chromium/chromium");
    if real.exists() {
        real.to_path_buf()
    } else {
        crate::which("chromium").expect("chromium")
    }
}

pub struct Browser {
    ns: String,
    session: String,
    driver: Option<Child>,
    driver_log: PathBuf,
    _profile: tempfile::TempDir,
    /// Where [`Browser::screenshot`] writes (`target/screenshots`).
    pub shots: PathBuf,
}

impl Browser {
    /// chromedriver in namespace `ns` and a new headless Chromium session.
    pub fn start(ns: &str) -> Browser {
        let profile = tempfile::tempdir().unwrap();
        let driver_log = profile.path().join("chromedriver.log");
        let driver = Lab::cmd(ns, crate::which("chromedriver").expect("chromedriver"))
            .arg(format!("--port={DRIVER_PORT}"))
            .arg(format!("--log-path={}", driver_log.display()))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start chromedriver");
        let mut b = Browser {
            ns: ns.to_string(),
            session: String::new(),
            driver: Some(driver),
            driver_log,
            shots: target_dir().join("screenshots"),
            _profile: profile,
        };
        b.wait_for("chromedriver to be ready", Duration::from_secs(30), |b| {
            b.call("GET", "/status", None)
                .ok()
                .filter(|v| v["ready"] == true)
        });
        let user_data = b._profile.path().join("profile");
        let args = [
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--disable-dev-shm-usage",
            "--window-size=1280,860",
        ]
        .iter()
        .map(|a| a.to_string())
        .chain([format!("--user-data-dir={}", user_data.display())])
        .collect::<Vec<_>>();
        let caps = json!({"capabilities": {"alwaysMatch": {
            "browserName": "chrome",
            "goog:chromeOptions": {"binary": chromium(), "args": args},
            "goog:loggingPrefs": {"browser": "ALL"},
        }}});
        let v = b
            .call("POST", "/session", Some(caps))
            .unwrap_or_else(|e| panic!("no browser session: {e}\n{}", b.driver_log_tail()));
        b.session = v["sessionId"].as_str().unwrap().to_string();
        b
    }

    fn driver_log_tail(&self) -> String {
        let text = std::fs::read_to_string(&self.driver_log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(30)..].join("\n")
    }

    /// One WebDriver request: its `value`, or the driver's error.
    fn call(&self, method: &str, path: &str, body: Option<Value>) -> Result<Value, String> {
        let ns = self.ns.clone();
        let mut s = in_netns(&ns, || {
            TcpStream::connect(("127.0.0.1", DRIVER_PORT)).map_err(|e| e.to_string())
        })
        .join()
        .unwrap()?;
        s.set_read_timeout(Some(Duration::from_secs(120))).unwrap();
        let body = body.map(|b| b.to_string()).unwrap_or_default();
        let head = format!(
            "{method} {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n\
             Content-Type: application/json\r\nContent-Length: {}\r\n\r\n",
            body.len()
        );
        s.write_all(head.as_bytes())
            .and_then(|_| s.write_all(body.as_bytes()))
            .map_err(|e| e.to_string())?;
        let body = read_answer(&mut s).map_err(|e| format!("{method} {path}: {e}"))?;
        let v: Value =
            serde_json::from_str(&body).map_err(|e| format!("{method} {path}: {e}: {body}"))?;
        match v["value"].get("error") {
            Some(err) => Err(format!(
                "{method} {path}: {err}: {}",
                v["value"]["message"].as_str().unwrap_or("")
            )),
            None => Ok(v["value"].clone()),
        }
    }

    /// A request of this session; panics with the driver's error.
    fn session_call(&self, method: &str, path: &str, body: Option<Value>) -> Value {
        let p = format!("/session/{}{path}", self.session);
        self.call(method, &p, body)
            .unwrap_or_else(|e| panic!("{e}\n--- chromedriver log:\n{}", self.driver_log_tail()))
    }

    pub fn goto(&self, url: &str) {
        self.session_call("POST", "/url", Some(json!({ "url": url })));
    }

    /// The element `css` selects (the first); panics when there is none.
    fn element(&self, css: &str) -> String {
        let v = self.session_call(
            "POST",
            "/element",
            Some(json!({"using": "css selector", "value": css})),
        );
        match v[ELEMENT].as_str() {
            Some(e) => e.to_string(),
            None => panic!("no element {css}: {v}"),
        }
    }

    /// Clicks the element `css` selects. A page that redraws a table (the console does
    /// every few seconds) can replace the element between finding and clicking it: then
    /// it is found again.
    pub fn click(&self, css: &str) {
        for _ in 0..5 {
            let e = self.element(css);
            let p = format!("/session/{}/element/{e}/click", self.session);
            match self.call("POST", &p, Some(json!({}))) {
                Err(err) if err.contains("stale element reference") => continue,
                Err(err) => panic!("click {css}: {err}\n{}", self.driver_log_tail()),
                Ok(_) => return,
            }
        }
        panic!("click {css}: the element was replaced five times in a row");
    }

    /// Types `text` into the field `css` selects (after what it holds).
    pub fn type_into(&self, css: &str, text: &str) {
        let e = self.element(css);
        self.session_call(
            "POST",
            &format!("/element/{e}/value"),
            Some(json!({ "text": text })),
        );
    }

    /// The text of the element `css` selects, as shown.
    pub fn text(&self, css: &str) -> String {
        let e = self.element(css);
        let v = self.session_call("GET", &format!("/element/{e}/text"), None);
        v.as_str().unwrap_or_default().to_string()
    }

    /// Runs `script` (a function body; `arguments` holds `args`) in the page; what it returns.
    pub fn script(&self, script: &str, args: Value) -> Value {
        self.session_call(
            "POST",
            "/execute/sync",
            Some(json!({"script": script, "args": args})),
        )
    }

    /// A PNG of the window in `self.shots/NAME.png`; its path.
    pub fn screenshot(&self, name: &str) -> PathBuf {
        let v = self.session_call("GET", "/screenshot", None);
        let png = base64_decode(v.as_str().unwrap());
        std::fs::create_dir_all(&self.shots).unwrap();
        let path = self.shots.join(format!("{name}.png"));
        std::fs::write(&path, png).unwrap();
        path
    }

    /// The browser's console messages since the last call: `(level, message)`.
    pub fn console_log(&self) -> Vec<(String, String)> {
        let v = self.session_call("POST", "/se/log", Some(json!({"type": "browser"})));
        v.as_array()
            .map(|a| {
                a.iter()
                    .map(|e| {
                        (
                            e["level"].as_str().unwrap_or("").to_string(),
                            e["message"].as_str().unwrap_or("").to_string(),
                        )
                    })
                    .collect()
            })
            .unwrap_or_default()
    }

    /// Polls `f` every 200 ms until it gives a value; panics after `limit`, naming `what`
    /// and showing the page's status line.
    pub fn wait_for<T>(
        &self,
        what: &str,
        limit: Duration,
        mut f: impl FnMut(&Browser) -> Option<T>,
    ) -> T {
        let t = Instant::now();
        loop {
            if let Some(v) = f(self) {
                return v;
            }
            if t.elapsed() > limit {
                let status = if self.session.is_empty() {
                    String::new()
                } else {
                    self.script(
                        "return document.getElementById('status').textContent",
                        json!([]),
                    )
                    .to_string()
                };
                panic!(
                    "waited {limit:?} for {what}; the page's status line: {status}\n--- chromedriver log:\n{}",
                    self.driver_log_tail()
                );
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        if !self.session.is_empty() {
            // Closes Chromium (and its helper processes).
            let _ = self.call("DELETE", &format!("/session/{}", self.session), None);
        }
        if let Some(mut d) = self.driver.take() {
            let _ = d.kill();
            let _ = d.wait();
        }
    }
}

/// The target directory this test binary was built in: the topmost one up that cargo
/// marked with its `CACHEDIR.TAG` (`target/`, not `target/<triple>/`).
fn target_dir() -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    let found = exe
        .ancestors()
        .filter(|d| d.join("CACHEDIR.TAG").exists())
        .last();
    found.unwrap_or_else(|| exe.parent().unwrap()).to_path_buf()
}

/// The body of the HTTP/1.1 answer on `s` (chromedriver keeps connections open: the body
/// ends where its length or its last chunk says).
fn read_answer(s: &mut TcpStream) -> Result<String, String> {
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        s.read_exact(&mut byte)
            .map_err(|e| format!("{e} after {:?}", String::from_utf8_lossy(&head)))?;
        head.push(byte[0]);
    }
    let head = String::from_utf8_lossy(&head).to_ascii_lowercase();
    let header = |name: &str| {
        head.lines()
            .find_map(|l| l.strip_prefix(name).map(|v| v.trim().to_string()))
    };
    let mut body = Vec::new();
    if header("transfer-encoding:").is_some_and(|v| v == "chunked") {
        loop {
            let mut size = Vec::new();
            while !size.ends_with(b"\r\n") {
                s.read_exact(&mut byte).map_err(|e| e.to_string())?;
                size.push(byte[0]);
            }
            let size = String::from_utf8_lossy(&size);
            let n = usize::from_str_radix(size.trim(), 16).map_err(|e| format!("{size:?}: {e}"))?;
            let mut chunk = vec![0u8; n + 2];
            s.read_exact(&mut chunk).map_err(|e| e.to_string())?;
            if n == 0 {
                break;
            }
            body.extend_from_slice(&chunk[..n]);
        }
    } else {
        let n: usize = header("content-length:")
            .and_then(|v| v.parse().ok())
            .ok_or_else(|| format!("no length in {head:?}"))?;
        body.resize(n, 0);
        s.read_exact(&mut body).map_err(|e| e.to_string())?;
    }
    String::from_utf8(body).map_err(|e| e.to_string())
}

fn base64_decode(s: &str) -> Vec<u8> {
    let val = |c: u8| match c {
        b'A'..=b'Z' => c - b'A',
        b'a'..=b'z' => c - b'a' + 26,
        b'0'..=b'9' => c - b'0' + 52,
        b'+' => 62,
        _ => 63,
    };
    let clean: Vec<u8> = s
        .bytes()
        .filter(|c| c.is_ascii_alphanumeric() || *c == b'+' || *c == b'/')
        .collect();
    let mut out = Vec::with_capacity(clean.len() * 3 / 4);
    for quad in clean.chunks(4) {
        let n = quad
            .iter()
            .enumerate()
            .fold(0u32, |n, (i, &c)| n | (val(c) as u32) << (18 - 6 * i));
        out.extend(&n.to_be_bytes()[1..quad.len()]);
    }
    out
}

// ---- the web console ----

/// Opens the console at `server` (`http://IP:PORT`) and logs in with `token`; waits until
/// the page shows the clients and follows the server's events.
pub fn log_in(b: &Browser, server: &str, token: &str) {
    b.goto(&format!("{server}/"));
    b.type_into("#token", token);
    b.click("#login-form button");
    b.wait_for(
        "the console to log in and follow events",
        Duration::from_secs(30),
        |b| {
            let v = b.script(
                "return !document.getElementById('clients').hidden && \
             document.getElementById('server').dataset.live === 'yes'",
                json!([]),
            );
            (v == true).then_some(())
        },
    );
}

/// Client `mac`'s row as the console shows it: `(install text, progress value, boot action)`;
/// None while the row is not there.
pub fn client_row(b: &Browser, mac: &str) -> Option<(String, f64, String)> {
    let v = b.script(
        "const tr = document.querySelector(`#clients-rows tr[data-mac=\"${arguments[0]}\"]`); \
         if (!tr) return null; \
         return [tr.querySelector('.install').textContent, tr.querySelector('progress').value, \
                 tr.querySelector('.boot-action').textContent];",
        json!([mac]),
    );
    let a = v.as_array()?;
    Some((
        a[0].as_str()?.to_string(),
        a[1].as_f64()?,
        a[2].as_str()?.to_string(),
    ))
}

/// Watches client `mac`'s row in the clients view until its install shows `done` (at most
/// `limit`); every distinct (install text, progress) the page showed, in order. A
/// screenshot `clients-installing` once the bar is a third of the way. Panics when the
/// install fails or `abort` says to stop (`abort` returns why).
pub fn watch_install(
    b: &Browser,
    mac: &str,
    limit: Duration,
    mut abort: impl FnMut() -> Option<String>,
) -> Vec<(String, f64)> {
    let mut seen: Vec<(String, f64)> = Vec::new();
    let mut shot = false;
    let t = Instant::now();
    loop {
        if let Some((text, value, _)) = client_row(b, mac) {
            if seen.last() != Some(&(text.clone(), value)) {
                seen.push((text.clone(), value));
            }
            if !shot && text.starts_with("extracting") && value > 0.33 {
                b.screenshot("clients-installing");
                shot = true;
            }
            if text == "done" {
                return seen;
            }
            assert!(
                !text.starts_with("failed"),
                "the console shows {text}; saw {seen:?}"
            );
        }
        if let Some(why) = abort() {
            panic!("{why}; the console showed {seen:?}");
        }
        assert!(
            t.elapsed() < limit,
            "no install done in the console after {limit:?}; saw {seen:?}"
        );
        std::thread::sleep(Duration::from_millis(250));
    }
}

/// Sets client `mac`'s boot action in its row's form (`kind` and its argument) and waits
/// until the row shows it.
pub fn set_action(b: &Browser, mac: &str, kind: &str, arg: &str) {
    let row = format!("#clients-rows tr[data-mac=\"{mac}\"]");
    b.script(
        "document.querySelector(arguments[0] + ' select.kind').value = arguments[1];",
        json!([row, kind]),
    );
    b.type_into(&format!("{row} input.arg"), arg);
    b.click(&format!("{row} form.action button"));
    let want = format!("{kind} {arg}").trim().to_string();
    b.wait_for(
        &format!("{mac}'s row to show {want}"),
        Duration::from_secs(20),
        |b| client_row(b, mac).filter(|r| r.2 == want).map(|_| ()),
    );
}

/// Errors the page logged to the browser console (script errors, blocked requests,
/// policy violations).
pub fn page_errors(b: &Browser) -> Vec<String> {
    b.console_log()
        .into_iter()
        .filter(|(level, _)| level == "SEVERE")
        .map(|(_, m)| m)
        .collect()
}
