//! Serves plugins built against keel:platform@0.1.0 by adapting their calls to the newest
//! implementation: each 0.1.0 import converts its arguments to the newest types, calls the
//! newest host function, and converts the answer back. Version 0.1.0 is frozen, so nothing
//! here changes when the host grows; a later version adds its own adapter to the newest.

use super::bindings::latest::keel::platform as new;
use super::bindings::v0_1::keel::platform as old;
use super::call::CallState;

impl From<old::types::FieldError> for new::types::FieldError {
    fn from(e: old::types::FieldError) -> Self {
        Self {
            field: e.field,
            message: e.message,
        }
    }
}

impl From<new::types::FieldError> for old::types::FieldError {
    fn from(e: new::types::FieldError) -> Self {
        Self {
            field: e.field,
            message: e.message,
        }
    }
}

impl From<old::types::Error> for new::types::Error {
    fn from(error: old::types::Error) -> Self {
        use old::types::Error as E;
        match error {
            E::NotFound(m) => Self::NotFound(m),
            E::Invalid(errors) => Self::Invalid(errors.into_iter().map(Into::into).collect()),
            E::Denied(m) => Self::Denied(m),
            E::Conflict(m) => Self::Conflict(m),
            E::LimitExceeded(m) => Self::LimitExceeded(m),
            E::Internal(m) => Self::Internal(m),
        }
    }
}

impl From<new::types::Error> for old::types::Error {
    fn from(error: new::types::Error) -> Self {
        use new::types::Error as E;
        match error {
            E::NotFound(m) => Self::NotFound(m),
            E::Invalid(errors) => Self::Invalid(errors.into_iter().map(Into::into).collect()),
            E::Denied(m) => Self::Denied(m),
            E::Conflict(m) => Self::Conflict(m),
            E::LimitExceeded(m) => Self::LimitExceeded(m),
            E::Internal(m) => Self::Internal(m),
        }
    }
}

impl From<new::types::Money> for old::types::Money {
    fn from(m: new::types::Money) -> Self {
        Self {
            amount: m.amount,
            currency: m.currency,
        }
    }
}

/// The 0.1.0 form of a newest-version answer.
fn back<T, U: From<T>>(
    answer: wasmtime::Result<Result<T, new::types::Error>>,
) -> wasmtime::Result<Result<U, old::types::Error>> {
    Ok(answer?.map(U::from).map_err(Into::into))
}

/// The 0.1.0 form of a list answer.
fn back_list<T, U: From<T>>(
    answer: wasmtime::Result<Result<Vec<T>, new::types::Error>>,
) -> wasmtime::Result<Result<Vec<U>, old::types::Error>> {
    Ok(answer?
        .map(|items| items.into_iter().map(U::from).collect())
        .map_err(Into::into))
}

impl old::types::Host for CallState {}
impl old::http::Host for CallState {}
impl old::events::Host for CallState {}
impl old::plugin_meta::Host for CallState {}

impl From<old::ledger::Dimension> for new::ledger::Dimension {
    fn from(d: old::ledger::Dimension) -> Self {
        Self {
            name: d.name,
            value: d.value,
        }
    }
}

impl From<old::ledger::Line> for new::ledger::Line {
    fn from(l: old::ledger::Line) -> Self {
        Self {
            account: l.account,
            debit: l.debit,
            credit: l.credit,
            currency: l.currency,
            rate: l.rate,
            party: l.party,
            memo: l.memo,
            dimensions: l.dimensions.into_iter().map(Into::into).collect(),
        }
    }
}

impl From<old::ledger::Entry> for new::ledger::Entry {
    fn from(e: old::ledger::Entry) -> Self {
        Self {
            date: e.date,
            memo: e.memo,
            lines: e.lines.into_iter().map(Into::into).collect(),
            document: e.document,
        }
    }
}

impl From<new::ledger::AccountType> for old::ledger::AccountType {
    fn from(t: new::ledger::AccountType) -> Self {
        use new::ledger::AccountType as T;
        match t {
            T::Asset => Self::Asset,
            T::Liability => Self::Liability,
            T::Equity => Self::Equity,
            T::Income => Self::Income,
            T::Expense => Self::Expense,
        }
    }
}

impl From<new::ledger::Account> for old::ledger::Account {
    fn from(a: new::ledger::Account) -> Self {
        Self {
            code: a.code,
            name: a.name,
            account_type: a.account_type.into(),
            parent: a.parent,
            currency: a.currency,
            active: a.active,
        }
    }
}

impl From<new::ledger::PartyTotals> for old::ledger::PartyTotals {
    fn from(t: new::ledger::PartyTotals) -> Self {
        Self {
            receivable: t.receivable.into(),
            payable: t.payable.into(),
            credit_limit: t.credit_limit.map(Into::into),
            credit_available: t.credit_available.map(Into::into),
        }
    }
}

impl old::ledger::Host for CallState {
    async fn post(
        &mut self,
        entry: old::ledger::Entry,
        idempotency_key: Option<String>,
    ) -> wasmtime::Result<Result<i64, old::types::Error>> {
        back(new::ledger::Host::post(self, entry.into(), idempotency_key).await)
    }

    async fn reverse(
        &mut self,
        id: i64,
        date: Option<String>,
        memo: Option<String>,
    ) -> wasmtime::Result<Result<i64, old::types::Error>> {
        back(new::ledger::Host::reverse(self, id, date, memo).await)
    }

    async fn accounts(
        &mut self,
    ) -> wasmtime::Result<Result<Vec<old::ledger::Account>, old::types::Error>> {
        back_list(new::ledger::Host::accounts(self).await)
    }

    async fn account_balance(
        &mut self,
        code: String,
        as_of: Option<String>,
    ) -> wasmtime::Result<Result<Vec<old::types::Money>, old::types::Error>> {
        back_list(new::ledger::Host::account_balance(self, code, as_of).await)
    }

    async fn party_balance(
        &mut self,
        party: i64,
        as_of: Option<String>,
    ) -> wasmtime::Result<Result<old::ledger::PartyTotals, old::types::Error>> {
        back(new::ledger::Host::party_balance(self, party, as_of).await)
    }
}

impl From<old::parties::PartyQuery> for new::parties::PartyQuery {
    fn from(q: old::parties::PartyQuery) -> Self {
        Self {
            q: q.q,
            role: q.role,
            tag: q.tag,
            status: q.status,
            after: q.after,
            limit: q.limit,
        }
    }
}

impl From<new::parties::PartyPage> for old::parties::PartyPage {
    fn from(p: new::parties::PartyPage) -> Self {
        Self {
            parties: p.parties,
            next: p.next,
        }
    }
}

impl old::parties::Host for CallState {
    async fn get(&mut self, id: i64) -> wasmtime::Result<Result<String, old::types::Error>> {
        back(new::parties::Host::get(self, id).await)
    }

    async fn search(
        &mut self,
        query: old::parties::PartyQuery,
    ) -> wasmtime::Result<Result<old::parties::PartyPage, old::types::Error>> {
        back(new::parties::Host::search(self, query.into()).await)
    }

    async fn create(
        &mut self,
        party: String,
    ) -> wasmtime::Result<Result<String, old::types::Error>> {
        back(new::parties::Host::create(self, party).await)
    }

    async fn update(
        &mut self,
        id: i64,
        changes: String,
    ) -> wasmtime::Result<Result<String, old::types::Error>> {
        back(new::parties::Host::update(self, id, changes).await)
    }
}

impl From<old::storage::KeyRange> for new::storage::KeyRange {
    fn from(r: old::storage::KeyRange) -> Self {
        Self {
            start: r.start,
            end: r.end,
            after: r.after,
            limit: r.limit,
        }
    }
}

impl From<new::storage::Item> for old::storage::Item {
    fn from(i: new::storage::Item) -> Self {
        Self {
            key: i.key,
            value: i.value,
        }
    }
}

impl old::storage::Host for CallState {
    async fn put(
        &mut self,
        collection: String,
        key: String,
        value: String,
    ) -> wasmtime::Result<Result<(), old::types::Error>> {
        back(new::storage::Host::put(self, collection, key, value).await)
    }

    async fn get(
        &mut self,
        collection: String,
        key: String,
    ) -> wasmtime::Result<Result<Option<String>, old::types::Error>> {
        back(new::storage::Host::get(self, collection, key).await)
    }

    async fn delete(
        &mut self,
        collection: String,
        key: String,
    ) -> wasmtime::Result<Result<bool, old::types::Error>> {
        back(new::storage::Host::delete(self, collection, key).await)
    }

    async fn query(
        &mut self,
        collection: String,
        range: old::storage::KeyRange,
    ) -> wasmtime::Result<Result<Vec<old::storage::Item>, old::types::Error>> {
        back_list(new::storage::Host::query(self, collection, range.into()).await)
    }
}

impl old::authz::Host for CallState {
    async fn principal(&mut self) -> wasmtime::Result<old::authz::PrincipalInfo> {
        let info = new::authz::Host::principal(self).await?;
        Ok(old::authz::PrincipalInfo {
            user_id: info.user_id,
            company_id: info.company_id,
        })
    }

    async fn allowed(&mut self, permission: String) -> wasmtime::Result<bool> {
        new::authz::Host::allowed(self, permission).await
    }
}

impl old::log::Host for CallState {
    async fn log(&mut self, level: old::log::Level, message: String) -> wasmtime::Result<()> {
        use old::log::Level as L;
        let level = match level {
            L::Trace => new::log::Level::Trace,
            L::Debug => new::log::Level::Debug,
            L::Info => new::log::Level::Info,
            L::Warn => new::log::Level::Warn,
            L::Error => new::log::Level::Error,
        };
        new::log::Host::log(self, level, message).await
    }
}

fn headers_back(headers: Vec<new::http::Header>) -> Vec<old::http::Header> {
    headers
        .into_iter()
        .map(|h| old::http::Header {
            name: h.name,
            value: h.value,
        })
        .collect()
}

impl From<new::http::Request> for old::http::Request {
    fn from(r: new::http::Request) -> Self {
        Self {
            method: r.method,
            path: r.path,
            query: r.query,
            headers: headers_back(r.headers),
            body: r.body,
        }
    }
}

impl From<old::http::Response> for new::http::Response {
    fn from(r: old::http::Response) -> Self {
        Self {
            status: r.status,
            headers: r
                .headers
                .into_iter()
                .map(|h| new::http::Header {
                    name: h.name,
                    value: h.value,
                })
                .collect(),
            body: r.body,
        }
    }
}

impl From<new::events::Event> for old::events::Event {
    fn from(e: new::events::Event) -> Self {
        Self {
            id: e.id,
            topic: e.topic,
            subject: e.subject,
            payload: e.payload,
        }
    }
}

/// A 0.1.0 manifest declares none of what 0.2.0 added.
impl From<old::plugin_meta::PluginManifest> for new::plugin_meta::PluginManifest {
    fn from(m: old::plugin_meta::PluginManifest) -> Self {
        Self {
            name: m.name,
            version: m.version,
            description: m.description,
            capabilities: m.capabilities,
            subscriptions: m.subscriptions,
            collections: Vec::new(),
            extension_points: Vec::new(),
            hooks: Vec::new(),
            operations: Vec::new(),
            party_fields: Vec::new(),
        }
    }
}
