//! Images: a service's image from the store, or a pull (on demand, in the background, retried
//! with back-off while offline).

use std::sync::Arc;
use std::time::Instant;

use anyhow::{Context, Result};
use skiff_images::{Client, ClientOptions, ImageRecord, PullOptions, Reference};

use super::{log, Agent, Event, PullState};
use crate::manifest::{PullPolicy, Service};

impl Agent {
    /// The image of a service when the store has it; else starts (or keeps waiting for) a pull.
    /// `Err`: it cannot be had (bad reference, pull_policy never and absent).
    pub(super) fn image_for(&mut self, svc: &Service) -> Result<Option<ImageRecord>, String> {
        let reference = Reference::parse(&svc.image).map_err(|e| format!("image {:?}: {e}", svc.image))?;
        let key = reference.to_string();
        let present = self.store.image(&key).map_err(|e| format!("reading the image store: {e}"))?;
        if let Some(img) = present {
            // `always` is checked before each start ([`checks`]); what is present runs
            // meanwhile (a service whose image is present never waits for the network).
            return Ok(Some(img));
        }
        if svc.pull_policy == PullPolicy::Never {
            return Err(format!(
                "image {key} is not in the store and pull_policy is never: `skiff load` or `skiff pull` it"
            ));
        }
        self.pull(reference);
        Ok(None)
    }

    /// The registry client (made on first use).
    pub(super) fn registry_client(&mut self) -> Result<Arc<Client>> {
        if let Some(c) = &self.client {
            return Ok(c.clone());
        }
        let c = client()?;
        self.client = Some(c.clone());
        Ok(c)
    }

    pub(super) fn pull(&mut self, reference: Reference) {
        let key = reference.to_string();
        let now = Instant::now();
        let p = self.pulls.entry(key.clone()).or_insert(PullState {
            in_flight: false,
            next_try: now,
            failures: 0,
            error: None,
        });
        if p.in_flight || p.next_try > now {
            return;
        }
        p.in_flight = true;
        let first = p.failures == 0;
        let client = match self.registry_client() {
            Ok(c) => c,
            Err(e) => {
                let _ = self.tx.send(Event::Pulled { reference: key, result: Err(format!("{e:#}")) });
                return;
            }
        };
        // Before the build date TLS fails with "certificate not yet valid": wait for the
        // clock (retried with the back-off; the one reason is logged once).
        let clock = crate::hostcheck::clock::registry_must_wait(
            crate::hostcheck::clock::now_epoch(),
            crate::hostcheck::clock::BUILD_EPOCH,
            client.allows_http(reference.api_host()),
        );
        if let Some(b) = clock {
            let _ = self.tx.send(Event::Pulled { reference: key, result: Err(b.waiting()) });
            return;
        }
        if first {
            // Retries are told by the failure lines (deduplicated), not one line each.
            log(&format!("pulling {key}"));
        }
        let (store, tx) = (self.store.clone(), self.tx.clone());
        tokio::spawn(async move {
            let opts = PullOptions::default();
            let res = skiff_images::pull(&store, client, &reference, &opts, Arc::new(skiff_images::pull::NoProgress))
                .await
                .map(|p| p.record)
                .map_err(|e| format!("{e}"));
            let _ = tx.send(Event::Pulled { reference: key, result: res });
        });
    }
}

fn client() -> Result<Arc<Client>> {
    let auth = skiff_images::auth::AuthConfig::load_default()?;
    let insecure = std::env::var("SKIFF_INSECURE_REGISTRIES")
        .map(|v| v.split(',').map(|s| s.trim().to_string()).filter(|s| !s.is_empty()).collect())
        .unwrap_or_default();
    Ok(Arc::new(
        Client::new(ClientOptions { auth, insecure_registries: insecure, ..Default::default() })
            .context("setting up the registry client")?,
    ))
}
