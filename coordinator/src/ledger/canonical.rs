//! The canonical JSON form that ledger hashes are computed over.
//!
//! Rules (also in `docs/cooperatives.md`, so anyone can re-implement the check):
//!
//! - UTF-8, no whitespace outside strings, no trailing newline;
//! - object members sorted by key, comparing the keys' UTF-8 bytes;
//! - strings: `"` and `\` escaped with a backslash; U+0008, U+0009, U+000A, U+000C, U+000D
//!   as `\b`, `\t`, `\n`, `\f`, `\r`; other control characters below U+0020 as `\u00xx`
//!   (lower-case hex); everything else as itself, unescaped;
//! - numbers: only non-negative integers below 2^53, in decimal without sign, leading zeros,
//!   fraction or exponent. Quantities that are fractional in the world are stored in small
//!   integer units (milligrams, watt-hours) precisely so that no float formatting is needed;
//! - absent optional values are `null`, never omitted, so every entry has the same keys;
//! - times: RFC 3339 strings in UTC with a `Z` and whole seconds (`2026-11-21T09:30:00Z`).
//!
//! For this data the result is identical to RFC 8785 (JSON Canonicalization Scheme).

use std::fmt::Write as _;

/// A JSON value restricted to what the canonical form allows.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Canon {
    Null,
    Int(u64),
    Str(String),
    Arr(Vec<Canon>),
    Obj(Vec<(&'static str, Canon)>),
}

impl Canon {
    pub(crate) fn str(s: impl Into<String>) -> Self {
        Canon::Str(s.into())
    }

    pub(crate) fn opt(v: Option<Canon>) -> Self {
        v.unwrap_or(Canon::Null)
    }

    /// Writes the canonical text.
    pub(crate) fn write(&self, out: &mut String) {
        match self {
            Canon::Null => out.push_str("null"),
            Canon::Int(n) => {
                let _ = write!(out, "{n}");
            }
            Canon::Str(s) => write_str(s, out),
            Canon::Arr(items) => {
                out.push('[');
                for (i, item) in items.iter().enumerate() {
                    if i > 0 {
                        out.push(',');
                    }
                    item.write(out);
                }
                out.push(']');
            }
            Canon::Obj(members) => {
                let mut sorted: Vec<&(&str, Canon)> = members.iter().collect();
                sorted.sort_by(|a, b| a.0.as_bytes().cmp(b.0.as_bytes()));
                out.push('{');
                for (i, (k, v)) in sorted.into_iter().enumerate() {
                    if i > 0 {
                        out.push(',');
                    }
                    write_str(k, out);
                    out.push(':');
                    v.write(out);
                }
                out.push('}');
            }
        }
    }
}

fn write_str(s: &str, out: &mut String) {
    out.push('"');
    for ch in s.chars() {
        match ch {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\u{8}' => out.push_str("\\b"),
            '\t' => out.push_str("\\t"),
            '\n' => out.push_str("\\n"),
            '\u{c}' => out.push_str("\\f"),
            '\r' => out.push_str("\\r"),
            c if (c as u32) < 0x20 => {
                let _ = write!(out, "\\u{:04x}", c as u32);
            }
            c => out.push(c),
        }
    }
    out.push('"');
}

#[cfg(test)]
mod tests {
    use super::*;

    fn text(c: &Canon) -> String {
        let mut s = String::new();
        c.write(&mut s);
        s
    }

    #[test]
    fn keys_are_sorted_by_bytes_and_nothing_is_spaced() {
        let c = Canon::Obj(vec![
            ("b", Canon::Int(2)),
            ("a_b", Canon::Null),
            ("a", Canon::Arr(vec![Canon::Int(0), Canon::str("x")])),
        ]);
        assert_eq!(text(&c), r#"{"a":[0,"x"],"a_b":null,"b":2}"#);
    }

    #[test]
    fn strings_escape_only_quotes_backslashes_and_controls() {
        let c = Canon::str("é \"q\" \\ \n\t\u{1}/");
        assert_eq!(text(&c), "\"é \\\"q\\\" \\\\ \\n\\t\\u0001/\"");
    }

    #[test]
    fn the_text_parses_back_as_the_same_json() {
        let c = Canon::Obj(vec![("k", Canon::str("line\nbreak \u{1f} \u{7f} ☃ \"x\""))]);
        let parsed: serde_json::Value = serde_json::from_str(&text(&c)).unwrap();
        assert_eq!(parsed["k"], "line\nbreak \u{1f} \u{7f} ☃ \"x\"");
    }
}
