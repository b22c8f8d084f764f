//! SPDX licence expressions, and the rule that a design's licence must be open.
//!
//! Open means anyone may study, make, change and share the design, commercially too.
//! The Peer Production License (`LicenseRef-PPL`) is accepted as well: it reserves
//! commercial use to worker-owned cooperatives, which is exactly who MuniFab serves.
//! `A OR B` is open when either choice is open (the maker may pick it); `A AND B` only
//! when both are. An unknown identifier is refused even inside an `OR`, because it is
//! more likely a typo than a licence.

use std::fmt;

/// Licences accepted as open, in their canonical SPDX spelling.
const OPEN: &[&str] = &[
    // open hardware
    "CERN-OHL-S-2.0",
    "CERN-OHL-W-2.0",
    "CERN-OHL-P-2.0",
    "CERN-OHL-1.2",
    "TAPR-OHL-1.0",
    "SHL-0.5",
    "SHL-0.51",
    "SHL-2.0",
    "SHL-2.1",
    // creative commons without NC/ND
    "CC-BY-3.0",
    "CC-BY-4.0",
    "CC-BY-SA-3.0",
    "CC-BY-SA-4.0",
    "CC0-1.0",
    // copyleft software licences
    "GPL-2.0",
    "GPL-2.0-only",
    "GPL-2.0-or-later",
    "GPL-3.0",
    "GPL-3.0-only",
    "GPL-3.0-or-later",
    "LGPL-2.1",
    "LGPL-2.1-only",
    "LGPL-2.1-or-later",
    "LGPL-3.0",
    "LGPL-3.0-only",
    "LGPL-3.0-or-later",
    "AGPL-3.0",
    "AGPL-3.0-only",
    "AGPL-3.0-or-later",
    "MPL-2.0",
    "EUPL-1.2",
    "EPL-2.0",
    // permissive
    "MIT",
    "MIT-0",
    "Apache-2.0",
    "BSD-2-Clause",
    "BSD-3-Clause",
    "0BSD",
    "ISC",
    "Zlib",
    "BSL-1.0",
    "Unlicense",
    "OFL-1.1",
    "Artistic-2.0",
    // the Peer Production License (copyfarleft)
    "LicenseRef-PPL",
];

/// Exceptions that may follow `WITH`; none of them takes a freedom away.
const EXCEPTIONS: &[&str] = &[
    "Classpath-exception-2.0",
    "GCC-exception-3.1",
    "LLVM-exception",
    "Font-exception-2.0",
    "Autoconf-exception-3.0",
    "Bison-exception-2.2",
    "OpenJDK-assembly-exception-1.0",
];

/// Why a known identifier is refused, if it is.
fn refusal(id: &str) -> Option<&'static str> {
    let upper = id.to_ascii_uppercase();
    if upper.starts_with("CC-BY-NC") {
        Some(
            "it has a non-commercial clause, so fablabs and cooperatives could not make and sell the part; that is not open",
        )
    } else if upper.starts_with("CC-BY-ND") {
        Some("it has a no-derivatives clause, so nobody may adapt the design; that is not open")
    } else if upper == "NOASSERTION" || upper == "NONE" {
        Some("it states no licence, and without one nobody may make or share the design")
    } else if upper.starts_with("LICENSEREF-") || upper.starts_with("DOCUMENTREF-") {
        Some(
            "it is a custom licence reference that cannot be checked; only `LicenseRef-PPL` (the Peer Production License) is accepted",
        )
    } else if [
        "BUSL-1.1",
        "SSPL-1.0",
        "ELASTIC-2.0",
        "JSON",
        "HIPPOCRATIC-2.1",
    ]
    .contains(&upper.as_str())
    {
        Some("it restricts who may use it or for what, so it is not open")
    } else {
        None
    }
}

/// Why a licence expression is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LicenceError {
    /// The expression is empty.
    #[error("no licence given; use an SPDX expression such as `CERN-OHL-S-2.0`")]
    Empty,
    /// The expression does not follow SPDX syntax.
    #[error("`{expression}` is not an SPDX expression: {problem}")]
    Syntax {
        /// The expression as written.
        expression: String,
        /// What is wrong, e.g. an unbalanced parenthesis.
        problem: String,
    },
    /// The identifier is not one MuniFab knows.
    #[error(
        "`{0}` is not a licence identifier MuniFab knows; use an SPDX identifier of an open licence (e.g. CERN-OHL-S-2.0, CC-BY-SA-4.0, GPL-3.0-or-later) or `LicenseRef-PPL`"
    )]
    Unknown(String),
    /// The `WITH` exception is not one MuniFab knows.
    #[error("`{0}` is not a licence exception MuniFab knows")]
    UnknownException(String),
    /// The licence is known and not open.
    #[error("`{id}` is refused: {reason}")]
    NotOpen {
        /// The refused identifier.
        id: String,
        /// Why it is not open.
        reason: &'static str,
    },
}

/// A parsed SPDX expression.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Expr {
    Licence {
        id: String,
        or_later: bool,
        exception: Option<String>,
    },
    And(Box<Expr>, Box<Expr>),
    Or(Box<Expr>, Box<Expr>),
}

/// An accepted, open licence expression in canonical spelling.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Licence {
    expression: String,
    ids: Vec<String>,
}

impl Licence {
    /// Parse `expression` and accept it only if it is open.
    pub fn parse(expression: &str) -> Result<Self, LicenceError> {
        let tokens = tokenize(expression)?;
        if tokens.is_empty() {
            return Err(LicenceError::Empty);
        }
        let mut parser = Parser {
            tokens: &tokens,
            pos: 0,
            source: expression,
        };
        let expr = parser.or()?;
        if parser.pos != tokens.len() {
            return Err(parser.syntax(format!("unexpected `{}`", tokens[parser.pos])));
        }
        let mut ids = Vec::new();
        collect_ids(&expr, &mut ids);
        check_open(&expr)?;
        Ok(Self {
            expression: render(&expr, false),
            ids,
        })
    }

    /// The expression in canonical spelling, e.g. `GPL-3.0-or-later OR CERN-OHL-S-2.0`.
    pub fn expression(&self) -> &str {
        &self.expression
    }

    /// The licence identifiers named in the expression.
    pub fn ids(&self) -> &[String] {
        &self.ids
    }

    /// Whether the expression names `id` (case-insensitive), for search filters.
    pub fn mentions(&self, id: &str) -> bool {
        self.ids.iter().any(|own| own.eq_ignore_ascii_case(id))
    }
}

impl serde::Serialize for Licence {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.expression)
    }
}

impl fmt::Display for Licence {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.expression)
    }
}

fn tokenize(s: &str) -> Result<Vec<String>, LicenceError> {
    let mut tokens = Vec::new();
    let mut word = String::new();
    for c in s.chars() {
        match c {
            '(' | ')' => {
                if !word.is_empty() {
                    tokens.push(std::mem::take(&mut word));
                }
                tokens.push(c.to_string());
            }
            c if c.is_whitespace() => {
                if !word.is_empty() {
                    tokens.push(std::mem::take(&mut word));
                }
            }
            c if c.is_ascii_alphanumeric() || matches!(c, '-' | '.' | '+' | ':') => word.push(c),
            other => {
                return Err(LicenceError::Syntax {
                    expression: s.to_owned(),
                    problem: format!("`{other}` may not appear in an SPDX expression"),
                });
            }
        }
    }
    if !word.is_empty() {
        tokens.push(word);
    }
    Ok(tokens)
}

struct Parser<'a> {
    tokens: &'a [String],
    pos: usize,
    source: &'a str,
}

fn operator(token: &str) -> Option<&'static str> {
    match token {
        "AND" | "and" => Some("AND"),
        "OR" | "or" => Some("OR"),
        "WITH" | "with" => Some("WITH"),
        _ => None,
    }
}

impl Parser<'_> {
    fn syntax(&self, problem: String) -> LicenceError {
        LicenceError::Syntax {
            expression: self.source.to_owned(),
            problem,
        }
    }

    fn peek_operator(&self) -> Option<&'static str> {
        self.tokens.get(self.pos).and_then(|t| operator(t))
    }

    fn or(&mut self) -> Result<Expr, LicenceError> {
        let mut left = self.and()?;
        while self.peek_operator() == Some("OR") {
            self.pos += 1;
            let right = self.and()?;
            left = Expr::Or(Box::new(left), Box::new(right));
        }
        Ok(left)
    }

    fn and(&mut self) -> Result<Expr, LicenceError> {
        let mut left = self.with()?;
        while self.peek_operator() == Some("AND") {
            self.pos += 1;
            let right = self.with()?;
            left = Expr::And(Box::new(left), Box::new(right));
        }
        Ok(left)
    }

    fn with(&mut self) -> Result<Expr, LicenceError> {
        let mut primary = self.primary()?;
        if self.peek_operator() == Some("WITH") {
            self.pos += 1;
            let Some(exception) = self.tokens.get(self.pos) else {
                return Err(self.syntax("`WITH` must be followed by an exception".into()));
            };
            self.pos += 1;
            let canonical = EXCEPTIONS
                .iter()
                .find(|e| e.eq_ignore_ascii_case(exception))
                .ok_or_else(|| LicenceError::UnknownException(exception.clone()))?;
            match &mut primary {
                Expr::Licence {
                    exception: slot, ..
                } => *slot = Some((*canonical).to_owned()),
                _ => {
                    return Err(
                        self.syntax("`WITH` must follow a single licence, not a group".into())
                    );
                }
            }
        }
        Ok(primary)
    }

    fn primary(&mut self) -> Result<Expr, LicenceError> {
        let Some(token) = self.tokens.get(self.pos) else {
            return Err(self.syntax("the expression ends where a licence was expected".into()));
        };
        self.pos += 1;
        if token == "(" {
            let inner = self.or()?;
            if self.tokens.get(self.pos).map(String::as_str) != Some(")") {
                return Err(self.syntax("a `(` is not closed".into()));
            }
            self.pos += 1;
            return Ok(inner);
        }
        if token == ")" || operator(token).is_some() {
            return Err(self.syntax(format!("`{token}` where a licence was expected")));
        }
        let (id, or_later) = match token.strip_suffix('+') {
            Some(stripped) => (stripped, true),
            None => (token.as_str(), false),
        };
        if id.contains('+') || id.is_empty() {
            return Err(self.syntax(format!("`{token}` is not a licence identifier")));
        }
        let id = match OPEN.iter().find(|known| known.eq_ignore_ascii_case(id)) {
            Some(known) => (*known).to_owned(),
            None if refusal(id).is_some() => id.to_owned(),
            None => return Err(LicenceError::Unknown(id.to_owned())),
        };
        Ok(Expr::Licence {
            id,
            or_later,
            exception: None,
        })
    }
}

fn check_open(expr: &Expr) -> Result<(), LicenceError> {
    match expr {
        Expr::Licence { id, .. } => match refusal(id) {
            Some(reason) if !OPEN.contains(&id.as_str()) => Err(LicenceError::NotOpen {
                id: id.clone(),
                reason,
            }),
            _ => Ok(()),
        },
        Expr::And(a, b) => check_open(a).and_then(|()| check_open(b)),
        Expr::Or(a, b) => check_open(a).or_else(|first| check_open(b).map_err(|_| first)),
    }
}

fn collect_ids(expr: &Expr, out: &mut Vec<String>) {
    match expr {
        Expr::Licence { id, .. } => {
            if !out.contains(id) {
                out.push(id.clone());
            }
        }
        Expr::And(a, b) | Expr::Or(a, b) => {
            collect_ids(a, out);
            collect_ids(b, out);
        }
    }
}

fn render(expr: &Expr, inside_and: bool) -> String {
    match expr {
        Expr::Licence {
            id,
            or_later,
            exception,
        } => {
            let mut s = id.clone();
            if *or_later {
                s.push('+');
            }
            if let Some(e) = exception {
                s.push_str(" WITH ");
                s.push_str(e);
            }
            s
        }
        Expr::And(a, b) => format!("{} AND {}", render(a, true), render(b, true)),
        Expr::Or(a, b) => {
            let s = format!("{} OR {}", render(a, false), render(b, false));
            if inside_and { format!("({s})") } else { s }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn open_hardware_and_creative_commons_licences_are_accepted() {
        for id in [
            "CERN-OHL-S-2.0",
            "CC-BY-SA-4.0",
            "CC0-1.0",
            "GPL-3.0-or-later",
            "MIT",
            "LicenseRef-PPL",
        ] {
            assert_eq!(Licence::parse(id).unwrap().expression(), id);
        }
    }

    #[test]
    fn identifiers_are_matched_case_insensitively_and_canonicalised() {
        let l = Licence::parse("cern-ohl-s-2.0 or mit").unwrap();
        assert_eq!(l.expression(), "CERN-OHL-S-2.0 OR MIT");
        assert!(l.mentions("mit"));
    }

    #[test]
    fn compound_expressions_keep_their_grouping() {
        let l = Licence::parse("(MIT OR Apache-2.0) AND CC-BY-4.0").unwrap();
        assert_eq!(l.expression(), "(MIT OR Apache-2.0) AND CC-BY-4.0");
        assert_eq!(l.ids(), ["MIT", "Apache-2.0", "CC-BY-4.0"]);
        let w = Licence::parse("GPL-2.0-or-later WITH Classpath-exception-2.0").unwrap();
        assert_eq!(
            w.expression(),
            "GPL-2.0-or-later WITH Classpath-exception-2.0"
        );
    }

    #[test]
    fn non_commercial_licences_are_refused_with_the_reason() {
        let err = Licence::parse("CC-BY-NC-SA-4.0").unwrap_err();
        assert!(matches!(err, LicenceError::NotOpen { .. }));
        assert!(err.to_string().contains("non-commercial"), "{err}");
        let nd = Licence::parse("CC-BY-ND-4.0").unwrap_err();
        assert!(nd.to_string().contains("no-derivatives"), "{nd}");
    }

    #[test]
    fn and_needs_every_part_open_while_or_needs_one() {
        assert!(Licence::parse("MIT AND CC-BY-NC-4.0").is_err());
        assert!(Licence::parse("MIT OR CC-BY-NC-4.0").is_ok());
        assert!(Licence::parse("CC-BY-NC-4.0 OR CC-BY-ND-4.0").is_err());
    }

    #[test]
    fn unknown_and_unasserted_licences_are_refused() {
        assert!(matches!(
            Licence::parse("Proprietary"),
            Err(LicenceError::Unknown(_))
        ));
        assert!(matches!(
            Licence::parse("MIT OR Foo-1.0"),
            Err(LicenceError::Unknown(_))
        ));
        let none = Licence::parse("NOASSERTION").unwrap_err();
        assert!(none.to_string().contains("no licence"), "{none}");
        let custom = Licence::parse("LicenseRef-MyShop").unwrap_err();
        assert!(custom.to_string().contains("LicenseRef-PPL"), "{custom}");
        assert!(matches!(Licence::parse("  "), Err(LicenceError::Empty)));
    }

    #[test]
    fn malformed_expressions_are_syntax_errors() {
        for bad in [
            "(MIT",
            "MIT AND",
            "MIT OR OR GPL-3.0-only",
            "MIT)",
            "MIT, GPL-3.0-only",
            "MIT WITH",
        ] {
            assert!(
                matches!(Licence::parse(bad), Err(LicenceError::Syntax { .. })),
                "{bad}: {:?}",
                Licence::parse(bad)
            );
        }
        assert!(matches!(
            Licence::parse("MIT WITH Nonsense-exception"),
            Err(LicenceError::UnknownException(_))
        ));
    }
}
