//! A `weft serve` child process for tests that run the binary.

#![allow(dead_code)] // Each test binary uses a different subset.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};

pub const WEFT: &str = env!("CARGO_BIN_EXE_weft");

/// A `weft serve` process on an ephemeral port.
pub struct Serve {
    pub child: Child,
    pub url: String,
    /// The relay's store directory if the relay owns it, removed when the test ends.
    _data: Option<tempfile::TempDir>,
}

impl Serve {
    /// A relay over a fresh store directory of its own.
    pub fn start() -> Self {
        let data = tempfile::tempdir().unwrap();
        let mut serve = Self::start_at(data.path());
        serve._data = Some(data);
        serve
    }

    /// A relay over the store in `store`.
    pub fn start_at(store: &std::path::Path) -> Self {
        Self::start_with(store, &["--listen", "127.0.0.1:0"], &[])
    }

    /// A relay over the store in `store`, with these `serve` flags (which must bind an
    /// ephemeral port) and environment variables.
    pub fn start_with(store: &std::path::Path, args: &[&str], envs: &[(&str, &str)]) -> Self {
        let mut child = Command::new(WEFT)
            .args(["serve", "--log-format", "text"])
            .args(args)
            .arg("--store")
            .arg(store)
            .env("WEFT_LOG", "info")
            .envs(envs.iter().copied())
            .stderr(Stdio::piped())
            .stdout(Stdio::null())
            .spawn()
            .unwrap();
        let stderr = child.stderr.take().unwrap();
        let mut lines = BufReader::new(stderr).lines();
        // The first log line names the bound address: "... listening on ws://127.0.0.1:PORT/v1/...".
        let url = loop {
            let line = lines.next().expect("serve printed its address").unwrap();
            if let Some(start) = line.find("ws://") {
                let rest = &line[start..];
                break rest[..rest.find("/v1").unwrap()].to_owned();
            }
        };
        // Keep draining stderr so the relay never blocks on a full pipe.
        std::thread::spawn(move || for _ in lines {});
        Self {
            child,
            url,
            _data: None,
        }
    }

    pub fn weft(&self, args: &[&str]) -> std::process::Output {
        Command::new(WEFT)
            .args(args)
            .args(["--server", &self.url, "--timeout", "20"])
            .output()
            .unwrap()
    }
}

impl Serve {
    /// SIGKILL: no draining, no flushing, no goodbye.
    pub fn kill(mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Serve {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
