//! How long a permission check takes: answered from the memo in front of the enforcer (every
//! check after the first for a user, company and permission), and by casbin itself.

use std::hint::black_box;

use criterion::{Criterion, criterion_group, criterion_main};
use keel_host::audit::Origin;
use keel_host::authz::{Authz, perm};
use keel_host::company::Companies;
use keel_host::db::{Database, Location};
use keel_host::identity::{Identity, NewUser};

/// Users and custom roles in the benchmark's policy, so that the enforcer has real work to do.
const USERS: usize = 200;

fn permission_checks(c: &mut Criterion) {
    let runtime = tokio::runtime::Runtime::new().expect("a runtime");
    let dir = tempfile::tempdir().expect("a folder");
    let (authz, company, user) = runtime.block_on(async {
        let db = Database::open(&Location::DataDir(dir.path().to_owned()))
            .await
            .expect("a database");
        let companies = Companies::bootstrap(&db, None).await.expect("a company");
        let company = companies.default_company().id;
        let authz = Authz::load(&db).await.expect("the policy");
        let identity = Identity::new(db.clone());
        let roles = [
            "admin",
            "accountant",
            "auditor",
            "viewer",
            "sales-rep",
            "sales-manager",
        ];
        let mut tx = db.begin_write().await.expect("a transaction");
        let mut last = 0;
        for n in 0..USERS {
            let new = NewUser {
                username: format!("user{n}"),
                display_name: None,
                email: None,
                kind: None,
                password: None,
                manager: None,
            };
            let user = identity
                .create_user(&mut tx, &new, &Origin::system())
                .await
                .expect("a user");
            authz
                .grant(
                    &mut tx,
                    company,
                    user.id,
                    roles[n % roles.len()],
                    None,
                    &Origin::system(),
                )
                .await
                .expect("a grant");
            last = user.id;
        }
        tx.commit().await.expect("commit");
        authz.reload().await.expect("reload");
        (authz, company, last)
    });
    c.bench_function("permission check, memoized", |b| {
        b.iter(|| black_box(authz.scope(black_box(user), company, perm::LEDGER_ENTRIES_POST)))
    });
    c.bench_function("permission check, casbin enforcer", |b| {
        b.iter(|| {
            black_box(authz.scope_uncached(black_box(user), company, perm::LEDGER_ENTRIES_POST))
        })
    });
}

criterion_group!(benches, permission_checks);
criterion_main!(benches);
