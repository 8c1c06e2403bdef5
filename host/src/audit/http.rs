//! HTTP routes of the audit trail: read by auditors and admins only.

use axum::Json;
use axum::extract::State;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::{Filter, Record};
use crate::api::AppState;
use crate::api::auth::{Authorized, need};
use crate::api::extract::Params;
use crate::api::problem::Problem;
use crate::error::Result;

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(list_audit))
        .routes(routes!(verify_audit))
}

/// A page of audit records.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
struct AuditPage {
    records: Vec<Record>,
    /// Cursor for the next page (`?after=`), absent on the last page.
    #[serde(skip_serializing_if = "Option::is_none")]
    next: Option<i64>,
}

/// The audit trail of the company, oldest first, filtered by object, actor, action and time.
#[utoipa::path(get, path = "/audit", tag = "audit", params(Filter),
    responses((status = 200, body = AuditPage), (status = 401, body = Problem), (status = 403, body = Problem)))]
async fn list_audit(
    State(state): State<AppState>,
    auth: Authorized<need::AuditRead>,
    Params(filter): Params<Filter>,
) -> Result<Json<AuditPage>> {
    let limit = i64::try_from(crate::api::page_size(filter.limit)?).map_err(anyhow::Error::from)?;
    let records = super::list(&state.db, auth.company.id, &filter, limit).await?;
    let next = (records.len() as i64 == limit)
        .then(|| records.last().map(|r| r.seq))
        .flatten();
    Ok(Json(AuditPage { records, next }))
}

/// The result of checking the chain.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
struct AuditVerification {
    records: u64,
    intact: bool,
    /// The first record that does not verify.
    first_broken_seq: Option<i64>,
    reason: Option<String>,
}

/// Recompute the whole hash chain and report the first broken record, as `keel audit verify` does.
#[utoipa::path(get, path = "/audit/verification", tag = "audit",
    responses((status = 200, body = AuditVerification), (status = 401, body = Problem), (status = 403, body = Problem)))]
async fn verify_audit(
    State(state): State<AppState>,
    _auth: Authorized<need::AuditRead>,
) -> Result<Json<AuditVerification>> {
    let verification = super::verify(&state.db).await?;
    Ok(Json(AuditVerification {
        records: verification.records,
        intact: verification.first_broken.is_none(),
        first_broken_seq: verification.first_broken.as_ref().map(|b| b.seq),
        reason: verification.first_broken.map(|b| b.reason),
    }))
}
