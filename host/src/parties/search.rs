//! Finding parties: full text over names, emails, phones, tax ids and text custom fields
//! (SQLite FTS5 with trigram tokens; PostgreSQL trigram indexes), filters, and cursor pages in
//! name order.

use base64::Engine as _;
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

use super::Viewer;
use super::fields;
use super::model::{PartyKind, PartyRole, PartyStatus, PartyView, sort_key};
use super::store::{self, Order, Source, fold};
use crate::company::Company;
use crate::db::{Backend, Param, Tx};
use crate::error::{Error, Result};

/// Search words shorter than this match name prefixes instead of fragments: trigram indexes
/// need three characters.
const FRAGMENT_CHARS_MIN: usize = 3;
/// Words of a search taken into account.
const SEARCH_WORDS_MAX: usize = 8;

/// Query parameters of `GET /api/v1/parties`.
#[derive(Debug, Clone, Default, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct PartyQuery {
    /// Words that must all appear in the name, an email, a phone number, a tax id or a text
    /// custom field (fragments of three or more characters; shorter words match name starts).
    pub q: Option<String>,
    pub kind: Option<PartyKind>,
    pub role: Option<PartyRole>,
    pub tag: Option<String>,
    /// Owner user id.
    pub owner: Option<i64>,
    /// `active`, `blocked`, `archived` or `merged`; all but merged when absent.
    pub status: Option<PartyStatus>,
    /// A custom field value as `name:value`, such as `tier:gold`.
    pub field: Option<String>,
    /// Parties related to this one (its contacts and subsidiaries).
    pub related_to: Option<i64>,
    /// `name` or `created`; lists come by name, searches (`q`) by creation, which is what
    /// the full-text index answers fastest.
    pub sort: Option<SortOrder>,
    /// The `next` value of the previous page.
    pub cursor: Option<String>,
    /// Page size, 1–500 (100 when absent).
    pub limit: Option<u32>,
    /// `csv` for a CSV export of every match; `json` (the default) for a page.
    pub format: Option<String>,
}

/// The order of a page of parties.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum SortOrder {
    /// By name (accents and case folded), then id.
    Name,
    /// By creation: oldest first.
    Created,
}

/// One page of parties, in the order asked for.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct PartyPage {
    pub parties: Vec<PartyView>,
    /// Cursor for the next page, absent on the last.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub next: Option<String>,
}

/// A condition under construction: SQL with `$N` parameters and their values.
struct Conditions {
    sql: Vec<String>,
    params: Vec<Param>,
    /// Where the parties come from: on SQLite a text search reads the FTS5 index, whose
    /// query is the first parameter (`$2`).
    source: Source,
}

impl Conditions {
    fn new() -> Self {
        Self {
            sql: Vec::new(),
            params: Vec::new(),
            source: Source::Parties,
        }
    }

    /// Conditions that start from the FTS5 matches of `query` (SQLite).
    fn searching(query: String) -> Self {
        Self {
            sql: Vec::new(),
            params: vec![Param::Text(Some(query))],
            source: Source::SearchIndex,
        }
    }

    /// The next parameter's placeholder; `$1` is the company.
    fn param(&mut self, value: Param) -> String {
        self.params.push(value);
        format!("${}", self.params.len() + 1)
    }
}

fn encode_cursor(sort_name: &str, id: i64) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(format!("{id}:{sort_name}"))
}

fn decode_cursor(cursor: &str) -> Result<(String, i64)> {
    let invalid = || Error::invalid("cursor", "is not a cursor this server gave out");
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(cursor)
        .map_err(|_| invalid())?;
    let text = String::from_utf8(bytes).map_err(|_| invalid())?;
    let (id, name) = text.split_once(':').ok_or_else(invalid)?;
    Ok((name.to_owned(), id.parse().map_err(|_| invalid())?))
}

/// Escapes `%`, `_` and `\` for a LIKE pattern with `ESCAPE '\'`.
fn like_escape(text: &str) -> String {
    text.replace('\\', "\\\\")
        .replace('%', "\\%")
        .replace('_', "\\_")
}

/// The FTS5 query for words of three characters or more: each a quoted phrase, all required.
fn fts_query(words: &[String]) -> String {
    words
        .iter()
        .map(|w| format!("\"{}\"", w.replace('"', "\"\"")))
        .collect::<Vec<_>>()
        .join(" AND ")
}

/// PostgreSQL: the search text holds every word (three characters or more), found through the
/// trigram index.
fn like_conditions(conditions: &mut Conditions, words: &[String]) {
    for word in words {
        let p = conditions.param(Param::Text(Some(format!("%{}%", like_escape(word)))));
        conditions
            .sql
            .push(format!("p.search_text LIKE {p} ESCAPE '\\'"));
    }
}

/// The condition that the sort name starts with `prefix`.
fn prefix_condition(conditions: &mut Conditions, prefix: &str) {
    let low = conditions.param(Param::Text(Some(prefix.to_owned())));
    let high = conditions.param(Param::Text(Some(format!("{prefix}\u{10FFFF}"))));
    conditions
        .sql
        .push(format!("p.sort_name >= {low} AND p.sort_name < {high}"));
}

/// The conditions a text search starts from: name prefixes for short words, the full-text
/// index for fragments.
fn text_conditions(backend: Backend, q: &str, order: Order) -> Result<Conditions> {
    let words: Vec<String> = fold(q)
        .split_whitespace()
        .take(SEARCH_WORDS_MAX)
        .map(str::to_owned)
        .collect();
    let fragments: Vec<String> = words
        .iter()
        .filter(|w| w.chars().count() >= FRAGMENT_CHARS_MIN)
        .cloned()
        .collect();
    if words.is_empty() {
        return Ok(Conditions::new());
    }
    if fragments.is_empty() {
        let prefix = sort_key(q);
        if prefix.is_empty() {
            return Err(Error::invalid("q", "search for letters or digits"));
        }
        let mut conditions = Conditions::new();
        prefix_condition(&mut conditions, &prefix);
        return Ok(conditions);
    }
    Ok(match backend {
        // In id order the matches are read from the index and the read stops at the page
        // size; in name order every match is read and sorted.
        Backend::Sqlite if order == Order::Id => Conditions::searching(fts_query(&fragments)),
        Backend::Sqlite => {
            let mut conditions = Conditions::new();
            let p = conditions.param(Param::Text(Some(fts_query(&fragments))));
            conditions.sql.push(format!(
                "p.id IN (SELECT rowid FROM party_search WHERE party_search MATCH {p})"
            ));
            conditions
        }
        Backend::Postgres => {
            let mut conditions = Conditions::new();
            like_conditions(&mut conditions, &fragments);
            conditions
        }
    })
}

fn key_condition(conditions: &mut Conditions, kind: &str, value: &str) {
    let k = conditions.param(Param::Text(Some(kind.to_owned())));
    let v = conditions.param(Param::Text(Some(value.to_owned())));
    conditions.sql.push(format!(
        "EXISTS (SELECT 1 FROM party_keys k WHERE k.company_id = p.company_id AND k.kind = {k} AND k.value = {v} AND k.party_id = p.id)"
    ));
}

/// The conditions of a query, without the cursor.
async fn conditions_of(
    tx: &mut Tx,
    company: &Company,
    viewer: &Viewer,
    query: &PartyQuery,
) -> Result<Conditions> {
    let mut conditions = match &query.q {
        Some(q) => text_conditions(tx.backend(), q, order_of(query))?,
        None => Conditions::new(),
    };
    match query.status {
        Some(status) => {
            let p = conditions.param(Param::Text(Some(status.as_str().to_owned())));
            conditions.sql.push(format!("p.status = {p}"));
        }
        None => conditions.sql.push("p.merged_into_id IS NULL".to_owned()),
    }
    if let Some(kind) = query.kind {
        let p = conditions.param(Param::Text(Some(kind.as_str().to_owned())));
        conditions.sql.push(format!("p.kind = {p}"));
    }
    let mut owners = viewer.owners();
    if let Some(owner) = query.owner {
        owners = Some(match owners {
            Some(reach) => reach.into_iter().filter(|o| *o == owner).collect(),
            None => vec![owner],
        });
    }
    if let Some(owners) = owners {
        if owners.is_empty() {
            conditions.sql.push("1 = 0".to_owned());
        } else {
            let list: Vec<String> = owners
                .iter()
                .map(|o| conditions.param(Param::Int(Some(*o))))
                .collect();
            conditions
                .sql
                .push(format!("p.owner_user_id IN ({})", list.join(", ")));
        }
    }
    if let Some(role) = query.role {
        key_condition(&mut conditions, "role", role.as_str());
    }
    if let Some(tag) = &query.tag {
        key_condition(&mut conditions, "tag", &tag.trim().to_lowercase());
    }
    if let Some(field) = &query.field {
        let (name, value) = field
            .split_once(':')
            .ok_or_else(|| Error::invalid("field", "is name:value, such as tier:gold"))?;
        let definition = fields::get(tx, company, name).await.map_err(|_| {
            Error::invalid("field", format!("no custom field {name:?} is declared"))
        })?;
        let key = fields::filter_key(&definition, value)
            .map_err(|message| Error::invalid("field", message))?;
        key_condition(&mut conditions, &fields::key_kind(name), &key);
    }
    if let Some(related) = query.related_to {
        let p = conditions.param(Param::Int(Some(related)));
        conditions.sql.push(format!(
            "p.id IN (SELECT party_id FROM party_relationships WHERE related_party_id = {p})"
        ));
    }
    Ok(conditions)
}

/// The order a query asks for, or its default: name for lists, creation for searches.
fn order_of(query: &PartyQuery) -> Order {
    match (query.sort, &query.q) {
        (Some(SortOrder::Name), _) | (None, None) => Order::Name,
        (Some(SortOrder::Created), _) | (None, Some(_)) => Order::Id,
    }
}

/// One page of the parties matching `query` that the viewer reaches.
pub async fn page(
    tx: &mut Tx,
    company: &Company,
    viewer: &Viewer,
    query: &PartyQuery,
    limit: usize,
) -> Result<PartyPage> {
    let mut conditions = conditions_of(tx, company, viewer, query).await?;
    // Searches come in id order, which the full-text index gives without sorting every match;
    // lists come in name order.
    let order = order_of(query);
    if let Some(cursor) = &query.cursor {
        let (name, id) = decode_cursor(cursor)?;
        match (order, conditions.source) {
            (Order::Name, _) => {
                let n = conditions.param(Param::Text(Some(name)));
                let i = conditions.param(Param::Int(Some(id)));
                conditions.sql.push(format!(
                    "(p.sort_name > {n} OR (p.sort_name = {n} AND p.id > {i}))"
                ));
            }
            (Order::Id, Source::SearchIndex) => {
                let i = conditions.param(Param::Int(Some(id)));
                conditions.sql.push(format!("s.rowid > {i}"));
            }
            (Order::Id, Source::Parties) => {
                let i = conditions.param(Param::Int(Some(id)));
                conditions.sql.push(format!("p.id > {i}"));
            }
        }
    }
    if conditions.sql.is_empty() {
        conditions.sql.push("TRUE".to_owned());
    }
    let mut parties = store::select(
        tx,
        company,
        conditions.source,
        &conditions.sql.join(" AND "),
        &conditions.params,
        order,
        limit + 1,
    )
    .await?;
    let next = (parties.len() > limit).then(|| {
        parties.truncate(limit);
        let last = parties.last().expect("a full page has a last party");
        encode_cursor(&last.sort_name, last.id)
    });
    Ok(PartyPage {
        parties: parties.iter().map(|p| p.view(company)).collect(),
        next,
    })
}

/// Up to `limit` parties whose search text holds `word`, for duplicate detection: (id, name).
pub async fn name_candidates(
    tx: &mut Tx,
    company: &Company,
    word: &str,
    limit: usize,
) -> Result<Vec<(i64, String)>> {
    let words = [fold(word)];
    let (sql, params) = match tx.backend() {
        Backend::Sqlite => (
            format!(
                "SELECT p.id AS id, p.display_name AS display_name FROM party_search s JOIN parties p ON p.id = s.rowid \
                 WHERE party_search MATCH ? AND p.company_id = ? AND p.merged_into_id IS NULL LIMIT {limit}"
            ),
            vec![
                Param::Text(Some(fts_query(&words))),
                Param::Int(Some(company.id)),
            ],
        ),
        Backend::Postgres => {
            let mut conditions = Conditions::new();
            like_conditions(&mut conditions, &words);
            let mut params = vec![Param::Int(Some(company.id))];
            params.extend(conditions.params);
            (
                format!(
                    "SELECT p.id AS id, p.display_name AS display_name FROM parties p \
                     WHERE p.company_id = $1 AND p.merged_into_id IS NULL AND {} LIMIT {limit}",
                    conditions.sql.join(" AND ")
                ),
                params,
            )
        }
    };
    let rows = tx
        .fetch_packed(&sql, &["id", "display_name"], &params)
        .await?;
    rows.iter()
        .map(|row| Ok((row.int(0)?, row.text(1)?)))
        .collect::<anyhow::Result<Vec<_>>>()
        .map_err(Error::from)
}
