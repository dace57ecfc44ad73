//! `Authorization: Bearer <token>`: the extractor every authenticated route
//! takes. It runs the same full check as a socket's `Hello`
//! ([`crate::auth::authenticate`]), so a revoked or deleted account's token
//! stops working on HTTP the moment it stops working on sockets.

use axum::extract::FromRequestParts;
use axum::http::request::Parts;
use axum::http::{header, HeaderMap};
use hanmadi_proto::ErrorCode;
use hanmadi_storage::kv::Kv;

use super::error::ApiError;
use super::{now_ms, HttpState};

/// The authenticated user making the request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Caller(pub u64);

impl<K: Kv> FromRequestParts<HttpState<K>> for Caller {
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &HttpState<K>,
    ) -> Result<Self, Self::Rejection> {
        let token = bearer(&parts.headers).ok_or_else(|| {
            ApiError::new(
                ErrorCode::Unauthenticated,
                "this route needs an `Authorization: Bearer <token>` header",
            )
        })?;
        let user =
            crate::auth::authenticate(&state.ctx.auth, state.ctx.router.store(), token, now_ms())
                .await?;
        Ok(Self(user))
    }
}

/// The token of a `Bearer` authorization (the scheme is case-insensitive).
pub(super) fn bearer(headers: &HeaderMap) -> Option<&str> {
    let value = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = value.split_once(' ')?;
    let token = token.trim();
    (scheme.eq_ignore_ascii_case("bearer") && !token.is_empty()).then_some(token)
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;

    #[test]
    fn reads_bearer_tokens_only() {
        let with = |v: &'static str| {
            let mut h = HeaderMap::new();
            h.insert(header::AUTHORIZATION, HeaderValue::from_static(v));
            h
        };
        assert_eq!(bearer(&with("Bearer abc")), Some("abc"));
        assert_eq!(bearer(&with("bearer  abc ")), Some("abc"));
        assert_eq!(bearer(&with("Basic abc")), None);
        assert_eq!(bearer(&with("Bearer ")), None);
        assert_eq!(bearer(&with("Bearer")), None);
        assert_eq!(bearer(&HeaderMap::new()), None);
    }
}
