//! HTTP routes of authorization: roles, grants and segregation-of-duties rules of the company.

use axum::Json;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::{DutyRule, NewDutyRule, RoleDefinition, RoleView};
use crate::api::auth::{Authorized, need};
use crate::api::extract::{Body, IdempotencyKey};
use crate::api::problem::Problem;
use crate::api::{AppState, stored, write_once};
use crate::error::{Error, Result};

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(list_roles, create_role))
        .routes(routes!(get_role, replace_role, delete_role))
        .routes(routes!(user_roles, grant_role))
        .routes(routes!(revoke_role))
        .routes(routes!(list_duty_rules, create_duty_rule))
        .routes(routes!(update_duty_rule))
}

/// Policy changes take effect in this process at once (other processes within their poll).
async fn reload(state: &AppState) -> Result<()> {
    state.authz.reload().await.map_err(Error::Unexpected)
}

/// The roles of the company: the built-in ones and its custom roles.
#[utoipa::path(get, path = "/roles", tag = "authz", responses((status = 200, body = [RoleView]), (status = 401, body = Problem), (status = 403, body = Problem)))]
async fn list_roles(
    State(state): State<AppState>,
    auth: Authorized<need::RolesRead>,
) -> Result<Json<Vec<RoleView>>> {
    Ok(Json(state.authz.roles(auth.company.id).await?))
}

/// Create a custom role. Nobody can create a role with permissions they do not hold.
#[utoipa::path(post, path = "/roles", tag = "authz", request_body = RoleDefinition,
    responses((status = 201, body = RoleView), (status = 401, body = Problem), (status = 403, body = Problem), (status = 409, body = Problem), (status = 422, body = Problem)))]
async fn create_role(
    State(state): State<AppState>,
    auth: Authorized<need::RolesWrite>,
    key: IdempotencyKey,
    Body(definition): Body<RoleDefinition>,
) -> Result<Response> {
    let response = write_once(&state, &auth, key, "POST /roles", &definition, async |tx| {
        stored(
            201,
            &state
                .authz
                .create_role(
                    tx,
                    auth.company.id,
                    Some(auth.principal.user_id),
                    &definition,
                    &auth.origin,
                )
                .await?,
        )
    })
    .await?;
    reload(&state).await?;
    Ok(response.into_response())
}

/// One role of the company with its permissions.
#[utoipa::path(get, path = "/roles/{name}", tag = "authz", params(("name" = String, Path)),
    responses((status = 200, body = RoleView), (status = 401, body = Problem), (status = 403, body = Problem), (status = 404, body = Problem)))]
async fn get_role(
    State(state): State<AppState>,
    auth: Authorized<need::RolesRead>,
    Path(name): Path<String>,
) -> Result<Json<RoleView>> {
    state
        .authz
        .roles(auth.company.id)
        .await?
        .into_iter()
        .find(|role| role.name == name)
        .map(Json)
        .ok_or_else(|| Error::NotFound(format!("there is no role {name:?} in this company")))
}

/// Replace a custom role's description and permissions.
#[utoipa::path(put, path = "/roles/{name}", tag = "authz", params(("name" = String, Path)), request_body = RoleDefinition,
    responses((status = 200, body = RoleView), (status = 401, body = Problem), (status = 403, body = Problem), (status = 409, body = Problem), (status = 422, body = Problem)))]
async fn replace_role(
    State(state): State<AppState>,
    auth: Authorized<need::RolesWrite>,
    Path(name): Path<String>,
    key: IdempotencyKey,
    Body(definition): Body<RoleDefinition>,
) -> Result<Response> {
    let response = write_once(
        &state,
        &auth,
        key,
        &format!("PUT /roles/{name}"),
        &definition,
        async |tx| {
            stored(
                200,
                &state
                    .authz
                    .replace_role(
                        tx,
                        auth.company.id,
                        auth.principal.user_id,
                        &name,
                        &definition,
                        &auth.origin,
                    )
                    .await?,
            )
        },
    )
    .await?;
    reload(&state).await?;
    Ok(response.into_response())
}

/// Delete a custom role nobody holds.
#[utoipa::path(delete, path = "/roles/{name}", tag = "authz", params(("name" = String, Path)),
    responses((status = 204), (status = 401, body = Problem), (status = 403, body = Problem), (status = 409, body = Problem)))]
async fn delete_role(
    State(state): State<AppState>,
    auth: Authorized<need::RolesWrite>,
    Path(name): Path<String>,
) -> Result<StatusCode> {
    let mut tx = state.db.begin_write().await?;
    state
        .authz
        .delete_role(&mut tx, auth.company.id, &name, &auth.origin)
        .await?;
    tx.commit().await?;
    reload(&state).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// A role to grant.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
struct RoleGrant {
    #[schema(example = "accountant")]
    role: String,
}

/// The user's roles in the company.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
struct UserRoles {
    user: i64,
    roles: Vec<String>,
}

/// The roles a user holds in the company.
#[utoipa::path(get, path = "/users/{id}/roles", tag = "authz", params(("id" = i64, Path)),
    responses((status = 200, body = UserRoles), (status = 401, body = Problem), (status = 403, body = Problem)))]
async fn user_roles(
    State(state): State<AppState>,
    auth: Authorized<need::RolesRead>,
    Path(id): Path<i64>,
) -> Result<Json<UserRoles>> {
    state.identity.user(id).await?;
    Ok(Json(UserRoles {
        user: id,
        roles: state.authz.roles_of(id, auth.company.id).await?,
    }))
}

/// Grant a role to a user in the company. Nobody can grant a role with permissions they do not
/// hold themselves.
#[utoipa::path(post, path = "/users/{id}/roles", tag = "authz", params(("id" = i64, Path)), request_body = RoleGrant,
    responses((status = 200, body = UserRoles), (status = 401, body = Problem), (status = 403, body = Problem), (status = 404, body = Problem), (status = 409, body = Problem)))]
async fn grant_role(
    State(state): State<AppState>,
    auth: Authorized<need::RolesWrite>,
    Path(id): Path<i64>,
    key: IdempotencyKey,
    Body(grant): Body<RoleGrant>,
) -> Result<Response> {
    state.identity.user(id).await?;
    let response = write_once(
        &state,
        &auth,
        key,
        &format!("POST /users/{id}/roles"),
        &grant,
        async |tx| {
            state
                .authz
                .grant(
                    tx,
                    auth.company.id,
                    id,
                    &grant.role,
                    Some(auth.principal.user_id),
                    &auth.origin,
                )
                .await?;
            stored(
                200,
                &serde_json::json!({ "user": id, "granted": grant.role }),
            )
        },
    )
    .await?;
    reload(&state).await?;
    Ok(response.into_response())
}

/// Revoke a role from a user in the company. The last admin cannot be revoked.
#[utoipa::path(delete, path = "/users/{id}/roles/{role}", tag = "authz", params(("id" = i64, Path), ("role" = String, Path)),
    responses((status = 204), (status = 401, body = Problem), (status = 403, body = Problem), (status = 404, body = Problem), (status = 409, body = Problem)))]
async fn revoke_role(
    State(state): State<AppState>,
    auth: Authorized<need::RolesWrite>,
    Path((id, role)): Path<(i64, String)>,
) -> Result<StatusCode> {
    let mut tx = state.db.begin_write().await?;
    state
        .authz
        .revoke(&mut tx, auth.company.id, id, &role, &auth.origin)
        .await?;
    tx.commit().await?;
    reload(&state).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// The company's segregation-of-duties rules.
#[utoipa::path(get, path = "/duty-rules", tag = "authz", responses((status = 200, body = [DutyRule]), (status = 401, body = Problem), (status = 403, body = Problem)))]
async fn list_duty_rules(
    State(state): State<AppState>,
    auth: Authorized<need::RolesRead>,
) -> Result<Json<Vec<DutyRule>>> {
    Ok(Json(state.authz.duty_rules(auth.company.id).await?))
}

/// Add a segregation-of-duties rule.
#[utoipa::path(post, path = "/duty-rules", tag = "authz", request_body = NewDutyRule,
    responses((status = 201, body = DutyRule), (status = 401, body = Problem), (status = 403, body = Problem), (status = 409, body = Problem), (status = 422, body = Problem)))]
async fn create_duty_rule(
    State(state): State<AppState>,
    auth: Authorized<need::RolesWrite>,
    key: IdempotencyKey,
    Body(new): Body<NewDutyRule>,
) -> Result<Response> {
    let response = write_once(&state, &auth, key, "POST /duty-rules", &new, async |tx| {
        stored(
            201,
            &state
                .authz
                .create_duty_rule(tx, auth.company.id, &new, &auth.origin)
                .await?,
        )
    })
    .await?;
    reload(&state).await?;
    Ok(response.into_response())
}

/// Enable or disable a rule.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
struct DutyRuleChange {
    enabled: bool,
}

/// Enable or disable a segregation-of-duties rule.
#[utoipa::path(patch, path = "/duty-rules/{id}", tag = "authz", params(("id" = i64, Path)), request_body = DutyRuleChange,
    responses((status = 200, body = DutyRule), (status = 401, body = Problem), (status = 403, body = Problem), (status = 404, body = Problem)))]
async fn update_duty_rule(
    State(state): State<AppState>,
    auth: Authorized<need::RolesWrite>,
    Path(id): Path<i64>,
    key: IdempotencyKey,
    Body(change): Body<DutyRuleChange>,
) -> Result<Response> {
    let response = write_once(
        &state,
        &auth,
        key,
        &format!("PATCH /duty-rules/{id}"),
        &change,
        async |tx| {
            stored(
                200,
                &state
                    .authz
                    .set_duty_rule_enabled(tx, auth.company.id, id, change.enabled, &auth.origin)
                    .await?,
            )
        },
    )
    .await?;
    reload(&state).await?;
    Ok(response.into_response())
}
