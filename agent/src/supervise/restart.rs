//! Restart decisions for one replica: restart policy (compose/swarm semantics) and back-off.
//!
//! Pure and deterministic: every event carries the time it happened (`at`), nothing sleeps and
//! nothing does I/O. The supervisor feeds a [`RestartTracker`] the replica's events
//! ([`started`](RestartTracker::started), [`exited`](RestartTracker::exited),
//! [`became_healthy`](RestartTracker::became_healthy), [`unhealthy`](RestartTracker::unhealthy))
//! and acts on the [`Decision`] returned by `exited`. [`RestartTracker::status`] is what
//! `/v1/status` shows. The tracker is serde-serialisable so the restart count (and the back-off
//! and attempt counters) survive an agent restart; the [`Instant`]s are process-local and are not
//! serialised — after loading, call [`RestartTracker::resume`].
//!
//! # Policies
//!
//! * `no`: never restarts.
//! * `always`: restarts after any exit (code 0 included).
//! * `on-failure[:N]`: restarts after a non-zero exit code or a death by signal.
//! * `unless-stopped`: like `always`, except after a stop by the agent/user.
//!
//! Whatever the policy, an exit the agent caused by stopping the replica on purpose
//! (`stopped_by_agent`: scale-down, replacement, removal, `skiff down`) never triggers a restart;
//! the replica ends in state `exited`. The difference between `always` and `unless-stopped` only
//! matters to whoever decides what to start on agent start-up; here both never restart an
//! agent-stopped replica.
//!
//! An unhealthy replica is replaced (swarm): the supervisor calls
//! [`unhealthy`](RestartTracker::unhealthy), kills the container and reports the exit with
//! `stopped_by_agent: false` (it is not a deliberate stop). That exit counts as a failure whatever
//! its code (a process that exits 0 on SIGTERM is still a failure), so `on-failure` restarts it
//! too; `no` leaves it exited.
//!
//! # Attempts, `max_attempts` and `window`
//!
//! `max_attempts` (`on-failure:N` or `deploy.restart_policy.max_attempts`) applies to every
//! restarting condition, as in swarm. Each restart is an *attempt*; once `max_attempts` attempts
//! have been counted, the next exit that would restart gives up ([`Decision::GiveUp`], state
//! `gave-up`). So `on-failure:3` restarts 3 times and gives up on the 4th failed exit.
//!
//! The compose spec says of `window` "how long to wait before deciding if a restart has
//! succeeded" and of `max_attempts` "if the restart does not succeed within the configured window,
//! this attempt doesn't count toward the configured max_attempts value". Our reading, which matches
//! the manifest's doc ("how long a start must last to count as successful") and swarm's intent
//! (only recent restarts count): a run that lasted **at least `window`** was a successful restart,
//! so it does not count as a failed attempt — and, because the crash loop was broken, the attempt
//! counter goes back to zero when such a run exits. A run shorter than `window` counts. Without a
//! window (or a zero window, "decide immediately") every attempt counts and the counter never
//! resets, like Docker's `on-failure:N`. The window measures plain running time (from `started`
//! to `exited`), health does not matter to it.
//!
//! # Back-off
//!
//! The delay before a restart starts at the base — `delay`, default 1 s, at least 100 ms so a
//! crash loop never spins — and doubles at each consecutive restart up to a cap of 5 minutes (or
//! the base itself if it is configured above 5 minutes): 1, 2, 4, …, 256, 300, 300 s.
//!
//! The reset happens **when the replica exits**: if the run that just ended was *stable*, the
//! delay for this restart is the base again. A run is stable when it lasted at least
//! [`STABLE_AFTER`] (10 s), measured
//! * without a health check: from `started` to `exited`;
//! * with a health check: from the last `became_healthy` to `exited`, with the healthy stretch
//!   broken by `unhealthy` (or a new `started`). A replica that never became healthy never resets
//!   the back-off, however long it ran.
//!
//! That is CrashLoopBackOff's rule evaluated lazily: it gives the same delays as resetting a timer
//! 10 s into the run, without needing a timer.
//!
//! # Restart count
//!
//! `restarts` counts the restarts that actually happened: a `started` that follows a
//! [`Decision::RestartAt`]. The first start is not a restart.

use std::fmt;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize, Serializer};

use crate::manifest::{RestartCondition, RestartPolicy};

/// Base back-off delay when the policy has none.
pub const DEFAULT_DELAY: Duration = Duration::from_secs(1);
/// The smallest base delay: `delay: 0` still waits this long, so a crash loop costs ~0 CPU.
pub const MIN_DELAY: Duration = Duration::from_millis(100);
/// The back-off never grows beyond this (unless the configured base delay is larger).
pub const MAX_DELAY: Duration = Duration::from_secs(300);
/// A run this long (healthy, if there is a health check) resets the back-off to the base delay.
pub const STABLE_AFTER: Duration = Duration::from_secs(10);

/// How a container ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ExitKind {
    /// Exited with this code.
    Code(i32),
    /// Killed by this signal.
    Signal(i32),
}

impl ExitKind {
    /// A non-zero exit code or a death by signal.
    pub fn is_failure(self) -> bool {
        self != ExitKind::Code(0)
    }
    /// The shell's convention: the code itself, or 128 + the signal number.
    pub fn exit_code(self) -> i32 {
        match self {
            ExitKind::Code(code) => code,
            ExitKind::Signal(signal) => 128 + signal,
        }
    }
}

impl fmt::Display for ExitKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ExitKind::Code(code) => write!(f, "exit code {code}"),
            ExitKind::Signal(signal) => write!(f, "signal {signal}"),
        }
    }
}

/// Why the tracker stopped restarting a replica.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum GiveUpReason {
    /// `max_attempts` restarts were attempted and the replica failed again.
    MaxAttempts(u32),
}

impl fmt::Display for GiveUpReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            GiveUpReason::MaxAttempts(n) => write!(f, "gave up after {n} restart attempts"),
        }
    }
}

/// What the supervisor should do after an exit.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Decision {
    /// Start the replica again at this time.
    RestartAt(Instant),
    /// Do not restart: the restart budget is spent.
    GiveUp(GiveUpReason),
    /// Leave it exited (policy `no`, a clean exit under `on-failure`, a stop by the agent).
    DoNothing,
}

/// The replica's state as far as restarts are concerned.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum RestartState {
    /// Not started yet.
    #[default]
    Created,
    Running,
    /// Exited, waiting for its restart.
    Backoff,
    /// Exited and will not be restarted (policy, clean exit or stopped by the agent).
    Exited,
    /// Exited and the restart budget is spent.
    GaveUp,
}

/// What `/v1/status` shows about a replica's restarts.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct RestartStatus {
    pub state: RestartState,
    pub restarts: u32,
    /// Seconds until the pending restart (state `backoff` only).
    #[serde(serialize_with = "secs")]
    pub next_restart_in: Option<Duration>,
    pub last_exit: Option<ExitKind>,
    /// Set in state `gave-up`.
    pub gave_up: Option<GiveUpReason>,
}

fn secs<S: Serializer>(d: &Option<Duration>, s: S) -> Result<S::Ok, S::Error> {
    match d {
        Some(d) => s.serialize_some(&d.as_secs_f64()),
        None => s.serialize_none(),
    }
}

/// Restart bookkeeping for one replica. See the module doc for the semantics.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RestartTracker {
    policy: RestartPolicy,
    /// The service has a health check (its own or the image's): back-off resets on healthy time.
    has_healthcheck: bool,
    state: RestartState,
    /// Restarts that happened.
    restarts: u32,
    /// Restart attempts counted toward `max_attempts`.
    attempts: u32,
    /// The delay of the last scheduled restart, `None` before the first (or after a reset).
    last_delay: Option<Duration>,
    last_exit: Option<ExitKind>,
    gave_up: Option<GiveUpReason>,
    #[serde(skip)]
    started_at: Option<Instant>,
    #[serde(skip)]
    healthy_since: Option<Instant>,
    #[serde(skip)]
    next_restart: Option<Instant>,
    /// Declared unhealthy: the coming exit is a failure whatever its code.
    #[serde(skip)]
    unhealthy: bool,
}

impl RestartTracker {
    pub fn new(policy: RestartPolicy, has_healthcheck: bool) -> Self {
        RestartTracker {
            policy,
            has_healthcheck,
            state: RestartState::Created,
            restarts: 0,
            attempts: 0,
            last_delay: None,
            last_exit: None,
            gave_up: None,
            started_at: None,
            healthy_since: None,
            next_restart: None,
            unhealthy: false,
        }
    }

    pub fn state(&self) -> RestartState {
        self.state
    }

    pub fn restarts(&self) -> u32 {
        self.restarts
    }

    /// The base back-off delay: `delay` (default 1 s), at least [`MIN_DELAY`].
    pub fn base_delay(&self) -> Duration {
        self.policy.delay.unwrap_or(DEFAULT_DELAY).max(MIN_DELAY)
    }

    fn max_delay(&self) -> Duration {
        MAX_DELAY.max(self.base_delay())
    }

    /// Whether the replica has a health check (known once its image config has been read:
    /// the image's HEALTHCHECK counts too).
    pub fn set_has_healthcheck(&mut self, yes: bool) {
        self.has_healthcheck = yes;
    }

    /// The container started (first start, or the restart scheduled by a [`Decision::RestartAt`]).
    pub fn started(&mut self, at: Instant) {
        if self.state == RestartState::Backoff {
            self.restarts += 1;
        }
        self.state = RestartState::Running;
        self.started_at = Some(at);
        self.healthy_since = None;
        self.next_restart = None;
        self.unhealthy = false;
        self.gave_up = None;
    }

    /// The health check passed (the healthy stretch starts at the first of a series).
    pub fn became_healthy(&mut self, at: Instant) {
        if self.state == RestartState::Running && self.healthy_since.is_none() {
            self.healthy_since = Some(at);
        }
    }

    /// The health check failed: the supervisor replaces the replica; its exit will be a failure.
    pub fn unhealthy(&mut self, _at: Instant) {
        self.healthy_since = None;
        if self.state == RestartState::Running {
            self.unhealthy = true;
        }
    }

    /// The agent gives up on the replica on purpose without an exit to report (e.g. it is
    /// removed while waiting in back-off): cancels a pending restart.
    pub fn stop(&mut self) {
        if matches!(self.state, RestartState::Backoff | RestartState::Created) {
            self.state = RestartState::Exited;
        }
        self.next_restart = None;
    }

    /// The replica's container is gone without an exit to report (a reboot wiped the run
    /// state): it starts afresh (that start is not a restart), keeping its counts.
    pub fn boot_reset(&mut self) {
        if matches!(self.state, RestartState::Running | RestartState::Backoff) {
            self.state = RestartState::Created;
        }
        self.started_at = None;
        self.healthy_since = None;
        self.next_restart = None;
        self.unhealthy = false;
    }

    /// The container exited. `stopped_by_agent`: the agent stopped it on purpose (scale-down,
    /// replacement, removal, `skiff down`) — never restarted.
    pub fn exited(&mut self, at: Instant, exit: ExitKind, stopped_by_agent: bool) -> Decision {
        let failed = exit.is_failure() || self.unhealthy;
        let ran = self.started_at.map_or(Duration::ZERO, |s| at.saturating_duration_since(s));
        let stable_since = if self.has_healthcheck { self.healthy_since } else { self.started_at };
        let stable = stable_since.is_some_and(|s| at.saturating_duration_since(s) >= STABLE_AFTER);
        self.last_exit = Some(exit);
        self.started_at = None;
        self.healthy_since = None;
        self.unhealthy = false;
        self.next_restart = None;

        let restart = !stopped_by_agent
            && match self.policy.condition {
                RestartCondition::No => false,
                RestartCondition::Always | RestartCondition::UnlessStopped => true,
                RestartCondition::OnFailure => failed,
            };
        if !restart {
            self.state = RestartState::Exited;
            return Decision::DoNothing;
        }

        if self.policy.window.is_some_and(|w| !w.is_zero() && ran >= w) {
            self.attempts = 0;
        }
        if let Some(max) = self.policy.max_attempts {
            if self.attempts >= max {
                let reason = GiveUpReason::MaxAttempts(max);
                self.state = RestartState::GaveUp;
                self.gave_up = Some(reason);
                return Decision::GiveUp(reason);
            }
        }
        self.attempts += 1;

        let delay = match self.last_delay {
            Some(last) if !stable => last.saturating_mul(2).min(self.max_delay()),
            _ => self.base_delay(),
        };
        self.last_delay = Some(delay);
        let when = at + delay;
        self.next_restart = Some(when);
        self.state = RestartState::Backoff;
        Decision::RestartAt(when)
    }

    /// After loading a serialised tracker (agent restart): a replica found running is adopted
    /// (its run is timed from `now`, the stable time and window count from the adoption); one
    /// that was waiting in back-off is restarted after its last delay counted from `now`.
    /// Anything else stays as it is.
    pub fn resume(&mut self, now: Instant) -> Decision {
        match self.state {
            RestartState::Running => {
                self.started_at = Some(now);
                self.healthy_since = None;
                Decision::DoNothing
            }
            RestartState::Backoff => {
                let when = now + self.last_delay.unwrap_or(self.base_delay());
                self.next_restart = Some(when);
                Decision::RestartAt(when)
            }
            _ => Decision::DoNothing,
        }
    }

    /// The status shown by `/v1/status` at time `now`.
    pub fn status(&self, now: Instant) -> RestartStatus {
        RestartStatus {
            state: self.state,
            restarts: self.restarts,
            next_restart_in: match self.state {
                RestartState::Backoff => self.next_restart.map(|t| t.saturating_duration_since(now)),
                _ => None,
            },
            last_exit: self.last_exit,
            gave_up: self.gave_up,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: Duration = Duration::from_secs(1);

    fn policy(condition: RestartCondition) -> RestartPolicy {
        RestartPolicy { condition, ..Default::default() }
    }

    /// Starts at `t`, runs `run`, exits: the decision as a delay from the exit (None: no restart).
    fn cycle(tr: &mut RestartTracker, t: &mut Instant, run: Duration, exit: ExitKind) -> Decision {
        tr.started(*t);
        *t += run;
        let d = tr.exited(*t, exit, false);
        if let Decision::RestartAt(when) = d {
            *t = when;
        }
        d
    }

    fn delay_of(d: Decision, exit_at: Instant) -> Option<Duration> {
        match d {
            Decision::RestartAt(when) => Some(when - exit_at),
            _ => None,
        }
    }

    #[test]
    fn policies_table() {
        use ExitKind::*;
        use RestartCondition::*;
        // (condition, exit, stopped_by_agent, restarts?, state after)
        let table = [
            (No, Code(0), false, false, RestartState::Exited),
            (No, Code(1), false, false, RestartState::Exited),
            (No, Signal(9), false, false, RestartState::Exited),
            (Always, Code(0), false, true, RestartState::Backoff),
            (Always, Code(1), false, true, RestartState::Backoff),
            (Always, Signal(9), false, true, RestartState::Backoff),
            (Always, Signal(15), true, false, RestartState::Exited),
            (OnFailure, Code(0), false, false, RestartState::Exited),
            (OnFailure, Code(2), false, true, RestartState::Backoff),
            (OnFailure, Signal(11), false, true, RestartState::Backoff),
            (OnFailure, Signal(9), true, false, RestartState::Exited),
            (UnlessStopped, Code(0), false, true, RestartState::Backoff),
            (UnlessStopped, Code(1), false, true, RestartState::Backoff),
            (UnlessStopped, Signal(9), false, true, RestartState::Backoff),
            (UnlessStopped, Code(0), true, false, RestartState::Exited),
            (UnlessStopped, Signal(15), true, false, RestartState::Exited),
        ];
        for (cond, exit, by_agent, restarts, state) in table {
            let t0 = Instant::now();
            let mut tr = RestartTracker::new(policy(cond), false);
            tr.started(t0);
            let d = tr.exited(t0 + 3 * S, exit, by_agent);
            let case = format!("{cond:?} {exit} stopped_by_agent={by_agent}");
            if restarts {
                assert_eq!(d, Decision::RestartAt(t0 + 4 * S), "{case}");
            } else {
                assert_eq!(d, Decision::DoNothing, "{case}");
            }
            assert_eq!(tr.state(), state, "{case}");
            assert_eq!(tr.status(t0 + 3 * S).last_exit, Some(exit), "{case}");
        }
    }

    #[test]
    fn backoff_doubles_to_five_minutes() {
        let mut tr = RestartTracker::new(policy(RestartCondition::Always), false);
        let mut t = Instant::now();
        let mut delays = vec![];
        for _ in 0..11 {
            tr.started(t);
            t += S; // crashes after 1 s: never stable
            let d = tr.exited(t, ExitKind::Code(1), false);
            delays.push(delay_of(d, t).unwrap().as_secs());
            t += Duration::from_secs(*delays.last().unwrap());
        }
        assert_eq!(delays, [1, 2, 4, 8, 16, 32, 64, 128, 256, 300, 300]);
        assert_eq!(tr.restarts(), 10);
    }

    #[test]
    fn configured_delay_is_the_base() {
        let p = RestartPolicy { condition: RestartCondition::Always, delay: Some(5 * S), ..Default::default() };
        let mut tr = RestartTracker::new(p, false);
        let mut t = Instant::now();
        let delays: Vec<u64> = (0..3)
            .map(|_| {
                tr.started(t);
                t += S;
                let d = delay_of(tr.exited(t, ExitKind::Code(1), false), t).unwrap();
                t += d;
                d.as_secs()
            })
            .collect();
        assert_eq!(delays, [5, 10, 20]);
        // delay: 0 still backs off from 100 ms.
        let p =
            RestartPolicy { condition: RestartCondition::Always, delay: Some(Duration::ZERO), ..Default::default() };
        let mut tr = RestartTracker::new(p, false);
        let t = Instant::now();
        tr.started(t);
        assert_eq!(delay_of(tr.exited(t, ExitKind::Code(1), false), t), Some(MIN_DELAY));
    }

    #[test]
    fn backoff_resets_after_ten_seconds_of_running() {
        let mut tr = RestartTracker::new(policy(RestartCondition::Always), false);
        let mut t = Instant::now();
        for expect in [1, 2, 4, 8] {
            let exit_at = t + S;
            let d = cycle(&mut tr, &mut t, S, ExitKind::Code(1));
            assert_eq!(delay_of(d, exit_at), Some(expect * S));
        }
        // 9.9 s is not enough ...
        let exit_at = t + Duration::from_millis(9_900);
        let d = cycle(&mut tr, &mut t, Duration::from_millis(9_900), ExitKind::Code(1));
        assert_eq!(delay_of(d, exit_at), Some(16 * S));
        // ... 10 s is: back to the base, then doubling again.
        let exit_at = t + 10 * S;
        let d = cycle(&mut tr, &mut t, 10 * S, ExitKind::Code(1));
        assert_eq!(delay_of(d, exit_at), Some(S));
        let exit_at = t + S;
        let d = cycle(&mut tr, &mut t, S, ExitKind::Code(1));
        assert_eq!(delay_of(d, exit_at), Some(2 * S));
    }

    #[test]
    fn with_healthcheck_only_healthy_time_resets() {
        let mut tr = RestartTracker::new(policy(RestartCondition::Always), true);
        let mut t = Instant::now();
        for expect in [1, 2, 4] {
            let exit_at = t + S;
            let d = cycle(&mut tr, &mut t, S, ExitKind::Code(1));
            assert_eq!(delay_of(d, exit_at), Some(expect * S));
        }
        // Runs 60 s but never healthy: no reset.
        let exit_at = t + 60 * S;
        let d = cycle(&mut tr, &mut t, 60 * S, ExitKind::Code(1));
        assert_eq!(delay_of(d, exit_at), Some(8 * S));
        // Healthy for 5 s, unhealthy, healthy again for 9 s: no reset.
        tr.started(t);
        tr.became_healthy(t + S);
        tr.unhealthy(t + 6 * S);
        tr.became_healthy(t + 7 * S);
        t += 16 * S;
        assert_eq!(delay_of(tr.exited(t, ExitKind::Code(1), false), t), Some(16 * S));
        t += 16 * S;
        // Healthy 10 s: reset.
        tr.started(t);
        tr.became_healthy(t + 2 * S);
        tr.became_healthy(t + 5 * S); // repeated passes do not restart the stretch
        t += 12 * S;
        assert_eq!(delay_of(tr.exited(t, ExitKind::Code(1), false), t), Some(S));
    }

    #[test]
    fn on_failure_3_gives_up_after_3() {
        let p = RestartPolicy { condition: RestartCondition::OnFailure, max_attempts: Some(3), ..Default::default() };
        let mut tr = RestartTracker::new(p, false);
        let mut t = Instant::now();
        for _ in 0..3 {
            assert!(matches!(cycle(&mut tr, &mut t, S, ExitKind::Code(1)), Decision::RestartAt(_)));
        }
        let d = cycle(&mut tr, &mut t, S, ExitKind::Code(1));
        assert_eq!(d, Decision::GiveUp(GiveUpReason::MaxAttempts(3)));
        let st = tr.status(t);
        assert_eq!((st.state, st.restarts, st.next_restart_in), (RestartState::GaveUp, 3, None));
        assert_eq!(serde_json::to_value(&st).unwrap()["state"], "gave-up");
        // Without a window, long runs do not give attempts back (Docker's on-failure:N).
        let p = RestartPolicy { condition: RestartCondition::OnFailure, max_attempts: Some(1), ..Default::default() };
        let mut tr = RestartTracker::new(p, false);
        assert!(matches!(cycle(&mut tr, &mut t, S, ExitKind::Code(1)), Decision::RestartAt(_)));
        assert!(matches!(cycle(&mut tr, &mut t, 3600 * S, ExitKind::Code(1)), Decision::GiveUp(_)));
    }

    #[test]
    fn clean_exits_do_not_spend_on_failure_attempts() {
        let p = RestartPolicy { condition: RestartCondition::OnFailure, max_attempts: Some(1), ..Default::default() };
        let mut tr = RestartTracker::new(p, false);
        let mut t = Instant::now();
        assert!(matches!(cycle(&mut tr, &mut t, S, ExitKind::Code(1)), Decision::RestartAt(_)));
        assert_eq!(cycle(&mut tr, &mut t, S, ExitKind::Code(0)), Decision::DoNothing);
        assert_eq!(tr.state(), RestartState::Exited);
    }

    #[test]
    fn window_only_short_runs_count() {
        let p = RestartPolicy {
            condition: RestartCondition::OnFailure,
            max_attempts: Some(2),
            window: Some(30 * S),
            ..Default::default()
        };
        let mut tr = RestartTracker::new(p, false);
        let mut t = Instant::now();
        // Two short runs spend the two attempts ...
        assert!(matches!(cycle(&mut tr, &mut t, S, ExitKind::Code(1)), Decision::RestartAt(_)));
        assert!(matches!(cycle(&mut tr, &mut t, 29 * S, ExitKind::Code(1)), Decision::RestartAt(_)));
        // ... but this restart lasted the window: it succeeded, attempts start over.
        assert!(matches!(cycle(&mut tr, &mut t, 30 * S, ExitKind::Code(1)), Decision::RestartAt(_)));
        assert!(matches!(cycle(&mut tr, &mut t, S, ExitKind::Code(1)), Decision::RestartAt(_)));
        let d = cycle(&mut tr, &mut t, S, ExitKind::Code(1));
        assert_eq!(d, Decision::GiveUp(GiveUpReason::MaxAttempts(2)));
        assert_eq!(tr.restarts(), 4);
    }

    #[test]
    fn max_attempts_applies_to_always() {
        let p = RestartPolicy { condition: RestartCondition::Always, max_attempts: Some(1), ..Default::default() };
        let mut tr = RestartTracker::new(p, false);
        let mut t = Instant::now();
        assert!(matches!(cycle(&mut tr, &mut t, S, ExitKind::Code(0)), Decision::RestartAt(_)));
        assert!(matches!(cycle(&mut tr, &mut t, S, ExitKind::Code(0)), Decision::GiveUp(_)));
    }

    #[test]
    fn agent_stop_never_restarts() {
        for cond in [RestartCondition::Always, RestartCondition::UnlessStopped, RestartCondition::OnFailure] {
            let mut tr = RestartTracker::new(policy(cond), false);
            let t = Instant::now();
            tr.started(t);
            // SIGKILL after the grace period, or a clean exit on SIGTERM: same.
            assert_eq!(tr.exited(t + S, ExitKind::Signal(9), true), Decision::DoNothing);
            assert_eq!(tr.state(), RestartState::Exited);
            assert_eq!(tr.status(t + S).next_restart_in, None);
        }
        // Stopping a replica waiting in back-off cancels the restart.
        let mut tr = RestartTracker::new(policy(RestartCondition::Always), false);
        let t = Instant::now();
        tr.started(t);
        assert!(matches!(tr.exited(t, ExitKind::Code(1), false), Decision::RestartAt(_)));
        tr.stop();
        assert_eq!(tr.status(t).state, RestartState::Exited);
        assert_eq!(tr.resume(t), Decision::DoNothing);
    }

    #[test]
    fn unhealthy_kill_is_a_failure() {
        let mut tr = RestartTracker::new(policy(RestartCondition::OnFailure), true);
        let t = Instant::now();
        tr.started(t);
        tr.unhealthy(t + 5 * S);
        // The agent killed it for its health, not as a deliberate stop; it exited 0 on SIGTERM.
        assert!(matches!(tr.exited(t + 6 * S, ExitKind::Code(0), false), Decision::RestartAt(_)));
        let mut tr = RestartTracker::new(policy(RestartCondition::No), true);
        tr.started(t);
        tr.unhealthy(t + 5 * S);
        assert_eq!(tr.exited(t + 6 * S, ExitKind::Signal(15), false), Decision::DoNothing);
    }

    #[test]
    fn status_counts_down_and_serialises() {
        let mut tr = RestartTracker::new(policy(RestartCondition::Always), false);
        let mut t = Instant::now();
        assert_eq!(tr.status(t).state, RestartState::Created);
        cycle(&mut tr, &mut t, S, ExitKind::Code(3));
        cycle(&mut tr, &mut t, S, ExitKind::Signal(9)); // t = the restart time, 2 s after the exit
        let st = tr.status(t - Duration::from_millis(500));
        assert_eq!(st.state, RestartState::Backoff);
        assert_eq!(st.next_restart_in, Some(Duration::from_millis(500)));
        assert_eq!(st.restarts, 1);
        let json = serde_json::to_value(&st).unwrap();
        assert_eq!(
            json,
            serde_json::json!({
                "state": "backoff", "restarts": 1, "next_restart_in": 0.5,
                "last_exit": {"signal": 9}, "gave_up": null
            })
        );
        assert_eq!(ExitKind::Signal(9).exit_code(), 137);
        tr.started(t);
        let st = tr.status(t);
        assert_eq!((st.state, st.restarts, st.next_restart_in), (RestartState::Running, 2, None));
    }

    #[test]
    fn serde_round_trip_keeps_restart_count_and_backoff() {
        let p = RestartPolicy { condition: RestartCondition::OnFailure, max_attempts: Some(5), ..Default::default() };
        let mut tr = RestartTracker::new(p, false);
        let mut t = Instant::now();
        for _ in 0..3 {
            cycle(&mut tr, &mut t, S, ExitKind::Code(1));
        }
        // Running after 3 restarts, the next delay would be 8 s.
        tr.started(t);
        let json = serde_json::to_string(&tr).unwrap();
        let mut back: RestartTracker = serde_json::from_str(&json).unwrap();
        assert_eq!(back.restarts(), 3);
        assert_eq!(back.state(), RestartState::Running);
        // Adopted by a new agent process.
        let now = Instant::now();
        assert_eq!(back.resume(now), Decision::DoNothing);
        let exit_at = now + S;
        assert_eq!(back.exited(exit_at, ExitKind::Code(1), false), Decision::RestartAt(exit_at + 8 * S));
        back.started(exit_at + 8 * S);
        assert_eq!(back.restarts(), 4);

        // Saved while in back-off: the new agent schedules the restart again.
        let mut tr = RestartTracker::new(policy(RestartCondition::Always), false);
        cycle(&mut tr, &mut t, S, ExitKind::Code(1));
        cycle(&mut tr, &mut t, S, ExitKind::Code(1));
        let mut back: RestartTracker = serde_json::from_str(&serde_json::to_string(&tr).unwrap()).unwrap();
        let now = Instant::now();
        assert_eq!(back.status(now).next_restart_in, None);
        assert_eq!(back.resume(now), Decision::RestartAt(now + 2 * S));
        back.started(now + 2 * S);
        assert_eq!(back.restarts(), 2);
    }
}
