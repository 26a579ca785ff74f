//! Health checks: the service's test run inside the container through the runtime's `exec`,
//! every `interval`, each killed after `timeout`. Results go to the reconcile loop, which keeps
//! the count of failures in a row and decides (starting / healthy / unhealthy → replaced).

use std::time::Duration;

use tokio::sync::mpsc;

use super::oci::Runtime;
use super::reconcile::Event;
use super::replica::HealthCheck;

/// Runs until the loop drops the replica's generation (the task is aborted) or the loop is gone.
/// The first check runs after `interval` (`start_interval` within the start period), or at once
/// when `now` (an adopted replica). Within the start period and until a check passes, checks
/// run every `start_interval` (compose's semantics), then every `interval`.
pub async fn run(rt: Runtime, id: String, gen: u64, check: HealthCheck, now: bool, tx: mpsc::UnboundedSender<Event>) {
    let HealthCheck { args, interval, timeout, start_period, start_interval, .. } = check;
    let started = tokio::time::Instant::now();
    let mut passed = false;
    let interval = interval.max(Duration::from_millis(100));
    let timeout = timeout.max(Duration::from_millis(100));
    let mut first = now;
    loop {
        if !std::mem::take(&mut first) {
            let starting = !passed && !start_interval.is_zero() && started.elapsed() < start_period;
            tokio::time::sleep(if starting { start_interval.max(Duration::from_millis(100)) } else { interval }).await;
        }
        let (ok, output) = match rt.exec(&id, &args, timeout).await {
            Ok(o) if o.timed_out => (false, format!("timed out after {:.1}s", timeout.as_secs_f64())),
            Ok(o) => {
                let text = if o.stdout.trim().is_empty() { o.stderr.clone() } else { o.stdout.clone() };
                let text = match o.code {
                    Some(0) => text,
                    Some(c) => format!("exit status {c}: {}", text.trim()),
                    None => format!("killed: {}", text.trim()),
                };
                (o.success(), text.chars().take(512).collect())
            }
            Err(e) => (false, format!("{e:#}")),
        };
        passed |= ok;
        if tx.send(Event::Health { id: id.clone(), gen, ok, output }).is_err() {
            return;
        }
    }
}
