//! Misbehaviour on request, one route per fault the sandbox must contain.

use keel_sdk::ledger::{self, Entry, Line};
use keel_sdk::parties;
use keel_sdk::storage::Collection;
use keel_sdk::{Error, Manifest, Plugin, Request, Response, Router};

fn line(account: &str, debit: Option<&str>, credit: Option<&str>) -> Line {
    Line {
        account: account.to_owned(),
        debit: debit.map(str::to_owned),
        credit: credit.map(str::to_owned),
        currency: None,
        rate: None,
        party: None,
        memo: None,
        dimensions: Vec::new(),
    }
}

fn post_entry() -> Result<i64, Error> {
    ledger::post(
        &Entry {
            date: "2025-03-01".to_owned(),
            memo: "posted by the faulty plugin".to_owned(),
            lines: vec![
                line("1020", Some("10.00"), None),
                line("4000", None, Some("10.00")),
            ],
            document: None,
        },
        None,
    )
}

/// Records the tests inspect: what the plugin was asked to remember, and how its
/// migrations went.
const DATA: Collection<serde_json::Value> = Collection::new("data");
const CONTROL: Collection<serde_json::Value> = Collection::new("control");

/// The version the manifest reports: the tests build this crate a second time as 2.0.0 to
/// upgrade to it.
const VERSION: &str = match option_env!("FAULTY_VERSION") {
    Some(version) => version,
    None => env!("CARGO_PKG_VERSION"),
};

struct Faulty;

impl Plugin for Faulty {
    fn manifest() -> Manifest {
        Manifest::new("faulty", VERSION, "Misbehaves on purpose").capabilities(&[
            "storage",
            "ledger:post",
            "parties:read",
        ])
    }

    fn migrate(from: Option<String>) -> Result<(), Error> {
        // Written first, so that a failing migration also proves its writes are undone.
        CONTROL.put("migrated-from", &serde_json::json!(from))?;
        if CONTROL.get("fail-migration")?.is_some() {
            return Err(Error::Conflict("asked to fail its migration".to_owned()));
        }
        Ok(())
    }

    fn handle_http(request: Request) -> Response {
        Router::new()
            .post("/remember", |request, _| {
                let value: serde_json::Value = request.json()?;
                DATA.put("remembered", &value)?;
                Ok(Response::json(201, &value))
            })
            .get("/write-in-get", |_, _| {
                DATA.put("remembered", &serde_json::json!("written by a GET"))?;
                Ok(Response::json(200, "wrote"))
            })
            .get("/remembered", |_, _| {
                Ok(Response::json(200, &DATA.get("remembered")?))
            })
            .get("/migrated-from", |_, _| {
                Ok(Response::json(200, &CONTROL.get("migrated-from")?))
            })
            .get("/version", |_, _| Ok(Response::json(200, VERSION)))
            .post("/fail-next-migration", |_, _| {
                CONTROL.put("fail-migration", &serde_json::json!(true))?;
                Ok(Response::json(200, "will fail"))
            })
            .delete("/fail-next-migration", |_, _| {
                CONTROL.delete("fail-migration")?;
                Ok(Response::json(200, "will succeed"))
            })
            .get("/ok", |_, _| Ok(Response::json(200, "fine")))
            .get("/sleep", |request, _| {
                let ms: u64 = request
                    .query
                    .strip_prefix("ms=")
                    .and_then(|n| n.parse().ok())
                    .unwrap_or(1000);
                std::thread::sleep(std::time::Duration::from_millis(ms));
                Ok(Response::json(200, "slept"))
            })
            .get("/escape", |_, _| {
                // What a plugin can reach of the machine: nothing but clocks and randomness.
                let files = std::fs::read_dir("/").map(|entries| entries.count()).ok();
                let environment = std::env::vars().count();
                let network = std::net::TcpStream::connect("127.0.0.1:5432").is_ok();
                let time = std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map(|d| d.as_secs())
                    .unwrap_or(0);
                Ok(Response::json(
                    200,
                    &serde_json::json!({
                        "files": files, "environment": environment, "network": network, "time": time
                    }),
                ))
            })
            .get("/loop", |_, _| {
                let mut counter: u64 = 0;
                loop {
                    counter = std::hint::black_box(counter.wrapping_add(1));
                }
            })
            .get("/allocate", |_, _| {
                // 1 GiB, touched so that it is really needed.
                let block = vec![1u8; 1 << 30];
                Ok(Response::json(
                    200,
                    &block.iter().map(|b| u64::from(*b)).sum::<u64>(),
                ))
            })
            .post("/post-then-trap", |_, _| {
                let id = post_entry()?;
                panic!("trapping after posting entry {id}");
            })
            .post("/post", |_, _| Ok(Response::json(201, &post_entry()?)))
            .post("/post-then-fail", |_, _| {
                post_entry()?;
                Err(Error::Conflict("changed my mind".to_owned()))
            })
            .get("/big-output", |request, _| {
                let bytes: usize = request
                    .query
                    .strip_prefix("bytes=")
                    .and_then(|n| n.parse().ok())
                    .unwrap_or(1 << 20);
                Ok(Response::json(200, &"x".repeat(bytes)))
            })
            .get("/parties", |_, _| {
                let page = parties::search(&parties::PartyQuery {
                    q: None,
                    role: None,
                    tag: None,
                    status: None,
                    after: None,
                    limit: Some(10),
                })?;
                Ok(Response::json(200, &page.parties.len()))
            })
            .get("/host-calls", |_, _| {
                for _ in 0..1_000_000 {
                    keel_sdk::allowed("plugins.faulty:anything");
                }
                Ok(Response::json(200, "done"))
            })
            .handle(request)
    }

    fn invoke(operation: String, input: String) -> Result<String, Error> {
        match operation.as_str() {
            "echo" => Ok(input),
            "fail" => Err(Error::invalid("input", "is never right")),
            other => Err(Error::NotFound(format!("no operation {other:?}"))),
        }
    }
}

keel_sdk::export!(Faulty);
