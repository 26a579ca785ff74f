//! skiff: the agent (reconcile loop, supervision, health, logs, status endpoint) and CLI.
//!
//! Not built yet: see issue 4. Only the binary's entry point exists so far.
