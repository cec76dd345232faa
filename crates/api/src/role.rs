//! The roles a bearer token can grant (docs/configuration.md). Kept apart from [`auth`]
//! (which checks tokens) and [`error`] (which names a refused role), so both can use it
//! without depending on each other.
//!
//! [`auth`]: crate::auth
//! [`error`]: crate::error

use serde::Serialize;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    Admin,
    Service,
    Auditor,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Admin => "admin",
            Role::Service => "service",
            Role::Auditor => "auditor",
        }
    }
}
