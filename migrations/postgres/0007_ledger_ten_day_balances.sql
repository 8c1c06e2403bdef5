-- Balances per ten days (the 1st–10th, 11th–20th and 21st–end of each month), between the
-- monthly and daily ones: a report as of a day inside a month reads the month's earlier
-- ten-day periods and at most nine days, instead of up to thirty days.
CREATE TABLE ledger_balances_ten_day (
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

INSERT INTO ledger_balances_ten_day
SELECT company_id, account_id, currency,
       date_trunc('month', day)::date + CASE WHEN extract(day FROM day) < 11 THEN 0
                                             WHEN extract(day FROM day) < 21 THEN 10
                                             ELSE 20 END,
       closing, SUM(debit_minor), SUM(credit_minor), SUM(base_debit_minor), SUM(base_credit_minor)
FROM ledger_balances_daily
GROUP BY 1, 2, 3, 4, 5;
