//! The customer master (host module `parties`): organizations and persons with roles, contact
//! data, custom fields and relationships; search, duplicate detection and merging; receivable
//! and payable balances from the ledger. Every write is audited and permission-checked,
//! ownership rules included: a scope of `own` or `team` reaches the parties the user or their
//! team owns.

pub mod countries;
pub mod fields;
pub mod http;
pub mod model;
pub mod privacy;
pub mod search;
pub mod store;
pub mod transfer;

use std::sync::Arc;

use chrono::NaiveDate;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use utoipa::ToSchema;

use crate::audit::{self, Event, Origin};
use crate::authz::{Authz, Scope};
use crate::company::Company;
use crate::db::{Database, Param, Tx};
use crate::error::{Error, FieldError, Result};
use crate::events::topics;
use crate::idempotency::{self, RequestKey, StoredResponse};
use crate::ledger::model::format_minor;
use crate::on_conn;
use fields::{CheckedValues, FieldDefinition};
use model::{NewParty, PartyChanges, PartyData, PartyStatus, PartyView, name_key, name_similarity};
use store::StoredParty;

/// How alike two names must be (Dice coefficient of trigrams, 0–1) to be reported as possible
/// duplicates.
pub const DUPLICATE_NAME_SIMILARITY_MIN: f64 = 0.7;
/// Parties compared by name when looking for duplicates of one.
const DUPLICATE_NAME_CANDIDATES_MAX: usize = 200;
/// Possible duplicates reported at most.
const DUPLICATES_REPORTED_MAX: usize = 20;

/// Who is asking, and how far their permission reaches.
#[derive(Debug, Clone)]
pub struct Viewer {
    pub user_id: i64,
    pub scope: Scope,
    /// The user and their direct reports, for `team` scope.
    pub team: Vec<i64>,
}

impl Viewer {
    /// Whether a party owned by `owner` is within reach.
    pub fn reaches(&self, owner: Option<i64>) -> bool {
        match self.scope {
            Scope::All => true,
            Scope::Team => owner.is_some_and(|o| self.team.contains(&o)),
            Scope::Own => owner == Some(self.user_id),
        }
    }

    /// The owners whose parties are within reach; None for all.
    pub fn owners(&self) -> Option<Vec<i64>> {
        match self.scope {
            Scope::All => None,
            Scope::Team => Some(self.team.clone()),
            Scope::Own => Some(vec![self.user_id]),
        }
    }
}

/// A party that looks like the one being written.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct DuplicateCandidate {
    pub id: i64,
    pub name: String,
    /// What matched: `tax_id`, `email`, `phone`, `external_id` or `name`.
    pub reasons: Vec<String>,
    /// Name similarity, 0 to 1.
    pub similarity: f64,
}

/// A party's open receivable and payable, from ledger lines tagged with it (and with the
/// parties merged into it): lines on asset accounts are receivable, on liability accounts
/// payable.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct PartyBalance {
    pub party: i64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub as_of: Option<NaiveDate>,
    /// The company's base currency, in which the totals are.
    pub currency: String,
    /// Owed to the company (debit positive).
    pub receivable: String,
    /// Owed by the company (credit positive).
    pub payable: String,
    /// Receivable minus payable.
    pub net: String,
    pub by_currency: Vec<CurrencyBalance>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub credit_limit: Option<String>,
    /// Credit limit minus receivable, when the limit is in the base currency.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub credit_available: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct CurrencyBalance {
    pub currency: String,
    pub receivable: String,
    pub payable: String,
}

/// Merging: the party named in the path is merged into `into`.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct MergeInput {
    /// The surviving party's id.
    pub into: i64,
}

/// What a merge did.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct MergeResult {
    pub survivor: PartyView,
    pub merged: i64,
    /// Relationships and custom-field references moved to the survivor.
    pub references_moved: i64,
}

#[derive(Debug, Clone)]
pub struct Parties {
    db: Database,
    authz: Arc<Authz>,
}

impl Parties {
    pub fn new(db: Database, authz: Arc<Authz>) -> Self {
        Self { db, authz }
    }

    pub fn db(&self) -> &Database {
        &self.db
    }

    /// The viewer for a user and the scope of the permission they act under.
    pub async fn viewer(&self, user_id: i64, scope: Scope) -> Result<Viewer> {
        let team = if scope == Scope::Team {
            self.authz.team_of(user_id).await?
        } else {
            Vec::new()
        };
        Ok(Viewer {
            user_id,
            scope,
            team,
        })
    }

    async fn write(
        &self,
        company: &Company,
        key: Option<&RequestKey>,
        operation: impl AsyncFnOnce(&mut Tx) -> Result<StoredResponse>,
    ) -> Result<StoredResponse> {
        idempotency::once_committed(&self.db, company, key, operation).await
    }

    pub async fn read<T>(&self, operation: impl AsyncFnOnce(&mut Tx) -> Result<T>) -> Result<T> {
        self.db.read(operation).await
    }

    pub async fn create(
        &self,
        company: &Company,
        viewer: &Viewer,
        new: &NewParty,
        key: Option<&RequestKey>,
        origin: &Origin,
    ) -> Result<StoredResponse> {
        self.write(company, key, async |tx: &mut Tx| {
            let view = create_in(tx, company, viewer, new, origin).await?;
            crate::api::stored(201, &view)
        })
        .await
    }

    pub async fn get(&self, company: &Company, viewer: &Viewer, id: i64) -> Result<PartyView> {
        self.read(async |tx: &mut Tx| {
            let party = visible(tx, company, viewer, id).await?;
            Ok(party.view(company))
        })
        .await
    }

    pub async fn update(
        &self,
        company: &Company,
        viewer: &Viewer,
        id: i64,
        changes: &PartyChanges,
        key: Option<&RequestKey>,
        origin: &Origin,
    ) -> Result<StoredResponse> {
        self.write(company, key, async |tx: &mut Tx| {
            let view = update_in(tx, company, viewer, id, changes, origin).await?;
            crate::api::stored(200, &view)
        })
        .await
    }

    /// Possible duplicates of an existing party.
    pub async fn duplicates_of(
        &self,
        company: &Company,
        viewer: &Viewer,
        id: i64,
    ) -> Result<Vec<DuplicateCandidate>> {
        self.read(async |tx: &mut Tx| {
            let party = visible(tx, company, viewer, id).await?;
            find_duplicates(tx, company, &party.data, Some(id)).await
        })
        .await
    }

    pub async fn merge(
        &self,
        company: &Company,
        viewer: &Viewer,
        id: i64,
        into: i64,
        key: Option<&RequestKey>,
        origin: &Origin,
    ) -> Result<StoredResponse> {
        self.write(company, key, async |tx: &mut Tx| {
            let result = merge_in(tx, company, viewer, id, into, origin).await?;
            crate::api::stored(200, &result)
        })
        .await
    }

    pub async fn balance(
        &self,
        company: &Company,
        viewer: &Viewer,
        id: i64,
        as_of: Option<NaiveDate>,
    ) -> Result<PartyBalance> {
        self.read(async |tx: &mut Tx| {
            let party = visible(tx, company, viewer, id).await?;
            balance_in(tx, company, &party, as_of).await
        })
        .await
    }

    pub async fn fields(&self, company: &Company) -> Result<Vec<FieldDefinition>> {
        self.read(async |tx: &mut Tx| fields::list(tx, company).await)
            .await
    }

    pub async fn create_field(
        &self,
        company: &Company,
        new: &fields::NewFieldDefinition,
        key: Option<&RequestKey>,
        origin: &Origin,
    ) -> Result<StoredResponse> {
        self.write(company, key, async |tx: &mut Tx| {
            let field = fields::create(tx, company, new, None).await?;
            let event = Event::new(
                Some(company.id),
                "parties.fields:create",
                "party.field",
                &field.name,
                json!({ "after": field }),
            );
            audit::append(tx, origin, &[event]).await?;
            crate::api::stored(201, &field)
        })
        .await
    }

    pub async fn update_field(
        &self,
        company: &Company,
        name: &str,
        changes: &fields::FieldChanges,
        key: Option<&RequestKey>,
        origin: &Origin,
    ) -> Result<StoredResponse> {
        self.write(company, key, async |tx: &mut Tx| {
            let before = fields::get(tx, company, name).await?;
            fields::check_admin_may_change(&before)?;
            let field = fields::update(tx, company, name, changes).await?;
            let event = Event::new(
                Some(company.id),
                "parties.fields:update",
                "party.field",
                name,
                json!({ "before": before, "after": field }),
            );
            audit::append(tx, origin, &[event]).await?;
            crate::api::stored(200, &field)
        })
        .await
    }

    pub async fn delete_field(
        &self,
        company: &Company,
        name: &str,
        key: Option<&RequestKey>,
        origin: &Origin,
    ) -> Result<StoredResponse> {
        self.write(company, key, async |tx: &mut Tx| {
            fields::check_admin_may_change(&fields::get(tx, company, name).await?)?;
            let field = fields::delete(tx, company, name).await?;
            let event = Event::new(
                Some(company.id),
                "parties.fields:delete",
                "party.field",
                name,
                json!({ "before": field }),
            );
            audit::append(tx, origin, &[event]).await?;
            crate::api::stored(200, &field)
        })
        .await
    }
}

/// The party, if it exists and the viewer reaches it; otherwise not found (a party out of
/// reach is not revealed).
pub async fn visible(
    tx: &mut Tx,
    company: &Company,
    viewer: &Viewer,
    id: i64,
) -> Result<StoredParty> {
    let party = store::get(tx, company, id).await?;
    if viewer.reaches(party.data.owner) {
        Ok(party)
    } else {
        Err(Error::NotFound(format!("party {id} not found")))
    }
}

/// Checks what needs the database: custom fields, owner, related parties, external ids.
async fn check_references(
    tx: &mut Tx,
    company: &Company,
    viewer: &Viewer,
    data: &PartyData,
    own_id: Option<i64>,
) -> Result<CheckedValues> {
    let definitions = fields::list(tx, company).await?;
    let (custom, mut errors) =
        fields::check_values_collecting(&definitions, data.kind, &data.custom_fields);

    if let Some(owner) = data.owner {
        let active: Option<bool> = on_conn!(tx, conn => {
            use crate::db::Row as _;
            sqlx::query("SELECT status FROM users WHERE id = $1")
                .bind(owner)
                .fetch_optional(&mut *conn)
                .await?
                .map(|row| row.text("status").map(|s| s == "active"))
                .transpose()?
        });
        match active {
            None => errors.push(FieldError::new(
                "owner",
                format!("user {owner} does not exist"),
            )),
            Some(false) => errors.push(FieldError::new(
                "owner",
                format!("user {owner} is disabled"),
            )),
            Some(true) if !viewer.reaches(Some(owner)) => {
                return Err(Error::Forbidden(format!(
                    "you may not give a party to user {owner}: your permission reaches {} parties only",
                    match viewer.scope {
                        Scope::Own => "your own",
                        Scope::Team => "your team's",
                        Scope::All => "all",
                    }
                )));
            }
            Some(true) => {}
        }
    }

    let mut referenced: Vec<(String, i64)> = data
        .relationships
        .iter()
        .enumerate()
        .map(|(i, r)| (format!("relationships[{i}].party"), r.party))
        .collect();
    referenced.extend(custom.party_refs.iter().cloned());
    let ids: Vec<i64> = referenced.iter().map(|(_, id)| *id).collect();
    let found = store::existing(tx, company, &ids).await?;
    for (field, id) in &referenced {
        match found.iter().find(|(found_id, _)| found_id == id) {
            _ if Some(*id) == own_id => errors.push(FieldError::new(
                field.clone(),
                "a party cannot refer to itself",
            )),
            None => errors.push(FieldError::new(
                field.clone(),
                format!("party {id} does not exist"),
            )),
            Some((_, Some(survivor))) => errors.push(FieldError::new(
                field.clone(),
                format!("party {id} was merged into party {survivor}; refer to {survivor}"),
            )),
            Some((_, None)) => {}
        }
    }

    let external: Vec<(String, String)> = data
        .external_ids
        .iter()
        .map(|e| {
            (
                "external_id".to_owned(),
                store::external_key(&e.system, &e.id),
            )
        })
        .collect();
    for (holder, _, value) in store::holders_of(tx, company, &external, own_id).await? {
        let (system, id) = value.split_once('\u{1f}').unwrap_or((&value, ""));
        let index = data
            .external_ids
            .iter()
            .position(|e| e.system == system)
            .unwrap_or_default();
        errors.push(FieldError::new(
            format!("external_ids[{index}]"),
            format!("party {holder} already has id {id:?} in {system:?}"),
        ));
    }
    if errors.is_empty() {
        Ok(custom)
    } else {
        Err(Error::Invalid(errors))
    }
}

/// Who owns a new party when the input names nobody: the creating user (a user whose
/// permission reaches only their own or their team's parties must own what they create).
pub fn default_owner(viewer: &Viewer, origin: &Origin) -> Option<i64> {
    if viewer.scope == Scope::All {
        origin.actor.user_id
    } else {
        Some(viewer.user_id)
    }
}

/// Creates a party in `tx`: validated, checked for duplicates unless allowed, audited.
/// Publishes a party event about party `id` (subject `party/<id>`).
async fn publish(
    tx: &mut Tx,
    company: &Company,
    topic: &str,
    id: i64,
    payload: &impl serde::Serialize,
) -> Result<()> {
    crate::events::publish(tx, company.id, topic, &format!("party/{id}"), payload, None).await?;
    Ok(())
}

pub async fn create_in(
    tx: &mut Tx,
    company: &Company,
    viewer: &Viewer,
    new: &NewParty,
    origin: &Origin,
) -> Result<PartyView> {
    let mut new = new.clone();
    new.owner = new.owner.or(default_owner(viewer, origin));
    let data = new.validate(company.base_currency)?;
    let custom = check_references(tx, company, viewer, &data, None).await?;
    if !new.allow_duplicate {
        let candidates = find_duplicates(tx, company, &data, None).await?;
        if !candidates.is_empty() {
            return Err(Error::Duplicates {
                detail: format!(
                    "{} existing parties look like this one; send \"allow_duplicate\": true to create it anyway, or use the existing one",
                    candidates.len()
                ),
                candidates: serde_json::to_value(&candidates).map_err(anyhow::Error::from)?,
            });
        }
    }
    let now = crate::ledger::posting::now_micros();
    let id = store::insert_many(tx, company, &[(&data, &custom)], now).await?[0];
    let view = store::get(tx, company, id).await?.view(company);
    let event = Event::new(
        Some(company.id),
        "parties:create",
        "party",
        id,
        json!({ "after": view }),
    );
    audit::append(tx, origin, &[event]).await?;
    publish(tx, company, topics::PARTY_CREATED, id, &view).await?;
    Ok(view)
}

pub async fn update_in(
    tx: &mut Tx,
    company: &Company,
    viewer: &Viewer,
    id: i64,
    changes: &PartyChanges,
    origin: &Origin,
) -> Result<PartyView> {
    let current = store::get_for_update(tx, company, id).await?;
    if !viewer.reaches(current.data.owner) {
        return Err(Error::NotFound(format!("party {id} not found")));
    }
    if current.data.status == PartyStatus::Merged {
        return Err(Error::Conflict(format!(
            "party {id} was merged into party {}; change that one",
            current.merged_into.unwrap_or_default()
        )));
    }
    if current.stamps.anonymized_at.is_some() && changes.adds_personal_data() {
        return Err(Error::Conflict(format!(
            "party {id} was anonymized; only its owner, status and roles can change"
        )));
    }
    let input = current.data.to_input(company.base_currency).apply(changes);
    let data = input.validate(company.base_currency)?;
    let custom = check_references(tx, company, viewer, &data, Some(id)).await?;
    let before = current.view(company);
    let now = crate::ledger::posting::now_micros();
    store::update(tx, company, id, &data, &custom, now).await?;
    let after = store::get(tx, company, id).await?.view(company);
    let event = Event::new(
        Some(company.id),
        "parties:update",
        "party",
        id,
        json!({ "before": before, "after": after }),
    );
    audit::append(tx, origin, &[event]).await?;
    publish(tx, company, topics::PARTY_UPDATED, id, &after).await?;
    Ok(after)
}

/// Existing parties sharing a tax id, email, phone or external id with `data`, or with a very
/// similar name; strongest matches first.
pub async fn find_duplicates(
    tx: &mut Tx,
    company: &Company,
    data: &PartyData,
    except: Option<i64>,
) -> Result<Vec<DuplicateCandidate>> {
    let mut keys: Vec<(String, String)> = Vec::new();
    keys.extend(
        data.tax_ids
            .iter()
            .map(|t| ("tax_id".to_owned(), t.value.clone())),
    );
    keys.extend(data.emails.iter().map(|e| ("email".to_owned(), e.clone())));
    keys.extend(data.phones.iter().map(|p| ("phone".to_owned(), p.clone())));
    let own_key = name_key(&data.name);
    keys.push(("name".to_owned(), own_key.clone()));
    let mut candidates: Vec<DuplicateCandidate> = Vec::new();
    for (party, kind, _) in store::holders_of(tx, company, &keys, except).await? {
        let reason = kind;
        match candidates.iter_mut().find(|c| c.id == party) {
            Some(candidate) if !candidate.reasons.contains(&reason) => {
                candidate.reasons.push(reason)
            }
            Some(_) => {}
            None => candidates.push(DuplicateCandidate {
                id: party,
                name: String::new(),
                reasons: vec![reason],
                similarity: 0.0,
            }),
        }
    }
    // Similar names: parties sharing the name's longest word, compared by trigram similarity.
    if let Some(word) = own_key
        .split(' ')
        .filter(|w| w.chars().count() >= 3)
        .max_by_key(|w| w.len())
    {
        let similar =
            search::name_candidates(tx, company, word, DUPLICATE_NAME_CANDIDATES_MAX).await?;
        for (party, name) in similar {
            if Some(party) == except {
                continue;
            }
            let similarity = name_similarity(&own_key, &name_key(&name));
            if similarity < DUPLICATE_NAME_SIMILARITY_MIN {
                continue;
            }
            match candidates.iter_mut().find(|c| c.id == party) {
                Some(candidate) => {
                    if !candidate.reasons.iter().any(|r| r == "name") {
                        candidate.reasons.push("name".to_owned());
                    }
                }
                None => candidates.push(DuplicateCandidate {
                    id: party,
                    name,
                    reasons: vec!["name".to_owned()],
                    similarity,
                }),
            }
        }
    }
    if candidates.is_empty() {
        return Ok(candidates);
    }
    let ids: Vec<Param> = candidates.iter().map(|c| Param::Int(Some(c.id))).collect();
    let condition = format!(
        "p.id IN {} AND p.merged_into_id IS NULL",
        tx.backend().placeholders(2, ids.len())
    );
    let parties = store::select(
        tx,
        company,
        store::Source::Parties,
        &condition,
        &ids,
        store::Order::Id,
        candidates.len(),
    )
    .await?;
    candidates.retain_mut(
        |candidate| match parties.iter().find(|p| p.id == candidate.id) {
            Some(party) => {
                candidate.name = party.data.name.clone();
                candidate.similarity = name_similarity(&own_key, &name_key(&party.data.name));
                candidate.reasons.sort();
                true
            }
            None => false,
        },
    );
    candidates.sort_by(|a, b| {
        b.reasons
            .len()
            .cmp(&a.reasons.len())
            .then(b.similarity.total_cmp(&a.similarity))
            .then(a.id.cmp(&b.id))
    });
    candidates.truncate(DUPLICATES_REPORTED_MAX);
    Ok(candidates)
}

async fn merge_in(
    tx: &mut Tx,
    company: &Company,
    viewer: &Viewer,
    id: i64,
    into: i64,
    origin: &Origin,
) -> Result<MergeResult> {
    if id == into {
        return Err(Error::invalid(
            "into",
            format!("party {id} cannot be merged into itself"),
        ));
    }
    let loser = store::get_for_update(tx, company, id).await?;
    let survivor = match store::get_for_update(tx, company, into).await {
        Err(Error::NotFound(_)) => {
            return Err(Error::invalid(
                "into",
                format!("party {into} does not exist"),
            ));
        }
        other => other?,
    };
    for party in [&loser, &survivor] {
        if !viewer.reaches(party.data.owner) {
            return Err(Error::NotFound(format!("party {} not found", party.id)));
        }
        if let Some(target) = party.merged_into {
            return Err(Error::Conflict(format!(
                "party {} was already merged into party {target}",
                party.id
            )));
        }
    }
    if loser.data.kind != survivor.data.kind {
        return Err(Error::invalid(
            "into",
            format!(
                "party {id} is an {} and party {into} a {}: only parties of one kind merge",
                loser.data.kind.as_str(),
                survivor.data.kind.as_str()
            ),
        ));
    }

    // The survivor keeps its values and gains what only the merged party had.
    let mut merged = survivor.data.clone();
    fn absorb<T: Clone + PartialEq>(list: &mut Vec<T>, extra: &[T]) {
        for item in extra {
            if !list.contains(item) {
                list.push(item.clone());
            }
        }
    }
    absorb(&mut merged.tags, &loser.data.tags);
    absorb(&mut merged.addresses, &loser.data.addresses);
    absorb(&mut merged.emails, &loser.data.emails);
    absorb(&mut merged.phones, &loser.data.phones);
    absorb(&mut merged.tax_ids, &loser.data.tax_ids);
    for role in &loser.data.roles {
        if !merged.roles.contains(role) {
            merged.roles.push(*role);
        }
    }
    merged.roles.sort();
    for external in &loser.data.external_ids {
        if !merged
            .external_ids
            .iter()
            .any(|e| e.system == external.system)
        {
            merged.external_ids.push(external.clone());
        }
    }
    for relationship in &loser.data.relationships {
        if relationship.party != into
            && !merged
                .relationships
                .iter()
                .any(|r| r.kind == relationship.kind && r.party == relationship.party)
        {
            merged.relationships.push(relationship.clone());
        }
    }
    merged.relationships.sort();
    merged.legal_name = merged.legal_name.or(loser.data.legal_name.clone());
    merged.default_currency = merged.default_currency.or(loser.data.default_currency);
    merged.payment_terms_days = merged.payment_terms_days.or(loser.data.payment_terms_days);
    merged.credit_limit_minor = merged.credit_limit_minor.or(loser.data.credit_limit_minor);
    merged.owner = merged.owner.or(loser.data.owner);
    for (name, value) in &loser.data.custom_fields {
        merged
            .custom_fields
            .entry(name.clone())
            .or_insert(value.clone());
    }
    let merged = merged_lists_within_limits(merged)?;

    let before = survivor.view(company);
    // The merged party's keys and search text go: it is no longer found or matched.
    store::clear_derived(tx, id).await?;
    let moved = move_references(tx, company, id, into).await?;
    let definitions = fields::list(tx, company).await?;
    let custom = fields::check_values(&definitions, merged.kind, &merged.custom_fields)?;
    let now = crate::ledger::posting::now_micros();
    store::update(tx, company, into, &merged, &custom, now).await?;
    on_conn!(tx, conn => {
        sqlx::query(
            "UPDATE parties SET status = 'merged', merged_into_id = $1, updated_at = $2 WHERE company_id = $3 AND id = $4",
        )
        .bind(into)
        .bind(now)
        .bind(company.id)
        .bind(id)
        .execute(&mut *conn)
        .await?;
        // Parties merged into the loser earlier now point at the survivor too.
        sqlx::query("UPDATE parties SET merged_into_id = $1 WHERE company_id = $2 AND merged_into_id = $3")
            .bind(into)
            .bind(company.id)
            .bind(id)
            .execute(&mut *conn)
            .await?;
    });
    let after = store::get(tx, company, into).await?.view(company);
    let events = [
        Event::new(
            Some(company.id),
            "parties:merge",
            "party",
            id,
            json!({ "into": into, "before": loser.view(company), "references_moved": moved }),
        ),
        Event::new(
            Some(company.id),
            "parties:update",
            "party",
            into,
            json!({ "before": before, "after": after, "merged": id }),
        ),
    ];
    audit::append(tx, origin, &events).await?;
    publish(
        tx,
        company,
        topics::PARTY_MERGED,
        id,
        &json!({ "merged": id, "into": into }),
    )
    .await?;
    publish(tx, company, topics::PARTY_UPDATED, into, &after).await?;
    Ok(MergeResult {
        survivor: after,
        merged: id,
        references_moved: moved,
    })
}

fn merged_lists_within_limits(data: PartyData) -> Result<PartyData> {
    let lists = [
        ("tags", data.tags.len()),
        ("addresses", data.addresses.len()),
        ("emails", data.emails.len()),
        ("phones", data.phones.len()),
        ("tax_ids", data.tax_ids.len()),
        ("relationships", data.relationships.len()),
    ];
    let errors: Vec<FieldError> = lists
        .iter()
        .filter(|(_, len)| *len > model::LIST_ITEMS_MAX)
        .map(|(field, len)| {
            FieldError::new(
                *field,
                format!(
                    "merged, the survivor would hold {len} {field}, more than {}; remove some first",
                    model::LIST_ITEMS_MAX
                ),
            )
        })
        .collect();
    if errors.is_empty() {
        Ok(data)
    } else {
        Err(Error::Invalid(errors))
    }
}

/// Points relationships and party-type custom fields at `into` instead of `id`.
async fn move_references(tx: &mut Tx, company: &Company, id: i64, into: i64) -> Result<i64> {
    let mut moved = 0;
    // Relationships towards the loser: re-pointed, unless the party already has that link.
    let rows = tx
        .fetch_packed(
            &tx.backend().numbered(
                "SELECT party_id, kind, title FROM party_relationships WHERE related_party_id = $1",
            ),
            &["party_id", "kind", "title"],
            &[Param::Int(Some(id))],
        )
        .await?;
    for row in rows {
        let (party, kind) = (row.int(0)?, row.text(1)?);
        on_conn!(tx, conn => {
            sqlx::query("DELETE FROM party_relationships WHERE party_id = $1 AND kind = $2 AND related_party_id = $3")
                .bind(party).bind(&kind).bind(id).execute(&mut *conn).await?;
            if party != into {
                sqlx::query(
                    "INSERT INTO party_relationships (company_id, party_id, kind, related_party_id, title) \
                     VALUES ($1, $2, $3, $4, $5) ON CONFLICT (party_id, kind, related_party_id) DO NOTHING",
                )
                .bind(company.id).bind(party).bind(&kind).bind(into).bind(row.opt_text(2)?)
                .execute(&mut *conn).await?;
            }
        });
        moved += 1;
    }
    // Party-type custom fields holding the loser's id.
    let definitions = fields::list(tx, company).await?;
    for definition in definitions
        .iter()
        .filter(|d| d.field_type == fields::FieldType::Party)
    {
        let keys = vec![(fields::key_kind(&definition.name), id.to_string())];
        for (holder, _, _) in store::holders_of(tx, company, &keys, None).await? {
            if holder == id {
                continue;
            }
            let mut party = store::get(tx, company, holder).await?;
            party
                .data
                .custom_fields
                .insert(definition.name.clone(), Value::from(into));
            let custom =
                fields::check_values(&definitions, party.data.kind, &party.data.custom_fields)?;
            store::update(
                tx,
                company,
                holder,
                &party.data,
                &custom,
                crate::ledger::posting::now_micros(),
            )
            .await?;
            moved += 1;
        }
    }
    Ok(moved)
}

pub async fn balance_in(
    tx: &mut Tx,
    company: &Company,
    party: &StoredParty,
    as_of: Option<NaiveDate>,
) -> Result<PartyBalance> {
    let mut params = vec![
        Param::Int(Some(company.id)),
        Param::Int(Some(party.id)),
        Param::Date(as_of),
    ];
    params.truncate(if as_of.is_some() { 3 } else { 2 });
    let date_condition = if as_of.is_some() {
        "AND l.entry_date <= $3"
    } else {
        ""
    };
    let sql = tx.backend().numbered(&format!(
        "SELECT a.account_type AS account_type, l.currency AS currency, \
         SUM(l.amount_minor) AS amount, SUM(l.base_amount_minor) AS base_amount \
         FROM ledger_lines l JOIN ledger_accounts a ON a.id = l.account_id \
         WHERE l.company_id = $1 AND a.account_type IN ('asset', 'liability') {date_condition} \
         AND l.party_id IN (SELECT id FROM parties WHERE id = $2 OR merged_into_id = $2) \
         GROUP BY a.account_type, l.currency"
    ));
    let rows = tx
        .fetch_packed(
            &sql,
            &["account_type", "currency", "amount", "base_amount"],
            &params,
        )
        .await?;
    let base = company.base_currency;
    let (mut receivable, mut payable) = (0_i64, 0_i64);
    let mut by_currency: std::collections::BTreeMap<String, (i64, i64)> = Default::default();
    for row in &rows {
        let (kind, code) = (row.text(0)?, row.text(1)?);
        let (amount, base_amount) = (row.int(2)?, row.int(3)?);
        let entry = by_currency.entry(code).or_default();
        if kind == "asset" {
            receivable += base_amount;
            entry.0 += amount;
        } else {
            payable -= base_amount;
            entry.1 -= amount;
        }
    }
    let places = |code: &str| crate::currency::lookup(code).map_or(2, |c| c.minor_units);
    let credit_currency = party.data.currency(base);
    Ok(PartyBalance {
        party: party.id,
        as_of,
        currency: base.code.to_owned(),
        receivable: format_minor(receivable, base.minor_units),
        payable: format_minor(payable, base.minor_units),
        net: format_minor(receivable - payable, base.minor_units),
        by_currency: by_currency
            .into_iter()
            .map(|(code, (r, p))| CurrencyBalance {
                receivable: format_minor(r, places(&code)),
                payable: format_minor(p, places(&code)),
                currency: code,
            })
            .collect(),
        credit_limit: party
            .data
            .credit_limit_minor
            .map(|limit| format_minor(limit, credit_currency.minor_units)),
        credit_available: party
            .data
            .credit_limit_minor
            .filter(|_| credit_currency == base)
            .map(|limit| format_minor(limit - receivable, base.minor_units)),
    })
}
