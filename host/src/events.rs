//! The event outbox. Publishing writes the event and one pending delivery per subscribed
//! plugin in the caller's transaction, so an event goes out exactly when the change it
//! describes commits. The plugin runtime's dispatcher ([`crate::runtime::dispatch`]) delivers
//! them. An event nobody subscribes to is not stored.

use chrono::Utc;
use serde::Serialize;

use crate::db::Tx;
use crate::error::{Error, Result};
use crate::on_conn;

/// Topics the host publishes, with the subject each is about.
pub mod topics {
    /// Subject `entry/<id>`; payload: id, date, memo, source and the reversed entry's id.
    pub const ENTRY_POSTED: &str = "ledger.entry.posted";
    /// Subject `period/<start>`; payload: start, end, fiscal year.
    pub const PERIOD_CLOSED: &str = "ledger.period.closed";
    /// Subject `party/<id>`; payload: the party document.
    pub const PARTY_CREATED: &str = "parties.party.created";
    /// Subject `party/<id>`; payload: the party document after the change.
    pub const PARTY_UPDATED: &str = "parties.party.updated";
    /// Subject `party/<id>` of the party merged away; payload: `merged` and `into` ids.
    pub const PARTY_MERGED: &str = "parties.party.merged";
}

/// Longest topic and subject.
pub const TOPIC_CHARS_MAX: usize = 128;
pub const SUBJECT_CHARS_MAX: usize = 256;
/// Largest payload, in bytes of JSON text.
pub const PAYLOAD_BYTES_MAX: usize = 256 * 1024;

/// Milliseconds since the Unix epoch: the clock of delivery schedules.
pub fn now_ms() -> i64 {
    Utc::now().timestamp_millis()
}

/// Checks a topic: dot-separated lower-case words ("orders.order.confirmed").
pub fn check_topic(topic: &str) -> Result<()> {
    let valid = !topic.is_empty()
        && topic.len() <= TOPIC_CHARS_MAX
        && topic.split('.').all(|part| {
            !part.is_empty()
                && part
                    .bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_')
        });
    if valid {
        Ok(())
    } else {
        Err(Error::invalid(
            "topic",
            format!(
                "is dot-separated lower-case words (letters, digits, '-', '_'), at most {TOPIC_CHARS_MAX} characters"
            ),
        ))
    }
}

/// Whether some plugin of the company subscribes to `topic`.
pub async fn subscribed(tx: &mut Tx, company_id: i64, topic: &str) -> Result<bool> {
    let found = on_conn!(tx, conn => {
        sqlx::query("SELECT 1 FROM plugin_subscriptions WHERE company_id = $1 AND topic = $2 LIMIT 1")
            .bind(company_id)
            .bind(topic)
            .fetch_optional(&mut *conn)
            .await?
            .is_some()
    });
    Ok(found)
}

/// Publishes an event in `tx` when some plugin of the company subscribes to its topic.
/// Returns its id, or None when nobody listens.
pub async fn publish(
    tx: &mut Tx,
    company_id: i64,
    topic: &str,
    subject: &str,
    payload: &impl Serialize,
    source: Option<&str>,
) -> Result<Option<i64>> {
    let payload = serde_json::to_string(payload).map_err(anyhow::Error::from)?;
    publish_json(tx, company_id, topic, subject, &payload, source).await
}

/// [`publish`] with the payload as JSON text (already checked).
pub async fn publish_json(
    tx: &mut Tx,
    company_id: i64,
    topic: &str,
    subject: &str,
    payload: &str,
    source: Option<&str>,
) -> Result<Option<i64>> {
    if subject.is_empty() || subject.chars().count() > SUBJECT_CHARS_MAX {
        return Err(Error::invalid(
            "subject",
            format!("has 1 to {SUBJECT_CHARS_MAX} characters"),
        ));
    }
    if payload.len() > PAYLOAD_BYTES_MAX {
        return Err(Error::invalid(
            "payload",
            format!("has at most {PAYLOAD_BYTES_MAX} bytes of JSON"),
        ));
    }
    let now = Utc::now();
    let id: Option<i64> = on_conn!(tx, conn => {
        let id: Option<i64> = sqlx::query_scalar(
            "INSERT INTO events (company_id, topic, subject, payload, source, published_at) \
             SELECT $1, $2, $3, $4, $5, $6 \
             WHERE EXISTS (SELECT 1 FROM plugin_subscriptions WHERE company_id = $1 AND topic = $2) \
             RETURNING id",
        )
        .bind(company_id)
        .bind(topic)
        .bind(subject)
        .bind(payload)
        .bind(source)
        .bind(now)
        .fetch_optional(&mut *conn)
        .await?;
        if let Some(id) = id {
            sqlx::query(
                "INSERT INTO event_deliveries \
                 (event_id, subscriber, company_id, subject, status, attempts, next_attempt_ms, updated_at) \
                 SELECT $1, plugin, company_id, $2, 'pending', 0, $3, $4 FROM plugin_subscriptions \
                 WHERE company_id = $5 AND topic = $6",
            )
            .bind(id)
            .bind(subject)
            .bind(now.timestamp_millis())
            .bind(now)
            .bind(company_id)
            .bind(topic)
            .execute(&mut *conn)
            .await?;
        }
        id
    });
    if id.is_some() {
        metrics::counter!("keel_events_published_total", "topic" => topic.to_owned()).increment(1);
    }
    Ok(id)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn topics_are_dotted_lower_case_words() {
        assert!(check_topic("orders.order.confirmed").is_ok());
        assert!(check_topic(topics::ENTRY_POSTED).is_ok());
        assert!(check_topic("Orders.x").is_err());
        assert!(check_topic("orders..x").is_err());
        assert!(check_topic("").is_err());
    }
}
