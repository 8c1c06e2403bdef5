-- Identity (users, sessions and API tokens), authorization (roles, permissions, grants per
-- company, segregation-of-duties rules) and the hash-chained audit trail.

CREATE TABLE users (
    id                  INTEGER PRIMARY KEY,
    username            TEXT NOT NULL,
    display_name        TEXT NOT NULL,
    email               TEXT,
    kind                TEXT NOT NULL CHECK (kind IN ('person', 'service')),
    password_hash       TEXT,
    status              TEXT NOT NULL DEFAULT 'active' CHECK (status IN ('active', 'disabled')),
    manager_id          INTEGER REFERENCES users (id),
    failed_logins       INTEGER NOT NULL DEFAULT 0,
    locked_until        TEXT,
    created_at          TEXT NOT NULL,
    password_changed_at TEXT,
    CONSTRAINT users_username_unique UNIQUE (username)
) STRICT;

-- Session and API tokens, stored only as SHA-256 hashes of the random token.
CREATE TABLE auth_tokens (
    id           INTEGER PRIMARY KEY,
    user_id      INTEGER NOT NULL REFERENCES users (id),
    kind         TEXT NOT NULL CHECK (kind IN ('session', 'api')),
    name         TEXT NOT NULL,
    token_hash   TEXT NOT NULL UNIQUE,
    prefix       TEXT NOT NULL,
    created_at   TEXT NOT NULL,
    expires_at   TEXT,
    last_used_at TEXT,
    revoked_at   TEXT
) STRICT;
CREATE INDEX auth_tokens_by_user ON auth_tokens (user_id);

-- Roles: built-in ones (company_id NULL) exist in every company; custom ones belong to one.
CREATE TABLE authz_roles (
    id          INTEGER PRIMARY KEY,
    company_id  INTEGER REFERENCES companies (id),
    name        TEXT NOT NULL,
    description TEXT NOT NULL DEFAULT '',
    built_in    INTEGER NOT NULL DEFAULT 0 CHECK (built_in IN (0, 1)),
    created_at  TEXT NOT NULL
) STRICT;
CREATE UNIQUE INDEX authz_roles_name_unique ON authz_roles (COALESCE(company_id, 0), name);

-- What a role may do: an action on a resource, over all records, the team's or the user's own.
CREATE TABLE authz_permissions (
    role_id  INTEGER NOT NULL REFERENCES authz_roles (id),
    resource TEXT NOT NULL,
    action   TEXT NOT NULL,
    scope    TEXT NOT NULL CHECK (scope IN ('all', 'team', 'own')),
    PRIMARY KEY (role_id, resource, action)
) STRICT;

-- Who holds which role in which company (casbin domains are companies).
CREATE TABLE authz_grants (
    user_id    INTEGER NOT NULL REFERENCES users (id),
    role_id    INTEGER NOT NULL REFERENCES authz_roles (id),
    company_id INTEGER NOT NULL REFERENCES companies (id),
    granted_at TEXT NOT NULL,
    granted_by INTEGER REFERENCES users (id),
    PRIMARY KEY (user_id, role_id, company_id)
) STRICT;
CREATE INDEX authz_grants_by_role ON authz_grants (role_id);

-- Segregation of duties: whoever did `conflicting_action` on a record may not do `action` on it.
CREATE TABLE authz_duty_rules (
    id                 INTEGER PRIMARY KEY,
    company_id         INTEGER NOT NULL REFERENCES companies (id),
    name               TEXT NOT NULL,
    action             TEXT NOT NULL,
    conflicting_action TEXT NOT NULL,
    enabled            INTEGER NOT NULL DEFAULT 1 CHECK (enabled IN (0, 1)),
    created_at         TEXT NOT NULL,
    CONSTRAINT authz_duty_rules_name_unique UNIQUE (company_id, name)
) STRICT;

-- Bumped by every change to roles, permissions, grants or duty rules, so that every process
-- knows when to reload its enforcer.
CREATE TABLE authz_policy_version (
    id      INTEGER PRIMARY KEY CHECK (id = 1),
    version INTEGER NOT NULL
) STRICT;
INSERT INTO authz_policy_version (id, version) VALUES (1, 0);

-- The audit trail: one record per change, hash-chained. Append-only: triggers refuse edits.
CREATE TABLE audit_log (
    seq             INTEGER PRIMARY KEY,
    occurred_at     TEXT NOT NULL,
    company_id      INTEGER,
    actor_user_id   INTEGER,
    actor_plugin    TEXT,
    action          TEXT NOT NULL,
    object_type     TEXT NOT NULL,
    object_id       TEXT NOT NULL,
    change          TEXT NOT NULL,
    request_id      TEXT,
    idempotency_key TEXT,
    prev_hash       TEXT NOT NULL,
    hash            TEXT NOT NULL
) STRICT;
CREATE INDEX audit_log_by_object ON audit_log (object_type, object_id, seq);
CREATE INDEX audit_log_by_actor ON audit_log (actor_user_id, seq);
CREATE INDEX audit_log_by_action ON audit_log (action, seq);

CREATE TRIGGER audit_log_refuses_update BEFORE UPDATE ON audit_log
BEGIN
    SELECT RAISE(ABORT, 'audit records are append-only');
END;
CREATE TRIGGER audit_log_refuses_delete BEFORE DELETE ON audit_log
BEGIN
    SELECT RAISE(ABORT, 'audit records are append-only');
END;

-- The end of the chain: appends lock and advance it, so concurrent writers chain in order.
CREATE TABLE audit_chain_head (
    id        INTEGER PRIMARY KEY CHECK (id = 1),
    last_seq  INTEGER NOT NULL,
    last_hash TEXT NOT NULL
) STRICT;
INSERT INTO audit_chain_head (id, last_seq, last_hash)
VALUES (1, 0, '0000000000000000000000000000000000000000000000000000000000000000');

ALTER TABLE ledger_entries ADD COLUMN posted_by INTEGER REFERENCES users (id);
