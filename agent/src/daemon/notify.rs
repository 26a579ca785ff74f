//! sd_notify(3) (placeholder until the real one lands).

pub fn notify(_state: &str) -> std::io::Result<bool> {
    Ok(false)
}
