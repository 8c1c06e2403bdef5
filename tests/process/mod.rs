//! Drives the real `keel` binary: a server on a free loopback port, and CLI commands, on the
//! database of a [`TestDatabase`](crate::common::TestDatabase).

#![allow(
    dead_code,
    reason = "each test binary uses a different part of the helpers"
)]

use std::io::{BufRead as _, BufReader};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use crate::common::TestDatabase;

/// How long a server may take to start answering; generous for a cold CI machine.
const STARTUP_TIMEOUT: Duration = Duration::from_secs(60);

pub fn keel_binary() -> &'static str {
    env!("CARGO_BIN_EXE_keel")
}

/// Runs `keel ARGS… <database args>` and returns its output.
pub fn keel(args: &[&str], database: &TestDatabase) -> Output {
    let mut command = Command::new(keel_binary());
    command
        .args(args)
        .args(database.cli_args())
        // On PostgreSQL the data directory still holds compiled plugins: keep it out of the
        // working tree (on SQLite, --data-dir names the test's own folder).
        .env(
            "KEEL_DATA_DIR",
            std::env::temp_dir().join("keel-test-cli-data"),
        )
        .env("KEEL_LOG", "warn");
    command.output().expect("running keel")
}

/// Creates an administrator with `keel user add` and returns the API token it prints last.
pub fn add_admin(database: &TestDatabase) -> String {
    let output = keel(&["user", "add", "admin", "--role", "admin"], database);
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    let token = stdout
        .lines()
        .last()
        .expect("keel user add prints the token last")
        .trim()
        .to_owned();
    assert!(token.starts_with("keel_"), "{stdout}");
    token
}

/// An HTTP client that sends the token with every request.
pub fn client(token: &str) -> reqwest::Client {
    let mut headers = reqwest::header::HeaderMap::new();
    headers.insert(
        reqwest::header::AUTHORIZATION,
        reqwest::header::HeaderValue::from_str(&format!("Bearer {token}")).expect("a header value"),
    );
    reqwest::Client::builder()
        .default_headers(headers)
        .build()
        .expect("an HTTP client")
}

/// A `keel serve` process.
#[derive(Debug)]
pub struct Server {
    child: Child,
    pub base_url: String,
}

impl Server {
    /// Starts `keel serve` on a free port and waits until it is ready.
    pub async fn start(database: &TestDatabase) -> Self {
        Self::start_printing(database).await.0
    }

    /// Like [`Server::start`], also returning what the server printed before its address.
    pub async fn start_printing(database: &TestDatabase) -> (Self, String) {
        Self::start_with(database, &[]).await
    }

    /// Like [`Server::start_printing`], with more arguments for `keel serve`.
    pub async fn start_with(database: &TestDatabase, extra: &[&str]) -> (Self, String) {
        let mut child = Command::new(keel_binary())
            .args(["serve", "--addr", "127.0.0.1:0"])
            .args(extra)
            .args(database.cli_args())
            .env(
                "KEEL_DATA_DIR",
                std::env::temp_dir().join("keel-test-cli-data"),
            )
            .env("KEEL_LOG", "warn")
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("starting keel serve");
        let stdout = child.stdout.take().expect("stdout is piped");
        let (base_url, printed) = tokio::task::spawn_blocking(move || {
            let mut printed = String::new();
            for line in BufReader::new(stdout).lines() {
                let line = line.expect("keel serve's output");
                if let Some(address) = line.strip_prefix("Keel listening on ") {
                    return (address.to_owned(), printed);
                }
                printed.push_str(&line);
                printed.push('\n');
            }
            panic!("keel serve ended without printing its address: {printed}");
        })
        .await
        .expect("reading the server's output");
        let server = Self { child, base_url };
        server.wait_ready().await;
        (server, printed)
    }

    async fn wait_ready(&self) {
        let client = reqwest::Client::new();
        let started = Instant::now();
        loop {
            if let Ok(response) = client.get(self.url("/readyz")).send().await
                && response.status() == 200
            {
                return;
            }
            assert!(
                started.elapsed() < STARTUP_TIMEOUT,
                "keel serve did not become ready"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base_url)
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// SIGKILL: the process gets no chance to flush or clean up.
    pub fn kill(mut self) {
        self.child.kill().expect("killing keel serve");
        self.child.wait().expect("reaping keel serve");
    }

    /// SIGTERM, then waits for the exit status.
    pub fn terminate(mut self) -> std::process::ExitStatus {
        let status = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status()
            .expect("sending SIGTERM");
        assert!(status.success());
        self.child.wait().expect("waiting for keel serve")
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
