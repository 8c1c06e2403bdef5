-- The plugin fabric: what plugins declare beyond capabilities, indexes over their records,
-- events with their deliveries, subscriptions and hook implementations.

-- Collections with indexes, extension points, hooks, operations and party fields as the
-- installed version's manifest declares them (JSON).
ALTER TABLE plugins ADD COLUMN declarations TEXT NOT NULL DEFAULT '{}';

-- The indexes in force over each plugin collection: an upgrade that changes one rebuilds it.
CREATE TABLE plugin_indexes (
    company_id INTEGER NOT NULL REFERENCES companies (id),
    plugin     TEXT NOT NULL,
    collection TEXT NOT NULL,
    name       TEXT NOT NULL,
    fields     TEXT NOT NULL,
    PRIMARY KEY (company_id, plugin, collection, name)
) STRICT, WITHOUT ROWID;

-- One row per record and index: `index_key` encodes the record's values of the index's fields
-- so that byte order is the order of the values (see runtime/index.rs).
CREATE TABLE plugin_index_entries (
    company_id INTEGER NOT NULL,
    plugin     TEXT NOT NULL,
    collection TEXT NOT NULL,
    name       TEXT NOT NULL,
    index_key  TEXT NOT NULL,
    record_key TEXT NOT NULL,
    PRIMARY KEY (company_id, plugin, collection, name, index_key, record_key)
) STRICT, WITHOUT ROWID;
CREATE INDEX plugin_index_entries_by_record
    ON plugin_index_entries (company_id, plugin, collection, record_key);

-- Published events, the host's and the plugins'. Kept after delivery as the company's log.
CREATE TABLE events (
    id           INTEGER PRIMARY KEY AUTOINCREMENT,
    company_id   INTEGER NOT NULL REFERENCES companies (id),
    topic        TEXT NOT NULL,
    subject      TEXT NOT NULL,
    payload      TEXT NOT NULL,
    source       TEXT,
    published_at TEXT NOT NULL
) STRICT;

-- Which plugins of a company want which topics (installed ones, enabled or not).
CREATE TABLE plugin_subscriptions (
    company_id INTEGER NOT NULL,
    topic      TEXT NOT NULL,
    plugin     TEXT NOT NULL,
    PRIMARY KEY (company_id, topic, plugin)
) STRICT, WITHOUT ROWID;

-- One delivery per event and subscriber. `pending` ones are due at `next_attempt_ms` (Unix
-- milliseconds); `dead` ones failed every attempt and wait for an admin's replay.
CREATE TABLE event_deliveries (
    event_id        INTEGER NOT NULL REFERENCES events (id),
    subscriber      TEXT NOT NULL,
    company_id      INTEGER NOT NULL,
    subject         TEXT NOT NULL,
    status          TEXT NOT NULL CHECK (status IN ('pending', 'delivered', 'dead')),
    attempts        INTEGER NOT NULL DEFAULT 0,
    next_attempt_ms INTEGER NOT NULL,
    last_error      TEXT,
    updated_at      TEXT NOT NULL,
    PRIMARY KEY (event_id, subscriber)
) STRICT;
CREATE INDEX event_deliveries_due
    ON event_deliveries (next_attempt_ms, event_id) WHERE status = 'pending';
CREATE INDEX event_deliveries_in_order
    ON event_deliveries (company_id, subscriber, subject, event_id) WHERE status = 'pending';
CREATE INDEX event_deliveries_dead
    ON event_deliveries (company_id, event_id) WHERE status = 'dead';

-- Which plugins implement which extension points, in the order they run.
CREATE TABLE plugin_hooks (
    company_id INTEGER NOT NULL,
    point      TEXT NOT NULL,
    plugin     TEXT NOT NULL,
    operation  TEXT NOT NULL,
    position   INTEGER NOT NULL,
    PRIMARY KEY (company_id, point, plugin)
) STRICT, WITHOUT ROWID;
