//! Telemetry parsed from firmware reports: temperatures, positions, GRBL status reports.

/// One telemetry sample.
#[derive(Debug, Clone, PartialEq)]
pub enum Telemetry {
    /// Heater temperatures (Marlin `T:… B:…`).
    Temperatures(Vec<Heater>),
    /// Axis positions (Marlin `M114`).
    Position(Position),
    /// A GRBL status report (`<Idle|MPos:…|FS:…>`).
    Status(GrblStatus),
}

/// A heater reading.
#[derive(Debug, Clone, PartialEq)]
pub struct Heater {
    /// Firmware's name for it: `T`, `T0`, `B`, `C`, `A`, `P`…
    pub name: String,
    /// Current temperature in °C.
    pub current: f64,
    /// Target temperature in °C, when reported.
    pub target: Option<f64>,
}

/// Axis positions in millimetres (axes the report did not mention are `None`).
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Position {
    /// X axis.
    pub x: Option<f64>,
    /// Y axis.
    pub y: Option<f64>,
    /// Z axis.
    pub z: Option<f64>,
    /// Extruder.
    pub e: Option<f64>,
}

/// GRBL machine state from a status report.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MachineState {
    /// Idle, ready.
    Idle,
    /// Running a cycle.
    Run,
    /// Feed hold; `true` once decelerated and ready to resume (`Hold:0`).
    Hold {
        /// Hold complete.
        complete: bool,
    },
    /// Jogging.
    Jog,
    /// Alarm: locked until unlock or reset.
    Alarm,
    /// Safety door, with GRBL's sub-state.
    Door(u8),
    /// Check mode (`$C`).
    Check,
    /// Homing.
    Home,
    /// Sleeping.
    Sleep,
    /// Anything else (newer firmware).
    Unknown,
}

/// A parsed GRBL status report. Fields the report left out are `None`.
#[derive(Debug, Clone, PartialEq)]
pub struct GrblStatus {
    /// Machine state.
    pub state: MachineState,
    /// Machine position.
    pub mpos: Option<Vec<f64>>,
    /// Work position.
    pub wpos: Option<Vec<f64>>,
    /// Work coordinate offset.
    pub wco: Option<Vec<f64>>,
    /// Feed rate and spindle speed.
    pub feed: Option<f64>,
    /// Spindle speed.
    pub spindle: Option<f64>,
    /// Free planner blocks and free RX bytes (`Bf:`).
    pub buffer: Option<(u32, u32)>,
    /// Executing line number (`Ln:`).
    pub line: Option<u32>,
    /// Feed, rapid and spindle overrides in percent (`Ov:`).
    pub overrides: Option<(u32, u32, u32)>,
}

/// Parse a Marlin temperature report (`ok T:210.0 /210.0 B:60 /60 @:127`, or an auto-report
/// line). Returns `None` when the line holds no heater.
pub fn parse_temperatures(line: &str) -> Option<Vec<Heater>> {
    let body = line.strip_prefix("ok").unwrap_or(line);
    let mut heaters: Vec<Heater> = Vec::new();
    for token in body.split_whitespace() {
        if let Some(target) = token.strip_prefix('/') {
            // A separate `/target` token belongs to the heater just read.
            if let (Some(last), Ok(t)) = (heaters.last_mut(), target.parse::<f64>())
                && last.target.is_none()
            {
                last.target = Some(t);
            }
            continue;
        }
        let Some((key, value)) = token.split_once(':') else {
            continue;
        };
        let is_heater = key
            .chars()
            .next()
            .is_some_and(|c| matches!(c, 'T' | 'B' | 'C' | 'A' | 'P' | 'L' | 'R'))
            && key.len() <= 3
            && key[1..].bytes().all(|b| b.is_ascii_digit())
            && !key.contains('@');
        if !is_heater {
            continue;
        }
        let (current, inline_target) = match value.split_once('/') {
            Some((c, t)) => (c, t.parse::<f64>().ok()),
            None => (value, None),
        };
        let Ok(current) = current.parse::<f64>() else {
            continue;
        };
        heaters.push(Heater {
            name: key.to_owned(),
            current,
            target: inline_target,
        });
    }
    (!heaters.is_empty()).then_some(heaters)
}

/// Parse a Marlin `M114` report (`X:10.00 Y:20.00 Z:0.30 E:1.20 Count X:…`).
pub fn parse_position(line: &str) -> Option<Position> {
    let head = line.split(" Count").next().unwrap_or(line);
    if !head.starts_with("X:") {
        return None;
    }
    let mut pos = Position::default();
    for token in head.split_whitespace() {
        let Some((axis, value)) = token.split_once(':') else {
            continue;
        };
        let Ok(v) = value.parse::<f64>() else {
            continue;
        };
        match axis {
            "X" => pos.x = Some(v),
            "Y" => pos.y = Some(v),
            "Z" => pos.z = Some(v),
            "E" => pos.e = Some(v),
            _ => {}
        }
    }
    pos.x.map(|_| pos)
}

fn numbers(text: &str) -> Option<Vec<f64>> {
    text.split(',').map(|v| v.parse().ok()).collect()
}

/// Parse a GRBL status report `<State|Field:…|…>`.
pub fn parse_grbl_status(line: &str) -> Option<GrblStatus> {
    let inner = line.strip_prefix('<')?.strip_suffix('>')?;
    let mut fields = inner.split('|');
    let state_text = fields.next()?;
    let (name, sub) = match state_text.split_once(':') {
        Some((n, s)) => (n, s.parse::<u8>().ok()),
        None => (state_text, None),
    };
    let state = match name {
        "Idle" => MachineState::Idle,
        "Run" => MachineState::Run,
        "Hold" => MachineState::Hold {
            complete: sub == Some(0),
        },
        "Jog" => MachineState::Jog,
        "Alarm" => MachineState::Alarm,
        "Door" => MachineState::Door(sub.unwrap_or(0)),
        "Check" => MachineState::Check,
        "Home" => MachineState::Home,
        "Sleep" => MachineState::Sleep,
        _ => MachineState::Unknown,
    };
    let mut status = GrblStatus {
        state,
        mpos: None,
        wpos: None,
        wco: None,
        feed: None,
        spindle: None,
        buffer: None,
        line: None,
        overrides: None,
    };
    for field in fields {
        let Some((key, value)) = field.split_once(':') else {
            continue;
        };
        match key {
            "MPos" => status.mpos = numbers(value),
            "WPos" => status.wpos = numbers(value),
            "WCO" => status.wco = numbers(value),
            "F" => status.feed = value.parse().ok(),
            "FS" => {
                if let Some(v) = numbers(value)
                    && v.len() == 2
                {
                    status.feed = Some(v[0]);
                    status.spindle = Some(v[1]);
                }
            }
            "Bf" => {
                let mut it = value.split(',').map(|v| v.parse::<u32>().ok());
                if let (Some(Some(p)), Some(Some(r))) = (it.next(), it.next()) {
                    status.buffer = Some((p, r));
                }
            }
            "Ln" => status.line = value.parse().ok(),
            "Ov" => {
                let v: Option<Vec<u32>> = value.split(',').map(|v| v.parse().ok()).collect();
                if let Some(v) = v
                    && v.len() == 3
                {
                    status.overrides = Some((v[0], v[1], v[2]));
                }
            }
            _ => {}
        }
    }
    Some(status)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn marlin_temperatures_parse_with_and_without_spaces_before_targets() {
        let h = parse_temperatures("ok T:210.00 /210.00 B:60.00 /60.00 @:127 B@:0").unwrap();
        assert_eq!(h.len(), 2);
        assert_eq!(h[0].name, "T");
        assert_eq!(h[0].target, Some(210.0));
        assert_eq!(h[1].current, 60.0);
        let h = parse_temperatures(" T:32.87 /0.00 B:29.80 /0.00 A:43.00 /0.00 @:0").unwrap();
        assert_eq!(h.len(), 3);
        let h = parse_temperatures("ok T:16.7/0.0 B:16.2/0.0 T0:16.7/0.0 P:66.0 A:23.8").unwrap();
        assert_eq!(h.len(), 5);
        assert_eq!(h[0].target, Some(0.0));
        assert_eq!(h[3].name, "P");
        assert!(parse_temperatures("ok").is_none());
        assert!(parse_temperatures("ok N12 P15 B3").is_none());
    }

    #[test]
    fn marlin_position_reports_parse_before_the_count_part() {
        let p = parse_position("X:10.00 Y:20.50 Z:0.30 E:1.20 Count X:800 Y:1640 Z:120").unwrap();
        assert_eq!(
            (p.x, p.y, p.z, p.e),
            (Some(10.0), Some(20.5), Some(0.3), Some(1.2))
        );
        assert!(parse_position("echo:X:1").is_none());
    }

    #[test]
    fn grbl_status_reports_parse_every_field() {
        let s = parse_grbl_status(
            "<Hold:0|MPos:1.000,-2.500,3.000|Bf:15,128|Ln:99|FS:500,8000|Ov:100,50,120|WCO:0,0,0>",
        )
        .unwrap();
        assert_eq!(s.state, MachineState::Hold { complete: true });
        assert_eq!(s.mpos, Some(vec![1.0, -2.5, 3.0]));
        assert_eq!(s.buffer, Some((15, 128)));
        assert_eq!(s.line, Some(99));
        assert_eq!((s.feed, s.spindle), (Some(500.0), Some(8000.0)));
        assert_eq!(s.overrides, Some((100, 50, 120)));
        let s = parse_grbl_status("<Idle|WPos:0.000,0.000,0.000|F:0>").unwrap();
        assert_eq!(s.state, MachineState::Idle);
        assert!(s.wpos.is_some() && s.mpos.is_none());
        assert!(parse_grbl_status("<Idle|MPos:0,0,0").is_none());
    }
}
