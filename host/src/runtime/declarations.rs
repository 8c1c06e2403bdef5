//! What a plugin declares in its manifest beyond capabilities and subscriptions: indexed
//! collections, extension points, hook implementations, callable operations and party
//! fields. Checked at install, stored with the plugin (`plugins.declarations`), and read by
//! the fabric: storage keeps the indexes, `hooks.run` finds the points, parties the fields.

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::bindings::latest::keel::platform::plugin_meta as wit;
use crate::error::FieldError;

/// Most fields in one index.
pub const INDEX_FIELDS_MAX: usize = 4;
/// Most indexes on one collection.
pub const INDEXES_PER_COLLECTION_MAX: usize = 16;
/// The largest time budget an extension point may give each implementation.
pub const HOOK_BUDGET_MS_MAX: u32 = 30_000;

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct Declarations {
    #[serde(default)]
    pub collections: Vec<Collection>,
    #[serde(default)]
    pub extension_points: Vec<ExtensionPoint>,
    #[serde(default)]
    pub hooks: Vec<Hook>,
    #[serde(default)]
    pub operations: Vec<String>,
    #[serde(default)]
    pub party_fields: Vec<PartyField>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct Collection {
    pub name: String,
    pub indexes: Vec<Index>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct Index {
    pub name: String,
    /// Dotted paths into the record.
    pub fields: Vec<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum OnFailure {
    Fail,
    Skip,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct ExtensionPoint {
    pub name: String,
    pub description: String,
    #[schema(value_type = Object)]
    pub input_schema: serde_json::Value,
    #[schema(value_type = Object)]
    pub output_schema: serde_json::Value,
    pub on_failure: OnFailure,
    pub budget_ms: u32,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct Hook {
    pub point: String,
    pub operation: String,
    pub order: i32,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct PartyField {
    pub name: String,
    pub label: String,
    pub field_type: String,
    pub applies_to: String,
    pub required: bool,
    pub options: Vec<String>,
}

impl Declarations {
    /// The indexes declared for `collection`.
    pub fn indexes(&self, collection: &str) -> &[Index] {
        self.collections
            .iter()
            .find(|c| c.name == collection)
            .map_or(&[], |c| c.indexes.as_slice())
    }

    pub fn extension_point(&self, name: &str) -> Option<&ExtensionPoint> {
        self.extension_points.iter().find(|p| p.name == name)
    }

    /// Reads the manifest's declarations, collecting every mistake under `manifest.<field>`.
    pub fn from_manifest(
        plugin: &str,
        manifest: &wit::PluginManifest,
        errors: &mut Vec<FieldError>,
    ) -> Self {
        let mut out = Self::default();
        for (i, collection) in manifest.collections.iter().enumerate() {
            let at = format!("manifest.collections[{i}]");
            if let Err(error) = super::storage::check_collection(&collection.name) {
                errors.push(FieldError::new(format!("{at}.name"), error.to_string()));
            }
            if collection.indexes.len() > INDEXES_PER_COLLECTION_MAX {
                errors.push(FieldError::new(
                    format!("{at}.indexes"),
                    format!("has at most {INDEXES_PER_COLLECTION_MAX} indexes"),
                ));
            }
            let mut indexes = Vec::new();
            for (j, index) in collection.indexes.iter().enumerate() {
                let at = format!("{at}.indexes[{j}]");
                if !is_slug(&index.name) {
                    errors.push(FieldError::new(
                        format!("{at}.name"),
                        "is lower-case letters, digits and '-'",
                    ));
                }
                if indexes.iter().any(|known: &Index| known.name == index.name) {
                    errors.push(FieldError::new(format!("{at}.name"), "is declared twice"));
                }
                if index.fields.is_empty() || index.fields.len() > INDEX_FIELDS_MAX {
                    errors.push(FieldError::new(
                        format!("{at}.fields"),
                        format!("lists 1 to {INDEX_FIELDS_MAX} fields"),
                    ));
                }
                if index
                    .fields
                    .iter()
                    .any(|f| f.is_empty() || f.split('.').any(str::is_empty))
                {
                    errors.push(FieldError::new(
                        format!("{at}.fields"),
                        "are paths such as \"status\" or \"customer.id\"",
                    ));
                }
                indexes.push(Index {
                    name: index.name.clone(),
                    fields: index.fields.clone(),
                });
            }
            out.collections.push(Collection {
                name: collection.name.clone(),
                indexes,
            });
        }
        for (i, point) in manifest.extension_points.iter().enumerate() {
            let at = format!("manifest.extension-points[{i}]");
            if !point.name.starts_with(&format!("{plugin}."))
                || point.name.len() <= plugin.len() + 1
            {
                errors.push(FieldError::new(
                    format!("{at}.name"),
                    format!("starts with the plugin's name and a dot, e.g. \"{plugin}.adjust\""),
                ));
            }
            let input_schema = schema(&point.input_schema, &format!("{at}.input-schema"), errors);
            let output_schema =
                schema(&point.output_schema, &format!("{at}.output-schema"), errors);
            if !(1..=HOOK_BUDGET_MS_MAX).contains(&point.budget_ms) {
                errors.push(FieldError::new(
                    format!("{at}.budget-ms"),
                    format!("is between 1 and {HOOK_BUDGET_MS_MAX}"),
                ));
            }
            out.extension_points.push(ExtensionPoint {
                name: point.name.clone(),
                description: point.description.clone(),
                input_schema,
                output_schema,
                on_failure: match point.on_failure {
                    wit::OnFailure::Fail => OnFailure::Fail,
                    wit::OnFailure::Skip => OnFailure::Skip,
                },
                budget_ms: point.budget_ms,
            });
        }
        for (i, operation) in manifest.operations.iter().enumerate() {
            if operation.is_empty() || operation.len() > 64 || operation.contains('/') {
                errors.push(FieldError::new(
                    format!("manifest.operations[{i}]"),
                    "has 1 to 64 characters and no '/'",
                ));
            }
        }
        out.operations = manifest.operations.clone();
        for (i, hook) in manifest.hooks.iter().enumerate() {
            let at = format!("manifest.hooks[{i}]");
            if !hook.point.contains('.') {
                errors.push(FieldError::new(
                    format!("{at}.point"),
                    "names an extension point such as \"cpq.price-adjust\"",
                ));
            }
            if !manifest.operations.contains(&hook.operation) {
                errors.push(FieldError::new(
                    format!("{at}.operation"),
                    format!(
                        "is {:?}, which the manifest does not list among its operations",
                        hook.operation
                    ),
                ));
            }
            out.hooks.push(Hook {
                point: hook.point.clone(),
                operation: hook.operation.clone(),
                order: hook.order,
            });
        }
        for (i, field) in manifest.party_fields.iter().enumerate() {
            let at = format!("manifest.party-fields[{i}]");
            let declared = PartyField {
                name: field.name.clone(),
                label: field.label.clone(),
                field_type: field.field_type.clone(),
                applies_to: field.applies_to.clone(),
                required: field.required,
                options: field.options.clone(),
            };
            if field.required {
                errors.push(FieldError::new(
                    format!("{at}.required"),
                    "is false: parties that exist have no value for a plugin's field",
                ));
            }
            if let Err(error) = declared.definition(plugin) {
                errors.extend(match error.within(&at) {
                    crate::error::Error::Invalid(list) => list,
                    other => vec![FieldError::new(at.clone(), other.to_string())],
                });
            }
            out.party_fields.push(declared);
        }
        out
    }
}

impl PartyField {
    /// The field as the parties module declares it, named `<plugin>_<name>`.
    pub fn definition(
        &self,
        plugin: &str,
    ) -> crate::error::Result<crate::parties::fields::NewFieldDefinition> {
        let definition = serde_json::json!({
            "name": crate::parties::fields::plugin_field_name(plugin, &self.name),
            "label": self.label,
            "field_type": self.field_type,
            "applies_to": self.applies_to,
            "required": false,
            "options": self.options,
        });
        let text = definition.to_string();
        let deserializer = &mut serde_json::Deserializer::from_str(&text);
        serde_path_to_error::deserialize(deserializer).map_err(|error| {
            crate::error::Error::invalid(error.path().to_string(), error.inner().to_string())
        })
    }
}

fn is_slug(name: &str) -> bool {
    (1..=64).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
}

/// A schema as JSON, or `{}` (anything) after noting why it is unusable.
fn schema(text: &str, field: &str, errors: &mut Vec<FieldError>) -> serde_json::Value {
    match serde_json::from_str::<serde_json::Value>(text) {
        Ok(value) => match super::schema::check_schema(&value) {
            Ok(()) => value,
            Err(message) => {
                errors.push(FieldError::new(field, message));
                serde_json::json!({})
            }
        },
        Err(error) => {
            errors.push(FieldError::new(
                field,
                format!("is not valid JSON: {error}"),
            ));
            serde_json::json!({})
        }
    }
}
