//! `munifab-bridge analyze FILE [--profile PROFILE.toml] [--json]`.
//!
//! Exit codes: 0 the file is valid, 1 an error finding refuses it, 2 the file or the
//! profile cannot be read.

use std::fmt::Write as _;
use std::fs::File;
use std::io::BufReader;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use munifab_firmware_bridge::gcode::{Analysis, MachineProfile, analyze_reader};
use munifab_protocol::Box3;

/// Arguments of `analyze`.
#[derive(Debug, clap::Args)]
pub struct AnalyzeArgs {
    /// The G-code file.
    file: PathBuf,
    /// Machine profile (TOML) to validate against; its motion limits drive the estimate.
    #[arg(long)]
    profile: Option<PathBuf>,
    /// Print one JSON object instead of the readable report.
    #[arg(long)]
    json: bool,
    /// Filament density in g/cm³ for the mass (default: the slicer's, if it wrote one).
    #[arg(long)]
    density: Option<f64>,
}

pub fn run(args: &AnalyzeArgs) -> ExitCode {
    let (analysis, profile) = match analyze(args) {
        Ok(v) => v,
        Err(e) => {
            eprintln!("error: {e:#}");
            return ExitCode::from(2);
        }
    };
    if args.json {
        let mut value = serde_json::to_value(&analysis).expect("an analysis always serialises");
        if let Some(obj) = value.as_object_mut() {
            obj.insert("refused".into(), analysis.is_refused().into());
            obj.insert(
                "profile".into(),
                profile.as_ref().map(|p| p.id.clone()).into(),
            );
            let grams = analysis.summary(args.density).material_grams;
            obj.insert("material_grams".into(), grams.into());
        }
        println!("{value}");
    } else {
        print!("{}", report(args, &analysis, profile.as_ref()));
    }
    if analysis.is_refused() {
        ExitCode::from(1)
    } else {
        ExitCode::SUCCESS
    }
}

fn analyze(args: &AnalyzeArgs) -> anyhow::Result<(Analysis, Option<MachineProfile>)> {
    let profile = args
        .profile
        .as_deref()
        .map(MachineProfile::load)
        .transpose()?;
    let file = File::open(&args.file)
        .with_context(|| format!("cannot open G-code file {}", args.file.display()))?;
    let analysis = analyze_reader(BufReader::new(file), profile.as_ref())
        .with_context(|| format!("cannot read G-code file {}", args.file.display()))?;
    Ok((analysis, profile))
}

fn bounds(b: Option<Box3>) -> String {
    b.map_or_else(
        || "none".into(),
        |b| {
            format!(
                "x {:.2}..{:.2}  y {:.2}..{:.2}  z {:.2}..{:.2} mm",
                b.min.x, b.max.x, b.min.y, b.max.y, b.min.z, b.max.z
            )
        },
    )
}

fn duration(seconds: f64) -> String {
    let s = seconds.round() as u64;
    format!("{}h {:02}m {:02}s", s / 3600, s / 60 % 60, s % 60)
}

fn report(args: &AnalyzeArgs, a: &Analysis, profile: Option<&MachineProfile>) -> String {
    let mut out = String::new();
    let w = &mut out;
    let _ = writeln!(w, "{}", args.file.display());
    let _ = writeln!(w, "  {} lines, {} bytes", a.lines, a.bytes);
    let evidence: Vec<String> = a
        .flavour_evidence
        .iter()
        .map(|e| format!("{} (line {})", e.what, e.line))
        .collect();
    let _ = writeln!(
        w,
        "  dialect    {:?} for {:?}{}",
        a.flavour,
        a.process,
        if evidence.is_empty() {
            " (no dialect-specific commands)".to_string()
        } else {
            format!(": {}", evidence.join("; "))
        }
    );
    let _ = writeln!(w, "  moves      {}", bounds(a.bounds));
    let _ = writeln!(w, "  work       {}", bounds(a.work_bounds));
    let _ = writeln!(
        w,
        "  duration   {} (motion model)",
        duration(a.estimated_seconds)
    );
    if a.extrusion_mm.abs() > 0.0 {
        let grams = a
            .summary(args.density)
            .material_grams
            .map_or_else(String::new, |g| format!(", {g:.1} g"));
        let _ = writeln!(w, "  filament   {:.1} mm{grams}", a.extrusion_mm);
    }
    if let Some(h) = a.layer_heights {
        let _ = writeln!(
            w,
            "  layers     {} (first at z {:.2}, last at z {:.2}, {:.2}..{:.2} mm thick)",
            a.layers, h.first_z, h.last_z, h.min_mm, h.max_mm
        );
    }
    let t = &a.temperatures;
    let temp = |v: Option<f64>| v.map_or_else(|| "-".into(), |v| format!("{v} °C"));
    let _ = writeln!(
        w,
        "  heat       hotend {}  bed {}  chamber {}",
        temp(t.hotend_c),
        temp(t.bed_c),
        temp(t.chamber_c)
    );
    if let Some(f) = a.fan_max_percent {
        let _ = writeln!(w, "  fan        up to {f:.0}%");
    }
    if !a.spindle_rpm.is_empty() {
        let speeds: Vec<String> = a.spindle_rpm.iter().map(|s| format!("{s}")).collect();
        let _ = writeln!(w, "  spindle    {} rpm", speeds.join(", "));
    }
    for tool in &a.tools {
        let _ = writeln!(
            w,
            "  T{:<9} {:.1} mm filament, moves {}",
            tool.tool,
            tool.extrusion_mm,
            bounds(tool.bounds)
        );
    }
    if let Some(s) = &a.slicer {
        let _ = writeln!(
            w,
            "  slicer     {} {}",
            s.name.as_deref().unwrap_or("unknown"),
            s.version.as_deref().unwrap_or("")
        );
        if let Some(m) = &s.printer_model {
            let _ = writeln!(w, "    printer  {m}");
        }
        if let Some(n) = s.nozzle_diameter_mm {
            let _ = writeln!(w, "    nozzle   {n} mm");
        }
        if let Some(f) = &s.filament_type {
            let _ = writeln!(w, "    material {f}");
        }
        if let Some(e) = s.estimated_seconds {
            let _ = writeln!(w, "    time     {}", duration(e));
        }
        if let Some(f) = s.filament_mm {
            let _ = writeln!(w, "    filament {f:.1} mm");
        }
    }
    for t in &a.thumbnails {
        let _ = writeln!(
            w,
            "  thumbnail  {:?} {}x{} ({} bytes, line {})",
            t.format,
            t.width,
            t.height,
            t.data.len(),
            t.line
        );
    }
    match profile {
        Some(p) => {
            let _ = writeln!(w, "  checked against profile {} ({})", p.id, p.name);
        }
        None => {
            let _ = writeln!(w, "  no profile given: only commands were checked");
        }
    }
    for f in &a.findings {
        let _ = writeln!(w, "  {f}");
    }
    if a.suppressed_findings > 0 {
        let _ = writeln!(
            w,
            "  … and {} more findings of the same kinds",
            a.suppressed_findings
        );
    }
    let _ = writeln!(
        w,
        "{}",
        if a.is_refused() {
            "REFUSED: fix the errors above before sending this file"
        } else {
            "OK"
        }
    );
    out
}
