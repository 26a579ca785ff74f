//! Networking of bridged containers (issue 5). See each module.

pub mod files;
pub mod link;
