-- The plugin runtime: installed components, plugins per company with their grants and limits,
-- and the plugins' own records.

-- Component bytes by SHA-256, shared by every company and version that uses them, so that any
-- process serving this database can compile them.
CREATE TABLE plugin_components (
    hash       TEXT PRIMARY KEY,
    bytes      BLOB NOT NULL,
    created_at TEXT NOT NULL
) STRICT;

-- One row per plugin installed in a company. `migrated_version` is the version whose migrate
-- step last succeeded (NULL before the first enable); an upgrade whose migration fails leaves
-- the row as it was.
CREATE TABLE plugins (
    id               INTEGER PRIMARY KEY,
    company_id       INTEGER NOT NULL REFERENCES companies (id),
    name             TEXT NOT NULL,
    version          TEXT NOT NULL,
    api_version      TEXT NOT NULL,
    component_hash   TEXT NOT NULL REFERENCES plugin_components (hash),
    description      TEXT NOT NULL,
    status           TEXT NOT NULL CHECK (status IN ('enabled', 'disabled', 'uninstalled')),
    requested        TEXT NOT NULL,
    granted          TEXT NOT NULL,
    subscriptions    TEXT NOT NULL,
    limits           TEXT NOT NULL,
    migrated_version TEXT,
    installed_at     TEXT NOT NULL,
    updated_at       TEXT NOT NULL,
    UNIQUE (company_id, name)
) STRICT;

-- Each plugin's collections of JSON records. Kept when a plugin is uninstalled; removed only
-- by an explicit purge.
CREATE TABLE plugin_records (
    company_id INTEGER NOT NULL REFERENCES companies (id),
    plugin     TEXT NOT NULL,
    collection TEXT NOT NULL,
    key        TEXT NOT NULL,
    value      TEXT NOT NULL,
    updated_at TEXT NOT NULL,
    PRIMARY KEY (company_id, plugin, collection, key)
) STRICT, WITHOUT ROWID;
