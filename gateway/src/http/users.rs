//! Accounts: sign-up, log-in, profiles, account deletion and blocks.

use axum::extract::State;
use axum::http::StatusCode;
use axum::Json;
use hanmadi_proto::ErrorCode;
use hanmadi_router::{NewAccount, ProfileChange};
use hanmadi_storage::chat::UserRecord;
use hanmadi_storage::kv::Kv;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::auth::Caller;
use super::error::{ApiError, ErrorBody};
use super::extract::{check_text, ApiJson, ApiPath, Id, Peer};
use super::{now_ms, HttpState};

/// Usernames are 1 to this many characters of `[A-Za-z0-9_.-]`.
const MAX_USERNAME: usize = 32;
/// Passwords are this many bytes at least...
const MIN_PASSWORD: usize = 8;
/// ...and at most this many, so nobody makes the server hash a megabyte.
const MAX_PASSWORD: usize = 1024;
/// Longest display name, in characters.
pub(super) const MAX_DISPLAY_NAME: usize = 64;
/// Longest status text, in characters.
const MAX_STATUS_TEXT: usize = 256;
/// Longest avatar URL, in bytes.
const MAX_AVATAR_URL: usize = 2048;

/// `POST /v1/users`.
#[derive(Deserialize, ToSchema)]
pub struct SignUp {
    /// 1 to 32 characters of `A-Z a-z 0-9 _ . -`; unique regardless of case.
    username: String,
    /// 8 to 1024 bytes.
    password: String,
    /// Name shown to others, up to 64 characters.
    #[serde(default)]
    display_name: Option<String>,
}

/// A new account.
#[derive(Debug, Serialize, ToSchema)]
pub struct SignedUp {
    /// The account's id.
    user_id: Id,
    /// The username as given.
    username: String,
}

/// `POST /v1/sessions`.
#[derive(Deserialize, ToSchema)]
pub struct LogIn {
    /// The username, in any case.
    username: String,
    /// The password.
    password: String,
}

/// A bearer token for the API and for sockets' `Hello`.
#[derive(Debug, Serialize, ToSchema)]
pub struct Session {
    /// Send as `Authorization: Bearer <token>`.
    token: String,
    /// The logged-in user.
    user_id: Id,
    /// When the token stops working, in ms since the Unix epoch.
    expires_at: u64,
}

/// A user's public profile.
#[derive(Debug, Serialize, ToSchema)]
pub struct Profile {
    /// The user's id.
    user_id: Id,
    /// Unique login name.
    username: String,
    /// Name shown to others.
    display_name: String,
    /// Free-form status line.
    status_text: String,
    /// Profile picture address.
    avatar_url: String,
    /// When the account was created, in ms since the Unix epoch.
    created_at: u64,
}

impl Profile {
    fn new(user_id: u64, r: UserRecord) -> Self {
        Self {
            user_id: Id(user_id),
            username: r.username,
            display_name: r.display_name,
            status_text: r.status_text,
            avatar_url: r.avatar_url,
            created_at: r.created_at,
        }
    }
}

/// `PATCH /v1/users/me`: the fields to change; absent ones stay.
#[derive(Debug, Default, Deserialize, ToSchema)]
pub struct ProfileUpdate {
    /// Up to 64 characters.
    display_name: Option<String>,
    /// Up to 256 characters.
    status_text: Option<String>,
    /// An `http(s)://` URL up to 2048 bytes, or empty to remove it.
    avatar_url: Option<String>,
}

pub(super) fn check_username(name: &str) -> Result<(), ApiError> {
    let ok = (1..=MAX_USERNAME).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-'));
    if ok {
        Ok(())
    } else {
        Err(ApiError::invalid(
            "username must be 1 to 32 characters of A-Z a-z 0-9 _ . -",
        ))
    }
}

fn check_password(password: &str) -> Result<(), ApiError> {
    if (MIN_PASSWORD..=MAX_PASSWORD).contains(&password.len()) {
        Ok(())
    } else {
        Err(ApiError::invalid("password must be 8 to 1024 bytes"))
    }
}

fn check_avatar_url(url: &str) -> Result<(), ApiError> {
    let scheme_ok = url.is_empty() || url.starts_with("https://") || url.starts_with("http://");
    if !scheme_ok || url.len() > MAX_AVATAR_URL || url.chars().any(char::is_whitespace) {
        return Err(ApiError::invalid(
            "avatar_url must be an http(s) URL of at most 2048 bytes, or empty",
        ));
    }
    Ok(())
}

/// Signs up.
#[utoipa::path(post, path = "/v1/users", tag = "users", request_body = SignUp,
    responses(
        (status = 201, description = "The account exists", body = SignedUp),
        (status = 400, description = "Bad username, password or display name", body = ErrorBody),
        (status = 409, description = "The username is taken (`ALREADY_EXISTS`)", body = ErrorBody),
        (status = 503, description = "Too many password hashes at once", body = ErrorBody),
    ))]
pub(super) async fn sign_up<K: Kv>(
    State(state): State<HttpState<K>>,
    Peer(from): Peer,
    ApiJson(req): ApiJson<SignUp>,
) -> Result<(StatusCode, Json<SignedUp>), ApiError> {
    check_username(&req.username)?;
    check_password(&req.password)?;
    let display_name = req.display_name.unwrap_or_default();
    check_text("display_name", &display_name, MAX_DISPLAY_NAME)?;
    // Checked before hashing so a taken name costs no hash; creating the
    // account checks again, atomically.
    state.ctx.router.check_username_free(&req.username).await?;
    let password_hash = state.passwords.hash(req.password, from).await?;
    let username = req.username.clone();
    let user_id = state
        .ctx
        .router
        .create_account(NewAccount {
            username: req.username,
            display_name,
            password_hash,
        })
        .await?;
    Ok((
        StatusCode::CREATED,
        Json(SignedUp {
            user_id: Id(user_id),
            username,
        }),
    ))
}

/// Logs in: a token for the API and for sockets.
#[utoipa::path(post, path = "/v1/sessions", tag = "users", request_body = LogIn,
    responses(
        (status = 200, description = "Logged in", body = Session),
        (status = 401, description = "Wrong username or password (`UNAUTHENTICATED`)", body = ErrorBody),
        (status = 429, description = "Too many log-ins as this username: 5 at once, then 6 a minute (`RATE_LIMITED`)", body = ErrorBody),
        (status = 503, description = "Too many password hashes at once", body = ErrorBody),
    ))]
pub(super) async fn log_in<K: Kv>(
    State(state): State<HttpState<K>>,
    Peer(from): Peer,
    ApiJson(req): ApiJson<LogIn>,
) -> Result<Json<Session>, ApiError> {
    let wrong = || ApiError::new(ErrorCode::Unauthenticated, "wrong username or password");
    if req.password.len() > MAX_PASSWORD {
        return Err(wrong());
    }
    let account = match check_username(&req.username) {
        Ok(()) => {
            if let Err(wait) = state.limiter.log_in_attempt(&req.username) {
                return Err(ApiError::new(
                    ErrorCode::RateLimited,
                    format!(
                        "too many log-ins as this user; try again in {} s",
                        wait.as_secs() + 1
                    ),
                ));
            }
            state.ctx.router.password_account(&req.username).await?
        }
        Err(_) => None,
    };
    let (user_id, stored) = account.unzip();
    // An unknown user still costs one hash: timing does not tell.
    let matches = state.passwords.verify(req.password, stored, from).await?;
    let Some(user_id) = user_id.filter(|_| matches) else {
        return Err(wrong());
    };
    let now = now_ms();
    let ttl = state.token_ttl;
    Ok(Json(Session {
        token: state.ctx.auth.issue(user_id, now, ttl),
        user_id: Id(user_id),
        expires_at: now.saturating_add(u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX)),
    }))
}

/// The caller's own profile.
#[utoipa::path(get, path = "/v1/users/me", tag = "users", security(("bearer" = [])),
    responses((status = 200, description = "The profile", body = Profile)))]
pub(super) async fn get_me<K: Kv>(
    State(state): State<HttpState<K>>,
    Caller(me): Caller,
) -> Result<Json<Profile>, ApiError> {
    Ok(Json(Profile::new(me, state.ctx.router.account(me).await?)))
}

/// Changes the caller's profile.
#[utoipa::path(patch, path = "/v1/users/me", tag = "users", security(("bearer" = [])),
    request_body = ProfileUpdate,
    responses(
        (status = 200, description = "The changed profile", body = Profile),
        (status = 400, description = "A field too long or malformed", body = ErrorBody),
    ))]
pub(super) async fn patch_me<K: Kv>(
    State(state): State<HttpState<K>>,
    Caller(me): Caller,
    ApiJson(update): ApiJson<ProfileUpdate>,
) -> Result<Json<Profile>, ApiError> {
    if let Some(v) = &update.display_name {
        check_text("display_name", v, MAX_DISPLAY_NAME)?;
    }
    if let Some(v) = &update.status_text {
        check_text("status_text", v, MAX_STATUS_TEXT)?;
    }
    if let Some(v) = &update.avatar_url {
        check_avatar_url(v)?;
    }
    let change = ProfileChange {
        display_name: update.display_name,
        status_text: update.status_text,
        avatar_url: update.avatar_url,
    };
    let record = state.ctx.router.update_profile(me, change).await?;
    Ok(Json(Profile::new(me, record)))
}

/// Deletes the caller's account; every token of it stops working at once.
#[utoipa::path(delete, path = "/v1/users/me", tag = "users", security(("bearer" = [])),
    responses((status = 204, description = "The account is gone")))]
pub(super) async fn delete_me<K: Kv>(
    State(state): State<HttpState<K>>,
    Caller(me): Caller,
) -> Result<StatusCode, ApiError> {
    state.ctx.router.delete_user(me).await?;
    state.ctx.registry.revoke_user(me);
    Ok(StatusCode::NO_CONTENT)
}

/// Logs out everywhere: every token of the caller's account issued until
/// now stops working, its sockets on every node close with
/// `TOKEN_INVALID`, and the next log-in gets a fresh token.
#[utoipa::path(delete, path = "/v1/sessions", tag = "users", security(("bearer" = [])),
    responses((status = 204, description = "Every earlier token is void")))]
pub(super) async fn log_out_everywhere<K: Kv>(
    State(state): State<HttpState<K>>,
    Caller(me): Caller,
) -> Result<StatusCode, ApiError> {
    state.ctx.router.revoke_tokens(me).await?;
    state.ctx.registry.revoke_user(me);
    Ok(StatusCode::NO_CONTENT)
}

/// Another user's profile.
#[utoipa::path(get, path = "/v1/users/{id}", tag = "users", security(("bearer" = [])),
    params(("id" = Id, Path, description = "The user's id")),
    responses(
        (status = 200, description = "The profile", body = Profile),
        (status = 404, description = "No such user (or deleted)", body = ErrorBody),
    ))]
pub(super) async fn get_user<K: Kv>(
    State(state): State<HttpState<K>>,
    Caller(_): Caller,
    ApiPath(Id(id)): ApiPath<Id>,
) -> Result<Json<Profile>, ApiError> {
    Ok(Json(Profile::new(id, state.ctx.router.account(id).await?)))
}

/// A user's profile by username (in any case): how a client finds whom to
/// write to.
#[utoipa::path(get, path = "/v1/users/by-name/{username}", tag = "users",
    security(("bearer" = [])),
    params(("username" = String, Path, description = "The username, in any case")),
    responses(
        (status = 200, description = "The profile", body = Profile),
        (status = 404, description = "No such user (or deleted)", body = ErrorBody),
    ))]
pub(super) async fn find_user<K: Kv>(
    State(state): State<HttpState<K>>,
    Caller(_): Caller,
    ApiPath(username): ApiPath<String>,
) -> Result<Json<Profile>, ApiError> {
    let not_found = || ApiError::not_found("user");
    check_username(&username).map_err(|_| not_found())?;
    let (id, record) = state.ctx.router.account_by_name(&username).await?;
    Ok(Json(Profile::new(id, record)))
}

/// Blocks a user: no direct messages either way.
#[utoipa::path(put, path = "/v1/users/me/blocks/{id}", tag = "users", security(("bearer" = [])),
    params(("id" = Id, Path, description = "The user to block")),
    responses(
        (status = 204, description = "Blocked"),
        (status = 404, description = "No such user", body = ErrorBody),
    ))]
pub(super) async fn block<K: Kv>(
    State(state): State<HttpState<K>>,
    Caller(me): Caller,
    ApiPath(Id(other)): ApiPath<Id>,
) -> Result<StatusCode, ApiError> {
    state.ctx.router.set_blocked(me, other, true).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// Unblocks a user.
#[utoipa::path(delete, path = "/v1/users/me/blocks/{id}", tag = "users", security(("bearer" = [])),
    params(("id" = Id, Path, description = "The user to unblock")),
    responses((status = 204, description = "Not blocked (any more)")))]
pub(super) async fn unblock<K: Kv>(
    State(state): State<HttpState<K>>,
    Caller(me): Caller,
    ApiPath(Id(other)): ApiPath<Id>,
) -> Result<StatusCode, ApiError> {
    state.ctx.router.set_blocked(me, other, false).await?;
    Ok(StatusCode::NO_CONTENT)
}
