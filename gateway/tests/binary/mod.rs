//! The real `hanmadi serve` binary as a child process, for what only a
//! process shows: `kill -9`, signals, its memory.

use std::fs::File;
use std::io::{BufRead, BufReader, Read, Seek};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

/// A running `hanmadi serve`, killed and reaped when dropped so a failed
/// assertion leaves no process behind.
pub struct Serve {
    pub child: Child,
    lines: mpsc::Receiver<String>,
    /// Its log (stderr), shown when the test that started it fails.
    log: File,
}

/// How much of a node's log a failed test shows.
const LOG_TAIL_LINES: usize = 40;

impl Serve {
    /// Starts `hanmadi serve --data-dir DATA ARGS`; its stdout is read line
    /// by line.
    pub fn start(data: &Path, args: &[&str]) -> Self {
        let log = tempfile::tempfile().expect("log file");
        let mut child = Command::new(env!("CARGO_BIN_EXE_hanmadi"))
            .arg("serve")
            .arg("--data-dir")
            .arg(data)
            .args(args)
            .stdout(Stdio::piped())
            .stderr(log.try_clone().expect("log file"))
            .spawn()
            .expect("spawn hanmadi");
        let stdout = child.stdout.take().expect("stdout");
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    return;
                }
            }
        });
        Self { child, lines, log }
    }

    /// Waits for the next stdout line starting with `prefix` (the lines
    /// before it are skipped) and answers the rest of it.
    pub fn line_after(&self, prefix: &str) -> String {
        loop {
            let line = self
                .lines
                .recv_timeout(Duration::from_secs(20))
                .unwrap_or_else(|_| panic!("hanmadi did not print {prefix:?}"));
            if let Some(rest) = line.strip_prefix(prefix) {
                return rest.to_owned();
            }
        }
    }

    /// The address of the listener it printed as `listening WHAT ADDR`.
    pub fn listening(&self, what: &str) -> String {
        self.line_after(&format!("listening {what} "))
    }

    /// The process id.
    #[allow(dead_code)] // not every test binary signals the node
    pub fn pid(&self) -> u32 {
        self.child.id()
    }
}

impl Drop for Serve {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        // A failed assertion about what the node answered is read beside
        // what the node logged.
        if std::thread::panicking() {
            let mut text = String::new();
            if self.log.rewind().is_ok() && self.log.read_to_string(&mut text).is_ok() {
                let lines: Vec<&str> = text.lines().collect();
                let tail = &lines[lines.len().saturating_sub(LOG_TAIL_LINES)..];
                eprintln!(
                    "--- the last {} log lines of hanmadi pid {} ---\n{}",
                    tail.len(),
                    self.child.id(),
                    tail.join("\n")
                );
            }
        }
    }
}
