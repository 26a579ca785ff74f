//! The rollout machine against a simulated service: the loop's side (stops complete, empty
//! slots are filled with the revision in force, containers become ready or fail) is played by
//! [`Sim`], in milliseconds.

use super::*;

const S: Duration = Duration::from_secs(1);

struct Sim {
    p: Policy,
    r: Rollout,
    slots: Vec<Slot>,
    now: Instant,
    next: u32,
    log: Vec<String>,
    /// Most containers not stopping at once, fewest ready ones at once (after the first step).
    most: usize,
    fewest_ready: usize,
}

impl Sim {
    /// `n` slots on revision 1, ready for long; an update to revision 2 begun.
    fn new(n: u32, p: Policy) -> Sim {
        let now = Instant::now() + Duration::from_secs(3600);
        let slots: Vec<Slot> = (1..=n)
            .map(|i| Slot {
                index: i,
                members: vec![Member {
                    id: format!("web-{i}"),
                    revision: 1,
                    phase: Phase::Ready { since: now - 3000 * S },
                }],
            })
            .collect();
        let r = Rollout::begin(Kind::Update, 1, 2, &slots, "t".into(), "manifest");
        Sim { p, r, slots, now, next: 0, log: Vec::new(), most: 0, fewest_ready: usize::MAX }
    }
    fn slot(&mut self, i: u32) -> &mut Slot {
        self.slots.iter_mut().find(|s| s.index == i).expect("slot")
    }
    /// One step; applies its actions as the loop does (a stop begins; a start adds a pending
    /// container of the target revision).
    fn step(&mut self) -> Step {
        let st = self.r.step(&self.p, &self.slots, self.now);
        self.log.extend(st.log.iter().cloned());
        for a in &st.actions {
            match a {
                Action::Stop { id } => {
                    for s in &mut self.slots {
                        for m in &mut s.members {
                            if &m.id == id {
                                m.phase = Phase::Stopping;
                            }
                        }
                    }
                }
                Action::Start { slot } => {
                    self.next += 1;
                    let (to, now, id) = (self.r.to, self.now, format!("web-{slot}.{}", self.next));
                    self.slot(*slot).members.push(Member { id, revision: to, phase: Phase::Pending { since: now } });
                }
            }
        }
        self.measure();
        st
    }
    fn measure(&mut self) {
        let live = self.slots.iter().flat_map(|s| &s.members).filter(|m| m.phase != Phase::Stopping).count();
        let ready =
            self.slots.iter().flat_map(|s| &s.members).filter(|m| matches!(m.phase, Phase::Ready { .. })).count();
        self.most = self.most.max(live);
        self.fewest_ready = self.fewest_ready.min(ready);
    }
    /// Stops complete; the loop fills empty slots with the revision in force.
    fn stops_done(&mut self) {
        let (to, now) = (self.r.to, self.now);
        for s in &mut self.slots {
            s.members.retain(|m| m.phase != Phase::Stopping);
            if s.members.is_empty() {
                self.next += 1;
                s.members.push(Member {
                    id: format!("web-{}.{}", s.index, self.next),
                    revision: to,
                    phase: Phase::Pending { since: now },
                });
            }
        }
        self.measure();
    }
    /// Every pending container of the target revision becomes ready.
    fn all_ready(&mut self) {
        let (to, now) = (self.r.to, self.now);
        for s in &mut self.slots {
            for m in &mut s.members {
                if m.revision == to && matches!(m.phase, Phase::Pending { .. }) {
                    m.phase = Phase::Ready { since: now };
                }
            }
        }
    }
    /// The pending container of the target revision in slot `i` fails (exits, given up).
    fn fails(&mut self, i: u32) {
        let to = self.r.to;
        for m in &mut self.slot(i).members {
            if m.revision == to && m.phase != Phase::Stopping {
                m.phase = Phase::Down;
            }
        }
        let mut out = Step::default();
        let slots = self.slots.clone();
        self.r.fail(&self.p, i, "exited (1)", &slots, &mut out);
        self.log.extend(out.log);
    }
    fn advance(&mut self, d: Duration) {
        self.now += d;
    }
    /// Drives the rollout with containers that all become ready at once, until it ends.
    fn run_healthy(&mut self) {
        for _ in 0..200 {
            self.step();
            self.stops_done();
            self.all_ready();
            if !self.r.state.active() {
                return;
            }
            self.advance(S);
        }
        panic!("did not end: {:?}", self.r);
    }
    fn revisions(&self) -> Vec<u32> {
        self.slots.iter().map(|s| s.members.iter().map(|m| m.revision).max().unwrap_or(0)).collect()
    }
}

fn policy(f: impl FnOnce(&mut UpdateConfig)) -> Policy {
    let mut p = Policy::default();
    f(&mut p.update);
    p
}

#[test]
fn stop_first_replaces_one_slot_at_a_time_and_ends_after_the_monitor_window() {
    let mut s = Sim::new(4, Policy::default());
    let st = s.step();
    assert_eq!(st.actions, vec![Action::Stop { id: "web-1".into() }], "slot 1 only");
    assert!(s.step().actions.is_empty(), "slot 1 is being stopped: nothing else begins");
    s.stops_done();
    assert!(s.step().actions.is_empty(), "slot 1's new container is not ready yet");
    s.all_ready();
    let st = s.step();
    assert_eq!(st.actions, vec![Action::Stop { id: "web-2".into() }]);
    assert!(st.changed, "slot 1 done is saved");
    s.run_healthy();
    assert_eq!(s.r.state, State::Completed);
    assert_eq!(s.revisions(), [2, 2, 2, 2]);
    assert_eq!(s.fewest_ready, 3, "never fewer than replicas - parallelism");
    assert_eq!(s.r.done.len(), 4);
}

#[test]
fn completion_waits_for_the_monitor_window_of_the_last_replica() {
    let mut s = Sim::new(1, Policy::default());
    s.step();
    s.stops_done();
    s.all_ready();
    let st = s.step();
    assert_eq!(s.r.state, State::Updating, "within monitor");
    assert_eq!(st.wake, Some(s.now + 5 * S));
    s.advance(4 * S);
    // A failure within the window counts...
    assert!(s.r.counts(&s.p, 2, Some(s.now - 4 * S), s.now));
    s.advance(S);
    // ...one after it does not, nor one of another revision.
    assert!(!s.r.counts(&s.p, 2, Some(s.now - 5 * S), s.now));
    assert!(!s.r.counts(&s.p, 1, None, s.now));
    s.step();
    assert_eq!(s.r.state, State::Completed);
    assert!(!s.r.counts(&s.p, 2, None, s.now), "nothing counts once completed");
}

#[test]
fn start_first_keeps_the_old_container_until_the_new_one_is_ready() {
    let mut s = Sim::new(
        4,
        policy(|u| {
            u.order = Order::StartFirst;
            u.parallelism = 2;
        }),
    );
    let st = s.step();
    assert_eq!(st.actions, vec![Action::Start { slot: 1 }, Action::Start { slot: 2 }]);
    assert!(s.step().actions.is_empty(), "not ready: the old ones stay");
    s.all_ready();
    let st = s.step();
    assert_eq!(st.actions, vec![Action::Stop { id: "web-1".into() }, Action::Stop { id: "web-2".into() }]);
    s.run_healthy();
    assert_eq!(s.r.state, State::Completed);
    assert_eq!(s.revisions(), [2, 2, 2, 2]);
    assert_eq!(s.most, 6, "never more than replicas + parallelism");
    assert_eq!(s.fewest_ready, 4, "start-first: never fewer ready than replicas");
}

#[test]
fn parallelism_zero_replaces_every_slot_at_once() {
    let mut s = Sim::new(3, policy(|u| u.parallelism = 0));
    assert_eq!(s.step().actions.len(), 3);
    s.run_healthy();
    assert_eq!(s.revisions(), [2, 2, 2]);
}

#[test]
fn delay_holds_the_next_slot() {
    let mut s = Sim::new(2, policy(|u| u.delay = 10 * S));
    s.step();
    s.stops_done();
    s.all_ready();
    let st = s.step();
    assert!(st.actions.is_empty(), "slot 2 waits for the delay");
    assert_eq!(st.wake, Some(s.now + 10 * S));
    s.advance(9 * S);
    assert!(s.step().actions.is_empty());
    s.advance(S);
    assert_eq!(s.step().actions, vec![Action::Stop { id: "web-2".into() }]);
}

#[test]
fn a_failure_pauses_by_default_and_nothing_more_is_replaced() {
    let mut s = Sim::new(4, Policy::default());
    s.step();
    s.stops_done();
    s.fails(1);
    assert_eq!(s.r.state, State::Paused);
    assert!(s.r.message.as_deref().is_some_and(|m| m.contains("paused") && m.contains("1 of 4")), "{:?}", s.r.message);
    assert!(s.step().actions.is_empty());
    assert_eq!(s.revisions(), [2, 1, 1, 1], "what runs stays");
    // Resumed: it goes on with a clean slate.
    let slots = s.slots.clone();
    assert!(s.r.resume(&slots));
    assert_eq!(s.r.state, State::Updating);
    assert!(s.r.failed.is_empty());
    s.all_ready();
    s.run_healthy();
    assert_eq!(s.revisions(), [2, 2, 2, 2]);
}

#[test]
fn max_failure_ratio_is_strict() {
    let mut s = Sim::new(
        4,
        policy(|u| {
            u.max_failure_ratio = 0.25;
            u.parallelism = 4;
        }),
    );
    s.step();
    s.stops_done();
    s.fails(1);
    assert_eq!(s.r.state, State::Updating, "1/4 = 0.25 is not more than 0.25");
    s.fails(1);
    assert_eq!(s.r.failed.len(), 1, "a slot counts once");
    s.fails(2);
    assert_eq!(s.r.state, State::Paused, "2/4 > 0.25");
}

#[test]
fn continue_goes_on_past_failures_and_completes() {
    let mut s = Sim::new(3, policy(|u| u.failure_action = FailureAction::Continue));
    s.step();
    s.stops_done();
    s.fails(1);
    assert_eq!(s.r.state, State::Updating);
    let st = s.step();
    assert_eq!(st.actions, vec![Action::Stop { id: "web-2".into() }], "a failed slot holds no parallelism");
    s.run_healthy();
    assert_eq!(s.r.state, State::Completed);
    assert!(s.r.message.as_deref().is_some_and(|m| m.contains("1 of 3 replicas failed")), "{:?}", s.r.message);
}

#[test]
fn failure_action_rollback_runs_back_to_the_old_revision() {
    let mut p = policy(|u| {
        u.failure_action = FailureAction::Rollback;
        u.order = Order::StartFirst;
    });
    p.rollback.parallelism = 0;
    let mut s = Sim::new(4, p);
    s.step();
    s.all_ready();
    s.step(); // web-1 replaced
    s.stops_done();
    s.step(); // slot 2 started
    s.fails(2);
    assert_eq!((s.r.kind, s.r.from, s.r.to, s.r.state), (Kind::Rollback, 2, 1, State::RollingBack));
    assert_eq!(s.r.cause, "automatic");
    assert_eq!(s.r.total, 2, "slots 1 and 2 run revision 2");
    // Slot 2 still has its old container (start-first): the failed new one goes; slot 1 is
    // stopped and refilled with revision 1 (rollback_config: stop-first, all at once).
    let st = s.step();
    assert_eq!(st.actions.len(), 2, "{:?}", st.actions);
    s.stops_done();
    s.all_ready();
    for _ in 0..10 {
        s.step();
        s.advance(S);
    }
    assert_eq!(s.r.state, State::RolledBack);
    assert_eq!(s.revisions(), [1, 1, 1, 1]);
    assert!(s.r.message.as_deref().is_some_and(|m| m.contains("rolled back to revision 1")), "{:?}", s.r.message);
}

#[test]
fn a_rollback_that_fails_pauses_and_is_never_rolled_back() {
    let mut p = policy(|u| u.failure_action = FailureAction::Rollback);
    p.rollback.failure_action = FailureAction::Rollback;
    let mut s = Sim::new(2, p);
    s.step();
    s.stops_done();
    s.fails(1);
    assert_eq!(s.r.kind, Kind::Rollback);
    s.step();
    s.stops_done();
    s.fails(1);
    assert_eq!((s.r.kind, s.r.state, s.r.to), (Kind::Rollback, State::Paused, 1));
    assert!(s.log.iter().any(|l| l.contains("rollback to revision 1: paused")), "{:?}", s.log);
}

#[test]
fn a_replica_not_ready_by_the_deadline_has_failed() {
    let p = Policy { progress_deadline: 60 * S, ..Default::default() };
    let mut s = Sim::new(2, p);
    s.step();
    s.stops_done();
    let st = s.step();
    assert_eq!(st.wake, Some(s.now + 60 * S));
    s.advance(60 * S);
    s.step();
    assert_eq!(s.r.state, State::Paused);
    assert!(s.log.iter().any(|l| l.contains("progress deadline")), "{:?}", s.log);
}

#[test]
fn a_saved_rollout_goes_on_after_an_agent_restart() {
    // Kill the agent at every step of a start-first update: the rollout read back from its
    // file (the hold is not saved) with the containers as they are must end the same.
    for cut in 0..12 {
        let mut s = Sim::new(
            4,
            policy(|u| {
                u.order = Order::StartFirst;
                u.delay = 2 * S;
            }),
        );
        for i in 0..cut {
            s.step();
            if i % 2 == 0 {
                s.stops_done();
            }
            s.all_ready();
            s.advance(S);
        }
        let saved = serde_json::to_string(&s.r).expect("serialise");
        s.r = serde_json::from_str(&saved).expect("read back");
        s.run_healthy();
        assert_eq!(s.r.state, State::Completed, "cut at {cut}");
        assert_eq!(s.revisions(), [2, 2, 2, 2], "cut at {cut}");
        assert!(s.most <= 5, "cut at {cut}: {} containers at once", s.most);
    }
}

#[test]
fn slots_already_on_the_new_revision_are_not_counted() {
    let mut s = Sim::new(3, Policy::default());
    s.slots[2].members[0].revision = 2;
    let r = Rollout::begin(Kind::Update, 1, 2, &s.slots, "t".into(), "manifest");
    assert_eq!(r.total, 2);
}
