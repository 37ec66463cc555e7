//! The browser side of the browser tests: a chromedriver child process (in its own process
//! group, so the browsers it starts end with it) and `Browser`, one chromium session with its
//! own profile, with the few page actions the tests need (find, type, click, run a script,
//! wait for a condition, read the chat, take a screenshot).
//!
//! Environment: `ACTORHUB_CHROMEDRIVER_LOG=path` makes chromedriver write a verbose log there,
//! with the pages' console messages (CSP violations, script errors).

use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use chaos::cluster::free_loopback_ports;
use fantoccini::wd::Capabilities;
use fantoccini::{Client, ClientBuilder, Locator};
use hyper_util::client::legacy::connect::HttpConnector;
use serde_json::{Value, json};
use tempfile::TempDir;

/// How long the page may take to show what a step waits for.
pub const WAIT: Duration = Duration::from_secs(20);
pub const POLL: Duration = Duration::from_millis(50);
/// How long a started chromedriver may take to say it is ready (a loaded 2-core machine).
const DRIVER_WAIT: Duration = Duration::from_secs(60);
/// Ports tried before giving up on starting chromedriver.
const START_ATTEMPTS: usize = 3;
/// Times an action is retried on an element the page replaced meanwhile.
pub const STALE_RETRIES_MAX: usize = 5;
pub const CHROMIUM: &str = "/usr/bin/chromium";
pub const CHROMEDRIVER: &str = "chromedriver";
/// Exactly these, plus a fresh `--user-data-dir` per browser (the machine has no network).
pub const CHROMIUM_ARGS: [&str; 8] = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-quic",
];
/// If set, chromedriver writes a verbose log (with the pages' console) to this path.
pub const CHROMEDRIVER_LOG_ENV: &str = "ACTORHUB_CHROMEDRIVER_LOG";
pub const DESKTOP: (u32, u32) = (1280, 800);
pub const PHONE: (u32, u32) = (390, 844);
/// A chromedriver child process on a free loopback port, in its own process group so that the
/// browsers it starts end with it.
pub struct Chromedriver {
    child: Child,
    url: String,
}

impl Chromedriver {
    /// Starts chromedriver on a free port and waits until it says it is ready. The port is
    /// free when picked but another test's process can bind it first; chromedriver then exits,
    /// and a new port is tried.
    pub async fn start() -> Self {
        assert!(
            Path::new(CHROMIUM).exists(),
            "{CHROMIUM} is missing: install chromium and chromium-driver (.ci/install-deps does)"
        );
        let mut exits = Vec::new();
        for _ in 0..START_ATTEMPTS {
            match Self::start_once().await {
                Ok(driver) => return driver,
                Err(exit) => exits.push(exit),
            }
        }
        panic!("chromedriver exited before it was ready, {START_ATTEMPTS} times: {exits:?}");
    }

    /// One start on one port: the driver once ready, or how it exited before.
    async fn start_once() -> Result<Self, String> {
        let port = free_loopback_ports(1).expect("a free port")[0];
        let mut command = Command::new(CHROMEDRIVER);
        if let Some(path) = std::env::var_os(CHROMEDRIVER_LOG_ENV) {
            let mut log = std::ffi::OsString::from("--log-path=");
            log.push(path);
            command.arg(log).arg("--verbose");
        }
        command
            .arg(format!("--port={port}"))
            .arg("--allowed-ips=127.0.0.1")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .process_group(0);
        let child = command.spawn().unwrap_or_else(|error| {
            panic!("cannot start {CHROMEDRIVER}: {error}; install chromium-driver (.ci/install-deps does)")
        });
        let mut driver = Self {
            child,
            url: format!("http://127.0.0.1:{port}"),
        };
        let status = format!("{}/status", driver.url);
        let deadline = Instant::now() + DRIVER_WAIT;
        loop {
            let ready = reqwest::get(&status)
                .await
                .ok()
                .map(|response| response.json::<Value>());
            if let Some(body) = ready
                && body
                    .await
                    .ok()
                    .is_some_and(|body| body["value"]["ready"] == true)
            {
                return Ok(driver);
            }
            if let Ok(Some(exit)) = driver.child.try_wait() {
                return Err(format!("port {port}: {exit}"));
            }
            assert!(
                Instant::now() < deadline,
                "chromedriver is running but not ready after {DRIVER_WAIT:?}"
            );
            tokio::time::sleep(POLL).await;
        }
    }

    /// A new browser with its own fresh profile directory.
    pub async fn browser(&self) -> Browser {
        let profile = tempfile::tempdir().expect("profile directory");
        let mut args: Vec<String> = CHROMIUM_ARGS.iter().map(|arg| arg.to_string()).collect();
        args.push(format!("--user-data-dir={}", profile.path().display()));
        let mut capabilities = Capabilities::new();
        capabilities.insert("browserName".into(), json!("chrome"));
        capabilities.insert(
            "goog:chromeOptions".into(),
            json!({ "binary": CHROMIUM, "args": args }),
        );
        capabilities.insert("goog:loggingPrefs".into(), json!({ "browser": "ALL" }));
        let client = ClientBuilder::new(HttpConnector::new())
            .capabilities(capabilities)
            .connect(&self.url)
            .await
            .expect("a chromium session");
        client
            .set_window_size(DESKTOP.0, DESKTOP.1)
            .await
            .expect("window size");
        Browser {
            client,
            _profile: profile,
        }
    }
}

impl Drop for Chromedriver {
    fn drop(&mut self) {
        // Our child's process group: chromedriver and the browsers it started, nothing else.
        signal_group(self.child.id(), libc::SIGKILL);
        let _ = self.child.wait();
    }
}

#[allow(unsafe_code)]
fn signal_group(leader: u32, signal: libc::c_int) {
    let Ok(group) = libc::pid_t::try_from(leader) else {
        return;
    };
    // SAFETY: kill(2) takes no pointers; a negative pid names the process group this test
    // created for its chromedriver child, which has not been reaped yet.
    unsafe {
        libc::kill(-group, signal);
    }
}

/// One browser (one person), with its profile directory.
pub struct Browser {
    pub client: Client,
    _profile: TempDir,
}

impl Browser {
    pub async fn find(&self, css: &str) -> fantoccini::elements::Element {
        let found = self
            .client
            .wait()
            .at_most(WAIT)
            .every(POLL)
            .for_element(Locator::Css(css))
            .await;
        match found {
            Ok(element) => element,
            Err(error) => {
                let shot = self.screenshot("failure.png").await;
                panic!(
                    "no {css} on the page within {WAIT:?}: {error} (the page: {})",
                    shot.display()
                )
            }
        }
    }

    pub async fn type_into(&self, css: &str, text: &str) {
        for _ in 0..STALE_RETRIES_MAX {
            let element = self.find(css).await;
            let typed = match element.clear().await {
                Ok(()) => element.send_keys(text).await,
                Err(error) => Err(error),
            };
            match typed {
                Ok(()) => return,
                Err(error) if error.is_stale_element_reference() => {}
                Err(error) => panic!("typing into {css}: {error}"),
            }
        }
        panic!("{css} kept being replaced while typing into it");
    }

    /// Clicks `css`; an element replaced between finding and clicking (the page re-rendered)
    /// is found again.
    pub async fn click(&self, css: &str) {
        for _ in 0..STALE_RETRIES_MAX {
            match self.find(css).await.click().await {
                Ok(()) => return,
                Err(error) if error.is_stale_element_reference() => {}
                Err(error) => panic!("click on {css}: {error}"),
            }
        }
        panic!("{css} kept being replaced while clicking it");
    }

    pub async fn run(&self, script: &str, args: Vec<Value>) -> Value {
        self.client
            .execute(script, args)
            .await
            .unwrap_or_else(|error| panic!("script failed: {error}\n{script}"))
    }

    /// Polls `script` until it returns something truthy; returns it.
    pub async fn wait_until(&self, what: &str, script: &str, args: Vec<Value>) -> Value {
        let deadline = Instant::now() + WAIT;
        loop {
            let value = self.run(script, args.clone()).await;
            let truthy = !matches!(&value, Value::Null | Value::Bool(false))
                && value.as_str() != Some("")
                && value.as_array().is_none_or(|items| !items.is_empty());
            if truthy {
                return value;
            }
            if Instant::now() > deadline {
                let shot = self.screenshot("failure.png").await;
                panic!("waited {WAIT:?} for {what} (the page: {})", shot.display());
            }
            tokio::time::sleep(POLL).await;
        }
    }

    /// The messages the chat shows, as `(seq, text)`, in page order.
    pub async fn rendered(&self) -> Vec<(u64, String)> {
        let value = self
            .run(
                "return Array.from(document.querySelectorAll('#messages li.message[data-seq]'))\
                   .map(li => [Number(li.dataset.seq), li.querySelector('.text').textContent]);",
                vec![],
            )
            .await;
        serde_json::from_value(value).expect("(seq, text) pairs")
    }

    /// Waits until the chat shows exactly `texts` (in order) and nothing pending; returns the
    /// seqs it shows.
    pub async fn wait_for_messages(&self, texts: &[&str]) -> Vec<u64> {
        let deadline = Instant::now() + WAIT;
        loop {
            let rendered = self.rendered().await;
            let pending = self
                .run(
                    "return document.querySelectorAll('#messages li.pending').length;",
                    vec![],
                )
                .await;
            let shown: Vec<&str> = rendered.iter().map(|(_, text)| text.as_str()).collect();
            if shown == texts && pending == 0 {
                return rendered.iter().map(|(seq, _)| *seq).collect();
            }
            assert!(
                Instant::now() < deadline,
                "the chat shows {rendered:?} ({pending} pending), expected {texts:?}"
            );
            tokio::time::sleep(POLL).await;
        }
    }

    /// The node this tab is connected to, once the connection is open.
    pub async fn connected_node(&self) -> String {
        let value = self
            .wait_until(
                "an open connection",
                "const pill = document.getElementById('connection');\
                 return pill && pill.dataset.state === 'open'\
                   ? document.querySelector('#cluster-nodes li.current')?.dataset.node || '' : '';",
                vec![],
            )
            .await;
        value.as_str().expect("node id").to_string()
    }

    pub async fn post(&self, text: &str) {
        self.type_into("#composer", text).await;
        self.click("#send").await;
    }

    pub async fn screenshot(&self, name: &str) -> PathBuf {
        let png = self.client.screenshot().await.expect("screenshot");
        let directory = screenshot_dir();
        std::fs::create_dir_all(&directory).expect("screenshot directory");
        let path = directory.join(name);
        std::fs::write(&path, png).expect("write screenshot");
        println!("screenshot: {}", path.display());
        path
    }

    pub async fn close(self) {
        let _ = self.client.close().await;
    }
}

/// What the last navigation cost, from the browser's Performance API: requests, bytes
/// transferred (headers included) and decoded, and when the page became usable (ms since
/// navigation start; `app_interactive_ms` is the page's own mark, set once the first screen
/// is drawn and wired).
pub async fn load_metrics(browser: &Browser) -> Value {
    browser
        .wait_until(
            "load timings",
            "const nav = performance.getEntriesByType('navigation')[0];\
             if (!nav || !nav.loadEventEnd) return null;\
             const ready = performance.getEntriesByName('actorhub-interactive')[0];\
             if (!ready) return null;\
             const resources = performance.getEntriesByType('resource');\
             const sum = (key) => nav[key] + resources.reduce((total, entry) => total + entry[key], 0);\
             return { requests: 1 + resources.length, transfer_bytes: sum('transferSize'),\
                      body_bytes: sum('decodedBodySize'), dom_interactive_ms: nav.domInteractive,\
                      dom_content_loaded_ms: nav.domContentLoadedEventEnd, load_ms: nav.loadEventEnd,\
                      app_interactive_ms: ready.startTime };",
            vec![],
        )
        .await
}

/// `target/browser-screenshots/` (beside the `node` binary's profile directory).
fn screenshot_dir() -> PathBuf {
    let binary = Path::new(env!("CARGO_BIN_EXE_node"));
    binary
        .ancestors()
        .nth(2)
        .map_or_else(|| PathBuf::from("target"), Path::to_path_buf)
        .join("browser-screenshots")
}
