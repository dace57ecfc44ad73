//! Request extractors whose refusals come out in the API's error shape,
//! the request's remote address ([`Peer`]), and [`Id`], a 64-bit id as
//! JSON carries it.
//!
//! axum's own `Json`, `Path` and `Query` answer a bad request with plain
//! text; these wrap them and turn the rejection into an [`ApiError`].

use std::convert::Infallible;
use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::str::FromStr;

use axum::extract::{ConnectInfo, FromRequest, FromRequestParts};
use axum::http::request::Parts;
use serde::de::{self, Deserializer, Visitor};
use serde::{Deserialize, Serialize, Serializer};
use utoipa::openapi::schema::{ObjectBuilder, Schema, Type};
use utoipa::openapi::RefOr;
use utoipa::{PartialSchema, ToSchema};

use super::error::ApiError;

/// The remote address a request came from, keyed as the per-address
/// limits key it (an IPv6 address by its /64); `None` for a request without
/// one (the router called in-process).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Peer(pub Option<IpAddr>);

impl<S: Send + Sync> FromRequestParts<S> for Peer {
    type Rejection = Infallible;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, Self::Rejection> {
        Ok(Self(parts.extensions.get::<ConnectInfo<SocketAddr>>().map(
            |ConnectInfo(addr)| crate::registry::limited_address(addr.ip()),
        )))
    }
}

/// A JSON request body; malformed JSON is `400`, an oversized body `413`.
#[derive(Debug, FromRequest)]
#[from_request(via(axum::Json), rejection(ApiError))]
pub struct ApiJson<T>(pub T);

/// Path parameters; unparsable ones are `400`.
#[derive(Debug, FromRequestParts)]
#[from_request(via(axum::extract::Path), rejection(ApiError))]
pub struct ApiPath<T>(pub T);

/// Query parameters; unparsable ones are `400`.
#[derive(Debug, FromRequestParts)]
#[from_request(via(axum::extract::Query), rejection(ApiError))]
pub struct ApiQuery<T>(pub T);

/// For `#[serde(deserialize_with)]` on optional query parameters: absent
/// or empty (`?before=`) is `None`, anything else must parse.
///
/// # Errors
///
/// The value's own parse error.
pub fn optional<'de, D, T>(deserializer: D) -> Result<Option<T>, D::Error>
where
    D: Deserializer<'de>,
    T: FromStr,
    T::Err: fmt::Display,
{
    match Option::<String>::deserialize(deserializer)? {
        None => Ok(None),
        Some(s) if s.is_empty() => Ok(None),
        Some(s) => s.parse().map(Some).map_err(de::Error::custom),
    }
}

/// A user, group or message id. JSON carries it as a decimal string, since
/// JavaScript numbers lose precision past 2^53 (protobuf's JSON mapping does
/// the same); a JSON number is accepted on input too. Zero is never an id.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Id(pub u64);

impl fmt::Display for Id {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

impl FromStr for Id {
    type Err = &'static str;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        // `u64::from_str` would take a leading `+`; an id is digits.
        if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) {
            return Err("an id is a decimal number");
        }
        match s.parse::<u64>() {
            Ok(0) => Err("an id is never 0"),
            Ok(n) => Ok(Self(n)),
            Err(_) => Err("an id fits in 64 bits"),
        }
    }
}

impl Serialize for Id {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(&self.0)
    }
}

impl<'de> Deserialize<'de> for Id {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct IdVisitor;

        impl Visitor<'_> for IdVisitor {
            type Value = Id;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a non-zero 64-bit id as a decimal string or number")
            }

            fn visit_u64<E: de::Error>(self, v: u64) -> Result<Id, E> {
                if v == 0 {
                    return Err(E::custom("an id is never 0"));
                }
                Ok(Id(v))
            }

            fn visit_i64<E: de::Error>(self, v: i64) -> Result<Id, E> {
                u64::try_from(v)
                    .map_err(|_| E::custom("an id is never negative"))
                    .and_then(|v| self.visit_u64(v))
            }

            fn visit_str<E: de::Error>(self, v: &str) -> Result<Id, E> {
                v.parse().map_err(E::custom)
            }
        }

        deserializer.deserialize_any(IdVisitor)
    }
}

impl PartialSchema for Id {
    fn schema() -> RefOr<Schema> {
        ObjectBuilder::new()
            .schema_type(Type::String)
            .pattern(Some("^[1-9][0-9]{0,19}$"))
            .description(Some(
                "A 64-bit id as a decimal string (numbers accepted on input).",
            ))
            .examples([serde_json::json!("1234567890123456789")])
            .into()
    }
}

impl ToSchema for Id {}

/// Refuses text longer than `max` characters or holding control characters.
pub fn check_text(field: &'static str, text: &str, max: usize) -> Result<(), ApiError> {
    if text.chars().count() > max || text.chars().any(char::is_control) {
        return Err(ApiError::invalid(format!(
            "{field} must be at most {max} characters, without control characters"
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_read_strings_and_numbers_and_write_strings() {
        let a: Id = serde_json::from_str("\"18446744073709551615\"").expect("string");
        let b: Id = serde_json::from_str("42").expect("number");
        assert_eq!((a.0, b.0), (u64::MAX, 42));
        assert_eq!(
            serde_json::to_string(&b).expect("serialize"),
            "\"42\"".to_owned()
        );
        for bad in [
            "0", "\"0\"", "-1", "\"+1\"", "\"1e3\"", "\"\"", "1.5", "null",
        ] {
            assert!(serde_json::from_str::<Id>(bad).is_err(), "{bad}");
        }
    }
}
