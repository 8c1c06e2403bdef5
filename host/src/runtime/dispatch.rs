//! Event delivery: the dispatcher claims due deliveries, calls each subscriber's `on-event`
//! in the claiming transaction (under a savepoint), and records the outcome there too — so a
//! handler's writes and the "delivered" mark commit together. A failed delivery is retried
//! with exponential backoff and, after the last attempt, dead-lettered for an admin to
//! replay. Only the oldest pending delivery of a subject (per subscriber) is due, which keeps
//! each subscriber's events of one subject in order. On PostgreSQL several processes share
//! the work: claims lock their rows `FOR UPDATE SKIP LOCKED`.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::json;
use sqlx::Row as _;
use utoipa::ToSchema;

use super::Runtime;
use super::bindings::latest::keel::platform::events::Event as WitEvent;
use super::call;
use crate::audit::{self, Event, Origin};
use crate::company::{self, Company};
use crate::db::{Backend, Tx};
use crate::error::{Error, Result};
use crate::events::now_ms;
use crate::on_conn;

/// How deliveries are retried.
#[derive(Debug, Clone, Copy)]
pub struct DispatchPolicy {
    /// Attempts before a delivery is dead-lettered.
    pub attempts_max: u32,
    /// Delay after the first failure; each further failure doubles it.
    pub backoff_base_ms: i64,
    pub backoff_max_ms: i64,
    /// Deliveries claimed (and committed) together.
    pub batch: u32,
    /// How long an idle dispatcher waits before looking again.
    pub idle_wait: Duration,
}

pub const DEFAULT_POLICY: DispatchPolicy = DispatchPolicy {
    attempts_max: 8,
    backoff_base_ms: 1_000,
    backoff_max_ms: 5 * 60 * 1_000,
    batch: 200,
    idle_wait: Duration::from_millis(200),
};

/// The wait before attempt `failed + 1`, after `failed` failures.
pub fn backoff_ms(policy: &DispatchPolicy, failed: u32) -> i64 {
    let doublings = failed.saturating_sub(1).min(30);
    policy
        .backoff_base_ms
        .saturating_mul(1_i64 << doublings)
        .min(policy.backoff_max_ms)
}

/// What one round of the dispatcher did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct Round {
    pub delivered: u32,
    /// Failed and scheduled again.
    pub retried: u32,
    /// Failed for the last time.
    pub dead: u32,
}

impl Round {
    pub fn claimed(&self) -> u32 {
        self.delivered + self.retried + self.dead
    }
}

struct Claimed {
    event_id: i64,
    subscriber: String,
    company_id: i64,
    attempts: u32,
    topic: String,
    subject: String,
    payload: String,
    source: Option<String>,
}

const CLAIM: &str = "SELECT d.event_id, d.subscriber, d.company_id, d.attempts, \
       e.topic, e.subject, e.payload, e.source \
     FROM event_deliveries d \
     JOIN events e ON e.id = d.event_id \
     JOIN plugins p ON p.company_id = d.company_id AND p.name = d.subscriber \
     WHERE d.status = 'pending' AND d.next_attempt_ms <= $1 AND p.status = 'enabled' \
       AND NOT EXISTS (SELECT 1 FROM event_deliveries x \
         WHERE x.company_id = d.company_id AND x.subscriber = d.subscriber \
           AND x.subject = d.subject AND x.status = 'pending' AND x.event_id < d.event_id) \
     ORDER BY d.event_id LIMIT $2";

async fn claim(tx: &mut Tx, backend: Backend, batch: u32, now: i64) -> Result<Vec<Claimed>> {
    let sql = match backend {
        Backend::Sqlite => CLAIM.to_owned(),
        Backend::Postgres => format!("{CLAIM} FOR UPDATE OF d SKIP LOCKED"),
    };
    let claimed = on_conn!(tx, conn => {
        sqlx::query(&sql)
            .bind(now)
            .bind(i64::from(batch))
            .fetch_all(&mut *conn)
            .await?
            .iter()
            .map(|row| {
                Ok(Claimed {
                    event_id: row.try_get(0)?,
                    subscriber: row.try_get(1)?,
                    company_id: row.try_get(2)?,
                    attempts: u32::try_from(row.try_get::<i32, _>(3)?).unwrap_or(0),
                    topic: row.try_get(4)?,
                    subject: row.try_get(5)?,
                    payload: row.try_get(6)?,
                    source: row.try_get(7)?,
                })
            })
            .collect::<Result<Vec<_>, sqlx::Error>>()?
    });
    Ok(claimed)
}

async fn execute(tx: &mut Tx, statement: &str) -> Result<()> {
    on_conn!(tx, conn => {
        sqlx::query(statement).execute(&mut *conn).await?;
    });
    Ok(())
}

/// Marks a round's successful deliveries, one statement per subscriber.
async fn mark_delivered(tx: &mut Tx, delivered: &[&Claimed]) -> Result<()> {
    let mut by_subscriber: HashMap<&str, Vec<i64>> = HashMap::new();
    for claimed in delivered {
        by_subscriber
            .entry(&claimed.subscriber)
            .or_default()
            .push(claimed.event_id);
    }
    let now = Utc::now();
    for (subscriber, ids) in by_subscriber {
        match tx {
            Tx::Sqlite(conn) => {
                let ids = serde_json::to_string(&ids).map_err(anyhow::Error::from)?;
                sqlx::query(
                    "UPDATE event_deliveries SET status = 'delivered', attempts = attempts + 1, \
                     last_error = NULL, updated_at = $1 \
                     WHERE subscriber = $2 AND event_id IN (SELECT value FROM json_each($3))",
                )
                .bind(now)
                .bind(subscriber)
                .bind(ids)
                .execute(&mut **conn)
                .await?;
            }
            Tx::Postgres(conn) => {
                sqlx::query(
                    "UPDATE event_deliveries SET status = 'delivered', attempts = attempts + 1, \
                     last_error = NULL, updated_at = $1 \
                     WHERE subscriber = $2 AND event_id = ANY($3)",
                )
                .bind(now)
                .bind(subscriber)
                .bind(&ids)
                .execute(&mut **conn)
                .await?;
            }
        }
    }
    Ok(())
}

/// Records a failed attempt; returns true when it was the last.
async fn mark_failed(
    tx: &mut Tx,
    policy: &DispatchPolicy,
    claimed: &Claimed,
    error: &str,
) -> Result<bool> {
    let failed = claimed.attempts + 1;
    let dead = failed >= policy.attempts_max;
    on_conn!(tx, conn => {
        sqlx::query(
            "UPDATE event_deliveries SET status = $1, attempts = $2, next_attempt_ms = $3, \
             last_error = $4, updated_at = $5 WHERE event_id = $6 AND subscriber = $7",
        )
        .bind(if dead { "dead" } else { "pending" })
        .bind(i32::try_from(failed).unwrap_or(i32::MAX))
        .bind(now_ms() + backoff_ms(policy, failed))
        .bind(error)
        .bind(Utc::now())
        .bind(claimed.event_id)
        .bind(&claimed.subscriber)
        .execute(&mut *conn)
        .await?;
    });
    Ok(dead)
}

/// A subscriber's row and instantiation template, loaded once per round.
type Subscriber = (super::registry::PluginRow, super::bindings::PluginPre);

/// A delivery that failed every attempt.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct DeadLetter {
    pub event: EventView,
    /// The plugin the event could not be delivered to.
    pub subscriber: String,
    pub attempts: u32,
    pub last_error: Option<String>,
    pub failed_at: DateTime<Utc>,
}

#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct EventView {
    pub id: i64,
    pub topic: String,
    pub subject: String,
    #[schema(value_type = Object)]
    pub payload: serde_json::Value,
    /// The publishing plugin; absent for the host's own events.
    pub source: Option<String>,
    pub published_at: DateTime<Utc>,
}

/// Which dead letters: all of the company's, or those of one subscriber or one event.
#[derive(Debug, Clone, Default, Deserialize, ToSchema, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
pub struct DeadLetterFilter {
    pub plugin: Option<String>,
    pub event: Option<i64>,
}

/// Dead letters listed at most per request.
pub const DEAD_LETTERS_PAGE_MAX: i64 = 500;

impl Runtime {
    /// Delivers one batch of due events and commits it. Returns what happened.
    ///
    /// The batch first runs optimistically, without a savepoint per delivery; if any
    /// delivery fails, the whole batch rolls back and runs again with savepoints, so that
    /// the failure is recorded on its own. Handlers are idempotent by event id, so running
    /// one twice (its first run rolled back) is allowed.
    pub async fn dispatch_round(&self) -> Result<Round> {
        let policy = self.dispatch_policy();
        // A read first: an idle dispatcher should not take SQLite's write lock five times a
        // second just to find nothing.
        if !self.anything_due().await? {
            return Ok(Round::default());
        }
        if let Some(round) = self.deliver_batch(&policy, false).await? {
            return Ok(round);
        }
        Ok(self
            .deliver_batch(&policy, true)
            .await?
            .expect("a careful round always finishes"))
    }

    async fn anything_due(&self) -> Result<bool> {
        let now = now_ms();
        self.db
            .read(async |tx: &mut Tx| {
                let due = on_conn!(tx, conn => {
                    sqlx::query(
                        "SELECT 1 FROM event_deliveries \
                         WHERE status = 'pending' AND next_attempt_ms <= $1 LIMIT 1",
                    )
                    .bind(now)
                    .fetch_optional(&mut *conn)
                    .await?
                    .is_some()
                });
                Ok(due)
            })
            .await
    }

    /// One claimed batch. Without `careful`, gives up (rolling back) at the first failure.
    async fn deliver_batch(&self, policy: &DispatchPolicy, careful: bool) -> Result<Option<Round>> {
        let mut tx = self.db.begin_write().await?;
        let claimed = claim(&mut tx, self.db.backend(), policy.batch, now_ms()).await?;
        let mut round = Round::default();
        if claimed.is_empty() {
            tx.rollback().await?;
            return Ok(Some(round));
        }
        let mut companies: HashMap<i64, Company> = HashMap::new();
        let mut plugins: HashMap<(i64, String), Subscriber> = HashMap::new();
        let mut delivered: Vec<&Claimed> = Vec::new();
        let mut audit_records: Vec<(Origin, Event)> = Vec::new();
        for delivery in &claimed {
            let company = match companies.entry(delivery.company_id) {
                std::collections::hash_map::Entry::Occupied(known) => known.into_mut(),
                std::collections::hash_map::Entry::Vacant(slot) => {
                    slot.insert(company::by_id(&mut tx, delivery.company_id).await?)
                }
            };
            let company = &*company;
            if careful {
                execute(&mut tx, "SAVEPOINT delivery").await?;
            }
            let (outcome, returned) = self.deliver(company, delivery, tx, &mut plugins).await;
            tx = returned;
            match outcome {
                Ok((origin, records)) => {
                    if careful {
                        execute(&mut tx, "RELEASE SAVEPOINT delivery").await?;
                    }
                    audit_records.extend(records.into_iter().map(|r| (origin.clone(), r)));
                    delivered.push(delivery);
                    round.delivered += 1;
                }
                Err(_) if !careful => {
                    tx.rollback().await?;
                    return Ok(None);
                }
                Err(error) => {
                    execute(&mut tx, "ROLLBACK TO SAVEPOINT delivery").await?;
                    execute(&mut tx, "RELEASE SAVEPOINT delivery").await?;
                    let message = error.to_string();
                    if mark_failed(&mut tx, policy, delivery, &message).await? {
                        tracing::warn!(
                            event = delivery.event_id,
                            plugin = %delivery.subscriber,
                            error = %message,
                            "an event was dead-lettered after its last attempt"
                        );
                        round.dead += 1;
                    } else {
                        round.retried += 1;
                    }
                }
            }
        }
        mark_delivered(&mut tx, &delivered).await?;
        let records: Vec<(&Origin, Event)> = audit_records
            .iter()
            .map(|(origin, record)| (origin, record.clone()))
            .collect();
        audit::append_many(&mut tx, &records).await?;
        tx.commit().await?;
        metrics::counter!("keel_events_delivered_total").increment(u64::from(round.delivered));
        metrics::counter!("keel_events_failed_total")
            .increment(u64::from(round.retried + round.dead));
        Ok(Some(round))
    }

    /// Calls the subscriber's `on-event` inside `tx`, handing the transaction back with the
    /// audit records of the handler's writes (to append with the round's).
    async fn deliver(
        &self,
        company: &Company,
        delivery: &Claimed,
        mut tx: Tx,
        plugins: &mut HashMap<(i64, String), Subscriber>,
    ) -> (Result<(Origin, Vec<Event>)>, Tx) {
        let key = (company.id, delivery.subscriber.clone());
        if !plugins.contains_key(&key) {
            let loaded = async {
                let row =
                    super::registry::plugin_row(&mut tx, company, &delivery.subscriber).await?;
                let pre = self.prepared(&row.component_hash).await?;
                Ok::<_, Error>((row, pre))
            }
            .await;
            match loaded {
                Ok(subscriber) => {
                    plugins.insert(key.clone(), subscriber);
                }
                Err(error) => return (Err(error), tx),
            }
        }
        let (row, pre) = &plugins[&key];
        let event = WitEvent {
            id: delivery.event_id,
            topic: delivery.topic.clone(),
            subject: delivery.subject.clone(),
            payload: delivery.payload.clone(),
            source: delivery.source.clone(),
            attempt: delivery.attempts + 1,
        };
        let mut context = self.context(company, row, None, &Origin::system(), false);
        context.defer_audit = true;
        let finished = self
            .run(
                pre,
                context,
                Some(tx),
                async |plugin, store| plugin.call_on_event(store, &event).await,
                Result::is_err,
            )
            .await;
        let mut state = finished.state;
        let tx = state
            .tx
            .take()
            .expect("a delivery runs in the dispatcher's transaction");
        let outcome = match finished.result {
            Ok(Ok(())) => Ok((
                state.context.origin.clone(),
                std::mem::take(&mut state.pending_audit),
            )),
            Ok(Err(error)) => Err(call::from_wit(&delivery.subscriber, error)),
            Err(error) => Err(error),
        };
        (outcome, tx)
    }

    /// Delivers events until none is due: for tests and the CLI.
    pub async fn dispatch_all(&self) -> Result<Round> {
        let mut total = Round::default();
        loop {
            let round = self.dispatch_round().await?;
            if round.claimed() == 0 {
                return Ok(total);
            }
            total.delivered += round.delivered;
            total.retried += round.retried;
            total.dead += round.dead;
        }
    }

    /// Runs the dispatcher until the runtime is dropped: a round whenever events are due,
    /// a short wait when none is.
    pub fn spawn_dispatcher(self: &Arc<Self>) -> tokio::task::JoinHandle<()> {
        let runtime = Arc::downgrade(self);
        tokio::spawn(async move {
            loop {
                let Some(live) = runtime.upgrade() else {
                    return;
                };
                let idle_wait = live.dispatch_policy().idle_wait;
                let busy = match live.dispatch_round().await {
                    Ok(round) => round.claimed() > 0,
                    Err(error) => {
                        tracing::error!(%error, "delivering events failed; will retry");
                        false
                    }
                };
                drop(live);
                if !busy {
                    tokio::time::sleep(idle_wait).await;
                }
            }
        })
    }

    pub async fn dead_letters(
        &self,
        company: &Company,
        filter: &DeadLetterFilter,
    ) -> Result<Vec<DeadLetter>> {
        self.db
            .read(async |tx: &mut Tx| {
                let letters = on_conn!(tx, conn => {
                    sqlx::query(
                        "SELECT d.event_id, d.subscriber, d.attempts, d.last_error, d.updated_at, \
                           e.topic, e.subject, e.payload, e.source, e.published_at \
                         FROM event_deliveries d JOIN events e ON e.id = d.event_id \
                         WHERE d.company_id = $1 AND d.status = 'dead' \
                           AND ($2 IS NULL OR d.subscriber = $2) AND ($3 IS NULL OR d.event_id = $3) \
                         ORDER BY d.event_id, d.subscriber LIMIT $4",
                    )
                    .bind(company.id)
                    .bind(filter.plugin.as_deref())
                    .bind(filter.event)
                    .bind(DEAD_LETTERS_PAGE_MAX)
                    .fetch_all(&mut *conn)
                    .await?
                    .iter()
                    .map(|row| {
                        let payload: String = row.try_get(7)?;
                        Ok(DeadLetter {
                            subscriber: row.try_get(1)?,
                            attempts: u32::try_from(row.try_get::<i32, _>(2)?).unwrap_or(0),
                            last_error: row.try_get(3)?,
                            failed_at: row.try_get(4)?,
                            event: EventView {
                                id: row.try_get(0)?,
                                topic: row.try_get(5)?,
                                subject: row.try_get(6)?,
                                payload: serde_json::from_str(&payload)
                                    .unwrap_or(serde_json::Value::String(payload)),
                                source: row.try_get(8)?,
                                published_at: row.try_get(9)?,
                            },
                        })
                    })
                    .collect::<Result<Vec<_>, sqlx::Error>>()?
                });
                Ok(letters)
            })
            .await
    }

    /// Puts dead letters back in line for a fresh round of attempts. Returns how many.
    pub async fn replay_dead_letters(
        &self,
        company: &Company,
        filter: &DeadLetterFilter,
        origin: &Origin,
    ) -> Result<u64> {
        let mut tx = self.db.begin_write().await?;
        let replayed = on_conn!(&mut tx, conn => {
            sqlx::query(
                "UPDATE event_deliveries SET status = 'pending', attempts = 0, \
                 next_attempt_ms = $1, updated_at = $2 \
                 WHERE company_id = $3 AND status = 'dead' \
                   AND ($4 IS NULL OR subscriber = $4) AND ($5 IS NULL OR event_id = $5)",
            )
            .bind(now_ms())
            .bind(Utc::now())
            .bind(company.id)
            .bind(filter.plugin.as_deref())
            .bind(filter.event)
            .execute(&mut *conn)
            .await?
            .rows_affected()
        });
        if replayed == 0 {
            return Err(Error::NotFound(
                "no dead letter matches; list them with GET /api/v1/events/dead-letters".to_owned(),
            ));
        }
        let event = Event::new(
            Some(company.id),
            "events:replay",
            "dead-letters",
            filter.plugin.as_deref().unwrap_or("*"),
            json!({ "plugin": filter.plugin, "event": filter.event, "replayed": replayed }),
        );
        audit::append(&mut tx, origin, &[event]).await?;
        tx.commit().await?;
        Ok(replayed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_up_to_the_cap() {
        let policy = DEFAULT_POLICY;
        assert_eq!(backoff_ms(&policy, 1), 1_000);
        assert_eq!(backoff_ms(&policy, 2), 2_000);
        assert_eq!(backoff_ms(&policy, 4), 8_000);
        assert_eq!(backoff_ms(&policy, 20), policy.backoff_max_ms);
    }
}
