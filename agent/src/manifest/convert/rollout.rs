//! The keys of how a service's changes roll out: `deploy.update_config`,
//! `deploy.rollback_config`, the service's `x-skiff: {progress_deadline}` and the top level's
//! `x-skiff: {revision_history}`.

use super::{Ctx, Node};
use crate::rollout::{FailureAction, Order, UpdateConfig};

/// `update_config` / `rollback_config` (`rollback`: a rollback is never rolled back).
pub(super) fn update_config(cx: &mut Ctx, n: &Node, what: &str, rollback: bool) -> UpdateConfig {
    let mut c = UpdateConfig::default();
    for (key, k, v) in cx.map(n, what).unwrap_or_default() {
        let f = format!("{what}.{key}");
        match key.as_str() {
            "parallelism" => {
                if let Some(p) = cx.int(v, &f, 0, 1000) {
                    c.parallelism = p as u32;
                }
            }
            "delay" => c.delay = cx.duration(v, &f).unwrap_or(c.delay),
            "monitor" => c.monitor = cx.duration(v, &f).unwrap_or(c.monitor),
            "order" => match cx.string(v, &f).as_deref() {
                Some("stop-first") => c.order = Order::StopFirst,
                Some("start-first") => c.order = Order::StartFirst,
                Some(x) => cx.err(v.pos, format!("{f}: `{x}` is not an order (stop-first or start-first)")),
                None => {}
            },
            "failure_action" => match cx.string(v, &f).as_deref() {
                Some("pause") => c.failure_action = FailureAction::Pause,
                Some("continue") => c.failure_action = FailureAction::Continue,
                Some("rollback") if !rollback => c.failure_action = FailureAction::Rollback,
                Some("rollback") => cx.err(
                    v.pos,
                    format!("{f}: a rollback is never rolled back; use pause or continue (a failed rollback pauses)"),
                ),
                Some(x) if rollback => cx.err(v.pos, format!("{f}: `{x}` is not a failure action (pause or continue)")),
                Some(x) => cx.err(v.pos, format!("{f}: `{x}` is not a failure action (pause, continue or rollback)")),
                None => {}
            },
            "max_failure_ratio" => {
                let r = match &v.value {
                    super::Value::Int(i) => Some(*i as f64),
                    super::Value::Float(x) => Some(*x),
                    super::Value::Str(s) => s.trim().parse::<f64>().ok(),
                    _ => None,
                };
                match r {
                    Some(r) if (0.0..=1.0).contains(&r) => c.max_failure_ratio = r,
                    _ => cx.err(v.pos, format!("{f} must be a fraction between 0 and 1 (like 0.25)")),
                }
            }
            x if x.starts_with("x-") => {}
            x => cx.unknown(x, k, what),
        }
    }
    c
}

/// Most revisions a top-level `x-skiff: {revision_history}` may keep.
pub(super) const REVISION_HISTORY_MAX: i64 = 100;
