//! The host side of the fabric imports: `events.publish`, `calls.invoke` and `hooks.run`.
//! Calls and hook implementations run nested, inside the caller's transaction and under a
//! savepoint, so a failed one leaves nothing behind while the caller carries on.

use std::time::Duration;

use sqlx::Row as _;

use super::Runtime;
use super::bindings::WitError;
use super::bindings::latest::keel::platform::{calls, events, hooks};
use super::call::{CallContext, CallState, from_anyhow, savepoint, to_wit};
use super::capability::Capability;
use super::declarations::OnFailure;
use super::schema;
use crate::db::Tx;
use crate::error::{Error, FieldError, Result};
use crate::on_conn;

/// How deep plugin calls nest (a call from a plugin that was itself called ...). Deeper
/// calls are refused: that is what stops a cycle.
pub const CALL_DEPTH_MAX: u32 = 8;

impl events::Host for CallState {
    async fn publish(
        &mut self,
        topic: String,
        subject: String,
        payload: String,
    ) -> wasmtime::Result<Result<i64, WitError>> {
        if let Err(denied) = self.enter(Capability::EventsPublish, None)? {
            return Ok(Err(denied));
        }
        let own = format!("{}.", self.context.plugin);
        let checked = crate::events::check_topic(&topic).and_then(|()| {
            if topic.starts_with(&own) {
                Ok(())
            } else {
                Err(Error::invalid(
                    "topic",
                    format!("starts with the plugin's name: \"{own}...\""),
                ))
            }
        });
        if let Err(error) = checked.and_then(|()| {
            serde_json::from_str::<serde_json::Value>(&payload)
                .map(drop)
                .map_err(|e| Error::invalid("payload", format!("is not valid JSON: {e}")))
        }) {
            return Ok(Err(to_wit(error)));
        }
        self.write(async |tx, context| {
            let id = crate::events::publish_json(
                tx,
                context.company.id,
                &topic,
                &subject,
                &payload,
                Some(&context.plugin),
            )
            .await?;
            // Nobody subscribes: the event is not stored, and has no id to report.
            Ok(id.unwrap_or(0))
        })
        .await
    }
}

impl calls::Host for CallState {
    async fn invoke(
        &mut self,
        plugin: String,
        operation: String,
        input: String,
    ) -> wasmtime::Result<Result<String, WitError>> {
        let capability = Capability::Call {
            plugin: plugin.clone(),
            operation: operation.clone(),
        };
        if let Err(denied) = self.enter(capability, None)? {
            return Ok(Err(denied));
        }
        self.nested(&plugin, &operation, &input, None).await
    }
}

impl hooks::Host for CallState {
    async fn run(
        &mut self,
        point: String,
        input: String,
    ) -> wasmtime::Result<Result<String, WitError>> {
        self.count()?;
        let Some(declared) = self.context.declarations.extension_point(&point).cloned() else {
            return Ok(Err(to_wit(Error::invalid(
                "point",
                format!(
                    "plugin {} declares no extension point {point:?} in its manifest",
                    self.context.plugin
                ),
            ))));
        };
        let mut current: serde_json::Value = match serde_json::from_str(&input) {
            Ok(value) => value,
            Err(e) => {
                return Ok(Err(to_wit(Error::invalid(
                    "input",
                    format!("is not valid JSON: {e}"),
                ))));
            }
        };
        let broken = schema::validate(&declared.input_schema, &current);
        if !broken.is_empty() {
            return Ok(Err(to_wit(schema_error("input", broken))));
        }
        let implementations = {
            let company_id = self.context.company.id;
            let tx = self.tx().await?;
            implementations(tx, company_id, &point)
                .await
                .map_err(|e| from_anyhow(e.into()))?
        };
        let budget = Duration::from_millis(u64::from(declared.budget_ms));
        for (plugin, operation) in implementations {
            let outcome = self
                .nested(&plugin, &operation, &current.to_string(), Some(budget))
                .await?
                .map_err(|error| super::call::from_wit(&plugin, error).to_string())
                .and_then(|output| {
                    let output: serde_json::Value = serde_json::from_str(&output)
                        .map_err(|e| format!("returned output that is not JSON: {e}"))?;
                    let broken = schema::validate(&declared.output_schema, &output);
                    if broken.is_empty() {
                        Ok(output)
                    } else {
                        Err(format!(
                            "returned output that breaks the schema of {point}: {}",
                            broken
                                .iter()
                                .map(|(path, message)| format!("{path} {message}"))
                                .collect::<Vec<_>>()
                                .join("; ")
                        ))
                    }
                });
            match outcome {
                Ok(output) => current = output,
                Err(reason) => match declared.on_failure {
                    OnFailure::Fail => {
                        return Ok(Err(WitError::Internal(format!(
                            "the implementation of {point} by plugin {plugin} failed: {reason}"
                        ))));
                    }
                    OnFailure::Skip => {
                        tracing::warn!(%point, %plugin, %reason, "skipped a failing hook implementation");
                    }
                },
            }
        }
        Ok(Ok(current.to_string()))
    }
}

fn schema_error(field: &str, broken: Vec<(String, String)>) -> Error {
    Error::Invalid(
        broken
            .into_iter()
            .map(|(path, message)| {
                let at = if path.is_empty() {
                    field.to_owned()
                } else {
                    format!("{field}.{path}")
                };
                FieldError::new(at, message)
            })
            .collect(),
    )
}

/// The enabled implementations of an extension point, in the order they run.
async fn implementations(
    tx: &mut Tx,
    company_id: i64,
    point: &str,
) -> Result<Vec<(String, String)>> {
    let rows = on_conn!(tx, conn => {
        sqlx::query(
            "SELECT h.plugin, h.operation FROM plugin_hooks h \
             JOIN plugins p ON p.company_id = h.company_id AND p.name = h.plugin \
             WHERE h.company_id = $1 AND h.point = $2 AND p.status = 'enabled' \
             ORDER BY h.position, h.plugin",
        )
        .bind(company_id)
        .bind(point)
        .fetch_all(&mut *conn)
        .await?
        .iter()
        .map(|row| Ok((row.try_get(0)?, row.try_get(1)?)))
        .collect::<Result<Vec<_>, sqlx::Error>>()?
    });
    Ok(rows)
}

impl CallState {
    /// Calls `operation` of `plugin` nested in this call: same transaction (under a
    /// savepoint), same acting user, the callee's own grants, one level deeper.
    async fn nested(
        &mut self,
        plugin: &str,
        operation: &str,
        input: &str,
        wall_time: Option<Duration>,
    ) -> wasmtime::Result<Result<String, WitError>> {
        if self.context.depth + 1 >= CALL_DEPTH_MAX {
            return Ok(Err(WitError::LimitExceeded(format!(
                "plugin calls nest at most {CALL_DEPTH_MAX} deep; {} calling {plugin} goes \
                 deeper (a cycle of calls?)",
                self.context.plugin
            ))));
        }
        let Some(runtime) = self.services.runtime.upgrade() else {
            return Err(wasmtime::Error::msg("the plugin runtime is shutting down"));
        };
        savepoint(self.tx().await?, "SAVEPOINT nested_call").await?;
        let tx = self.tx.take().expect("begun above");
        let (result, tx) = runtime
            .call_nested(&self.context, plugin, operation, input, tx, wall_time)
            .await;
        self.tx = Some(tx);
        let tx = self.tx.as_mut().expect("just put back");
        if result.is_err() {
            savepoint(tx, "ROLLBACK TO SAVEPOINT nested_call").await?;
        }
        savepoint(tx, "RELEASE SAVEPOINT nested_call").await?;
        Ok(result)
    }
}

impl Runtime {
    /// Runs `operation` of the enabled plugin `name` for a calling plugin, in `tx`, and hands
    /// the transaction back.
    async fn call_nested(
        &self,
        caller: &CallContext,
        name: &str,
        operation: &str,
        input: &str,
        mut tx: Tx,
        wall_time: Option<Duration>,
    ) -> (Result<String, WitError>, Tx) {
        let row = match super::registry::plugin_row(&mut tx, &caller.company, name).await {
            Ok(row) if row.status == super::registry::Status::Enabled => row,
            Ok(_) | Err(Error::NotFound(_)) => {
                let error = WitError::NotFound(format!("no enabled plugin {name:?} to call"));
                return (Err(error), tx);
            }
            Err(error) => return (Err(to_wit(error)), tx),
        };
        if !row.declarations.operations.iter().any(|o| o == operation) {
            let error = WitError::NotFound(format!(
                "plugin {name} does not offer the operation {operation:?} (see its manifest's operations)"
            ));
            return (Err(error), tx);
        }
        let pre = match self.prepared(&row.component_hash).await {
            Ok(pre) => pre,
            Err(error) => return (Err(to_wit(error)), tx),
        };
        let mut context = self.context(
            &caller.company,
            &row,
            caller.user,
            &caller.origin,
            caller.read_only,
        );
        context.depth = caller.depth + 1;
        if let Some(wall_time) = wall_time {
            let budget_ms = u64::try_from(wall_time.as_millis()).unwrap_or(u64::MAX);
            context.limits.wall_time_ms = context.limits.wall_time_ms.min(budget_ms);
        }
        let limits = context.limits;
        let finished = self
            .run(
                &pre,
                context,
                Some(tx),
                async |plugin, store| {
                    let output = plugin.call_invoke(&mut *store, operation, input).await?;
                    if let Ok(output) = &output {
                        super::registry::check_output(store, output.len(), limits)?;
                    }
                    Ok(output)
                },
                Result::is_err,
            )
            .await;
        let tx = finished
            .state
            .tx
            .expect("a nested call runs in its caller's transaction");
        let result = match finished.result {
            Ok(answer) => answer,
            Err(error) => Err(to_wit(error)),
        };
        (result, tx)
    }
}
