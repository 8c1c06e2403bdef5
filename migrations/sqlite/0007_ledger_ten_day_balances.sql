-- Balances per ten days (the 1st–10th, 11th–20th and 21st–end of each month), between the
-- monthly and daily ones: a report as of a day inside a month reads the month's earlier
-- ten-day periods and at most nine days, instead of up to thirty days.
CREATE TABLE ledger_balances_ten_day (
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

INSERT INTO ledger_balances_ten_day
SELECT company_id, account_id, currency,
       substr(day, 1, 8) || CASE WHEN substr(day, 9, 2) < '11' THEN '01'
                                 WHEN substr(day, 9, 2) < '21' THEN '11'
                                 ELSE '21' END,
       closing, SUM(debit_minor), SUM(credit_minor), SUM(base_debit_minor), SUM(base_credit_minor)
FROM ledger_balances_daily
GROUP BY 1, 2, 3, 4, 5;
