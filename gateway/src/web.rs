//! The web client and the operator view, served by the node itself: `GET /`
//! is a single-page chat client for the JSON WebSocket protocol, `GET
//! /admin` shows discovery and metrics as live charts.
//!
//! The files under `gateway/web/` are plain JavaScript modules, HTML and
//! CSS, compiled into the binary with `include_str!`: there is no build
//! step, and a node serves the client that matches its own protocol.

use axum::http::header::{self, HeaderValue};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;

/// One embedded file: its path, media type and contents.
struct Asset {
    path: &'static str,
    content_type: &'static str,
    body: &'static str,
}

const HTML: &str = "text/html; charset=utf-8";
const JS: &str = "text/javascript; charset=utf-8";
const CSS: &str = "text/css; charset=utf-8";

/// Every file the pages load. Paths are fixed so that nothing outside
/// this list can be asked for.
const ASSETS: &[Asset] = &[
    Asset {
        path: "/",
        content_type: HTML,
        body: include_str!("../web/index.html"),
    },
    Asset {
        path: "/admin",
        content_type: HTML,
        body: include_str!("../web/admin.html"),
    },
    Asset {
        path: "/web/style.css",
        content_type: CSS,
        body: include_str!("../web/style.css"),
    },
    Asset {
        path: "/web/api.js",
        content_type: JS,
        body: include_str!("../web/api.js"),
    },
    Asset {
        path: "/web/connection.js",
        content_type: JS,
        body: include_str!("../web/connection.js"),
    },
    Asset {
        path: "/web/app.js",
        content_type: JS,
        body: include_str!("../web/app.js"),
    },
    Asset {
        path: "/web/admin.js",
        content_type: JS,
        body: include_str!("../web/admin.js"),
    },
];

/// Scripts and styles come from this node only, nothing may frame the
/// pages, and the only connections they open are to this node (`'self'`
/// covers `ws:`/`wss:` to the same host and port).
const CONTENT_SECURITY_POLICY: &str = "default-src 'none'; script-src 'self'; \
     style-src 'self'; img-src 'self' data:; connect-src 'self'; \
     base-uri 'none'; form-action 'none'; frame-ancestors 'none'";

fn respond(asset: &'static Asset) -> Response {
    (
        [
            (
                header::CONTENT_TYPE,
                HeaderValue::from_static(asset.content_type),
            ),
            // Revalidate on every load: a node upgraded in place serves its
            // new client at once.
            (header::CACHE_CONTROL, HeaderValue::from_static("no-cache")),
            (
                header::CONTENT_SECURITY_POLICY,
                HeaderValue::from_static(CONTENT_SECURITY_POLICY),
            ),
            (
                header::X_CONTENT_TYPE_OPTIONS,
                HeaderValue::from_static("nosniff"),
            ),
            (
                header::REFERRER_POLICY,
                HeaderValue::from_static("no-referrer"),
            ),
        ],
        asset.body,
    )
        .into_response()
}

/// The routes of the embedded pages and their scripts and styles.
pub fn routes<S: Clone + Send + Sync + 'static>() -> Router<S> {
    ASSETS.iter().fold(Router::new(), |router, asset| {
        router.route(asset.path, get(move || async move { respond(asset) }))
    })
}
