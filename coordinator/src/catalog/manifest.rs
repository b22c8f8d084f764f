//! The `design.toml` manifest: strict parsing and field validation.
//!
//! Parsing is two steps, as for configuration: serde reads the raw TOML (an unknown key
//! is an error), then [`Manifest::parse`] turns it into validated types and collects
//! every problem it finds, each naming the file, the key and what is wrong. Whether
//! the named files exist, stay inside the folder and fit the size limit is checked
//! against the git tree by the loader, which reports in the same shape.

use std::collections::BTreeMap;
use std::fmt;

use serde::{Deserialize, Serialize};

use super::licence::{Licence, LicenceError};
use super::names::{CommitId, DesignId, NameError, ProfileId};

/// The manifest's file name inside each design folder.
pub const MANIFEST_FILE: &str = "design.toml";

pub use munifab_protocol::Process;

/// The manifest spelling of a process.
pub fn process_name(process: Process) -> &'static str {
    match process {
        Process::Fdm => "fdm",
        Process::Cnc => "cnc",
        Process::Laser => "laser",
    }
}

fn parse_process(s: &str) -> Result<Process, String> {
    match s {
        "fdm" => Ok(Process::Fdm),
        "cnc" => Ok(Process::Cnc),
        "laser" => Ok(Process::Laser),
        other => Err(format!("`{other}` is not a process; use fdm, cnc or laser")),
    }
}

/// One problem in a design's manifest or files.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("{file}: {}{problem}", key.as_ref().map(|k| format!("key `{k}`: ")).unwrap_or_default())]
pub struct ManifestError {
    /// The manifest, as a path inside its source (e.g. `designs/cube/design.toml`).
    pub file: String,
    /// The key at fault (e.g. `gcode[1].file`), when one is.
    pub key: Option<String>,
    /// What is wrong.
    pub problem: ManifestProblem,
}

/// What is wrong with a manifest or a file it names.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum ManifestProblem {
    /// The TOML could not be read (syntax, or a value of the wrong type).
    #[error("{0}")]
    Syntax(String),
    /// A key the format does not have; often a typo.
    #[error("unknown key (the format is in docs/designs.md)")]
    UnknownKey,
    /// A required key is absent.
    #[error("missing required key")]
    MissingKey,
    /// A name is not a valid slug or commit id.
    #[error(transparent)]
    Name(#[from] NameError),
    /// The licence is missing, malformed or not open.
    #[error(transparent)]
    Licence(#[from] LicenceError),
    /// A value is present but unusable.
    #[error("{0}")]
    Invalid(String),
    /// A path is absolute; paths are relative to the design folder.
    #[error("`{0}` is an absolute path; paths are relative to the design folder")]
    AbsolutePath(String),
    /// A path uses `..` and could leave the design folder.
    #[error("`{0}` uses `..`; paths must stay inside the design folder")]
    ParentPath(String),
    /// A symbolic link on the way points outside the design folder.
    #[error("`{path}` goes through the symbolic link `{link}`, which leaves the design folder")]
    SymlinkEscape {
        /// The path as written in the manifest.
        path: String,
        /// The link, relative to the design folder.
        link: String,
    },
    /// The file does not exist at this revision.
    #[error("`{0}` does not exist in the design folder")]
    MissingFile(String),
    /// The path names a folder, not a file.
    #[error("`{0}` is a folder, not a file")]
    NotAFile(String),
    /// The file is larger than the configured limit.
    #[error("`{path}` is {size} bytes, over the limit of {limit} bytes")]
    Oversized {
        /// The path as written in the manifest.
        path: String,
        /// Its size in bytes.
        size: u64,
        /// The configured limit in bytes.
        limit: u64,
    },
    /// G-code names a machine profile the coordinator does not know.
    #[error("profile `{0}` is not a known machine profile")]
    UnknownProfile(ProfileId),
    /// G-code targets a machine of another process.
    #[error(
        "profile `{profile}` is for {} machines, but the design is {}",
        process_name(*profile_process),
        process_name(*design_process)
    )]
    ProfileProcess {
        /// The profile named.
        profile: ProfileId,
        /// The profile's process.
        profile_process: Process,
        /// The design's process.
        design_process: Process,
    },
    /// Another design in the same source already has this id.
    #[error("design id `{id}` is already used by `{other}` in this source")]
    DuplicateId {
        /// The id used twice.
        id: DesignId,
        /// The folder of the design that kept it.
        other: String,
    },
}

/// An author or maintainer of a design.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Author {
    /// Name as it should appear in attributions.
    pub name: String,
    /// Contact address, optional.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub email: Option<String>,
    /// Home page or profile, optional.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub url: Option<String>,
}

/// Where an adaptation comes from: a design in a source at a revision.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DerivedFrom {
    /// The configured source name (or its URL) holding the original.
    pub source: String,
    /// The original's design id.
    pub id: DesignId,
    /// The original's commit.
    pub revision: CommitId,
    /// What the adaptation changed, optional.
    pub changes: Option<String>,
}

/// A parameter value of a parametric design.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum ParameterValue {
    /// A yes/no switch.
    Bool(bool),
    /// A number (lengths in mm unless `unit` says otherwise).
    Number(f64),
    /// A choice or a text.
    Text(String),
}

/// A parameter of a parametric design (e.g. an OpenSCAD variable).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Parameter {
    /// The value the shipped files were made with.
    pub default: ParameterValue,
    /// Unit, e.g. `mm`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub unit: Option<String>,
    /// Smallest sensible value (numbers).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min: Option<f64>,
    /// Largest sensible value (numbers).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max: Option<f64>,
    /// What it changes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
}

/// Formats accepted as design sources.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SourceFormat {
    /// STL mesh.
    Stl,
    /// 3MF package.
    #[serde(rename = "3mf")]
    ThreeMf,
    /// OpenSCAD program.
    Scad,
    /// STEP CAD exchange.
    Step,
    /// DXF drawing (CNC, laser).
    Dxf,
    /// SVG drawing (CNC, laser).
    Svg,
}

impl SourceFormat {
    fn from_path(path: &str) -> Option<Self> {
        let ext = path.rsplit_once('.')?.1.to_ascii_lowercase();
        Some(match ext.as_str() {
            "stl" => Self::Stl,
            "3mf" => Self::ThreeMf,
            "scad" => Self::Scad,
            "step" | "stp" => Self::Step,
            "dxf" => Self::Dxf,
            "svg" => Self::Svg,
            _ => return None,
        })
    }
}

/// A relative path inside a design folder, checked for `..` and absoluteness.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct RelPath(Vec<String>);

impl RelPath {
    /// Check the spelling of `raw`; it must be relative and must not use `..`.
    pub fn parse(raw: &str) -> Result<Self, ManifestProblem> {
        if raw.starts_with('/') || raw.starts_with('\\') || raw.as_bytes().get(1) == Some(&b':') {
            return Err(ManifestProblem::AbsolutePath(raw.to_owned()));
        }
        if raw.contains('\\') || raw.contains('\0') {
            return Err(ManifestProblem::Invalid(format!(
                "`{raw}` must use `/` between folders and contain no backslash or NUL"
            )));
        }
        let mut parts = Vec::new();
        for part in raw.split('/') {
            match part {
                "" | "." => continue,
                ".." => return Err(ManifestProblem::ParentPath(raw.to_owned())),
                p => parts.push(p.to_owned()),
            }
        }
        if parts.is_empty() {
            return Err(ManifestProblem::Invalid("a path must name a file".into()));
        }
        Ok(Self(parts))
    }

    /// The path's components.
    pub fn components(&self) -> &[String] {
        &self.0
    }
}

impl Serialize for RelPath {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl fmt::Display for RelPath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0.join("/"))
    }
}

/// A source file (CAD, mesh, drawing) of the design.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct SourceFile {
    /// Path inside the design folder.
    pub file: RelPath,
    /// Its format, from the extension.
    pub format: SourceFormat,
    /// What the file is, optional.
    pub description: Option<String>,
}

/// Ready-to-run G-code for one machine profile.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct GcodeFile {
    /// The machine profile it was made for.
    pub profile: ProfileId,
    /// Path inside the design folder.
    pub file: RelPath,
    /// The material it was sliced or cut for, uppercase (e.g. `PLA`), optional.
    pub material: Option<String>,
    /// The tool that made it (slicer, CAM), optional.
    pub generator: Option<String>,
}

/// A validated manifest.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Manifest {
    /// Slug, unique within the source.
    pub id: DesignId,
    /// Human title.
    pub title: String,
    /// One or two sentences.
    pub summary: String,
    /// The design's own version (free form, e.g. `1.2.0`).
    pub version: String,
    /// An open licence expression.
    pub licence: Licence,
    /// The licence text or note in the folder; found by name when not given.
    pub licence_file: Option<RelPath>,
    /// At least one author.
    pub authors: Vec<Author>,
    /// Provenance of an adaptation.
    pub derived_from: Option<DerivedFrom>,
    /// Manufacturing process.
    pub process: Process,
    /// Uppercase material names (e.g. `PLA`, `PLYWOOD`).
    pub materials: Vec<String>,
    /// Free tags, lowercase.
    pub tags: Vec<String>,
    /// Parameters of a parametric design.
    pub parameters: BTreeMap<String, Parameter>,
    /// Source files; at least one.
    pub sources: Vec<SourceFile>,
    /// G-code per machine profile.
    pub gcode: Vec<GcodeFile>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawManifest {
    id: String,
    title: String,
    summary: String,
    version: String,
    licence: String,
    #[serde(default)]
    licence_file: Option<String>,
    authors: Vec<Author>,
    #[serde(default)]
    derived_from: Option<RawDerivedFrom>,
    process: String,
    #[serde(default)]
    materials: Vec<String>,
    #[serde(default)]
    tags: Vec<String>,
    #[serde(default)]
    parameters: BTreeMap<String, Parameter>,
    #[serde(default)]
    sources: Vec<RawSource>,
    #[serde(default)]
    gcode: Vec<RawGcode>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawDerivedFrom {
    source: String,
    id: String,
    revision: String,
    #[serde(default)]
    changes: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawSource {
    file: String,
    #[serde(default)]
    description: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawGcode {
    profile: String,
    file: String,
    #[serde(default)]
    material: Option<String>,
    #[serde(default)]
    generator: Option<String>,
}

/// Collects problems so one manifest reports all of them at once.
struct Problems<'a> {
    file: &'a str,
    found: Vec<ManifestError>,
}

impl Problems<'_> {
    fn add(&mut self, key: impl Into<String>, problem: impl Into<ManifestProblem>) {
        self.found.push(ManifestError {
            file: self.file.to_owned(),
            key: Some(key.into()),
            problem: problem.into(),
        });
    }

    fn text(&mut self, key: &str, value: String, max: usize) -> String {
        let trimmed = value.trim();
        if trimmed.is_empty() {
            self.add(key, ManifestProblem::Invalid("must not be empty".into()));
        } else if trimmed.chars().count() > max {
            self.add(
                key,
                ManifestProblem::Invalid(format!("longer than {max} characters")),
            );
        }
        trimmed.to_owned()
    }

    fn material(&mut self, key: &str, value: &str) {
        let ok = !value.is_empty()
            && value.len() <= 32
            && value
                .bytes()
                .all(|b| b.is_ascii_uppercase() || b.is_ascii_digit() || b == b'-' || b == b'_');
        if !ok {
            self.add(
                key,
                ManifestProblem::Invalid(format!(
                    "`{value}` is not a material name; use uppercase names such as PLA, PETG or PLYWOOD"
                )),
            );
        }
    }

    fn path(&mut self, key: &str, raw: &str) -> Option<RelPath> {
        match RelPath::parse(raw) {
            Ok(p) => Some(p),
            Err(problem) => {
                self.add(key, problem);
                None
            }
        }
    }
}

impl Manifest {
    /// Parse and validate manifest `text`; `file` names it in errors (its path in the
    /// source). Returns every problem found, not just the first.
    pub fn parse(file: &str, text: &str) -> Result<Self, Vec<ManifestError>> {
        let raw: RawManifest =
            toml::from_str(text).map_err(|e| vec![toml_error(file, text, &e)])?;
        let mut p = Problems {
            file,
            found: Vec::new(),
        };

        let id = raw.id.parse::<DesignId>().map_err(|e| p.add("id", e)).ok();
        let title = p.text("title", raw.title, 120);
        let summary = p.text("summary", raw.summary, 600);
        let version = p.text("version", raw.version, 64);
        if version.contains(char::is_whitespace) {
            p.add(
                "version",
                ManifestProblem::Invalid("must not contain spaces".into()),
            );
        }
        let licence = Licence::parse(&raw.licence)
            .map_err(|e| p.add("licence", e))
            .ok();
        let licence_file = raw
            .licence_file
            .as_deref()
            .and_then(|f| p.path("licence_file", f));
        if raw.authors.is_empty() {
            p.add(
                "authors",
                ManifestProblem::Invalid("name at least one author".into()),
            );
        }
        for (i, a) in raw.authors.iter().enumerate() {
            if a.name.trim().is_empty() {
                p.add(
                    format!("authors[{i}].name"),
                    ManifestProblem::Invalid("must not be empty".into()),
                );
            }
        }
        let derived_from = raw.derived_from.and_then(|d| {
            if d.source.trim().is_empty() {
                p.add(
                    "derived_from.source",
                    ManifestProblem::Invalid("must not be empty".into()),
                );
            }
            let id =
                d.id.parse::<DesignId>()
                    .map_err(|e| p.add("derived_from.id", e))
                    .ok();
            let revision = d
                .revision
                .parse::<CommitId>()
                .map_err(|e| p.add("derived_from.revision", e))
                .ok();
            Some(DerivedFrom {
                source: d.source.trim().to_owned(),
                id: id?,
                revision: revision?,
                changes: d.changes,
            })
        });
        let process = parse_process(&raw.process)
            .map_err(|e| p.add("process", ManifestProblem::Invalid(e)))
            .ok();
        for (i, m) in raw.materials.iter().enumerate() {
            p.material(&format!("materials[{i}]"), m);
        }
        for (i, t) in raw.tags.iter().enumerate() {
            if t.parse::<DesignId>().is_err() {
                p.add(
                    format!("tags[{i}]"),
                    ManifestProblem::Invalid(format!(
                        "`{t}` is not a tag; use lowercase words joined by `-`"
                    )),
                );
            }
        }
        for (name, param) in &raw.parameters {
            check_parameter(&mut p, name, param);
        }
        if raw.sources.is_empty() {
            p.add(
                "sources",
                ManifestProblem::Invalid("list at least one source file".into()),
            );
        }
        let mut sources = Vec::new();
        for (i, s) in raw.sources.into_iter().enumerate() {
            let key = format!("sources[{i}].file");
            let format = SourceFormat::from_path(&s.file);
            if format.is_none() {
                p.add(
                    &key,
                    ManifestProblem::Invalid(format!(
                        "`{}` is not a source format MuniFab takes (STL, 3MF, SCAD, STEP, DXF, SVG)",
                        s.file
                    )),
                );
            }
            if let (Some(file), Some(format)) = (p.path(&key, &s.file), format) {
                sources.push(SourceFile {
                    file,
                    format,
                    description: s.description,
                });
            }
        }
        let mut gcode: Vec<GcodeFile> = Vec::new();
        for (i, g) in raw.gcode.into_iter().enumerate() {
            let profile = g
                .profile
                .parse::<ProfileId>()
                .map_err(|e| p.add(format!("gcode[{i}].profile"), e))
                .ok();
            if let Some(profile) = &profile
                && gcode.iter().any(|other| &other.profile == profile)
            {
                p.add(
                    format!("gcode[{i}].profile"),
                    ManifestProblem::Invalid(format!("profile `{profile}` has G-code twice")),
                );
            }
            let key = format!("gcode[{i}].file");
            let ext = g.file.rsplit_once('.').map(|(_, e)| e.to_ascii_lowercase());
            if !matches!(ext.as_deref(), Some("gcode" | "gco" | "g" | "nc" | "ngc")) {
                p.add(
                    &key,
                    ManifestProblem::Invalid(format!(
                        "`{}` is not a G-code file name (.gcode, .gco, .g, .nc, .ngc)",
                        g.file
                    )),
                );
            }
            if let Some(m) = &g.material {
                p.material(&format!("gcode[{i}].material"), m);
            }
            if let (Some(profile), Some(file)) = (profile, p.path(&key, &g.file)) {
                gcode.push(GcodeFile {
                    profile,
                    file,
                    material: g.material,
                    generator: g.generator,
                });
            }
        }

        match (id, licence, process) {
            (Some(id), Some(licence), Some(process)) if p.found.is_empty() => Ok(Self {
                id,
                title,
                summary,
                version,
                licence,
                licence_file,
                authors: raw.authors,
                derived_from,
                process,
                materials: raw.materials,
                tags: raw.tags,
                parameters: raw.parameters,
                sources,
                gcode,
            }),
            _ => Err(p.found),
        }
    }
}

fn check_parameter(p: &mut Problems<'_>, name: &str, param: &Parameter) {
    let key = format!("parameters.{name}");
    let ident = name
        .chars()
        .next()
        .is_some_and(|c| c.is_ascii_lowercase() || c == '_')
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_');
    if !ident {
        p.add(
            &key,
            ManifestProblem::Invalid(format!(
                "`{name}` is not a parameter name; use lowercase letters, digits and `_`"
            )),
        );
    }
    if let (Some(min), Some(max)) = (param.min, param.max)
        && min > max
    {
        p.add(
            &key,
            ManifestProblem::Invalid(format!("min {min} is above max {max}")),
        );
    }
    if let ParameterValue::Number(v) = param.default {
        if param.min.is_some_and(|min| v < min) || param.max.is_some_and(|max| v > max) {
            p.add(
                format!("{key}.default"),
                ManifestProblem::Invalid(format!("{v} is outside min..max")),
            );
        }
    } else if param.min.is_some() || param.max.is_some() {
        p.add(
            &key,
            ManifestProblem::Invalid("min and max apply to numbers only".into()),
        );
    }
}

/// Turn a TOML/serde error into a manifest error naming the key where possible.
fn toml_error(file: &str, text: &str, e: &toml::de::Error) -> ManifestError {
    let message = e.message();
    let quoted = |prefix: &str| {
        message
            .strip_prefix(prefix)
            .and_then(|rest| rest.split('`').next())
            .map(str::to_owned)
    };
    let line_of = |offset: usize| text[..offset.min(text.len())].matches('\n').count() + 1;
    let (key, problem) = if let Some(key) = quoted("unknown field `") {
        (Some(key), ManifestProblem::UnknownKey)
    } else if let Some(key) = quoted("missing field `") {
        (Some(key), ManifestProblem::MissingKey)
    } else {
        // Name the key on the offending line: `key = value`.
        let key = e.span().and_then(|span| {
            let start = text[..span.start.min(text.len())]
                .rfind('\n')
                .map_or(0, |i| i + 1);
            let line = text[start..].lines().next().unwrap_or("");
            line.split_once('=').map(|(k, _)| k.trim().to_owned())
        });
        let at = e
            .span()
            .map(|s| format!(" (line {})", line_of(s.start)))
            .unwrap_or_default();
        (
            key,
            ManifestProblem::Syntax(format!("{}{at}", message.trim())),
        )
    };
    ManifestError {
        file: file.to_owned(),
        key,
        problem,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = r#"
id = "cube"
title = "Cube"
summary = "A cube."
version = "1.0.0"
licence = "CERN-OHL-S-2.0"
process = "fdm"
materials = ["PLA"]
tags = ["calibration"]

[[authors]]
name = "Ada"

[parameters.size]
default = 15
unit = "mm"
min = 5
max = 50

[[sources]]
file = "cube.stl"

[[gcode]]
profile = "generic-marlin-220"
file = "cube.gcode"
"#;

    fn errors(text: &str) -> Vec<ManifestError> {
        Manifest::parse("d/design.toml", text).unwrap_err()
    }

    #[test]
    fn a_complete_manifest_parses() {
        let m = Manifest::parse("d/design.toml", GOOD).unwrap();
        assert_eq!(m.id.as_str(), "cube");
        assert_eq!(m.sources[0].format, SourceFormat::Stl);
        assert_eq!(m.gcode[0].profile.as_str(), "generic-marlin-220");
        assert_eq!(m.parameters["size"].default, ParameterValue::Number(15.0));
    }

    #[test]
    fn an_unknown_key_is_named_with_the_file() {
        let e = errors(&format!("colour = \"red\"\n{GOOD}"));
        assert_eq!(e[0].key.as_deref(), Some("colour"));
        assert_eq!(e[0].problem, ManifestProblem::UnknownKey);
        assert!(
            e[0].to_string().starts_with("d/design.toml: key `colour`"),
            "{}",
            e[0]
        );
    }

    #[test]
    fn an_unknown_key_in_a_nested_table_is_an_error() {
        let e = errors(&GOOD.replace(
            "file = \"cube.gcode\"",
            "file = \"cube.gcode\"\nnozzle = 0.4",
        ));
        assert_eq!(e[0].key.as_deref(), Some("nozzle"));
    }

    #[test]
    fn a_missing_key_is_named() {
        let e = errors(&GOOD.replace("version = \"1.0.0\"\n", ""));
        assert_eq!(e[0].key.as_deref(), Some("version"));
        assert_eq!(e[0].problem, ManifestProblem::MissingKey);
    }

    #[test]
    fn a_bad_slug_is_named() {
        let e = errors(&GOOD.replace("id = \"cube\"", "id = \"Cube Nr 1\""));
        assert_eq!(e[0].key.as_deref(), Some("id"));
        assert!(matches!(
            e[0].problem,
            ManifestProblem::Name(NameError::Slug(_))
        ));
    }

    #[test]
    fn a_non_commercial_licence_is_refused_with_the_reason() {
        let e = errors(&GOOD.replace("CERN-OHL-S-2.0", "CC-BY-NC-4.0"));
        assert_eq!(e[0].key.as_deref(), Some("licence"));
        assert!(e[0].to_string().contains("non-commercial"), "{}", e[0]);
    }

    #[test]
    fn parent_and_absolute_paths_are_refused() {
        let e = errors(&GOOD.replace("file = \"cube.stl\"", "file = \"../other/cube.stl\""));
        assert_eq!(e[0].key.as_deref(), Some("sources[0].file"));
        assert!(matches!(e[0].problem, ManifestProblem::ParentPath(_)));
        let e = errors(&GOOD.replace("file = \"cube.gcode\"", "file = \"/etc/cube.gcode\""));
        assert_eq!(e[0].key.as_deref(), Some("gcode[0].file"));
        assert!(matches!(e[0].problem, ManifestProblem::AbsolutePath(_)));
    }

    #[test]
    fn every_problem_is_reported_not_just_the_first() {
        let e = errors(
            &GOOD
                .replace("process = \"fdm\"", "process = \"sla\"")
                .replace("materials = [\"PLA\"]", "materials = [\"pla\"]")
                .replace("default = 15", "default = 99"),
        );
        let keys: Vec<_> = e.iter().filter_map(|e| e.key.as_deref()).collect();
        assert_eq!(keys, ["process", "materials[0]", "parameters.size.default"]);
    }

    #[test]
    fn a_wrong_type_names_the_key_and_line() {
        let e = errors(&GOOD.replace("version = \"1.0.0\"", "version = 1"));
        assert_eq!(e[0].key.as_deref(), Some("version"));
        assert!(e[0].to_string().contains("line 5"), "{}", e[0]);
    }

    #[test]
    fn unsupported_source_formats_and_duplicate_profiles_are_refused() {
        let e = errors(&GOOD.replace("cube.stl", "cube.blend"));
        assert_eq!(e[0].key.as_deref(), Some("sources[0].file"));
        let twice =
            format!("{GOOD}\n[[gcode]]\nprofile = \"generic-marlin-220\"\nfile = \"b.gcode\"\n");
        assert_eq!(errors(&twice)[0].key.as_deref(), Some("gcode[1].profile"));
    }
}
