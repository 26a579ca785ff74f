//! The status the loop publishes after every change (`/v1/status`, `/metrics`, `skiff status`).

use std::sync::Arc;
use std::time::Instant;

use super::{rollouts, Agent, Phase, Replica};
use crate::daemon::status::{
    Health, HostStatus, ManifestStatus, ReplicaState, ReplicaStatus, ServiceStatus, Snapshot, Status,
};
use crate::hostcheck::{clock, Level};
use crate::manifest::Manifest;

impl Agent {
    /// Builds the status and publishes it.
    pub fn publish(&self) {
        let now = Instant::now();
        let mut services = Vec::new();
        let empty = Manifest::default();
        let m = self.manifest.as_ref().unwrap_or(&empty);
        let mut names: Vec<&String> = m.services.keys().collect();
        for r in self.replicas.values() {
            if !m.services.contains_key(&r.rec.service) && !names.contains(&&r.rec.service) {
                names.push(&r.rec.service);
            }
        }
        for name in names {
            let svc = m.services.get(name);
            let reps: Vec<&Replica> = self.replicas.values().filter(|r| &r.rec.service == name).collect();
            let mut statuses: Vec<ReplicaStatus> = reps.iter().map(|r| replica_status(r, now)).collect();
            statuses.sort_by(|a, b| (a.slot, &a.id).cmp(&(b.slot, &b.id)));
            let image = svc.map(|s| s.image.clone()).or_else(|| reps.first().map(|r| r.rec.spec.image.clone()));
            // The digest running replicas were made from (never one that does not run).
            // Of the running replicas, those of the revision in force first.
            let in_force = self.records.get(name.as_str()).map_or(0, |r| r.in_force);
            let running = || reps.iter().filter(|r| r.phase == Phase::Running && !r.rec.image_digest.is_empty());
            let digest = running()
                .find(|r| r.rec.revision == in_force)
                .or_else(|| running().next())
                .map(|r| r.rec.image_digest.clone());
            services.push(ServiceStatus {
                name: name.clone(),
                image: image.unwrap_or_default(),
                image_digest: digest,
                desired_replicas: svc.map_or(0, |s| self.replicas_wanted(s)),
                running_replicas: statuses.iter().filter(|s| s.state == ReplicaState::Running).count() as u32,
                healthy_replicas: statuses
                    .iter()
                    .filter(|s| s.state == ReplicaState::Running && matches!(s.health, Health::Healthy | Health::None))
                    .count() as u32,
                warnings: {
                    let mut w = self.service_warnings.get(name).cloned().unwrap_or_default();
                    w.extend(svc.map(|s| self.firewall_warnings(s)).unwrap_or_default());
                    w
                },
                replicas: statuses,
                ports: self.ports.status(name),
                revisions: rollouts::record_status(self.records.get(name), self.manifest_revs.get(name).copied()),
                image_check: svc.and_then(|s| self.check_status(name, s.pull_policy)),
            });
        }
        let mut status = Status {
            manifest: ManifestStatus {
                path: self.manifest_path.display().to_string(),
                revision: self.revision.clone(),
                error: self.manifest_error.clone(),
                warnings: self.manifest_warnings.clone(),
            },
            services,
            host: HostStatus {
                findings: self
                    .host_findings
                    .iter()
                    .filter(|f| f.topic != "clock" || f.level != Level::Error || clock::check_now().is_some())
                    .cloned()
                    .collect(),
            },
            store: self.store_status(),
        };
        status.bound_texts();
        self.snapshots.send_replace(Snapshot {
            status: Arc::new(status),
            manifest_loaded: self.manifest.is_some(),
            tick: now,
        });
    }
}

fn replica_status(r: &Replica, now: Instant) -> ReplicaStatus {
    let t = r.rec.tracker.status(now);
    let state = match r.phase {
        Phase::Waiting => ReplicaState::Created,
        Phase::Pulling => ReplicaState::Pulling,
        Phase::Starting => ReplicaState::Created,
        Phase::Running => ReplicaState::Running,
        Phase::Backoff => ReplicaState::Backoff,
        Phase::Exited => ReplicaState::Exited,
        Phase::Failed => ReplicaState::Failed,
        Phase::Stopping => ReplicaState::Stopping,
    };
    ReplicaStatus {
        id: r.rec.id.clone(),
        state,
        pid: if r.phase == Phase::Running || r.phase == Phase::Stopping { r.rec.pid } else { None },
        restarts: t.restarts,
        last_exit_code: t.last_exit.map(|e| e.exit_code()),
        health: if r.phase == Phase::Running { r.health } else { Health::None },
        started_at: r.rec.started_at.clone(),
        next_restart_in: match r.phase {
            Phase::Backoff => r.backoff_until.map(|u| u.saturating_duration_since(now).as_secs_f64()),
            _ => None,
        },
        message: r.message.clone(),
        address: r.rec.address.map(|a| a.to_string()),
        revision: (r.rec.revision != 0).then_some(r.rec.revision),
        image_digest: (!r.rec.image_digest.is_empty() && matches!(r.phase, Phase::Running | Phase::Stopping))
            .then(|| r.rec.image_digest.clone()),
        slot: r.rec.index,
    }
}
