//! The web client in a real browser: `tests/web/browser_test.py` drives
//! headless Chromium through Selenium against the `hanmadi` binary, which
//! this test starts on 127.0.0.1 port 0 (HTTP and HTTPS), kills with
//! SIGKILL and starts again on the same ports when the script asks.
//!
//! Three users sign up in three browsers and chat directly and in a group;
//! unread counts rise and fall; the node dies and comes back while a page
//! is open and another user keeps sending; the operator view shows
//! discovery and metrics. Screenshots go to `target/tmp/web-client/`.
//!
//! Needs python3 with Selenium, Chromium and its WebDriver (Debian:
//! `python3-selenium`, `chromium`, `chromium-driver`; `scripts/test`
//! installs them). Without them the test says it skipped, unless
//! `HANMADI_REQUIRE_BROWSER=1`, which makes that a failure.

use std::io::{BufRead, BufReader, Write};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use hanmadi_gateway::auth::TokenIssuer;

const SECRET: &str = "web-client-test-secret-0123456789abcdef";
/// Longest the script may stay silent: starting three browsers on a busy
/// machine is the slowest step.
const LINE_TIMEOUT: Duration = Duration::from_secs(120);

/// What the browser test runs with.
struct Browser {
    python: String,
    chromium: PathBuf,
    chromedriver: PathBuf,
}

fn env_or(name: &str, default: &str) -> String {
    std::env::var(name).unwrap_or_else(|_| default.to_owned())
}

/// Python with Selenium, Chromium and ChromeDriver, if all are there.
fn browser() -> Option<Browser> {
    let python = env_or("HANMADI_PYTHON", "/usr/bin/python3");
    let chromium = PathBuf::from(env_or("HANMADI_CHROMIUM", "/usr/bin/chromium"));
    let chromedriver = PathBuf::from(env_or("HANMADI_CHROMEDRIVER", "/usr/bin/chromedriver"));
    let selenium = Command::new(&python)
        .args(["-c", "import selenium"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    (selenium && chromium.is_file() && chromedriver.is_file()).then_some(Browser {
        python,
        chromium,
        chromedriver,
    })
}

/// A running `hanmadi serve`, killed with SIGKILL when dropped.
struct Node {
    child: Child,
    http: String,
    https: String,
}

impl Node {
    /// Starts the binary on `http` and `https` (`127.0.0.1:0` for any
    /// port) and waits until it prints both listeners.
    fn spawn(data: &Path, tls: &Path, http: &str, https: &str) -> Node {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(data.with_extension("log"))
            .expect("node log");
        let mut child = Command::new(env!("CARGO_BIN_EXE_hanmadi"))
            .args(["serve", "--tcp", "off", "--tls", "off", "--http", http])
            .args(["--https", https, "--secret", SECRET])
            // Three browsers share one address here, and reconnecting pages
            // poll discovery: past a real client's per-address allowance.
            .args([
                "--http-rate-per-sec",
                "100000",
                "--http-rate-burst",
                "100000",
            ])
            .arg("--data-dir")
            .arg(data)
            .arg("--cert")
            .arg(tls.join("cert.pem"))
            .arg("--key")
            .arg(tls.join("key.pem"))
            .stdout(Stdio::piped())
            .stderr(log)
            .spawn()
            .expect("start hanmadi");
        let mut lines = BufReader::new(child.stdout.take().expect("stdout")).lines();
        let (mut http, mut https) = (None, None);
        while http.is_none() || https.is_none() {
            let line = lines
                .next()
                .expect("hanmadi printed its listeners")
                .expect("read hanmadi's stdout");
            if let Some(a) = line.strip_prefix("listening http ") {
                http = Some(a.to_owned());
            } else if let Some(a) = line.strip_prefix("listening https ") {
                https = Some(a.to_owned());
            }
        }
        // Keep reading, so the node never writes into a closed pipe.
        std::thread::spawn(move || lines.for_each(drop));
        Node {
            child,
            http: http.unwrap_or_default(),
            https: https.unwrap_or_default(),
        }
    }

    fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        self.kill();
    }
}

/// The script's process group, killed when dropped: the script, the
/// drivers and browsers it started, even if it failed half-way.
struct Script {
    child: Child,
    stdin: ChildStdin,
    lines: mpsc::Receiver<String>,
}

impl Script {
    fn next_line(&self) -> Option<String> {
        match self.lines.recv_timeout(LINE_TIMEOUT) {
            Ok(line) => Some(line),
            Err(mpsc::RecvTimeoutError::Disconnected) => None,
            Err(mpsc::RecvTimeoutError::Timeout) => {
                panic!("the browser script said nothing for {LINE_TIMEOUT:?}")
            }
        }
    }

    fn answer(&mut self, line: &str) {
        writeln!(self.stdin, "{line}").expect("write to the script");
        self.stdin.flush().expect("flush");
    }
}

impl Drop for Script {
    fn drop(&mut self) {
        // The group's id is the script's pid (process_group(0) below).
        let _ = Command::new("kill")
            .args(["-KILL", "--", &format!("-{}", self.child.id())])
            .status();
        let _ = self.child.wait();
    }
}

#[test]
fn web_client_in_a_real_browser() {
    let Some(browser) = browser() else {
        assert!(
            std::env::var("HANMADI_REQUIRE_BROWSER").is_err(),
            "HANMADI_REQUIRE_BROWSER is set but python3 with Selenium, Chromium or \
             ChromeDriver is missing"
        );
        println!(
            "skipped: no python3-selenium, chromium and chromium-driver \
             (apt install python3-selenium chromium chromium-driver)"
        );
        return;
    };
    let dir = tempfile::tempdir().expect("tempdir");
    let data = dir.path().join("data");
    hanmadi_gateway::tls::generate_self_signed(
        &["localhost".into()],
        &dir.path().join("cert.pem"),
        &dir.path().join("key.pem"),
    )
    .expect("certificate");
    let mut node = Node::spawn(&data, dir.path(), "127.0.0.1:0", "127.0.0.1:0");
    let (http, https) = (node.http.clone(), node.https.clone());

    let shots = Path::new(env!("CARGO_TARGET_TMPDIR")).join("web-client");
    let _ = std::fs::remove_dir_all(&shots);
    println!("screenshots: {}", shots.display());
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/web/browser_test.py");
    let mut child = Command::new(&browser.python)
        .arg(script)
        .arg(format!("http://{http}"))
        .arg(format!("https://{https}"))
        .arg(&shots)
        .arg(TokenIssuer::new(SECRET.as_bytes()).admin_token())
        .env("HANMADI_CHROMIUM", &browser.chromium)
        .env("HANMADI_CHROMEDRIVER", &browser.chromedriver)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .process_group(0)
        .spawn()
        .expect("start the browser script");
    let stdin = child.stdin.take().expect("stdin");
    let stdout = child.stdout.take().expect("stdout");
    let (tx, lines) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let mut script = Script {
        child,
        stdin,
        lines,
    };

    let mut done = false;
    while let Some(line) = script.next_line() {
        match line.as_str() {
            "KILL" => {
                node.kill();
                script.answer("KILLED");
            }
            "RESTART" => {
                node = Node::spawn(&data, dir.path(), &http, &https);
                script.answer("UP");
            }
            "DONE" => done = true,
            progress => println!("{progress}"),
        }
    }
    let status = script.child.wait().expect("wait for the script");
    if !(status.success() && done) {
        let log = std::fs::read_to_string(data.with_extension("log")).unwrap_or_default();
        let lines: Vec<&str> = log.lines().collect();
        let tail = lines[lines.len().saturating_sub(40)..].join("\n");
        panic!(
            "the browser script failed ({status}); see its output above and the \
             screenshots in {}. The node's log ends:\n{tail}",
            shots.display()
        );
    }
}
