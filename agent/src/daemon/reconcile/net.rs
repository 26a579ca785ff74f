//! The bridge network and the published ports as the loop keeps them: backends fed from the
//! replicas, tables put back after a firewall reload, the bridge torn down when no bridged
//! service is left, hosts files rewritten as replicas come and go.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::sync::Arc;

use anyhow::{anyhow, Context, Result};

use super::super::network::{self, BridgeNet};
use super::super::paths::Paths;
use super::{log, Agent, Event, Phase};
use crate::daemon::status::Health;
use crate::manifest::{Manifest, NetworkMode, Service, ServiceNetwork, DEFAULT_NETWORK};
use crate::net::ipam::Subnet;

/// The networks of a bridged service, in order (none named: `default`).
pub(super) fn service_networks(svc: &Service) -> Vec<ServiceNetwork> {
    if svc.networks.is_empty() {
        vec![ServiceNetwork { name: DEFAULT_NETWORK.into(), ..Default::default() }]
    } else {
        svc.networks.clone()
    }
}

/// Whether bridged `svc` is on network `key`.
fn on_network(svc: &Service, key: &str) -> bool {
    svc.network_mode == NetworkMode::Bridge && service_networks(svc).iter().any(|n| n.name == key)
}

/// Connects replica `id` of `svc` to `nets` (eth0, eth1, ... in order; the default route via
/// the first network that is not internal) and writes its name files. Returns its address for
/// published ports: the one on that network (`None`: not bridged, or only internal networks).
pub(super) async fn connect(
    paths: &Paths,
    svc: &Service,
    id: &str,
    nets: &[(Arc<BridgeNet>, ServiceNetwork)],
) -> Result<Option<Ipv4Addr>> {
    if nets.is_empty() {
        return Ok(None);
    }
    let route = nets.iter().position(|(n, _)| !n.internal());
    let mut addrs = Vec::with_capacity(nets.len());
    for (i, (net, sn)) in nets.iter().enumerate() {
        let a = net.connect(paths, id, i, sn.ipv4_address, route == Some(i)).await?;
        addrs.push((net.clone(), a));
    }
    let (p, s, i, a) = (paths.clone(), svc.clone(), id.to_string(), addrs.clone());
    tokio::task::spawn_blocking(move || network::write_files(&p, &s, &i, &a)).await.map_err(|e| anyhow!("{e}"))??;
    Ok(route.map(|r| addrs[r].1))
}

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
        let user_lost = names.iter().any(|n| n.starts_with(crate::net::nft::NETWORK_TABLE_PREFIX));
        if user_lost {
            for net in self.user_nets.values().cloned() {
                tokio::spawn(async move {
                    match net.repair().await {
                        Ok(true) => log(&format!(
                            "nftables: the NAT table of network `{}` was deleted by someone else (a firewall reload?); applied it again",
                            net.key
                        )),
                        Ok(false) => {}
                        Err(e) => log(&format!("nftables: putting back the NAT table of network `{}`: {e:#}", net.key)),
                    }
                });
            }
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

    /// Asks each bridge network (in the background) whether another firewall drops forwarded
    /// traffic or what the host receives from it; status shows the answer once it changes.
    pub(super) fn check_firewall(&self) {
        for net in self.net.iter().chain(self.user_nets.values()) {
            let (net, tx) = (net.clone(), self.tx.clone());
            tokio::spawn(async move {
                if net.check_firewall().await {
                    let _ = tx.send(Event::FirewallChecked);
                }
            });
        }
    }

    /// The firewall warnings of the networks bridged `svc` is on.
    pub(super) fn firewall_warnings(&self, svc: &Service) -> Vec<String> {
        if svc.network_mode != NetworkMode::Bridge {
            return Vec::new();
        }
        service_networks(svc)
            .iter()
            .filter_map(|n| if n.name == DEFAULT_NETWORK { self.net.as_ref() } else { self.user_nets.get(&n.name) })
            .filter_map(|net| net.firewall_warning())
            .collect()
    }

    /// The bridge and its NAT rules go when no bridged service is left: no replica on the
    /// bridge (stopping ones included) and no bridged service in the manifest.
    pub(super) fn teardown_bridge_if_unused(&mut self, m: &Manifest) {
        self.teardown_networks_if_unused(m);
        if !self.bridge_maybe_up || self.bridge_disabled {
            return;
        }
        let wanted = m.services.values().any(|s| on_network(s, DEFAULT_NETWORK) && s.replicas > 0);
        let left = self.replicas.values().any(|r| on_network(&r.rec.spec, DEFAULT_NETWORK));
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
            let res = tokio::task::spawn_blocking(move || network::teardown_default(&paths, None))
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

    /// Each user-defined network goes when no service of the manifest and no replica is on it
    /// (its bridge, NAT table and record), as the default bridge does.
    fn teardown_networks_if_unused(&mut self, m: &Manifest) {
        if !self.networks_maybe_up || self.bridge_disabled {
            return;
        }
        let recorded = network::recorded_networks(&self.paths);
        let mut any_left = false;
        for (key, bridge) in recorded {
            let wanted = m.services.values().any(|s| on_network(s, &key) && s.replicas > 0);
            let left = self.replicas.values().any(|r| on_network(&r.rec.spec, &key));
            if wanted || left {
                any_left = true;
                continue;
            }
            let Ok(setup) = self.setup_lock.clone().try_lock_owned() else {
                any_left = true;
                continue;
            };
            if let Some(net) = self.user_nets.remove(&key) {
                net.retire();
            }
            let paths = self.paths.clone();
            tokio::spawn(async move {
                let _setup = setup;
                let res = tokio::task::spawn_blocking(move || network::teardown_network(&paths, &bridge, None))
                    .await
                    .map_err(|e| anyhow!("{e}"))
                    .and_then(|r| r);
                match res {
                    Ok(Some(bridge)) => log(&format!(
                        "no service left on network `{key}`: removed its bridge {bridge} and its NAT rules"
                    )),
                    Ok(None) => {}
                    Err(e) => log(&format!("removing network `{key}`: {e:#}")),
                }
            });
        }
        self.networks_maybe_up = any_left;
    }

    /// The networks of bridged `svc` under manifest `m`, in order, each opened on first use
    /// (a changed declaration opens the new one: replicas connected to the old bridge keep it
    /// until replaced), with the aliases of `m`'s services set on each.
    pub(super) fn networks_of(&mut self, m: &Manifest, svc: &Service) -> Result<Vec<(Arc<BridgeNet>, ServiceNetwork)>> {
        let mut out = Vec::new();
        for sn in service_networks(svc) {
            let net = if sn.name == DEFAULT_NETWORK {
                self.bridge_net(m)?
            } else {
                let decl = m
                    .networks
                    .get(&sn.name)
                    .ok_or_else(|| anyhow!("network `{}` is not declared in the manifest", sn.name))?;
                let default = m.network.resolve(&self.network_defaults);
                match self.user_nets.get(&sn.name).filter(|n| n.is_network(&sn.name, decl, &default)) {
                    Some(n) => n.clone(),
                    None => {
                        let avoid: Vec<Subnet> = m
                            .networks
                            .iter()
                            .filter(|(k, _)| **k != sn.name)
                            .filter_map(|(_, d)| d.subnet.as_deref()?.parse().ok())
                            .collect();
                        let n = BridgeNet::open_network(
                            &self.paths,
                            &sn.name,
                            decl,
                            &default,
                            &avoid,
                            self.setup_lock.clone(),
                        )
                        .with_context(|| format!("network `{}`", sn.name))?;
                        let n = Arc::new(n);
                        self.user_nets.insert(sn.name.clone(), n.clone());
                        self.networks_maybe_up = true;
                        n
                    }
                }
            };
            let mut aliases: BTreeMap<String, Vec<String>> = BTreeMap::new();
            for s in m.services.values() {
                if let Some(on) = s.networks.iter().find(|n| n.name == sn.name) {
                    if !on.aliases.is_empty() {
                        aliases.insert(s.name.clone(), on.aliases.clone());
                    }
                }
            }
            net.set_aliases(aliases);
            out.push((net, sn));
        }
        Ok(out)
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
        let list: Vec<(String, Service, Vec<Arc<BridgeNet>>)> = self
            .replicas
            .values()
            .filter(|r| r.rec.spec.network_mode == NetworkMode::Bridge)
            .filter(|r| matches!(r.phase, Phase::Running | Phase::Starting))
            .filter_map(|r| {
                let nets = service_networks(&r.rec.spec)
                    .iter()
                    .map(|sn| match sn.name.as_str() {
                        DEFAULT_NETWORK => self.net.clone(),
                        key => self.user_nets.get(key).cloned(),
                    })
                    .collect::<Option<Vec<_>>>()?;
                Some((r.rec.id.clone(), r.rec.spec.clone(), nets))
            })
            .collect();
        if list.is_empty() {
            return;
        }
        let paths = self.paths.clone();
        tokio::task::spawn_blocking(move || network::refresh_hosts(&paths, &list));
    }
}
