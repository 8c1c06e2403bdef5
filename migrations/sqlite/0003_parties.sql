-- The customer master: parties (organizations and persons) with roles, contact data, custom
-- fields, relationships, search and duplicate detection.

-- Lists (roles, tags, addresses, emails, phones, tax ids, external ids) and custom field values
-- are JSON text on the party row: they are read and written with the party. Everything that is
-- looked up or filtered by is also in party_keys, one row per normalized value.
ALTER TABLE parties ADD COLUMN kind TEXT NOT NULL DEFAULT 'organization'
    CHECK (kind IN ('organization', 'person'));
ALTER TABLE parties ADD COLUMN legal_name TEXT;
ALTER TABLE parties ADD COLUMN status TEXT NOT NULL DEFAULT 'active'
    CHECK (status IN ('active', 'blocked', 'archived', 'merged'));
ALTER TABLE parties ADD COLUMN merged_into_id INTEGER REFERENCES parties (id);
ALTER TABLE parties ADD COLUMN owner_user_id INTEGER REFERENCES users (id);
ALTER TABLE parties ADD COLUMN default_currency TEXT;
ALTER TABLE parties ADD COLUMN payment_terms_days INTEGER;
ALTER TABLE parties ADD COLUMN credit_limit_minor INTEGER;
ALTER TABLE parties ADD COLUMN roles TEXT NOT NULL DEFAULT '[]';
ALTER TABLE parties ADD COLUMN tags TEXT NOT NULL DEFAULT '[]';
ALTER TABLE parties ADD COLUMN addresses TEXT NOT NULL DEFAULT '[]';
ALTER TABLE parties ADD COLUMN emails TEXT NOT NULL DEFAULT '[]';
ALTER TABLE parties ADD COLUMN phones TEXT NOT NULL DEFAULT '[]';
ALTER TABLE parties ADD COLUMN tax_ids TEXT NOT NULL DEFAULT '[]';
ALTER TABLE parties ADD COLUMN external_ids TEXT NOT NULL DEFAULT '[]';
ALTER TABLE parties ADD COLUMN custom_fields TEXT NOT NULL DEFAULT '{}';
-- Lower-cased, accents and punctuation removed: the order of lists and name-prefix search.
ALTER TABLE parties ADD COLUMN sort_name TEXT NOT NULL DEFAULT '';
ALTER TABLE parties ADD COLUMN updated_at TEXT;
ALTER TABLE parties ADD COLUMN anonymized_at TEXT;

CREATE INDEX parties_by_name ON parties (company_id, sort_name, id);
CREATE INDEX parties_by_owner ON parties (company_id, owner_user_id, sort_name, id);
CREATE INDEX parties_merged_into ON parties (merged_into_id) WHERE merged_into_id IS NOT NULL;

-- Normalized values a party is found by: kind is role, tag, email, phone, tax_id, external_id,
-- name (the duplicate-detection key) or field:<name> for custom field values.
CREATE TABLE party_keys (
    company_id INTEGER NOT NULL,
    kind       TEXT NOT NULL,
    value      TEXT NOT NULL,
    party_id   INTEGER NOT NULL REFERENCES parties (id),
    PRIMARY KEY (company_id, kind, value, party_id)
) STRICT, WITHOUT ROWID;
CREATE INDEX party_keys_by_party ON party_keys (party_id);

-- Directed links: party_id is a contact of, or a subsidiary of, related_party_id.
CREATE TABLE party_relationships (
    company_id       INTEGER NOT NULL,
    party_id         INTEGER NOT NULL REFERENCES parties (id),
    kind             TEXT NOT NULL CHECK (kind IN ('contact_of', 'subsidiary_of')),
    related_party_id INTEGER NOT NULL REFERENCES parties (id),
    title            TEXT,
    PRIMARY KEY (party_id, kind, related_party_id)
) STRICT, WITHOUT ROWID;
CREATE INDEX party_relationships_by_related ON party_relationships (related_party_id, kind);

-- Custom fields admins (and, later, plugins) declare per party kind. Definitions are data, so
-- they survive upgrades.
CREATE TABLE party_field_definitions (
    id          INTEGER PRIMARY KEY,
    company_id  INTEGER NOT NULL REFERENCES companies (id),
    name        TEXT NOT NULL,
    label       TEXT NOT NULL,
    field_type  TEXT NOT NULL
        CHECK (field_type IN ('text', 'number', 'decimal', 'date', 'bool', 'enum', 'party')),
    applies_to  TEXT NOT NULL CHECK (applies_to IN ('any', 'organization', 'person')),
    required    INTEGER NOT NULL DEFAULT 0 CHECK (required IN (0, 1)),
    options     TEXT NOT NULL DEFAULT '[]',
    owner_plugin TEXT,
    created_at  TEXT NOT NULL,
    UNIQUE (company_id, name)
) STRICT;

-- Full-text search over names, emails, phones, tax ids and text custom fields: trigram tokens
-- find any fragment of three or more characters. rowid is the party id. No ranking is asked of
-- it, so it keeps no document sizes (columnsize=0): one write less per party.
CREATE VIRTUAL TABLE party_search USING fts5 (
    text, tokenize = 'trigram remove_diacritics 1', columnsize = 0
);
