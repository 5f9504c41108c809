#![allow(dead_code)] // Each test binary uses a different subset.

//! A real S3-compatible server for tests: s3s-fs 0.14.1 on a loopback port over a temporary
//! directory. The binary is looked up on `PATH` and in `~/.cargo/bin`, and installed with
//! `cargo install` when missing, once per test process.

use std::net::TcpStream;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use object_store::ObjectStore;
use object_store::aws::AmazonS3Builder;

/// Credentials the server is started with.
pub const ACCESS_KEY: &str = "weft-test-access";
pub const SECRET_KEY: &str = "weft-test-secret";
/// The bucket every test uses.
pub const BUCKET: &str = "weft-test";

const VERSION: &str = "0.14.1";

/// A running s3s-fs, stopped on drop.
pub struct Server {
    child: Child,
    /// `http://127.0.0.1:PORT`.
    pub endpoint: String,
    _root: tempfile::TempDir,
}

impl Server {
    /// Starts a server with an empty bucket and waits until it accepts connections.
    pub fn start() -> Self {
        let binary = binary();
        let root = tempfile::tempdir().unwrap();
        // s3s-fs serves each directory under its root as a bucket.
        std::fs::create_dir(root.path().join(BUCKET)).unwrap();
        let port = free_port();
        let child = Command::new(binary)
            .args(["--host", "127.0.0.1", "--port", &port.to_string()])
            .args(["--access-key", ACCESS_KEY, "--secret-key", SECRET_KEY])
            .arg(root.path())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("s3s-fs starts");
        // Up to 20 s, in 20 ms steps.
        let listening = (0..1000).any(|_| {
            let up = TcpStream::connect(("127.0.0.1", port)).is_ok();
            if !up {
                std::thread::sleep(Duration::from_millis(20));
            }
            up
        });
        assert!(listening, "s3s-fs did not listen on {port}");
        Self {
            child,
            endpoint: format!("http://127.0.0.1:{port}"),
            _root: root,
        }
    }

    /// A new client for the bucket.
    pub fn objects(&self) -> Arc<dyn ObjectStore> {
        // As `weft::store::open` does for cloud stores: TLS through rustls with ring.
        let _ = rustls::crypto::ring::default_provider().install_default();
        Arc::new(
            AmazonS3Builder::new()
                .with_endpoint(&self.endpoint)
                .with_bucket_name(BUCKET)
                .with_region("us-east-1")
                .with_access_key_id(ACCESS_KEY)
                .with_secret_access_key(SECRET_KEY)
                .with_allow_http(true)
                .build()
                .unwrap(),
        )
    }

    /// The environment a relay process needs to open `s3://BUCKET/...` on this server.
    pub fn env(&self) -> Vec<(&'static str, String)> {
        vec![
            ("AWS_ENDPOINT_URL", self.endpoint.clone()),
            ("AWS_ALLOW_HTTP", "true".into()),
            ("AWS_ACCESS_KEY_ID", ACCESS_KEY.into()),
            ("AWS_SECRET_ACCESS_KEY", SECRET_KEY.into()),
            ("AWS_REGION", "us-east-1".into()),
        ]
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn free_port() -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    listener.local_addr().unwrap().port()
}

/// The s3s-fs binary, installing it on first use if it is nowhere to be found.
fn binary() -> PathBuf {
    static BINARY: OnceLock<PathBuf> = OnceLock::new();
    BINARY
        .get_or_init(|| {
            if let Some(found) = find() {
                return found;
            }
            eprintln!(
                "s3s-fs not found: cargo install s3s-fs@{VERSION} --features binary --locked"
            );
            let status = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()))
                .args([
                    "install",
                    &format!("s3s-fs@{VERSION}"),
                    "--features",
                    "binary",
                    "--locked",
                ])
                .status()
                .expect("cargo install runs");
            assert!(status.success(), "installing s3s-fs failed");
            find().expect("s3s-fs installed")
        })
        .clone()
}

fn find() -> Option<PathBuf> {
    let mut candidates: Vec<PathBuf> = std::env::var_os("PATH")
        .map(|path| std::env::split_paths(&path).collect())
        .unwrap_or_default();
    if let Some(home) = std::env::var_os("CARGO_HOME") {
        candidates.push(PathBuf::from(home).join("bin"));
    }
    if let Some(home) = std::env::var_os("HOME") {
        candidates.push(PathBuf::from(home).join(".cargo/bin"));
    }
    candidates
        .into_iter()
        .map(|dir| dir.join("s3s-fs"))
        .find(|candidate| candidate.is_file())
}
