//! Validated names: source names, design ids, profile ids (all slugs), commit ids and
//! SHA-256 content hashes.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// Why a string is not a valid name.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NameError {
    /// A slug must match `[a-z0-9][a-z0-9_-]{0,63}`.
    #[error(
        "`{0}` is not a slug: use 1 to 64 characters a-z, 0-9, `-` and `_`, starting with a letter or digit"
    )]
    Slug(String),
    /// A commit id is 40 lowercase hexadecimal digits.
    #[error("`{0}` is not a commit id: expected 40 hexadecimal digits")]
    Commit(String),
    /// A SHA-256 hash is 64 lowercase hexadecimal digits.
    #[error("`{0}` is not a SHA-256 hash: expected 64 hexadecimal digits")]
    Sha256(String),
    /// A design reference is `source/id`, optionally followed by `@commit`.
    #[error("`{0}` is not a design reference: expected `id`, `source/id` or `source/id@commit`")]
    DesignSpec(String),
}

fn is_slug(s: &str) -> bool {
    let bytes = s.as_bytes();
    !bytes.is_empty()
        && bytes.len() <= 64
        && (bytes[0].is_ascii_lowercase() || bytes[0].is_ascii_digit())
        && bytes
            .iter()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || *b == b'-' || *b == b'_')
}

macro_rules! slug_type {
    ($(#[$doc:meta])* $name:ident) => {
        $(#[$doc])*
        #[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
        pub struct $name(String);

        impl $name {
            /// The name as written.
            pub fn as_str(&self) -> &str {
                &self.0
            }
        }

        impl FromStr for $name {
            type Err = NameError;
            fn from_str(s: &str) -> Result<Self, NameError> {
                if is_slug(s) {
                    Ok(Self(s.to_owned()))
                } else {
                    Err(NameError::Slug(s.to_owned()))
                }
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }

        impl Serialize for $name {
            fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.serialize_str(&self.0)
            }
        }

        impl<'de> Deserialize<'de> for $name {
            fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                let s = String::deserialize(d)?;
                s.parse().map_err(serde::de::Error::custom)
            }
        }
    };
}

slug_type!(
    /// The configured name of a design source (a git source or a local overlay).
    SourceName
);
slug_type!(
    /// A design's id, unique within its source.
    DesignId
);
slug_type!(
    /// A machine profile id, e.g. `generic-marlin-220`.
    ProfileId
);

macro_rules! hex_type {
    ($(#[$doc:meta])* $name:ident, $len:expr, $variant:ident) => {
        $(#[$doc])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
        pub struct $name([u8; $len / 2]);

        impl $name {
            /// The raw bytes.
            pub fn as_bytes(&self) -> &[u8] {
                &self.0
            }

            /// Lowercase hexadecimal.
            pub fn to_hex(&self) -> String {
                hex::encode(self.0)
            }
        }

        impl FromStr for $name {
            type Err = NameError;
            fn from_str(s: &str) -> Result<Self, NameError> {
                let mut out = [0u8; $len / 2];
                if s.len() != $len || hex::decode_to_slice(s.to_ascii_lowercase(), &mut out).is_err() {
                    return Err(NameError::$variant(s.to_owned()));
                }
                Ok(Self(out))
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.to_hex())
            }
        }

        impl Serialize for $name {
            fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.serialize_str(&self.to_hex())
            }
        }

        impl<'de> Deserialize<'de> for $name {
            fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                let s = String::deserialize(d)?;
                s.parse().map_err(serde::de::Error::custom)
            }
        }
    };
}

hex_type!(
    /// A git commit id (SHA-1, 40 hex digits).
    CommitId, 40, Commit
);
hex_type!(
    /// The SHA-256 of a file's bytes; files are addressed by it.
    Sha256, 64, Sha256
);

impl CommitId {
    pub(crate) fn from_gix(id: &gix::oid) -> Self {
        let mut out = [0u8; 20];
        out.copy_from_slice(id.as_bytes());
        Self(out)
    }

    pub(crate) fn to_gix(self) -> gix::ObjectId {
        gix::ObjectId::from_bytes_or_panic(&self.0)
    }
}

impl Sha256 {
    /// The hash of `bytes`.
    pub fn of(bytes: &[u8]) -> Self {
        use sha2::Digest;
        let digest = sha2::Sha256::digest(bytes);
        let mut out = [0u8; 32];
        out.copy_from_slice(&digest);
        Self(out)
    }
}

/// A design in the catalog: `source/id`. Two sources may hold the same id.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct DesignKey {
    /// The source that holds the design.
    pub source: SourceName,
    /// The design's id within that source.
    pub id: DesignId,
}

impl fmt::Display for DesignKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.source, self.id)
    }
}

/// What a job names when it is submitted from a design: `id`, `source/id` (the latest
/// synced revision) or `source/id@commit` (an exact revision).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct DesignSpec {
    /// The source, when given; without it the id must be unique across sources.
    pub source: Option<SourceName>,
    /// The design id.
    pub id: DesignId,
    /// The exact commit, when given; without it the latest synced revision.
    pub commit: Option<CommitId>,
}

impl FromStr for DesignSpec {
    type Err = NameError;
    fn from_str(s: &str) -> Result<Self, NameError> {
        let bad = || NameError::DesignSpec(s.to_owned());
        let (name, commit) = match s.split_once('@') {
            Some((name, commit)) => (name, Some(commit.parse::<CommitId>().map_err(|_| bad())?)),
            None => (s, None),
        };
        let (source, id) = match name.split_once('/') {
            Some((source, id)) => (Some(source.parse().map_err(|_| bad())?), id),
            None => (None, name),
        };
        Ok(Self {
            source,
            id: id.parse().map_err(|_| bad())?,
            commit,
        })
    }
}

impl fmt::Display for DesignSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if let Some(source) = &self.source {
            write!(f, "{source}/")?;
        }
        write!(f, "{}", self.id)?;
        if let Some(commit) = &self.commit {
            write!(f, "@{commit}")?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slugs_accept_lowercase_digits_dashes_and_underscores() {
        assert!("generic-marlin-220".parse::<ProfileId>().is_ok());
        assert!("a_b".parse::<DesignId>().is_ok());
        assert!("-a".parse::<DesignId>().is_err());
        assert!("Cube".parse::<DesignId>().is_err());
        assert!("".parse::<DesignId>().is_err());
        assert!("a/b".parse::<DesignId>().is_err());
        assert!("x".repeat(65).parse::<DesignId>().is_err());
    }

    #[test]
    fn design_specs_parse_all_three_forms() {
        let c = "0123456789abcdef0123456789abcdef01234567";
        let full: DesignSpec = format!("commons/cube@{c}").parse().unwrap();
        assert_eq!(full.source.unwrap().as_str(), "commons");
        assert_eq!(full.id.as_str(), "cube");
        assert_eq!(full.commit.unwrap().to_hex(), c);
        let latest: DesignSpec = "commons/cube".parse().unwrap();
        assert!(latest.commit.is_none());
        let bare: DesignSpec = "cube".parse().unwrap();
        assert!(bare.source.is_none());
        assert!("commons/cube@abc".parse::<DesignSpec>().is_err());
        assert!("a/b/c".parse::<DesignSpec>().is_err());
    }

    #[test]
    fn sha256_of_empty_input_is_the_well_known_value() {
        assert_eq!(
            Sha256::of(b"").to_hex(),
            "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
        );
    }
}
