//! Console sessions: who is signed in, carried in a cookie the server can check without
//! storing anything.
//!
//! A session is `v1.<role>.<expires unix>.<nonce>.<mac>`, the MAC an HMAC-SHA256 keyed by
//! [`api::Tokens::session_key`], itself derived from the digest of that role's token. Every
//! replica with the same tokens accepts the same sessions, and changing a role's token ends
//! its sessions at once; the token is never in the cookie. Each session's CSRF token is an
//! HMAC of its nonce under the same key, so a form carries a value no other site can know
//! and the server keeps no state for it.

use std::time::Duration;

use api::{Role, Tokens};
use axum::http::HeaderMap;
use axum::http::header::COOKIE;
use hmac::{Hmac, Mac};
use sha2::Sha256;
use subtle::ConstantTimeEq;
use time::OffsetDateTime;
use uuid::Uuid;

/// The session cookie's name.
pub const SESSION_COOKIE: &str = "kl_console";
/// The cookie holding the sign-in form's CSRF value until a session exists.
pub const SIGNIN_COOKIE: &str = "kl_console_signin";
/// How long a session lasts: one working day.
pub const SESSION_LIFETIME: Duration = Duration::from_secs(12 * 3600);

type HmacSha256 = Hmac<Sha256>;

/// A signed-in role, checked.
#[derive(Debug, Clone)]
pub struct Session {
    pub role: Role,
    pub expires_at: OffsetDateTime,
    nonce: String,
    key: [u8; 32],
}

impl Session {
    /// A fresh session for `role`, or `None` when the role has no token configured.
    pub fn start(tokens: &Tokens, role: Role, now: OffsetDateTime) -> Option<Self> {
        Some(Self {
            role,
            expires_at: now + SESSION_LIFETIME,
            nonce: Uuid::new_v4().simple().to_string(),
            key: tokens.session_key(role)?,
        })
    }

    /// The cookie's value.
    pub fn cookie_value(&self) -> String {
        let body = self.body();
        let mac = mac(&self.key, body.as_bytes());
        format!("{body}.{mac}")
    }

    /// The CSRF token every POST form of this session carries.
    pub fn csrf_token(&self) -> String {
        mac(&self.key, format!("csrf.{}", self.nonce).as_bytes())
    }

    /// Whether `presented` is this session's CSRF token (in constant time).
    pub fn csrf_matches(&self, presented: &str) -> bool {
        constant_time_equal(presented, &self.csrf_token())
    }

    fn body(&self) -> String {
        format!(
            "v1.{}.{}.{}",
            self.role.as_str(),
            self.expires_at.unix_timestamp(),
            self.nonce
        )
    }

    /// The session a request's cookie holds, if it is well formed, signed by the current
    /// token of its role and not expired.
    pub fn from_headers(headers: &HeaderMap, tokens: &Tokens, now: OffsetDateTime) -> Option<Self> {
        let value = cookie(headers, SESSION_COOKIE)?;
        let (body, presented_mac) = value.rsplit_once('.')?;
        let mut parts = body.split('.');
        let (version, role, expires, nonce) =
            (parts.next()?, parts.next()?, parts.next()?, parts.next()?);
        if version != "v1" || parts.next().is_some() {
            return None;
        }
        let role = role_named(role)?;
        let key = tokens.session_key(role)?;
        if !constant_time_equal(presented_mac, &mac(&key, body.as_bytes())) {
            return None;
        }
        let expires_at = OffsetDateTime::from_unix_timestamp(expires.parse().ok()?).ok()?;
        if expires_at <= now {
            return None;
        }
        Some(Self {
            role,
            expires_at,
            nonce: nonce.to_owned(),
            key,
        })
    }
}

fn role_named(name: &str) -> Option<Role> {
    [Role::Admin, Role::Auditor, Role::Service]
        .into_iter()
        .find(|role| role.as_str() == name)
}

fn mac(key: &[u8; 32], message: &[u8]) -> String {
    // HMAC pads a short key with zeros to the hash's block size (RFC 2104), so padding it
    // here gives the same MAC through the constructor that cannot fail.
    let mut block = [0u8; 64];
    block[..key.len()].copy_from_slice(key);
    let mut mac = <HmacSha256 as hmac::digest::KeyInit>::new(&block.into());
    mac.update(message);
    hex::encode(mac.finalize().into_bytes())
}

pub fn constant_time_equal(a: &str, b: &str) -> bool {
    a.len() == b.len() && bool::from(a.as_bytes().ct_eq(b.as_bytes()))
}

/// The value of cookie `name` in a request's `Cookie` headers.
pub fn cookie<'h>(headers: &'h HeaderMap, name: &str) -> Option<&'h str> {
    headers
        .get_all(COOKIE)
        .iter()
        .filter_map(|value| value.to_str().ok())
        .flat_map(|value| value.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(key, _)| *key == name)
        .map(|(_, value)| value)
}

/// A `Set-Cookie` value for the console: HttpOnly, SameSite=Strict, scoped to `/console`.
/// `Secure` is added when the request reached us over HTTPS (through a proxy that says so):
/// a browser drops a Secure cookie set over plain HTTP on anything but localhost.
pub fn set_cookie(name: &str, value: &str, max_age: Duration, secure: bool) -> String {
    let secure = if secure { "; Secure" } else { "" };
    format!(
        "{name}={value}; Path=/console; HttpOnly; SameSite=Strict; Max-Age={}{secure}",
        max_age.as_secs()
    )
}

/// Whether the request came over HTTPS, as a TLS-terminating proxy reports it.
pub fn over_https(headers: &HeaderMap) -> bool {
    headers
        .get("x-forwarded-proto")
        .and_then(|value| value.to_str().ok())
        .is_some_and(|proto| proto.eq_ignore_ascii_case("https"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use api::Secret;
    use axum::http::HeaderValue;

    fn tokens(admin: &str) -> Tokens {
        Tokens::new(
            Some(&Secret::new(admin)),
            None,
            Some(&Secret::new("auditor-token-0123456789")),
        )
    }

    fn headers_with(session: &str) -> HeaderMap {
        let mut headers = HeaderMap::new();
        let cookie = format!("other=1; {SESSION_COOKIE}={session}");
        headers.insert(COOKIE, HeaderValue::from_str(&cookie).expect("header"));
        headers
    }

    #[test]
    fn a_session_survives_the_round_trip_and_nothing_forged_does() {
        let now = OffsetDateTime::now_utc();
        let tokens = tokens("admin-token-0123456789");
        let session = Session::start(&tokens, Role::Auditor, now).expect("auditor has a token");
        let value = session.cookie_value();
        assert!(!value.contains("auditor-token"), "{value}");
        let back = Session::from_headers(&headers_with(&value), &tokens, now).expect("valid");
        assert_eq!(back.role, Role::Auditor);
        assert!(back.csrf_matches(&session.csrf_token()));
        assert!(!back.csrf_matches("0"));

        let promoted = value.replacen("auditor", "admin", 1);
        assert!(Session::from_headers(&headers_with(&promoted), &tokens, now).is_none());
        let later = now + SESSION_LIFETIME + Duration::from_secs(1);
        assert!(Session::from_headers(&headers_with(&value), &tokens, later).is_none());
        assert!(Session::start(&tokens, Role::Service, now).is_none());
    }

    #[test]
    fn changing_a_token_ends_its_sessions() {
        let now = OffsetDateTime::now_utc();
        let before = tokens("admin-token-0123456789");
        let session = Session::start(&before, Role::Admin, now).expect("admin");
        let after = tokens("admin-token-rotated-987654");
        let headers = headers_with(&session.cookie_value());
        assert!(Session::from_headers(&headers, &before, now).is_some());
        assert!(Session::from_headers(&headers, &after, now).is_none());
    }
}
