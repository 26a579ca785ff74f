//! The agent's control socket: imperative commands (`skiff scale`, `skiff rollback`,
//! `skiff rollout resume`, `skiff update`) reach the reconcile loop here. The HTTP endpoint
//! stays read-only; this socket is `<run>/control.sock`, which only root can open.
//!
//! One request per connection: one line of JSON ([`Request`]), one line of JSON back
//! ([`Reply`]).

use serde::{Deserialize, Serialize};

/// A command for the agent.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "command", rename_all = "snake_case")]
pub enum Request {
    /// `skiff scale SERVICE=N...`: replicas of each service, over the manifest's, until the
    /// manifest changes that service's replicas.
    Scale { services: Vec<(String, u32)> },
    /// `skiff rollback SERVICE [--to N]`: run revision N (default: the one before the one in
    /// force) until the manifest changes that service.
    Rollback { service: String, to: Option<u32> },
    /// `skiff rollout resume SERVICE`: a paused update goes on.
    Resume { service: String },
    /// `skiff update [SERVICE...]`: check the registry for new digests now (all services when
    /// empty).
    Update { services: Vec<String> },
}

/// The agent's answer: `ok` false with what to do in `message`, or what was done.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Reply {
    pub ok: bool,
    pub message: String,
}

impl Reply {
    pub fn ok(message: impl Into<String>) -> Reply {
        Reply { ok: true, message: message.into() }
    }
    pub fn err(message: impl Into<String>) -> Reply {
        Reply { ok: false, message: message.into() }
    }
}
