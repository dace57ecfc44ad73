//! Bearer tokens: issuing Hanmadi's own, verifying them and applications' JWTs.
//!
//! One configured secret signs and verifies two kinds of token:
//!
//! - **Hanmadi tokens**, issued at log-in: `hm1.<payload>.<mac>`, both parts
//!   unpadded base64url. The payload is 24 bytes, three big-endian `u64`s:
//!   user id, issued-at and expiry, in milliseconds since the Unix epoch. The
//!   MAC is HMAC-SHA256 over the ASCII text `hm1.<payload>`, so the version
//!   prefix is signed too and a token can never be replayed as a JWT (a JWT's
//!   signed text starts with its base64 header, `eyJ`).
//! - **HS256 JWTs** minted by an application's own backend with the same
//!   secret, so a backend can let its users in without a Hanmadi password.
//!   `sub` is the user id as a decimal string and `exp` is required; `iat` and
//!   `nbf` are honoured when present. Only `HS256` is accepted: `none` and
//!   every other algorithm are refused before any signature work.
//!
//! [`TokenIssuer::verify`] tells them apart by prefix, checks the signature in
//! constant time, then the clock. Time is passed in rather than read, so the
//! caller decides what "now" is and tests need no sleeping.
//!
//! Hanmadi tokens get no leeway: the node that issued one and the node that
//! checks it share a clock source, and an expiry a few milliseconds early only
//! sends a client to log in again. JWTs come from another machine's clock, so
//! their `exp`, `nbf` and `iat` are checked with [`JWT_LEEWAY`] of slack.
//!
//! A third kind of bearer token is the **operator's admin token**,
//! `hma1.<mac>`: HMAC-SHA256 under the same secret over the fixed text
//! [`ADMIN_TOKEN_LABEL`]. It names no user and never passes [`TokenIssuer::verify`];
//! only the operator routes (`/v1/admin/...`) take it, through
//! [`TokenIssuer::is_admin_token`]. Anyone holding the secret can derive it
//! (`hanmadi admin-token` prints it), and changing the secret changes it.
//!
//! Revocation is the caller's: an account keeps a "tokens valid after"
//! instant (set when it is deleted or logs out everywhere, `DELETE
//! /v1/sessions`), and
//! [`Claims::issued_before`] / [`Claims::check_not_revoked`] compare with it.

use std::time::Duration;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use hanmadi_proto::ErrorCode;
use hanmadi_storage::kv::Kv;
use hanmadi_storage::{ChatStore, StoreError};
use hmac::{Hmac, Mac};
use sha2::Sha256;

type HmacSha256 = Hmac<Sha256>;

/// The prefix of a Hanmadi token, including its separator.
const HM1_PREFIX: &str = "hm1.";

/// Length of the decoded Hanmadi token payload: user id, issued-at, expiry.
const HM1_PAYLOAD_LEN: usize = 24;

/// The prefix of the operator's admin token, including its separator.
const ADMIN_PREFIX: &str = "hma1.";

/// The text whose HMAC under the token secret is the admin token. Fixed,
/// so every node of a cluster derives the same token from the same secret.
pub const ADMIN_TOKEN_LABEL: &str = "hanmadi admin token v1";

/// Length of an HMAC-SHA256 tag.
const MAC_LEN: usize = 32;

/// Tokens longer than this are refused before any decoding.
///
/// A Hanmadi token is 80 bytes and a typical JWT a few hundred; the bound
/// keeps a hostile `Authorization` header or `Hello` from costing base64 and
/// JSON work proportional to its size.
pub const MAX_TOKEN_LEN: usize = 4096;

/// Clock slack allowed when checking a JWT's `exp`, `nbf` and `iat`.
///
/// JWTs are minted on an application's servers, whose clocks may drift from
/// ours by seconds; 30 s absorbs that and is half of the 60 s common JWT
/// libraries default to.
pub const JWT_LEEWAY: Duration = Duration::from_secs(30);

/// What a verified token says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Claims {
    /// The authenticated user.
    pub user_id: u64,
    /// When the token was issued, in milliseconds since the Unix epoch. For a
    /// JWT without `iat` this is 0, so any revocation covers it.
    pub issued_at_ms: u64,
    /// The first instant at which the token is no longer accepted, in
    /// milliseconds since the Unix epoch.
    pub expires_at_ms: u64,
}

impl Claims {
    /// Whether the token was issued strictly before `ms` (milliseconds since
    /// the Unix epoch).
    ///
    /// With `ms` an account's "tokens valid after" instant, `true` means the
    /// token is revoked.
    #[must_use]
    pub fn issued_before(&self, ms: u64) -> bool {
        self.issued_at_ms < ms
    }

    /// Refuses the token if it was issued before `tokens_valid_after_ms`.
    ///
    /// # Errors
    ///
    /// [`AuthError::Revoked`] when [`Claims::issued_before`] holds.
    pub fn check_not_revoked(&self, tokens_valid_after_ms: u64) -> Result<(), AuthError> {
        if self.issued_before(tokens_valid_after_ms) {
            Err(AuthError::Revoked)
        } else {
            Ok(())
        }
    }
}

/// Why a token was refused.
///
/// Clients get [`AuthError::error_code`] and the message, which tells the
/// developer minting tokens what to fix (an algorithm, a lifetime). A
/// token without the secret's signature gets no further than the shape,
/// the algorithm its own header names, and the signature, whose check takes
/// the same time however wrong it is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    /// Not a token of either kind: wrong shape, bad base64 or JSON, a missing
    /// or unusable claim, or too long.
    #[error("token is malformed")]
    Malformed,
    /// Well formed, but not signed with this server's secret, or altered.
    #[error("token signature does not verify")]
    BadSignature,
    /// Signed correctly, but past its expiry.
    #[error("token has expired")]
    Expired,
    /// A JWT whose `nbf` or `iat` lies in the future.
    #[error("token is not valid yet")]
    NotYetValid,
    /// A token meant to last longer than the server's cap: its expiry is
    /// further than the cap from its issue time, or from now.
    #[error("token lifetime exceeds the server's maximum")]
    LifetimeTooLong,
    /// A JWT signed with anything but HS256, `none` included.
    #[error("token algorithm is not accepted; only HS256 is")]
    UnsupportedAlgorithm,
    /// Issued before the account's tokens were revoked (see
    /// [`Claims::check_not_revoked`]).
    #[error("token has been revoked")]
    Revoked,
    /// Signed correctly, but for an account that does not exist or was
    /// deleted.
    #[error("the token's account does not exist or was deleted")]
    NoAccount,
}

impl AuthError {
    /// The protocol error code a client receives for this refusal.
    ///
    /// Only expiry is told apart, because it alone has a remedy (log in
    /// again); everything else is `TOKEN_INVALID`. `UNAUTHENTICATED` is not
    /// produced here: it means no `Hello` was sent at all.
    #[must_use]
    pub fn error_code(&self) -> ErrorCode {
        match self {
            Self::Expired => ErrorCode::TokenExpired,
            Self::Malformed
            | Self::BadSignature
            | Self::NotYetValid
            | Self::LifetimeTooLong
            | Self::UnsupportedAlgorithm
            | Self::Revoked
            | Self::NoAccount => ErrorCode::TokenInvalid,
        }
    }
}

/// Why [`authenticate`] refused a token.
#[derive(Debug, thiserror::Error)]
pub enum Refusal {
    /// The token itself, or its account, does not let the bearer in.
    #[error(transparent)]
    Token(#[from] AuthError),
    /// The account could not be read: the bearer may be fine, try again.
    #[error("account lookup failed: {0}")]
    Store(#[from] StoreError),
}

/// The one full check of a bearer token, shared by sockets (`Hello`) and
/// the HTTP API: signature and expiry, then the account, which must exist,
/// not be deleted, and not have revoked the tokens issued before some
/// instant (deleting an account revokes all of them). Returns the user.
///
/// # Errors
///
/// [`Refusal::Token`] for a refused token, [`Refusal::Store`] when the
/// account cannot be read.
pub async fn authenticate<K: Kv>(
    issuer: &TokenIssuer,
    store: &ChatStore<K>,
    token: &str,
    now_ms: u64,
) -> Result<u64, Refusal> {
    let claims = issuer.verify(token, now_ms)?;
    match store.user(claims.user_id).await? {
        Some(account) if !account.deleted => {
            claims.check_not_revoked(account.tokens_valid_after)?;
            Ok(claims.user_id)
        }
        _ => Err(AuthError::NoAccount.into()),
    }
}

/// Issues Hanmadi tokens and verifies them and applications' HS256 JWTs.
///
/// Cheap to share behind an `Arc`: verification only reads the keys.
#[derive(Clone)]
pub struct TokenIssuer {
    /// HMAC state keyed once; cloning it is cheaper than re-keying per token.
    /// Hanmadi tokens, JWTs and the admin token all use it.
    mac: HmacSha256,
    /// Longest lifetime a token may claim (`None`: no cap).
    max_ttl_ms: Option<u64>,
}

impl std::fmt::Debug for TokenIssuer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The keys are the secret; never let them reach a log.
        f.debug_struct("TokenIssuer").finish_non_exhaustive()
    }
}

impl TokenIssuer {
    /// Keys an issuer with the server's token secret.
    ///
    /// Any length works for HMAC, but RFC 7518 §3.2 asks for at least 32
    /// bytes for HS256; [`crate::config::Config::resolve_secret`] enforces
    /// that for configured secrets.
    #[must_use]
    pub fn new(secret: &[u8]) -> Self {
        // HMAC takes keys of any length (longer ones are hashed first), so
        // there is no error to handle.
        let mac = HmacSha256::new_from_slice(secret).expect("HMAC accepts keys of any length");
        Self {
            mac,
            max_ttl_ms: None,
        }
    }

    /// Caps the lifetime of accepted tokens at `max_ttl`: a token whose
    /// expiry lies further than that from its issue time (when it states
    /// one) or from now is refused with [`AuthError::LifetimeTooLong`], so
    /// a leaked long-lived JWT from an application's backend is not good for
    /// years.
    #[must_use]
    pub fn with_max_ttl(mut self, max_ttl: Duration) -> Self {
        self.max_ttl_ms = Some(u64::try_from(max_ttl.as_millis()).unwrap_or(u64::MAX));
        self
    }

    /// Refuses claims past the lifetime cap. `issued_at_ms` is `None` for
    /// a JWT without `iat`.
    fn check_lifetime(
        &self,
        issued_at_ms: Option<u64>,
        expires_at_ms: u64,
        now_ms: u64,
    ) -> Result<(), AuthError> {
        let Some(max) = self.max_ttl_ms else {
            return Ok(());
        };
        let from_issue = issued_at_ms.map_or(0, |iat| expires_at_ms.saturating_sub(iat));
        if from_issue > max || expires_at_ms.saturating_sub(now_ms) > max {
            return Err(AuthError::LifetimeTooLong);
        }
        Ok(())
    }

    /// The operator's admin token for this secret: `hma1.` and the unpadded
    /// base64url HMAC-SHA256 of [`ADMIN_TOKEN_LABEL`].
    #[must_use]
    pub fn admin_token(&self) -> String {
        let mut mac = self.mac.clone();
        mac.update(ADMIN_TOKEN_LABEL.as_bytes());
        let mut token = String::from(ADMIN_PREFIX);
        URL_SAFE_NO_PAD.encode_string(mac.finalize().into_bytes(), &mut token);
        token
    }

    /// Whether `token` is this secret's admin token, compared in constant
    /// time. Never panics, whatever `token` holds.
    #[must_use]
    pub fn is_admin_token(&self, token: &str) -> bool {
        let Some(tag) = token.strip_prefix(ADMIN_PREFIX) else {
            return false;
        };
        let Ok(tag) = decode_fixed::<MAC_LEN>(tag) else {
            return false;
        };
        let mut mac = self.mac.clone();
        mac.update(ADMIN_TOKEN_LABEL.as_bytes());
        mac.verify_slice(&tag).is_ok()
    }

    /// Issues a Hanmadi token for `user_id`, valid from `now_ms` for `ttl`.
    ///
    /// The expiry saturates at `u64::MAX` milliseconds rather than wrapping.
    #[must_use]
    pub fn issue(&self, user_id: u64, now_ms: u64, ttl: Duration) -> String {
        let ttl_ms = u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX);
        let expires_at_ms = now_ms.saturating_add(ttl_ms);

        let mut payload = [0u8; HM1_PAYLOAD_LEN];
        payload[0..8].copy_from_slice(&user_id.to_be_bytes());
        payload[8..16].copy_from_slice(&now_ms.to_be_bytes());
        payload[16..24].copy_from_slice(&expires_at_ms.to_be_bytes());

        let mut token = String::with_capacity(80);
        token.push_str(HM1_PREFIX);
        URL_SAFE_NO_PAD.encode_string(payload, &mut token);

        let mut mac = self.mac.clone();
        mac.update(token.as_bytes());
        let tag = mac.finalize().into_bytes();

        token.push('.');
        URL_SAFE_NO_PAD.encode_string(tag, &mut token);
        token
    }

    /// Verifies a Hanmadi token or an HS256 JWT at time `now_ms`
    /// (milliseconds since the Unix epoch).
    ///
    /// Never panics, whatever `token` holds.
    ///
    /// # Errors
    ///
    /// [`AuthError::Malformed`] for anything that is neither kind of token
    /// (including the empty string and strings over [`MAX_TOKEN_LEN`]),
    /// [`AuthError::UnsupportedAlgorithm`] for a JWT not signed with HS256,
    /// [`AuthError::BadSignature`] when the signature does not match this
    /// secret, [`AuthError::Expired`] at or after the expiry, and
    /// [`AuthError::NotYetValid`] for a JWT whose `nbf` or `iat` is ahead of
    /// `now_ms` by more than [`JWT_LEEWAY`]. Revocation is checked by the
    /// caller ([`Claims::check_not_revoked`]).
    pub fn verify(&self, token: &str, now_ms: u64) -> Result<Claims, AuthError> {
        if token.len() > MAX_TOKEN_LEN {
            return Err(AuthError::Malformed);
        }
        if let Some(rest) = token.strip_prefix(HM1_PREFIX) {
            self.verify_hm1(token, rest, now_ms)
        } else if token.starts_with("eyJ") && token.split('.').count() == 3 {
            self.verify_jwt(token, now_ms)
        } else {
            Err(AuthError::Malformed)
        }
    }

    /// `token` is the whole token, `rest` what follows `hm1.`.
    fn verify_hm1(&self, token: &str, rest: &str, now_ms: u64) -> Result<Claims, AuthError> {
        let (payload_b64, tag_b64) = rest.split_once('.').ok_or(AuthError::Malformed)?;
        let signed = &token[..HM1_PREFIX.len() + payload_b64.len()];

        let payload = decode_fixed::<HM1_PAYLOAD_LEN>(payload_b64)?;
        let tag = decode_fixed::<MAC_LEN>(tag_b64)?;

        let mut mac = self.mac.clone();
        mac.update(signed.as_bytes());
        mac.verify_slice(&tag)
            .map_err(|_| AuthError::BadSignature)?;

        let field = |i: usize| {
            let mut bytes = [0u8; 8];
            bytes.copy_from_slice(&payload[i * 8..i * 8 + 8]);
            u64::from_be_bytes(bytes)
        };
        let claims = Claims {
            user_id: field(0),
            issued_at_ms: field(1),
            expires_at_ms: field(2),
        };
        if now_ms >= claims.expires_at_ms {
            return Err(AuthError::Expired);
        }
        self.check_lifetime(Some(claims.issued_at_ms), claims.expires_at_ms, now_ms)?;
        Ok(claims)
    }

    /// Verifies an HS256 JWT (RFC 7519, compact JWS form) by hand: the
    /// header must name `HS256` before any signature work, the signature is
    /// HMAC-SHA256 over `<header>.<claims>` compared in constant time, and
    /// only then are the claims parsed.
    fn verify_jwt(&self, token: &str, now_ms: u64) -> Result<Claims, AuthError> {
        let mut parts = token.split('.');
        let (Some(header_b64), Some(claims_b64), Some(signature_b64), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err(AuthError::Malformed);
        };

        let header = URL_SAFE_NO_PAD
            .decode(header_b64)
            .map_err(|_| AuthError::Malformed)?;
        let header: JwtHeader =
            serde_json::from_slice(&header).map_err(|_| AuthError::Malformed)?;
        if header.alg != "HS256" {
            return Err(AuthError::UnsupportedAlgorithm);
        }

        let signature = decode_fixed::<MAC_LEN>(signature_b64)?;
        let signed = &token[..header_b64.len() + 1 + claims_b64.len()];
        let mut mac = self.mac.clone();
        mac.update(signed.as_bytes());
        mac.verify_slice(&signature)
            .map_err(|_| AuthError::BadSignature)?;

        let claims = URL_SAFE_NO_PAD
            .decode(claims_b64)
            .map_err(|_| AuthError::Malformed)?;
        let claims: JwtClaims =
            serde_json::from_slice(&claims).map_err(|_| AuthError::Malformed)?;

        // `u64::from_str` would also take a leading `+`; a user id is digits.
        if !claims.sub.bytes().all(|b| b.is_ascii_digit()) {
            return Err(AuthError::Malformed);
        }
        let user_id: u64 = claims.sub.parse().map_err(|_| AuthError::Malformed)?;
        let expires_at_ms = numeric_date_ms(claims.exp)?;
        let leeway_ms = u64::try_from(JWT_LEEWAY.as_millis()).unwrap_or(u64::MAX);

        if now_ms >= expires_at_ms.saturating_add(leeway_ms) {
            return Err(AuthError::Expired);
        }
        if let Some(nbf) = claims.nbf {
            if numeric_date_ms(nbf)? > now_ms.saturating_add(leeway_ms) {
                return Err(AuthError::NotYetValid);
            }
        }
        // A future `iat` would let a token outlive a revocation made before
        // that instant, so it is refused like a future `nbf`.
        let issued_at_ms = match claims.iat {
            Some(iat) => {
                let iat = numeric_date_ms(iat)?;
                if iat > now_ms.saturating_add(leeway_ms) {
                    return Err(AuthError::NotYetValid);
                }
                iat
            }
            None => 0,
        };
        self.check_lifetime(claims.iat.map(|_| issued_at_ms), expires_at_ms, now_ms)?;
        Ok(Claims {
            user_id,
            issued_at_ms,
            expires_at_ms,
        })
    }
}

/// Signs `claims` as an HS256 JWT under `secret`, as an application's
/// backend mints one for [`TokenIssuer::verify`]: header
/// `{"alg":"HS256","typ":"JWT"}`, then the claims, both unpadded base64url
/// JSON, then the HMAC-SHA256 of the two joined by a dot.
///
/// # Errors
///
/// When `claims` cannot be serialized to JSON.
pub fn sign_hs256_jwt<C: serde::Serialize + ?Sized>(
    secret: &[u8],
    claims: &C,
) -> Result<String, serde_json::Error> {
    let claims = serde_json::to_vec(claims)?;
    let mut token = String::new();
    URL_SAFE_NO_PAD.encode_string(br#"{"alg":"HS256","typ":"JWT"}"#, &mut token);
    token.push('.');
    URL_SAFE_NO_PAD.encode_string(claims, &mut token);
    let mut mac = HmacSha256::new_from_slice(secret).expect("HMAC accepts keys of any length");
    mac.update(token.as_bytes());
    token.push('.');
    URL_SAFE_NO_PAD.encode_string(mac.finalize().into_bytes(), &mut token);
    Ok(token)
}

/// The one JWT header field Hanmadi reads; `typ`, `kid` and the rest are
/// ignored.
#[derive(serde::Deserialize)]
struct JwtHeader {
    alg: String,
}

/// The JWT claims Hanmadi reads; any others are ignored.
#[derive(serde::Deserialize)]
struct JwtClaims {
    sub: String,
    /// RFC 7519 NumericDates are seconds and may carry a fraction.
    exp: f64,
    iat: Option<f64>,
    nbf: Option<f64>,
}

/// A JWT NumericDate (seconds, possibly fractional) in milliseconds.
fn numeric_date_ms(seconds: f64) -> Result<u64, AuthError> {
    if !seconds.is_finite() || seconds < 0.0 {
        return Err(AuthError::Malformed);
    }
    // `as` saturates for floats, so absurdly far dates become u64::MAX.
    Ok((seconds * 1000.0) as u64)
}

/// Decodes unpadded base64url that must yield exactly `N` bytes.
fn decode_fixed<const N: usize>(b64: &str) -> Result<[u8; N], AuthError> {
    // Checking the encoded length first keeps a long part from being decoded
    // only to be thrown away.
    if b64.len() != base64::encoded_len(N, false).unwrap_or(0) {
        return Err(AuthError::Malformed);
    }
    let mut out = [0u8; N];
    match URL_SAFE_NO_PAD.decode_slice(b64, &mut out) {
        Ok(n) if n == N => Ok(out),
        _ => Err(AuthError::Malformed),
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const SECRET: &[u8] = b"0123456789abcdef0123456789abcdef";
    const NOW: u64 = 1_700_000_000_000;
    const HOUR: Duration = Duration::from_secs(3600);

    fn issuer() -> TokenIssuer {
        TokenIssuer::new(SECRET)
    }

    #[test]
    fn round_trip() {
        let t = issuer().issue(42, NOW, HOUR);
        assert!(t.starts_with("hm1."));
        assert_eq!(t.len(), 80);
        let c = issuer().verify(&t, NOW + 1).unwrap();
        assert_eq!(
            c,
            Claims {
                user_id: 42,
                issued_at_ms: NOW,
                expires_at_ms: NOW + 3_600_000
            }
        );
    }

    #[test]
    fn extreme_values_round_trip() {
        let t = issuer().issue(u64::MAX, 0, Duration::MAX);
        let c = issuer().verify(&t, u64::MAX - 1).unwrap();
        assert_eq!(c.user_id, u64::MAX);
        assert_eq!(c.expires_at_ms, u64::MAX);
    }

    #[test]
    fn wrong_secret_is_bad_signature() {
        let t = issuer().issue(42, NOW, HOUR);
        let other = TokenIssuer::new(b"another secret of thirty-two b..");
        assert_eq!(other.verify(&t, NOW), Err(AuthError::BadSignature));
    }

    #[test]
    fn tampered_payload_is_bad_signature() {
        let t = issuer().issue(42, NOW, HOUR);
        let (_, rest) = t.split_once('.').unwrap();
        let (payload_b64, tag) = rest.split_once('.').unwrap();
        let mut payload = URL_SAFE_NO_PAD.decode(payload_b64).unwrap();
        payload[7] ^= 1; // user 42 -> 43
        let forged = format!("hm1.{}.{tag}", URL_SAFE_NO_PAD.encode(&payload));
        assert_eq!(issuer().verify(&forged, NOW), Err(AuthError::BadSignature));

        // Every single-character change anywhere is refused one way or another.
        for i in 0..t.len() {
            let mut bytes = t.clone().into_bytes();
            bytes[i] = if bytes[i] == b'A' { b'B' } else { b'A' };
            let s = String::from_utf8(bytes).unwrap();
            if s != t {
                assert!(issuer().verify(&s, NOW).is_err(), "accepted {s}");
            }
        }
    }

    #[test]
    fn expired() {
        let t = issuer().issue(42, NOW, HOUR);
        let exp = NOW + 3_600_000;
        assert!(issuer().verify(&t, exp - 1).is_ok());
        assert_eq!(issuer().verify(&t, exp), Err(AuthError::Expired));
        assert_eq!(issuer().verify(&t, u64::MAX), Err(AuthError::Expired));
        assert_eq!(AuthError::Expired.error_code(), ErrorCode::TokenExpired);
        assert_eq!(
            AuthError::BadSignature.error_code(),
            ErrorCode::TokenInvalid
        );
    }

    #[test]
    fn signature_checked_before_expiry() {
        // A forged token must not learn whether its claims would have expired.
        let t = TokenIssuer::new(b"not the server secret, not at all").issue(1, NOW, HOUR);
        assert_eq!(issuer().verify(&t, u64::MAX), Err(AuthError::BadSignature));
    }

    #[test]
    fn revocation_helpers() {
        let c = issuer().verify(&issuer().issue(1, NOW, HOUR), NOW).unwrap();
        assert!(c.issued_before(NOW + 1));
        assert!(!c.issued_before(NOW));
        assert_eq!(c.check_not_revoked(NOW + 1), Err(AuthError::Revoked));
        assert_eq!(c.check_not_revoked(NOW), Ok(()));
        assert_eq!(AuthError::Revoked.error_code(), ErrorCode::TokenInvalid);
    }

    #[test]
    fn garbage_is_malformed() {
        let huge = "a".repeat(1 << 20);
        let huge_hm1 = format!("hm1.{huge}.{huge}");
        let huge_jwt = format!("eyJ{huge}.{huge}.{huge}");
        let cases: Vec<&str> = vec![
            "",
            ".",
            "..",
            "hm1.",
            "hm1..",
            "hm1.a.b",
            "hm1.!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!.AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA",
            "hm1.AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA.AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA",
            "hm2.AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA.AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA",
            "Bearer hm1.x.y",
            "eyJ",
            "eyJ.eyJ.",
            "eyJhbGciOiJIUzI1NiJ9.e30.",
            "eyJhbGciOiJIUzI1NiJ9.e30.x.y",
            "한마디.한마디.한마디",
            "hm1.한마디.한마디",
            "eyJ한마디.한마디.한마디",
            "\u{0}\u{0}\u{0}",
            &huge,
            &huge_hm1,
            &huge_jwt,
        ];
        for s in cases {
            let got = issuer().verify(s, NOW);
            assert!(
                matches!(got, Err(AuthError::Malformed | AuthError::BadSignature)),
                "{:?} -> {got:?}",
                s.chars().take(40).collect::<String>()
            );
        }
        assert_eq!(issuer().verify("", NOW), Err(AuthError::Malformed));
        assert_eq!(issuer().verify(&huge, NOW), Err(AuthError::Malformed));
        assert_eq!(issuer().verify("한마디", NOW), Err(AuthError::Malformed));
        assert_eq!(issuer().verify("hm1.a.b", NOW), Err(AuthError::Malformed));
    }

    #[test]
    fn hm1_with_trailing_parts_is_malformed() {
        let t = issuer().issue(42, NOW, HOUR);
        assert_eq!(
            issuer().verify(&format!("{t}.x"), NOW),
            Err(AuthError::Malformed)
        );
        assert_eq!(
            issuer().verify(&format!("{t}A"), NOW),
            Err(AuthError::Malformed)
        );
    }

    #[test]
    fn lifetimes_past_the_cap_are_refused() {
        let capped = issuer().with_max_ttl(HOUR);
        let ok = issuer().issue(1, NOW, HOUR);
        assert!(capped.verify(&ok, NOW).is_ok());
        let long = issuer().issue(1, NOW, HOUR * 2);
        assert_eq!(capped.verify(&long, NOW), Err(AuthError::LifetimeTooLong));
        // Without a cap the same token passes.
        assert!(issuer().verify(&long, NOW).is_ok());

        let s = NOW / 1000;
        let jwt = |claims: serde_json::Value| sign_hs256_jwt(SECRET, &claims).unwrap();
        // exp − iat over the cap.
        let t = jwt(serde_json::json!({"sub": "1", "iat": s - 3600, "exp": s + 60}));
        assert_eq!(capped.verify(&t, NOW), Err(AuthError::LifetimeTooLong));
        // No iat: exp − now over the cap.
        let t = jwt(serde_json::json!({"sub": "1", "exp": s + 2 * 3600}));
        assert_eq!(capped.verify(&t, NOW), Err(AuthError::LifetimeTooLong));
        let t = jwt(serde_json::json!({"sub": "1", "exp": s + 600}));
        assert!(capped.verify(&t, NOW).is_ok());
        assert_eq!(
            AuthError::LifetimeTooLong.error_code(),
            ErrorCode::TokenInvalid
        );
    }

    #[test]
    fn debug_hides_the_key() {
        let s = format!("{:?}", issuer());
        assert!(!s.contains("0123456789"));
    }

    proptest! {
        #[test]
        fn any_string_never_panics(s in any::<String>()) {
            let _ = issuer().verify(&s, NOW);
            let _ = issuer().verify(&format!("hm1.{s}"), NOW);
            let _ = issuer().verify(&format!("eyJ{s}.{s}.{s}"), NOW);
        }

        #[test]
        fn any_claims_round_trip(user in any::<u64>(), now in any::<u64>(), ttl_ms in 1u64..u64::MAX) {
            let t = issuer().issue(user, now, Duration::from_millis(ttl_ms));
            let exp = now.saturating_add(ttl_ms);
            let got = issuer().verify(&t, now);
            if now < exp {
                prop_assert_eq!(got, Ok(Claims { user_id: user, issued_at_ms: now, expires_at_ms: exp }));
            } else {
                prop_assert_eq!(got, Err(AuthError::Expired));
            }
        }
    }

    mod jwt {
        use super::*;
        use serde_json::json;

        const NOW_S: u64 = NOW / 1000;

        #[derive(Clone, Copy)]
        enum Algorithm {
            HS256,
            HS384,
            HS512,
        }

        /// A JWT signed with an HMAC algorithm of the family, so tests can
        /// offer the server algorithms it must refuse.
        fn mint(alg: Algorithm, secret: &[u8], claims: &serde_json::Value) -> String {
            fn sign<M: Mac + hmac::digest::KeyInit>(secret: &[u8], text: &str) -> Vec<u8> {
                let mut mac = <M as Mac>::new_from_slice(secret).unwrap();
                mac.update(text.as_bytes());
                mac.finalize().into_bytes().to_vec()
            }
            let name = match alg {
                Algorithm::HS256 => "HS256",
                Algorithm::HS384 => "HS384",
                Algorithm::HS512 => "HS512",
            };
            let header = URL_SAFE_NO_PAD.encode(format!(r#"{{"alg":"{name}","typ":"JWT"}}"#));
            let body = URL_SAFE_NO_PAD.encode(claims.to_string());
            let signed = format!("{header}.{body}");
            let tag = match alg {
                Algorithm::HS256 => sign::<Hmac<Sha256>>(secret, &signed),
                Algorithm::HS384 => sign::<Hmac<sha2::Sha384>>(secret, &signed),
                Algorithm::HS512 => sign::<Hmac<sha2::Sha512>>(secret, &signed),
            };
            format!("{signed}.{}", URL_SAFE_NO_PAD.encode(tag))
        }

        #[test]
        fn sign_hs256_jwt_matches_the_verifier() {
            let claims = json!({"sub": "42", "exp": NOW_S + 60});
            let t = sign_hs256_jwt(SECRET, &claims).unwrap();
            assert_eq!(t, mint(Algorithm::HS256, SECRET, &claims));
            assert_eq!(issuer().verify(&t, NOW).unwrap().user_id, 42);
        }

        #[test]
        fn bad_signature_checked_before_claims() {
            // Claims that do not parse, under a forged signature, report the
            // signature: nothing of the claims is read before it verifies.
            let t = mint(
                Algorithm::HS256,
                b"some other application secret!!!",
                &json!([1]),
            );
            assert_eq!(issuer().verify(&t, NOW), Err(AuthError::BadSignature));
            // A signature of the wrong length is not a signature at all.
            let t = hs256(&json!({"sub": "42", "exp": NOW_S + 60}));
            assert_eq!(
                issuer().verify(&format!("{t}AA"), NOW),
                Err(AuthError::Malformed)
            );
        }

        fn hs256(claims: &serde_json::Value) -> String {
            mint(Algorithm::HS256, SECRET, claims)
        }

        /// A hand-made token for user 42 with this header and signature,
        /// for algorithms no HMAC key can mint.
        fn forged(header: &[u8], signature: &str) -> String {
            let header = URL_SAFE_NO_PAD.encode(header);
            let body = URL_SAFE_NO_PAD.encode(format!(r#"{{"sub":"42","exp":{}}}"#, NOW_S + 60));
            format!("{header}.{body}.{signature}")
        }

        #[test]
        fn valid() {
            let t = hs256(&json!({"sub": "42", "exp": NOW_S + 60, "iat": NOW_S - 5}));
            assert!(t.starts_with("eyJ"));
            let c = issuer().verify(&t, NOW).unwrap();
            assert_eq!(
                c,
                Claims {
                    user_id: 42,
                    issued_at_ms: (NOW_S - 5) * 1000,
                    expires_at_ms: (NOW_S + 60) * 1000
                }
            );
        }

        #[test]
        fn without_iat_counts_as_issued_at_zero() {
            let t =
                hs256(&json!({"sub": "7", "exp": NOW_S + 60, "aud": "my-app", "extra": [1, 2]}));
            let c = issuer().verify(&t, NOW).unwrap();
            assert_eq!(c.issued_at_ms, 0);
            assert!(c.issued_before(1));
        }

        #[test]
        fn fractional_dates() {
            let t = hs256(&json!({"sub": "7", "exp": (NOW_S + 60) as f64 + 0.5}));
            let c = issuer().verify(&t, NOW).unwrap();
            assert_eq!(c.expires_at_ms, (NOW_S + 60) * 1000 + 500);
        }

        #[test]
        fn expired_with_leeway() {
            let t = hs256(&json!({"sub": "42", "exp": NOW_S}));
            let leeway = u64::try_from(JWT_LEEWAY.as_millis()).unwrap();
            assert!(issuer().verify(&t, NOW + leeway - 1).is_ok());
            assert_eq!(issuer().verify(&t, NOW + leeway), Err(AuthError::Expired));
        }

        #[test]
        fn not_yet_valid() {
            let far = NOW_S + 3600;
            let t = hs256(&json!({"sub": "42", "exp": far + 60, "nbf": far}));
            assert_eq!(issuer().verify(&t, NOW), Err(AuthError::NotYetValid));
            assert!(issuer().verify(&t, far * 1000).is_ok());
            let t = hs256(&json!({"sub": "42", "exp": far + 60, "iat": far}));
            assert_eq!(issuer().verify(&t, NOW), Err(AuthError::NotYetValid));
            // Small skew is tolerated.
            let t =
                hs256(&json!({"sub": "42", "exp": NOW_S + 60, "iat": NOW_S + 2, "nbf": NOW_S + 2}));
            assert!(issuer().verify(&t, NOW).is_ok());
        }

        #[test]
        fn wrong_secret() {
            let t = mint(
                Algorithm::HS256,
                b"some other application secret!!!",
                &json!({"sub": "42", "exp": NOW_S + 60}),
            );
            assert_eq!(issuer().verify(&t, NOW), Err(AuthError::BadSignature));
        }

        #[test]
        fn tampered_claims() {
            let t = hs256(&json!({"sub": "42", "exp": NOW_S + 60}));
            let parts: Vec<&str> = t.split('.').collect();
            let body = URL_SAFE_NO_PAD.encode(br#"{"sub":"1","exp":99999999999}"#);
            let forged = format!("{}.{}.{}", parts[0], body, parts[2]);
            assert_eq!(issuer().verify(&forged, NOW), Err(AuthError::BadSignature));
        }

        #[test]
        fn alg_none_refused() {
            for sig in ["", "AAAA"] {
                let t = forged(br#"{"alg":"none","typ":"JWT"}"#, sig);
                assert_eq!(
                    issuer().verify(&t, NOW),
                    Err(AuthError::UnsupportedAlgorithm),
                    "{t}"
                );
            }
            let t = forged(br#"{"alg":"None"}"#, "");
            assert_eq!(
                issuer().verify(&t, NOW),
                Err(AuthError::UnsupportedAlgorithm)
            );
        }

        #[test]
        fn other_hmac_algorithms_refused() {
            for alg in [Algorithm::HS384, Algorithm::HS512] {
                let t = mint(alg, SECRET, &json!({"sub": "42", "exp": NOW_S + 60}));
                assert_eq!(
                    issuer().verify(&t, NOW),
                    Err(AuthError::UnsupportedAlgorithm)
                );
            }
            // An asymmetric algorithm named in the header with an HMAC tag
            // (the classic key-confusion attack) is refused by name.
            let t = forged(br#"{"alg":"RS256"}"#, "AAAA");
            assert_eq!(
                issuer().verify(&t, NOW),
                Err(AuthError::UnsupportedAlgorithm)
            );
        }

        #[test]
        fn bad_subjects_and_missing_claims() {
            for claims in [
                json!({"sub": "alice", "exp": NOW_S + 60}),
                json!({"sub": "-1", "exp": NOW_S + 60}),
                json!({"sub": "+42", "exp": NOW_S + 60}),
                json!({"sub": " 42", "exp": NOW_S + 60}),
                json!({"sub": "18446744073709551616", "exp": NOW_S + 60}),
                json!({"sub": 42, "exp": NOW_S + 60}),
                json!({"sub": "", "exp": NOW_S + 60}),
                json!({"exp": NOW_S + 60}),
                json!({"sub": "42"}),
                json!({"sub": "42", "exp": "soon"}),
                json!({"sub": "42", "exp": -5}),
                json!({"sub": "42", "exp": NOW_S + 60, "nbf": "x"}),
                json!([1, 2, 3]),
            ] {
                let t = hs256(&claims);
                assert_eq!(
                    issuer().verify(&t, NOW),
                    Err(AuthError::Malformed),
                    "{claims}"
                );
            }
        }

        #[test]
        fn hm1_secret_shared_with_jwt() {
            // Both kinds verify under the one configured secret.
            let i = issuer();
            let a = i.issue(5, NOW, HOUR);
            let b = hs256(&json!({"sub": "5", "exp": NOW_S + 60}));
            assert_eq!(i.verify(&a, NOW).unwrap().user_id, 5);
            assert_eq!(i.verify(&b, NOW).unwrap().user_id, 5);
        }
    }

    #[test]
    fn admin_token_is_derived_and_checked_in_constant_time() {
        let i = issuer();
        let token = i.admin_token();
        assert!(token.starts_with("hma1."));
        assert!(i.is_admin_token(&token));
        // Another secret derives another token.
        let other = TokenIssuer::new(b"another secret of thirty-two bytes!");
        assert!(!other.is_admin_token(&token));
        // Nothing else passes, and the admin token is no user token.
        for bad in [
            "",
            "hma1.",
            "hma1.x",
            &token[..token.len() - 1],
            "hm1.abc.def",
        ] {
            assert!(!i.is_admin_token(bad), "{bad}");
        }
        let mut flipped = token.clone().into_bytes();
        let last = flipped.len() - 2;
        flipped[last] = if flipped[last] == b'A' { b'B' } else { b'A' };
        assert!(!i.is_admin_token(std::str::from_utf8(&flipped).unwrap()));
        assert_eq!(i.verify(&token, NOW), Err(AuthError::Malformed));
    }
}
