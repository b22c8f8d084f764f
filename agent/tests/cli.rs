//! The `munifab-agent` binary: `check` validates a configuration and reports clearly.

use std::process::Command;

fn agent() -> Command {
    Command::new(env!("CARGO_BIN_EXE_munifab-agent"))
}

#[test]
fn check_accepts_the_shipped_example() {
    let example = concat!(env!("CARGO_MANIFEST_DIR"), "/examples/agent.toml");
    let out = agent()
        .args(["check", "--config", example])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("2 machine(s)"), "{stdout}");
    assert!(
        stdout.contains("mk3") && stdout.contains("router"),
        "{stdout}"
    );
}

#[test]
fn check_refuses_an_unknown_key_naming_file_and_key() {
    let dir = std::env::temp_dir().join(format!("munifab-cli-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let example =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/examples/agent.toml"))
            .unwrap();
    let path = dir.join("agent.toml");
    std::fs::write(
        &path,
        example.replace("[broker]", "[broker]\npasword = \"x\""),
    )
    .unwrap();
    let out = agent()
        .args(["check", "--config"])
        .arg(&path)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        stderr.contains("agent.toml") && stderr.contains("pasword"),
        "{stderr}"
    );
    std::fs::remove_dir_all(dir).unwrap();
}

#[test]
fn check_fails_when_a_serial_port_cannot_be_opened() {
    let dir = std::env::temp_dir().join(format!("munifab-cli-port-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let example =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/examples/agent.toml"))
            .unwrap();
    let path = dir.join("agent.toml");
    std::fs::write(
        &path,
        example
            .replacen(
                "port = \"virtual:marlin\"",
                "port = \"/dev/serial/by-id/usb-not-plugged-in\"",
                1,
            )
            .lines()
            .filter(|l| {
                !l.starts_with("[machines.virtual]")
                    && !l.starts_with("speed =")
                    && !l.starts_with("paced =")
            })
            .collect::<Vec<_>>()
            .join("\n"),
    )
    .unwrap();
    let out = agent()
        .args(["check", "--config"])
        .arg(&path)
        .output()
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(!out.status.success(), "{text}");
    assert!(text.contains("usb-not-plugged-in"), "{text}");
    std::fs::remove_dir_all(dir).unwrap();
}
