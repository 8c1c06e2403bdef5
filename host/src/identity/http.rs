//! HTTP routes of identity: login and logout, the caller's own account, and user management.

use axum::Json;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::{
    CreatedToken, Credentials, NewToken, NewUser, PasswordChange, Session, TokenView, UserChanges,
    UserStatus, UserView,
};
use crate::api::auth::{Authenticated, Authorized, need};
use crate::api::extract::{Body, ClientAddress, IdempotencyKey};
use crate::api::problem::Problem;
use crate::api::{AppState, stored, write_once};
use crate::error::Result;

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(login))
        .routes(routes!(logout))
        .routes(routes!(me))
        .routes(routes!(change_own_password))
        .routes(routes!(own_tokens, create_own_token))
        .routes(routes!(revoke_own_token))
        .routes(routes!(list_users, create_user))
        .routes(routes!(get_user, update_user))
        .routes(routes!(disable_user))
        .routes(routes!(enable_user))
        .routes(routes!(reset_password))
        .routes(routes!(user_tokens, create_user_token))
        .routes(routes!(revoke_user_token))
}

/// Log in with a username and password; returns a session token valid for 12 hours. Five wrong
/// passwords lock the account for 15 minutes.
#[utoipa::path(post, path = "/auth/login", tag = "identity", request_body = Credentials, security(()),
    responses((status = 200, body = Session), (status = 401, body = Problem), (status = 429, body = Problem)))]
async fn login(
    State(state): State<AppState>,
    ClientAddress(address): ClientAddress,
    Body(credentials): Body<Credentials>,
) -> Result<Json<Session>> {
    let origin = crate::audit::Origin::default();
    let session = state.identity.login(&credentials, address, &origin).await?;
    Ok(Json(session))
}

/// End the session: the token used for this request stops working.
#[utoipa::path(post, path = "/auth/logout", tag = "identity", responses((status = 204), (status = 401, body = Problem)))]
async fn logout(State(state): State<AppState>, auth: Authenticated) -> Result<StatusCode> {
    let mut tx = state.db.begin_write().await?;
    state
        .identity
        .revoke_token(
            &mut tx,
            auth.principal.user_id,
            auth.principal.token_id,
            &auth.origin,
        )
        .await?;
    tx.commit().await?;
    Ok(StatusCode::NO_CONTENT)
}

/// The caller's account and roles in the company.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
struct Me {
    user: UserView,
    company: String,
    roles: Vec<String>,
}

/// Who am I: the caller's account and roles in the company the request names.
#[utoipa::path(get, path = "/me", tag = "identity", responses((status = 200, body = Me), (status = 401, body = Problem)))]
async fn me(
    State(state): State<AppState>,
    auth: Authenticated,
    headers: axum::http::HeaderMap,
) -> Result<Json<Me>> {
    let code = headers
        .get(crate::api::extract::COMPANY_HEADER)
        .and_then(|v| v.to_str().ok());
    let company = state.companies.resolve(code).await?;
    let user = state.identity.user(auth.principal.user_id).await?;
    let roles = state
        .authz
        .roles_of(auth.principal.user_id, company.id)
        .await?;
    Ok(Json(Me {
        user,
        company: company.code,
        roles,
    }))
}

/// Change the caller's own password; the current one is required.
#[utoipa::path(post, path = "/me/password", tag = "identity", request_body = PasswordChange,
    responses((status = 204), (status = 401, body = Problem), (status = 422, body = Problem)))]
async fn change_own_password(
    State(state): State<AppState>,
    auth: Authenticated,
    Body(change): Body<PasswordChange>,
) -> Result<StatusCode> {
    let mut tx = state.db.begin_write().await?;
    state
        .identity
        .set_password(&mut tx, auth.principal.user_id, &change, true, &auth.origin)
        .await?;
    tx.commit().await?;
    Ok(StatusCode::NO_CONTENT)
}

/// The caller's tokens (never the secrets).
#[utoipa::path(get, path = "/me/tokens", tag = "identity", responses((status = 200, body = [TokenView]), (status = 401, body = Problem)))]
async fn own_tokens(
    State(state): State<AppState>,
    auth: Authenticated,
) -> Result<Json<Vec<TokenView>>> {
    Ok(Json(state.identity.tokens(auth.principal.user_id).await?))
}

/// Create an API token for the caller. The token is in this response only; it is stored as a
/// hash and cannot be shown again (so this write is not replayed by an Idempotency-Key).
#[utoipa::path(post, path = "/me/tokens", tag = "identity", request_body = NewToken,
    responses((status = 201, body = CreatedToken), (status = 401, body = Problem), (status = 422, body = Problem)))]
async fn create_own_token(
    State(state): State<AppState>,
    auth: Authenticated,
    Body(new): Body<NewToken>,
) -> Result<Response> {
    let mut tx = state.db.begin_write().await?;
    let created = state
        .identity
        .create_api_token(&mut tx, auth.principal.user_id, &new, &auth.origin)
        .await?;
    tx.commit().await?;
    Ok((StatusCode::CREATED, Json(created)).into_response())
}

/// Revoke one of the caller's tokens.
#[utoipa::path(delete, path = "/me/tokens/{id}", tag = "identity", params(("id" = i64, Path)),
    responses((status = 200, body = TokenView), (status = 401, body = Problem), (status = 404, body = Problem)))]
async fn revoke_own_token(
    State(state): State<AppState>,
    auth: Authenticated,
    Path(id): Path<i64>,
) -> Result<Json<TokenView>> {
    let mut tx = state.db.begin_write().await?;
    let token = state
        .identity
        .revoke_token(&mut tx, auth.principal.user_id, id, &auth.origin)
        .await?;
    tx.commit().await?;
    Ok(Json(token))
}

/// Every user (users are global; their roles are per company).
#[utoipa::path(get, path = "/users", tag = "identity", responses((status = 200, body = [UserView]), (status = 401, body = Problem), (status = 403, body = Problem)))]
async fn list_users(
    State(state): State<AppState>,
    _auth: Authorized<need::UsersRead>,
) -> Result<Json<Vec<UserView>>> {
    Ok(Json(state.identity.users().await?))
}

/// Create a user (a person, or a service account for integrations).
#[utoipa::path(post, path = "/users", tag = "identity", request_body = NewUser,
    responses((status = 201, body = UserView), (status = 401, body = Problem), (status = 403, body = Problem), (status = 409, body = Problem), (status = 422, body = Problem)))]
async fn create_user(
    State(state): State<AppState>,
    auth: Authorized<need::UsersWrite>,
    key: IdempotencyKey,
    Body(new): Body<NewUser>,
) -> Result<Response> {
    // The fingerprint leaves the password out: a hash of it, unsalted, would help guess it.
    let fingerprinted = NewUser {
        password: new.password.as_ref().map(|_| "(set)".to_owned()),
        ..new.clone()
    };
    let response = write_once(
        &state,
        &auth,
        key,
        "POST /users",
        &fingerprinted,
        async |tx| {
            stored(
                201,
                &state.identity.create_user(tx, &new, &auth.origin).await?,
            )
        },
    )
    .await?;
    Ok(response.into_response())
}

/// One user.
#[utoipa::path(get, path = "/users/{id}", tag = "identity", params(("id" = i64, Path)),
    responses((status = 200, body = UserView), (status = 401, body = Problem), (status = 403, body = Problem), (status = 404, body = Problem)))]
async fn get_user(
    State(state): State<AppState>,
    _auth: Authorized<need::UsersRead>,
    Path(id): Path<i64>,
) -> Result<Json<UserView>> {
    Ok(Json(state.identity.user(id).await?))
}

/// Change a user's name, email or manager.
#[utoipa::path(patch, path = "/users/{id}", tag = "identity", params(("id" = i64, Path)), request_body = UserChanges,
    responses((status = 200, body = UserView), (status = 401, body = Problem), (status = 403, body = Problem), (status = 404, body = Problem)))]
async fn update_user(
    State(state): State<AppState>,
    auth: Authorized<need::UsersWrite>,
    Path(id): Path<i64>,
    key: IdempotencyKey,
    Body(changes): Body<UserChanges>,
) -> Result<Response> {
    let response = write_once(
        &state,
        &auth,
        key,
        &format!("PATCH /users/{id}"),
        &changes,
        async |tx| {
            state
                .authz
                .check_can_manage_user(tx, auth.principal.user_id, id)
                .await?;
            stored(
                200,
                &state
                    .identity
                    .update_user(tx, id, &changes, &auth.origin)
                    .await?,
            )
        },
    )
    .await?;
    Ok(response.into_response())
}

async fn set_status(
    state: &AppState,
    auth: &Authorized<need::UsersWrite>,
    key: IdempotencyKey,
    id: i64,
    status: UserStatus,
) -> Result<Response> {
    let operation = format!("POST /users/{id}/{status:?}");
    let response = write_once(state, auth, key, &operation, &(), async |tx| {
        state
            .authz
            .check_can_manage_user(tx, auth.principal.user_id, id)
            .await?;
        stored(
            200,
            &state
                .identity
                .set_status(tx, id, status, &auth.origin)
                .await?,
        )
    })
    .await?;
    Ok(response.into_response())
}

/// Disable a user: their tokens stop working at once; their history stays.
#[utoipa::path(post, path = "/users/{id}/disable", tag = "identity", params(("id" = i64, Path)),
    responses((status = 200, body = UserView), (status = 401, body = Problem), (status = 403, body = Problem), (status = 409, body = Problem)))]
async fn disable_user(
    State(state): State<AppState>,
    auth: Authorized<need::UsersWrite>,
    Path(id): Path<i64>,
    key: IdempotencyKey,
) -> Result<Response> {
    set_status(&state, &auth, key, id, UserStatus::Disabled).await
}

/// Enable a disabled user again.
#[utoipa::path(post, path = "/users/{id}/enable", tag = "identity", params(("id" = i64, Path)),
    responses((status = 200, body = UserView), (status = 401, body = Problem), (status = 403, body = Problem), (status = 409, body = Problem)))]
async fn enable_user(
    State(state): State<AppState>,
    auth: Authorized<need::UsersWrite>,
    Path(id): Path<i64>,
    key: IdempotencyKey,
) -> Result<Response> {
    set_status(&state, &auth, key, id, UserStatus::Active).await
}

/// Reset a user's password (and lift a lockout).
#[utoipa::path(post, path = "/users/{id}/password", tag = "identity", params(("id" = i64, Path)), request_body = PasswordChange,
    responses((status = 204), (status = 401, body = Problem), (status = 403, body = Problem), (status = 422, body = Problem)))]
async fn reset_password(
    State(state): State<AppState>,
    auth: Authorized<need::UsersWrite>,
    Path(id): Path<i64>,
    Body(change): Body<PasswordChange>,
) -> Result<StatusCode> {
    let mut tx = state.db.begin_write().await?;
    state
        .authz
        .check_can_manage_user(&mut tx, auth.principal.user_id, id)
        .await?;
    state
        .identity
        .set_password(&mut tx, id, &change, false, &auth.origin)
        .await?;
    tx.commit().await?;
    Ok(StatusCode::NO_CONTENT)
}

/// A user's tokens (never the secrets).
#[utoipa::path(get, path = "/users/{id}/tokens", tag = "identity", params(("id" = i64, Path)),
    responses((status = 200, body = [TokenView]), (status = 401, body = Problem), (status = 403, body = Problem)))]
async fn user_tokens(
    State(state): State<AppState>,
    _auth: Authorized<need::UsersWrite>,
    Path(id): Path<i64>,
) -> Result<Json<Vec<TokenView>>> {
    Ok(Json(state.identity.tokens(id).await?))
}

/// Create an API token for a user, typically a service account. Shown once.
#[utoipa::path(post, path = "/users/{id}/tokens", tag = "identity", params(("id" = i64, Path)), request_body = NewToken,
    responses((status = 201, body = CreatedToken), (status = 401, body = Problem), (status = 403, body = Problem)))]
async fn create_user_token(
    State(state): State<AppState>,
    auth: Authorized<need::UsersWrite>,
    Path(id): Path<i64>,
    Body(new): Body<NewToken>,
) -> Result<Response> {
    let mut tx = state.db.begin_write().await?;
    state
        .authz
        .check_can_manage_user(&mut tx, auth.principal.user_id, id)
        .await?;
    let created = state
        .identity
        .create_api_token(&mut tx, id, &new, &auth.origin)
        .await?;
    tx.commit().await?;
    Ok((StatusCode::CREATED, Json(created)).into_response())
}

/// Revoke a user's token.
#[utoipa::path(delete, path = "/users/{id}/tokens/{token_id}", tag = "identity", params(("id" = i64, Path), ("token_id" = i64, Path)),
    responses((status = 200, body = TokenView), (status = 401, body = Problem), (status = 403, body = Problem), (status = 404, body = Problem)))]
async fn revoke_user_token(
    State(state): State<AppState>,
    auth: Authorized<need::UsersWrite>,
    Path((id, token_id)): Path<(i64, i64)>,
) -> Result<Json<TokenView>> {
    let mut tx = state.db.begin_write().await?;
    state
        .authz
        .check_can_manage_user(&mut tx, auth.principal.user_id, id)
        .await?;
    let token = state
        .identity
        .revoke_token(&mut tx, id, token_id, &auth.origin)
        .await?;
    tx.commit().await?;
    Ok(Json(token))
}
