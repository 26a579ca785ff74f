//! Container networking groundwork (issue 5): address allocation on the bridge subnet
//! ([`ipam`]) and outbound NAT + forwarding through nftables ([`nft`]).
//!
//! Not wired into the agent yet: the daemon will call these when it sets up a bridged replica.

pub mod ipam;
pub mod nft;
