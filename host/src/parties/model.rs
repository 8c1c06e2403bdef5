//! What a party is made of, as the API takes and shows it, and the rules its values follow.
//! Inputs are validated into [`PartyData`], the one normalized form that create, update,
//! import and merge all write.

use chrono::{DateTime, Utc};
use rust_decimal::Decimal;
use serde::{Deserialize, Deserializer, Serialize};
use serde_json::{Map, Value};
use utoipa::ToSchema;

use super::countries;
use crate::currency::{self, Currency};
use crate::error::{Error, FieldError, Result};
use crate::ledger::model::format_minor;

/// Longest display or legal name.
pub const NAME_CHARS_MAX: usize = 200;
/// Most entries in any one list of a party (emails, phones, addresses, tags …).
pub const LIST_ITEMS_MAX: usize = 50;
/// Longest tag, label, address line or external id.
pub const SHORT_TEXT_CHARS_MAX: usize = 200;
/// Longest payment terms, in days.
pub const PAYMENT_TERMS_DAYS_MAX: u32 = 3650;
/// Digits in an international phone number (E.164 allows 15; 7 is the shortest in use).
const PHONE_DIGITS: std::ops::RangeInclusive<usize> = 7..=15;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum PartyKind {
    Organization,
    Person,
}

impl PartyKind {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Organization => "organization",
            Self::Person => "person",
        }
    }

    pub fn parse(text: &str) -> Option<Self> {
        match text {
            "organization" => Some(Self::Organization),
            "person" => Some(Self::Person),
            _ => None,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum PartyRole {
    Customer,
    Vendor,
    Employee,
    Contact,
}

impl PartyRole {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Customer => "customer",
            Self::Vendor => "vendor",
            Self::Employee => "employee",
            Self::Contact => "contact",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum PartyStatus {
    Active,
    /// Kept, but no new business: modules refuse new orders and invoices for it.
    Blocked,
    /// Out of daily lists; history stays.
    Archived,
    /// Merged into another party (`merged_into`); set only by a merge.
    Merged,
}

impl PartyStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Active => "active",
            Self::Blocked => "blocked",
            Self::Archived => "archived",
            Self::Merged => "merged",
        }
    }

    pub fn parse(text: &str) -> Option<Self> {
        match text {
            "active" => Some(Self::Active),
            "blocked" => Some(Self::Blocked),
            "archived" => Some(Self::Archived),
            "merged" => Some(Self::Merged),
            _ => None,
        }
    }
}

/// A postal address.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Address {
    /// What the address is for, such as `billing`, `shipping` or `office`.
    #[schema(example = "billing")]
    pub purpose: String,
    /// Street lines, in order.
    #[serde(default)]
    pub lines: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub city: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub region: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub postal_code: Option<String>,
    /// ISO 3166-1 alpha-2 code.
    #[schema(example = "DE")]
    pub country: String,
}

/// A tax identifier such as a VAT number.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct TaxId {
    /// The kind of number, such as `vat`, `ein` or `gst`.
    #[schema(example = "vat")]
    pub scheme: String,
    /// Stored in upper case without spaces, dots or dashes.
    #[schema(example = "DE123456789")]
    pub value: String,
    /// ISO 3166-1 alpha-2 code of the issuing country.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub country: Option<String>,
}

/// The party's id in another system (an old CRM, a web shop); unique per system.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ExternalId {
    #[schema(example = "legacy-crm")]
    pub system: String,
    #[schema(example = "C-10442")]
    pub id: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum RelationshipKind {
    /// A person who is a contact of an organization.
    ContactOf,
    /// An organization owned by a parent company.
    SubsidiaryOf,
}

impl RelationshipKind {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::ContactOf => "contact_of",
            Self::SubsidiaryOf => "subsidiary_of",
        }
    }

    pub fn parse(text: &str) -> Option<Self> {
        match text {
            "contact_of" => Some(Self::ContactOf),
            "subsidiary_of" => Some(Self::SubsidiaryOf),
            _ => None,
        }
    }
}

/// This party's link to another: `{"kind": "contact_of", "party": 12, "title": "CFO"}`.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Relationship {
    pub kind: RelationshipKind,
    /// The other party's id.
    pub party: i64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub title: Option<String>,
}

/// A new party.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewParty {
    pub kind: PartyKind,
    /// The name people know it by.
    #[schema(example = "Zephyr Widgets GmbH")]
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub legal_name: Option<String>,
    #[serde(default)]
    pub roles: Vec<PartyRole>,
    #[serde(default)]
    pub tags: Vec<String>,
    #[serde(default)]
    pub addresses: Vec<Address>,
    #[serde(default)]
    #[schema(example = json!(["billing@zephyr.example"]))]
    pub emails: Vec<String>,
    /// International form, such as `+49 30 1234567`.
    #[serde(default)]
    pub phones: Vec<String>,
    #[serde(default)]
    pub tax_ids: Vec<TaxId>,
    #[serde(default)]
    pub external_ids: Vec<ExternalId>,
    /// ISO 4217 code; the company's base currency when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub default_currency: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub payment_terms_days: Option<u32>,
    /// Decimal string in the party's default currency.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(example = "25000.00")]
    pub credit_limit: Option<String>,
    /// The responsible user's id; the creating user when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub owner: Option<i64>,
    /// `active` when absent; `merged` is set only by merging.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<PartyStatus>,
    #[serde(default)]
    pub relationships: Vec<Relationship>,
    /// Values of the custom fields declared for parties, by field name.
    #[serde(default)]
    #[schema(value_type = Object)]
    pub custom_fields: Map<String, Value>,
    /// Create it even though it looks like a duplicate of an existing party.
    #[serde(default)]
    pub allow_duplicate: bool,
}

/// Changes to a party: every field present replaces the current value (lists as a whole;
/// custom fields one by one, `null` removing a value); `null` clears an optional field.
#[derive(Debug, Clone, Default, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PartyChanges {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kind: Option<PartyKind>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    #[serde(
        default,
        deserialize_with = "present",
        skip_serializing_if = "Option::is_none"
    )]
    #[schema(value_type = Option<String>)]
    pub legal_name: Option<Option<String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub roles: Option<Vec<PartyRole>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tags: Option<Vec<String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub addresses: Option<Vec<Address>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub emails: Option<Vec<String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub phones: Option<Vec<String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tax_ids: Option<Vec<TaxId>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub external_ids: Option<Vec<ExternalId>>,
    #[serde(
        default,
        deserialize_with = "present",
        skip_serializing_if = "Option::is_none"
    )]
    #[schema(value_type = Option<String>)]
    pub default_currency: Option<Option<String>>,
    #[serde(
        default,
        deserialize_with = "present",
        skip_serializing_if = "Option::is_none"
    )]
    #[schema(value_type = Option<u32>)]
    pub payment_terms_days: Option<Option<u32>>,
    #[serde(
        default,
        deserialize_with = "present",
        skip_serializing_if = "Option::is_none"
    )]
    #[schema(value_type = Option<String>)]
    pub credit_limit: Option<Option<String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub owner: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<PartyStatus>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub relationships: Option<Vec<Relationship>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<Object>)]
    pub custom_fields: Option<Map<String, Value>>,
}

/// Tells a present `null` (`Some(None)`) from an absent field (`None`).
fn present<'de, D, T>(deserializer: D) -> std::result::Result<Option<Option<T>>, D::Error>
where
    D: Deserializer<'de>,
    T: Deserialize<'de>,
{
    Option::<T>::deserialize(deserializer).map(Some)
}

/// A party as the API shows it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct PartyView {
    pub id: i64,
    pub kind: PartyKind,
    pub name: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub legal_name: Option<String>,
    pub roles: Vec<PartyRole>,
    pub tags: Vec<String>,
    pub addresses: Vec<Address>,
    pub emails: Vec<String>,
    pub phones: Vec<String>,
    pub tax_ids: Vec<TaxId>,
    pub external_ids: Vec<ExternalId>,
    pub default_currency: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub payment_terms_days: Option<u32>,
    /// In the default currency.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub credit_limit: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub owner: Option<i64>,
    pub status: PartyStatus,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub merged_into: Option<i64>,
    pub relationships: Vec<Relationship>,
    #[schema(value_type = Object)]
    pub custom_fields: Map<String, Value>,
    pub created_at: DateTime<Utc>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub updated_at: Option<DateTime<Utc>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub anonymized_at: Option<DateTime<Utc>>,
}

/// A validated, normalized party: what gets written.
#[derive(Debug, Clone, PartialEq)]
pub struct PartyData {
    pub kind: PartyKind,
    pub name: String,
    pub legal_name: Option<String>,
    pub roles: Vec<PartyRole>,
    pub tags: Vec<String>,
    pub addresses: Vec<Address>,
    pub emails: Vec<String>,
    pub phones: Vec<String>,
    pub tax_ids: Vec<TaxId>,
    pub external_ids: Vec<ExternalId>,
    /// None: the company's base currency.
    pub default_currency: Option<&'static Currency>,
    pub payment_terms_days: Option<u32>,
    pub credit_limit_minor: Option<i64>,
    pub owner: Option<i64>,
    pub status: PartyStatus,
    pub relationships: Vec<Relationship>,
    pub custom_fields: Map<String, Value>,
}

impl PartyData {
    /// The currency of the credit limit and of the party's documents by default.
    pub fn currency(&self, base: &'static Currency) -> &'static Currency {
        self.default_currency.unwrap_or(base)
    }

    pub fn view(
        &self,
        id: i64,
        base: &'static Currency,
        stamps: Stamps,
        merged_into: Option<i64>,
    ) -> PartyView {
        let currency = self.currency(base);
        PartyView {
            id,
            kind: self.kind,
            name: self.name.clone(),
            legal_name: self.legal_name.clone(),
            roles: self.roles.clone(),
            tags: self.tags.clone(),
            addresses: self.addresses.clone(),
            emails: self.emails.clone(),
            phones: self.phones.clone(),
            tax_ids: self.tax_ids.clone(),
            external_ids: self.external_ids.clone(),
            default_currency: currency.code.to_owned(),
            payment_terms_days: self.payment_terms_days,
            credit_limit: self
                .credit_limit_minor
                .map(|minor| format_minor(minor, currency.minor_units)),
            owner: self.owner,
            status: self.status,
            merged_into,
            relationships: self.relationships.clone(),
            custom_fields: self.custom_fields.clone(),
            created_at: stamps.created_at,
            updated_at: stamps.updated_at,
            anonymized_at: stamps.anonymized_at,
        }
    }

    /// The input that would produce this party again, for applying changes.
    pub fn to_input(&self, base: &'static Currency) -> NewParty {
        let currency = self.currency(base);
        NewParty {
            kind: self.kind,
            name: self.name.clone(),
            legal_name: self.legal_name.clone(),
            roles: self.roles.clone(),
            tags: self.tags.clone(),
            addresses: self.addresses.clone(),
            emails: self.emails.clone(),
            phones: self.phones.clone(),
            tax_ids: self.tax_ids.clone(),
            external_ids: self.external_ids.clone(),
            default_currency: self.default_currency.map(|c| c.code.to_owned()),
            payment_terms_days: self.payment_terms_days,
            credit_limit: self
                .credit_limit_minor
                .map(|minor| format_minor(minor, currency.minor_units)),
            owner: self.owner,
            status: Some(self.status),
            relationships: self.relationships.clone(),
            custom_fields: self.custom_fields.clone(),
            allow_duplicate: true,
        }
    }
}

/// When a party was created, last changed and anonymized.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Stamps {
    pub created_at: DateTime<Utc>,
    pub updated_at: Option<DateTime<Utc>>,
    pub anonymized_at: Option<DateTime<Utc>>,
}

impl PartyChanges {
    /// Whether the changes set anything that is personal data (refused once anonymized).
    pub fn adds_personal_data(&self) -> bool {
        self.name.is_some()
            || self.legal_name.is_some()
            || self.emails.is_some()
            || self.phones.is_some()
            || self.addresses.is_some()
            || self.tax_ids.is_some()
            || self.external_ids.is_some()
            || self.tags.is_some()
            || self.custom_fields.is_some()
            || self.relationships.is_some()
    }
}

impl NewParty {
    /// Applies `changes` on top of this input.
    pub fn apply(mut self, changes: &PartyChanges) -> Self {
        let c = changes.clone();
        if let Some(kind) = c.kind {
            self.kind = kind;
        }
        if let Some(name) = c.name {
            self.name = name;
        }
        if let Some(legal_name) = c.legal_name {
            self.legal_name = legal_name;
        }
        if let Some(roles) = c.roles {
            self.roles = roles;
        }
        if let Some(tags) = c.tags {
            self.tags = tags;
        }
        if let Some(addresses) = c.addresses {
            self.addresses = addresses;
        }
        if let Some(emails) = c.emails {
            self.emails = emails;
        }
        if let Some(phones) = c.phones {
            self.phones = phones;
        }
        if let Some(tax_ids) = c.tax_ids {
            self.tax_ids = tax_ids;
        }
        if let Some(external_ids) = c.external_ids {
            self.external_ids = external_ids;
        }
        if let Some(currency) = c.default_currency {
            self.default_currency = currency;
        }
        if let Some(days) = c.payment_terms_days {
            self.payment_terms_days = days;
        }
        if let Some(limit) = c.credit_limit {
            self.credit_limit = limit;
        }
        if let Some(owner) = c.owner {
            self.owner = Some(owner);
        }
        if let Some(status) = c.status {
            self.status = Some(status);
        }
        if let Some(relationships) = c.relationships {
            self.relationships = relationships;
        }
        if let Some(fields) = c.custom_fields {
            for (name, value) in fields {
                if value.is_null() {
                    self.custom_fields.remove(&name);
                } else {
                    self.custom_fields.insert(name, value);
                }
            }
        }
        self
    }

    /// Checks and normalizes everything that needs no database: formats, lengths, codes.
    /// Custom fields, the owner and related parties are checked against the database by the
    /// caller; their raw values pass through.
    pub fn validate(&self, base: &'static Currency) -> Result<PartyData> {
        let mut errors = Vec::new();
        let name = required_text("name", &self.name, NAME_CHARS_MAX, &mut errors);
        let legal_name = self
            .legal_name
            .as_deref()
            .map(|text| required_text("legal_name", text, NAME_CHARS_MAX, &mut errors))
            .filter(|text| !text.is_empty());
        check_count("roles", self.roles.len(), &mut errors);
        let mut roles = self.roles.clone();
        roles.sort();
        roles.dedup();

        check_count("tags", self.tags.len(), &mut errors);
        let mut tags = Vec::new();
        for (i, tag) in self.tags.iter().enumerate() {
            let tag = required_text(
                &format!("tags[{i}]"),
                tag,
                SHORT_TEXT_CHARS_MAX,
                &mut errors,
            );
            if !tag.is_empty() && !tags.contains(&tag) {
                tags.push(tag);
            }
        }

        check_count("addresses", self.addresses.len(), &mut errors);
        let addresses = self
            .addresses
            .iter()
            .enumerate()
            .map(|(i, address)| normalize_address(&format!("addresses[{i}]"), address, &mut errors))
            .collect();

        check_count("emails", self.emails.len(), &mut errors);
        let mut emails = Vec::new();
        for (i, email) in self.emails.iter().enumerate() {
            match normalize_email(email) {
                Ok(email) if !emails.contains(&email) => emails.push(email),
                Ok(_) => {}
                Err(message) => errors.push(FieldError::new(format!("emails[{i}]"), message)),
            }
        }

        check_count("phones", self.phones.len(), &mut errors);
        let mut phones = Vec::new();
        for (i, phone) in self.phones.iter().enumerate() {
            match normalize_phone(phone) {
                Ok(phone) if !phones.contains(&phone) => phones.push(phone),
                Ok(_) => {}
                Err(message) => errors.push(FieldError::new(format!("phones[{i}]"), message)),
            }
        }

        check_count("tax_ids", self.tax_ids.len(), &mut errors);
        let mut tax_ids: Vec<TaxId> = Vec::new();
        for (i, tax_id) in self.tax_ids.iter().enumerate() {
            if let Some(tax_id) = normalize_tax_id(&format!("tax_ids[{i}]"), tax_id, &mut errors)
                && !tax_ids.contains(&tax_id)
            {
                tax_ids.push(tax_id);
            }
        }

        check_count("external_ids", self.external_ids.len(), &mut errors);
        let mut external_ids: Vec<ExternalId> = Vec::new();
        for (i, external) in self.external_ids.iter().enumerate() {
            let field = format!("external_ids[{i}]");
            let system = required_text(
                &format!("{field}.system"),
                &external.system,
                SHORT_TEXT_CHARS_MAX,
                &mut errors,
            );
            let id = required_text(
                &format!("{field}.id"),
                &external.id,
                SHORT_TEXT_CHARS_MAX,
                &mut errors,
            );
            if external_ids.iter().any(|e| e.system == system) {
                errors.push(FieldError::new(
                    field,
                    format!("a party has one id per system; {system:?} appears twice"),
                ));
            } else {
                external_ids.push(ExternalId { system, id });
            }
        }

        let default_currency = match self.default_currency.as_deref() {
            None => None,
            Some(code) => match currency::lookup(code) {
                Some(currency) => Some(currency),
                None => {
                    errors.push(FieldError::new(
                        "default_currency",
                        format!("{code:?} is not an ISO 4217 currency code Keel knows"),
                    ));
                    None
                }
            },
        };
        if let Some(days) = self.payment_terms_days
            && days > PAYMENT_TERMS_DAYS_MAX
        {
            errors.push(FieldError::new(
                "payment_terms_days",
                format!("is at most {PAYMENT_TERMS_DAYS_MAX} days"),
            ));
        }
        let credit_currency = default_currency.unwrap_or(base);
        let credit_limit_minor = match self.credit_limit.as_deref() {
            None => None,
            Some(text) => match parse_limit(text, credit_currency) {
                Ok(minor) => Some(minor),
                Err(message) => {
                    errors.push(FieldError::new("credit_limit", message));
                    None
                }
            },
        };
        if self.status == Some(PartyStatus::Merged) {
            errors.push(FieldError::new(
                "status",
                "a party becomes merged only by merging it: POST /api/v1/parties/{id}/merge",
            ));
        }

        check_count("relationships", self.relationships.len(), &mut errors);
        let mut relationships = Vec::new();
        for (i, relationship) in self.relationships.iter().enumerate() {
            let title = relationship.title.as_deref().map(|title| {
                required_text(
                    &format!("relationships[{i}].title"),
                    title,
                    SHORT_TEXT_CHARS_MAX,
                    &mut errors,
                )
            });
            let relationship = Relationship {
                title: title.filter(|t| !t.is_empty()),
                ..relationship.clone()
            };
            if relationship.kind == RelationshipKind::ContactOf && self.kind != PartyKind::Person {
                errors.push(FieldError::new(
                    format!("relationships[{i}].kind"),
                    "only a person can be a contact of another party",
                ));
            }
            if relationship.kind == RelationshipKind::SubsidiaryOf
                && self.kind != PartyKind::Organization
            {
                errors.push(FieldError::new(
                    format!("relationships[{i}].kind"),
                    "only an organization can be a subsidiary of another party",
                ));
            }
            if relationships.iter().any(|r: &Relationship| {
                r.kind == relationship.kind && r.party == relationship.party
            }) {
                errors.push(FieldError::new(
                    format!("relationships[{i}]"),
                    "appears twice",
                ));
            } else {
                relationships.push(relationship);
            }
        }
        relationships.sort();

        if !errors.is_empty() {
            return Err(Error::Invalid(errors));
        }
        Ok(PartyData {
            kind: self.kind,
            name,
            legal_name,
            roles,
            tags,
            addresses,
            emails,
            phones,
            tax_ids,
            external_ids,
            default_currency,
            payment_terms_days: self.payment_terms_days,
            credit_limit_minor,
            owner: self.owner,
            status: self.status.unwrap_or(PartyStatus::Active),
            relationships,
            custom_fields: self.custom_fields.clone(),
        })
    }
}

fn check_count(field: &str, count: usize, errors: &mut Vec<FieldError>) {
    if count > LIST_ITEMS_MAX {
        errors.push(FieldError::new(
            field,
            format!("holds at most {LIST_ITEMS_MAX} items, not {count}"),
        ));
    }
}

/// Trimmed text that must not be empty, control characters or longer than `max` characters.
fn required_text(field: &str, text: &str, max: usize, errors: &mut Vec<FieldError>) -> String {
    let text = text.trim();
    if text.is_empty() {
        errors.push(FieldError::new(field, "must not be empty"));
    } else if text.chars().count() > max {
        errors.push(FieldError::new(
            field,
            format!("is at most {max} characters"),
        ));
    } else if text.chars().any(char::is_control) {
        errors.push(FieldError::new(
            field,
            "must not contain control characters such as line breaks",
        ));
    }
    text.to_owned()
}

fn optional_text(
    field: &str,
    text: Option<&String>,
    errors: &mut Vec<FieldError>,
) -> Option<String> {
    text.map(|t| required_text(field, t, SHORT_TEXT_CHARS_MAX, errors))
        .filter(|t| !t.is_empty())
}

fn normalize_address(field: &str, address: &Address, errors: &mut Vec<FieldError>) -> Address {
    let purpose = required_text(
        &format!("{field}.purpose"),
        &address.purpose,
        SHORT_TEXT_CHARS_MAX,
        errors,
    )
    .to_lowercase();
    if address.lines.len() > 5 {
        errors.push(FieldError::new(
            format!("{field}.lines"),
            "holds at most 5 lines",
        ));
    }
    let lines = address
        .lines
        .iter()
        .enumerate()
        .map(|(i, line)| {
            required_text(
                &format!("{field}.lines[{i}]"),
                line,
                SHORT_TEXT_CHARS_MAX,
                errors,
            )
        })
        .collect();
    let country = address.country.trim().to_uppercase();
    if !countries::is_known(&country) {
        errors.push(FieldError::new(
            format!("{field}.country"),
            format!(
                "{:?} is not an ISO 3166-1 alpha-2 country code (such as DE, US or GB)",
                address.country
            ),
        ));
    }
    Address {
        purpose,
        lines,
        city: optional_text(&format!("{field}.city"), address.city.as_ref(), errors),
        region: optional_text(&format!("{field}.region"), address.region.as_ref(), errors),
        postal_code: optional_text(
            &format!("{field}.postal_code"),
            address.postal_code.as_ref(),
            errors,
        ),
        country,
    }
}

/// An email address in the form people and mail servers accept: `local@domain.tld`, stored in
/// lower case (the local part is case-insensitive at every provider that matters).
pub fn normalize_email(text: &str) -> std::result::Result<String, String> {
    let email = text.trim().to_lowercase();
    let invalid = || format!("{text:?} is not an email address such as name@example.com");
    if email.len() > 254 || email.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err(invalid());
    }
    let (local, domain) = email.rsplit_once('@').ok_or_else(invalid)?;
    let local_ok = !local.is_empty()
        && local.len() <= 64
        && !local.contains('@')
        && !local.starts_with('.')
        && !local.ends_with('.')
        && !local.contains("..");
    let labels: Vec<&str> = domain.split('.').collect();
    let domain_ok = labels.len() >= 2
        && labels.iter().all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && !label.starts_with('-')
                && !label.ends_with('-')
                && label.chars().all(|c| c.is_alphanumeric() || c == '-')
        });
    if local_ok && domain_ok {
        Ok(email)
    } else {
        Err(invalid())
    }
}

/// A phone number in international form, stored as `+` and digits (E.164): `+49 (30) 123-4567`
/// becomes `+49301234567`.
pub fn normalize_phone(text: &str) -> std::result::Result<String, String> {
    let trimmed = text.trim();
    let invalid = |why: &str| {
        format!(
            "{text:?} is not a phone number in international form such as +49 30 1234567: {why}"
        )
    };
    let rest = trimmed
        .strip_prefix('+')
        .or_else(|| trimmed.strip_prefix("00"))
        .ok_or_else(|| invalid("start with + and the country code"))?;
    if rest
        .chars()
        .any(|c| !(c.is_ascii_digit() || matches!(c, ' ' | '-' | '.' | '(' | ')' | '/')))
    {
        return Err(invalid("only digits, spaces, dashes, dots and parentheses"));
    }
    let digits: String = rest.chars().filter(char::is_ascii_digit).collect();
    if !PHONE_DIGITS.contains(&digits.len()) || digits.starts_with('0') {
        return Err(invalid(&format!(
            "a country code and number of {} to {} digits",
            PHONE_DIGITS.start(),
            PHONE_DIGITS.end()
        )));
    }
    Ok(format!("+{digits}"))
}

fn normalize_tax_id(field: &str, tax_id: &TaxId, errors: &mut Vec<FieldError>) -> Option<TaxId> {
    let scheme = tax_id.scheme.trim().to_lowercase();
    if scheme.is_empty()
        || scheme.len() > 20
        || !scheme
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
    {
        errors.push(FieldError::new(
            format!("{field}.scheme"),
            "is a short code such as vat, ein or gst",
        ));
        return None;
    }
    let value = normalize_tax_value(&tax_id.value);
    if !(2..=30).contains(&value.len()) || !value.chars().all(|c| c.is_ascii_alphanumeric()) {
        errors.push(FieldError::new(
            format!("{field}.value"),
            format!(
                "{:?} is not a tax identifier: 2 to 30 letters and digits",
                tax_id.value
            ),
        ));
        return None;
    }
    let country = match tax_id.country.as_deref().map(str::trim) {
        None | Some("") => None,
        Some(code) => {
            let code = code.to_uppercase();
            if !countries::is_known(&code) {
                errors.push(FieldError::new(
                    format!("{field}.country"),
                    format!("{code:?} is not an ISO 3166-1 alpha-2 country code"),
                ));
                return None;
            }
            Some(code)
        }
    };
    Some(TaxId {
        scheme,
        value,
        country,
    })
}

/// Upper case without spaces, dots, dashes or slashes: `de 123.456-789` is `DE123456789`.
/// Anything else (a stray `*`) stays, so that validation can refuse it.
pub fn normalize_tax_value(text: &str) -> String {
    text.chars()
        .filter(|c| !matches!(c, ' ' | '.' | '-' | '/'))
        .flat_map(char::to_uppercase)
        .collect()
}

/// A credit limit: zero or a positive decimal in the currency's minor units.
fn parse_limit(text: &str, currency: &Currency) -> std::result::Result<i64, String> {
    if text.trim() == "0" {
        return Ok(0);
    }
    crate::ledger::model::parse_amount(text.trim(), currency)
}

/// Lower case, accents removed, punctuation as single spaces: `Müller & Söhne, GmbH` is
/// `muller sohne gmbh`. Lists sort by it; name prefixes are matched on it.
pub fn sort_key(text: &str) -> String {
    let folded: String = super::store::fold(text)
        .chars()
        .map(|c| if c.is_alphanumeric() { c } else { ' ' })
        .collect();
    folded.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// Legal-form words that say nothing about who a party is: `Zephyr Widgets GmbH` and
/// `Zephyr Widgets` are the same company.
const LEGAL_FORMS: &[&str] = &[
    "ab",
    "ag",
    "as",
    "bv",
    "co",
    "company",
    "corp",
    "corporation",
    "gmbh",
    "inc",
    "incorporated",
    "kg",
    "limited",
    "llc",
    "llp",
    "lp",
    "ltd",
    "nv",
    "oy",
    "plc",
    "pty",
    "sa",
    "sarl",
    "sas",
    "se",
    "spa",
    "srl",
    "the",
    "ug",
];

/// The duplicate-detection key of a name: its sort key without legal forms.
pub fn name_key(text: &str) -> String {
    let key = sort_key(text);
    let words: Vec<&str> = key
        .split(' ')
        .filter(|word| !LEGAL_FORMS.contains(word))
        .collect();
    if words.is_empty() {
        key
    } else {
        words.join(" ")
    }
}

/// How alike two name keys are, from 0 to 1: the Dice coefficient of their character
/// trigrams, which shrugs off typos, swapped letters and small additions.
pub fn name_similarity(a: &str, b: &str) -> f64 {
    fn trigrams(text: &str) -> std::collections::BTreeSet<[char; 3]> {
        let padded: Vec<char> = format!("  {text} ").chars().collect();
        padded.windows(3).map(|w| [w[0], w[1], w[2]]).collect()
    }
    // "Store 12" and "Store 13" are different branches, however alike their letters.
    let numbers = |text: &str| -> Vec<String> {
        text.split(|c: char| !c.is_ascii_digit())
            .filter(|run| !run.is_empty())
            .map(str::to_owned)
            .collect()
    };
    let (numbers_a, numbers_b) = (numbers(a), numbers(b));
    if !numbers_a.is_empty() && !numbers_b.is_empty() && numbers_a != numbers_b {
        return 0.0;
    }
    let (a, b) = (trigrams(a), trigrams(b));
    if a.is_empty() || b.is_empty() {
        return 0.0;
    }
    let shared = a.intersection(&b).count();
    (2 * shared) as f64 / (a.len() + b.len()) as f64
}

/// An optional `YYYY-MM-DD` query parameter.
pub fn parse_date_param(field: &str, value: Option<&str>) -> Result<Option<chrono::NaiveDate>> {
    value
        .map(|text| {
            crate::ledger::model::parse_date(text).map_err(|message| Error::invalid(field, message))
        })
        .transpose()
}

/// Decimal value of a custom `decimal` field, as a plain decimal string.
pub fn parse_field_decimal(text: &str) -> Option<Decimal> {
    let unsigned = text.strip_prefix('-').unwrap_or(text);
    let digits = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
    let valid = match unsigned.split_once('.') {
        Some((whole, fraction)) => digits(whole) && digits(fraction),
        None => digits(unsigned),
    };
    if valid {
        Decimal::from_str_exact(text).ok()
    } else {
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn emails_are_checked_and_lower_cased() {
        assert_eq!(
            normalize_email(" Billing@Zephyr.Example ").expect("valid"),
            "billing@zephyr.example"
        );
        for bad in [
            "",
            "plain",
            "a@b",
            "@example.com",
            "a b@example.com",
            "a@-x.com",
            "a..b@x.com",
        ] {
            assert!(normalize_email(bad).is_err(), "{bad:?} passed");
        }
    }

    #[test]
    fn phones_become_e164() {
        assert_eq!(
            normalize_phone("+49 (30) 123-4567").expect("valid"),
            "+49301234567"
        );
        assert_eq!(
            normalize_phone("0044 20 7946 0958").expect("valid"),
            "+442079460958"
        );
        for bad in ["030 1234567", "+49 30 12a4567", "+12", "+0 123 456 789", ""] {
            assert!(normalize_phone(bad).is_err(), "{bad:?} passed");
        }
    }

    #[test]
    fn tax_values_lose_separators() {
        assert_eq!(normalize_tax_value("de 123.456-789"), "DE123456789");
    }

    #[test]
    fn names_fold_accents_case_punctuation_and_legal_forms() {
        assert_eq!(sort_key("Müller & Söhne, GmbH"), "muller sohne gmbh");
        assert_eq!(sort_key("Muller & Sohne, GmbH"), "muller sohne gmbh");
        assert_eq!(name_key("Zephyr Widgets GmbH"), name_key("ZEPHYR widgets"));
        assert_eq!(name_key("GmbH"), "gmbh");
    }

    #[test]
    fn similar_names_score_high_and_different_ones_low() {
        let same = name_similarity(&name_key("Zephyr Widgets"), &name_key("Zephir Widgets Ltd"));
        let other = name_similarity(&name_key("Zephyr Widgets"), &name_key("Acme Tools"));
        assert!(same > 0.6, "{same}");
        assert!(other < 0.2, "{other}");
        let branches = name_similarity(
            &name_key("Blue River Store 12"),
            &name_key("Blue River Store 13"),
        );
        assert!(branches < f64::EPSILON, "{branches}");
    }

    #[test]
    fn field_decimals_are_plain() {
        assert!(parse_field_decimal("-12.50").is_some());
        assert!(parse_field_decimal("1e5").is_none());
        assert!(parse_field_decimal("1.").is_none());
    }
}
