//! Services configured by environment (CI sets both variables).

use std::net::{TcpStream, ToSocketAddrs};
use std::time::Duration;

/// External MQTT broker for tests, e.g. `mqtt://127.0.0.1:1883`.
pub const MQTT_URL_VAR: &str = "MUNIFAB_TEST_MQTT_URL";
/// External PostgreSQL for tests, e.g. `postgres://postgres@127.0.0.1:5432/test`.
pub const DATABASE_URL_VAR: &str = "MUNIFAB_TEST_DATABASE_URL";

/// The URL in `var`, if set and non-empty. When it is set, the service must be reachable:
/// this panics (failing the test) with a message naming the variable and the address
/// instead of letting the test skip silently.
pub fn required_url(var: &str) -> Option<String> {
    let url = std::env::var(var).ok().filter(|v| !v.trim().is_empty())?;
    require_reachable(var, &url);
    Some(url)
}

/// Panics, naming `var` and the address, unless something accepts TCP connections at the
/// host and port of `url`.
pub fn require_reachable(var: &str, url: &str) {
    let (host, port) =
        host_port(url).unwrap_or_else(|| panic!("{var}={url} is not a URL with a host"));
    let reachable = (host.as_str(), port)
        .to_socket_addrs()
        .ok()
        .into_iter()
        .flatten()
        .any(|addr| TcpStream::connect_timeout(&addr, Duration::from_secs(3)).is_ok());
    assert!(
        reachable,
        "{var} is set to {url}, but nothing accepts connections at {host}:{port}. \
         Start the service (see .ci/run) or unset {var} to test against the embedded defaults only."
    );
}

/// The external MQTT broker URL, when CI asked for one (and it is reachable).
pub fn mqtt_url() -> Option<String> {
    required_url(MQTT_URL_VAR)
}

/// The external PostgreSQL URL, when CI asked for one (and it is reachable).
pub fn database_url() -> Option<String> {
    required_url(DATABASE_URL_VAR)
}

/// Host and port of `scheme://[user[:pass]@]host[:port][/…]`, with the scheme's default port.
pub fn host_port(url: &str) -> Option<(String, u16)> {
    let (scheme, rest) = url.split_once("://")?;
    let authority = rest.split(['/', '?']).next()?;
    let hostport = authority.rsplit_once('@').map_or(authority, |(_, h)| h);
    let default = match scheme {
        "mqtt" | "tcp" => 1883,
        "mqtts" | "ssl" => 8883,
        "postgres" | "postgresql" => 5432,
        _ => return None,
    };
    match hostport.rsplit_once(':') {
        Some((h, p)) if !h.is_empty() => {
            Some((h.trim_matches(['[', ']']).to_string(), p.parse().ok()?))
        }
        _ if !hostport.is_empty() => Some((hostport.to_string(), default)),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_port_understands_the_urls_ci_sets() {
        assert_eq!(
            host_port("mqtt://127.0.0.1:1883"),
            Some(("127.0.0.1".into(), 1883))
        );
        assert_eq!(host_port("mqtt://broker"), Some(("broker".into(), 1883)));
        assert_eq!(
            host_port("postgres://postgres@127.0.0.1:5432/test"),
            Some(("127.0.0.1".into(), 5432))
        );
        assert_eq!(
            host_port("postgres://u:p@db/test?sslmode=disable"),
            Some(("db".into(), 5432))
        );
        assert_eq!(host_port("nonsense"), None);
        assert_eq!(host_port("http://x"), None);
    }

    #[test]
    #[should_panic(expected = "nothing accepts connections at 127.0.0.1:9")]
    fn a_configured_but_unreachable_service_fails_instead_of_skipping() {
        // Port 9 (discard) on loopback: nothing listens there in a test sandbox.
        require_reachable("MUNIFAB_TEST_MQTT_URL", "mqtt://127.0.0.1:9");
    }
}
