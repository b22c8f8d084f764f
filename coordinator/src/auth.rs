//! Who may call what: roles with scopes, bearer tokens, and the access rules.
//!
//! A token is 32 random bytes shown once as `mft_` + hex; the database keeps only its
//! SHA-256. Agent tokens double as the agent's MQTT password and as the secret its message
//! signing key is derived from.

use std::fmt;
use std::str::FromStr;

use munifab_protocol::AgentId;
use serde::Serialize;
use sha2::{Digest, Sha256};

/// A role and the scope it holds.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, utoipa::ToSchema)]
#[serde(tag = "role", content = "scope", rename_all = "kebab-case")]
pub enum Grant {
    /// Everything.
    Admin,
    /// Manages one cooperative's jobs.
    CoopAdmin(String),
    /// Submits and follows one cooperative's jobs.
    Maker(String),
    /// Runs the machines of one site (fablab).
    Operator(String),
    /// One agent: downloads artifacts, speaks MQTT as itself.
    #[schema(value_type = String)]
    Agent(AgentId),
}

/// A role name without its scope.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Role {
    /// `admin`
    Admin,
    /// `coop-admin`
    CoopAdmin,
    /// `maker`
    Maker,
    /// `operator`
    Operator,
    /// `agent`
    Agent,
}

impl Role {
    /// Every role.
    pub const ALL: [Role; 5] = [
        Role::Admin,
        Role::CoopAdmin,
        Role::Maker,
        Role::Operator,
        Role::Agent,
    ];

    /// The role's name.
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Admin => "admin",
            Role::CoopAdmin => "coop-admin",
            Role::Maker => "maker",
            Role::Operator => "operator",
            Role::Agent => "agent",
        }
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Role {
    type Err = GrantError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Role::ALL
            .into_iter()
            .find(|r| r.as_str() == s)
            .ok_or_else(|| GrantError::UnknownRole(s.to_string()))
    }
}

/// Why a role/scope pair is not a grant.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum GrantError {
    /// Not one of admin, coop-admin, maker, operator, agent.
    #[error("unknown role {0:?} (admin, coop-admin, maker, operator, agent)")]
    UnknownRole(String),
    /// The role needs a scope and none was given.
    #[error("role {0} needs a scope (a cooperative, site or agent id)")]
    MissingScope(Role),
    /// `admin` takes no scope.
    #[error("role admin takes no scope")]
    UnexpectedScope,
    /// The scope is not a valid id.
    #[error("invalid scope {scope:?}: {reason}")]
    BadScope {
        /// The rejected scope.
        scope: String,
        /// Why.
        reason: String,
    },
}

impl Grant {
    /// Builds a grant from a role name and an optional scope.
    pub fn new(role: Role, scope: Option<&str>) -> Result<Grant, GrantError> {
        let scope = scope.map(str::trim).filter(|s| !s.is_empty());
        let need = |r: Role| -> Result<String, GrantError> {
            let s = scope.ok_or(GrantError::MissingScope(r))?;
            // Scopes share the id alphabet: they appear in URLs, filters and topics.
            AgentId::new(s)
                .map(|_| s.to_string())
                .map_err(|e| GrantError::BadScope {
                    scope: s.to_string(),
                    reason: e.to_string(),
                })
        };
        Ok(match role {
            Role::Admin if scope.is_some() => return Err(GrantError::UnexpectedScope),
            Role::Admin => Grant::Admin,
            Role::CoopAdmin => Grant::CoopAdmin(need(role)?),
            Role::Maker => Grant::Maker(need(role)?),
            Role::Operator => Grant::Operator(need(role)?),
            Role::Agent => Grant::Agent(AgentId::new(need(role)?).expect("validated above")),
        })
    }

    /// The role.
    pub fn role(&self) -> Role {
        match self {
            Grant::Admin => Role::Admin,
            Grant::CoopAdmin(_) => Role::CoopAdmin,
            Grant::Maker(_) => Role::Maker,
            Grant::Operator(_) => Role::Operator,
            Grant::Agent(_) => Role::Agent,
        }
    }

    /// The scope, if the role has one.
    pub fn scope(&self) -> Option<&str> {
        match self {
            Grant::Admin => None,
            Grant::CoopAdmin(s) | Grant::Maker(s) | Grant::Operator(s) => Some(s),
            Grant::Agent(a) => Some(a.as_str()),
        }
    }

    /// The cooperative whose jobs this grant manages, if limited to one (admins: `None`
    /// with [`Grant::is_admin`]).
    pub fn coop(&self) -> Option<&str> {
        match self {
            Grant::CoopAdmin(c) | Grant::Maker(c) => Some(c),
            _ => None,
        }
    }

    /// Whether this grant manages jobs of `coop` (admin, or that cooperative's roles).
    pub fn may_manage_coop(&self, coop: &str) -> bool {
        self.is_admin() || self.coop() == Some(coop)
    }

    /// Whether this grant runs machines of `site` (admin, or that site's operator).
    pub fn may_run_site(&self, site: Option<&str>) -> bool {
        match self {
            Grant::Admin => true,
            Grant::Operator(s) => site == Some(s.as_str()),
            _ => false,
        }
    }

    /// Whether this is the admin grant.
    pub fn is_admin(&self) -> bool {
        matches!(self, Grant::Admin)
    }
}

impl fmt::Display for Grant {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.scope() {
            Some(s) => write!(f, "{}:{s}", self.role()),
            None => write!(f, "{}", self.role()),
        }
    }
}

/// Prefix of every token, so a leaked one is recognisable in logs and scanners.
pub const TOKEN_PREFIX: &str = "mft_";

/// A fresh random token (shown to its owner once).
pub fn new_secret() -> String {
    let mut bytes = [0u8; 32];
    getrandom::fill(&mut bytes).expect("the operating system's random source works");
    format!("{TOKEN_PREFIX}{}", hex::encode(bytes))
}

/// What the database stores for a token.
pub fn hash_secret(secret: &str) -> String {
    hex::encode(Sha256::digest(secret.as_bytes()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scoped_roles_need_a_valid_scope_and_admin_takes_none() {
        assert_eq!(
            Grant::new(Role::Maker, None),
            Err(GrantError::MissingScope(Role::Maker))
        );
        assert_eq!(
            Grant::new(Role::Admin, Some("x")),
            Err(GrantError::UnexpectedScope)
        );
        assert!(matches!(
            Grant::new(Role::Operator, Some("a/b")),
            Err(GrantError::BadScope { .. })
        ));
        assert_eq!(
            Grant::new(Role::Agent, Some("lab-a")).unwrap().to_string(),
            "agent:lab-a"
        );
        assert_eq!("coop-admin".parse::<Role>(), Ok(Role::CoopAdmin));
        assert!("root".parse::<Role>().is_err());
    }

    #[test]
    fn secrets_are_random_and_hashes_are_stable() {
        let a = new_secret();
        let b = new_secret();
        assert_ne!(a, b);
        assert_eq!(a.len(), TOKEN_PREFIX.len() + 64);
        assert_eq!(hash_secret(&a), hash_secret(&a));
        assert_ne!(hash_secret(&a), hash_secret(&b));
    }
}
