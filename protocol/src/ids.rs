//! Identifiers that appear in topics and messages.
//!
//! Agent and machine ids become MQTT topic levels, so they are restricted to
//! `[a-z0-9][a-z0-9_-]{0,63}`: no wildcards (`+`, `#`), no separators (`/`), nothing a
//! broker or a file system could read differently. Validation happens once, at the edge;
//! afterwards the types carry the guarantee.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};
use uuid::Uuid;

/// Longest id accepted, in bytes.
pub const MAX_ID_LEN: usize = 64;

/// Why a string is not a valid agent or machine id.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IdError {
    /// The id is empty.
    #[error("id is empty")]
    Empty,
    /// The id is longer than [`MAX_ID_LEN`] bytes.
    #[error("id is {len} bytes long; at most {MAX_ID_LEN} are allowed")]
    TooLong {
        /// Length of the rejected id in bytes.
        len: usize,
    },
    /// The first character is not a lower-case letter or digit.
    #[error("id must start with a lower-case letter or a digit, not {0:?}")]
    BadStart(char),
    /// A character outside `[a-z0-9_-]`.
    #[error("id may only contain a-z, 0-9, '_' and '-'; found {ch:?} at byte {at}")]
    BadChar {
        /// The offending character.
        ch: char,
        /// Its byte offset.
        at: usize,
    },
}

fn validate_slug(s: &str) -> Result<(), IdError> {
    if s.is_empty() {
        return Err(IdError::Empty);
    }
    if s.len() > MAX_ID_LEN {
        return Err(IdError::TooLong { len: s.len() });
    }
    for (at, ch) in s.char_indices() {
        let ok =
            ch.is_ascii_lowercase() || ch.is_ascii_digit() || (at > 0 && (ch == '_' || ch == '-'));
        if !ok {
            return Err(if at == 0 {
                IdError::BadStart(ch)
            } else {
                IdError::BadChar { ch, at }
            });
        }
    }
    Ok(())
}

macro_rules! slug_id {
    ($(#[$doc:meta])* $name:ident) => {
        $(#[$doc])*
        #[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
        #[serde(try_from = "String", into = "String")]
        pub struct $name(String);

        impl $name {
            /// Validates `s` as an id.
            pub fn new(s: impl Into<String>) -> Result<Self, IdError> {
                let s = s.into();
                validate_slug(&s)?;
                Ok(Self(s))
            }

            /// The id as a string slice.
            pub fn as_str(&self) -> &str {
                &self.0
            }
        }

        impl TryFrom<String> for $name {
            type Error = IdError;
            fn try_from(s: String) -> Result<Self, IdError> {
                Self::new(s)
            }
        }

        impl From<$name> for String {
            fn from(id: $name) -> String {
                id.0
            }
        }

        impl FromStr for $name {
            type Err = IdError;
            fn from_str(s: &str) -> Result<Self, IdError> {
                Self::new(s)
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }

        impl AsRef<str> for $name {
            fn as_ref(&self) -> &str {
                &self.0
            }
        }
    };
}

slug_id!(
    /// The id of an agent (one workshop PC), unique within a coordinator.
    AgentId
);
slug_id!(
    /// The id of a machine, unique within its agent.
    MachineId
);

/// The id of a job, assigned by the coordinator.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(transparent)]
pub struct JobId(pub Uuid);

impl JobId {
    /// A fresh random job id.
    pub fn random() -> Self {
        Self(Uuid::new_v4())
    }
}

impl fmt::Display for JobId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

impl FromStr for JobId {
    type Err = uuid::Error;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Uuid::parse_str(s).map(Self)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_lowercase_digits_dash_and_underscore() {
        for ok in ["a", "0", "lab-a", "printer_01", "x".repeat(64).as_str()] {
            assert!(AgentId::new(ok).is_ok(), "{ok}");
        }
    }

    #[test]
    fn rejects_wildcards_separators_and_upper_case() {
        assert_eq!(AgentId::new(""), Err(IdError::Empty));
        assert_eq!(AgentId::new("-a"), Err(IdError::BadStart('-')));
        assert_eq!(AgentId::new("_a"), Err(IdError::BadStart('_')));
        assert_eq!(AgentId::new("Lab"), Err(IdError::BadStart('L')));
        assert_eq!(
            MachineId::new("a/b"),
            Err(IdError::BadChar { ch: '/', at: 1 })
        );
        assert_eq!(
            MachineId::new("a+"),
            Err(IdError::BadChar { ch: '+', at: 1 })
        );
        assert_eq!(
            MachineId::new("a#"),
            Err(IdError::BadChar { ch: '#', at: 1 })
        );
        assert_eq!(MachineId::new("ü"), Err(IdError::BadStart('ü')));
        assert_eq!(
            AgentId::new("x".repeat(65)),
            Err(IdError::TooLong { len: 65 })
        );
    }

    #[test]
    fn deserializing_an_invalid_id_is_an_error_not_a_panic() {
        let err = serde_json::from_str::<AgentId>("\"a/b\"").unwrap_err();
        assert!(err.to_string().contains("'/'"), "{err}");
    }

    proptest::proptest! {
        #[test]
        fn validation_never_panics_and_accepts_only_the_alphabet(s in "\\PC{0,80}") {
            if let Ok(id) = AgentId::new(s.clone()) {
                proptest::prop_assert!(id.as_str().len() <= MAX_ID_LEN);
                proptest::prop_assert!(id.as_str().bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_'));
            }
        }
    }
}
