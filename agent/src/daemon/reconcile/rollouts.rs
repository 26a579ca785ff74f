//! Each service towards its revision in force: which revision that is (the manifest's, or
//! `skiff rollback`'s, or the one an update rolled back to), how many slots (`skiff scale`),
//! and the rollout between revisions, driven by the pure machine of [`crate::rollout`]. Also
//! the control socket's commands, which change exactly these.

use std::collections::BTreeSet;
use std::time::{Instant, SystemTime};

use super::super::control::{Reply, Request};
use super::super::revisions::{self, Pin, Scale, ServiceRecord};
use super::{log, AfterStop, Agent, Phase, Replica};
use crate::manifest::{Manifest, Service};
use crate::rollout::{Action, Kind, Member, Phase as MPhase, Rollout, Slot, State, Step};

/// How long a resolved manifest revision is taken as it is (a tag moved by `skiff pull` by
/// hand is seen within this).
const RESOLVE_EVERY: std::time::Duration = std::time::Duration::from_secs(3);

fn now_text() -> String {
    humantime::format_rfc3339_seconds(SystemTime::now()).to_string()
}

/// The container ids of slot `n`: `SERVICE-n`, and `SERVICE-n.b` for the second container a
/// start-first update runs beside the first (the two alternate from one update to the next).
pub(super) fn slot_ids(service: &str, n: u32) -> [String; 2] {
    [format!("{service}-{n}"), format!("{service}-{n}.b")]
}

impl Agent {
    /// Replicas of `svc` in force: `skiff scale`'s while it holds, else the manifest's.
    pub(super) fn replicas_wanted(&self, svc: &Service) -> u32 {
        match self.records.get(&svc.name).and_then(|r| r.scale.as_ref()) {
            Some(s) if s.manifest == svc.replicas => s.replicas,
            _ => svc.replicas,
        }
    }

    fn save_record(&self, service: &str) {
        if let Some(rec) = self.records.get(service) {
            if let Err(e) = revisions::save(&self.paths, service, rec) {
                log(&format!("{service}: saving its revisions: {e:#}"));
            }
        }
    }

    /// A service gone from the manifest, once none of its replicas is left, takes its revisions
    /// and overrides with it (and no longer keeps its images from `skiff prune`), as Swarm
    /// forgets a removed service.
    pub(super) fn forget_removed_services(&mut self, m: &Manifest) {
        let gone: Vec<String> = self
            .records
            .keys()
            .filter(|s| !m.services.contains_key(*s) && !self.replicas.values().any(|r| &r.rec.service == *s))
            .cloned()
            .collect();
        for s in gone {
            self.records.remove(&s);
            self.manifest_revs.remove(&s);
            match std::fs::remove_file(revisions::path(&self.paths, &s)) {
                Ok(()) => log(&format!("{s}: removed from the manifest: its revisions are forgotten")),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => log(&format!("{s}: removing its revisions: {e}")),
            }
        }
    }

    /// Replicas recorded by a skiff before revisions get the revision of what they run.
    pub(super) fn adopt_revisions(&mut self) {
        let ids: Vec<String> =
            self.replicas.iter().filter(|(_, r)| r.rec.revision == 0).map(|(i, _)| i.clone()).collect();
        let mut touched = BTreeSet::new();
        for id in ids {
            let r = &self.replicas[&id];
            let (svc, digest) = (r.rec.spec.clone(), r.rec.image_digest.clone());
            let Ok(Some(img)) = self.store.image(&super::canonical(&svc.image)) else { continue };
            if img.digest.to_string() != digest {
                continue; // its image moved on: the update to the manifest's replaces it
            }
            let rec = self.records.entry(svc.name.clone()).or_default();
            let (n, _) = rec.revision_for(&svc, &img, &now_text());
            if rec.in_force == 0 {
                rec.in_force = n;
            }
            touched.insert(svc.name.clone());
            if let Some(r) = self.replicas.get_mut(&id) {
                r.rec.revision = n;
                super::save(&self.paths, &r.rec);
            }
        }
        for s in touched {
            self.save_record(&s);
        }
    }

    /// The slots of `service` as the rollout machine sees them.
    fn slot_view(&self, service: &str, replicas: u32) -> Vec<Slot> {
        (1..=replicas)
            .map(|n| Slot {
                index: n,
                members: self
                    .replicas
                    .values()
                    .filter(|r| r.rec.service == service && r.rec.index == n)
                    .map(|r| Member { id: r.rec.id.clone(), revision: r.rec.revision, phase: member_phase(r) })
                    .collect(),
            })
            .collect()
    }

    /// The manifest's revision of `svc` (a new one when its definition or its tag's digest is
    /// new); `None` while its image is not in the store (being pulled) or cannot be had.
    fn resolve(&mut self, m: &Manifest, svc: &Service, now: Instant) -> Option<u32> {
        let name = svc.name.clone();
        self.resolved_at.insert(name.clone(), now);
        match self.image_for(svc) {
            Ok(Some(img)) => {
                let rec = self.records.entry(name.clone()).or_default();
                let (n, new) = rec.revision_for(svc, &img, &now_text());
                if new {
                    let changed = rec.get(n).map(|r| r.changed.join(", ")).unwrap_or_default();
                    log(&format!(
                        "{name}: revision {n} ({}){}",
                        &img.digest.to_string()[7..19],
                        if changed.is_empty() { String::new() } else { format!(", changed: {changed}") }
                    ));
                    let mut named: BTreeSet<u32> =
                        self.replicas.values().filter(|r| r.rec.service == name).map(|r| r.rec.revision).collect();
                    named.insert(n);
                    let rec = self.records.entry(name.clone()).or_default();
                    rec.trim(m.revision_history(), &named);
                    self.save_record(&name);
                }
                self.manifest_revs.insert(name, n);
                Some(n)
            }
            Ok(None) => {
                self.manifest_revs.remove(&name);
                None
            }
            Err(e) => {
                self.manifest_revs.remove(&name);
                for r in self.replicas.values_mut().filter(|r| r.rec.service == name) {
                    if matches!(r.phase, Phase::Waiting | Phase::Pulling) {
                        r.phase = Phase::Failed;
                        r.message = Some(e.clone());
                    }
                }
                None
            }
        }
    }

    /// One service towards its revision in force; `true` when an update of it completed in
    /// this pass.
    pub(super) fn converge(&mut self, m: &Manifest, svc: &Service, now: Instant) -> bool {
        let name = svc.name.clone();
        // The manifest's revision: its definition on the image its tag names in the store.
        // Resolved again after anything that may change it (a new manifest, a pull, a check, a
        // command) and every few seconds (a `skiff pull` by hand), not at every pass of the loop.
        let fresh =
            !self.resolve_all && self.resolved_at.get(&name).is_some_and(|t| now.duration_since(*t) < RESOLVE_EVERY);
        let manifest_rev = match self.manifest_revs.get(&name).copied().filter(|_| fresh) {
            Some(n) => Some(n),
            None => self.resolve(m, svc, now),
        };
        let rec = self.records.entry(name.clone()).or_default();
        let mut changed = false;
        // Overrides end when the manifest changes what they override.
        if let (Some(p), Some(mr)) = (&rec.pin, manifest_rev) {
            if p.manifest != mr {
                log(&format!(
                    "{name}: the manifest changed it: `skiff rollback`'s revision {} is no longer in force",
                    p.revision
                ));
                rec.pin = None;
                changed = true;
            }
        }
        if rec.scale.as_ref().is_some_and(|s| s.manifest != svc.replicas) {
            log(&format!("{name}: the manifest changed its replicas: `skiff scale` no longer holds"));
            rec.scale = None;
            changed = true;
        }
        let failed = |n: u32| rec.get(n).is_some_and(|r| r.failed);
        let target = match (&rec.pin, manifest_rev) {
            (Some(p), _) => Some(p.revision),
            // An update to it failed: what runs stays until a new edit (a new revision).
            (None, Some(mr)) if failed(mr) && rec.in_force != 0 => Some(rec.in_force),
            (None, Some(mr)) => Some(mr),
            (None, None) => Some(rec.in_force).filter(|n| *n != 0),
        };
        // After the overrides that ended.
        let replicas_now = self.replicas_wanted(svc);
        let slots = self.slot_view(&name, replicas_now);
        let rec = self.records.entry(name.clone()).or_default();
        if let Some(t) = target {
            // Anything started that runs another revision, with no rollout on the way to `t`.
            let stale = self
                .replicas
                .values()
                .filter(|r| r.rec.service == name && r.rec.revision != t)
                .find(|r| !matches!(r.phase, Phase::Stopping | Phase::Waiting | Phase::Pulling))
                .map(|r| r.rec.revision);
            let moving =
                rec.rollout.as_ref().is_some_and(|r| r.to == t && (r.state.active() || r.state == State::Paused));
            if t != rec.in_force || (stale.is_some() && !moving) {
                let from = if rec.in_force != 0 && rec.in_force != t { rec.in_force } else { stale.unwrap_or(0) };
                rec.in_force = t;
                changed = true;
                if let Some(from) = stale.map(|_| from).filter(|f| *f != 0) {
                    let image_only = rec.get(t).is_some_and(|r| r.changed == ["image digest"]);
                    let cause = if manifest_rev == Some(t) && image_only { "image" } else { "manifest" };
                    let ro = Rollout::begin(Kind::Update, from, t, &slots, now_text(), cause);
                    log(&format!(
                        "{name}: updating from revision {from} to {t} ({} replicas, {:?} parallelism {})",
                        ro.total, svc.rollout.update.order, svc.rollout.update.parallelism
                    ));
                    rec.rollout = Some(ro);
                }
            }
        }
        if changed {
            self.save_record(&name);
        }
        let in_force = self.records.get(&name).map_or(0, |r| r.in_force);
        let spec_of = |this: &Agent, n: u32| -> Service {
            this.records.get(&name).and_then(|r| r.get(n)).map(|r| r.spec.clone()).unwrap_or_else(|| svc.clone())
        };
        // Slots above the count go (both containers of a start-first slot).
        let above: Vec<String> = self
            .replicas
            .values()
            .filter(|r| r.rec.service == name && (r.rec.index < 1 || r.rec.index > replicas_now))
            .filter(|r| r.phase != Phase::Stopping || r.after_stop != AfterStop::Remove)
            .map(|r| r.rec.id.clone())
            .collect();
        for id in above {
            self.begin_stop(&id, AfterStop::Remove);
        }
        // Never started, of another revision: take the one in force as it is.
        let fresh: Vec<(String, u32)> = self
            .replicas
            .values()
            .filter(|r| r.rec.service == name && matches!(r.phase, Phase::Waiting | Phase::Pulling))
            .filter(|r| r.rec.revision != in_force && r.rec.tracker.status(now).restarts == 0)
            .map(|r| (r.rec.id.clone(), r.rec.index))
            .collect();
        let spec = spec_of(self, in_force);
        for (id, n) in fresh {
            self.replicas.insert(id.clone(), Replica::new(id, &spec, n, in_force));
        }
        // Empty slots get a container of the revision in force.
        for n in 1..=replicas_now {
            if !self.replicas.values().any(|r| r.rec.service == name && r.rec.index == n) {
                let id = slot_ids(&name, n)[0].clone();
                self.replicas.insert(id.clone(), Replica::new(id, &spec, n, in_force));
            }
        }
        // The rollout's next moves.
        let mut completed = false;
        if self.records.get(&name).and_then(|r| r.rollout.as_ref()).is_some_and(|r| r.state.active()) {
            let slots = self.slot_view(&name, replicas_now);
            let Some(ro) = self.records.get_mut(&name).and_then(|r| r.rollout.as_mut()) else { return false };
            let step = ro.step(&svc.rollout, &slots, now);
            completed = ro.state == State::Completed;
            let to = ro.to;
            self.after_step(&name, &step);
            for a in step.actions {
                match a {
                    Action::Stop { id } => self.begin_stop(&id, AfterStop::Remove),
                    Action::Start { slot } => {
                        let ids = slot_ids(&name, slot);
                        let Some(id) = ids.iter().find(|i| !self.replicas.contains_key(*i)).cloned() else { continue };
                        let spec = spec_of(self, to);
                        self.replicas.insert(id.clone(), Replica::new(id, &spec, slot, to));
                    }
                }
            }
        }
        // Start what is due, slot by slot.
        let mut due: Vec<(u32, String)> = self
            .replicas
            .values()
            .filter(|r| r.rec.service == name)
            .filter(|r| match r.phase {
                Phase::Waiting | Phase::Pulling => true,
                Phase::Backoff => r.backoff_until.is_none_or(|t| t <= now),
                _ => false,
            })
            .map(|r| (r.rec.index, r.rec.id.clone()))
            .collect();
        due.sort();
        for (_, id) in due {
            self.try_start(m, &id);
        }
        completed
    }

    /// Logs a step, saves what changed, and keeps the books of a rollback an update turned into.
    fn after_step(&mut self, name: &str, step: &Step) {
        for l in &step.log {
            log(&format!("{name}: {l}"));
        }
        if let Some(w) = step.wake {
            self.rollout_wake = Some(self.rollout_wake.map_or(w, |x: Instant| x.min(w)));
        }
        let Some(rec) = self.records.get_mut(name) else { return };
        let mut changed = step.changed;
        if let Some(ro) = &rec.rollout {
            if ro.kind == Kind::Rollback && ro.cause == "automatic" {
                // The update failed: its revision is marked, and the old one is in force again.
                let (from, to) = (ro.from, ro.to);
                changed |= rec.mark_failed(from);
                if rec.in_force != to {
                    rec.in_force = to;
                    changed = true;
                }
            }
        }
        if changed {
            self.save_record(name);
        }
    }

    /// A container failed (start, exit, health): counted against its service's rollout when it
    /// is of the new revision and within its monitor window.
    pub(super) fn rollout_failure(&mut self, id: &str, ready: Option<Instant>, why: &str) {
        let Some(r) = self.replicas.get(id) else { return };
        let (service, revision, slot) = (r.rec.service.clone(), r.rec.revision, r.rec.index);
        let Some(svc) = self.manifest.as_ref().and_then(|m| m.services.get(&service)).cloned() else { return };
        let now = Instant::now();
        let counts = self
            .records
            .get(&service)
            .and_then(|r| r.rollout.as_ref())
            .is_some_and(|ro| ro.counts(&svc.rollout, revision, ready, now));
        if !counts {
            return;
        }
        let slots = self.slot_view(&service, self.replicas_wanted(&svc));
        let mut step = Step::default();
        if let Some(ro) = self.records.get_mut(&service).and_then(|r| r.rollout.as_mut()) {
            ro.fail(&svc.rollout, slot, why, &slots, &mut step);
            if ro.kind == Kind::Rollback && ro.state.active() {
                step.wake = Some(now);
            }
        }
        self.after_step(&service, &step);
    }

    /// A command from the control socket.
    pub(super) fn on_control(&mut self, req: Request) -> Reply {
        let Some(m) = self.manifest.clone() else {
            return Reply::err("the agent has no valid manifest yet: nothing to change");
        };
        let known = |s: &str| -> Result<Service, Reply> {
            m.services.get(s).cloned().ok_or_else(|| {
                let names: Vec<&str> = m.services.keys().map(String::as_str).collect();
                Reply::err(format!("no service {s:?} in the manifest (services: {})", names.join(", ")))
            })
        };
        let reply = match req {
            Request::Scale { services } => {
                let mut done = Vec::new();
                for (s, _) in &services {
                    if let Err(e) = known(s) {
                        return e;
                    }
                }
                for (s, n) in services {
                    let svc = &m.services[&s];
                    let rec = self.records.entry(s.clone()).or_default();
                    rec.scale = (n != svc.replicas).then_some(Scale { replicas: n, manifest: svc.replicas });
                    self.save_record(&s);
                    log(&format!("{s}: scaled to {n} by skiff scale (the manifest says {})", svc.replicas));
                    done.push(format!(
                        "{s}: {n} replicas (the manifest says {}; it holds until the manifest changes them)",
                        svc.replicas
                    ));
                }
                Reply::ok(done.join("\n"))
            }
            Request::Rollback { service, to } => {
                let svc = match known(&service) {
                    Ok(s) => s,
                    Err(e) => return e,
                };
                let Some(rec) = self.records.get(&service) else {
                    return Reply::err(format!("{service} has no revisions yet"));
                };
                let current = rec.in_force;
                let Some(n) = to.or_else(|| rec.before(current)) else {
                    return Reply::err(format!(
                        "{service}: no revision before {current} is kept (`skiff history {service}`)"
                    ));
                };
                if rec.get(n).is_none() {
                    let kept: Vec<String> = rec.revisions.iter().map(|r| r.n.to_string()).collect();
                    return Reply::err(format!("{service}: revision {n} is not kept (kept: {})", kept.join(", ")));
                }
                if n == current {
                    return Reply::err(format!("{service}: revision {n} is already in force"));
                }
                let Some(mr) = self.manifest_revs.get(&service).copied() else {
                    return Reply::err(format!(
                        "{service}: the manifest's revision is not resolved yet (its image is being pulled); try again"
                    ));
                };
                let slots = self.slot_view(&service, self.replicas_wanted(&svc));
                let Some(rec) = self.records.get_mut(&service) else { return Reply::err("gone") };
                rec.pin = (n != mr).then_some(Pin { revision: n, manifest: mr });
                let ro = Rollout::begin(Kind::Rollback, current, n, &slots, now_text(), "skiff rollback");
                rec.rollout = Some(ro);
                rec.in_force = n;
                self.save_record(&service);
                log(&format!("{service}: rolling back from revision {current} to {n} (skiff rollback)"));
                Reply::ok(format!(
                    "{service}: rolling back from revision {current} to {n}; it stays in force until the manifest changes {service}"
                ))
            }
            Request::Resume { service } => {
                let svc = match known(&service) {
                    Ok(s) => s,
                    Err(e) => return e,
                };
                let slots = self.slot_view(&service, self.replicas_wanted(&svc));
                let resumed =
                    self.records.get_mut(&service).and_then(|r| r.rollout.as_mut()).is_some_and(|ro| ro.resume(&slots));
                if !resumed {
                    return Reply::err(format!("{service}: no paused update"));
                }
                self.save_record(&service);
                log(&format!("{service}: rollout resumed (skiff rollout resume)"));
                Reply::ok(format!("{service}: resumed"))
            }
            Request::Update { services } => {
                let names: Vec<String> =
                    if services.is_empty() { m.services.keys().cloned().collect() } else { services };
                let mut out = Vec::new();
                for s in &names {
                    let svc = match known(s) {
                        Ok(s) => s,
                        Err(e) => return e,
                    };
                    self.check_now(&svc, false);
                    out.push(format!(
                        "{s}: checking {} (a new digest is pulled and rolled out; `skiff status` shows the check)",
                        svc.image
                    ));
                }
                Reply::ok(out.join("\n"))
            }
        };
        self.reconcile();
        reply
    }
}

fn member_phase(r: &Replica) -> MPhase {
    match (r.phase, r.ready_at) {
        (Phase::Stopping, _) => MPhase::Stopping,
        (Phase::Running | Phase::Exited, Some(t)) => MPhase::Ready { since: t },
        (Phase::Failed | Phase::Exited, _) => MPhase::Down,
        _ => MPhase::Pending { since: r.since },
    }
}

/// What `skiff status` shows of a service's revisions and rollout.
pub(super) fn record_status(
    rec: Option<&ServiceRecord>,
    manifest_rev: Option<u32>,
) -> super::super::status::RevisionStatus {
    use super::super::status::{RevisionStatus, UpdateStatus};
    let Some(rec) = rec else { return RevisionStatus::default() };
    let over = match (&rec.pin, &rec.scale) {
        (Some(p), _) => Some(format!("rolled back to revision {} by skiff rollback", p.revision)),
        (None, Some(s)) => Some(format!("scaled to {} by skiff scale (the manifest says {})", s.replicas, s.manifest)),
        _ => None,
    };
    let rolled_back = rec.rollout.as_ref().is_some_and(|r| r.kind == Kind::Rollback && r.cause == "automatic");
    let over = over.or_else(|| {
        (rolled_back && manifest_rev.is_some_and(|m| m != rec.in_force))
            .then(|| format!("rolled back: revision {} failed", manifest_rev.unwrap_or(0)))
    });
    RevisionStatus {
        revision: (rec.in_force != 0).then_some(rec.in_force),
        manifest_revision: manifest_rev,
        scale: rec.scale.as_ref().map(|s| s.replicas),
        override_: over,
        update: rec.rollout.as_ref().map(|r| UpdateStatus {
            state: r.state.as_str().to_string(),
            from: r.from,
            to: r.to,
            updated: r.done.len() as u32,
            failed: r.failed.len() as u32,
            total: r.total,
            started: r.started.clone(),
            message: r.message.clone(),
        }),
    }
}
