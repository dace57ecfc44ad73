//! Operator routes under `/v1/admin/`: provisioning for deployments whose
//! own backend owns identities, and for load tests that need thousands of
//! accounts in seconds.
//!
//! They take the operator's admin token (`Authorization: Bearer hma1.…`,
//! derived from the node's secret: [`crate::auth::TokenIssuer::admin_token`],
//! printed by `hanmadi admin-token`), never a user's token. Accounts made
//! here have no password, so no hash is computed: their users authenticate
//! with HS256 JWTs the application mints with the same secret.

use axum::extract::{FromRequestParts, State};
use axum::http::request::Parts;
use axum::http::StatusCode;
use axum::Json;
use hanmadi_proto::ErrorCode;
use hanmadi_storage::kv::Kv;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::auth::bearer;
use super::error::{ApiError, ErrorBody};
use super::extract::{check_text, ApiJson, Id};
use super::users::{check_username, MAX_DISPLAY_NAME};
use super::HttpState;

/// Most accounts one `POST /v1/admin/users:batch` may name (the router's
/// bound on one provisioning transaction).
pub const MAX_USERS_PER_BATCH: usize = hanmadi_router::MAX_PROVISION_BATCH;

/// A request made with the operator's admin token.
#[derive(Debug, Clone, Copy)]
pub struct Admin;

impl<K: Kv> FromRequestParts<HttpState<K>> for Admin {
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &HttpState<K>,
    ) -> Result<Self, Self::Rejection> {
        let Some(token) = bearer(&parts.headers) else {
            return Err(ApiError::new(
                ErrorCode::Unauthenticated,
                "this route needs `Authorization: Bearer <admin token>`",
            ));
        };
        if state.ctx.auth.is_admin_token(token) {
            Ok(Self)
        } else {
            Err(ApiError::new(
                ErrorCode::PermissionDenied,
                "this route takes the operator's admin token only",
            ))
        }
    }
}

/// `POST /v1/admin/users:batch`.
#[derive(Debug, Deserialize, ToSchema)]
pub struct UserBatch {
    /// 1 to 1,000 accounts.
    users: Vec<NewUser>,
}

/// One account to provision.
#[derive(Debug, Deserialize, ToSchema)]
pub struct NewUser {
    /// As for sign-up: 1 to 32 characters of `A-Z a-z 0-9 _ . -`.
    username: String,
    /// Name shown to others, up to 64 characters.
    #[serde(default)]
    display_name: Option<String>,
}

/// What a batch did, one entry per requested account, in request order.
#[derive(Debug, Serialize, ToSchema)]
pub struct ProvisionedUsers {
    /// The accounts.
    users: Vec<ProvisionedUser>,
}

/// One provisioned account.
#[derive(Debug, Serialize, ToSchema)]
pub struct ProvisionedUser {
    /// The account's id: the new one, or the existing account's.
    user_id: Id,
    /// The username as requested.
    username: String,
    /// `false` when the username belonged to an account already, which is
    /// left as it was.
    created: bool,
}

/// Makes sure each named account exists, in one transaction, without
/// passwords. Usernames already taken keep their account and answer its id,
/// so the call can be repeated safely.
#[utoipa::path(post, path = "/v1/admin/users:batch", tag = "operations",
    request_body = UserBatch,
    security(("bearer" = [])),
    responses(
        (status = 200, description = "Every account exists", body = ProvisionedUsers),
        (status = 400, description = "A bad username or display name, or an empty or too large batch (`INVALID_ARGUMENT`)", body = ErrorBody),
        (status = 401, description = "No bearer token (`UNAUTHENTICATED`)", body = ErrorBody),
        (status = 403, description = "Not the admin token (`PERMISSION_DENIED`)", body = ErrorBody),
    ))]
pub(super) async fn provision_users<K: Kv>(
    State(state): State<HttpState<K>>,
    _admin: Admin,
    ApiJson(req): ApiJson<UserBatch>,
) -> Result<Json<ProvisionedUsers>, ApiError> {
    let mut accounts = Vec::with_capacity(req.users.len());
    for user in req.users {
        check_username(&user.username)?;
        let display_name = user.display_name.unwrap_or_default();
        check_text("display_name", &display_name, MAX_DISPLAY_NAME)?;
        accounts.push((user.username, display_name));
    }
    let usernames: Vec<String> = accounts.iter().map(|(name, _)| name.clone()).collect();
    let ids = state.ctx.router.provision_accounts(accounts).await?;
    let users = usernames
        .into_iter()
        .zip(ids)
        .map(|(username, (user_id, created))| ProvisionedUser {
            user_id: Id(user_id),
            username,
            created,
        })
        .collect();
    Ok(Json(ProvisionedUsers { users }))
}

/// Checks a token: `204` when it is the operator's admin token. The
/// operator view (`GET /admin`) asks this before it shows anything.
#[utoipa::path(get, path = "/v1/admin/token", tag = "operations",
    security(("bearer" = [])),
    responses(
        (status = 204, description = "The admin token"),
        (status = 401, description = "No bearer token (`UNAUTHENTICATED`)", body = ErrorBody),
        (status = 403, description = "Not the admin token (`PERMISSION_DENIED`)", body = ErrorBody),
    ))]
pub(super) async fn check_token(_admin: Admin) -> StatusCode {
    StatusCode::NO_CONTENT
}
