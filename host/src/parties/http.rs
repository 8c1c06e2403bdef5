//! HTTP routes of the customer master, mounted at `/api/v1/parties`.

use axum::Json;
use axum::extract::{Path, State};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use utoipa::IntoParams;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::fields::{FieldChanges, FieldDefinition, NewFieldDefinition};
use super::model::{NewParty, PartyChanges, PartyView, parse_date_param};
use super::privacy::PersonalData;
use super::search::{PartyPage, PartyQuery};
use super::transfer::{ImportOptions, ImportReport, xlsx_to_csv};

/// The content type of an XLSX upload.
const XLSX_CONTENT_TYPE: &str = "application/vnd.openxmlformats-officedocument.spreadsheetml.sheet";
use super::{DuplicateCandidate, MergeInput, MergeResult, PartyBalance, Viewer};
use crate::api::auth::{Authorized, need};
use crate::api::extract::{Body, IdempotencyKey, Params, request_key};
use crate::api::problem::Problem;
use crate::api::{AppState, page_size};
use crate::error::{Error, Result};

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(list_parties, create_party))
        .routes(routes!(import_parties))
        .routes(routes!(list_fields, create_field))
        .routes(routes!(update_field, delete_field))
        .routes(routes!(get_party, update_party))
        .routes(routes!(merge_party))
        .routes(routes!(party_duplicates))
        .routes(routes!(party_balance))
        .routes(routes!(personal_data))
        .routes(routes!(anonymize_party))
}

async fn viewer_of<P>(state: &AppState, auth: &Authorized<P>) -> Result<Viewer> {
    state
        .parties
        .viewer(auth.principal.user_id, auth.scope)
        .await
}

/// Search and list parties, in name order, one page at a time; `format=csv` exports every
/// match as CSV.
#[utoipa::path(get, path = "", tag = "parties", params(PartyQuery),
    responses((status = 200, body = PartyPage), (status = 400, body = Problem), (status = 422, body = Problem)))]
async fn list_parties(
    State(state): State<AppState>,
    auth: Authorized<need::PartiesRead>,
    Params(query): Params<PartyQuery>,
) -> Result<Response> {
    let viewer = viewer_of(&state, &auth).await?;
    match query.format.as_deref() {
        None | Some("json") => {
            let limit = page_size(query.limit)?;
            let page = state
                .parties
                .read(async |tx| {
                    super::search::page(tx, &auth.company, &viewer, &query, limit).await
                })
                .await?;
            Ok(Json(page).into_response())
        }
        Some("csv") => {
            let csv =
                super::transfer::export_csv(&state.parties, &auth.company, &viewer, &query).await?;
            Ok(crate::api::csv_response("parties.csv", csv))
        }
        Some(other) => Err(Error::invalid(
            "format",
            format!("{other:?} is not a format: use json or csv"),
        )),
    }
}

/// Create a party. When it shares a tax id, email or phone with an existing party, or its name
/// is very similar, the answer is 409 with the candidates, unless `allow_duplicate` is true.
#[utoipa::path(post, path = "", tag = "parties", request_body = NewParty,
    params(("Idempotency-Key" = Option<String>, Header, description = "Makes the write exactly-once")),
    responses((status = 201, body = PartyView), (status = 403, body = Problem), (status = 409, body = Problem), (status = 422, body = Problem)))]
async fn create_party(
    State(state): State<AppState>,
    auth: Authorized<need::PartiesWrite>,
    key: IdempotencyKey,
    Body(new): Body<NewParty>,
) -> Result<Response> {
    let viewer = viewer_of(&state, &auth).await?;
    let key = request_key(&auth, key, "POST /parties", &new);
    Ok(state
        .parties
        .create(&auth.company, &viewer, &new, key.as_ref(), &auth.origin)
        .await?
        .into_response())
}

/// One party.
#[utoipa::path(get, path = "/{id}", tag = "parties", params(("id" = i64, Path)),
    responses((status = 200, body = PartyView), (status = 404, body = Problem)))]
async fn get_party(
    State(state): State<AppState>,
    auth: Authorized<need::PartiesRead>,
    Path(id): Path<i64>,
) -> Result<Json<PartyView>> {
    let viewer = viewer_of(&state, &auth).await?;
    Ok(Json(state.parties.get(&auth.company, &viewer, id).await?))
}

/// Change a party: fields present replace the current values.
#[utoipa::path(patch, path = "/{id}", tag = "parties", params(("id" = i64, Path),
        ("Idempotency-Key" = Option<String>, Header, description = "Makes the write exactly-once")),
    request_body = PartyChanges,
    responses((status = 200, body = PartyView), (status = 404, body = Problem), (status = 409, body = Problem), (status = 422, body = Problem)))]
async fn update_party(
    State(state): State<AppState>,
    auth: Authorized<need::PartiesWrite>,
    Path(id): Path<i64>,
    key: IdempotencyKey,
    Body(changes): Body<PartyChanges>,
) -> Result<Response> {
    let viewer = viewer_of(&state, &auth).await?;
    let key = request_key(&auth, key, &format!("PATCH /parties/{id}"), &changes);
    Ok(state
        .parties
        .update(
            &auth.company,
            &viewer,
            id,
            &changes,
            key.as_ref(),
            &auth.origin,
        )
        .await?
        .into_response())
}

/// Merge this party into another: the survivor gains its contact data, relationships and
/// custom-field references move to the survivor, and this one stays as `merged`. Ledger lines
/// keep the party they were posted with; balances and reads by party include merged parties.
#[utoipa::path(post, path = "/{id}/merge", tag = "parties", params(("id" = i64, Path),
        ("Idempotency-Key" = Option<String>, Header, description = "Makes the write exactly-once")),
    request_body = MergeInput,
    responses((status = 200, body = MergeResult), (status = 404, body = Problem), (status = 409, body = Problem), (status = 422, body = Problem)))]
async fn merge_party(
    State(state): State<AppState>,
    auth: Authorized<need::PartiesMerge>,
    Path(id): Path<i64>,
    key: IdempotencyKey,
    Body(input): Body<MergeInput>,
) -> Result<Response> {
    let viewer = viewer_of(&state, &auth).await?;
    let key = request_key(&auth, key, &format!("POST /parties/{id}/merge"), &input);
    Ok(state
        .parties
        .merge(
            &auth.company,
            &viewer,
            id,
            input.into,
            key.as_ref(),
            &auth.origin,
        )
        .await?
        .into_response())
}

/// Parties that look like this one: shared tax id, email or phone, or a very similar name.
#[utoipa::path(get, path = "/{id}/duplicates", tag = "parties", params(("id" = i64, Path)),
    responses((status = 200, body = [DuplicateCandidate]), (status = 404, body = Problem)))]
async fn party_duplicates(
    State(state): State<AppState>,
    auth: Authorized<need::PartiesRead>,
    Path(id): Path<i64>,
) -> Result<Json<Vec<DuplicateCandidate>>> {
    let viewer = viewer_of(&state, &auth).await?;
    Ok(Json(
        state
            .parties
            .duplicates_of(&auth.company, &viewer, id)
            .await?,
    ))
}

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
struct BalanceQuery {
    /// `YYYY-MM-DD`; everything posted when absent.
    as_of: Option<String>,
}

/// The party's receivable and payable balance from the ledger, with its credit limit.
#[utoipa::path(get, path = "/{id}/balance", tag = "parties", params(("id" = i64, Path), BalanceQuery),
    responses((status = 200, body = PartyBalance), (status = 404, body = Problem)))]
async fn party_balance(
    State(state): State<AppState>,
    auth: Authorized<need::PartiesRead>,
    Path(id): Path<i64>,
    Params(query): Params<BalanceQuery>,
) -> Result<Json<PartyBalance>> {
    let as_of = parse_date_param("as_of", query.as_of.as_deref())?;
    let viewer = viewer_of(&state, &auth).await?;
    Ok(Json(
        state
            .parties
            .balance(&auth.company, &viewer, id, as_of)
            .await?,
    ))
}

/// Import parties from CSV (the columns of the CSV export): a row whose external id is known
/// updates that party, others create one. `dry_run` checks and reports without writing;
/// `all_or_nothing` writes nothing when a row is bad; otherwise the good rows are written and the
/// bad ones reported by line number.
#[utoipa::path(post, path = "/import", tag = "parties", params(ImportOptions),
    request_body(content = String, description = "CSV text (text/csv), or an XLSX workbook (application/vnd.openxmlformats-officedocument.spreadsheetml.sheet) whose first sheet has the same columns"),
    responses((status = 200, body = ImportReport), (status = 422, body = Problem)))]
async fn import_parties(
    State(state): State<AppState>,
    auth: Authorized<need::PartiesImport>,
    Params(options): Params<ImportOptions>,
    headers: axum::http::HeaderMap,
    body: axum::body::Bytes,
) -> Result<Json<ImportReport>> {
    let is_xlsx = headers
        .get(axum::http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|t| t.starts_with(XLSX_CONTENT_TYPE));
    let converted;
    let text = if is_xlsx {
        converted = xlsx_to_csv(&body)?;
        converted.as_str()
    } else {
        std::str::from_utf8(&body)
            .map_err(|_| Error::invalid("file", "is not UTF-8 text; save the CSV as UTF-8"))?
    };
    let viewer = viewer_of(&state, &auth).await?;
    Ok(Json(
        state
            .parties
            .import_csv(
                &auth.company,
                &viewer,
                text,
                &options,
                &auth.origin,
                &|_, _| {},
            )
            .await?,
    ))
}

/// The custom fields declared for parties.
#[utoipa::path(get, path = "/fields", tag = "parties",
    responses((status = 200, body = [FieldDefinition])))]
async fn list_fields(
    State(state): State<AppState>,
    auth: Authorized<need::PartiesRead>,
) -> Result<Json<Vec<FieldDefinition>>> {
    Ok(Json(state.parties.fields(&auth.company).await?))
}

/// Declare a custom field for parties.
#[utoipa::path(post, path = "/fields", tag = "parties", request_body = NewFieldDefinition,
    params(("Idempotency-Key" = Option<String>, Header, description = "Makes the write exactly-once")),
    responses((status = 201, body = FieldDefinition), (status = 409, body = Problem), (status = 422, body = Problem)))]
async fn create_field(
    State(state): State<AppState>,
    auth: Authorized<need::PartyFieldsWrite>,
    key: IdempotencyKey,
    Body(new): Body<NewFieldDefinition>,
) -> Result<Response> {
    let key = request_key(&auth, key, "POST /parties/fields", &new);
    Ok(state
        .parties
        .create_field(&auth.company, &new, key.as_ref(), &auth.origin)
        .await?
        .into_response())
}

/// Change a custom field's label, whether it is required, or an enum's options.
#[utoipa::path(patch, path = "/fields/{name}", tag = "parties", params(("name" = String, Path),
        ("Idempotency-Key" = Option<String>, Header, description = "Makes the write exactly-once")),
    request_body = FieldChanges,
    responses((status = 200, body = FieldDefinition), (status = 404, body = Problem), (status = 409, body = Problem), (status = 422, body = Problem)))]
async fn update_field(
    State(state): State<AppState>,
    auth: Authorized<need::PartyFieldsWrite>,
    Path(name): Path<String>,
    key: IdempotencyKey,
    Body(changes): Body<FieldChanges>,
) -> Result<Response> {
    let key = request_key(
        &auth,
        key,
        &format!("PATCH /parties/fields/{name}"),
        &changes,
    );
    Ok(state
        .parties
        .update_field(&auth.company, &name, &changes, key.as_ref(), &auth.origin)
        .await?
        .into_response())
}

/// Remove a custom field that no party holds a value of.
#[utoipa::path(delete, path = "/fields/{name}", tag = "parties", params(("name" = String, Path),
        ("Idempotency-Key" = Option<String>, Header, description = "Makes the write exactly-once")),
    responses((status = 200, body = FieldDefinition), (status = 404, body = Problem), (status = 409, body = Problem)))]
async fn delete_field(
    State(state): State<AppState>,
    auth: Authorized<need::PartyFieldsWrite>,
    Path(name): Path<String>,
    key: IdempotencyKey,
) -> Result<Response> {
    let key = request_key(&auth, key, &format!("DELETE /parties/fields/{name}"), &());
    Ok(state
        .parties
        .delete_field(&auth.company, &name, key.as_ref(), &auth.origin)
        .await?
        .into_response())
}

/// Everything Keel holds about a party: its record, who refers to it, its ledger lines and the
/// audit records about it (for a data subject's access request).
#[utoipa::path(get, path = "/{id}/personal-data", tag = "parties", params(("id" = i64, Path)),
    responses((status = 200, body = PersonalData), (status = 404, body = Problem)))]
async fn personal_data(
    State(state): State<AppState>,
    auth: Authorized<need::PartiesErase>,
    Path(id): Path<i64>,
) -> Result<Json<PersonalData>> {
    let viewer = viewer_of(&state, &auth).await?;
    Ok(Json(
        state
            .parties
            .personal_data(&auth.company, &viewer, id)
            .await?,
    ))
}

/// Erase a person's personal data. The party keeps its id, roles and ledger lines, so the
/// books stay intact and balanced; it is archived.
#[utoipa::path(post, path = "/{id}/anonymize", tag = "parties", params(("id" = i64, Path),
        ("Idempotency-Key" = Option<String>, Header, description = "Makes the write exactly-once")),
    responses((status = 200, body = PartyView), (status = 404, body = Problem), (status = 409, body = Problem), (status = 422, body = Problem)))]
async fn anonymize_party(
    State(state): State<AppState>,
    auth: Authorized<need::PartiesErase>,
    Path(id): Path<i64>,
    key: IdempotencyKey,
) -> Result<Response> {
    let viewer = viewer_of(&state, &auth).await?;
    let key = request_key(&auth, key, &format!("POST /parties/{id}/anonymize"), &());
    Ok(state
        .parties
        .anonymize(&auth.company, &viewer, id, key.as_ref(), &auth.origin)
        .await?
        .into_response())
}
