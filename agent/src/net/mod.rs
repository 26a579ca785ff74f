//! Container networking (issue 5): address
//! allocation on the bridge subnet ([`ipam`]), outbound NAT + forwarding through nftables
//! ([`nft`]), the bridge and each container's veth via netlink ([`link`]), and the
//! container's /etc/hosts and /etc/resolv.conf ([`files`]), and the L4 proxy of published ports ([`proxy`]). `daemon::network` calls all but the
//! proxy for bridged replicas (published ports are not wired yet).

pub mod files;
pub mod ipam;
pub mod link;
pub mod nft;
pub mod proxy;
