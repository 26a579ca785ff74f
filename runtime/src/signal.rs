//! Signal names and numbers as runc accepts them: `TERM`, `SIGTERM`, `15`, `RTMIN+3`.

use nix::sys::signal::Signal;

/// Parses a signal the way `runc kill` does. Returns the raw number (real-time
/// signals have no `Signal` variant).
pub fn parse(s: &str) -> Result<i32, String> {
    let t = s.trim();
    if let Ok(n) = t.parse::<i32>() {
        if n > 0 && n <= libc::SIGRTMAX() {
            return Ok(n);
        }
        return Err(format!("invalid signal number {n}"));
    }
    let up = t.to_ascii_uppercase();
    let name = up.strip_prefix("SIG").unwrap_or(&up);
    if let Some(rest) = name.strip_prefix("RTMIN") {
        let off: i32 = if rest.is_empty() { 0 } else { rest.parse().map_err(|_| format!("unknown signal {s:?}"))? };
        let n = libc::SIGRTMIN() + off;
        if off >= 0 && n <= libc::SIGRTMAX() {
            return Ok(n);
        }
    } else if let Some(rest) = name.strip_prefix("RTMAX") {
        let off: i32 = if rest.is_empty() { 0 } else { rest.parse().map_err(|_| format!("unknown signal {s:?}"))? };
        let n = libc::SIGRTMAX() + off;
        if off <= 0 && n >= libc::SIGRTMIN() {
            return Ok(n);
        }
    } else if let Ok(sig) = format!("SIG{name}").parse::<Signal>() {
        return Ok(sig as i32);
    } else if name == "IOT" {
        return Ok(libc::SIGABRT);
    }
    Err(format!("unknown signal {s:?}"))
}

#[cfg(test)]
mod tests {
    use super::parse;

    #[test]
    fn names_and_numbers() {
        assert_eq!(parse("TERM"), Ok(15));
        assert_eq!(parse("SIGTERM"), Ok(15));
        assert_eq!(parse("sigkill"), Ok(9));
        assert_eq!(parse("9"), Ok(9));
        assert_eq!(parse("RTMIN+1"), Ok(libc::SIGRTMIN() + 1));
        assert!(parse("NOPE").is_err());
        assert!(parse("0").is_err());
        assert!(parse("999").is_err());
    }
}
