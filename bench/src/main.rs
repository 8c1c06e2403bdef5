//! Measures a real `keel serve` process over HTTP, as a client would use it:
//!
//! * batch ingest of two-line entries through `POST /api/v1/ledger/entries:batch`;
//! * single-entry `POST /api/v1/ledger/entries` from many concurrent clients;
//! * `GET /api/v1/ledger/trial-balance` over a large ledger;
//! * resident memory of the idle server;
//! * with `--plugin FILE`, instead: a plugin's HTTP route, the expense-claims example's
//!   `GET /api/v1/plugins/expenses/claims/1` (a storage read) and `POST .../claims` (a storage
//!   write), from many concurrent clients.
//!
//! `cargo run --release -p keel-bench -- --keel target/release/keel` (SQLite), add
//! `--postgres-url postgres://user@host/postgres` to measure PostgreSQL instead. The results
//! are recorded in docs/PERFORMANCE.md.

use std::io::{BufRead as _, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail, ensure};
use clap::Parser;
use serde_json::{Value, json};

#[derive(Debug, Parser)]
struct Args {
    /// The `keel` binary to measure (build it with --release).
    #[arg(long, default_value = "target/release/keel")]
    keel: PathBuf,
    /// Measure PostgreSQL: an admin URL on which the bench creates a fresh database.
    #[arg(long)]
    postgres_url: Option<String>,
    /// Entries posted by the batch-ingest measurement.
    #[arg(long, default_value_t = 100_000)]
    batch_entries: usize,
    /// Entries per batch request.
    #[arg(long, default_value_t = 5_000)]
    batch_size: usize,
    /// Batch requests in flight at once.
    #[arg(long, default_value_t = 2)]
    batch_concurrency: usize,
    /// Concurrent clients of the single-entry measurement.
    #[arg(long, default_value_t = 32)]
    clients: usize,
    /// How long the single-entry measurement runs.
    #[arg(long, default_value_t = 10)]
    single_seconds: u64,
    /// Accounts in the chart for the trial-balance measurement.
    #[arg(long, default_value_t = 500)]
    accounts: usize,
    /// Lines in the ledger when the trial balance is measured.
    #[arg(long, default_value_t = 1_000_000)]
    trial_balance_lines: usize,
    /// Trial balances requested.
    #[arg(long, default_value_t = 200)]
    trial_balance_requests: usize,
    /// Batch entries in random date order instead of date order.
    #[arg(long)]
    shuffled_dates: bool,
    /// Skip the single-entry measurement.
    #[arg(long)]
    skip_single: bool,
    /// Stop after the batch-ingest measurement (for profiling one path).
    #[arg(long)]
    only_batch: bool,
    /// Measure only the routes of this expense-claims component (any language).
    #[arg(long)]
    plugin: Option<PathBuf>,
    /// Keep the SQLite data folder at the end and print where it is and the administrator's
    /// token, to profile a server on the populated ledger afterwards.
    #[arg(long)]
    keep_data: bool,
}

/// A `keel serve` child process on a fresh database.
struct Server {
    child: Child,
    base: String,
    /// The API token of the administrator the bench creates.
    token: String,
    data_dir: Option<tempfile::TempDir>,
    keep_data: bool,
}

impl Server {
    async fn start(args: &Args) -> anyhow::Result<Self> {
        let mut location: Vec<String> = Vec::new();
        let data_dir = match &args.postgres_url {
            Some(admin_url) => {
                let name = format!("keel_bench_{}", std::process::id());
                let admin = sqlx::PgPool::connect(admin_url)
                    .await
                    .context("connecting to PostgreSQL")?;
                sqlx::query(&format!("DROP DATABASE IF EXISTS {name}"))
                    .execute(&admin)
                    .await?;
                sqlx::query(&format!("CREATE DATABASE {name}"))
                    .execute(&admin)
                    .await?;
                admin.close().await;
                let (base, _) = admin_url
                    .rsplit_once('/')
                    .context("a URL with a database name")?;
                location.extend(["--database-url".to_owned(), format!("{base}/{name}")]);
                None
            }
            None => {
                let dir = tempfile::tempdir()?;
                location.extend(["--data-dir".to_owned(), dir.path().display().to_string()]);
                Some(dir)
            }
        };
        let added = Command::new(&args.keel)
            .args(["user", "add", "bench", "--role", "admin"])
            .args(&location)
            .env("KEEL_LOG", "warn")
            .output()
            .context("creating the bench administrator")?;
        ensure!(
            added.status.success(),
            "keel user add failed: {}",
            String::from_utf8_lossy(&added.stderr)
        );
        let token = String::from_utf8_lossy(&added.stdout)
            .lines()
            .last()
            .context("a token")?
            .trim()
            .to_owned();
        let mut command = Command::new(&args.keel);
        command
            .args(["serve", "--addr", "127.0.0.1:0"])
            .args(&location)
            .env("KEEL_LOG", "warn");
        let mut child = command
            .stdout(Stdio::piped())
            .spawn()
            .with_context(|| format!("starting {}", args.keel.display()))?;
        let stdout = child.stdout.take().context("stdout")?;
        let base = BufReader::new(stdout)
            .lines()
            .find_map(|line| {
                line.ok()?
                    .strip_prefix("Keel listening on ")
                    .map(str::to_owned)
            })
            .context("keel serve did not print its address")?;
        Ok(Self {
            child,
            base,
            token,
            data_dir,
            keep_data: args.keep_data,
        })
    }

    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    /// Resident set size of the server process, from /proc.
    fn resident_bytes(&self) -> anyhow::Result<u64> {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id()))?;
        let line = status
            .lines()
            .find(|l| l.starts_with("VmRSS:"))
            .context("VmRSS")?;
        let kib: u64 = line
            .split_whitespace()
            .nth(1)
            .context("VmRSS value")?
            .parse()?;
        Ok(kib * 1024)
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if self.keep_data
            && let Some(dir) = self.data_dir.take()
        {
            println!(
                "data kept in {} (administrator token {})",
                dir.keep().display(),
                self.token
            );
        }
    }
}

fn account_code(index: usize) -> String {
    format!("B{index:04}")
}

/// Days of 2025 the entries are spread over (12 months of 28 days).
const DAYS: usize = 336;

/// Dates the trial balance is measured as of.
const TRIAL_BALANCE_DATES: [&str; 3] = ["2025-12-31", "2025-06-30", "2025-06-15"];

/// The day (of [`DAYS`]) that live single-entry postings are dated.
const LIVE_DAY: u32 = 170;

/// A two-line entry moving `cents` between two of the bench accounts.
fn entry(n: usize, accounts: usize, day: u32) -> Value {
    let debit = account_code(n % accounts);
    let credit = account_code((n * 7 + 1) % accounts);
    let cents = 100 + (n % 100_000);
    let amount = format!("{}.{:02}", cents / 100, cents % 100);
    json!({
        "date": format!("2025-{:02}-{:02}", 1 + (day / 28) % 12, 1 + day % 28),
        "memo": "bench",
        "lines": [{ "account": debit, "debit": amount }, { "account": credit, "credit": amount }]
    })
}

async fn check(response: reqwest::Response, what: &str) -> anyhow::Result<Value> {
    let status = response.status();
    let body: Value = response.json().await.unwrap_or(Value::Null);
    if !status.is_success() {
        bail!("{what} failed with {status}: {body}");
    }
    Ok(body)
}

/// One GET, checked, with the time it took from request to parsed reply.
async fn timed_get(
    http: &reqwest::Client,
    server: &Server,
    path: &str,
    what: &str,
) -> anyhow::Result<(Value, Duration)> {
    let started = Instant::now();
    let body = check(http.get(server.url(path)).send().await?, what).await?;
    Ok((body, started.elapsed()))
}

/// The median and the 99th percentile of `latencies`, which it sorts.
fn p50_p99(latencies: &mut [Duration]) -> (Duration, Duration) {
    latencies.sort_unstable();
    (
        latencies[latencies.len() / 2],
        latencies[latencies.len() * 99 / 100],
    )
}

async fn set_up_chart(
    http: &reqwest::Client,
    server: &Server,
    accounts: usize,
) -> anyhow::Result<()> {
    check(
        http.post(server.url("/api/v1/ledger/fiscal-years"))
            .json(&json!({ "start": "2025-01-01" }))
            .send()
            .await?,
        "opening 2025",
    )
    .await?;
    let types = ["asset", "liability", "equity", "income", "expense"];
    for index in 0..accounts {
        let account = json!({ "code": account_code(index), "name": format!("Bench account {index}"), "type": types[index % types.len()] });
        check(
            http.post(server.url("/api/v1/ledger/accounts"))
                .json(&account)
                .send()
                .await?,
            "creating an account",
        )
        .await?;
    }
    Ok(())
}

/// Posts `count` entries in batches of `batch_size`; returns entries per second.
async fn ingest(
    http: &reqwest::Client,
    server: &Server,
    args: &Args,
    first: usize,
    count: usize,
) -> anyhow::Result<f64> {
    let bodies: Vec<Vec<u8>> = (first..first + count)
        .collect::<Vec<_>>()
        .chunks(args.batch_size)
        .map(|chunk| {
            let (accounts, shuffled_dates) = (args.accounts, args.shuffled_dates);
            let entries: Vec<Value> = chunk
                .iter()
                .map(|&n| {
                    // An import of history is in date order, as exports from other systems are;
                    // --shuffled-dates measures the worst case, dates all over the year.
                    let day = if shuffled_dates {
                        n % DAYS
                    } else {
                        (n - first) * DAYS / count
                    };
                    entry(n, accounts, u32::try_from(day).unwrap_or(0))
                })
                .collect();
            serde_json::to_vec(&json!({ "entries": entries }))
        })
        .collect::<Result<_, _>>()?;
    // Each connection sends its share of the batches one after the other, so the server parses
    // one request while it commits another, as a real importer with a few workers would.
    let url = server.url("/api/v1/ledger/entries:batch");
    let concurrency = args.batch_concurrency;
    let mut shares: Vec<Vec<Vec<u8>>> = (0..concurrency).map(|_| Vec::new()).collect();
    for (index, body) in bodies.into_iter().enumerate() {
        shares[index % concurrency].push(body);
    }
    let started = Instant::now();
    let mut workers = Vec::new();
    for share in shares {
        let (http, url) = (http.clone(), url.clone());
        workers.push(tokio::spawn(async move {
            for body in share {
                let response = http
                    .post(&url)
                    .header("content-type", "application/json")
                    .body(body)
                    .send()
                    .await?;
                let status = response.status();
                let body = response.bytes().await?;
                ensure!(
                    status == 201,
                    "batch refused: {}",
                    String::from_utf8_lossy(&body)
                );
            }
            anyhow::Ok(())
        }));
    }
    for worker in workers {
        worker.await??;
    }
    Ok(count as f64 / started.elapsed().as_secs_f64())
}

struct SingleResult {
    posted: usize,
    per_second: f64,
    p50: Duration,
    p99: Duration,
}

/// One keep-alive HTTP/1.1 connection that writes requests and reads responses by hand, so
/// that the load generator spends little of the machine's CPU the server is measured on.
struct RawConnection {
    stream: tokio::io::BufReader<tokio::net::TcpStream>,
    host: String,
}

impl RawConnection {
    async fn open(base: &str) -> anyhow::Result<Self> {
        let host = base.trim_start_matches("http://").to_owned();
        let stream = tokio::net::TcpStream::connect(&host).await?;
        stream.set_nodelay(true)?;
        Ok(Self {
            stream: tokio::io::BufReader::new(stream),
            host,
        })
    }

    /// Sends one POST and returns the response status and body.
    async fn post(
        &mut self,
        path: &str,
        headers: &str,
        body: &[u8],
    ) -> anyhow::Result<(u16, Vec<u8>)> {
        self.send("POST", path, headers, body).await
    }

    /// Sends one request and returns the response status and body.
    async fn send(
        &mut self,
        method: &str,
        path: &str,
        headers: &str,
        body: &[u8],
    ) -> anyhow::Result<(u16, Vec<u8>)> {
        use tokio::io::{AsyncBufReadExt as _, AsyncReadExt as _, AsyncWriteExt as _};
        let mut request = format!(
            "{method} {path} HTTP/1.1\r\nHost: {}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n{headers}\r\n",
            self.host,
            body.len()
        )
        .into_bytes();
        request.extend_from_slice(body);
        // One write per request: a request split over two segments waits on delayed ACKs.
        self.stream.get_mut().write_all(&request).await?;
        let mut line = String::new();
        self.stream.read_line(&mut line).await?;
        let status: u16 = line
            .split_whitespace()
            .nth(1)
            .context("a status line")?
            .parse()?;
        let mut length = 0;
        loop {
            line.clear();
            self.stream.read_line(&mut line).await?;
            if line == "\r\n" || line.is_empty() {
                break;
            }
            if let Some((name, value)) = line.split_once(':')
                && name.eq_ignore_ascii_case("content-length")
            {
                length = value.trim().parse()?;
            }
        }
        let mut body = vec![0; length];
        self.stream.read_exact(&mut body).await?;
        Ok((status, body))
    }
}

/// The ledger writer's commit groups so far, from the server's Prometheus metrics.
#[derive(Debug, Default)]
struct WriterGroups {
    groups: f64,
    requests: f64,
    seconds: f64,
}

impl WriterGroups {
    async fn now(http: &reqwest::Client, server: &Server) -> anyhow::Result<Self> {
        let text = http
            .get(server.url("/metrics"))
            .send()
            .await?
            .text()
            .await?;
        let value = |name: &str| {
            text.lines()
                .find_map(|line| {
                    line.strip_prefix(name)?
                        .strip_prefix(' ')?
                        .trim()
                        .parse()
                        .ok()
                })
                .unwrap_or(0.0)
        };
        Ok(Self {
            groups: value("keel_ledger_commit_group_requests_count"),
            requests: value("keel_ledger_commit_group_requests_sum"),
            seconds: value("keel_ledger_commit_group_seconds_sum"),
        })
    }

    fn since(&self, earlier: &Self) -> Self {
        Self {
            groups: self.groups - earlier.groups,
            requests: self.requests - earlier.requests,
            seconds: self.seconds - earlier.seconds,
        }
    }
}

/// `clients` clients each post one entry at a time for `seconds`, each with its own key.
async fn single_entries(
    server: &Server,
    clients: usize,
    seconds: u64,
    accounts: usize,
) -> anyhow::Result<SingleResult> {
    let stop = Arc::new(AtomicBool::new(false));
    let posted = Arc::new(AtomicU64::new(0));
    let mut tasks = Vec::new();
    for client in 0..clients {
        let (stop, posted, base, token) = (
            stop.clone(),
            posted.clone(),
            server.base.clone(),
            server.token.clone(),
        );
        tasks.push(tokio::spawn(async move {
            let mut connection = RawConnection::open(&base).await?;
            let mut latencies = Vec::new();
            let mut n = client * 10_000_000;
            while !stop.load(Ordering::Relaxed) {
                // Live postings are dated today: all on one day, across all the accounts.
                let body = serde_json::to_vec(&entry(n, accounts, LIVE_DAY))?;
                let key =
                    format!("Idempotency-Key: single-{n}\r\nAuthorization: Bearer {token}\r\n");
                let started = Instant::now();
                let (status, reply) = connection
                    .post("/api/v1/ledger/entries", &key, &body)
                    .await?;
                ensure!(
                    status == 201,
                    "posting refused: {}",
                    String::from_utf8_lossy(&reply)
                );
                latencies.push(started.elapsed());
                posted.fetch_add(1, Ordering::Relaxed);
                n += 1;
            }
            anyhow::Ok(latencies)
        }));
    }
    let started = Instant::now();
    tokio::time::sleep(Duration::from_secs(seconds)).await;
    stop.store(true, Ordering::Relaxed);
    let mut latencies = Vec::new();
    for task in tasks {
        latencies.extend(task.await??);
    }
    let elapsed = started.elapsed();
    let (p50, p99) = p50_p99(&mut latencies);
    Ok(SingleResult {
        posted: usize::try_from(posted.load(Ordering::Relaxed))?,
        per_second: posted.load(Ordering::Relaxed) as f64 / elapsed.as_secs_f64(),
        p50,
        p99,
    })
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let backend = if args.postgres_url.is_some() {
        "PostgreSQL"
    } else {
        "SQLite"
    };
    let server = Server::start(&args).await?;
    let http = {
        let mut headers = reqwest::header::HeaderMap::new();
        headers.insert(
            reqwest::header::AUTHORIZATION,
            format!("Bearer {}", server.token).parse()?,
        );
        reqwest::Client::builder()
            .default_headers(headers)
            .build()?
    };
    check(http.get(server.url("/readyz")).send().await?, "readiness").await?;
    tokio::time::sleep(Duration::from_secs(1)).await;
    println!("backend: {backend}");
    println!(
        "idle resident memory: {:.1} MB",
        server.resident_bytes()? as f64 / 1e6
    );

    if let Some(plugin) = &args.plugin {
        return plugin_routes(&http, &server, plugin, &args).await;
    }
    set_up_chart(&http, &server, args.accounts).await?;
    let rate = ingest(&http, &server, &args, 0, args.batch_entries).await?;
    println!(
        "batch ingest: {} two-line entries in batches of {}: {rate:.0} entries/s",
        args.batch_entries, args.batch_size
    );
    if args.only_batch {
        return Ok(());
    }

    let mut entries_now = args.batch_entries;
    if !args.skip_single {
        let before = WriterGroups::now(&http, &server).await?;
        let single =
            single_entries(&server, args.clients, args.single_seconds, args.accounts).await?;
        let groups = WriterGroups::now(&http, &server).await?.since(&before);
        println!(
            "single-entry POST, {} clients, durable: {:.0} entries/s (latency p50 {:.1} ms, p99 {:.1} ms)",
            args.clients,
            single.per_second,
            single.p50.as_secs_f64() * 1e3,
            single.p99.as_secs_f64() * 1e3
        );
        if groups.groups > 0.0 {
            println!(
                "  the writer committed {:.0} groups of {:.1} requests on average, {:.2} ms each (busy {:.0} % of the run)",
                groups.groups,
                groups.requests / groups.groups,
                groups.seconds / groups.groups * 1e3,
                groups.seconds / args.single_seconds as f64 * 100.0
            );
        }
        entries_now += single.posted;
    }

    // Fill the ledger up to the line count the trial balance is measured at.
    let tb: Value = check(
        http.get(server.url("/api/v1/ledger/trial-balance?as_of=2025-12-31"))
            .send()
            .await?,
        "trial balance",
    )
    .await?;
    let missing_entries = (args.trial_balance_lines / 2).saturating_sub(entries_now);
    if missing_entries > 0 {
        ingest(&http, &server, &args, 20_000_000, missing_entries).await?;
    }
    ensure!(
        tb["balanced"] == true,
        "the trial balance does not balance: {tb}"
    );
    let mut latencies = Vec::with_capacity(args.trial_balance_requests);
    let mut rows = 0;
    for request in 0..args.trial_balance_requests {
        // The year end is past the last posting (the running totals); a month end sums whole
        // months; a mid-month date adds the days of its month.
        let as_of = TRIAL_BALANCE_DATES[request % TRIAL_BALANCE_DATES.len()];
        let path = format!("/api/v1/ledger/trial-balance?as_of={as_of}");
        let (body, latency) = timed_get(&http, &server, &path, "trial balance").await?;
        latencies.push((as_of, latency));
        rows = rows.max(body["rows"].as_array().map_or(0, Vec::len));
        ensure!(
            body["balanced"] == true,
            "the trial balance does not balance"
        );
    }
    for as_of in TRIAL_BALANCE_DATES {
        let mut these: Vec<Duration> = latencies
            .iter()
            .filter(|(d, _)| *d == as_of)
            .map(|(_, l)| *l)
            .collect();
        let (p50, p99) = p50_p99(&mut these);
        println!(
            "trial balance as of {as_of} over ~{} lines, {} accounts ({rows} rows): p50 {:.2} ms, p99 {:.2} ms (client-side, HTTP included)",
            args.trial_balance_lines,
            args.accounts,
            p50.as_secs_f64() * 1e3,
            p99.as_secs_f64() * 1e3
        );
    }
    audit_lookups(&http, &server, &args).await?;
    println!(
        "resident memory after the run: {:.1} MB",
        server.resident_bytes()? as f64 / 1e6
    );
    Ok(())
}

/// The audit trail of one posted entry, looked up by object among the records of every entry
/// posted so far (one per entry): what an auditor asks of a large ledger.
async fn audit_lookups(http: &reqwest::Client, server: &Server, args: &Args) -> anyhow::Result<()> {
    let oldest: Value = check(
        http.get(server.url("/api/v1/audit?limit=1&object_type=ledger.entry"))
            .send()
            .await?,
        "the first audit record of an entry",
    )
    .await?;
    let first_id: i64 = oldest["records"][0]["object_id"]
        .as_str()
        .and_then(|id| id.parse().ok())
        .context("the first entry's audit record")?;
    let entries = i64::try_from(args.trial_balance_lines / 2)?;
    let mut latencies = Vec::with_capacity(args.trial_balance_requests);
    for request in 0..args.trial_balance_requests {
        // Spread over the whole ledger, oldest to newest.
        let id = first_id + (i64::try_from(request)? * 7_919) % entries;
        let path = format!("/api/v1/audit?object_type=ledger.entry&object_id={id}");
        let (body, latency) = timed_get(http, server, &path, "the audit trail of an entry").await?;
        latencies.push(latency);
        ensure!(
            body["records"].as_array().map(Vec::len) == Some(1),
            "entry {id} has not exactly one audit record: {body}"
        );
    }
    let (p50, p99) = p50_p99(&mut latencies);
    println!(
        "audit trail of one entry among ~{entries} entries' records: p50 {:.2} ms, p99 {:.2} ms (client-side, HTTP included)",
        p50.as_secs_f64() * 1e3,
        p99.as_secs_f64() * 1e3
    );
    Ok(())
}

/// Installs the expense-claims component, enables it, and measures one reading and one
/// writing route of it from `args.clients` clients.
async fn plugin_routes(
    http: &reqwest::Client,
    server: &Server,
    plugin: &std::path::Path,
    args: &Args,
) -> anyhow::Result<()> {
    let bytes = std::fs::read(plugin).with_context(|| format!("reading {}", plugin.display()))?;
    let installed = check(
        http.post(server.url("/api/v1/plugins"))
            .body(bytes)
            .send()
            .await?,
        "installing the plugin",
    )
    .await?;
    let name = installed["name"]
        .as_str()
        .context("a plugin name")?
        .to_owned();
    check(
        http.patch(server.url(&format!("/api/v1/plugins/{name}")))
            .json(&json!({ "granted": installed["requested"], "status": "enabled" }))
            .send()
            .await?,
        "enabling the plugin",
    )
    .await?;
    let claim = json!({ "description": "Bench", "amount": "12.50", "date": "2025-06-01" });
    check(
        http.post(server.url(&format!("/api/v1/plugins/{name}/claims")))
            .json(&claim)
            .send()
            .await?,
        "submitting a claim",
    )
    .await?;
    println!(
        "plugin: {} ({} bytes)",
        plugin.display(),
        std::fs::metadata(plugin)?.len()
    );
    let body = serde_json::to_vec(&claim)?;
    for (method, path, body, expected) in [
        (
            "GET",
            format!("/api/v1/plugins/{name}/claims/1"),
            Vec::new(),
            200,
        ),
        ("POST", format!("/api/v1/plugins/{name}/claims"), body, 201),
    ] {
        let result = hammer(server, args, method, &path, &body, expected).await?;
        println!(
            "{method} {path}, {} clients: {:.0} requests/s (latency p50 {:.2} ms, p99 {:.2} ms)",
            args.clients,
            result.per_second,
            result.p50.as_secs_f64() * 1e3,
            result.p99.as_secs_f64() * 1e3
        );
    }
    println!(
        "resident memory after the run: {:.1} MB",
        server.resident_bytes()? as f64 / 1e6
    );
    Ok(())
}

/// `args.clients` clients each send one request at a time for `args.single_seconds`.
async fn hammer(
    server: &Server,
    args: &Args,
    method: &'static str,
    path: &str,
    body: &[u8],
    expected: u16,
) -> anyhow::Result<SingleResult> {
    let stop = Arc::new(AtomicBool::new(false));
    let done = Arc::new(AtomicU64::new(0));
    let mut tasks = Vec::new();
    for _ in 0..args.clients {
        let (stop, done, base) = (stop.clone(), done.clone(), server.base.clone());
        let headers = format!("Authorization: Bearer {}\r\n", server.token);
        let (path, body) = (path.to_owned(), body.to_vec());
        tasks.push(tokio::spawn(async move {
            let mut connection = RawConnection::open(&base).await?;
            let mut latencies = Vec::new();
            while !stop.load(Ordering::Relaxed) {
                let started = Instant::now();
                let (status, reply) = connection.send(method, &path, &headers, &body).await?;
                ensure!(
                    status == expected,
                    "{method} {path} answered {status}: {}",
                    String::from_utf8_lossy(&reply)
                );
                latencies.push(started.elapsed());
                done.fetch_add(1, Ordering::Relaxed);
            }
            anyhow::Ok(latencies)
        }));
    }
    let started = Instant::now();
    tokio::time::sleep(Duration::from_secs(args.single_seconds)).await;
    stop.store(true, Ordering::Relaxed);
    let mut latencies = Vec::new();
    for task in tasks {
        latencies.extend(task.await??);
    }
    let elapsed = started.elapsed();
    let (p50, p99) = p50_p99(&mut latencies);
    Ok(SingleResult {
        posted: latencies.len(),
        per_second: done.load(Ordering::Relaxed) as f64 / elapsed.as_secs_f64(),
        p50,
        p99,
    })
}
