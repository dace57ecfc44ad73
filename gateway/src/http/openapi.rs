//! The API's OpenAPI document. Paths come from the `#[utoipa::path]` of
//! each handler, collected as the routes are registered (utoipa-axum's
//! `routes!`), so a route cannot exist without its entry; this module adds
//! the document's header and the bearer scheme, and serves the result.

use axum::http::header;
use axum::response::IntoResponse;
use axum::Extension;
use bytes::Bytes;
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::openapi::OpenApi as Document;
use utoipa::{Modify, OpenApi};

use super::error::ErrorBody;

/// The document's fixed parts.
#[derive(Debug, OpenApi)]
#[openapi(
    info(
        title = "Hanmadi HTTP API",
        description = "JSON over HTTP for everything that is not a live socket. Errors are \
            `{\"error\": {\"code\", \"message\"}}` with the protocol's numeric error code; 64-bit \
            ids are decimal strings; protocol objects use protobuf's JSON mapping with the \
            schema's field names. Authenticated routes take `Authorization: Bearer <token>`."
    ),
    components(schemas(ErrorBody)),
    modifiers(&BearerScheme),
    tags(
        (name = "users", description = "Accounts, sessions, profiles and blocks"),
        (name = "groups", description = "Groups and their members"),
        (name = "messages", description = "Sending, history, conversations and sync"),
        (name = "devices", description = "Devices, their push registrations, and muted conversations"),
        (name = "operations", description = "Discovery, health, metrics and this document"),
    )
)]
pub struct ApiDoc;

/// Declares the `bearer` security scheme the routes refer to.
#[derive(Debug)]
struct BearerScheme;

impl Modify for BearerScheme {
    fn modify(&self, openapi: &mut Document) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(HttpBuilder::new().scheme(HttpAuthScheme::Bearer).build()),
        );
    }
}

/// The finished document, rendered once at start.
#[derive(Debug, Clone)]
pub struct ApiDocument(Bytes);

impl ApiDocument {
    /// Renders `document` as JSON.
    pub fn render(document: &Document) -> Self {
        // Serializing a document of plain strings and maps cannot fail;
        // were it to, clients would see an empty object rather than a panic.
        Self(Bytes::from(
            document.to_json().unwrap_or_else(|_| "{}".to_owned()),
        ))
    }
}

/// This API's OpenAPI 3.1 document.
#[utoipa::path(get, path = "/v1/openapi.json", tag = "operations",
    responses((status = 200, description = "This document", content_type = "application/json")))]
pub(super) async fn openapi_json(Extension(document): Extension<ApiDocument>) -> impl IntoResponse {
    ([(header::CONTENT_TYPE, "application/json")], document.0)
}
