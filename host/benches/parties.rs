//! The customer master at scale: imports PARTIES generated parties (CSV, in-process, 100,000
//! rows per import) into a fresh SQLite database (or the PostgreSQL database named by
//! KEEL_BENCH_POSTGRES_URL), then times reading parties by id and searching by name fragment.
//! `cargo bench -p keel-host --bench parties`; figures in docs/PERFORMANCE.md.

use std::sync::Arc;
use std::time::{Duration, Instant};

use keel_host::audit::Origin;
use keel_host::authz::{Authz, Scope};
use keel_host::company::Companies;
use keel_host::db::{Database, Location};
use keel_host::parties::search::{PartyQuery, page};
use keel_host::parties::transfer::ImportOptions;
use keel_host::parties::{Parties, Viewer};

/// Parties in the database when reads are measured.
const PARTIES: usize = 1_000_000;
/// Rows per import file.
const ROWS_PER_IMPORT: usize = 100_000;
/// Reads by id measured.
const GETS: usize = 10_000;
/// Searches measured.
const SEARCHES: usize = 1_000;

const SYLLABLES: &[&str] = &[
    "ka", "lo", "mi", "ne", "ru", "ta", "vi", "zo", "bra", "cle", "dor", "fen", "gal", "hus",
    "jor", "kel", "lum", "mar", "nor", "pel", "quin", "ros", "sal", "tor", "ul", "ven", "wex",
    "yar", "zen", "ash", "bel", "cor", "dun", "eld", "fal", "gor", "hal", "ist", "jun", "kor",
];
const FORMS: &[&str] = &[
    "GmbH", "Ltd", "Inc", "LLC", "SA", "AG", "BV", "& Co", "Partners", "Group",
];

/// A small deterministic generator (xorshift), so every run measures the same data.
struct Random(u64);

impl Random {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }

    fn word(&mut self) -> String {
        let count = 2 + self.below(2);
        let mut word: String = (0..count)
            .map(|_| SYLLABLES[self.below(SYLLABLES.len())])
            .collect();
        if let Some(first) = word.get_mut(0..1) {
            first.make_ascii_uppercase();
        }
        word
    }
}

fn name(random: &mut Random) -> String {
    format!(
        "{} {} {}",
        random.word(),
        random.word(),
        FORMS[random.below(FORMS.len())]
    )
}

fn percentile(samples: &mut [Duration], p: f64) -> Duration {
    samples.sort_unstable();
    samples[((samples.len() as f64 * p) as usize).min(samples.len() - 1)]
}

fn main() {
    let runtime = tokio::runtime::Runtime::new().expect("a runtime");
    let dir = tempfile::tempdir().expect("a folder");
    let location = match std::env::var("KEEL_BENCH_POSTGRES_URL") {
        Ok(url) => Location::Postgres(url),
        Err(_) => Location::DataDir(dir.path().to_owned()),
    };
    runtime.block_on(async {
        let db = Database::open(&location).await.expect("a database");
        // As `keel serve` and `keel parties import` do.
        db.checkpoint_in_background();
        let companies = Companies::bootstrap(&db, None).await.expect("the company");
        let company = companies.default_company();
        let authz = Arc::new(Authz::load(&db).await.expect("the policy"));
        let parties = Parties::new(db.clone(), authz);
        let viewer = Viewer { user_id: 0, scope: Scope::All, team: Vec::new() };
        let origin = Origin::system();
        let mut random = Random(0x9E37_79B9_7F4A_7C15);
        let mut names = Vec::with_capacity(PARTIES);
        // Duplicate checks on, as an import runs by default.
        let options = ImportOptions::default();

        let mut refused = 0;
        for import in 0..PARTIES / ROWS_PER_IMPORT {
            let mut csv = String::from("external_id,name,kind,roles,emails,phones,tax_ids,address_city,address_country\n");
            for n in 0..ROWS_PER_IMPORT {
                let i = import * ROWS_PER_IMPORT + n;
                let party = name(&mut random);
                csv.push_str(&format!(
                    "P-{i},{party},organization,customer,billing{i}@example.com,+1 415 {i:07},vat:US{i:09},Springfield,US\n"
                ));
                names.push(party);
            }
            let started = Instant::now();
            let report = parties
                .import_csv(&company, &viewer, &csv, &options, &origin, &|_, _| {})
                .await
                .expect("the import");
            let elapsed = started.elapsed();
            refused += report.failed;
            assert!(report.created + report.failed == ROWS_PER_IMPORT, "{report:?}");
            println!(
                "import {} of {}: {ROWS_PER_IMPORT} rows in {:.2} s ({:.0} rows/s; {} refused as duplicates)",
                import + 1,
                PARTIES / ROWS_PER_IMPORT,
                elapsed.as_secs_f64(),
                ROWS_PER_IMPORT as f64 / elapsed.as_secs_f64(),
                report.failed
            );
        }

        let ids_issued = (PARTIES - refused) as i64;
        let mut gets = Vec::with_capacity(GETS);
        for _ in 0..GETS {
            let id = 1 + random.below(ids_issued as usize) as i64;
            let started = Instant::now();
            let party = parties.get(&company, &viewer, id).await;
            gets.push(started.elapsed());
            // Ids of refused duplicates were never allocated; every id up to the count exists.
            assert!(party.is_ok() || id > ids_issued, "{party:?}");
        }
        let p50 = percentile(&mut gets, 0.50);
        let p99 = percentile(&mut gets, 0.99);
        println!("get by id over {PARTIES} parties: p50 {p50:?}, p99 {p99:?}");

        // A fragment of a real name: five letters from inside one of its words.
        let mut searches = Vec::with_capacity(SEARCHES);
        let mut matched = 0;
        for _ in 0..SEARCHES {
            let party = &names[random.below(names.len())];
            let word = party.split(' ').max_by_key(|w| w.len()).expect("a word");
            let start = random.below(word.len().saturating_sub(4).max(1));
            let fragment = &word[start..(start + 5).min(word.len())];
            let query = PartyQuery { q: Some(fragment.to_owned()), ..PartyQuery::default() };
            let started = Instant::now();
            let found = parties
                .read(async |tx| page(tx, &company, &viewer, &query, 100).await)
                .await
                .expect("the search");
            searches.push(started.elapsed());
            matched += found.parties.len();
        }
        let p50 = percentile(&mut searches, 0.50);
        let p99 = percentile(&mut searches, 0.99);
        println!(
            "search by name fragment (5 letters) over {PARTIES} parties, first page of 100: p50 {p50:?}, p99 {p99:?} ({:.0} parties per page on average)",
            matched as f64 / SEARCHES as f64
        );
    });
}
