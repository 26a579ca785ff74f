//! The bridge network and the published ports as the loop keeps them: backends fed from the
//! replicas, tables put back after a firewall reload, the bridge torn down when no bridged
//! service is left, hosts files rewritten as replicas come and go.

use std::sync::Arc;

use anyhow::{anyhow, Result};

use super::super::network::{self, BridgeNet};
use super::{log, Agent, Event, Phase};
use crate::daemon::status::Health;
use crate::manifest::{Manifest, NetworkMode, Service};

impl Agent {
    /// Published ports: bound, and fed with the replicas that may take traffic.
    pub(super) fn sync_ports(&mut self, m: &Manifest) {
        let replicas = &self.replicas;
        self.ports.sync(m, self.bridge_disabled, |service| {
            replicas
                .values()
                .filter(|r| r.rec.service == service && r.phase == Phase::Running)
                .filter(|r| r.rec.healthcheck.is_none() || r.health == Health::Healthy)
                .filter_map(|r| r.rec.address)
                .collect()
        });
    }

    /// Tables of ours deleted by someone else: the NAT table is applied again while the bridge
    /// is in use (in the background, under the setup lock), and the published ports' rules at
    /// the next sync when there are any. What the agent removed itself is not wanted any more,
    /// so nothing comes back.
    pub(super) fn on_tables_lost(&mut self, names: &[String]) {
        if names.iter().any(|n| n == crate::net::nft::PORTS_TABLE) && self.ports.rules_lost() {
            log(&format!(
                "nftables: table ip {} was deleted by someone else (a firewall reload?); applying it again",
                crate::net::nft::PORTS_TABLE
            ));
        }
        if names.iter().any(|n| n == crate::net::nft::TABLE) {
            if let Some(net) = self.net.clone() {
                tokio::spawn(async move {
                    match net.repair().await {
                        Ok(true) => log(&format!(
                            "nftables: table ip {} (the bridge's NAT) was deleted by someone else (a firewall reload?); applied it again",
                            crate::net::nft::TABLE
                        )),
                        Ok(false) => {}
                        Err(e) => log(&format!("nftables: putting back the NAT table of the bridge: {e:#}")),
                    }
                });
            }
        }
    }

    /// Asks the bridge network (in the background) whether another firewall drops forwarded
    /// traffic; status shows the answer once it changes.
    pub(super) fn check_firewall(&self) {
        let Some(net) = self.net.clone() else { return };
        let tx = self.tx.clone();
        tokio::spawn(async move {
            if net.check_firewall().await {
                let _ = tx.send(Event::FirewallChecked);
            }
        });
    }

    /// The bridge and its NAT rules go when no bridged service is left: no replica on the
    /// bridge (stopping ones included) and no bridged service in the manifest.
    pub(super) fn teardown_bridge_if_unused(&mut self, m: &Manifest) {
        if !self.bridge_maybe_up || self.bridge_disabled {
            return;
        }
        let wanted = m.services.values().any(|s| s.network_mode == NetworkMode::Bridge && s.replicas > 0);
        let left = self.replicas.values().any(|r| r.rec.spec.network_mode == NetworkMode::Bridge);
        if wanted || left {
            return;
        }
        // Taken here, not in the task: a bridged start that comes next waits for the teardown
        // (and sets everything up again) instead of racing it. Busy (a setup runs): next pass.
        let Ok(setup) = self.setup_lock.clone().try_lock_owned() else { return };
        self.bridge_maybe_up = false;
        if let Some(net) = self.net.take() {
            net.retire();
        }
        let paths = self.paths.clone();
        tokio::spawn(async move {
            let _setup = setup;
            let res = tokio::task::spawn_blocking(move || network::teardown(&paths, None))
                .await
                .map_err(|e| anyhow!("{e}"))
                .and_then(|r| r);
            match res {
                Ok(Some(bridge)) => {
                    log(&format!("no bridged service left: removed the bridge {bridge} and its NAT rules"))
                }
                Ok(None) => {}
                Err(e) => log(&format!("removing the bridge network: {e:#}")),
            }
        });
    }

    /// The bridge network of the manifest's `x-skiff` settings (opened on first use; a changed
    /// setting opens the new one: replicas connected to the old bridge keep it until replaced).
    pub(super) fn bridge_net(&mut self, m: &Manifest) -> Result<Arc<BridgeNet>> {
        let settings = m.network.resolve(&self.network_defaults);
        if let Some(n) = self.net.as_ref().filter(|n| n.is(&settings)) {
            return Ok(n.clone());
        }
        let n = Arc::new(BridgeNet::open(&self.paths, &settings, self.setup_lock.clone())?);
        self.net = Some(n.clone());
        self.bridge_maybe_up = true;
        Ok(n)
    }

    /// Rewrites the hosts files of the bridged replicas that run or start (in the background).
    pub(super) fn refresh_hosts(&self) {
        let Some(net) = self.net.clone() else { return };
        let list: Vec<(String, Service)> = self
            .replicas
            .values()
            .filter(|r| r.rec.spec.network_mode == NetworkMode::Bridge)
            .filter(|r| matches!(r.phase, Phase::Running | Phase::Starting))
            .map(|r| (r.rec.id.clone(), r.rec.spec.clone()))
            .collect();
        if list.is_empty() {
            return;
        }
        let paths = self.paths.clone();
        tokio::task::spawn_blocking(move || net.refresh_hosts(&paths, &list));
    }
}
