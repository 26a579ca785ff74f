//! The read-only HTTP status endpoint (placeholder until the real one lands).

use std::future::Future;

use tokio::sync::watch;

use super::status::Snapshot;

pub async fn serve(_listener: tokio::net::TcpListener, _snapshots: watch::Receiver<Snapshot>, shutdown: impl Future) {
    shutdown.await;
}
