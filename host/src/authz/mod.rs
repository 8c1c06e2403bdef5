//! Authorization: role-based permissions per company with casbin (companies are its domains),
//! scoped to all records, the team's or the user's own; custom roles and grants that admins
//! manage without being able to give away more than they hold; and segregation-of-duties rules.
//!
//! The database holds roles, permissions and grants. Each process builds a casbin enforcer from
//! them and answers checks from a memo in front of it, rebuilt whenever the policy version in
//! the database moves (at once after a local change, within a poll interval after another
//! process's).

pub mod http;

use std::collections::HashMap;
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use casbin::function_map::{OperatorFunction, dynamic_to_str};
use casbin::prelude::*;
use chrono::{NaiveDate, Utc};
use serde::{Deserialize, Serialize};
use serde_json::json;
use utoipa::ToSchema;

use crate::audit::{self, Event, Origin};
use crate::db::{Database, Param, Row, Tx};
use crate::error::{Error, FieldError, Result};
use crate::on_conn;

/// How often a process looks for policy changes made by other processes.
pub const POLICY_POLL_INTERVAL: Duration = Duration::from_secs(2);

/// Permissions remembered per snapshot before the memo starts over.
const MEMO_ENTRIES_MAX: usize = 100_000;

const ROLE_NAME_CHARS_MAX: usize = 64;
const PERMISSIONS_PER_ROLE_MAX: usize = 200;

/// The casbin model: RBAC with domains (companies), resource patterns, and a scope that a
/// policy covers when it is at least as broad as the one asked for.
const MODEL: &str = r#"
[request_definition]
r = sub, dom, obj, act, scope

[policy_definition]
p = sub, dom, obj, act, scope

[role_definition]
g = _, _, _

[policy_effect]
e = some(where (p.eft == allow))

[matchers]
m = g(r.sub, p.sub, r.dom) && (p.dom == "*" || p.dom == r.dom) && keyMatch(r.obj, p.obj) && (p.act == "*" || p.act == r.act) && scopeCovers(p.scope, r.scope)
"#;

/// Which records a permission reaches: every record, those of the user's team (the user and
/// their direct reports), or the user's own.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize, ToSchema,
)]
#[serde(rename_all = "lowercase")]
pub enum Scope {
    Own,
    Team,
    All,
}

impl Scope {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Own => "own",
            Self::Team => "team",
            Self::All => "all",
        }
    }

    fn parse(text: &str) -> Option<Self> {
        match text {
            "own" => Some(Self::Own),
            "team" => Some(Self::Team),
            "all" => Some(Self::All),
            _ => None,
        }
    }
}

/// An action on a resource, as routes and services ask for it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Permission {
    pub resource: &'static str,
    pub action: &'static str,
}

impl std::fmt::Display for Permission {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}:{}", self.resource, self.action)
    }
}

/// The permissions the host checks. Custom roles combine these (or patterns over them).
pub mod perm {
    use super::Permission;

    const fn p(resource: &'static str, action: &'static str) -> Permission {
        Permission { resource, action }
    }

    pub const LEDGER_ACCOUNTS_READ: Permission = p("ledger.accounts", "read");
    pub const LEDGER_ACCOUNTS_WRITE: Permission = p("ledger.accounts", "write");
    pub const LEDGER_ENTRIES_READ: Permission = p("ledger.entries", "read");
    pub const LEDGER_ENTRIES_POST: Permission = p("ledger.entries", "post");
    pub const LEDGER_ENTRIES_REVERSE: Permission = p("ledger.entries", "reverse");
    pub const LEDGER_PERIODS_READ: Permission = p("ledger.periods", "read");
    pub const LEDGER_PERIODS_OPEN: Permission = p("ledger.periods", "open");
    pub const LEDGER_PERIODS_CLOSE: Permission = p("ledger.periods", "close");
    pub const LEDGER_PERIODS_REOPEN: Permission = p("ledger.periods", "reopen");
    pub const LEDGER_REPORTS_READ: Permission = p("ledger.reports", "read");
    pub const PARTIES_READ: Permission = p("parties", "read");
    pub const PARTIES_WRITE: Permission = p("parties", "write");
    pub const PARTIES_MERGE: Permission = p("parties", "merge");
    pub const PARTIES_IMPORT: Permission = p("parties", "import");
    pub const PARTIES_ERASE: Permission = p("parties", "erase");
    pub const PARTY_FIELDS_WRITE: Permission = p("parties.fields", "write");
    pub const USERS_READ: Permission = p("users", "read");
    pub const USERS_WRITE: Permission = p("users", "write");
    pub const ROLES_READ: Permission = p("roles", "read");
    pub const ROLES_WRITE: Permission = p("roles", "write");
    pub const AUDIT_READ: Permission = p("audit", "read");
    pub const PLUGINS_READ: Permission = p("plugins", "read");
    pub const PLUGINS_MANAGE: Permission = p("plugins", "manage");

    /// Every permission, for validating custom roles.
    pub const ALL: &[Permission] = &[
        LEDGER_ACCOUNTS_READ,
        LEDGER_ACCOUNTS_WRITE,
        LEDGER_ENTRIES_READ,
        LEDGER_ENTRIES_POST,
        LEDGER_ENTRIES_REVERSE,
        LEDGER_PERIODS_READ,
        LEDGER_PERIODS_OPEN,
        LEDGER_PERIODS_CLOSE,
        LEDGER_PERIODS_REOPEN,
        LEDGER_REPORTS_READ,
        PARTIES_READ,
        PARTIES_WRITE,
        PARTIES_MERGE,
        PARTIES_IMPORT,
        PARTIES_ERASE,
        PARTY_FIELDS_WRITE,
        USERS_READ,
        USERS_WRITE,
        ROLES_READ,
        ROLES_WRITE,
        AUDIT_READ,
        PLUGINS_READ,
        PLUGINS_MANAGE,
    ];
}

/// A permission as a role holds it: a resource (or pattern such as `ledger.*`), an action (or
/// `*`) and a scope.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Grant {
    #[schema(example = "ledger.entries")]
    pub resource: String,
    #[schema(example = "post")]
    pub action: String,
    /// Defaults to `all`.
    #[serde(default = "all_scope")]
    pub scope: Scope,
}

fn all_scope() -> Scope {
    Scope::All
}

struct BuiltInRole {
    name: &'static str,
    description: &'static str,
    grants: &'static [(&'static str, &'static str, Scope)],
}

/// The roles every company has. They are defined here, not in the database, so an upgrade that
/// adds a permission gives it to them.
const BUILT_IN_ROLES: &[BuiltInRole] = &[
    BuiltInRole {
        name: "admin",
        description: "Everything, including users, roles and the audit trail",
        grants: &[("*", "*", Scope::All)],
    },
    BuiltInRole {
        name: "accountant",
        description: "Keeps the books: accounts, entries, periods and reports; invoices, bills \
                      and payments; releases orders held for credit",
        grants: &[
            ("ledger.*", "*", Scope::All),
            ("parties", "*", Scope::All),
            ("plugins.invoicing", "use", Scope::All),
            ("plugins.invoicing.invoices", "*", Scope::All),
            ("plugins.invoicing.payments", "*", Scope::All),
            ("plugins.invoicing.bills", "*", Scope::All),
            ("plugins.invoicing.dunning", "*", Scope::All),
            ("plugins.invoicing.settings", "*", Scope::All),
            ("plugins.orders", "use", Scope::All),
            ("plugins.orders.orders", "read", Scope::All),
            ("plugins.orders.credit", "release", Scope::All),
        ],
    },
    BuiltInRole {
        name: "auditor",
        description: "Reads everything, the audit trail included; changes nothing",
        grants: &[("*", "read", Scope::All)],
    },
    BuiltInRole {
        name: "sales-rep",
        description: "Works the customers, leads, opportunities and quotes they own",
        grants: &[
            ("parties", "read", Scope::Own),
            ("parties", "write", Scope::Own),
            ("plugins.sfa", "use", Scope::All),
            ("plugins.sfa.leads", "*", Scope::Own),
            ("plugins.sfa.opportunities", "*", Scope::Own),
            ("plugins.sfa.activities", "*", Scope::Own),
            ("plugins.sfa.pipeline", "read", Scope::Own),
            ("plugins.cpq", "use", Scope::All),
            ("plugins.cpq.catalog", "read", Scope::All),
            ("plugins.cpq.quotes", "*", Scope::Own),
            ("plugins.orders", "use", Scope::All),
            ("plugins.orders.orders", "*", Scope::All),
            // Order history and credit status in the customer 360 view (through sfa).
            ("plugins.invoicing.invoices", "read", Scope::All),
        ],
    },
    BuiltInRole {
        name: "sales-manager",
        description: "Works the customers, leads, opportunities and quotes of their team, \
                      assigns them and approves discounts up to the manager's level",
        grants: &[
            ("parties", "read", Scope::Team),
            ("parties", "write", Scope::Team),
            ("plugins.sfa", "use", Scope::All),
            ("plugins.sfa.leads", "*", Scope::Team),
            ("plugins.sfa.opportunities", "*", Scope::Team),
            ("plugins.sfa.activities", "*", Scope::Team),
            ("plugins.sfa.pipeline", "read", Scope::Team),
            ("plugins.sfa.records", "assign", Scope::Team),
            ("plugins.cpq", "use", Scope::All),
            ("plugins.cpq.catalog", "read", Scope::All),
            ("plugins.cpq.quotes", "*", Scope::Team),
            ("plugins.cpq.discounts", "approve-manager", Scope::Team),
            ("plugins.orders", "use", Scope::All),
            ("plugins.orders.orders", "*", Scope::All),
            ("plugins.invoicing.invoices", "read", Scope::All),
        ],
    },
    BuiltInRole {
        name: "viewer",
        description: "Reads the books and the customer master",
        grants: &[
            ("ledger.*", "read", Scope::All),
            ("parties", "read", Scope::All),
        ],
    },
];

/// The segregation-of-duties rules every company starts with, disabled until an admin enables
/// them: a one-person finance team could not work otherwise.
const DEFAULT_DUTY_RULES: &[(&str, Permission, Permission)] = &[
    (
        "reopen-period-not-by-poster",
        perm::LEDGER_PERIODS_REOPEN,
        perm::LEDGER_ENTRIES_POST,
    ),
    (
        "reverse-entry-not-by-poster",
        perm::LEDGER_ENTRIES_REVERSE,
        perm::LEDGER_ENTRIES_POST,
    ),
];

/// A role as the API shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct RoleView {
    pub name: String,
    pub description: String,
    /// Built-in roles exist in every company and cannot be changed.
    pub built_in: bool,
    pub permissions: Vec<Grant>,
}

/// A custom role, new or replaced.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RoleDefinition {
    #[schema(example = "payables-clerk")]
    pub name: String,
    #[serde(default)]
    pub description: String,
    pub permissions: Vec<Grant>,
}

/// A segregation-of-duties rule: whoever did `conflicting_action` on a record (or, for a
/// period, on entries in it) may not do `action` on it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct DutyRule {
    pub id: i64,
    pub name: String,
    #[schema(example = "ledger.periods:reopen")]
    pub action: String,
    #[schema(example = "ledger.entries:post")]
    pub conflicting_action: String,
    pub enabled: bool,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewDutyRule {
    pub name: String,
    pub action: String,
    pub conflicting_action: String,
    #[serde(default = "enabled_by_default")]
    pub enabled: bool,
}

fn enabled_by_default() -> bool {
    true
}

/// What a duty rule is checked against.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DutySubject {
    /// One journal entry.
    Entry(i64),
    /// The entries dated in a period.
    Period { start: NaiveDate, end: NaiveDate },
}

/// (user, company, resource, action) of a permission check.
type MemoKey = (i64, i64, &'static str, &'static str);

/// The enforcer and its memo for one version of the policy.
struct Snapshot {
    version: i64,
    enforcer: Enforcer,
    memo: RwLock<HashMap<MemoKey, Option<Scope>>>,
}

impl std::fmt::Debug for Snapshot {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Snapshot")
            .field("version", &self.version)
            .finish_non_exhaustive()
    }
}

#[derive(Debug)]
pub struct Authz {
    db: Database,
    snapshot: RwLock<Arc<Snapshot>>,
    checked_at: RwLock<Instant>,
}

fn covers(granted: &str, asked: &str) -> bool {
    matches!((Scope::parse(granted), Scope::parse(asked)), (Some(g), Some(a)) if g >= a)
}

fn subject(user_id: i64) -> String {
    format!("user:{user_id}")
}

fn role_subject(role_id: i64) -> String {
    format!("role:{role_id}")
}

async fn policy_version(tx: &mut Tx) -> anyhow::Result<i64> {
    Ok(on_conn!(tx, conn => {
        sqlx::query("SELECT version FROM authz_policy_version WHERE id = 1").fetch_one(&mut *conn).await?.int("version")?
    }))
}

/// Marks the policy as changed, in the transaction that changes it.
async fn bump_version(tx: &mut Tx) -> anyhow::Result<()> {
    on_conn!(tx, conn => {
        sqlx::query("UPDATE authz_policy_version SET version = version + 1 WHERE id = 1").execute(&mut *conn).await?;
    });
    Ok(())
}

async fn build_snapshot(db: &Database) -> anyhow::Result<Snapshot> {
    let mut tx = db.begin_read().await?;
    let version = policy_version(&mut tx).await?;
    let permissions = tx
        .fetch_packed(
            "SELECT r.id, r.company_id, p.resource, p.action, p.scope FROM authz_permissions p \
             JOIN authz_roles r ON r.id = p.role_id",
            &["id", "company_id", "resource", "action", "scope"],
            &[],
        )
        .await?;
    let grants = tx
        .fetch_packed(
            "SELECT user_id, role_id, company_id FROM authz_grants",
            &["user_id", "role_id", "company_id"],
            &[],
        )
        .await?;
    tx.commit().await?;
    let model = DefaultModel::from_str(MODEL).await?;
    let mut enforcer = Enforcer::new(model, MemoryAdapter::default()).await?;
    enforcer.add_function(
        "scopeCovers",
        OperatorFunction::Arg2(|granted, asked| {
            covers(&dynamic_to_str(&granted), &dynamic_to_str(&asked)).into()
        }),
    );
    let mut policies = Vec::with_capacity(permissions.len());
    for row in &permissions {
        let domain = row
            .opt_int(1)?
            .map_or_else(|| "*".to_owned(), |id| id.to_string());
        policies.push(vec![
            role_subject(row.int(0)?),
            domain,
            row.text(2)?,
            row.text(3)?,
            row.text(4)?,
        ]);
    }
    let mut links = Vec::with_capacity(grants.len());
    for row in &grants {
        links.push(vec![
            subject(row.int(0)?),
            role_subject(row.int(1)?),
            row.int(2)?.to_string(),
        ]);
    }
    if !policies.is_empty() {
        enforcer.add_policies(policies).await?;
    }
    if !links.is_empty() {
        enforcer.add_grouping_policies(links).await?;
    }
    Ok(Snapshot {
        version,
        enforcer,
        memo: RwLock::default(),
    })
}

/// Asks casbin for the broadest scope the policy grants.
fn enforce(
    snapshot: &Snapshot,
    user_id: i64,
    company_id: i64,
    resource: &str,
    action: &str,
) -> Option<Scope> {
    let (user, domain) = (subject(user_id), company_id.to_string());
    [Scope::All, Scope::Team, Scope::Own]
        .into_iter()
        .find(|scope| {
            snapshot
                .enforcer
                .enforce((
                    user.as_str(),
                    domain.as_str(),
                    resource,
                    action,
                    scope.as_str(),
                ))
                .unwrap_or(false)
        })
}

/// Resources plugins define live under `plugins.<plugin name>`; the host cannot know their
/// actions, so roles may hold any action on them.
pub const PLUGIN_RESOURCE_PREFIX: &str = "plugins.";

fn is_plugin_resource(resource: &str) -> bool {
    resource
        .strip_prefix(PLUGIN_RESOURCE_PREFIX)
        .is_some_and(|rest| !rest.is_empty() && !rest.contains('*'))
}

/// Inserts a role's permission rows.
async fn insert_grants(tx: &mut Tx, role_id: i64, grants: &[Grant]) -> anyhow::Result<()> {
    for grant in grants {
        on_conn!(tx, conn => {
            sqlx::query("INSERT INTO authz_permissions (role_id, resource, action, scope) VALUES ($1, $2, $3, $4)")
                .bind(role_id)
                .bind(&grant.resource)
                .bind(&grant.action)
                .bind(grant.scope.as_str())
                .execute(&mut *conn)
                .await?;
        });
    }
    Ok(())
}

impl Authz {
    /// Makes sure the built-in roles and each company's default duty rules exist as defined in
    /// this version, and loads the policy.
    pub async fn load(db: &Database) -> anyhow::Result<Self> {
        seed(db).await?;
        let snapshot = build_snapshot(db).await?;
        Ok(Self {
            db: db.clone(),
            snapshot: RwLock::new(Arc::new(snapshot)),
            checked_at: RwLock::new(Instant::now()),
        })
    }

    fn current(&self) -> Arc<Snapshot> {
        self.snapshot
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }

    /// Rebuilds the enforcer from the database now.
    pub async fn reload(&self) -> anyhow::Result<()> {
        let snapshot = Arc::new(build_snapshot(&self.db).await?);
        *self
            .snapshot
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = snapshot;
        *self
            .checked_at
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = Instant::now();
        Ok(())
    }

    /// Reloads if another process changed the policy since the last look (at most one look per
    /// poll interval).
    pub async fn refresh_if_stale(&self) -> anyhow::Result<()> {
        if self
            .checked_at
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .elapsed()
            < POLICY_POLL_INTERVAL
        {
            return Ok(());
        }
        self.refresh().await
    }

    /// Reloads now if the policy in the database is newer than the one loaded. Before refusing
    /// a request, so that a grant made a moment ago by another process counts.
    pub async fn refresh(&self) -> anyhow::Result<()> {
        *self
            .checked_at
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = Instant::now();
        let mut tx = self.db.begin_read().await?;
        let version = policy_version(&mut tx).await?;
        tx.commit().await?;
        if version != self.current().version {
            self.reload().await?;
        }
        Ok(())
    }

    /// How far `permission` reaches for the user in the company, or `None` when it is denied.
    pub fn scope(&self, user_id: i64, company_id: i64, permission: Permission) -> Option<Scope> {
        let snapshot = self.current();
        let key = (user_id, company_id, permission.resource, permission.action);
        if let Some(scope) = snapshot
            .memo
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .get(&key)
        {
            return *scope;
        }
        let scope = enforce(
            &snapshot,
            user_id,
            company_id,
            permission.resource,
            permission.action,
        );
        let mut memo = snapshot
            .memo
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if memo.len() >= MEMO_ENTRIES_MAX {
            memo.clear();
        }
        memo.insert(key, scope);
        scope
    }

    /// The answer of the enforcer itself, without the memo in front of it: for benchmarks and
    /// diagnostics.
    pub fn scope_uncached(
        &self,
        user_id: i64,
        company_id: i64,
        permission: Permission,
    ) -> Option<Scope> {
        enforce(
            &self.current(),
            user_id,
            company_id,
            permission.resource,
            permission.action,
        )
    }

    /// How far a permission named at run time reaches, e.g. one a plugin defines
    /// (`plugins.expenses:approve`). Unmemoized: plugins ask rarely.
    pub fn scope_named(
        &self,
        user_id: i64,
        company_id: i64,
        resource: &str,
        action: &str,
    ) -> Option<Scope> {
        enforce(&self.current(), user_id, company_id, resource, action)
    }

    /// Whether the user holds `grant` (a resource pattern, action and scope) in the company:
    /// used to stop anyone from handing out more than they have.
    fn holds(&self, user_id: i64, company_id: i64, grant: &Grant) -> bool {
        let snapshot = self.current();
        snapshot
            .enforcer
            .enforce((
                subject(user_id).as_str(),
                company_id.to_string().as_str(),
                grant.resource.as_str(),
                grant.action.as_str(),
                grant.scope.as_str(),
            ))
            .unwrap_or(false)
    }

    /// The names of the roles the user holds in the company.
    pub async fn roles_of(&self, user_id: i64, company_id: i64) -> Result<Vec<String>> {
        let mut tx = self.db.begin_read().await?;
        let names = tx
            .fetch_packed(
                "SELECT r.name FROM authz_grants g JOIN authz_roles r ON r.id = g.role_id \
                 WHERE g.user_id = $1 AND g.company_id = $2",
                &["name"],
                &[Param::Int(Some(user_id)), Param::Int(Some(company_id))],
            )
            .await?
            .iter()
            .map(|row| row.text(0))
            .collect::<anyhow::Result<Vec<_>>>()?;
        tx.commit().await?;
        let mut names = names;
        names.sort();
        Ok(names)
    }

    /// The user and their direct reports: the records "the team" owns.
    pub async fn team_of(&self, user_id: i64) -> Result<Vec<i64>> {
        let mut tx = self.db.begin_read().await?;
        let mut team = tx
            .fetch_packed(
                "SELECT id FROM users WHERE manager_id = $1",
                &["id"],
                &[Param::Int(Some(user_id))],
            )
            .await?
            .iter()
            .map(|row| row.int(0))
            .collect::<anyhow::Result<Vec<_>>>()?;
        tx.commit().await?;
        team.push(user_id);
        team.sort_unstable();
        Ok(team)
    }

    async fn role_id(tx: &mut Tx, company_id: i64, name: &str) -> Result<(i64, bool)> {
        let row = on_conn!(tx, conn => {
            match sqlx::query(
                "SELECT id, built_in FROM authz_roles WHERE name = $1 AND (company_id IS NULL OR company_id = $2)",
            )
            .bind(name)
            .bind(company_id)
            .fetch_optional(&mut *conn)
            .await?
            {
                Some(row) => Some((row.int("id")?, row.flag("built_in")?)),
                None => None,
            }
        });
        row.ok_or_else(|| Error::NotFound(format!("there is no role {name:?} in this company")))
    }

    async fn role_grants(tx: &mut Tx, role_id: i64) -> anyhow::Result<Vec<Grant>> {
        let mut grants = tx
            .fetch_packed(
                "SELECT resource, action, scope FROM authz_permissions WHERE role_id = $1",
                &["resource", "action", "scope"],
                &[Param::Int(Some(role_id))],
            )
            .await?
            .iter()
            .map(|row| -> anyhow::Result<Grant> {
                Ok(Grant {
                    resource: row.text(0)?,
                    action: row.text(1)?,
                    scope: Scope::parse(&row.text(2)?).unwrap_or(Scope::Own),
                })
            })
            .collect::<anyhow::Result<Vec<_>>>()?;
        grants.sort();
        Ok(grants)
    }

    /// The roles available in the company: the built-in ones and its custom ones.
    pub async fn roles(&self, company_id: i64) -> Result<Vec<RoleView>> {
        let mut tx = self.db.begin_read().await?;
        let rows = tx
            .fetch_packed(
                "SELECT id, name, description, built_in FROM authz_roles WHERE company_id IS NULL OR company_id = $1",
                &["id", "name", "description", "built_in"],
                &[Param::Int(Some(company_id))],
            )
            .await?;
        let mut roles = Vec::with_capacity(rows.len());
        for row in &rows {
            roles.push(RoleView {
                name: row.text(1)?,
                description: row.text(2)?,
                built_in: row.flag(3)?,
                permissions: Self::role_grants(&mut tx, row.int(0)?).await?,
            });
        }
        tx.commit().await?;
        roles.sort_by(|a, b| (!a.built_in, &a.name).cmp(&(!b.built_in, &b.name)));
        Ok(roles)
    }

    fn validate_definition(&self, definition: &RoleDefinition) -> Result<()> {
        let mut errors = Vec::new();
        if crate::identity::check_username(&definition.name).is_err()
            || definition.name.len() > ROLE_NAME_CHARS_MAX
        {
            errors.push(FieldError::new(
                "name",
                "a role name has 1 to 64 lowercase letters, digits, '.', '-', '_'",
            ));
        }
        if BUILT_IN_ROLES.iter().any(|r| r.name == definition.name) {
            errors.push(FieldError::new(
                "name",
                format!("{} is a built-in role", definition.name),
            ));
        }
        if definition.permissions.is_empty()
            || definition.permissions.len() > PERMISSIONS_PER_ROLE_MAX
        {
            errors.push(FieldError::new(
                "permissions",
                format!("a role has 1 to {PERMISSIONS_PER_ROLE_MAX} permissions"),
            ));
        }
        for (index, grant) in definition.permissions.iter().enumerate() {
            let known = is_plugin_resource(&grant.resource)
                || perm::ALL.iter().any(|p| {
                    casbin::function_map::key_match(p.resource, &grant.resource)
                        && (grant.action == "*" || grant.action == p.action)
                });
            if !known {
                errors.push(FieldError::new(
                    format!("permissions[{index}]"),
                    format!(
                        "{}:{} matches no permission Keel knows",
                        grant.resource, grant.action
                    ),
                ));
            }
        }
        if errors.is_empty() {
            Ok(())
        } else {
            Err(Error::Invalid(errors))
        }
    }

    /// Refuses when `grantor` does not hold every one of `grants` in the company: nobody can
    /// create or hand out more than they have.
    fn check_escalation(
        &self,
        grantor: i64,
        company_id: i64,
        grants: &[Grant],
        what: &str,
    ) -> Result<()> {
        let missing: Vec<String> = grants
            .iter()
            .filter(|grant| !self.holds(grantor, company_id, grant))
            .map(|grant| {
                format!(
                    "{}:{} ({})",
                    grant.resource,
                    grant.action,
                    grant.scope.as_str()
                )
            })
            .collect();
        if missing.is_empty() {
            Ok(())
        } else {
            Err(Error::Forbidden(format!(
                "{what} would give permissions you do not hold: {}",
                missing.join(", ")
            )))
        }
    }

    pub async fn create_role(
        &self,
        tx: &mut Tx,
        company_id: i64,
        grantor: Option<i64>,
        definition: &RoleDefinition,
        origin: &Origin,
    ) -> Result<RoleView> {
        self.validate_definition(definition)?;
        if let Some(grantor) = grantor {
            self.check_escalation(
                grantor,
                company_id,
                &definition.permissions,
                &format!("role {}", definition.name),
            )?;
        }
        if Self::role_id(tx, company_id, &definition.name)
            .await
            .is_ok()
        {
            return Err(Error::Conflict(format!(
                "a role named {} exists already",
                definition.name
            )));
        }
        let role_id = on_conn!(tx, conn => {
            sqlx::query(
                "INSERT INTO authz_roles (company_id, name, description, built_in, created_at) VALUES ($1, $2, $3, FALSE, $4) RETURNING id",
            )
            .bind(company_id)
            .bind(&definition.name)
            .bind(&definition.description)
            .bind(Utc::now())
            .fetch_one(&mut *conn)
            .await?
            .int("id")?
        });
        let mut grants = definition.permissions.clone();
        grants.sort();
        grants.dedup_by(|a, b| a.resource == b.resource && a.action == b.action);
        insert_grants(tx, role_id, &grants).await?;
        bump_version(tx).await?;
        let role = RoleView {
            name: definition.name.clone(),
            description: definition.description.clone(),
            built_in: false,
            permissions: grants,
        };
        audit::append(
            tx,
            origin,
            &[Event::new(
                Some(company_id),
                "roles:create",
                "role",
                &definition.name,
                json!({ "after": role }),
            )],
        )
        .await?;
        Ok(role)
    }

    pub async fn replace_role(
        &self,
        tx: &mut Tx,
        company_id: i64,
        grantor: i64,
        name: &str,
        definition: &RoleDefinition,
        origin: &Origin,
    ) -> Result<RoleView> {
        let (role_id, built_in) = Self::role_id(tx, company_id, name).await?;
        if built_in {
            return Err(Error::Conflict(format!(
                "{name} is a built-in role and cannot be changed; create a custom role"
            )));
        }
        if definition.name != name {
            return Err(Error::invalid(
                "name",
                "a role keeps its name; create a new role instead",
            ));
        }
        self.validate_definition(definition)?;
        self.check_escalation(
            grantor,
            company_id,
            &definition.permissions,
            &format!("role {name}"),
        )?;
        let before = Self::role_grants(tx, role_id).await?;
        on_conn!(tx, conn => {
            sqlx::query("DELETE FROM authz_permissions WHERE role_id = $1").bind(role_id).execute(&mut *conn).await?;
            sqlx::query("UPDATE authz_roles SET description = $1 WHERE id = $2")
                .bind(&definition.description)
                .bind(role_id)
                .execute(&mut *conn)
                .await?;
        });
        let mut grants = definition.permissions.clone();
        grants.sort();
        grants.dedup_by(|a, b| a.resource == b.resource && a.action == b.action);
        insert_grants(tx, role_id, &grants).await?;
        bump_version(tx).await?;
        let role = RoleView {
            name: name.to_owned(),
            description: definition.description.clone(),
            built_in: false,
            permissions: grants,
        };
        audit::append(
            tx,
            origin,
            &[Event::new(
                Some(company_id),
                "roles:update",
                "role",
                name,
                json!({ "before": before, "after": role }),
            )],
        )
        .await?;
        Ok(role)
    }

    pub async fn delete_role(
        &self,
        tx: &mut Tx,
        company_id: i64,
        name: &str,
        origin: &Origin,
    ) -> Result<()> {
        let (role_id, built_in) = Self::role_id(tx, company_id, name).await?;
        if built_in {
            return Err(Error::Conflict(format!(
                "{name} is a built-in role and cannot be deleted"
            )));
        }
        let holders = on_conn!(tx, conn => {
            sqlx::query("SELECT COUNT(*) AS n FROM authz_grants WHERE role_id = $1").bind(role_id).fetch_one(&mut *conn).await?.int("n")?
        });
        if holders > 0 {
            return Err(Error::Conflict(format!(
                "{holders} users hold role {name}; revoke it from them first"
            )));
        }
        on_conn!(tx, conn => {
            sqlx::query("DELETE FROM authz_permissions WHERE role_id = $1").bind(role_id).execute(&mut *conn).await?;
            sqlx::query("DELETE FROM authz_roles WHERE id = $1").bind(role_id).execute(&mut *conn).await?;
        });
        bump_version(tx).await?;
        audit::append(
            tx,
            origin,
            &[Event::new(
                Some(company_id),
                "roles:delete",
                "role",
                name,
                json!({}),
            )],
        )
        .await?;
        Ok(())
    }

    /// Grants a role to a user in the company. `grantor` is `None` only for the bootstrap CLI,
    /// which runs with the operator's full access to the database.
    pub async fn grant(
        &self,
        tx: &mut Tx,
        company_id: i64,
        user_id: i64,
        role: &str,
        grantor: Option<i64>,
        origin: &Origin,
    ) -> Result<()> {
        let (role_id, _) = Self::role_id(tx, company_id, role).await?;
        if let Some(grantor) = grantor {
            let grants = Self::role_grants(tx, role_id).await?;
            self.check_escalation(grantor, company_id, &grants, &format!("granting {role}"))?;
        }
        let exists = on_conn!(tx, conn => {
            sqlx::query("SELECT COUNT(*) AS n FROM authz_grants WHERE user_id = $1 AND role_id = $2 AND company_id = $3")
                .bind(user_id)
                .bind(role_id)
                .bind(company_id)
                .fetch_one(&mut *conn)
                .await?
                .int("n")?
        });
        if exists > 0 {
            return Err(Error::Conflict(format!(
                "user {user_id} holds role {role} already"
            )));
        }
        on_conn!(tx, conn => {
            sqlx::query("INSERT INTO authz_grants (user_id, role_id, company_id, granted_at, granted_by) VALUES ($1, $2, $3, $4, $5)")
                .bind(user_id)
                .bind(role_id)
                .bind(company_id)
                .bind(Utc::now())
                .bind(grantor)
                .execute(&mut *conn)
                .await?;
        });
        bump_version(tx).await?;
        audit::append(
            tx,
            origin,
            &[Event::new(
                Some(company_id),
                "roles:grant",
                "user",
                user_id,
                json!({ "role": role }),
            )],
        )
        .await?;
        Ok(())
    }

    pub async fn revoke(
        &self,
        tx: &mut Tx,
        company_id: i64,
        user_id: i64,
        role: &str,
        origin: &Origin,
    ) -> Result<()> {
        let (role_id, _) = Self::role_id(tx, company_id, role).await?;
        let removed = on_conn!(tx, conn => {
            sqlx::query("DELETE FROM authz_grants WHERE user_id = $1 AND role_id = $2 AND company_id = $3")
                .bind(user_id)
                .bind(role_id)
                .bind(company_id)
                .execute(&mut *conn)
                .await?
                .rows_affected()
        });
        if removed == 0 {
            return Err(Error::NotFound(format!(
                "user {user_id} does not hold role {role}"
            )));
        }
        if role == "admin" {
            let admins_left = on_conn!(tx, conn => {
                sqlx::query("SELECT COUNT(*) AS n FROM authz_grants WHERE role_id = $1 AND company_id = $2")
                    .bind(role_id)
                    .bind(company_id)
                    .fetch_one(&mut *conn)
                    .await?
                    .int("n")?
            });
            if admins_left == 0 {
                return Err(Error::Conflict(
                    "this is the company's last admin; grant admin to someone else first".into(),
                ));
            }
        }
        bump_version(tx).await?;
        audit::append(
            tx,
            origin,
            &[Event::new(
                Some(company_id),
                "roles:revoke",
                "user",
                user_id,
                json!({ "role": role }),
            )],
        )
        .await?;
        Ok(())
    }

    /// The companies in which the user holds any role.
    pub async fn companies_of(&self, tx: &mut Tx, user_id: i64) -> Result<Vec<i64>> {
        let mut companies = tx
            .fetch_packed(
                "SELECT DISTINCT company_id FROM authz_grants WHERE user_id = $1",
                &["company_id"],
                &[Param::Int(Some(user_id))],
            )
            .await?
            .iter()
            .map(|row| row.int(0))
            .collect::<anyhow::Result<Vec<_>>>()?;
        companies.sort_unstable();
        Ok(companies)
    }

    /// An administrator may manage a user only if they may manage users in every company the
    /// user works in: an admin of one company cannot take over another's people.
    pub async fn check_can_manage_user(&self, tx: &mut Tx, actor: i64, target: i64) -> Result<()> {
        for company in self.companies_of(tx, target).await? {
            if self.scope(actor, company, perm::USERS_WRITE) != Some(Scope::All) {
                return Err(Error::Forbidden(format!(
                    "user {target} also works in company {company}, where you may not manage users"
                )));
            }
        }
        Ok(())
    }

    pub async fn duty_rules(&self, company_id: i64) -> Result<Vec<DutyRule>> {
        let mut tx = self.db.begin_read().await?;
        let rules = duty_rules_in(&mut tx, company_id, None).await?;
        tx.commit().await?;
        Ok(rules)
    }

    pub async fn create_duty_rule(
        &self,
        tx: &mut Tx,
        company_id: i64,
        new: &NewDutyRule,
        origin: &Origin,
    ) -> Result<DutyRule> {
        let known = |text: &str| perm::ALL.iter().any(|p| p.to_string() == text);
        let mut errors = Vec::new();
        if crate::identity::check_username(&new.name).is_err() {
            errors.push(FieldError::new(
                "name",
                "a rule name has lowercase letters, digits, '.', '-', '_'",
            ));
        }
        if !known(&new.action) {
            errors.push(FieldError::new(
                "action",
                format!("{} is not a permission Keel knows", new.action),
            ));
        }
        if !known(&new.conflicting_action) {
            errors.push(FieldError::new(
                "conflicting_action",
                format!("{} is not a permission Keel knows", new.conflicting_action),
            ));
        }
        if !errors.is_empty() {
            return Err(Error::Invalid(errors));
        }
        if duty_rules_in(tx, company_id, None)
            .await?
            .iter()
            .any(|r| r.name == new.name)
        {
            return Err(Error::Conflict(format!(
                "a duty rule named {} exists already",
                new.name
            )));
        }
        let id = on_conn!(tx, conn => {
            sqlx::query(
                "INSERT INTO authz_duty_rules (company_id, name, action, conflicting_action, enabled, created_at) \
                 VALUES ($1, $2, $3, $4, $5, $6) RETURNING id",
            )
            .bind(company_id)
            .bind(&new.name)
            .bind(&new.action)
            .bind(&new.conflicting_action)
            .bind(new.enabled)
            .bind(Utc::now())
            .fetch_one(&mut *conn)
            .await?
            .int("id")?
        });
        bump_version(tx).await?;
        let rule = DutyRule {
            id,
            name: new.name.clone(),
            action: new.action.clone(),
            conflicting_action: new.conflicting_action.clone(),
            enabled: new.enabled,
        };
        audit::append(
            tx,
            origin,
            &[Event::new(
                Some(company_id),
                "roles:create-duty-rule",
                "duty-rule",
                id,
                json!({ "after": rule }),
            )],
        )
        .await?;
        Ok(rule)
    }

    pub async fn set_duty_rule_enabled(
        &self,
        tx: &mut Tx,
        company_id: i64,
        id: i64,
        enabled: bool,
        origin: &Origin,
    ) -> Result<DutyRule> {
        let before = duty_rules_in(tx, company_id, Some(id))
            .await?
            .pop()
            .ok_or_else(|| Error::NotFound(format!("no duty rule {id}")))?;
        on_conn!(tx, conn => {
            sqlx::query("UPDATE authz_duty_rules SET enabled = $1 WHERE id = $2").bind(enabled).bind(id).execute(&mut *conn).await?;
        });
        bump_version(tx).await?;
        let after = DutyRule {
            enabled,
            ..before.clone()
        };
        audit::append(
            tx,
            origin,
            &[Event::new(
                Some(company_id),
                "roles:update-duty-rule",
                "duty-rule",
                id,
                json!({ "before": before, "after": after }),
            )],
        )
        .await?;
        Ok(after)
    }

    /// Refuses `action` to the user when an enabled duty rule says they did the conflicting
    /// action on the same subject.
    pub async fn check_duties(
        &self,
        tx: &mut Tx,
        company_id: i64,
        user_id: i64,
        action: Permission,
        subject: DutySubject,
    ) -> Result<()> {
        let rules: Vec<DutyRule> = duty_rules_in(tx, company_id, None)
            .await?
            .into_iter()
            .filter(|rule| rule.enabled && rule.action == action.to_string())
            .collect();
        for rule in rules {
            let conflicting = rule.conflicting_action.as_str();
            let (sql, params, what) = match subject {
                DutySubject::Entry(id) => (
                    "SELECT COUNT(*) AS n FROM audit_log WHERE object_type = 'ledger.entry' AND object_id = $1 \
                     AND actor_user_id = $2 AND action = $3"
                        .to_owned(),
                    vec![Param::Text(Some(id.to_string())), Param::Int(Some(user_id)), Param::Text(Some(conflicting.to_owned()))],
                    format!("entry {id}"),
                ),
                DutySubject::Period { start, end } => {
                    let kind = if conflicting == perm::LEDGER_ENTRIES_REVERSE.to_string() { "reversal" } else { "standard" };
                    (
                        format!(
                            "SELECT COUNT(*) AS n FROM ledger_entries WHERE company_id = $1 AND posted_by = $2 \
                             AND entry_date >= $3 AND entry_date <= $4 AND kind = '{kind}'"
                        ),
                        vec![Param::Int(Some(company_id)), Param::Int(Some(user_id)), Param::Date(Some(start)), Param::Date(Some(end))],
                        format!("entries dated {start} to {end}"),
                    )
                }
            };
            let conflicts = tx
                .fetch_packed(&format!("SELECT n FROM ({sql}) AS c"), &["n"], &params)
                .await?;
            if conflicts
                .first()
                .map(|row| row.int(0))
                .transpose()?
                .unwrap_or(0)
                > 0
            {
                return Err(Error::Forbidden(format!(
                    "segregation of duties (rule {}): you did {conflicting} on {what}, so someone else must do {action}",
                    rule.name
                )));
            }
        }
        Ok(())
    }
}

async fn duty_rules_in(tx: &mut Tx, company_id: i64, id: Option<i64>) -> Result<Vec<DutyRule>> {
    let mut rules = tx
        .fetch_packed(
            "SELECT id, name, action, conflicting_action, enabled FROM authz_duty_rules \
             WHERE company_id = $1 AND ($2 IS NULL OR id = $2)",
            &["id", "name", "action", "conflicting_action", "enabled"],
            &[Param::Int(Some(company_id)), Param::Int(id)],
        )
        .await?
        .iter()
        .map(|row| -> anyhow::Result<DutyRule> {
            Ok(DutyRule {
                id: row.int(0)?,
                name: row.text(1)?,
                action: row.text(2)?,
                conflicting_action: row.text(3)?,
                enabled: row.flag(4)?,
            })
        })
        .collect::<anyhow::Result<Vec<_>>>()?;
    rules.sort_by_key(|r| r.id);
    Ok(rules)
}

/// Gives a company the default (disabled) segregation-of-duties rules.
pub async fn add_default_duty_rules(tx: &mut Tx, company_id: i64) -> anyhow::Result<()> {
    for (name, action, conflicting) in DEFAULT_DUTY_RULES {
        on_conn!(tx, conn => {
            sqlx::query(
                "INSERT INTO authz_duty_rules (company_id, name, action, conflicting_action, enabled, created_at) \
                 VALUES ($1, $2, $3, $4, FALSE, $5)",
            )
            .bind(company_id)
            .bind(*name)
            .bind(action.to_string())
            .bind(conflicting.to_string())
            .bind(Utc::now())
            .execute(&mut *conn)
            .await?;
        });
    }
    bump_version(tx).await
}

/// Writes the built-in roles as this version defines them, and each company's default duty
/// rules when it has none yet.
async fn seed(db: &Database) -> anyhow::Result<()> {
    let mut tx = db.begin_write().await?;
    let mut changed = false;
    for role in BUILT_IN_ROLES {
        let existing = on_conn!(&mut tx, conn => {
            sqlx::query("SELECT id FROM authz_roles WHERE company_id IS NULL AND name = $1")
                .bind(role.name)
                .fetch_optional(&mut *conn)
                .await?
                .map(|row| row.int("id"))
                .transpose()?
        });
        let wanted: Vec<Grant> = {
            let mut grants: Vec<Grant> = role
                .grants
                .iter()
                .map(|(resource, action, scope)| Grant {
                    resource: (*resource).into(),
                    action: (*action).into(),
                    scope: *scope,
                })
                .collect();
            grants.sort();
            grants
        };
        let role_id = match existing {
            Some(id) => {
                if Authz::role_grants(&mut tx, id).await? == wanted {
                    continue;
                }
                on_conn!(&mut tx, conn => {
                    sqlx::query("DELETE FROM authz_permissions WHERE role_id = $1").bind(id).execute(&mut *conn).await?;
                });
                id
            }
            None => on_conn!(&mut tx, conn => {
                sqlx::query(
                    "INSERT INTO authz_roles (company_id, name, description, built_in, created_at) VALUES (NULL, $1, $2, TRUE, $3) RETURNING id",
                )
                .bind(role.name)
                .bind(role.description)
                .bind(Utc::now())
                .fetch_one(&mut *conn)
                .await?
                .int("id")?
            }),
        };
        insert_grants(&mut tx, role_id, &wanted).await?;
        changed = true;
    }
    let companies = tx
        .fetch_packed(
            "SELECT id FROM companies WHERE id NOT IN (SELECT company_id FROM authz_duty_rules)",
            &["id"],
            &[],
        )
        .await?;
    for company in &companies {
        add_default_duty_rules(&mut tx, company.int(0)?).await?;
        changed = true;
    }
    if changed {
        bump_version(&mut tx).await?;
        audit::append(
            &mut tx,
            &Origin::system(),
            &[Event::new(
                None,
                "roles:seed",
                "role",
                "built-in",
                json!({ "roles": BUILT_IN_ROLES.iter().map(|r| r.name).collect::<Vec<_>>() }),
            )],
        )
        .await?;
    }
    tx.commit().await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_broader_scope_covers_a_narrower_one() {
        assert!(covers("all", "own"));
        assert!(covers("team", "own"));
        assert!(covers("team", "team"));
        assert!(!covers("own", "team"));
        assert!(!covers("team", "all"));
        assert!(!covers("bogus", "own"));
    }

    #[test]
    fn every_built_in_grant_names_known_permissions() {
        for role in BUILT_IN_ROLES {
            for (resource, action, _) in role.grants {
                // The first-party sales modules' own permissions, which the host cannot list.
                if is_plugin_resource(resource) {
                    continue;
                }
                assert!(
                    perm::ALL
                        .iter()
                        .any(|p| casbin::function_map::key_match(p.resource, resource)
                            && (*action == "*" || *action == p.action)),
                    "{}: {resource}:{action}",
                    role.name
                );
            }
        }
    }
}
