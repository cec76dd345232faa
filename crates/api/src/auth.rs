//! Authentication (docs/configuration.md, docs/http-api.md): the configured bearer tokens, the [`Caller`]
//! extractor that turns a request's token into a [`Role`] allowed on its route (or a 401
//! or 403 before any body is read), and the bearer scheme of the OpenAPI document.

use std::marker::PhantomData;

use axum::extract::FromRequestParts;
use axum::http::header::AUTHORIZATION;
use axum::http::request::Parts;
use domain::Secret;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;
use utoipa::Modify;
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};

use crate::AppState;
use crate::error::ApiError;
use crate::role::Role;

/// The configured tokens. A role without a token cannot be used at all.
#[derive(Default, Clone)]
pub struct Tokens {
    /// SHA-256 of each token: comparing digests of equal length in constant time tells
    /// nothing about a token's length or its first differing byte.
    digests: Vec<(Role, [u8; 32])>,
}

impl Tokens {
    pub fn new(admin: Option<&Secret>, service: Option<&Secret>, auditor: Option<&Secret>) -> Self {
        let digests = [
            (Role::Admin, admin),
            (Role::Service, service),
            (Role::Auditor, auditor),
        ]
        .into_iter()
        .filter_map(|(role, token)| Some((role, digest(token?.expose()))))
        .collect();
        Self { digests }
    }

    /// The role `presented` grants, checking every configured token so the time taken
    /// does not say which one matched.
    pub fn role_of(&self, presented: &str) -> Option<Role> {
        let presented = digest(presented);
        let mut granted = None;
        for (role, expected) in &self.digests {
            if bool::from(expected.ct_eq(&presented)) && granted.is_none() {
                granted = Some(*role);
            }
        }
        granted
    }

    /// A key for signing `role`'s console sessions, derived from its token's digest (never
    /// the token itself): every replica with the same token derives the same key, and
    /// changing the token ends every session signed with the old one.
    pub fn session_key(&self, role: Role) -> Option<[u8; 32]> {
        let (_, token_digest) = self.digests.iter().find(|(r, _)| *r == role)?;
        let mut hasher = Sha256::new();
        hasher.update(b"keyledger console session\n");
        hasher.update(token_digest);
        Some(hasher.finalize().into())
    }
}

impl std::fmt::Debug for Tokens {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let roles: Vec<Role> = self.digests.iter().map(|(role, _)| *role).collect();
        f.debug_struct("Tokens").field("roles", &roles).finish()
    }
}

fn digest(token: &str) -> [u8; 32] {
    Sha256::digest(token.as_bytes()).into()
}

/// A set of roles allowed on a route.
pub trait Allowed: Send + Sync + 'static {
    const ROLES: &'static [Role];
}

/// Admin and service: the roles that issue commands.
pub struct Writers;
impl Allowed for Writers {
    const ROLES: &'static [Role] = &[Role::Admin, Role::Service];
}

/// Everyone with a token: the roles that read key views.
pub struct Readers;
impl Allowed for Readers {
    const ROLES: &'static [Role] = &[Role::Admin, Role::Service, Role::Auditor];
}

/// Admin and auditor: the roles that read the log itself.
pub struct Auditors;
impl Allowed for Auditors {
    const ROLES: &'static [Role] = &[Role::Admin, Role::Auditor];
}

/// An authenticated caller whose role is in `A`. As an extractor it answers 401 without a
/// valid token and 403 for another role, before any body is read.
pub struct Caller<A> {
    pub role: Role,
    allowed: PhantomData<A>,
}

impl<A: Allowed> FromRequestParts<AppState> for Caller<A> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        let header = parts
            .headers
            .get(AUTHORIZATION)
            .ok_or(ApiError::MissingToken)?;
        let token = header
            .to_str()
            .ok()
            .and_then(bearer_token)
            .ok_or(ApiError::InvalidToken)?;
        let role = state
            .config
            .tokens
            .role_of(token)
            .ok_or(ApiError::InvalidToken)?;
        if !A::ROLES.contains(&role) {
            return Err(ApiError::Forbidden {
                role,
                allowed: A::ROLES,
            });
        }
        Ok(Self {
            role,
            allowed: PhantomData,
        })
    }
}

/// The role a request's bearer token grants, if it carries a valid one; for routes open to
/// everyone that show more to callers with a token.
pub(crate) fn role_from_headers(headers: &axum::http::HeaderMap, tokens: &Tokens) -> Option<Role> {
    let value = headers.get(AUTHORIZATION)?.to_str().ok()?;
    tokens.role_of(bearer_token(value)?)
}

/// The token of an `Authorization: Bearer <token>` value. The scheme name is
/// case-insensitive (RFC 9110 §11.1), so `bearer` and `BEARER` are as good as `Bearer`.
fn bearer_token(value: &str) -> Option<&str> {
    let (scheme, token) = value.trim_start().split_once(' ')?;
    if !scheme.eq_ignore_ascii_case("bearer") {
        return None;
    }
    Some(token.trim()).filter(|token| !token.is_empty())
}

/// Declares the bearer scheme in the OpenAPI document.
pub(crate) struct BearerScheme;

impl Modify for BearerScheme {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(HttpBuilder::new().scheme(HttpAuthScheme::Bearer).build()),
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_token_grants_its_own_role_and_nothing_else() {
        let admin = Secret::new("admin-token-0123456789");
        let auditor = Secret::new("auditor-token-0123456789");
        let tokens = Tokens::new(Some(&admin), None, Some(&auditor));
        assert_eq!(tokens.role_of("admin-token-0123456789"), Some(Role::Admin));
        assert_eq!(
            tokens.role_of("auditor-token-0123456789"),
            Some(Role::Auditor)
        );
        assert_eq!(tokens.role_of("admin-token-012345678"), None);
        assert_eq!(tokens.role_of(""), None);
    }

    #[test]
    fn the_bearer_scheme_is_case_insensitive_and_nothing_else_passes() {
        for value in ["Bearer abc", "bearer abc", "BEARER  abc ", " Bearer abc"] {
            assert_eq!(bearer_token(value), Some("abc"), "{value:?}");
        }
        for value in ["Basic abc", "Bearer", "Bearer ", "Bearerabc", "abc", ""] {
            assert_eq!(bearer_token(value), None, "{value:?}");
        }
    }

    #[test]
    fn debug_shows_no_token() {
        let admin = Secret::new("admin-token-0123456789");
        let shown = format!("{:?}", Tokens::new(Some(&admin), None, None));
        assert!(!shown.contains("admin-token"), "{shown}");
    }
}
