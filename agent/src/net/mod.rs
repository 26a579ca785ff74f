//! Container networking groundwork (issue 5), not wired into the agent yet: address
//! allocation on the bridge subnet ([`ipam`]), outbound NAT + forwarding through nftables
//! ([`nft`]), the bridge and each container's veth via netlink ([`link`]), and the
//! container's /etc/hosts and /etc/resolv.conf ([`files`]), and the L4 proxy of published ports ([`proxy`]). The daemon will call these when it
//! sets up a bridged replica.

pub mod files;
pub mod ipam;
pub mod link;
pub mod nft;
pub mod proxy;
