//! What slicers and CAM post-processors write about a file in its comments: who made it,
//! for which printer, nozzle and material, how long they think it takes, and thumbnails.
//!
//! Each slicer has its own spelling. PrusaSlicer, SuperSlicer and OrcaSlicer write
//! `; key = value` (the full configuration, usually at the end of the file); OrcaSlicer also
//! writes `; total estimated time: 1h 2m` in its header; Cura writes `;KEY:value`;
//! Simplify3D writes `;   key,value` and a build summary; Fusion posts write `( … )`
//! blocks with the machine and tools. Unknown comments cost a few byte comparisons.

use base64::Engine;
use serde::{Serialize, Serializer};

use super::finding::{FindingCode, FindingSink};
use super::lexer::parse_number;

/// Metadata a slicer or CAM post-processor left in the file's comments.
#[derive(Debug, Clone, PartialEq, Default, Serialize)]
pub struct SlicerInfo {
    /// `PrusaSlicer`, `OrcaSlicer`, `Cura`, `Simplify3D`, `Fusion`, …
    pub name: Option<String>,
    /// Version as written.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub version: Option<String>,
    /// Printer or machine model the file was prepared for.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub printer_model: Option<String>,
    /// Nozzle diameter, mm (first extruder).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub nozzle_diameter_mm: Option<f64>,
    /// Layer height, mm.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub layer_height_mm: Option<f64>,
    /// Filament type, upper case (first extruder).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub filament_type: Option<String>,
    /// Filament diameter, mm.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub filament_diameter_mm: Option<f64>,
    /// Filament density, g/cm³.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub filament_density_g_cm3: Option<f64>,
    /// The slicer's own time estimate, seconds.
    pub estimated_seconds: Option<f64>,
    /// Filament length the slicer computed, mm (all extruders).
    pub filament_mm: Option<f64>,
    /// Filament mass the slicer computed, g.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub filament_g: Option<f64>,
    /// Line that named the nozzle, to point findings at.
    #[serde(skip)]
    pub nozzle_line: Option<u64>,
    /// Line that named the filament type.
    #[serde(skip)]
    pub filament_type_line: Option<u64>,
}

/// Image format of an embedded thumbnail.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ThumbnailFormat {
    /// PNG (`; thumbnail begin`).
    Png,
    /// QOI (`; thumbnail_QOI begin`).
    Qoi,
    /// JPEG (`; thumbnail_JPG begin`).
    Jpg,
}

/// A thumbnail embedded as base64 comment lines, decoded.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Thumbnail {
    /// Image format.
    pub format: ThumbnailFormat,
    /// Width in pixels, as declared.
    pub width: u32,
    /// Height in pixels, as declared.
    pub height: u32,
    /// Line of the `begin` marker.
    pub line: u64,
    /// The decoded image file (JSON shows only its length).
    #[serde(rename = "bytes", serialize_with = "length_only")]
    pub data: Vec<u8>,
}

fn length_only<S: Serializer>(data: &[u8], s: S) -> Result<S::Ok, S::Error> {
    s.serialize_u64(data.len() as u64)
}

/// Largest base64 text kept for one thumbnail; beyond it the block is dropped with a
/// warning, so a hostile file cannot make the analysis grow.
const MAX_THUMBNAIL_BASE64: usize = 4 << 20;
/// Most thumbnails kept.
const MAX_THUMBNAILS: usize = 8;

#[derive(Debug, Clone, PartialEq)]
struct OpenThumbnail {
    format: ThumbnailFormat,
    width: u32,
    height: u32,
    line: u64,
    base64: Vec<u8>,
    overflow: bool,
}

/// Hints on the dialect or process a comment gave.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub(crate) struct Hints {
    /// An FDM slicer wrote this file (line).
    pub fdm_slicer: Option<u64>,
    /// A CAM post-processor wrote this file (line).
    pub cam: Option<u64>,
    /// A laser program wrote this file (line).
    pub laser: Option<u64>,
}

/// Reads comments one by one.
#[derive(Debug, Clone, PartialEq, Default)]
pub(crate) struct SlicerScanner {
    info: SlicerInfo,
    seen: bool,
    thumbnails: Vec<Thumbnail>,
    open: Option<OpenThumbnail>,
    pub(crate) hints: Hints,
}

impl SlicerScanner {
    /// Looks at one comment's text (without `;` or parentheses).
    pub(crate) fn comment(&mut self, text: &[u8], line: u64, findings: &mut FindingSink) {
        let t = trim(text);
        if t.is_empty() {
            return;
        }
        if self.open.is_some() {
            self.thumbnail_line(t, line, findings);
            return;
        }
        if let Some(rest) = strip_prefix_ci(t, b"thumbnail") {
            self.thumbnail_begin(rest, line);
            return;
        }
        if let Some(rest) = strip_prefix_ci(t, b"generated by ") {
            let (name, rest) = split_word(rest);
            self.set_name(name, split_word(rest).0, line);
            return;
        }
        if let Some(rest) = strip_prefix_ci(t, b"generated with cura_steamengine") {
            self.set_name(b"Cura", trim(rest), line);
            return;
        }
        if let Some(rest) = strip_prefix_ci(t, b"g-code generated by simplify3d(r) version") {
            self.set_name(b"Simplify3D", trim(rest), line);
            return;
        }
        if strip_prefix_ci(t, b"lightburn").is_some() {
            self.set_name(b"LightBurn", b"", line);
            self.hints.laser.get_or_insert(line);
            return;
        }
        if let Some(eq) = find(t, b" = ") {
            self.key_value(trim(&t[..eq]), trim(&t[eq + 3..]), line);
            return;
        }
        if let Some(colon) = memchr::memchr(b':', t) {
            self.key_colon(trim(&t[..colon]), trim(&t[colon + 1..]), line);
            return;
        }
        if let Some(comma) = memchr::memchr(b',', t) {
            self.key_comma(trim(&t[..comma]), trim(&t[comma + 1..]), line);
            return;
        }
        // Fusion tool table lines: `T1 D=6.35 CR=0 - ZMIN=-5 - flat end mill`.
        if t.len() > 3 && t[0] == b'T' && t[1].is_ascii_digit() && find(t, b" D=").is_some() {
            self.set_name(b"Fusion", b"", line);
            self.hints.cam.get_or_insert(line);
        }
    }

    fn set_name(&mut self, name: &[u8], version: &[u8], line: u64) {
        self.seen = true;
        if self.info.name.is_none() {
            let name = text(name);
            let fdm = [
                "prusaslicer",
                "superslicer",
                "orcaslicer",
                "bambustudio",
                "slic3r",
                "cura",
                "simplify3d",
                "ideamaker",
                "kisslicer",
            ];
            if fdm.iter().any(|s| name.to_ascii_lowercase().starts_with(s)) {
                self.hints.fdm_slicer.get_or_insert(line);
            }
            self.info.name = Some(name);
            if !version.is_empty() {
                self.info.version = Some(text(version));
            }
        }
    }

    /// PrusaSlicer / OrcaSlicer configuration: `; key = value`.
    fn key_value(&mut self, key: &[u8], value: &[u8], line: u64) {
        let info = &mut self.info;
        match key {
            b"estimated printing time (normal mode)" => {
                set(&mut info.estimated_seconds, parse_duration(value))
            }
            b"filament used [mm]" => set(&mut info.filament_mm, sum_list(value)),
            b"filament used [g]" | b"total filament used [g]" => {
                set(&mut info.filament_g, sum_list(value))
            }
            b"filament_type" => {
                if info.filament_type.is_none() {
                    info.filament_type = first_item(value).map(|v| text(v).to_ascii_uppercase());
                    info.filament_type_line = Some(line);
                }
            }
            b"nozzle_diameter" => {
                if info.nozzle_diameter_mm.is_none() {
                    info.nozzle_diameter_mm = first_item(value).and_then(number);
                    info.nozzle_line = Some(line);
                }
            }
            b"layer_height" => set(&mut info.layer_height_mm, number(value)),
            b"filament_diameter" => set(
                &mut info.filament_diameter_mm,
                first_item(value).and_then(number),
            ),
            b"filament_density" => set(
                &mut info.filament_density_g_cm3,
                first_item(value).and_then(number),
            ),
            b"printer_model" if !value.is_empty() => {
                set(&mut info.printer_model, Some(text(unquote(value))))
            }
            b"printer_settings_id" if !value.is_empty() && info.printer_model.is_none() => {
                info.printer_model = Some(text(unquote(value)));
            }
            _ => return,
        }
        self.seen = true;
    }

    /// Cura (`;KEY:value`), OrcaSlicer's header and Fusion's machine block (`key: value`).
    fn key_colon(&mut self, key: &[u8], value: &[u8], line: u64) {
        let info = &mut self.info;
        match key {
            b"TIME" | b"PRINT.TIME" => set(&mut info.estimated_seconds, number(value)),
            b"Filament used" => set(&mut info.filament_mm, sum_list(value).map(|m| m * 1000.0)),
            b"Layer height" => set(&mut info.layer_height_mm, number(value)),
            b"TARGET_MACHINE.NAME" => set(&mut info.printer_model, Some(text(value))),
            b"EXTRUDER_TRAIN.0.NOZZLE.DIAMETER" => {
                if info.nozzle_diameter_mm.is_none() {
                    info.nozzle_diameter_mm = number(value);
                    info.nozzle_line = Some(line);
                }
            }
            b"FLAVOR" => {
                self.hints.fdm_slicer.get_or_insert(line);
            }
            _ => {
                let is = |k: &[u8]| key.eq_ignore_ascii_case(k);
                if is(b"model printing time") {
                    // Orca writes both on one line: `model printing time: 1m; total estimated time: 2m`.
                    if let Some(at) = find(&value.to_ascii_lowercase(), b"total estimated time:") {
                        set(
                            &mut info.estimated_seconds,
                            parse_duration(&value[at + 21..]),
                        );
                    }
                } else if is(b"total estimated time")
                    || is(b"machining time")
                    || is(b"cycle time")
                    || is(b"build time")
                {
                    set(&mut info.estimated_seconds, parse_duration(value));
                } else if is(b"total filament length [mm]") || is(b"filament length") {
                    set(&mut info.filament_mm, number(value));
                } else if is(b"total filament weight [g]") || is(b"plastic weight") {
                    set(&mut info.filament_g, number(value));
                } else if is(b"model") {
                    set(&mut info.printer_model, Some(text(value)));
                } else if is(b"vendor") {
                    self.hints.cam.get_or_insert(line);
                    set(&mut info.name, Some("Fusion".into()));
                } else {
                    return;
                }
            }
        }
        self.seen = true;
    }

    /// Simplify3D: `;   key,value`.
    fn key_comma(&mut self, key: &[u8], value: &[u8], line: u64) {
        let info = &mut self.info;
        match key {
            b"layerHeight" => set(&mut info.layer_height_mm, number(value)),
            b"extruderDiameter" => {
                if info.nozzle_diameter_mm.is_none() {
                    info.nozzle_diameter_mm = first_item(value).and_then(number);
                    info.nozzle_line = Some(line);
                }
            }
            b"filamentDiameters" => set(
                &mut info.filament_diameter_mm,
                first_item(value).and_then(number),
            ),
            b"filamentDensities" => set(
                &mut info.filament_density_g_cm3,
                first_item(value).and_then(number),
            ),
            b"printerModel" | b"printerName" if !value.is_empty() => {
                set(&mut info.printer_model, Some(text(value)))
            }
            _ => return,
        }
        self.seen = true;
    }

    fn thumbnail_begin(&mut self, rest: &[u8], line: u64) {
        let (format, rest) = if let Some(r) = strip_prefix_ci(rest, b"_qoi") {
            (ThumbnailFormat::Qoi, r)
        } else if let Some(r) = strip_prefix_ci(rest, b"_jpg") {
            (ThumbnailFormat::Jpg, r)
        } else if let Some(r) = strip_prefix_ci(rest, b"_png") {
            (ThumbnailFormat::Png, r)
        } else {
            (ThumbnailFormat::Png, rest)
        };
        let Some(rest) = strip_prefix_ci(trim(rest), b"begin") else {
            return;
        };
        let (size, rest) = split_word(trim(rest));
        let (w, h) = match memchr::memchr(b'x', size) {
            Some(x) => (int(&size[..x]), int(&size[x + 1..])),
            None => (None, None),
        };
        let declared = int(split_word(rest).0).unwrap_or(0) as usize;
        self.open = Some(OpenThumbnail {
            format,
            width: w.unwrap_or(0),
            height: h.unwrap_or(0),
            line,
            base64: Vec::with_capacity(declared.min(MAX_THUMBNAIL_BASE64)),
            overflow: false,
        });
    }

    fn thumbnail_line(&mut self, t: &[u8], line: u64, findings: &mut FindingSink) {
        let is_end = strip_prefix_ci(t, b"thumbnail").is_some_and(|rest| rest.ends_with(b"end"));
        let Some(open) = self.open.as_mut() else {
            return;
        };
        if !is_end {
            if open.base64.len() + t.len() > MAX_THUMBNAIL_BASE64 {
                open.overflow = true;
            } else if !open.overflow {
                open.base64.extend_from_slice(t);
            }
            return;
        }
        let Some(open) = self.open.take() else {
            return;
        };
        if open.overflow {
            findings.push(FindingCode::InvalidThumbnail, open.line, 1, || {
                format!(
                    "thumbnail larger than {} MiB, skipped",
                    MAX_THUMBNAIL_BASE64 >> 20
                )
            });
            return;
        }
        match base64::engine::general_purpose::STANDARD.decode(&open.base64) {
            Ok(data) if self.thumbnails.len() < MAX_THUMBNAILS => self.thumbnails.push(Thumbnail {
                format: open.format,
                width: open.width,
                height: open.height,
                line: open.line,
                data,
            }),
            Ok(_) => {}
            Err(e) => findings.push(FindingCode::InvalidThumbnail, open.line, 1, || {
                format!("thumbnail ending on line {line} is not valid base64 ({e})")
            }),
        }
    }

    /// The metadata (if any comment was recognised) and the thumbnails.
    pub(crate) fn finish(
        self,
        line: u64,
        findings: &mut FindingSink,
    ) -> (Option<SlicerInfo>, Vec<Thumbnail>) {
        if let Some(open) = &self.open {
            findings.push(FindingCode::InvalidThumbnail, open.line, 1, || {
                format!("thumbnail never ends (file ends on line {line})")
            });
        }
        (self.seen.then_some(self.info), self.thumbnails)
    }
}

fn set<T>(slot: &mut Option<T>, value: Option<T>) {
    if slot.is_none() {
        *slot = value;
    }
}

fn trim(s: &[u8]) -> &[u8] {
    s.trim_ascii()
}

fn text(s: &[u8]) -> String {
    String::from_utf8_lossy(s).into_owned()
}

fn unquote(s: &[u8]) -> &[u8] {
    s.strip_prefix(b"\"")
        .and_then(|s| s.strip_suffix(b"\""))
        .unwrap_or(s)
}

fn strip_prefix_ci<'a>(s: &'a [u8], prefix: &[u8]) -> Option<&'a [u8]> {
    (s.len() >= prefix.len() && s[..prefix.len()].eq_ignore_ascii_case(prefix))
        .then(|| &s[prefix.len()..])
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

fn split_word(s: &[u8]) -> (&[u8], &[u8]) {
    match memchr::memchr(b' ', s) {
        Some(i) => (&s[..i], trim(&s[i + 1..])),
        None => (s, b""),
    }
}

fn first_item(s: &[u8]) -> Option<&[u8]> {
    let end = s
        .iter()
        .position(|&b| b == b',' || b == b';')
        .unwrap_or(s.len());
    let item = trim(unquote(trim(&s[..end])));
    (!item.is_empty()).then_some(item)
}

/// Header figures are read once, so they take the correctly rounded path.
fn number(s: &[u8]) -> Option<f64> {
    let s = trim(s);
    let (_, used) = parse_number(s)?;
    std::str::from_utf8(&s[..used]).ok()?.parse().ok()
}

fn int(s: &[u8]) -> Option<u32> {
    std::str::from_utf8(s).ok()?.trim().parse().ok()
}

/// Sums `1.5, 2.5` or `1.2m, 0.3m` lists (one figure per extruder).
fn sum_list(s: &[u8]) -> Option<f64> {
    let mut total = None;
    for item in s.split(|&b| b == b',' || b == b';') {
        if let Some(v) = number(item) {
            *total.get_or_insert(0.0) += v;
        }
    }
    total
}

/// Reads `1d 2h 3m 4s`, `34m 57s`, `1 hours 2 minutes`, `12m:30s` or plain seconds.
pub(crate) fn parse_duration(s: &[u8]) -> Option<f64> {
    let mut total = 0.0;
    let mut any = false;
    let mut i = 0;
    while i < s.len() {
        let Some((n, used)) = parse_number(&s[i..]) else {
            i += 1;
            continue;
        };
        i += used;
        while i < s.len() && s[i] == b' ' {
            i += 1;
        }
        let unit_start = i;
        while i < s.len() && s[i].is_ascii_alphabetic() {
            i += 1;
        }
        let unit = s[unit_start..i].to_ascii_lowercase();
        let scale = match unit.first() {
            Some(b'd') => 86_400.0,
            Some(b'h') => 3_600.0,
            Some(b'm') if !unit.starts_with(b"ms") => 60.0,
            Some(b's') | None => 1.0,
            _ => return None,
        };
        total += n.value * scale;
        any = true;
    }
    any.then_some(total)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_in_every_slicer_spelling() {
        assert_eq!(parse_duration(b"1d 2h 3m 4s"), Some(93_784.0));
        assert_eq!(parse_duration(b"34m 57s"), Some(2_097.0));
        assert_eq!(parse_duration(b"1 hours 2 minutes"), Some(3_720.0));
        assert_eq!(parse_duration(b"12m:30s"), Some(750.0));
        assert_eq!(parse_duration(b"6666"), Some(6_666.0));
        assert_eq!(parse_duration(b"soon"), None);
    }

    #[test]
    fn orca_header_line_gives_the_total_time() {
        let mut s = SlicerScanner::default();
        let mut f = FindingSink::new();
        s.comment(
            b" model printing time: 28m 8s; total estimated time: 34m 57s",
            3,
            &mut f,
        );
        let (info, _) = s.finish(3, &mut f);
        assert_eq!(info.unwrap().estimated_seconds, Some(2_097.0));
    }

    #[test]
    fn simplify3d_settings_and_summary_are_read() {
        let mut s = SlicerScanner::default();
        let mut f = FindingSink::new();
        for (i, c) in [
            " G-Code generated by Simplify3D(R) Version 4.1.2",
            "   layerHeight,0.2",
            "   extruderDiameter,0.4",
            "   Build time: 1 hours 2 minutes",
            "   Filament length: 1234.5 mm (1.23 m)",
        ]
        .iter()
        .enumerate()
        {
            s.comment(c.as_bytes(), i as u64 + 1, &mut f);
        }
        let info = s.finish(5, &mut f).0.unwrap();
        assert_eq!(info.name.as_deref(), Some("Simplify3D"));
        assert_eq!(info.version.as_deref(), Some("4.1.2"));
        assert_eq!(info.layer_height_mm, Some(0.2));
        assert_eq!(info.nozzle_diameter_mm, Some(0.4));
        assert_eq!(info.nozzle_line, Some(3));
        assert_eq!(info.estimated_seconds, Some(3_720.0));
        assert_eq!(info.filament_mm, Some(1234.5));
    }
}
