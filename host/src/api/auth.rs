//! Authentication and authorization at the edge: every route names the permission it needs in
//! its signature (`Authorized<need::LedgerEntriesPost>`), and the extractor answers 401 for
//! missing, malformed, expired or revoked credentials and 403 for a missing permission, which
//! it also records in the audit trail.

use std::marker::PhantomData;

use axum::extract::FromRequestParts;
use axum::http::request::Parts;
use axum::response::{IntoResponse, Response};
use serde_json::json;

use super::AppState;
use super::extract::{COMPANY_HEADER, IDEMPOTENCY_HEADER};
use super::problem::Problem;
use crate::audit::{self, Actor, Event, Origin};
use crate::authz::{Permission, Scope, perm};
use crate::company::Company;
use crate::error::Error;
use crate::identity::Principal;

/// A permission a route requires, as a type so that the route's signature declares it.
pub trait Need {
    const PERMISSION: Permission;
}

/// The permission types routes name in their signatures.
pub mod need {
    use super::{Need, Permission, perm};

    macro_rules! needs {
        ($($name:ident => $permission:expr,)*) => {
            $(
                #[derive(Debug)]
                pub struct $name;
                impl Need for $name {
                    const PERMISSION: Permission = $permission;
                }
            )*
        };
    }

    needs! {
        LedgerAccountsRead => perm::LEDGER_ACCOUNTS_READ,
        LedgerAccountsWrite => perm::LEDGER_ACCOUNTS_WRITE,
        LedgerEntriesRead => perm::LEDGER_ENTRIES_READ,
        LedgerEntriesPost => perm::LEDGER_ENTRIES_POST,
        LedgerEntriesReverse => perm::LEDGER_ENTRIES_REVERSE,
        LedgerPeriodsRead => perm::LEDGER_PERIODS_READ,
        LedgerPeriodsOpen => perm::LEDGER_PERIODS_OPEN,
        LedgerPeriodsClose => perm::LEDGER_PERIODS_CLOSE,
        LedgerPeriodsReopen => perm::LEDGER_PERIODS_REOPEN,
        LedgerReportsRead => perm::LEDGER_REPORTS_READ,
        PartiesRead => perm::PARTIES_READ,
        PartiesWrite => perm::PARTIES_WRITE,
        PartiesMerge => perm::PARTIES_MERGE,
        PartiesImport => perm::PARTIES_IMPORT,
        PartiesErase => perm::PARTIES_ERASE,
        PartyFieldsWrite => perm::PARTY_FIELDS_WRITE,
        UsersRead => perm::USERS_READ,
        UsersWrite => perm::USERS_WRITE,
        RolesRead => perm::ROLES_READ,
        RolesWrite => perm::ROLES_WRITE,
        AuditRead => perm::AUDIT_READ,
        PluginsRead => perm::PLUGINS_READ,
        PluginsManage => perm::PLUGINS_MANAGE,
    }
}

/// The caller behind the request's bearer token, whatever their permissions.
#[derive(Debug, Clone)]
pub struct Authenticated {
    pub principal: Principal,
    pub origin: Origin,
}

/// A caller allowed `P` in the company the request names.
#[derive(Debug, Clone)]
pub struct Authorized<P> {
    pub principal: Principal,
    pub company: Company,
    /// How far the permission reaches (all records, the team's, the caller's own).
    pub scope: Scope,
    pub origin: Origin,
    permission: PhantomData<P>,
}

fn origin_of(parts: &Parts, principal: &Principal) -> Origin {
    let header = |name: &str| {
        parts
            .headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned)
    };
    Origin {
        actor: Actor {
            user_id: Some(principal.user_id),
            plugin: None,
        },
        request_id: header("x-request-id"),
        idempotency_key: header(IDEMPOTENCY_HEADER),
    }
}

async fn authenticate(parts: &Parts, state: &AppState) -> Result<Principal, Response> {
    let header = parts
        .headers
        .get(axum::http::header::AUTHORIZATION)
        .ok_or_else(|| {
            Error::Unauthenticated(
                "send an API or session token as Authorization: Bearer <token>".into(),
            )
            .into_response()
        })?;
    let token = header
        .to_str()
        .ok()
        .and_then(|value| value.strip_prefix("Bearer "))
        .map(str::trim)
        .filter(|token| !token.is_empty())
        .ok_or_else(|| {
            Error::Unauthenticated(
                "the Authorization header is not of the form Bearer <token>".into(),
            )
            .into_response()
        })?;
    state
        .identity
        .authenticate(token)
        .await
        .map_err(IntoResponse::into_response)
}

impl FromRequestParts<AppState> for Authenticated {
    type Rejection = Response;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &AppState,
    ) -> Result<Self, Self::Rejection> {
        let principal = authenticate(parts, state).await?;
        let origin = origin_of(parts, &principal);
        Ok(Self { principal, origin })
    }
}

async fn company_of(parts: &Parts, state: &AppState) -> Result<Company, Response> {
    match parts.headers.get(COMPANY_HEADER) {
        None => Ok(state.companies.default_company()),
        Some(value) => {
            let code = value.to_str().map_err(|_| {
                Problem::bad_request("Keel-Company", "is not a valid company code").into_response()
            })?;
            state
                .companies
                .by_code(code)
                .await
                .map_err(IntoResponse::into_response)
        }
    }
}

impl<P: Need + Send + Sync> FromRequestParts<AppState> for Authorized<P> {
    type Rejection = Response;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &AppState,
    ) -> Result<Self, Self::Rejection> {
        let InCompany {
            principal,
            company,
            origin,
        } = InCompany::from_request_parts(parts, state).await?;
        if let Err(error) = state.authz.refresh_if_stale().await {
            return Err(Error::Unexpected(error).into_response());
        }
        let permission = P::PERMISSION;
        let mut scope = state.authz.scope(principal.user_id, company.id, permission);
        if scope.is_none() {
            if let Err(error) = state.authz.refresh().await {
                return Err(Error::Unexpected(error).into_response());
            }
            scope = state.authz.scope(principal.user_id, company.id, permission);
        }
        match scope {
            Some(scope) => Ok(Self {
                principal,
                company,
                scope,
                origin,
                permission: PhantomData,
            }),
            None => {
                let event = Event::new(
                    Some(company.id),
                    "security:permission-denied",
                    "permission",
                    permission,
                    json!({
                        "method": parts.method.as_str(),
                        // Nested routers see their own part of the path; record the whole one.
                        "path": parts
                            .extensions
                            .get::<axum::extract::OriginalUri>()
                            .map_or_else(|| parts.uri.path().to_owned(), |uri| uri.path().to_owned()),
                    }),
                );
                audit::record_security_event(&state.db, &origin, event).await;
                Err(Error::Forbidden(format!(
                    "{} may not {} in company {:?} (permission {permission} is missing)",
                    principal.username, permission.action, company.code
                ))
                .into_response())
            }
        }
    }
}

/// An authenticated caller in the company the request names, for routes whose permission is
/// known only at run time (a plugin's routes need `plugins.<name>:use`).
#[derive(Debug, Clone)]
pub struct InCompany {
    pub principal: Principal,
    pub company: Company,
    pub origin: Origin,
}

impl FromRequestParts<AppState> for InCompany {
    type Rejection = Response;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &AppState,
    ) -> Result<Self, Self::Rejection> {
        let principal = authenticate(parts, state).await?;
        let company = company_of(parts, state).await?;
        let origin = origin_of(parts, &principal);
        Ok(Self {
            principal,
            company,
            origin,
        })
    }
}

impl InCompany {
    /// Refuses with 403, recorded in the audit trail, unless the caller holds
    /// `resource:action`.
    pub async fn require(
        &self,
        state: &AppState,
        resource: &str,
        action: &str,
    ) -> Result<Scope, Error> {
        state.authz.refresh_if_stale().await?;
        let (user, company) = (self.principal.user_id, self.company.id);
        if let Some(scope) = state.authz.scope_named(user, company, resource, action) {
            return Ok(scope);
        }
        let permission = format!("{resource}:{action}");
        let event = Event::new(
            Some(company),
            "security:permission-denied",
            "permission",
            &permission,
            json!({ "resource": resource, "action": action }),
        );
        audit::record_security_event(&state.db, &self.origin, event).await;
        Err(Error::Forbidden(format!(
            "{} may not use this in company {:?} (permission {permission} is missing)",
            self.principal.username, self.company.code
        )))
    }
}

/// Idempotency keys belong to the caller: two users never share one.
pub fn principal_key(principal: &Principal) -> String {
    format!("user:{}", principal.user_id)
}
