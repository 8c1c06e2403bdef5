-- Balances per quarter and per five days (the 1st–5th, 6th–10th, … and the 26th to the end
-- of each month), so that a report as of any day reads at most three quarters, two months,
-- two ten-day periods, one five-day period and four days of each account, instead of up to
-- eleven months and nine days.
CREATE TABLE ledger_balances_quarterly (
    company_id         BIGINT NOT NULL,
    account_id         BIGINT NOT NULL,
    currency           TEXT NOT NULL,
    quarter            DATE NOT NULL,
    closing            BOOLEAN NOT NULL,
    debit_minor        BIGINT NOT NULL,
    credit_minor       BIGINT NOT NULL,
    base_debit_minor   BIGINT NOT NULL,
    base_credit_minor  BIGINT NOT NULL,
    PRIMARY KEY (company_id, quarter, account_id, currency, closing)
);

INSERT INTO ledger_balances_quarterly
SELECT company_id, account_id, currency, date_trunc('quarter', month)::date,
       closing, SUM(debit_minor), SUM(credit_minor), SUM(base_debit_minor), SUM(base_credit_minor)
FROM ledger_balances_monthly
GROUP BY 1, 2, 3, 4, 5;

CREATE TABLE ledger_balances_five_day (
    company_id         BIGINT NOT NULL,
    account_id         BIGINT NOT NULL,
    currency           TEXT NOT NULL,
    start_day          DATE NOT NULL,
    closing            BOOLEAN NOT NULL,
    debit_minor        BIGINT NOT NULL,
    credit_minor       BIGINT NOT NULL,
    base_debit_minor   BIGINT NOT NULL,
    base_credit_minor  BIGINT NOT NULL,
    PRIMARY KEY (company_id, start_day, account_id, currency, closing)
);

INSERT INTO ledger_balances_five_day
SELECT company_id, account_id, currency,
       date_trunc('month', day)::date + (LEAST((extract(day FROM day)::int - 1) / 5, 5) * 5),
       closing, SUM(debit_minor), SUM(credit_minor), SUM(base_debit_minor), SUM(base_credit_minor)
FROM ledger_balances_daily
GROUP BY 1, 2, 3, 4, 5;
