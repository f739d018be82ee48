//! CRI confirmation: containers containerd reports in CRI's namespace wait
//! for CRI's word (their kind and Pod) before their verdict is final.
use std::time::Duration;

use tracing::{debug, warn};

use super::*;

/// How often a finding may ask CRI about a container it does not list.
pub(super) const CRI_ASK_INTERVAL: Duration = Duration::from_secs(1);

impl<K: KernelMaps> Controller<K> {
    /// Asks CRI about one container (by its exact id); what CRI says is
    /// upserted (its identity replaces what the runtime's report lacks).
    /// Returns whether CRI knows the container.
    pub(super) async fn confirm_with_cri(&mut self, id: &str, what: &str) -> bool {
        let looked = match &self.cri {
            Some(c) => c.lookup(Some(CRI_NAMESPACE), id).await,
            None => return false,
        };
        match looked {
            Ok(Some(mut cri)) => {
                cri.namespace = Some(CRI_NAMESPACE.to_string());
                debug!(container = %id, "CRI confirmed {what}");
                self.upsert(cri);
                true
            }
            Ok(None) => false,
            Err(e) => {
                warn!(container = %id, "CRI lookup of {what}: {e}");
                false
            }
        }
    }

    /// Containers waiting for CRI's word (`only` that one key): asks CRI
    /// about each (one unary call each; such containers are rare: in
    /// `k8s.io`, not listed by CRI yet, of an image the policy does not
    /// allow). Confirmed ones are judged with CRI's identity; those CRI
    /// still does not know after `hold_timeout` (or at once when `force`)
    /// are judged by their image.
    pub(super) async fn settle_pending(&mut self, only: Option<&str>, force: bool) {
        let keys: Vec<(String, String, bool)> = self
            .entries
            .iter()
            .filter(|(k, _)| only.is_none_or(|o| o == k.as_str()))
            .filter_map(|(k, e)| {
                let since = e.pending_since?;
                let expired = force || since.elapsed() >= self.cfg.hold_timeout;
                Some((k.clone(), e.info.id.clone(), expired))
            })
            .collect();
        if keys.is_empty() {
            return;
        }
        self.refresh_sandbox_images(false).await;
        for (key, id, expired) in keys {
            if let Some(info) = self.entries.get(&key).map(|e| e.info.clone()) {
                if self.is_node_sandbox_image(&info) {
                    self.upsert(info);
                    continue;
                }
            }
            if self.confirm_with_cri(&id, "a pending container").await {
                continue;
            }
            if expired {
                let Some(e) = self.entries.get_mut(&key) else {
                    continue;
                };
                e.unconfirmed_final = true;
                let info = e.info.clone();
                let (d, drift, _) = self.judge_info(&info, true);
                if let Some(e) = self.entries.get_mut(&key) {
                    e.decision = d;
                    e.drift = drift;
                    e.pending_since = None;
                }
                self.apply(&key);
            }
        }
    }
}
