//! The installed plugins of each company and their lifecycle: install, grant, enable,
//! disable, change limits, upgrade (with the plugin's migration in the same transaction),
//! uninstall (data kept) and purge (data deleted) — each audited — and the calls that reach
//! an installed plugin.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::json;
use sha2::{Digest, Sha256};
use sqlx::Row as _;
use utoipa::ToSchema;

use super::bindings::PluginPre;
use super::bindings::latest::keel::platform::http::{
    Header as WitHeader, Request as WitRequest, Response as WitResponse,
};
use super::call::{self, CallContext, CallState, Stop, Stopped};
use super::capability::{self, Capability};
use super::declarations::Declarations;
use super::limits::{DEFAULT_LIMITS, LimitOverrides, Limits};
use super::{Runtime, check_header, index, stats::PluginStats, storage};
use crate::audit::{self, Event, Origin};
use crate::company::Company;
use crate::db::{Database, Tx, UniqueConstraint};
use crate::error::{Error, FieldError, Result};
use crate::idempotency::{self, RequestKey, StoredResponse};
use crate::on_conn;

/// Largest component accepted: a Python plugin is about 20 MB, a JavaScript one 2 to 12 MB.
pub const COMPONENT_BYTES_MAX: usize = 64 * 1024 * 1024;

const NAME_CHARS_MAX: usize = 64;
const DESCRIPTION_CHARS_MAX: usize = 500;

const PLUGIN_NAME_UNIQUE: UniqueConstraint = UniqueConstraint {
    postgres_name: "plugins_company_id_name_key",
    sqlite_columns: "plugins.company_id, plugins.name",
};

/// Where a plugin stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    /// Its routes and operations answer.
    Enabled,
    /// Installed, answering nothing: the state after install, until an admin enables it.
    Disabled,
    /// Removed; its data is kept until purged.
    Uninstalled,
}

impl Status {
    fn as_str(self) -> &'static str {
        match self {
            Self::Enabled => "enabled",
            Self::Disabled => "disabled",
            Self::Uninstalled => "uninstalled",
        }
    }

    fn parse(text: &str) -> anyhow::Result<Self> {
        match text {
            "enabled" => Ok(Self::Enabled),
            "disabled" => Ok(Self::Disabled),
            "uninstalled" => Ok(Self::Uninstalled),
            other => anyhow::bail!("unknown plugin status {other:?}"),
        }
    }
}

/// An installed plugin as stored.
#[derive(Debug, Clone)]
pub(super) struct PluginRow {
    name: String,
    version: String,
    api_version: String,
    pub(super) component_hash: String,
    description: String,
    pub(super) status: Status,
    requested: Vec<Capability>,
    granted: Vec<Capability>,
    subscriptions: Vec<String>,
    limits: LimitOverrides,
    migrated_version: Option<String>,
    /// Shared with every call's context: read on each call, never copied.
    pub(super) declarations: std::sync::Arc<Declarations>,
    installed_at: DateTime<Utc>,
    updated_at: DateTime<Utc>,
}

/// An installed plugin as the API shows it.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct PluginView {
    pub name: String,
    pub version: String,
    /// The version of keel:platform the plugin was built against.
    pub api_version: String,
    /// SHA-256 of the component.
    pub hash: String,
    pub description: String,
    pub status: Status,
    /// What the manifest asks for.
    pub requested: Vec<Capability>,
    /// What an admin granted (always among the requested).
    pub granted: Vec<Capability>,
    pub subscriptions: Vec<String>,
    /// Indexed collections, extension points, hooks, operations and party fields.
    pub declarations: Declarations,
    /// The limits in force for each call.
    pub limits: Limits,
    /// The admin's overrides of the default limits.
    pub limit_overrides: LimitOverrides,
    /// The version whose migration last succeeded; absent before the first enable.
    pub migrated_version: Option<String>,
    pub installed_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    /// Calls in this process since it started.
    pub stats: PluginStats,
}

/// Changes an admin makes to an installed plugin; absent fields stay as they are.
#[derive(Debug, Clone, Default, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PluginChanges {
    /// `enabled` or `disabled`. Enabling runs the plugin's migration first when its data is
    /// not yet at the installed version.
    pub status: Option<Status>,
    /// The capabilities granted, replacing the previous grant; each must be requested by the
    /// manifest.
    pub granted: Option<Vec<String>>,
    /// Overrides of the default limits, replacing the previous ones.
    pub limits: Option<LimitOverrides>,
}

/// A component that passed every check, with what its manifest says.
struct Validated {
    hash: String,
    api_version: String,
    name: String,
    version: String,
    description: String,
    requested: Vec<Capability>,
    subscriptions: Vec<String>,
    declarations: std::sync::Arc<Declarations>,
    pre: PluginPre,
}

/// An HTTP request for a plugin, as the host received it.
#[derive(Debug, Clone)]
pub struct PluginRequest {
    pub method: String,
    pub path: String,
    pub query: String,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

/// A plugin's answer.
#[derive(Debug, Clone)]
pub struct PluginResponse {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
    /// True when this is the stored answer to an earlier request with the same key.
    pub replayed: bool,
}

/// A plugin's answer as the idempotency record keeps it: headers and the body's bytes.
fn stored(response: &PluginResponse) -> StoredResponse {
    use base64::Engine as _;
    StoredResponse::new(
        response.status,
        json!({
            "headers": response.headers,
            "body": base64::engine::general_purpose::STANDARD.encode(&response.body),
        }),
    )
}

fn replay(stored: StoredResponse) -> Result<PluginResponse> {
    use base64::Engine as _;
    let headers = serde_json::from_value(stored.body["headers"].clone())
        .map_err(|e| anyhow::anyhow!("a stored plugin response without headers: {e}"))?;
    let body = base64::engine::general_purpose::STANDARD
        .decode(stored.body["body"].as_str().unwrap_or_default())
        .map_err(|e| anyhow::anyhow!("a stored plugin response without a body: {e}"))?;
    Ok(PluginResponse {
        status: stored.status,
        headers,
        body,
        replayed: true,
    })
}

fn sha256_hex(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

fn check_name(name: &str) -> std::result::Result<(), String> {
    let valid = (1..=NAME_CHARS_MAX).contains(&name.len())
        && name.starts_with(|c: char| c.is_ascii_lowercase())
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-');
    if valid {
        Ok(())
    } else {
        Err(format!(
            "a plugin name has 1 to {NAME_CHARS_MAX} lower-case letters, digits and '-', starting with a letter"
        ))
    }
}

/// `MAJOR.MINOR.PATCH` as numbers, for comparing versions.
fn semver(version: &str) -> Option<(u64, u64, u64)> {
    let mut parts = version.split('.');
    let parsed = (
        parts.next()?.parse().ok()?,
        parts.next()?.parse().ok()?,
        parts.next()?.parse().ok()?,
    );
    parts.next().is_none().then_some(parsed)
}

fn capabilities_json(capabilities: &[Capability]) -> String {
    serde_json::to_string(capabilities).expect("capabilities serialize")
}

const SELECT_PLUGIN: &str = "SELECT name, version, api_version, component_hash, description, status, \
     requested, granted, subscriptions, limits, migrated_version, declarations, installed_at, \
     updated_at FROM plugins";

macro_rules! plugin_from_row {
    ($row:expr) => {{
        let row = $row;
        let json = |column: &str| -> anyhow::Result<String> { Ok(row.try_get(column)?) };
        (|| -> anyhow::Result<PluginRow> {
            Ok(PluginRow {
                name: row.try_get("name")?,
                version: row.try_get("version")?,
                api_version: row.try_get("api_version")?,
                component_hash: row.try_get("component_hash")?,
                description: row.try_get("description")?,
                status: Status::parse(&row.try_get::<String, _>("status")?)?,
                requested: serde_json::from_str(&json("requested")?)?,
                granted: serde_json::from_str(&json("granted")?)?,
                subscriptions: serde_json::from_str(&json("subscriptions")?)?,
                limits: serde_json::from_str(&json("limits")?)?,
                migrated_version: row.try_get("migrated_version")?,
                declarations: std::sync::Arc::new(serde_json::from_str(&json("declarations")?)?),
                installed_at: row.try_get("installed_at")?,
                updated_at: row.try_get("updated_at")?,
            })
        })()
    }};
}

async fn find(
    tx: &mut Tx,
    company: &Company,
    name: &str,
    for_update: bool,
) -> Result<Option<PluginRow>> {
    let lock = if for_update { tx.lock_for_update() } else { "" };
    let sql = format!("{SELECT_PLUGIN} WHERE company_id = $1 AND name = $2{lock}");
    let row = on_conn!(tx, conn => {
        match sqlx::query(&sql).bind(company.id).bind(name).fetch_optional(&mut *conn).await? {
            Some(row) => Some(plugin_from_row!(row)?),
            None => None,
        }
    });
    Ok(row)
}

/// The installed plugin `name`, whatever its status.
pub(super) async fn plugin_row(tx: &mut Tx, company: &Company, name: &str) -> Result<PluginRow> {
    get(tx, company, name, false).await
}

async fn get(tx: &mut Tx, company: &Company, name: &str, for_update: bool) -> Result<PluginRow> {
    find(tx, company, name, for_update).await?.ok_or_else(|| {
        Error::NotFound(format!(
            "no plugin {name:?} is installed; see GET /api/v1/plugins"
        ))
    })
}

async fn list(tx: &mut Tx, company: &Company) -> Result<Vec<PluginRow>> {
    let sql = format!("{SELECT_PLUGIN} WHERE company_id = $1 ORDER BY name");
    let rows = on_conn!(tx, conn => {
        sqlx::query(&sql)
            .bind(company.id)
            .fetch_all(&mut *conn)
            .await?
            .into_iter()
            .map(|row| plugin_from_row!(row))
            .collect::<anyhow::Result<Vec<_>>>()?
    });
    Ok(rows)
}

async fn save(tx: &mut Tx, company: &Company, row: &PluginRow, insert: bool) -> Result<()> {
    let sql = if insert {
        "INSERT INTO plugins (company_id, name, version, api_version, component_hash, description, status, \
         requested, granted, subscriptions, limits, migrated_version, installed_at, updated_at, \
         declarations) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15)"
    } else {
        "UPDATE plugins SET version = $3, api_version = $4, component_hash = $5, description = $6, \
         status = $7, requested = $8, granted = $9, subscriptions = $10, limits = $11, \
         migrated_version = $12, installed_at = $13, updated_at = $14, declarations = $15 \
         WHERE company_id = $1 AND name = $2"
    };
    let saved = on_conn!(tx, conn => {
        sqlx::query(sql)
            .bind(company.id)
            .bind(&row.name)
            .bind(&row.version)
            .bind(&row.api_version)
            .bind(&row.component_hash)
            .bind(&row.description)
            .bind(row.status.as_str())
            .bind(capabilities_json(&row.requested))
            .bind(capabilities_json(&row.granted))
            .bind(serde_json::to_string(&row.subscriptions).map_err(anyhow::Error::from)?)
            .bind(serde_json::to_string(&row.limits).map_err(anyhow::Error::from)?)
            .bind(&row.migrated_version)
            .bind(row.installed_at)
            .bind(row.updated_at)
            .bind(serde_json::to_string(row.declarations.as_ref()).map_err(anyhow::Error::from)?)
            .execute(&mut *conn)
            .await
            .map(|_| ())
    });
    match saved.map_err(anyhow::Error::from) {
        Ok(()) => sync_fabric(tx, company, row).await,
        Err(error) if PLUGIN_NAME_UNIQUE.is_violated_by(&error) => Err(Error::Conflict(format!(
            "a plugin {:?} is installed already; upgrade it instead",
            row.name
        ))),
        Err(error) => Err(error.into()),
    }
}

/// Brings the fabric's tables in line with a saved plugin: its subscriptions and hook
/// implementations (none once uninstalled) and the indexes over its collections.
async fn sync_fabric(tx: &mut Tx, company: &Company, row: &PluginRow) -> Result<()> {
    let installed = row.status != Status::Uninstalled;
    on_conn!(tx, conn => {
        for table in ["plugin_subscriptions", "plugin_hooks"] {
            sqlx::query(&format!("DELETE FROM {table} WHERE company_id = $1 AND plugin = $2"))
                .bind(company.id)
                .bind(&row.name)
                .execute(&mut *conn)
                .await?;
        }
        if installed {
            let mut topics: Vec<&String> = row.subscriptions.iter().collect();
            topics.sort();
            topics.dedup();
            for topic in topics {
                sqlx::query(
                    "INSERT INTO plugin_subscriptions (company_id, topic, plugin) VALUES ($1, $2, $3)",
                )
                .bind(company.id)
                .bind(topic)
                .bind(&row.name)
                .execute(&mut *conn)
                .await?;
            }
            let mut seen = std::collections::HashSet::new();
            for hook in &row.declarations.hooks {
                if !seen.insert(&hook.point) {
                    continue;
                }
                sqlx::query(
                    "INSERT INTO plugin_hooks (company_id, point, plugin, operation, position) \
                     VALUES ($1, $2, $3, $4, $5)",
                )
                .bind(company.id)
                .bind(&hook.point)
                .bind(&row.name)
                .bind(&hook.operation)
                .bind(hook.order)
                .execute(&mut *conn)
                .await?;
            }
        }
    });
    if installed {
        let owner = storage::Owner {
            company_id: company.id,
            plugin: &row.name,
        };
        index::sync(tx, owner, &row.declarations.collections).await?;
        let fields = row
            .declarations
            .party_fields
            .iter()
            .map(|field| field.definition(&row.name))
            .collect::<Result<Vec<_>>>()?;
        crate::parties::fields::sync_plugin_fields(tx, company, &row.name, &fields).await?;
    }
    Ok(())
}

async fn save_component(tx: &mut Tx, hash: &str, bytes: &[u8]) -> Result<()> {
    on_conn!(tx, conn => {
        sqlx::query(
            "INSERT INTO plugin_components (hash, bytes, created_at) VALUES ($1, $2, $3) \
             ON CONFLICT (hash) DO NOTHING",
        )
        .bind(hash)
        .bind(bytes)
        .bind(Utc::now())
        .execute(&mut *conn)
        .await?;
    });
    Ok(())
}

/// The bytes of an installed component, for a process that has not compiled it yet.
pub async fn component_bytes(db: &Database, hash: &str) -> Result<Vec<u8>> {
    db.read(async |tx: &mut Tx| {
        let bytes = on_conn!(tx, conn => {
            sqlx::query("SELECT bytes FROM plugin_components WHERE hash = $1")
                .bind(hash)
                .fetch_optional(&mut *conn)
                .await?
                .map(|row| row.try_get::<Vec<u8>, _>(0))
                .transpose()?
        });
        bytes.ok_or_else(|| Error::NotFound(format!("no component with hash {hash}")))
    })
    .await
}

/// The components of every enabled plugin, in every company.
pub async fn enabled_component_hashes(db: &Database) -> Result<Vec<String>> {
    db.read(async |tx: &mut Tx| {
        let hashes = on_conn!(tx, conn => {
            sqlx::query("SELECT DISTINCT component_hash FROM plugins WHERE status = 'enabled'")
                .fetch_all(&mut *conn)
                .await?
                .iter()
                .map(|row| row.try_get::<String, _>(0))
                .collect::<Result<Vec<_>, sqlx::Error>>()?
        });
        Ok(hashes)
    })
    .await
}

fn audit_event(company: &Company, action: &str, name: &str, change: serde_json::Value) -> Event {
    Event::new(Some(company.id), action, "plugin", name, change)
}

impl Runtime {
    fn view(&self, company: &Company, row: PluginRow) -> PluginView {
        PluginView {
            stats: self.stats(company.id, &row.name),
            limits: row.limits.apply(),
            limit_overrides: row.limits,
            name: row.name,
            version: row.version,
            api_version: row.api_version,
            hash: row.component_hash,
            description: row.description,
            status: row.status,
            requested: row.requested,
            granted: row.granted,
            subscriptions: row.subscriptions,
            declarations: row.declarations.as_ref().clone(),
            migrated_version: row.migrated_version,
            installed_at: row.installed_at,
            updated_at: row.updated_at,
        }
    }

    /// Compiles and links a component and reads its manifest, refusing anything that is not a
    /// plugin for this host with a reason the author can act on.
    async fn validate(&self, company: &Company, bytes: &[u8]) -> Result<Validated> {
        if bytes.len() > COMPONENT_BYTES_MAX {
            return Err(Error::invalid(
                "component",
                format!("is larger than {COMPONENT_BYTES_MAX} bytes"),
            ));
        }
        check_header(bytes)?;
        let hash = sha256_hex(bytes);
        let component = self.component(&hash, Some(bytes)).await?;
        let pre = self.prepare(&component)?;
        let manifest = self.read_manifest(company, &pre).await?;
        let mut errors = Vec::new();
        if let Err(message) = check_name(&manifest.name) {
            errors.push(FieldError::new("manifest.name", message));
        }
        if semver(&manifest.version).is_none() {
            errors.push(FieldError::new(
                "manifest.version",
                "is MAJOR.MINOR.PATCH, e.g. 1.0.0",
            ));
        }
        if manifest.description.chars().count() > DESCRIPTION_CHARS_MAX {
            errors.push(FieldError::new(
                "manifest.description",
                format!("has at most {DESCRIPTION_CHARS_MAX} characters"),
            ));
        }
        let requested = capability::parse_all(&manifest.capabilities).unwrap_or_else(|unknown| {
            errors.push(FieldError::new(
                "manifest.capabilities",
                format!(
                    "asks for capabilities this host does not know: {}; known are {}",
                    unknown.join(", "),
                    Capability::known()
                ),
            ));
            Vec::new()
        });
        for topic in &manifest.subscriptions {
            if crate::events::check_topic(topic).is_err() {
                errors.push(FieldError::new(
                    "manifest.subscriptions",
                    format!("{topic:?} is not a topic such as \"ledger.entry.posted\""),
                ));
            }
        }
        let declarations = Declarations::from_manifest(&manifest.name, &manifest, &mut errors);
        if !errors.is_empty() {
            return Err(Error::Invalid(errors));
        }
        Ok(Validated {
            declarations: std::sync::Arc::new(declarations),
            api_version: super::api_version_of(&component),
            hash,
            name: manifest.name,
            version: manifest.version,
            description: manifest.description,
            requested,
            subscriptions: manifest.subscriptions,
            pre,
        })
    }

    /// Calls `manifest` on a fresh instance, with nothing granted and no user.
    async fn read_manifest(
        &self,
        company: &Company,
        pre: &PluginPre,
    ) -> Result<super::bindings::latest::keel::platform::plugin_meta::PluginManifest> {
        let context = CallContext {
            company: company.clone(),
            plugin: "(manifest)".to_owned(),
            granted: Vec::new(),
            user: None,
            origin: Origin::system(),
            limits: DEFAULT_LIMITS,
            read_only: true,
            declarations: std::sync::Arc::default(),
            depth: 0,
            defer_audit: false,
        };
        self.run(
            pre,
            context,
            None,
            async |plugin, store| plugin.call_manifest(store).await,
            |_| false,
        )
        .await
        .result
    }

    /// Instantiates an installed component afresh, calls its `manifest` export and drops the
    /// instance: the smallest whole call, for health checks and benchmarks. Returns the
    /// plugin's name.
    pub async fn ping(&self, company: &Company, component_hash: &str) -> Result<String> {
        let pre = self.prepared(component_hash).await?;
        Ok(self.read_manifest(company, &pre).await?.name)
    }

    fn remember(&self, validated: &Validated) {
        self.lock_prepared()
            .insert(validated.hash.clone(), validated.pre.clone());
    }

    /// Installs a plugin, disabled and with nothing granted: an admin reviews what it asks
    /// for, grants it, and enables it. A plugin uninstalled earlier comes back with its data.
    pub async fn install(
        &self,
        company: &Company,
        bytes: &[u8],
        origin: &Origin,
    ) -> Result<PluginView> {
        let validated = self.validate(company, bytes).await?;
        let mut tx = self.db.begin_write().await?;
        let existing = find(&mut tx, company, &validated.name, true).await?;
        let now = Utc::now();
        let row = PluginRow {
            name: validated.name.clone(),
            version: validated.version.clone(),
            api_version: validated.api_version.clone(),
            component_hash: validated.hash.clone(),
            description: validated.description.clone(),
            status: Status::Disabled,
            requested: validated.requested.clone(),
            granted: Vec::new(),
            subscriptions: validated.subscriptions.clone(),
            declarations: validated.declarations.clone(),
            limits: LimitOverrides::default(),
            migrated_version: existing.as_ref().and_then(|e| e.migrated_version.clone()),
            installed_at: now,
            updated_at: now,
        };
        match &existing {
            Some(existing) if existing.status != Status::Uninstalled => {
                return Err(Error::Conflict(format!(
                    "plugin {} {} is installed already; upgrade it instead",
                    existing.name, existing.version
                )));
            }
            Some(existing) => {
                let row = PluginRow {
                    limits: existing.limits,
                    ..row.clone()
                };
                save_component(&mut tx, &validated.hash, bytes).await?;
                save(&mut tx, company, &row, false).await?;
            }
            None => {
                save_component(&mut tx, &validated.hash, bytes).await?;
                save(&mut tx, company, &row, true).await?;
            }
        }
        let event = audit_event(
            company,
            "plugins:install",
            &row.name,
            json!({ "version": row.version, "hash": row.component_hash, "requested": row.requested }),
        );
        audit::append(&mut tx, origin, &[event]).await?;
        tx.commit().await?;
        self.remember(&validated);
        self.get(company, &row.name).await
    }

    /// Installs a plugin, grants everything its manifest asks for and enables it: for
    /// throwaway hosts (`keel plugin test`, benchmarks), where no admin reviews the grant.
    pub async fn install_enabled(
        &self,
        company: &Company,
        bytes: &[u8],
        origin: &Origin,
    ) -> Result<PluginView> {
        let installed = self.install(company, bytes, origin).await?;
        let changes = PluginChanges {
            status: Some(Status::Enabled),
            granted: Some(
                installed
                    .requested
                    .iter()
                    .map(ToString::to_string)
                    .collect(),
            ),
            limits: None,
        };
        self.change(company, &installed.name, &changes, None, origin)
            .await
    }

    pub async fn list(&self, company: &Company) -> Result<Vec<PluginView>> {
        let rows = self
            .db
            .read(async |tx: &mut Tx| list(tx, company).await)
            .await?;
        Ok(rows
            .into_iter()
            .map(|row| self.view(company, row))
            .collect())
    }

    pub async fn get(&self, company: &Company, name: &str) -> Result<PluginView> {
        let row = self
            .db
            .read(async |tx: &mut Tx| get(tx, company, name, false).await)
            .await?;
        Ok(self.view(company, row))
    }

    /// Grants, enables, disables or changes the limits of a plugin.
    pub async fn change(
        &self,
        company: &Company,
        name: &str,
        changes: &PluginChanges,
        acting_user: Option<i64>,
        origin: &Origin,
    ) -> Result<PluginView> {
        if let Some(limits) = &changes.limits {
            limits.check()?;
        }
        let mut tx = self.db.begin_write().await?;
        let before = get(&mut tx, company, name, true).await?;
        if before.status == Status::Uninstalled {
            return Err(Error::Conflict(format!(
                "plugin {name} is uninstalled; install it again first"
            )));
        }
        let mut after = before.clone();
        if let Some(granted) = &changes.granted {
            let granted = capability::parse_all(granted).map_err(|unknown| {
                Error::invalid(
                    "granted",
                    format!("unknown capabilities: {}", unknown.join(", ")),
                )
            })?;
            let unrequested: Vec<String> = granted
                .iter()
                .filter(|c| !before.requested.contains(c))
                .map(ToString::to_string)
                .collect();
            if !unrequested.is_empty() {
                return Err(Error::invalid(
                    "granted",
                    format!(
                        "plugin {name} does not ask for {}; it may be granted only what its manifest requests",
                        unrequested.join(", ")
                    ),
                ));
            }
            after.granted = granted;
        }
        if let Some(limits) = changes.limits {
            after.limits = limits;
        }
        match changes.status {
            Some(Status::Uninstalled) => {
                return Err(Error::invalid(
                    "status",
                    "is enabled or disabled; uninstall with DELETE",
                ));
            }
            Some(status) => after.status = status,
            None => {}
        }
        if after.status == Status::Enabled
            && after.migrated_version.as_ref() != Some(&after.version)
        {
            let pre = self.prepared(&after.component_hash).await?;
            tx = self
                .migrate(company, &after, &pre, acting_user, origin, tx)
                .await?;
            after.migrated_version = Some(after.version.clone());
        }
        after.updated_at = Utc::now();
        save(&mut tx, company, &after, false).await?;
        let event = audit_event(
            company,
            "plugins:change",
            name,
            json!({
                "before": { "status": before.status, "granted": before.granted, "limits": before.limits },
                "after": { "status": after.status, "granted": after.granted, "limits": after.limits },
            }),
        );
        audit::append(&mut tx, origin, &[event]).await?;
        tx.commit().await?;
        Ok(self.view(company, after))
    }

    /// Runs the plugin's `migrate` from its data's version inside `tx`, handing the
    /// transaction back when it succeeded.
    async fn migrate(
        &self,
        company: &Company,
        row: &PluginRow,
        pre: &PluginPre,
        acting_user: Option<i64>,
        origin: &Origin,
        tx: Tx,
    ) -> Result<Tx> {
        let from = row.migrated_version.clone();
        let context = self.context(company, row, acting_user, origin, false);
        let finished = self
            .run(
                pre,
                context,
                Some(tx),
                async |plugin, store| plugin.call_migrate(store, from.as_deref()).await,
                Result::is_err,
            )
            .await;
        let failure = |detail: String| {
            Error::Conflict(format!(
                "the migration of plugin {} to {} failed, so nothing changed: {detail}",
                row.name, row.version
            ))
        };
        match finished.result {
            Ok(Ok(())) => Ok(finished
                .state
                .tx
                .expect("the migration ran in the given transaction")),
            Ok(Err(error)) => Err(failure(call::from_wit(&row.name, error).to_string())),
            Err(error) => Err(failure(error.to_string())),
        }
    }

    pub(super) fn context(
        &self,
        company: &Company,
        row: &PluginRow,
        user: Option<i64>,
        origin: &Origin,
        read_only: bool,
    ) -> CallContext {
        let mut origin = origin.clone();
        origin.actor.plugin = Some(row.name.clone());
        CallContext {
            company: company.clone(),
            plugin: row.name.clone(),
            granted: row.granted.clone(),
            user,
            origin,
            limits: row.limits.apply(),
            read_only,
            declarations: row.declarations.clone(),
            depth: 0,
            defer_audit: false,
        }
    }

    /// Replaces an installed plugin with a newer version. Its migration runs in the same
    /// transaction as the switch: if it fails, the previous version stays active and its data
    /// untouched. Grants carry over for the capabilities the new version still asks for.
    pub async fn upgrade(
        &self,
        company: &Company,
        name: &str,
        bytes: &[u8],
        acting_user: Option<i64>,
        origin: &Origin,
    ) -> Result<PluginView> {
        let validated = self.validate(company, bytes).await?;
        if validated.name != name {
            return Err(Error::invalid(
                "component",
                format!("is plugin {:?}, not {name:?}", validated.name),
            ));
        }
        let mut tx = self.db.begin_write().await?;
        let before = get(&mut tx, company, name, true).await?;
        if before.status == Status::Uninstalled {
            return Err(Error::Conflict(format!(
                "plugin {name} is uninstalled; install it instead"
            )));
        }
        if semver(&validated.version) <= semver(&before.version) {
            return Err(Error::Conflict(format!(
                "version {} of plugin {name} is not newer than the installed {}",
                validated.version, before.version
            )));
        }
        save_component(&mut tx, &validated.hash, bytes).await?;
        let mut after = PluginRow {
            version: validated.version.clone(),
            api_version: validated.api_version.clone(),
            component_hash: validated.hash.clone(),
            description: validated.description.clone(),
            granted: before
                .granted
                .iter()
                .filter(|c| validated.requested.contains(c))
                .cloned()
                .collect(),
            requested: validated.requested.clone(),
            subscriptions: validated.subscriptions.clone(),
            declarations: validated.declarations.clone(),
            updated_at: Utc::now(),
            ..before.clone()
        };
        if after.migrated_version.is_some() {
            tx = self
                .migrate(company, &after, &validated.pre, acting_user, origin, tx)
                .await?;
            after.migrated_version = Some(after.version.clone());
        }
        save(&mut tx, company, &after, false).await?;
        let event = audit_event(
            company,
            "plugins:upgrade",
            name,
            json!({
                "before": { "version": before.version, "hash": before.component_hash },
                "after": { "version": after.version, "hash": after.component_hash, "requested": after.requested },
            }),
        );
        audit::append(&mut tx, origin, &[event]).await?;
        tx.commit().await?;
        self.remember(&validated);
        Ok(self.view(company, after))
    }

    /// Uninstalls a plugin; its data stays until [`Runtime::purge`].
    pub async fn uninstall(
        &self,
        company: &Company,
        name: &str,
        origin: &Origin,
    ) -> Result<PluginView> {
        let mut tx = self.db.begin_write().await?;
        let mut row = get(&mut tx, company, name, true).await?;
        if row.status == Status::Uninstalled {
            return Err(Error::Conflict(format!(
                "plugin {name} is uninstalled already"
            )));
        }
        let before = row.status;
        row.status = Status::Uninstalled;
        row.updated_at = Utc::now();
        save(&mut tx, company, &row, false).await?;
        let event = audit_event(
            company,
            "plugins:uninstall",
            name,
            json!({ "before": { "status": before }, "version": row.version }),
        );
        audit::append(&mut tx, origin, &[event]).await?;
        tx.commit().await?;
        Ok(self.view(company, row))
    }

    /// Deletes an uninstalled plugin's data and its registration, for good.
    pub async fn purge(&self, company: &Company, name: &str, origin: &Origin) -> Result<u64> {
        let mut tx = self.db.begin_write().await?;
        let row = get(&mut tx, company, name, true).await?;
        if row.status != Status::Uninstalled {
            return Err(Error::Conflict(format!(
                "plugin {name} is {}; uninstall it before purging its data",
                row.status.as_str()
            )));
        }
        let owner = storage::Owner {
            company_id: company.id,
            plugin: name,
        };
        let records = storage::purge(&mut tx, owner).await?;
        index::purge(&mut tx, owner).await?;
        on_conn!(&mut tx, conn => {
            sqlx::query("DELETE FROM plugins WHERE company_id = $1 AND name = $2")
                .bind(company.id)
                .bind(name)
                .execute(&mut *conn)
                .await?;
        });
        let event = audit_event(
            company,
            "plugins:purge",
            name,
            json!({ "version": row.version, "records_deleted": records }),
        );
        audit::append(&mut tx, origin, &[event]).await?;
        tx.commit().await?;
        Ok(records)
    }

    /// The enabled plugin `name` and its instantiation template.
    async fn enabled(&self, company: &Company, name: &str) -> Result<(PluginRow, PluginPre)> {
        let row = self
            .db
            .read(async |tx: &mut Tx| get(tx, company, name, false).await)
            .await?;
        if row.status != Status::Enabled {
            return Err(Error::NotFound(format!(
                "plugin {name} is {}; an admin enables it with PATCH /api/v1/plugins/{name}",
                row.status.as_str()
            )));
        }
        let pre = self.prepared(&row.component_hash).await?;
        Ok((row, pre))
    }

    /// Passes an unauthenticated request from `client` to a plugin's public routes (its path
    /// prefixed with `/public`), acting for no user, if the plugin holds `http:public` and the
    /// client and plugin are within their public request rates.
    pub async fn handle_public_http(
        &self,
        company: &Company,
        name: &str,
        client: Option<std::net::IpAddr>,
        origin: &Origin,
        mut request: PluginRequest,
    ) -> Result<PluginResponse> {
        let enabled = self.enabled(company, name).await?;
        if !enabled.0.granted.contains(&Capability::HttpPublic) {
            return Err(Error::NotFound(format!(
                "plugin {name} takes no public requests: it has not been granted http:public"
            )));
        }
        self.public.admit(company.id, name, client)?;
        if request.body.len() > super::public::PUBLIC_BODY_BYTES_MAX {
            return Err(Error::invalid(
                "body",
                format!(
                    "a public request has at most {} bytes",
                    super::public::PUBLIC_BODY_BYTES_MAX
                ),
            ));
        }
        request.path = format!("/public{}", request.path);
        self.serve_http(company, enabled, None, origin, request, None)
            .await
    }

    /// Passes an HTTP request to a plugin acting for `user` (none for public requests). Its
    /// writes commit when it answers with a status below 400. With an idempotency key, that
    /// answer is stored in the same transaction, and a replay of the key gets it back without
    /// calling the plugin.
    pub async fn handle_http(
        &self,
        company: &Company,
        name: &str,
        user: Option<i64>,
        origin: &Origin,
        request: PluginRequest,
        key: Option<RequestKey>,
    ) -> Result<PluginResponse> {
        let enabled = self.enabled(company, name).await?;
        self.serve_http(company, enabled, user, origin, request, key)
            .await
    }

    /// [`Runtime::handle_http`] for a plugin already found enabled.
    async fn serve_http(
        &self,
        company: &Company,
        (row, pre): (PluginRow, PluginPre),
        user: Option<i64>,
        origin: &Origin,
        request: PluginRequest,
        key: Option<RequestKey>,
    ) -> Result<PluginResponse> {
        let name = row.name.as_str();
        self.admit(company.id, name, row.limits.apply().requests_per_second)?;
        let mut tx = None;
        if let Some(key) = &key {
            let mut keyed = self.db.begin_write().await?;
            let found = idempotency::find_many(&mut keyed, company, &[key]).await?;
            if let Some(stored) = found.into_values().next() {
                // The stored response may belong to a commit still on its way to the disk:
                // committing waits for it too.
                keyed.commit().await?;
                return replay(stored?);
            }
            tx = Some(keyed);
        }
        let limits = row.limits.apply();
        if request.body.len() as u64 > limits.input_bytes {
            return Err(Error::invalid(
                "body",
                format!(
                    "is larger than plugin {name}'s input limit of {} bytes",
                    limits.input_bytes
                ),
            ));
        }
        let request = WitRequest {
            method: request.method,
            path: request.path,
            query: request.query,
            headers: request
                .headers
                .into_iter()
                .map(|(name, value)| WitHeader { name, value })
                .collect(),
            body: request.body,
        };
        let read_only = matches!(request.method.as_str(), "GET" | "HEAD");
        let context = self.context(company, &row, user, origin, read_only);
        let finished = self
            .run(
                &pre,
                context,
                tx,
                async |plugin, store| {
                    let response: WitResponse =
                        plugin.call_handle_http(&mut *store, &request).await?;
                    check_output(store, response.body.len(), limits)?;
                    Ok(response)
                },
                |response| response.status >= 500,
            )
            .await;
        let response = finished.result?;
        if !(100..=599).contains(&response.status) {
            return Err(Error::PluginFailed {
                plugin: name.to_owned(),
                limit: false,
                detail: format!("answered with the invalid HTTP status {}", response.status),
            });
        }
        let response = PluginResponse {
            status: response.status,
            headers: response
                .headers
                .into_iter()
                .map(|h| (h.name, h.value))
                .collect(),
            body: response.body,
            replayed: false,
        };
        if let Some(mut tx) = finished.state.tx {
            if response.status < 400 {
                if let Some(key) = &key {
                    idempotency::store(&mut tx, company, key, &stored(&response)).await?;
                }
                tx.commit().await?;
            } else {
                tx.rollback().await?;
            }
        }
        Ok(response)
    }

    /// Calls a plugin's `invoke(operation, input)`; its writes commit when it succeeds.
    pub async fn invoke(
        &self,
        company: &Company,
        name: &str,
        user: Option<i64>,
        origin: &Origin,
        operation: &str,
        input: &str,
    ) -> Result<String> {
        let (row, pre) = self.enabled(company, name).await?;
        let limits = row.limits.apply();
        if input.len() as u64 > limits.input_bytes {
            return Err(Error::invalid(
                "input",
                format!(
                    "is larger than plugin {name}'s input limit of {} bytes",
                    limits.input_bytes
                ),
            ));
        }
        let context = self.context(company, &row, user, origin, false);
        let finished = self
            .run(
                &pre,
                context,
                None,
                async |plugin, store| {
                    let output = plugin.call_invoke(&mut *store, operation, input).await?;
                    if let Ok(output) = &output {
                        check_output(store, output.len(), limits)?;
                    }
                    Ok(output)
                },
                Result::is_err,
            )
            .await;
        match finished.result? {
            Ok(output) => {
                if let Some(tx) = finished.state.tx {
                    tx.commit().await?;
                }
                Ok(output)
            }
            Err(error) => Err(call::from_wit(name, error)),
        }
    }
}

/// Stops a call whose answer is larger than its limit.
pub(super) fn check_output(
    store: &mut wasmtime::Store<CallState>,
    bytes: usize,
    limits: Limits,
) -> wasmtime::Result<()> {
    if bytes as u64 > limits.output_bytes {
        store.data_mut().stop = Some(Stop::Output);
        return Err(wasmtime::Error::new(Stopped(Stop::Output)));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_and_versions_are_checked() {
        assert!(check_name("expense-claims").is_ok());
        assert!(check_name("Expenses").is_err());
        assert!(check_name("9lives").is_err());
        assert!(check_name("").is_err());
        assert_eq!(semver("1.2.3"), Some((1, 2, 3)));
        assert_eq!(semver("1.2"), None);
        assert_eq!(semver("1.2.3.4"), None);
        assert!(semver("1.10.0") > semver("1.9.9"));
    }
}
