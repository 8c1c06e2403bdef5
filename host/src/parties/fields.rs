//! Custom fields: typed fields admins declare per party kind, validated on every write. The
//! definitions are rows, so they survive upgrades; plugins will declare theirs the same way.

use chrono::{NaiveDate, Utc};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use utoipa::ToSchema;

use super::model::{PartyKind, parse_field_decimal, sort_key};
use crate::company::Company;
use crate::db::{Param, Tx, UniqueConstraint};
use crate::error::{Error, FieldError, Result};
use crate::on_conn;

/// Longest value of a text field.
pub const TEXT_FIELD_CHARS_MAX: usize = 1000;
/// Most options of an enum field.
pub const ENUM_OPTIONS_MAX: usize = 200;
/// Most custom fields a company declares for parties.
pub const FIELDS_PER_COMPANY_MAX: usize = 200;

const NAME_UNIQUE: UniqueConstraint = UniqueConstraint {
    postgres_name: "party_field_definitions_name_unique",
    sqlite_columns: "party_field_definitions.company_id, party_field_definitions.name",
};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum FieldType {
    /// A string of up to 1,000 characters; found by full-text search.
    Text,
    /// A whole number.
    Number,
    /// A decimal string such as `"12.50"`.
    Decimal,
    /// `YYYY-MM-DD`.
    Date,
    Bool,
    /// One of the declared `options`.
    Enum,
    /// The id of another party of the company.
    Party,
}

impl FieldType {
    fn as_str(self) -> &'static str {
        match self {
            Self::Text => "text",
            Self::Number => "number",
            Self::Decimal => "decimal",
            Self::Date => "date",
            Self::Bool => "bool",
            Self::Enum => "enum",
            Self::Party => "party",
        }
    }

    fn parse(text: &str) -> Option<Self> {
        [
            Self::Text,
            Self::Number,
            Self::Decimal,
            Self::Date,
            Self::Bool,
            Self::Enum,
            Self::Party,
        ]
        .into_iter()
        .find(|t| t.as_str() == text)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum AppliesTo {
    Any,
    Organization,
    Person,
}

impl AppliesTo {
    fn as_str(self) -> &'static str {
        match self {
            Self::Any => "any",
            Self::Organization => "organization",
            Self::Person => "person",
        }
    }

    fn parse(text: &str) -> Option<Self> {
        [Self::Any, Self::Organization, Self::Person]
            .into_iter()
            .find(|a| a.as_str() == text)
    }

    fn covers(self, kind: PartyKind) -> bool {
        match self {
            Self::Any => true,
            Self::Organization => kind == PartyKind::Organization,
            Self::Person => kind == PartyKind::Person,
        }
    }
}

/// A custom field of parties.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct FieldDefinition {
    /// Lower case letters, digits and underscores; the key in `custom_fields`.
    #[schema(example = "tier")]
    pub name: String,
    #[schema(example = "Customer tier")]
    pub label: String,
    pub field_type: FieldType,
    pub applies_to: AppliesTo,
    pub required: bool,
    /// The allowed values of an enum field.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub options: Vec<String>,
    /// The plugin that declared it; absent for fields an admin declared.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub owner_plugin: Option<String>,
}

/// A new custom field.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewFieldDefinition {
    #[schema(example = "tier")]
    pub name: String,
    #[schema(example = "Customer tier")]
    pub label: String,
    pub field_type: FieldType,
    /// `any` when absent.
    #[serde(default)]
    pub applies_to: Option<AppliesTo>,
    #[serde(default)]
    pub required: bool,
    #[serde(default)]
    pub options: Vec<String>,
}

/// Changes to a custom field: its type and name stay.
#[derive(Debug, Clone, Default, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct FieldChanges {
    #[serde(default)]
    pub label: Option<String>,
    #[serde(default)]
    pub required: Option<bool>,
    /// Replaces the options of an enum field.
    #[serde(default)]
    pub options: Option<Vec<String>>,
}

fn check_name(name: &str) -> Result<()> {
    let valid = (1..=40).contains(&name.len())
        && name.starts_with(|c: char| c.is_ascii_lowercase())
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_');
    if valid {
        Ok(())
    } else {
        Err(Error::invalid(
            "name",
            format!(
                "{name:?} is not a field name: 1 to 40 lower case letters, digits and underscores, starting with a letter"
            ),
        ))
    }
}

fn check_definition(
    label: &str,
    field_type: FieldType,
    options: &[String],
    errors: &mut Vec<FieldError>,
) {
    if label.trim().is_empty() || label.chars().count() > 200 {
        errors.push(FieldError::new("label", "is 1 to 200 characters"));
    }
    match field_type {
        FieldType::Enum if options.is_empty() => errors.push(FieldError::new(
            "options",
            "an enum field needs its options",
        )),
        FieldType::Enum if options.len() > ENUM_OPTIONS_MAX => errors.push(FieldError::new(
            "options",
            format!("holds at most {ENUM_OPTIONS_MAX} options"),
        )),
        FieldType::Enum => {
            for (i, option) in options.iter().enumerate() {
                if option.trim().is_empty() || option.trim() != option || option.len() > 200 {
                    errors.push(FieldError::new(
                        format!("options[{i}]"),
                        "is 1 to 200 characters without leading or trailing spaces",
                    ));
                } else if options[..i].contains(option) {
                    errors.push(FieldError::new(format!("options[{i}]"), "appears twice"));
                }
            }
        }
        _ if !options.is_empty() => {
            errors.push(FieldError::new("options", "only enum fields have options"))
        }
        _ => {}
    }
}

const COLUMNS: &[&str] = &[
    "name",
    "label",
    "field_type",
    "applies_to",
    "required",
    "options",
    "owner_plugin",
];

fn from_packed(row: &crate::db::PackedRow) -> anyhow::Result<FieldDefinition> {
    let field_type = row.text(2)?;
    let applies_to = row.text(3)?;
    Ok(FieldDefinition {
        name: row.text(0)?,
        label: row.text(1)?,
        field_type: FieldType::parse(&field_type)
            .ok_or_else(|| anyhow::anyhow!("unknown field type {field_type}"))?,
        applies_to: AppliesTo::parse(&applies_to)
            .ok_or_else(|| anyhow::anyhow!("unknown field scope {applies_to}"))?,
        required: row.flag(4)?,
        options: serde_json::from_str(&row.text(5)?)?,
        owner_plugin: row.opt_text(6)?,
    })
}

/// The company's custom fields, by name.
pub async fn list(tx: &mut Tx, company: &Company) -> Result<Vec<FieldDefinition>> {
    let mut fields = tx
        .fetch_packed(
            &format!(
                "SELECT {} FROM party_field_definitions WHERE company_id = $1",
                COLUMNS.join(", ")
            ),
            COLUMNS,
            &[Param::Int(Some(company.id))],
        )
        .await?
        .iter()
        .map(from_packed)
        .collect::<anyhow::Result<Vec<_>>>()?;
    fields.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(fields)
}

pub async fn get(tx: &mut Tx, company: &Company, name: &str) -> Result<FieldDefinition> {
    list(tx, company)
        .await?
        .into_iter()
        .find(|field| field.name == name)
        .ok_or_else(|| Error::NotFound(format!("no custom field {name:?} is declared for parties")))
}

/// Creates a field; `owner_plugin` names the plugin that declares it (none for an admin's).
pub async fn create(
    tx: &mut Tx,
    company: &Company,
    new: &NewFieldDefinition,
    owner_plugin: Option<&str>,
) -> Result<FieldDefinition> {
    check_name(&new.name)?;
    let mut errors = Vec::new();
    check_definition(&new.label, new.field_type, &new.options, &mut errors);
    if !errors.is_empty() {
        return Err(Error::Invalid(errors));
    }
    if list(tx, company).await?.len() >= FIELDS_PER_COMPANY_MAX {
        return Err(Error::Conflict(format!(
            "a company declares at most {FIELDS_PER_COMPANY_MAX} custom fields for parties"
        )));
    }
    let inserted = on_conn!(tx, conn => {
        sqlx::query(
            "INSERT INTO party_field_definitions (company_id, name, label, field_type, applies_to, required, options, created_at, owner_plugin) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)",
        )
        .bind(company.id)
        .bind(&new.name)
        .bind(new.label.trim())
        .bind(new.field_type.as_str())
        .bind(new.applies_to.unwrap_or(AppliesTo::Any).as_str())
        .bind(new.required)
        .bind(serde_json::to_string(&new.options).map_err(anyhow::Error::from)?)
        .bind(Utc::now())
        .bind(owner_plugin)
        .execute(&mut *conn)
        .await
        .map(|_| ())
    });
    match inserted.map_err(anyhow::Error::from) {
        Ok(()) => get(tx, company, &new.name).await,
        Err(error) if NAME_UNIQUE.is_violated_by(&error) => Err(Error::Conflict(format!(
            "a custom field {:?} already exists",
            new.name
        ))),
        Err(error) => Err(error.into()),
    }
}

pub async fn update(
    tx: &mut Tx,
    company: &Company,
    name: &str,
    changes: &FieldChanges,
) -> Result<FieldDefinition> {
    let current = get(tx, company, name).await?;
    let label = changes.label.clone().unwrap_or(current.label.clone());
    let options = changes.options.clone().unwrap_or(current.options.clone());
    let mut errors = Vec::new();
    check_definition(&label, current.field_type, &options, &mut errors);
    if !errors.is_empty() {
        return Err(Error::Invalid(errors));
    }
    if current.field_type == FieldType::Enum {
        let removed: Vec<&String> = current
            .options
            .iter()
            .filter(|o| !options.contains(o))
            .collect();
        for option in removed {
            if values_in_use(tx, company, name, Some(option)).await? > 0 {
                return Err(Error::Conflict(format!(
                    "option {option:?} of field {name} is in use; change those parties first"
                )));
            }
        }
    }
    on_conn!(tx, conn => {
        sqlx::query(
            "UPDATE party_field_definitions SET label = $1, required = $2, options = $3 \
             WHERE company_id = $4 AND name = $5",
        )
        .bind(label.trim())
        .bind(changes.required.unwrap_or(current.required))
        .bind(serde_json::to_string(&options).map_err(anyhow::Error::from)?)
        .bind(company.id)
        .bind(name)
        .execute(&mut *conn)
        .await?;
    });
    get(tx, company, name).await
}

/// The name of a plugin's field in party documents: `<plugin>_<name>`, dashes as underscores.
pub fn plugin_field_name(plugin: &str, name: &str) -> String {
    format!("{plugin}_{name}").replace('-', "_")
}

/// Refuses an admin's change to a field a plugin declared: it changes with the plugin.
pub fn check_admin_may_change(field: &FieldDefinition) -> Result<()> {
    match &field.owner_plugin {
        Some(plugin) => Err(Error::Conflict(format!(
            "field {} is declared by plugin {plugin}; it changes when the plugin is upgraded",
            field.name
        ))),
        None => Ok(()),
    }
}

/// Declares a plugin's fields (named with [`plugin_field_name`] already): creates the new
/// ones and brings the plugin's existing ones up to date. A field the plugin no longer
/// declares stays, with its values. Plugin fields are never required: parties that exist
/// have no value for them.
pub async fn sync_plugin_fields(
    tx: &mut Tx,
    company: &Company,
    plugin: &str,
    declared: &[NewFieldDefinition],
) -> Result<()> {
    let existing = list(tx, company).await?;
    for new in declared {
        match existing.iter().find(|f| f.name == new.name) {
            None => {
                create(tx, company, new, Some(plugin)).await?;
            }
            Some(field) if field.owner_plugin.as_deref() == Some(plugin) => {
                if field.field_type != new.field_type {
                    return Err(Error::Conflict(format!(
                        "field {} of plugin {plugin} is a {} field; a field's type never changes, so declare a new field",
                        new.name,
                        field.field_type.as_str()
                    )));
                }
                let changes = FieldChanges {
                    label: Some(new.label.clone()),
                    required: Some(false),
                    options: Some(new.options.clone()),
                };
                update(tx, company, &new.name, &changes).await?;
            }
            Some(field) => {
                return Err(Error::Conflict(format!(
                    "a party field {} exists already ({}); plugin {plugin} cannot declare it",
                    new.name,
                    field
                        .owner_plugin
                        .as_deref()
                        .map_or("declared by an admin".to_owned(), |p| format!(
                            "declared by plugin {p}"
                        ))
                )));
            }
        }
    }
    Ok(())
}

/// Removes a field nobody uses; a field with values stays until they are cleared.
pub async fn delete(tx: &mut Tx, company: &Company, name: &str) -> Result<FieldDefinition> {
    let current = get(tx, company, name).await?;
    let used = values_in_use(tx, company, name, None).await?;
    if used > 0 {
        return Err(Error::Conflict(format!(
            "{used} parties hold a value of field {name}; clear them first"
        )));
    }
    on_conn!(tx, conn => {
        sqlx::query("DELETE FROM party_field_definitions WHERE company_id = $1 AND name = $2")
            .bind(company.id)
            .bind(name)
            .execute(&mut *conn)
            .await?;
    });
    Ok(current)
}

async fn values_in_use(
    tx: &mut Tx,
    company: &Company,
    name: &str,
    value: Option<&str>,
) -> Result<i64> {
    let kind = key_kind(name);
    let count = on_conn!(tx, conn => {
        use crate::db::Row as _;
        sqlx::query(
            "SELECT COUNT(*) AS used FROM party_keys WHERE company_id = $1 AND kind = $2 \
             AND ($3 IS NULL OR value = $3)",
        )
        .bind(company.id)
        .bind(&kind)
        .bind(value)
        .fetch_one(&mut *conn)
        .await?
        .int("used")?
    });
    Ok(count)
}

/// The `party_keys` kind under which values of a custom field are found.
pub fn key_kind(name: &str) -> String {
    format!("field:{name}")
}

/// Custom field values checked against their definitions.
#[derive(Debug, Default)]
pub struct CheckedValues {
    pub values: Map<String, Value>,
    /// (field name, normalized value) for filtering.
    pub keys: Vec<(String, String)>,
    /// Text values, for full-text search.
    pub texts: Vec<String>,
    /// Party ids referenced by `party` fields, with the field, to check they exist.
    pub party_refs: Vec<(String, i64)>,
}

/// Checks `values` against the definitions for a party of `kind`. Field paths are
/// `custom_fields.<name>`.
pub fn check_values(
    definitions: &[FieldDefinition],
    kind: PartyKind,
    values: &Map<String, Value>,
) -> Result<CheckedValues> {
    let (checked, errors) = check_values_collecting(definitions, kind, values);
    if errors.is_empty() {
        Ok(checked)
    } else {
        Err(Error::Invalid(errors))
    }
}

/// Like [`check_values`], returning what passed along with the errors, so that callers can go
/// on checking (party references against the database) and report everything at once.
pub fn check_values_collecting(
    definitions: &[FieldDefinition],
    kind: PartyKind,
    values: &Map<String, Value>,
) -> (CheckedValues, Vec<FieldError>) {
    let mut errors = Vec::new();
    let mut checked = CheckedValues::default();
    for (name, value) in values {
        let field = format!("custom_fields.{name}");
        let Some(definition) = definitions.iter().find(|d| &d.name == name) else {
            errors.push(FieldError::new(
                field,
                format!(
                    "no custom field {name:?} is declared for parties; an admin declares it with POST /api/v1/parties/fields"
                ),
            ));
            continue;
        };
        if !definition.applies_to.covers(kind) {
            errors.push(FieldError::new(
                field,
                format!("applies to {} parties only", definition.applies_to.as_str()),
            ));
            continue;
        }
        if value.is_null() {
            continue;
        }
        match check_value(definition, value) {
            Ok(key) => {
                checked.values.insert(name.clone(), value.clone());
                if definition.field_type == FieldType::Text {
                    checked.texts.push(key.clone());
                }
                if definition.field_type == FieldType::Party {
                    checked
                        .party_refs
                        .push((field.clone(), value.as_i64().unwrap_or_default()));
                }
                checked.keys.push((name.clone(), key));
            }
            Err(message) => errors.push(FieldError::new(field, message)),
        }
    }
    for definition in definitions {
        if definition.required
            && definition.applies_to.covers(kind)
            && values.get(&definition.name).is_none_or(Value::is_null)
        {
            errors.push(FieldError::new(
                format!("custom_fields.{}", definition.name),
                format!("is required ({})", definition.label),
            ));
        }
    }
    (checked, errors)
}

/// Checks one value; returns its normalized form for filtering.
fn check_value(definition: &FieldDefinition, value: &Value) -> std::result::Result<String, String> {
    let wrong = |expected: &str| {
        format!(
            "is a {} field: expected {expected}, got {value}",
            definition.field_type.as_str()
        )
    };
    match definition.field_type {
        FieldType::Text => {
            let text = value.as_str().ok_or_else(|| wrong("a string"))?;
            if text.chars().count() > TEXT_FIELD_CHARS_MAX {
                return Err(format!("is at most {TEXT_FIELD_CHARS_MAX} characters"));
            }
            Ok(sort_key(text))
        }
        FieldType::Number => value
            .as_i64()
            .map(|n| n.to_string())
            .ok_or_else(|| wrong("a whole number")),
        FieldType::Decimal => value
            .as_str()
            .and_then(parse_field_decimal)
            .map(|d| d.normalize().to_string())
            .ok_or_else(|| wrong("a decimal string such as \"12.50\"")),
        FieldType::Date => value
            .as_str()
            .and_then(|text| NaiveDate::parse_from_str(text, "%Y-%m-%d").ok())
            .map(|date| date.to_string())
            .ok_or_else(|| wrong("a date such as \"2026-03-31\"")),
        FieldType::Bool => value
            .as_bool()
            .map(|b| b.to_string())
            .ok_or_else(|| wrong("true or false")),
        FieldType::Enum => {
            let text = value.as_str().ok_or_else(|| wrong("a string"))?;
            if definition.options.iter().any(|o| o == text) {
                Ok(text.to_owned())
            } else {
                Err(format!(
                    "{text:?} is not one of {}",
                    definition.options.join(", ")
                ))
            }
        }
        FieldType::Party => value
            .as_i64()
            .filter(|id| *id > 0)
            .map(|id| id.to_string())
            .ok_or_else(|| wrong("a party id")),
    }
}

/// The normalized form of a filter value for `name`, as [`check_values`] stores it.
pub fn filter_key(definition: &FieldDefinition, text: &str) -> std::result::Result<String, String> {
    let value = match definition.field_type {
        FieldType::Number | FieldType::Party => text
            .parse::<i64>()
            .map(Value::from)
            .map_err(|_| format!("{text:?} is not a whole number"))?,
        FieldType::Bool => text
            .parse::<bool>()
            .map(Value::from)
            .map_err(|_| format!("{text:?} is not true or false"))?,
        _ => Value::from(text),
    };
    check_value(definition, &value)
}
