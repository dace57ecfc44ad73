//! Groups: create, list, read with members, add and remove members.
//! Membership changes go through the router, so each one commits with the
//! system message that announces it in the conversation.

use axum::extract::State;
use axum::http::StatusCode;
use axum::Json;
use hanmadi_router::GroupDetails;
use hanmadi_storage::chat::Role;
use hanmadi_storage::kv::Kv;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::auth::Caller;
use super::error::{ApiError, ErrorBody};
use super::extract::{check_text, ApiJson, ApiPath, Id};
use super::HttpState;

/// Longest group name, in characters.
const MAX_GROUP_NAME: usize = 64;

/// A member's role.
#[derive(Debug, Clone, Copy, Serialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum RoleName {
    /// Created the group; may add and remove anyone but themself.
    Owner,
    /// May add and remove members.
    Admin,
    /// May post and read.
    Member,
}

impl From<Role> for RoleName {
    fn from(role: Role) -> Self {
        match role {
            Role::Owner => Self::Owner,
            Role::Admin => Self::Admin,
            Role::Member => Self::Member,
        }
    }
}

/// `POST /v1/groups`.
#[derive(Debug, Deserialize, ToSchema)]
pub struct NewGroup {
    /// 1 to 64 characters.
    name: String,
    /// Members besides the creator, who becomes the owner.
    #[serde(default)]
    members: Vec<Id>,
}

/// `POST /v1/groups/{id}/members`.
#[derive(Debug, Deserialize, ToSchema)]
pub struct NewMembers {
    /// Users to add; ones already in stay as they are.
    user_ids: Vec<Id>,
    /// The role they get: `member` (the default), or `admin`, which only the
    /// owner may grant.
    #[serde(default)]
    role: NewRole,
}

/// A role a member can be added with; a group's one owner is its creator.
#[derive(Debug, Clone, Copy, Default, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum NewRole {
    /// May add and remove members.
    Admin,
    /// May post and read.
    #[default]
    Member,
}

/// One of the caller's groups.
#[derive(Debug, Serialize, ToSchema)]
pub struct GroupSummary {
    /// The group's id.
    group_id: Id,
    /// Its name.
    name: String,
    /// Its owner.
    owner: Id,
    /// The caller's role in it.
    role: RoleName,
    /// Members now.
    member_count: u32,
    /// The size cap.
    max_members: u32,
    /// When it was created, in ms since the Unix epoch.
    created_at: u64,
}

/// `GET /v1/groups`.
#[derive(Debug, Serialize, ToSchema)]
pub struct GroupList {
    /// The caller's groups.
    groups: Vec<GroupSummary>,
}

/// A member of a group.
#[derive(Debug, Serialize, ToSchema)]
pub struct Member {
    /// The member.
    user_id: Id,
    /// Their role.
    role: RoleName,
    /// The id of the message that recorded their join: they see history
    /// from there on.
    joined_at: Id,
}

/// A group with its members.
#[derive(Debug, Serialize, ToSchema)]
pub struct Group {
    /// The group's id.
    group_id: Id,
    /// Its name.
    name: String,
    /// Its owner.
    owner: Id,
    /// Members now.
    member_count: u32,
    /// The size cap.
    max_members: u32,
    /// When it was created, in ms since the Unix epoch.
    created_at: u64,
    /// Every member with their role.
    members: Vec<Member>,
}

impl Group {
    fn new(group: u64, details: GroupDetails) -> Self {
        let GroupDetails { record, members } = details;
        Self {
            group_id: Id(group),
            name: record.name,
            owner: Id(record.owner),
            member_count: record.member_count,
            max_members: record.max_members,
            created_at: record.created_at,
            members: members
                .into_iter()
                .map(|(user, m)| Member {
                    user_id: Id(user),
                    role: m.role().into(),
                    joined_at: Id(m.joined_at),
                })
                .collect(),
        }
    }
}

/// The group with its members as `caller` may see it.
async fn group_view<K: Kv>(
    state: &HttpState<K>,
    caller: u64,
    group: u64,
) -> Result<Group, ApiError> {
    let details = state.ctx.router.group_details(caller, group).await?;
    Ok(Group::new(group, details))
}

fn ids(users: &[Id]) -> Vec<u64> {
    users.iter().map(|id| id.0).collect()
}

/// Creates a group; the caller is its owner.
#[utoipa::path(post, path = "/v1/groups", tag = "groups", security(("bearer" = [])),
    request_body = NewGroup,
    responses(
        (status = 201, description = "The new group", body = Group),
        (status = 400, description = "Bad name", body = ErrorBody),
        (status = 404, description = "A member does not exist", body = ErrorBody),
        (status = 422, description = "More members than the size cap (`GROUP_FULL`)", body = ErrorBody),
    ))]
pub(super) async fn create_group<K: Kv>(
    State(state): State<HttpState<K>>,
    Caller(me): Caller,
    ApiJson(req): ApiJson<NewGroup>,
) -> Result<(StatusCode, Json<Group>), ApiError> {
    if req.name.trim().is_empty() {
        return Err(ApiError::invalid("name is empty"));
    }
    check_text("name", &req.name, MAX_GROUP_NAME)?;
    let members = ids(&req.members);
    let (group, _) = state.ctx.router.create_group(me, req.name, members).await?;
    Ok((
        StatusCode::CREATED,
        Json(group_view(&state, me, group).await?),
    ))
}

/// The caller's groups.
#[utoipa::path(get, path = "/v1/groups", tag = "groups", security(("bearer" = [])),
    responses((status = 200, description = "The caller's groups", body = GroupList)))]
pub(super) async fn list_groups<K: Kv>(
    State(state): State<HttpState<K>>,
    Caller(me): Caller,
) -> Result<Json<GroupList>, ApiError> {
    let groups = state
        .ctx
        .router
        .groups_of(me)
        .await?
        .into_iter()
        .map(|(group, membership, record)| GroupSummary {
            group_id: Id(group),
            name: record.name,
            owner: Id(record.owner),
            role: membership.role().into(),
            member_count: record.member_count,
            max_members: record.max_members,
            created_at: record.created_at,
        })
        .collect();
    Ok(Json(GroupList { groups }))
}

/// One group with its members and roles.
#[utoipa::path(get, path = "/v1/groups/{id}", tag = "groups", security(("bearer" = [])),
    params(("id" = Id, Path, description = "The group's id")),
    responses(
        (status = 200, description = "The group", body = Group),
        (status = 403, description = "The caller is not a member (`NOT_A_MEMBER`)", body = ErrorBody),
        (status = 404, description = "No such group", body = ErrorBody),
    ))]
pub(super) async fn get_group<K: Kv>(
    State(state): State<HttpState<K>>,
    Caller(me): Caller,
    ApiPath(Id(group)): ApiPath<Id>,
) -> Result<Json<Group>, ApiError> {
    Ok(Json(group_view(&state, me, group).await?))
}

/// Adds members (the owner and admins only).
#[utoipa::path(post, path = "/v1/groups/{id}/members", tag = "groups", security(("bearer" = [])),
    params(("id" = Id, Path, description = "The group's id")),
    request_body = NewMembers,
    responses(
        (status = 200, description = "The group after the change", body = Group),
        (status = 403, description = "Not a member, not the owner or an admin, or an admin granting `admin`", body = ErrorBody),
        (status = 404, description = "No such group or user", body = ErrorBody),
        (status = 422, description = "The group would pass its size cap (`GROUP_FULL`)", body = ErrorBody),
    ))]
pub(super) async fn add_members<K: Kv>(
    State(state): State<HttpState<K>>,
    Caller(me): Caller,
    ApiPath(Id(group)): ApiPath<Id>,
    ApiJson(req): ApiJson<NewMembers>,
) -> Result<Json<Group>, ApiError> {
    let users = ids(&req.user_ids);
    state
        .ctx
        .router
        .add_members(
            me,
            group,
            users,
            match req.role {
                NewRole::Admin => Role::Admin,
                NewRole::Member => Role::Member,
            },
        )
        .await?;
    Ok(Json(group_view(&state, me, group).await?))
}

/// Removes a member (the owner and admins), or leaves (anyone, for
/// themself).
#[utoipa::path(delete, path = "/v1/groups/{id}/members/{user_id}", tag = "groups",
    security(("bearer" = [])),
    params(
        ("id" = Id, Path, description = "The group's id"),
        ("user_id" = Id, Path, description = "The member to remove; the caller's own id leaves"),
    ),
    responses(
        (status = 204, description = "Removed"),
        (status = 403, description = "Not a member, or not allowed to remove others", body = ErrorBody),
        (status = 404, description = "No such group, or the user is not in it", body = ErrorBody),
    ))]
pub(super) async fn remove_member<K: Kv>(
    State(state): State<HttpState<K>>,
    Caller(me): Caller,
    ApiPath((Id(group), Id(user))): ApiPath<(Id, Id)>,
) -> Result<StatusCode, ApiError> {
    state.ctx.router.remove_member(me, group, user).await?;
    Ok(StatusCode::NO_CONTENT)
}
