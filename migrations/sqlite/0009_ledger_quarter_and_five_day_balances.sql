-- Balances per quarter and per five days (the 1st–5th, 6th–10th, … and the 26th to the end
-- of each month), so that a report as of any day reads at most three quarters, two months,
-- two ten-day periods, one five-day period and four days of each account, instead of up to
-- eleven months and nine days.
CREATE TABLE ledger_balances_quarterly (
    company_id         INTEGER NOT NULL,
    account_id         INTEGER NOT NULL,
    currency           TEXT NOT NULL,
    quarter            TEXT NOT NULL,
    closing            INTEGER NOT NULL CHECK (closing IN (0, 1)),
    debit_minor        INTEGER NOT NULL,
    credit_minor       INTEGER NOT NULL,
    base_debit_minor   INTEGER NOT NULL,
    base_credit_minor  INTEGER NOT NULL,
    PRIMARY KEY (company_id, quarter, account_id, currency, closing)
) STRICT, WITHOUT ROWID;

INSERT INTO ledger_balances_quarterly
SELECT company_id, account_id, currency,
       substr(month, 1, 5) || CASE WHEN substr(month, 6, 2) < '04' THEN '01'
                                   WHEN substr(month, 6, 2) < '07' THEN '04'
                                   WHEN substr(month, 6, 2) < '10' THEN '07'
                                   ELSE '10' END || '-01',
       closing, SUM(debit_minor), SUM(credit_minor), SUM(base_debit_minor), SUM(base_credit_minor)
FROM ledger_balances_monthly
GROUP BY 1, 2, 3, 4, 5;

CREATE TABLE ledger_balances_five_day (
    company_id         INTEGER NOT NULL,
    account_id         INTEGER NOT NULL,
    currency           TEXT NOT NULL,
    start_day          TEXT NOT NULL,
    closing            INTEGER NOT NULL CHECK (closing IN (0, 1)),
    debit_minor        INTEGER NOT NULL,
    credit_minor       INTEGER NOT NULL,
    base_debit_minor   INTEGER NOT NULL,
    base_credit_minor  INTEGER NOT NULL,
    PRIMARY KEY (company_id, start_day, account_id, currency, closing)
) STRICT, WITHOUT ROWID;

INSERT INTO ledger_balances_five_day
SELECT company_id, account_id, currency,
       substr(day, 1, 8) || CASE WHEN substr(day, 9, 2) < '06' THEN '01'
                                 WHEN substr(day, 9, 2) < '11' THEN '06'
                                 WHEN substr(day, 9, 2) < '16' THEN '11'
                                 WHEN substr(day, 9, 2) < '21' THEN '16'
                                 WHEN substr(day, 9, 2) < '26' THEN '21'
                                 ELSE '26' END,
       closing, SUM(debit_minor), SUM(credit_minor), SUM(base_debit_minor), SUM(base_credit_minor)
FROM ledger_balances_daily
GROUP BY 1, 2, 3, 4, 5;
