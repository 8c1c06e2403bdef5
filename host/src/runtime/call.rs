//! One call of a plugin: the store's data ([`CallState`]) and the host side of every import.
//!
//! Each host call is counted against the call's limit, checked against the plugin's grants and
//! the acting user's permissions, and runs on the call's one transaction, which begins with
//! the first host call that needs the database. Writes run under a savepoint, so a refused
//! write (a duplicate, an unbalanced entry) leaves the transaction usable on every backend.

use std::collections::BTreeMap;
use std::sync::{Arc, Weak};

use serde_json::json;
use wasmtime::ResourceLimiter;
use wasmtime::component::ResourceTable;
use wasmtime_wasi::{WasiCtx, WasiCtxView, WasiView};

use super::bindings::latest::keel::platform::{
    authz as wit_authz, ledger as wit_ledger, log as wit_log, parties as wit_parties,
    storage as wit_storage, types,
};
use super::bindings::{WitError, WitFieldError};
use super::capability::Capability;
use super::declarations::Declarations;
use super::index;
use super::limits::Limits;
use super::storage as records;
use crate::audit::{Event, Origin};
use crate::authz::{Authz, Permission, Scope, perm};
use crate::company::Company;
use crate::db::{Database, Tx};
use crate::error::Error;
use crate::ledger::model::{EntryDraft, EntryInput, LineInput, SourceRef};
use crate::ledger::{posting, reports};
use crate::on_conn;
use crate::parties::Viewer;
use crate::parties::model::{NewParty, PartyChanges};
use crate::parties::search::PartyQuery;

/// Table elements a plugin may grow its tables to.
const TABLE_ELEMENTS_MAX: usize = 1_000_000;

/// Who a call acts for and what it may do.
#[derive(Debug, Clone)]
pub struct CallContext {
    pub company: Company,
    pub plugin: String,
    pub granted: Vec<Capability>,
    /// The user the plugin acts for; none when the host calls it on its own account.
    pub user: Option<i64>,
    /// Recorded with every change; names the plugin as well as the user.
    pub origin: Origin,
    pub limits: Limits,
    /// A read-only call (an HTTP GET or HEAD) reads one snapshot, concurrently with other
    /// calls, and may not write.
    pub read_only: bool,
    /// What the plugin's manifest declares (indexes, extension points ...).
    pub declarations: Arc<Declarations>,
    /// How many plugin calls enclose this one: 0 for a call from the host.
    pub depth: u32,
    /// Leaves the call's audit records in [`CallState::pending_audit`] for the caller to
    /// append (the dispatcher appends a whole round's at once).
    pub defer_audit: bool,
}

impl CallContext {
    /// Whose records the call reads and writes.
    fn owner(&self) -> records::Owner<'_> {
        records::Owner {
            company_id: self.company.id,
            plugin: &self.plugin,
        }
    }
}

/// Why a call was stopped by the host rather than finishing on its own.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Stop {
    Fuel,
    Memory,
    HostCalls,
    WallTime,
    Output,
}

impl Stop {
    pub fn describe(&self, limits: &Limits) -> String {
        match self {
            Self::Fuel => format!("used its CPU budget ({} fuel)", limits.fuel),
            Self::Memory => format!(
                "asked for more than {} bytes of memory",
                limits.memory_bytes
            ),
            Self::HostCalls => format!("made more than {} host calls", limits.host_calls),
            Self::WallTime => format!("ran longer than {} ms", limits.wall_time_ms),
            Self::Output => format!("answered with more than {} bytes", limits.output_bytes),
        }
    }
}

/// An error that ends the call (a trap from the guest's point of view).
#[derive(Debug, thiserror::Error)]
#[error("the call was stopped: {0:?}")]
pub struct Stopped(pub Stop);

/// Counts linear memory across the component's memories and refuses growth past the limit.
#[derive(Debug)]
pub struct CallLimiter {
    memory_max: usize,
    memory_used: usize,
    pub memory_refused: bool,
}

impl ResourceLimiter for CallLimiter {
    fn memory_growing(
        &mut self,
        current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        let total = self.memory_used - current.min(self.memory_used) + desired;
        if total > self.memory_max {
            self.memory_refused = true;
            return Ok(false);
        }
        self.memory_used = total;
        Ok(true)
    }

    fn table_growing(
        &mut self,
        _current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        Ok(desired <= TABLE_ELEMENTS_MAX)
    }
}

/// The services host calls reach.
#[derive(Debug, Clone)]
pub struct Services {
    pub db: Database,
    pub authz: Arc<Authz>,
    /// For host calls that call other plugins.
    pub runtime: Weak<super::Runtime>,
}

/// The data of one call's store.
pub struct CallState {
    pub context: CallContext,
    pub(super) services: Services,
    /// The call's transaction, once a host call needed the database.
    pub tx: Option<Tx>,
    pub limiter: CallLimiter,
    host_calls: u32,
    /// Host calls refused for a missing grant or permission.
    pub denied: u32,
    pub stop: Option<Stop>,
    /// Audit records of the call's storage writes, appended in one go when the call ends
    /// (by [`super::Runtime::run`], or by the dispatcher for a whole round).
    pub pending_audit: Vec<Event>,
    viewer: Option<Viewer>,
    wasi: WasiCtx,
    table: ResourceTable,
}

impl std::fmt::Debug for CallState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CallState")
            .field("context", &self.context)
            .field("host_calls", &self.host_calls)
            .field("stop", &self.stop)
            .finish_non_exhaustive()
    }
}

impl WasiView for CallState {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView {
            ctx: &mut self.wasi,
            table: &mut self.table,
        }
    }
}

impl CallState {
    /// A call with no transaction yet, or continuing `tx` (an upgrade's migration runs in the
    /// transaction that switches versions).
    pub fn new(context: CallContext, services: Services, tx: Option<Tx>) -> Self {
        let memory_max = usize::try_from(context.limits.memory_bytes).unwrap_or(usize::MAX);
        Self {
            context,
            services,
            tx,
            limiter: CallLimiter {
                memory_max,
                memory_used: 0,
                memory_refused: false,
            },
            host_calls: 0,
            denied: 0,
            stop: None,
            pending_audit: Vec::new(),
            viewer: None,
            // No preopened directories, no environment, no network, no stdin: clocks and
            // randomness only.
            wasi: WasiCtx::builder().build(),
            table: ResourceTable::new(),
        }
    }

    /// Counts a host call, stopping the call past the limit.
    pub(super) fn count(&mut self) -> wasmtime::Result<()> {
        self.host_calls += 1;
        if self.host_calls > self.context.limits.host_calls {
            self.stop = Some(Stop::HostCalls);
            return Err(wasmtime::Error::new(Stopped(Stop::HostCalls)));
        }
        Ok(())
    }

    /// Counts the call and checks the grant and the user's permission; the scope the user's
    /// permission reaches (all for calls without a user).
    pub(super) fn enter(
        &mut self,
        capability: Capability,
        permission: Option<Permission>,
    ) -> wasmtime::Result<Result<Scope, WitError>> {
        self.count()?;
        if !self.context.granted.contains(&capability) {
            self.denied += 1;
            return Ok(Err(WitError::Denied(format!(
                "plugin {} has not been granted {capability}; an admin grants it with \
                 `keel plugin grant {} {capability}`",
                self.context.plugin, self.context.plugin
            ))));
        }
        let (Some(user), Some(permission)) = (self.context.user, permission) else {
            return Ok(Ok(Scope::All));
        };
        match self
            .services
            .authz
            .scope(user, self.context.company.id, permission)
        {
            Some(scope) => Ok(Ok(scope)),
            None => {
                self.denied += 1;
                Ok(Err(WitError::Denied(format!(
                    "the user the plugin acts for lacks the permission {permission}"
                ))))
            }
        }
    }

    pub(super) async fn tx(&mut self) -> wasmtime::Result<&mut Tx> {
        if self.tx.is_none() {
            let db = &self.services.db;
            let begun = if self.context.read_only {
                db.begin_read().await
            } else {
                db.begin_write().await
            };
            self.tx = Some(begun.map_err(from_anyhow)?);
        }
        Ok(self.tx.as_mut().expect("begun above"))
    }

    async fn viewer(&mut self, scope: Scope) -> wasmtime::Result<Viewer> {
        if let Some(viewer) = &self.viewer
            && viewer.scope == scope
        {
            return Ok(viewer.clone());
        }
        let user_id = self.context.user.unwrap_or_default();
        let team = if scope == Scope::Team {
            self.services
                .authz
                .team_of(user_id)
                .await
                .map_err(host_failure)?
        } else {
            Vec::new()
        };
        let viewer = Viewer {
            user_id,
            scope,
            team,
        };
        self.viewer = Some(viewer.clone());
        Ok(viewer)
    }

    /// Runs a write under a savepoint: a refused write is undone on its own and leaves the
    /// call's transaction usable.
    pub(super) async fn write<T>(
        &mut self,
        operation: impl AsyncFnOnce(&mut Tx, &CallContext) -> crate::error::Result<T>,
    ) -> wasmtime::Result<Result<T, WitError>> {
        if let Some(denied) = self.refused_when_read_only() {
            return Ok(Err(denied));
        }
        let context = self.context.clone();
        let tx = self.tx().await?;
        savepoint(tx, "SAVEPOINT host_call").await?;
        match operation(tx, &context).await {
            Ok(value) => {
                savepoint(tx, "RELEASE SAVEPOINT host_call").await?;
                Ok(Ok(value))
            }
            Err(Error::Unexpected(error)) => Err(from_anyhow(error)),
            Err(error) => {
                savepoint(tx, "ROLLBACK TO SAVEPOINT host_call").await?;
                savepoint(tx, "RELEASE SAVEPOINT host_call").await?;
                Ok(Err(to_wit(error)))
            }
        }
    }

    /// Runs a write that cannot be refused once it has begun writing (its input is checked
    /// beforehand), so it needs no savepoint; a failure here is the database's and ends the
    /// call.
    async fn write_checked<T>(
        &mut self,
        operation: impl AsyncFnOnce(&mut Tx, &CallContext) -> crate::error::Result<T>,
    ) -> wasmtime::Result<Result<T, WitError>> {
        if let Some(denied) = self.refused_when_read_only() {
            return Ok(Err(denied));
        }
        self.read(operation).await
    }

    fn refused_when_read_only(&self) -> Option<WitError> {
        self.context.read_only.then(|| {
            WitError::Denied(
                "a GET or HEAD request is read-only: write with POST, PUT, PATCH or DELETE"
                    .to_owned(),
            )
        })
    }

    /// Runs a read on the call's transaction, so it sees the call's own writes.
    pub(super) async fn read<T>(
        &mut self,
        operation: impl AsyncFnOnce(&mut Tx, &CallContext) -> crate::error::Result<T>,
    ) -> wasmtime::Result<Result<T, WitError>> {
        let context = self.context.clone();
        let tx = self.tx().await?;
        match operation(tx, &context).await {
            Ok(value) => Ok(Ok(value)),
            Err(Error::Unexpected(error)) => Err(from_anyhow(error)),
            Err(error) => Ok(Err(to_wit(error))),
        }
    }
}

pub(super) async fn savepoint(tx: &mut Tx, statement: &str) -> wasmtime::Result<()> {
    let done: Result<(), sqlx::Error> = on_conn!(tx, conn => {
        sqlx::query(statement).execute(&mut *conn).await.map(|_| ())
    });
    done.map_err(|e| from_anyhow(e.into()))
}

pub(super) fn host_failure(error: Error) -> wasmtime::Error {
    wasmtime::Error::msg(error.to_string())
}

/// The WIT form of a host error. Unexpected errors never reach here: they end the call.
pub fn to_wit(error: Error) -> WitError {
    match error {
        Error::Invalid(errors) => WitError::Invalid(
            errors
                .into_iter()
                .map(|e| WitFieldError {
                    field: e.field,
                    message: e.message,
                })
                .collect(),
        ),
        Error::Unauthenticated(message) | Error::Forbidden(message) => WitError::Denied(message),
        Error::NotFound(message) => WitError::NotFound(message),
        Error::Conflict(message) => WitError::Conflict(message),
        Error::Duplicates { detail, candidates } => {
            WitError::Conflict(format!("{detail}; candidates: {candidates}"))
        }
        Error::TooManyRequests(message) => WitError::LimitExceeded(message),
        Error::PluginFailed {
            plugin,
            detail,
            limit: true,
        } => WitError::LimitExceeded(format!("plugin {plugin} {detail}")),
        Error::PluginFailed { plugin, detail, .. } => {
            WitError::Internal(format!("plugin {plugin} {detail}"))
        }
        Error::Unexpected(error) => WitError::Internal(format!("{error:#}")),
    }
}

/// The host form of an error a plugin returned.
pub fn from_wit(plugin: &str, error: WitError) -> Error {
    match error {
        WitError::NotFound(message) => Error::NotFound(message),
        WitError::Invalid(errors) => Error::Invalid(
            errors
                .into_iter()
                .map(|e| crate::error::FieldError::new(e.field, e.message))
                .collect(),
        ),
        WitError::Denied(message) => Error::Forbidden(message),
        WitError::Conflict(message) => Error::Conflict(message),
        WitError::LimitExceeded(message) => Error::TooManyRequests(message),
        WitError::Internal(message) => {
            Error::Unexpected(anyhow::anyhow!("plugin {plugin} failed: {message}"))
        }
    }
}

pub(super) fn parse_json<T: serde::de::DeserializeOwned>(text: &str) -> Result<T, WitError> {
    let deserializer = &mut serde_json::Deserializer::from_str(text);
    serde_path_to_error::deserialize(deserializer).map_err(|error| {
        let path = error.path().to_string();
        WitError::Invalid(vec![WitFieldError {
            field: if path == "." { String::new() } else { path },
            message: error.inner().to_string(),
        }])
    })
}

/// Carries an anyhow error (a failed query) out of a host call, ending the call.
pub(super) fn from_anyhow(error: anyhow::Error) -> wasmtime::Error {
    wasmtime::Error::from_boxed(error.into())
}

fn json_result<T: serde::Serialize>(
    value: Result<T, WitError>,
) -> wasmtime::Result<Result<String, WitError>> {
    match value {
        Ok(value) => Ok(Ok(to_json(&value)?)),
        Err(error) => Ok(Err(error)),
    }
}

fn to_json(value: &impl serde::Serialize) -> wasmtime::Result<String> {
    serde_json::to_string(value).map_err(|e| from_anyhow(e.into()))
}

fn parse_date(field: &str, text: Option<&str>) -> Result<Option<chrono::NaiveDate>, WitError> {
    text.map(|text| {
        crate::ledger::model::parse_date(text).map_err(|message| {
            WitError::Invalid(vec![WitFieldError {
                field: field.to_owned(),
                message,
            }])
        })
    })
    .transpose()
}

/// Entries one `ledger.post-many` takes at most.
const POST_MANY_ENTRIES_MAX: usize = 1_000;

/// A plugin's entry as the ledger takes it: the plugin is the source module of its document,
/// and its idempotency keys live apart from every other plugin's.
fn entry_input(
    plugin: &str,
    entry: wit_ledger::Entry,
    idempotency_key: Option<String>,
) -> EntryInput {
    EntryInput {
        date: entry.date,
        memo: entry.memo,
        source: entry.document.map(|document| SourceRef {
            module: plugin.to_owned(),
            document,
        }),
        lines: entry
            .lines
            .into_iter()
            .map(|line| LineInput {
                account: line.account,
                debit: line.debit,
                credit: line.credit,
                currency: line.currency,
                rate: line.rate,
                party: line.party,
                memo: line.memo,
                dimensions: (!line.dimensions.is_empty()).then(|| {
                    line.dimensions
                        .into_iter()
                        .map(|d| (d.name, d.value))
                        .collect::<BTreeMap<_, _>>()
                }),
            })
            .collect(),
        // Keys are the plugin's own: two plugins never collide on one.
        idempotency_key: idempotency_key.map(|key| format!("plugin:{plugin}:{key}")),
    }
}

impl types::Host for CallState {}
impl super::bindings::latest::keel::platform::http::Host for CallState {}
impl super::bindings::latest::keel::platform::plugin_meta::Host for CallState {}

impl wit_ledger::Host for CallState {
    async fn post(
        &mut self,
        entry: wit_ledger::Entry,
        idempotency_key: Option<String>,
    ) -> wasmtime::Result<Result<i64, WitError>> {
        if let Err(denied) = self.enter(Capability::LedgerPost, Some(perm::LEDGER_ENTRIES_POST))? {
            return Ok(Err(denied));
        }
        let input = entry_input(&self.context.plugin, entry, idempotency_key);
        let posted = self
            .write(async |tx, context| {
                let draft = EntryDraft::parse(&input, context.company.base_currency)?;
                let drafts = [draft];
                let job = posting::Job {
                    entries: &drafts,
                    batch: false,
                    origin: &context.origin,
                };
                let (mut results, records) = posting::post_jobs_audit_later(
                    tx,
                    &context.company,
                    &[job],
                    posting::now_micros(),
                )
                .await?;
                let posted = results.pop().expect("one result per job")?;
                let audit = records.into_iter().map(|(_, event)| event).collect();
                Ok((posted[0].id, audit))
            })
            .await;
        // The entry's audit record goes with the call's others, appended when the call ends.
        Ok(posted?.map(|(id, audit): (i64, Vec<Event>)| {
            self.pending_audit.extend(audit);
            id
        }))
    }

    async fn base_currency(&mut self) -> wasmtime::Result<Result<String, WitError>> {
        if let Err(denied) = self.enter(Capability::LedgerRead, None)? {
            return Ok(Err(denied));
        }
        Ok(Ok(self.context.company.base_currency.code.to_owned()))
    }

    async fn post_many(
        &mut self,
        entries: Vec<wit_ledger::Entry>,
    ) -> wasmtime::Result<Result<Vec<i64>, WitError>> {
        if let Err(denied) = self.enter(Capability::LedgerPost, Some(perm::LEDGER_ENTRIES_POST))? {
            return Ok(Err(denied));
        }
        if entries.is_empty() || entries.len() > POST_MANY_ENTRIES_MAX {
            return Ok(Err(to_wit(Error::invalid(
                "entries",
                format!("has 1 to {POST_MANY_ENTRIES_MAX} entries"),
            ))));
        }
        let inputs: Vec<EntryInput> = entries
            .into_iter()
            .map(|entry| entry_input(&self.context.plugin, entry, None))
            .collect();
        let posted = self
            .write(async |tx, context| {
                let mut drafts = Vec::with_capacity(inputs.len());
                for (index, input) in inputs.iter().enumerate() {
                    let draft = EntryDraft::parse(input, context.company.base_currency)
                        .map_err(|e| e.within(&format!("entries[{index}]")))?;
                    drafts.push(draft);
                }
                let job = posting::Job {
                    entries: &drafts,
                    batch: true,
                    origin: &context.origin,
                };
                let (mut results, records) = posting::post_jobs_audit_later(
                    tx,
                    &context.company,
                    &[job],
                    posting::now_micros(),
                )
                .await?;
                let posted = results.pop().expect("one result per job")?;
                let ids = posted.iter().map(|p| p.id).collect();
                let audit = records.into_iter().map(|(_, event)| event).collect();
                Ok((ids, audit))
            })
            .await;
        Ok(posted?.map(|(ids, audit): (Vec<i64>, Vec<Event>)| {
            self.pending_audit.extend(audit);
            ids
        }))
    }

    async fn reverse(
        &mut self,
        id: i64,
        date: Option<String>,
        memo: Option<String>,
    ) -> wasmtime::Result<Result<i64, WitError>> {
        if let Err(denied) =
            self.enter(Capability::LedgerPost, Some(perm::LEDGER_ENTRIES_REVERSE))?
        {
            return Ok(Err(denied));
        }
        let date = match parse_date("date", date.as_deref()) {
            Ok(date) => date,
            Err(invalid) => return Ok(Err(invalid)),
        };
        let authz = self.services.authz.clone();
        self.write(async |tx, context| {
            let posted = crate::ledger::reverse_in(
                tx,
                &context.company,
                id,
                date,
                memo,
                &context.origin,
                Some(&authz),
            )
            .await?;
            Ok(posted[0].id)
        })
        .await
    }

    async fn accounts(&mut self) -> wasmtime::Result<Result<Vec<wit_ledger::Account>, WitError>> {
        if let Err(denied) = self.enter(Capability::LedgerRead, Some(perm::LEDGER_ACCOUNTS_READ))? {
            return Ok(Err(denied));
        }
        self.read(async |tx, context| {
            let accounts = crate::ledger::chart::list(tx, &context.company).await?;
            Ok(accounts
                .into_iter()
                .map(|account| wit_ledger::Account {
                    code: account.code,
                    name: account.name,
                    account_type: account_type(account.account_type),
                    parent: account.parent_code,
                    currency: account.currency,
                    active: account.active,
                })
                .collect())
        })
        .await
    }

    async fn account_balance(
        &mut self,
        code: String,
        as_of: Option<String>,
    ) -> wasmtime::Result<Result<Vec<types::Money>, WitError>> {
        if let Err(denied) = self.enter(Capability::LedgerRead, Some(perm::LEDGER_REPORTS_READ))? {
            return Ok(Err(denied));
        }
        let as_of = match parse_date("as_of", as_of.as_deref()) {
            Ok(date) => date.unwrap_or_else(|| chrono::Utc::now().date_naive()),
            Err(invalid) => return Ok(Err(invalid)),
        };
        self.read(async |tx, context| {
            let company = &context.company;
            // Refuses an unknown code with not-found.
            crate::ledger::chart::get(tx, company, &code).await?;
            let balance = reports::trial_balance(tx, company, as_of).await?;
            let base = company.base_currency.code.to_owned();
            let signed = |debit: &Option<String>, credit: &Option<String>| match (debit, credit) {
                (Some(debit), _) => debit.clone(),
                (None, Some(credit)) => format!("-{credit}"),
                (None, None) => "0".to_owned(),
            };
            let Some(row) = balance.rows.iter().find(|row| row.account == code) else {
                return Ok(vec![types::Money {
                    amount: "0".to_owned(),
                    currency: base,
                }]);
            };
            let mut amounts = vec![types::Money {
                amount: signed(&row.debit, &row.credit),
                currency: base,
            }];
            amounts.extend(row.foreign.iter().map(|foreign| types::Money {
                amount: signed(&foreign.debit, &foreign.credit),
                currency: foreign.currency.clone(),
            }));
            Ok(amounts)
        })
        .await
    }

    async fn party_balance(
        &mut self,
        party: i64,
        as_of: Option<String>,
    ) -> wasmtime::Result<Result<wit_ledger::PartyTotals, WitError>> {
        let scope = match self.enter(Capability::LedgerRead, Some(perm::PARTIES_READ))? {
            Ok(scope) => scope,
            Err(denied) => return Ok(Err(denied)),
        };
        let as_of = match parse_date("as_of", as_of.as_deref()) {
            Ok(date) => date,
            Err(invalid) => return Ok(Err(invalid)),
        };
        let viewer = self.viewer(scope).await?;
        self.read(async |tx, context| {
            let company = &context.company;
            let stored = crate::parties::visible(tx, company, &viewer, party).await?;
            let balance = crate::parties::balance_in(tx, company, &stored, as_of).await?;
            let money = |amount: String| types::Money {
                amount,
                currency: balance.currency.clone(),
            };
            Ok(wit_ledger::PartyTotals {
                receivable: money(balance.receivable.clone()),
                payable: money(balance.payable.clone()),
                credit_limit: balance.credit_limit.clone().map(|limit| types::Money {
                    amount: limit,
                    currency: stored
                        .data
                        .default_currency
                        .map_or_else(|| balance.currency.clone(), |c| c.code.to_owned()),
                }),
                credit_available: balance.credit_available.clone().map(money),
            })
        })
        .await
    }
}

fn account_type(kind: crate::ledger::model::AccountType) -> wit_ledger::AccountType {
    use crate::ledger::model::AccountType as A;
    match kind {
        A::Asset => wit_ledger::AccountType::Asset,
        A::Liability => wit_ledger::AccountType::Liability,
        A::Equity => wit_ledger::AccountType::Equity,
        A::Income => wit_ledger::AccountType::Income,
        A::Expense => wit_ledger::AccountType::Expense,
    }
}

impl wit_parties::Host for CallState {
    async fn get(&mut self, id: i64) -> wasmtime::Result<Result<String, WitError>> {
        let scope = match self.enter(Capability::PartiesRead, Some(perm::PARTIES_READ))? {
            Ok(scope) => scope,
            Err(denied) => return Ok(Err(denied)),
        };
        let viewer = self.viewer(scope).await?;
        let view = self
            .read(async |tx, context| {
                let stored = crate::parties::visible(tx, &context.company, &viewer, id).await?;
                Ok(stored.view(&context.company))
            })
            .await?;
        json_result(view)
    }

    async fn search(
        &mut self,
        query: wit_parties::PartyQuery,
    ) -> wasmtime::Result<Result<wit_parties::PartyPage, WitError>> {
        let scope = match self.enter(Capability::PartiesRead, Some(perm::PARTIES_READ))? {
            Ok(scope) => scope,
            Err(denied) => return Ok(Err(denied)),
        };
        let filters = json!({ "role": query.role, "status": query.status });
        let filters: crate::parties::search::PartyQuery = match parse_json(&filters.to_string()) {
            Ok(filters) => filters,
            Err(invalid) => return Ok(Err(invalid)),
        };
        let host_query = PartyQuery {
            q: query.q,
            tag: query.tag,
            cursor: query.after,
            ..filters
        };
        let limit = match crate::api::page_size(query.limit) {
            Ok(limit) => limit,
            Err(error) => return Ok(Err(to_wit(error))),
        };
        let viewer = self.viewer(scope).await?;
        let page = self
            .read(async |tx, context| {
                crate::parties::search::page(tx, &context.company, &viewer, &host_query, limit)
                    .await
            })
            .await?;
        match page {
            Ok(page) => Ok(Ok(wit_parties::PartyPage {
                parties: page
                    .parties
                    .iter()
                    .map(to_json)
                    .collect::<wasmtime::Result<_>>()?,
                next: page.next,
            })),
            Err(error) => Ok(Err(error)),
        }
    }

    async fn create(&mut self, party: String) -> wasmtime::Result<Result<String, WitError>> {
        let scope = match self.enter(Capability::PartiesWrite, Some(perm::PARTIES_WRITE))? {
            Ok(scope) => scope,
            Err(denied) => return Ok(Err(denied)),
        };
        let new: NewParty = match parse_json(&party) {
            Ok(new) => new,
            Err(invalid) => return Ok(Err(invalid)),
        };
        let viewer = self.viewer(scope).await?;
        let view = self
            .write(async |tx, context| {
                crate::parties::create_in(tx, &context.company, &viewer, &new, &context.origin)
                    .await
            })
            .await?;
        json_result(view)
    }

    async fn update(
        &mut self,
        id: i64,
        changes: String,
    ) -> wasmtime::Result<Result<String, WitError>> {
        let scope = match self.enter(Capability::PartiesWrite, Some(perm::PARTIES_WRITE))? {
            Ok(scope) => scope,
            Err(denied) => return Ok(Err(denied)),
        };
        let changes: PartyChanges = match parse_json(&changes) {
            Ok(changes) => changes,
            Err(invalid) => return Ok(Err(invalid)),
        };
        let viewer = self.viewer(scope).await?;
        let view = self
            .write(async |tx, context| {
                crate::parties::update_in(
                    tx,
                    &context.company,
                    &viewer,
                    id,
                    &changes,
                    &context.origin,
                )
                .await
            })
            .await?;
        json_result(view)
    }
}

impl wit_storage::Host for CallState {
    async fn put(
        &mut self,
        collection: String,
        key: String,
        value: String,
    ) -> wasmtime::Result<Result<(), WitError>> {
        if let Err(denied) = self.enter(Capability::Storage, None)? {
            return Ok(Err(denied));
        }
        let parsed = match records::check_collection(&collection)
            .and_then(|()| records::check_key("key", &key))
            .and_then(|()| records::check_value(&value))
        {
            Ok(parsed) => parsed,
            Err(error) => return Ok(Err(to_wit(error))),
        };
        let written = self
            .write_checked(async |tx, context| {
                let owner = context.owner();
                records::put(tx, owner, &collection, &key, &value).await?;
                let indexes = context.declarations.indexes(&collection);
                index::reindex_record(tx, owner, &collection, indexes, &key, Some(&parsed)).await
            })
            .await?;
        if written.is_ok() {
            let event = Event::new(
                Some(self.context.company.id),
                "plugin.storage:put",
                "plugin.record",
                format!("{}/{collection}/{key}", self.context.plugin),
                json!({ "after": parsed }),
            );
            self.pending_audit.push(event);
        }
        Ok(written)
    }

    async fn get(
        &mut self,
        collection: String,
        key: String,
    ) -> wasmtime::Result<Result<Option<String>, WitError>> {
        self.read_record(collection, key, false).await
    }

    async fn get_many(
        &mut self,
        collection: String,
        keys: Vec<String>,
    ) -> wasmtime::Result<Result<Vec<Option<String>>, WitError>> {
        if let Err(denied) = self.enter(Capability::Storage, None)? {
            return Ok(Err(denied));
        }
        let checked = records::check_collection(&collection).and_then(|()| {
            if keys.len() > records::GET_MANY_KEYS_MAX {
                return Err(Error::invalid(
                    "keys",
                    format!("at most {} keys at once", records::GET_MANY_KEYS_MAX),
                ));
            }
            keys.iter()
                .enumerate()
                .try_for_each(|(i, key)| records::check_key(&format!("keys[{i}]"), key))
        });
        if let Err(error) = checked {
            return Ok(Err(to_wit(error)));
        }
        self.read(async |tx, context| {
            records::get_many(tx, context.owner(), &collection, &keys).await
        })
        .await
    }

    async fn get_for_update(
        &mut self,
        collection: String,
        key: String,
    ) -> wasmtime::Result<Result<Option<String>, WitError>> {
        self.read_record(collection, key, true).await
    }

    async fn delete(
        &mut self,
        collection: String,
        key: String,
    ) -> wasmtime::Result<Result<bool, WitError>> {
        if let Err(denied) = self.enter(Capability::Storage, None)? {
            return Ok(Err(denied));
        }
        if let Err(error) =
            records::check_collection(&collection).and_then(|()| records::check_key("key", &key))
        {
            return Ok(Err(to_wit(error)));
        }
        let deleted = self
            .write_checked(async |tx, context| {
                let owner = context.owner();
                let deleted = records::delete(tx, owner, &collection, &key).await?;
                if deleted {
                    let indexes = context.declarations.indexes(&collection);
                    index::reindex_record(tx, owner, &collection, indexes, &key, None).await?;
                }
                Ok(deleted)
            })
            .await?;
        if matches!(deleted, Ok(true)) {
            let event = Event::new(
                Some(self.context.company.id),
                "plugin.storage:delete",
                "plugin.record",
                format!("{}/{collection}/{key}", self.context.plugin),
                json!({}),
            );
            self.pending_audit.push(event);
        }
        Ok(deleted)
    }

    async fn query(
        &mut self,
        collection: String,
        range: wit_storage::KeyRange,
    ) -> wasmtime::Result<Result<Vec<wit_storage::Item>, WitError>> {
        if let Err(denied) = self.enter(Capability::Storage, None)? {
            return Ok(Err(denied));
        }
        let limit = range.limit.unwrap_or(records::QUERY_ITEMS_DEFAULT);
        if !(1..=records::QUERY_ITEMS_MAX).contains(&limit) {
            return Ok(Err(to_wit(Error::invalid(
                "limit",
                format!("is between 1 and {}", records::QUERY_ITEMS_MAX),
            ))));
        }
        let checked = records::check_collection(&collection).and_then(|()| {
            for (field, key) in [
                ("start", &range.start),
                ("end", &range.end),
                ("after", &range.after),
            ] {
                if let Some(key) = key {
                    records::check_key(field, key)?;
                }
            }
            Ok(())
        });
        if let Err(error) = checked {
            return Ok(Err(to_wit(error)));
        }
        let range = records::KeyRange {
            start: range.start,
            end: range.end,
            after: range.after,
            limit,
        };
        let items = self
            .read(async |tx, context| {
                let owner = context.owner();
                records::query(tx, owner, &collection, &range).await
            })
            .await?;
        Ok(items.map(|items| {
            items
                .into_iter()
                .map(|(key, value)| wit_storage::Item { key, value })
                .collect()
        }))
    }

    async fn find(
        &mut self,
        collection: String,
        query: wit_storage::IndexQuery,
    ) -> wasmtime::Result<Result<wit_storage::Page, WitError>> {
        if let Err(denied) = self.enter(Capability::Storage, None)? {
            return Ok(Err(denied));
        }
        let parsed = records::check_collection(&collection).and_then(|()| {
            let index = self
                .context
                .declarations
                .indexes(&collection)
                .iter()
                .find(|i| i.name == query.index)
                .cloned()
                .ok_or_else(|| {
                    Error::invalid(
                        "index",
                        format!(
                            "collection {collection} has no index {:?} in the plugin's manifest",
                            query.index
                        ),
                    )
                })?;
            Ok((index, index_query(&query)?))
        });
        let (index, parsed) = match parsed {
            Ok(parsed) => parsed,
            Err(error) => return Ok(Err(to_wit(error))),
        };
        let rows = self
            .read(async |tx, context| {
                index::find(tx, context.owner(), &collection, &index, &parsed).await
            })
            .await?;
        Ok(rows.map(|rows| {
            let next = (rows.len() as u64 == u64::from(parsed.limit))
                .then(|| rows.last().map(|(i, r, _)| index::cursor(i, r)))
                .flatten();
            wit_storage::Page {
                items: rows
                    .into_iter()
                    .map(|(_, key, value)| wit_storage::Item { key, value })
                    .collect(),
                next,
            }
        }))
    }
}

/// Parses the JSON values and cursor of an index query.
fn index_query(query: &wit_storage::IndexQuery) -> crate::error::Result<index::IndexQuery> {
    let limit = query.limit.unwrap_or(records::QUERY_ITEMS_DEFAULT);
    if !(1..=records::QUERY_ITEMS_MAX).contains(&limit) {
        return Err(Error::invalid(
            "limit",
            format!("is between 1 and {}", records::QUERY_ITEMS_MAX),
        ));
    }
    let value = |field: String, text: &str| {
        serde_json::from_str::<serde_json::Value>(text)
            .map_err(|e| Error::invalid(field, format!("is not a JSON value: {e}")))
    };
    let equals = query
        .equals
        .iter()
        .enumerate()
        .map(|(i, text)| value(format!("equals[{i}]"), text))
        .collect::<crate::error::Result<Vec<_>>>()?;
    Ok(index::IndexQuery {
        equals,
        from: query
            .from
            .as_deref()
            .map(|t| value("from".to_owned(), t))
            .transpose()?,
        to: query
            .to
            .as_deref()
            .map(|t| value("to".to_owned(), t))
            .transpose()?,
        descending: query.descending,
        after: query
            .after
            .as_deref()
            .map(index::parse_cursor)
            .transpose()?,
        limit,
    })
}

impl wit_authz::Host for CallState {
    async fn principal(&mut self) -> wasmtime::Result<wit_authz::PrincipalInfo> {
        self.count()?;
        Ok(wit_authz::PrincipalInfo {
            user_id: self.context.user,
            company_id: self.context.company.id,
        })
    }

    async fn allowed(&mut self, permission: String) -> wasmtime::Result<bool> {
        self.count()?;
        Ok(self.permission_scope(&permission).is_some())
    }

    async fn scope_of(&mut self, permission: String) -> wasmtime::Result<Option<wit_authz::Scope>> {
        self.count()?;
        Ok(self.permission_scope(&permission).map(|scope| match scope {
            Scope::Own => wit_authz::Scope::Own,
            Scope::Team => wit_authz::Scope::Team,
            Scope::All => wit_authz::Scope::All,
        }))
    }

    async fn team(&mut self) -> wasmtime::Result<Vec<i64>> {
        self.count()?;
        let Some(user) = self.context.user else {
            return Ok(Vec::new());
        };
        self.services
            .authz
            .team_of(user)
            .await
            .map_err(host_failure)
    }
}

impl CallState {
    /// `storage.get`, or with `reserve` `storage.get-for-update`, which a read-only call may
    /// not use.
    async fn read_record(
        &mut self,
        collection: String,
        key: String,
        reserve: bool,
    ) -> wasmtime::Result<Result<Option<String>, WitError>> {
        if let Err(denied) = self.enter(Capability::Storage, None)? {
            return Ok(Err(denied));
        }
        if reserve && let Some(denied) = self.refused_when_read_only() {
            return Ok(Err(denied));
        }
        if let Err(error) =
            records::check_collection(&collection).and_then(|()| records::check_key("key", &key))
        {
            return Ok(Err(to_wit(error)));
        }
        self.read(async |tx, context| {
            let owner = context.owner();
            if reserve {
                records::reserve(tx, owner, &collection, &key).await?;
            }
            records::get(tx, owner, &collection, &key).await
        })
        .await
    }

    /// How far a permission named by the plugin ("plugins.sfa.leads:read") reaches for the
    /// acting user; `None` without a user or a well-formed name.
    fn permission_scope(&self, permission: &str) -> Option<Scope> {
        let user = self.context.user?;
        let (resource, action) = permission.rsplit_once(':')?;
        self.services
            .authz
            .scope_named(user, self.context.company.id, resource, action)
    }
}

/// Longest log message kept; longer ones are cut.
const LOG_MESSAGE_CHARS_MAX: usize = 4_096;

impl wit_log::Host for CallState {
    async fn log(&mut self, level: wit_log::Level, message: String) -> wasmtime::Result<()> {
        self.count()?;
        let message: String = message.chars().take(LOG_MESSAGE_CHARS_MAX).collect();
        let plugin = self.context.plugin.as_str();
        match level {
            wit_log::Level::Trace => tracing::trace!(plugin, "{message}"),
            wit_log::Level::Debug => tracing::debug!(plugin, "{message}"),
            wit_log::Level::Info => tracing::info!(plugin, "{message}"),
            wit_log::Level::Warn => tracing::warn!(plugin, "{message}"),
            wit_log::Level::Error => tracing::error!(plugin, "{message}"),
        }
        Ok(())
    }
}

impl Stop {
    /// The stop a finished store records, if any.
    pub fn of(state: &CallState, error: &wasmtime::Error) -> Option<Self> {
        if let Some(stop) = &state.stop {
            return Some(stop.clone());
        }
        if state.limiter.memory_refused {
            return Some(Self::Memory);
        }
        match error.downcast_ref::<wasmtime::Trap>() {
            Some(wasmtime::Trap::OutOfFuel) => Some(Self::Fuel),
            _ => None,
        }
    }
}
