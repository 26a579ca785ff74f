//! Rolling updates and rollbacks, as a pure function of state: what the service's replicas are
//! (per slot: which revision each container runs, whether it is ready and since when) and the
//! clock → which containers to start and stop next, and whether the update failed, completed
//! or turns into a rollback. No containers, no files, no tasks: the reconcile loop
//! (`daemon/reconcile.rs`) feeds it a [`Slot`] view and carries out the [`Action`]s; the
//! [`Rollout`] itself is durable (it is saved with the service's revisions).
//!
//! Semantics, Swarm's (`deploy.update_config`, `deploy.rollback_config`) with skiff's deadline:
//! * Slots are updated in order, at most `parallelism` at once (0: all). `stop-first` stops the
//!   slot's old container, then the slot is filled with the new revision (by the loop, which
//!   fills every empty slot with the revision in force); `start-first` starts the new container
//!   beside the old one, and stops the old one once the new one is ready (its first passing
//!   health check, or running where there is none).
//! * A slot is done when only its new container is left and it is ready; the next slot begins
//!   `delay` after a slot is done.
//! * A new container fails when it exits, fails to start or turns unhealthy before it is ready,
//!   or within `monitor` after that, or when it is not ready `progress_deadline` after its
//!   start. Each slot counts once. When failures / slots to update > `max_failure_ratio`
//!   (strictly), `failure_action` fires: `pause` (nothing more is replaced; what runs stays),
//!   `continue`, or `rollback` (the same machine runs back to the old revision with
//!   `rollback_config`). A rollback that fails pauses: a rollback is never rolled back.
//! * The update completes once every slot is done (or failed, with `continue`) and `monitor` has
//!   passed since the last container became ready.

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

#[cfg(test)]
mod tests;

/// `order`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Order {
    #[default]
    StopFirst,
    StartFirst,
}

/// `failure_action`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FailureAction {
    #[default]
    Pause,
    Continue,
    Rollback,
}

/// `deploy.update_config` or `deploy.rollback_config`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct UpdateConfig {
    /// Slots replaced at once; 0: all.
    pub parallelism: u32,
    /// Between a slot done and the next one begun.
    pub delay: Duration,
    pub order: Order,
    /// How long a new container is watched after it is ready.
    pub monitor: Duration,
    pub failure_action: FailureAction,
    /// Failures tolerated, as a fraction of the slots to update (strictly more fires the action).
    pub max_failure_ratio: f64,
}

impl Default for UpdateConfig {
    /// Swarm's defaults (swarmkit's code: monitor 5 s), the same for updates and rollbacks.
    fn default() -> Self {
        UpdateConfig {
            parallelism: 1,
            delay: Duration::ZERO,
            order: Order::StopFirst,
            monitor: Duration::from_secs(5),
            failure_action: FailureAction::Pause,
            max_failure_ratio: 0.0,
        }
    }
}

/// How a service's changes are rolled out.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct Policy {
    pub update: UpdateConfig,
    pub rollback: UpdateConfig,
    /// `x-skiff: {progress_deadline}`: a new container neither ready nor failed this long after
    /// its start counts as failed.
    pub progress_deadline: Duration,
}

/// skiff's default progress deadline (Swarm has none: an update may wait forever).
pub const PROGRESS_DEADLINE: Duration = Duration::from_secs(600);

impl Default for Policy {
    fn default() -> Self {
        Policy {
            update: UpdateConfig::default(),
            rollback: UpdateConfig::default(),
            progress_deadline: PROGRESS_DEADLINE,
        }
    }
}

/// An update (to a new revision) or a rollback (to an earlier one).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Kind {
    Update,
    Rollback,
}

/// Where a rollout is (`/v1/status`'s `update.state`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum State {
    /// An update replaces slots.
    Updating,
    /// Stopped by a failure (or a failed rollback): nothing more is replaced until
    /// `skiff rollout resume` or a new edit of the service.
    Paused,
    /// A rollback replaces slots.
    RollingBack,
    /// A rollback completed.
    RolledBack,
    /// An update completed.
    Completed,
}

impl State {
    pub fn as_str(self) -> &'static str {
        match self {
            State::Updating => "updating",
            State::Paused => "paused",
            State::RollingBack => "rolling_back",
            State::RolledBack => "rolled_back",
            State::Completed => "completed",
        }
    }
    /// Replacing slots now.
    pub fn active(self) -> bool {
        matches!(self, State::Updating | State::RollingBack)
    }
}

/// One rollout of one service: durable (saved with its revisions after every change).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Rollout {
    pub kind: Kind,
    pub from: u32,
    pub to: u32,
    pub state: State,
    /// RFC 3339, when it began (a rollback begun by a failed update: when the rollback began).
    pub started: String,
    /// Slots to update when it began (the ratio's denominator; at least 1).
    pub total: u32,
    /// Slots whose new container failed.
    #[serde(default)]
    pub failed: BTreeSet<u32>,
    /// Slots done (only the new container left, ready).
    #[serde(default)]
    pub done: BTreeSet<u32>,
    /// What happened last, for status (`update failed: 2 of 4 replicas ...`).
    #[serde(default)]
    pub message: Option<String>,
    /// Why it began: `manifest`, `image`, `skiff rollback`, `automatic` (a failed update).
    #[serde(default)]
    pub cause: String,
    /// No slot begins before this (`delay` after the last slot done). Not durable: an agent
    /// restart waits no delay.
    #[serde(skip)]
    pub hold_until: Option<Instant>,
}

/// A container of the service, as the loop sees it.
#[derive(Clone, Debug, PartialEq)]
pub struct Member {
    pub id: String,
    pub revision: u32,
    pub phase: Phase,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Phase {
    /// Not ready yet (waiting, pulling, starting, running before its first passing check,
    /// restarting), since its first start attempt (by this agent).
    Pending { since: Instant },
    /// Running, and passed its first check (or has none), since then.
    Ready { since: Instant },
    /// Exited or failed for good (the restart policy gave up, or none).
    Down,
    /// Being stopped (and removed).
    Stopping,
}

/// One slot (`SERVICE-N`): its containers (normally one; two during a start-first update).
#[derive(Clone, Debug, PartialEq)]
pub struct Slot {
    pub index: u32,
    pub members: Vec<Member>,
}

/// What the loop must do.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Action {
    /// Start a container of the rollout's `to` revision in this slot, beside what is there
    /// (start-first).
    Start { slot: u32 },
    /// Stop and remove this container (an old one).
    Stop { id: String },
}

/// The outcome of one [`Rollout::step`].
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Step {
    pub actions: Vec<Action>,
    /// The durable state changed: save it.
    pub changed: bool,
    /// Look again no later than this (a delay, a monitor window or a deadline ends).
    pub wake: Option<Instant>,
    /// Lines for the log (a failure counted, the action fired, the rollout ended).
    pub log: Vec<String>,
}

impl Rollout {
    /// A rollout from `from` to `to` of a service whose slots are `slots` (those not on `to`
    /// are the ones to update).
    pub fn begin(kind: Kind, from: u32, to: u32, slots: &[Slot], started: String, cause: &str) -> Rollout {
        let total = slots.iter().filter(|s| s.members.iter().any(|m| m.revision != to)).count() as u32;
        Rollout {
            kind,
            from,
            to,
            state: if kind == Kind::Update { State::Updating } else { State::RollingBack },
            started,
            total: total.max(1),
            failed: BTreeSet::new(),
            done: BTreeSet::new(),
            message: None,
            cause: cause.to_string(),
            hold_until: None,
        }
    }

    /// The configuration this rollout runs with.
    pub fn config<'a>(&self, p: &'a Policy) -> &'a UpdateConfig {
        match self.kind {
            Kind::Update => &p.update,
            Kind::Rollback => &p.rollback,
        }
    }

    /// `skiff rollout resume`: a paused rollout goes on, its failures forgiven.
    pub fn resume(&mut self, slots: &[Slot]) -> bool {
        if self.state != State::Paused {
            return false;
        }
        self.state = if self.kind == Kind::Update { State::Updating } else { State::RollingBack };
        self.failed.clear();
        let left = slots.iter().filter(|s| s.members.iter().any(|m| m.revision != self.to)).count() as u32;
        self.total = left.max(1);
        self.message = Some("resumed".into());
        true
    }

    /// Whether a failure of a container of revision `to` that was ready since `ready` (None:
    /// never ready) counts against the rollout at `now`.
    pub fn counts(&self, p: &Policy, revision: u32, ready: Option<Instant>, now: Instant) -> bool {
        self.state.active()
            && revision == self.to
            && ready.is_none_or(|r| now.saturating_duration_since(r) < self.config(p).monitor)
    }

    /// A new container in `slot` failed (see [`Rollout::counts`]). Fires the failure action
    /// when the ratio is passed; the step's log says what happened.
    pub fn fail(&mut self, p: &Policy, slot: u32, why: &str, slots: &[Slot], out: &mut Step) {
        if !self.state.active() || !self.failed.insert(slot) {
            return;
        }
        out.changed = true;
        let cfg = self.config(p).clone();
        let n = self.failed.len() as u32;
        let what = if self.kind == Kind::Update { "update" } else { "rollback" };
        out.log.push(format!(
            "{what} to revision {}: replica {slot} failed ({why}); {n} of {} failed",
            self.to, self.total
        ));
        if f64::from(n) / f64::from(self.total) <= cfg.max_failure_ratio {
            return;
        }
        let ratio = format!("{n} of {} replicas failed (max_failure_ratio {})", self.total, cfg.max_failure_ratio);
        match (self.kind, cfg.failure_action) {
            (_, FailureAction::Continue) => {
                self.message = Some(format!("{ratio}; continuing (failure_action continue)"));
            }
            (Kind::Update, FailureAction::Rollback) => {
                let msg =
                    format!("update to revision {} failed: {ratio}; rolled back to revision {}", self.to, self.from);
                out.log
                    .push(format!("{what} to revision {}: {ratio}; rolling back to revision {}", self.to, self.from));
                let mut back = Rollout::begin(
                    Kind::Rollback,
                    self.to,
                    self.from,
                    slots,
                    humantime::format_rfc3339_seconds(std::time::SystemTime::now()).to_string(),
                    "automatic",
                );
                back.message = Some(msg);
                *self = back;
            }
            // A rollback that fails pauses: a rollback is never rolled back.
            (_, _) => {
                self.state = State::Paused;
                self.message = Some(format!(
                    "{what} to revision {} paused: {ratio}; `skiff rollout resume` or a new edit of the service goes on",
                    self.to
                ));
                out.log.push(format!("{what} to revision {}: paused ({ratio})", self.to));
            }
        }
    }

    /// One look at the slots: which to begin, which old containers to stop, failures by the
    /// deadline, the end. `slots`: every slot of the service the manifest (or a scale) wants,
    /// each with at least one member (the loop fills empty slots first).
    pub fn step(&mut self, p: &Policy, slots: &[Slot], now: Instant) -> Step {
        let mut out = Step::default();
        if !self.state.active() {
            return out;
        }
        // Deadlines: a new container not ready in time has failed.
        let to = self.to;
        for s in slots {
            for m in s.members.iter().filter(|m| m.revision == to) {
                if let Phase::Pending { since } = m.phase {
                    let due = since + p.progress_deadline;
                    if now >= due {
                        if !self.failed.contains(&s.index) {
                            let why = format!(
                                "not ready within the progress deadline ({})",
                                fmt_duration(p.progress_deadline)
                            );
                            let kind = self.kind;
                            self.fail(p, s.index, &why, slots, &mut out);
                            if self.kind != kind {
                                // Now a rollback: its first step at once.
                                out.wake = Some(now);
                            }
                            if !self.state.active() || self.kind != kind {
                                return out;
                            }
                        }
                    } else {
                        out.wake = earliest(out.wake, due);
                    }
                }
            }
        }
        let cfg = self.config(p).clone();
        let limit = if cfg.parallelism == 0 { u32::MAX } else { cfg.parallelism };
        let mut busy = 0u32;
        let mut todo = Vec::new();
        let mut finished = true;
        let mut last_ready: Option<Instant> = None;
        for s in slots {
            let new: Vec<&Member> =
                s.members.iter().filter(|m| m.revision == self.to && m.phase != Phase::Stopping).collect();
            let old: Vec<&Member> =
                s.members.iter().filter(|m| m.revision != self.to && m.phase != Phase::Stopping).collect();
            let stopping = s.members.iter().any(|m| m.phase == Phase::Stopping);
            let ready = new.iter().find_map(|m| match m.phase {
                Phase::Ready { since } => Some(since),
                _ => None,
            });
            if let (Some(r), true, false) = (ready, old.is_empty(), stopping) {
                // Done.
                if self.done.insert(s.index) {
                    out.changed = true;
                    self.hold_until = Some(now + cfg.delay);
                }
                last_ready = Some(last_ready.map_or(r, |l: Instant| l.max(r)));
                continue;
            }
            let failed = self.failed.contains(&s.index);
            if new.is_empty() && !stopping {
                // Not begun (old containers only).
                todo.push(s);
                finished = false;
                continue;
            }
            // Begun: finish it.
            if !failed {
                busy += 1;
                finished = false;
            }
            if !failed {
                // Down for good and not counted (a resumed rollout): tried again afresh.
                for m in new.iter().filter(|m| m.phase == Phase::Down) {
                    out.actions.push(Action::Stop { id: m.id.clone() });
                }
            }
            // The old ones go once the new one is ready; stop-first: at once.
            if ready.is_some() || (cfg.order == Order::StopFirst && !failed) {
                for m in &old {
                    out.actions.push(Action::Stop { id: m.id.clone() });
                }
            }
        }
        let held = self.hold_until.filter(|t| *t > now);
        if let Some(t) = held {
            if !todo.is_empty() && busy < limit {
                out.wake = earliest(out.wake, t);
            }
        } else {
            for s in todo.into_iter().take(limit.saturating_sub(busy) as usize) {
                match cfg.order {
                    Order::StartFirst => out.actions.push(Action::Start { slot: s.index }),
                    Order::StopFirst => {
                        for m in s.members.iter().filter(|m| m.phase != Phase::Stopping) {
                            out.actions.push(Action::Stop { id: m.id.clone() });
                        }
                    }
                }
            }
        }
        if !finished || !out.actions.is_empty() {
            return out;
        }
        // Every slot done (or failed and left, with `continue`): the monitor window of the last
        // one ready, then the end.
        if let Some(r) = last_ready {
            let end = r + cfg.monitor;
            if end > now {
                out.wake = earliest(out.wake, end);
                return out;
            }
        }
        out.changed = true;
        let what = if self.kind == Kind::Update { "update" } else { "rollback" };
        let failed = if self.failed.is_empty() {
            String::new()
        } else {
            format!(" ({} of {} replicas failed)", self.failed.len(), self.total)
        };
        out.log.push(format!("{what} to revision {} completed{failed}", self.to));
        self.state = match self.kind {
            Kind::Update => State::Completed,
            Kind::Rollback => State::RolledBack,
        };
        if self.kind == Kind::Update || self.message.is_none() {
            self.message = Some(format!("{what} to revision {} completed{failed}", self.to));
        }
        out
    }
}

fn earliest(a: Option<Instant>, b: Instant) -> Option<Instant> {
    Some(a.map_or(b, |a| a.min(b)))
}

/// `90s`, `10m`: a duration as a user wrote it.
pub fn fmt_duration(d: Duration) -> String {
    humantime::format_duration(d).to_string()
}
