//! A real browser for the console's page tests: Debian's headless Chromium driven over WebDriver
//! (`Browser`, through `chromedriver` from Debian's `chromium-driver`, plain JSON over HTTP with
//! reqwest) to click buttons and fill forms as an operator does, signing in through the login
//! form (the console takes no token from its URL).

use std::net::TcpStream;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use base64::Engine as _;
use serde_json::{json, Value};

use super::free_port;

/// Chromium's flags for a quiet, sandbox-less headless run.
const FLAGS: [&str; 8] = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
];

/// The W3C WebDriver key of an element reference.
const ELEMENT: &str = "element-6066-11e4-a52e-4f735466cecf";

/// A headless Chromium session driven through its own `chromedriver` process (killed on drop).
pub struct Browser {
    driver: Child,
    base: String,
    http: reqwest::Client,
    _profile: tempfile::TempDir,
}

impl Browser {
    /// Starts `chromedriver` on a free port and opens a session with a 1280×900 window.
    pub async fn start() -> Self {
        let port = free_port();
        let driver = Command::new("chromedriver")
            .arg(format!("--port={port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("chromedriver is not installed ({e}); `scripts/services up` installs Debian's chromium-driver"));
        let deadline = Instant::now() + Duration::from_secs(10);
        while TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(Instant::now() < deadline, "chromedriver did not listen");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let profile = tempfile::tempdir().unwrap();
        let mut args: Vec<String> = FLAGS.iter().map(|s| s.to_string()).collect();
        args.push("--window-size=1280,900".into());
        args.push(format!("--user-data-dir={}", profile.path().display()));
        let http = reqwest::Client::new();
        let root = format!("http://127.0.0.1:{port}");
        let caps = json!({"capabilities": {"alwaysMatch": {"browserName": "chrome",
            "goog:chromeOptions": {"binary": "/usr/bin/chromium", "args": args}}}});
        let r: Value = http
            .post(format!("{root}/session"))
            .json(&caps)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        let id = r["value"]["sessionId"]
            .as_str()
            .unwrap_or_else(|| panic!("no WebDriver session: {r}"))
            .to_string();
        Self {
            driver,
            base: format!("{root}/session/{id}"),
            http,
            _profile: profile,
        }
    }

    async fn call(&self, method: reqwest::Method, path: &str, body: Option<Value>) -> Value {
        let mut req = self.http.request(method, format!("{}{path}", self.base));
        if let Some(b) = body {
            req = req.json(&b);
        }
        let v: Value = req.send().await.unwrap().json().await.unwrap();
        v["value"].clone()
    }

    /// Opens `url` (waits for the load event, not for the page's fetches).
    pub async fn goto(&self, url: &str) {
        let v = self
            .call(reqwest::Method::POST, "/url", Some(json!({ "url": url })))
            .await;
        assert!(v.is_null(), "navigation failed: {v}");
    }

    /// Reloads the page (the tab's sessionStorage, and so the sign-in, survive).
    pub async fn refresh(&self) {
        let v = self
            .call(reqwest::Method::POST, "/refresh", Some(json!({})))
            .await;
        assert!(v.is_null(), "reload failed: {v}");
    }

    /// Signs in as an operator does: opens the console at `http`, types `token` into the login
    /// form and submits it, then waits for the first answer of the API (the MQTT state).
    pub async fn login(&self, http: &str, token: &str) {
        self.goto(&format!("{http}/")).await;
        self.fill("#token", token).await;
        self.click("#loginform button[type=submit]").await;
        self.wait_text("#conn", "MQTT").await;
    }

    /// Sizes the window so that the viewport (what a screenshot shows) is `width`×`height`.
    pub async fn viewport(&self, width: i64, height: i64) {
        let (mut w, mut h) = (width, height);
        for _ in 0..2 {
            self.call(
                reqwest::Method::POST,
                "/window/rect",
                Some(json!({ "width": w, "height": h })),
            )
            .await;
            let inner = self
                .script("return [window.innerWidth, window.innerHeight]")
                .await;
            let (iw, ih) = (inner[0].as_i64().unwrap(), inner[1].as_i64().unwrap());
            if (iw, ih) == (width, height) {
                return;
            }
            // The window's frame: add it once.
            (w, h) = (w + width - iw, h + height - ih);
        }
        panic!("the viewport is not {width}×{height}");
    }

    /// The element matching `css`, waiting up to 20 s for it to appear.
    pub async fn find(&self, css: &str) -> String {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let v = self
                .call(
                    reqwest::Method::POST,
                    "/element",
                    Some(json!({"using": "css selector", "value": css})),
                )
                .await;
            if let Some(id) = v[ELEMENT].as_str() {
                return id.to_string();
            }
            assert!(
                Instant::now() < deadline,
                "no element {css}:\n{}",
                self.source().await
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Clicks the element matching `css`. A page that re-renders itself (the devices list, every
    /// 2 s) may replace the element between finding and clicking it: it is then found again.
    pub async fn click(&self, css: &str) {
        for _ in 0..5 {
            let el = self.find(css).await;
            let v = self
                .call(
                    reqwest::Method::POST,
                    &format!("/element/{el}/click"),
                    Some(json!({})),
                )
                .await;
            if v.is_null() {
                return;
            }
            assert_eq!(
                v["error"], "stale element reference",
                "click on {css} failed: {v}"
            );
        }
        panic!("{css} was replaced five times before a click reached it");
    }

    /// Replaces the text of the input matching `css`.
    pub async fn fill(&self, css: &str, text: &str) {
        let el = self.find(css).await;
        self.call(
            reqwest::Method::POST,
            &format!("/element/{el}/clear"),
            Some(json!({})),
        )
        .await;
        let v = self
            .call(
                reqwest::Method::POST,
                &format!("/element/{el}/value"),
                Some(json!({ "text": text })),
            )
            .await;
        assert!(v.is_null(), "typing into {css} failed: {v}");
    }

    /// The rendered text of the element matching `css`.
    pub async fn text(&self, css: &str) -> String {
        let el = self.find(css).await;
        let v = self
            .call(reqwest::Method::GET, &format!("/element/{el}/text"), None)
            .await;
        v.as_str().unwrap_or_default().to_string()
    }

    /// Waits up to 20 s until the element matching `css` holds `needle` in its text; returns
    /// the text.
    pub async fn wait_text(&self, css: &str, needle: &str) -> String {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let t = self.text(css).await;
            if t.contains(needle) {
                return t;
            }
            assert!(
                Instant::now() < deadline,
                "{css} never showed {needle:?}; it shows {t:?}"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Runs a script in the page and returns its value.
    pub async fn script(&self, js: &str) -> Value {
        self.call(
            reqwest::Method::POST,
            "/execute/sync",
            Some(json!({"script": js, "args": []})),
        )
        .await
    }

    /// How many elements match `css` now.
    pub async fn count(&self, css: &str) -> i64 {
        self.script(&format!(
            "return document.querySelectorAll({}).length",
            serde_json::to_string(css).unwrap()
        ))
        .await
        .as_i64()
        .unwrap()
    }

    /// Waits up to 20 s until exactly `n` elements match `css`.
    pub async fn wait_count(&self, css: &str, n: i64) {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let c = self.count(css).await;
            if c == n {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "{c} elements match {css}, not {n}:\n{}",
                self.source().await
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// The page's current DOM as HTML.
    pub async fn source(&self) -> String {
        self.call(reqwest::Method::GET, "/source", None)
            .await
            .as_str()
            .unwrap_or_default()
            .to_string()
    }

    /// Saves a PNG of the window to `path`.
    pub async fn screenshot(&self, path: &Path) {
        let v = self.call(reqwest::Method::GET, "/screenshot", None).await;
        let png = base64::engine::general_purpose::STANDARD
            .decode(v.as_str().expect("a base64 screenshot"))
            .unwrap();
        assert!(
            png.starts_with(b"\x89PNG") && png.len() > 10_000,
            "a screenshot"
        );
        std::fs::write(path, png).unwrap();
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        // Ends the session (and its Chromium), then the driver; best effort.
        let _ = std::process::Command::new("curl")
            .args(["-s", "-X", "DELETE", &self.base])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
        let _ = self.driver.kill();
        let _ = self.driver.wait();
    }
}
