//! Supervision of replicas: what to do when a container exits.
//!
//! [`restart`] holds the pure restart-policy and back-off logic; the supervisor feeds it events
//! and acts on its [`restart::Decision`]s.

pub mod restart;
