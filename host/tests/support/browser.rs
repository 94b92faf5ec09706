//! A headless Chromium driven over WebDriver (W3C) by a minimal client on reqwest: Debian's
//! `chromium` and `chromedriver` (package `chromium-driver`), which `scripts/test.sh` installs.
//! Nothing is downloaded.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use serde_json::{Value, json};

use crate::support::{free_port, until};

/// The key under which WebDriver returns an element reference.
const ELEMENT_KEY: &str = "element-6066-11e4-a52e-4f735466cecf";
/// A laptop screen.
pub const WINDOW: (u32, u32) = (1440, 900);

/// A chromedriver process with one browser session; both end on [`Browser::close`] or drop.
pub struct Browser {
    driver: Child,
    base: String,
    session: String,
    http: reqwest::Client,
}

fn find(program: &str, env: &str) -> PathBuf {
    if let Ok(path) = std::env::var(env) {
        return PathBuf::from(path);
    }
    let found = std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|dir| dir.join(program))
            .find(|p| p.is_file())
    });
    found.unwrap_or_else(|| {
        panic!(
            "`{program}` was not found: the dashboard tests drive a headless Chromium. Run \
             ./scripts/test.sh (it installs them) or `apt-get install chromium chromium-driver`, \
             or set {env}"
        )
    })
}

impl Browser {
    /// Start chromedriver on a free loopback port and open a headless Chromium session.
    pub async fn start() -> Browser {
        let driver_exe = find("chromedriver", "ANODE_CHROMEDRIVER");
        let chromium = find("chromium", "ANODE_CHROMIUM");
        let port = free_port();
        let driver = Command::new(&driver_exe)
            .arg(format!("--port={port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot run {}: {e}", driver_exe.display()));
        let base = format!("http://127.0.0.1:{port}");
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(60))
            .build()
            .unwrap();
        let mut browser = Browser {
            driver,
            base,
            session: String::new(),
            http,
        };
        let status_url = format!("{}/status", browser.base);
        let http = browser.http.clone();
        until("chromedriver to be ready", Duration::from_secs(30), || {
            let (http, url) = (http.clone(), status_url.clone());
            async move {
                let status: Value = http
                    .get(&url)
                    .send()
                    .await
                    .map_err(|e| e.to_string())?
                    .json()
                    .await
                    .map_err(|e| e.to_string())?;
                if status["value"]["ready"] == true {
                    Ok(())
                } else {
                    Err(status.to_string())
                }
            }
        })
        .await;
        let (w, h) = WINDOW;
        let capabilities = json!({"capabilities": {"alwaysMatch": {
            "browserName": "chrome",
            "goog:chromeOptions": {
                "binary": chromium,
                "args": ["--headless=new", "--no-sandbox", "--disable-gpu",
                         "--disable-dev-shm-usage", "--no-first-run",
                         format!("--window-size={w},{h}")],
            },
        }}});
        let created = browser.command("POST", "session", Some(capabilities)).await;
        browser.session = created["sessionId"]
            .as_str()
            .unwrap_or_else(|| panic!("chromedriver did not open a session: {created}"))
            .to_owned();
        browser
    }

    /// One WebDriver command; its `value`. A WebDriver error fails the test with its message.
    async fn command(&self, method: &str, path: &str, body: Option<Value>) -> Value {
        let url = format!("{}/{path}", self.base);
        let request = match method {
            "GET" => self.http.get(&url),
            "DELETE" => self.http.delete(&url),
            _ => self.http.post(&url).json(&body.unwrap_or(json!({}))),
        };
        let response = request
            .send()
            .await
            .unwrap_or_else(|e| panic!("WebDriver {method} {path}: {e}"));
        let status = response.status();
        let body: Value = response
            .json()
            .await
            .unwrap_or_else(|e| panic!("WebDriver {method} {path}: not JSON: {e}"));
        assert!(
            status.is_success(),
            "WebDriver {method} {path} answered {status}: {}",
            body["value"]["message"]
        );
        body["value"].clone()
    }

    fn session_path(&self, rest: &str) -> String {
        format!("session/{}/{rest}", self.session)
    }

    /// Load a page (returns once its `load` event fired).
    pub async fn goto(&self, url: &str) {
        self.command(
            "POST",
            &self.session_path("url"),
            Some(json!({ "url": url })),
        )
        .await;
    }

    /// Run `script` (a function body: `return …`) in the page.
    pub async fn eval(&self, script: &str) -> Value {
        self.command(
            "POST",
            &self.session_path("execute/sync"),
            Some(json!({ "script": script, "args": [] })),
        )
        .await
    }

    async fn element(&self, css: &str) -> String {
        let found = self
            .command(
                "POST",
                &self.session_path("element"),
                Some(json!({ "using": "css selector", "value": css })),
            )
            .await;
        found[ELEMENT_KEY]
            .as_str()
            .unwrap_or_else(|| panic!("no element `{css}`: {found}"))
            .to_owned()
    }

    /// Click the element `css` selects, as a user would.
    pub async fn click(&self, css: &str) {
        let id = self.element(css).await;
        self.command(
            "POST",
            &self.session_path(&format!("element/{id}/click")),
            None,
        )
        .await;
    }

    /// Type `text` into the element `css` selects.
    pub async fn type_into(&self, css: &str, text: &str) {
        let id = self.element(css).await;
        self.command(
            "POST",
            &self.session_path(&format!("element/{id}/value")),
            Some(json!({ "text": text })),
        )
        .await;
    }

    /// Empty the input `css` selects.
    pub async fn clear(&self, css: &str) {
        let id = self.element(css).await;
        self.command(
            "POST",
            &self.session_path(&format!("element/{id}/clear")),
            None,
        )
        .await;
    }

    /// Resize the window.
    pub async fn resize(&self, width: u32, height: u32) {
        self.command(
            "POST",
            &self.session_path("window/rect"),
            Some(json!({ "width": width, "height": height })),
        )
        .await;
    }

    /// Save what the window shows as a PNG.
    pub async fn screenshot(&self, path: &Path) {
        let encoded = self
            .command("GET", &self.session_path("screenshot"), None)
            .await;
        let png = base64_decode(encoded.as_str().expect("a base64 string"));
        assert!(png.starts_with(b"\x89PNG"), "the screenshot is not a PNG");
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).unwrap();
        }
        std::fs::write(path, png).unwrap_or_else(|e| panic!("write {}: {e}", path.display()));
    }

    /// End the session and chromedriver.
    pub async fn close(mut self) {
        let path = format!("session/{}", self.session);
        let _ = self
            .http
            .delete(format!("{}/{path}", self.base))
            .send()
            .await;
        self.session.clear();
        let _ = self.driver.kill();
        let _ = self.driver.wait();
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        // A failed test still takes its browser down: chromedriver ends Chromium with it.
        let _ = self.driver.kill();
        let _ = self.driver.wait();
    }
}

/// Where tests leave files for people to look at: `target/test-artifacts/`.
pub fn artifacts_dir() -> PathBuf {
    // The test binary lives in target/<profile>/deps/.
    let exe = std::env::current_exe().expect("the test binary's path");
    exe.ancestors()
        .nth(3)
        .expect("target/<profile>/deps/<test>")
        .join("test-artifacts")
}

/// Standard base64 (WebDriver screenshots), padding optional.
fn base64_decode(text: &str) -> Vec<u8> {
    let value = |c: u8| -> u32 {
        match c {
            b'A'..=b'Z' => u32::from(c - b'A'),
            b'a'..=b'z' => u32::from(c - b'a') + 26,
            b'0'..=b'9' => u32::from(c - b'0') + 52,
            b'+' => 62,
            b'/' => 63,
            _ => panic!("not base64: byte {c}"),
        }
    };
    let bytes: Vec<u8> = text
        .bytes()
        .filter(|c| !c.is_ascii_whitespace() && *c != b'=')
        .collect();
    let mut out = Vec::with_capacity(bytes.len() * 3 / 4);
    for chunk in bytes.chunks(4) {
        let n = chunk
            .iter()
            .enumerate()
            .fold(0u32, |n, (i, &c)| n | value(c) << (18 - 6 * i));
        let produced = chunk.len() * 6 / 8;
        out.extend_from_slice(&n.to_be_bytes()[1..1 + produced]);
    }
    out
}

#[test]
fn base64_decodes() {
    assert_eq!(base64_decode("aGVsbG8="), b"hello");
    assert_eq!(base64_decode("aGVsbG8h"), b"hello!");
    assert_eq!(base64_decode("aA=="), b"h");
}
