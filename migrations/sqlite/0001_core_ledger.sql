-- Host core: companies, currencies, the general ledger and idempotency records.
-- STRICT tables: SQLite checks column types like PostgreSQL does.
-- Dates are ISO-8601 TEXT (YYYY-MM-DD), timestamps RFC 3339 TEXT in UTC, money BIGINT minor units.

CREATE TABLE currencies (
    code        TEXT PRIMARY KEY CHECK (length(code) = 3 AND code = upper(code)),
    name        TEXT NOT NULL,
    minor_units INTEGER NOT NULL CHECK (minor_units BETWEEN 0 AND 4)
) STRICT;

CREATE TABLE companies (
    id                      INTEGER PRIMARY KEY,
    code                    TEXT NOT NULL UNIQUE,
    name                    TEXT NOT NULL,
    base_currency           TEXT NOT NULL REFERENCES currencies (code),
    fiscal_year_start_month INTEGER NOT NULL DEFAULT 1 CHECK (fiscal_year_start_month BETWEEN 1 AND 12),
    created_at              TEXT NOT NULL
) STRICT;

-- The party master (customers, vendors, employees, contacts). Ledger lines reference parties;
-- the parties capability adds its columns in later migrations.
CREATE TABLE parties (
    id           INTEGER PRIMARY KEY,
    company_id   INTEGER NOT NULL REFERENCES companies (id),
    display_name TEXT NOT NULL,
    created_at   TEXT NOT NULL
) STRICT;

CREATE TABLE ledger_accounts (
    id           INTEGER PRIMARY KEY,
    company_id   INTEGER NOT NULL REFERENCES companies (id),
    code         TEXT NOT NULL,
    name         TEXT NOT NULL,
    account_type TEXT NOT NULL CHECK (account_type IN ('asset', 'liability', 'equity', 'income', 'expense')),
    parent_id    INTEGER REFERENCES ledger_accounts (id),
    currency     TEXT REFERENCES currencies (code),
    active       INTEGER NOT NULL DEFAULT 1 CHECK (active IN (0, 1)),
    created_at   TEXT NOT NULL,
    CONSTRAINT ledger_accounts_code_unique UNIQUE (company_id, code)
) STRICT;

CREATE TABLE ledger_fiscal_years (
    id               INTEGER PRIMARY KEY,
    company_id       INTEGER NOT NULL REFERENCES companies (id),
    name             TEXT NOT NULL,
    start_date       TEXT NOT NULL,
    end_date         TEXT NOT NULL,
    status           TEXT NOT NULL DEFAULT 'open' CHECK (status IN ('open', 'closed')),
    closing_entry_id INTEGER,
    closed_at        TEXT,
    CONSTRAINT ledger_fiscal_years_start_unique UNIQUE (company_id, start_date),
    CHECK (end_date >= start_date)
) STRICT;

CREATE TABLE ledger_periods (
    id             INTEGER PRIMARY KEY,
    company_id     INTEGER NOT NULL REFERENCES companies (id),
    fiscal_year_id INTEGER NOT NULL REFERENCES ledger_fiscal_years (id),
    name           TEXT NOT NULL,
    start_date     TEXT NOT NULL,
    end_date       TEXT NOT NULL,
    status         TEXT NOT NULL DEFAULT 'open' CHECK (status IN ('open', 'closed')),
    closed_at      TEXT,
    CONSTRAINT ledger_periods_start_unique UNIQUE (company_id, start_date),
    CHECK (end_date >= start_date)
) STRICT;
CREATE INDEX ledger_periods_by_end ON ledger_periods (company_id, end_date);

-- Posted entries are immutable: the host never updates or deletes these rows.
CREATE TABLE ledger_entries (
    id                  INTEGER PRIMARY KEY,
    company_id          INTEGER NOT NULL REFERENCES companies (id),
    entry_date          TEXT NOT NULL,
    memo                TEXT NOT NULL DEFAULT '',
    kind                TEXT NOT NULL CHECK (kind IN ('standard', 'reversal', 'closing')),
    source_module       TEXT,
    source_document     TEXT,
    reverses_entry_id   INTEGER REFERENCES ledger_entries (id),
    idempotency_key     TEXT,
    request_fingerprint TEXT,
    posted_at           TEXT NOT NULL
) STRICT;
CREATE INDEX ledger_entries_by_date ON ledger_entries (company_id, entry_date, id);
-- Partial indexes: most entries have no source, key or reversal, and skip them entirely.
CREATE INDEX ledger_entries_by_source ON ledger_entries (company_id, source_module, source_document)
    WHERE source_module IS NOT NULL;
CREATE UNIQUE INDEX ledger_entries_reversed_once ON ledger_entries (reverses_entry_id)
    WHERE reverses_entry_id IS NOT NULL;
CREATE UNIQUE INDEX ledger_entries_idempotency_unique ON ledger_entries (company_id, idempotency_key)
    WHERE idempotency_key IS NOT NULL;

-- amount_minor and base_amount_minor are signed: debit positive, credit negative.
CREATE TABLE ledger_lines (
    entry_id          INTEGER NOT NULL REFERENCES ledger_entries (id),
    line_no           INTEGER NOT NULL,
    company_id        INTEGER NOT NULL,
    account_id        INTEGER NOT NULL REFERENCES ledger_accounts (id),
    entry_date        TEXT NOT NULL,
    currency          TEXT NOT NULL,
    amount_minor      INTEGER NOT NULL,
    rate              TEXT,
    base_amount_minor INTEGER NOT NULL,
    party_id          INTEGER REFERENCES parties (id),
    memo              TEXT,
    dimensions        TEXT,
    PRIMARY KEY (entry_id, line_no)
) STRICT, WITHOUT ROWID;
CREATE INDEX ledger_lines_by_account ON ledger_lines (account_id, entry_date, entry_id, line_no);
CREATE INDEX ledger_lines_by_party ON ledger_lines (party_id) WHERE party_id IS NOT NULL;

-- Balances maintained as entries post, so reports cost O(accounts) rather than O(lines).
-- closing = 1 holds the effect of year-end closing entries, which income statements leave out.
CREATE TABLE ledger_balances_daily (
    company_id         INTEGER NOT NULL,
    account_id         INTEGER NOT NULL,
    currency           TEXT NOT NULL,
    day                TEXT NOT NULL,
    closing            INTEGER NOT NULL CHECK (closing IN (0, 1)),
    debit_minor        INTEGER NOT NULL,
    credit_minor       INTEGER NOT NULL,
    base_debit_minor   INTEGER NOT NULL,
    base_credit_minor  INTEGER NOT NULL,
    PRIMARY KEY (company_id, day, account_id, currency, closing)
) STRICT, WITHOUT ROWID;

CREATE TABLE ledger_balances_monthly (
    company_id         INTEGER NOT NULL,
    account_id         INTEGER NOT NULL,
    currency           TEXT NOT NULL,
    month              TEXT NOT NULL,
    closing            INTEGER NOT NULL CHECK (closing IN (0, 1)),
    debit_minor        INTEGER NOT NULL,
    credit_minor       INTEGER NOT NULL,
    base_debit_minor   INTEGER NOT NULL,
    base_credit_minor  INTEGER NOT NULL,
    PRIMARY KEY (company_id, month, account_id, currency, closing)
) STRICT, WITHOUT ROWID;

CREATE TABLE ledger_balances (
    company_id         INTEGER NOT NULL,
    account_id         INTEGER NOT NULL,
    currency           TEXT NOT NULL,
    last_day           TEXT NOT NULL,
    debit_minor        INTEGER NOT NULL,
    credit_minor       INTEGER NOT NULL,
    base_debit_minor   INTEGER NOT NULL,
    base_credit_minor  INTEGER NOT NULL,
    PRIMARY KEY (company_id, account_id, currency)
) STRICT, WITHOUT ROWID;

-- The first response to a write, replayed when the same Idempotency-Key comes again.
CREATE TABLE idempotency_keys (
    company_id          INTEGER NOT NULL,
    principal           TEXT NOT NULL,
    idempotency_key     TEXT NOT NULL,
    request_fingerprint TEXT NOT NULL,
    response_status     INTEGER NOT NULL,
    response_body       TEXT NOT NULL,
    created_at          TEXT NOT NULL,
    PRIMARY KEY (company_id, principal, idempotency_key)
) STRICT;
