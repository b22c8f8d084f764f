//! Identifiers of the cooperative model: cooperatives, sites, regions and pools.
//!
//! They share the alphabet of the protocol's ids (`[a-z0-9][a-z0-9_-]{0,63}`) because they
//! end up in URLs, CSV reports and ledger entries, where a slug is the least surprising
//! form. The validation itself is the protocol's, so both agree by construction.

use std::fmt;
use std::str::FromStr;

use munifab_protocol::{AgentId, IdError};
use serde::{Deserialize, Serialize};

fn validate(s: &str) -> Result<(), IdError> {
    AgentId::new(s).map(|_| ())
}

macro_rules! coop_id {
    ($(#[$doc:meta])* $name:ident) => {
        $(#[$doc])*
        #[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
        #[serde(try_from = "String", into = "String")]
        pub struct $name(String);

        impl $name {
            /// Validates `s` as an id.
            pub fn new(s: impl Into<String>) -> Result<Self, IdError> {
                let s = s.into();
                validate(&s)?;
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
    };
}

coop_id!(
    /// A cooperative: the unit that submits work, holds quotas and is weighed in pools.
    CoopId
);
coop_id!(
    /// A site (fablab) where machines stand and parts are delivered.
    SiteId
);
coop_id!(
    /// A region grouping sites (a city, a valley): the second ring of "local".
    RegionId
);
coop_id!(
    /// A pool: machines contributed by sites and the cooperatives that may use them.
    PoolId
);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_follow_the_protocol_alphabet() {
        assert!(CoopId::new("bike-coop").is_ok());
        assert_eq!(SiteId::new("Lab A"), Err(IdError::BadStart('L')));
        assert_eq!(PoolId::new("a/b"), Err(IdError::BadChar { ch: '/', at: 1 }));
    }
}
