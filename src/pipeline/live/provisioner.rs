//! The live provisioning stage: the provisioning token's PVE client with writes, the NetBox
//! client, and the inventory read again for the guests it created or destroyed.

use std::collections::BTreeSet;

use futures::future::BoxFuture;

use super::{CountedNetBox, CountedPve, netbox_client, pve_client, read_options, sync_settings};
use crate::config::ResolvedCluster;
use crate::inventory::{GuestKind, Inventory};
use crate::net::guard::EndpointGuard;
use crate::netbox::client::NetBoxMetrics;
use crate::pipeline::{CallCounter, Provisioner};
use crate::provision::observe::Fingerprint;
use crate::provision::plan::required_privileges;
use crate::provision::settings::ProvisionSettings;
use crate::provision::{ProvisionOutcome, Target, not_run, observe, provision};
use crate::pve::client::PveApi;
use crate::pve::metrics::PveMetrics;
use crate::pve::permissions::missing_on;
use crate::pve::refresh::refresh_guests;
use crate::pve::resources::GuestSummary;

/// Provisions over the PVE and NetBox APIs.
#[derive(Clone, Debug, Default)]
pub struct LiveProvisioner {
    /// What the PVE endpoints and the NetBox URL may reach (`--allow-endpoint-cidr`).
    pub endpoint_guard: EndpointGuard,
    /// Where the PVE requests and tasks are timed; `None` records nothing.
    pub pve: Option<PveMetrics>,
    /// Where the NetBox requests are timed; `None` records nothing.
    pub netbox: Option<NetBoxMetrics>,
}

/// The privileges provisioning needs that the credentials of `pve` lack, named, or `None`
/// when they hold them all (or the preflight could not be read: the calls themselves then
/// say what is missing, VM by VM).
async fn missing_privileges(
    pve: &dyn PveApi,
    settings: &ProvisionSettings,
    inventory: &Inventory,
    mark: &str,
) -> Option<String> {
    let permissions = pve.get("/access/permissions").await.ok()?;
    let required = required_privileges(settings, &observe::cluster_view(inventory, mark));
    let pairs: Vec<(&str, &str)> = required.iter().map(|(p, x)| (p.as_str(), *x)).collect();
    let missing = missing_on(&permissions, &pairs);
    if missing.is_empty() {
        return None;
    }
    let named: Vec<String> = missing.iter().take(10).map(ToString::to_string).collect();
    Some(named.join(", "))
}

impl Provisioner for LiveProvisioner {
    fn fingerprint<'a>(
        &'a self,
        config: &'a ResolvedCluster,
        inventory: &'a Inventory,
        last: &'a Fingerprint,
        calls: &'a CallCounter,
    ) -> BoxFuture<'a, Option<Fingerprint>> {
        Box::pin(async move {
            let sync = sync_settings(config, inventory);
            let netbox =
                netbox_client(&config.netbox, &self.endpoint_guard, self.netbox.as_ref()).ok()?;
            let netbox = CountedNetBox {
                inner: &netbox,
                calls,
            };
            let follow = config
                .provisioning
                .as_ref()
                .is_some_and(|p| p.settings.follow_resources);
            observe::fingerprint(
                &netbox,
                last.cluster,
                &sync.cluster_name,
                &sync.owner,
                follow,
            )
            .await
            .ok()
        })
    }

    fn provision<'a>(
        &'a self,
        config: &'a ResolvedCluster,
        inventory: &'a Inventory,
        dry_run: bool,
        calls: &'a CallCounter,
    ) -> BoxFuture<'a, (ProvisionOutcome, Option<Inventory>)> {
        Box::pin(async move {
            let sync = sync_settings(config, inventory);
            let Some(resolved) = &config.provisioning else {
                return (ProvisionOutcome::default(), None);
            };
            let mut settings = resolved.settings.clone();
            settings.dry_run |= dry_run;
            let credentials = resolved
                .credentials
                .as_ref()
                .unwrap_or(&config.pve_credentials);
            let pve = match pve_client(config, credentials, &self.endpoint_guard, self.pve.as_ref())
            {
                Ok(c) => c,
                Err(e) => {
                    let why = format!("provisioning did not run: {e}");
                    return (not_run(settings.dry_run, why, inventory, &sync.owner), None);
                }
            };
            let netbox =
                match netbox_client(&config.netbox, &self.endpoint_guard, self.netbox.as_ref()) {
                    Ok(c) => c,
                    Err(e) => {
                        let why = format!("provisioning did not run: {e}");
                        return (not_run(settings.dry_run, why, inventory, &sync.owner), None);
                    }
                };
            let pve = CountedPve { inner: &pve, calls };
            let netbox = CountedNetBox {
                inner: &netbox,
                calls,
            };
            let tasks = self
                .pve
                .as_ref()
                .map(|m| m.task_recorder(&config.netbox.owner.resource()))
                .unwrap_or_default();
            if let Some(missing) = missing_privileges(&pve, &settings, inventory, &sync.owner).await
            {
                let why = format!(
                    "provisioning did not run: the {} lack {} (docs/provisioning.md)",
                    if resolved.credentials.is_some() {
                        "credentials of spec.provisioning.credentialsSecretRef"
                    } else {
                        "PVE credentials of spec.proxmox.credentialsSecretRef"
                    },
                    missing
                );
                return (not_run(settings.dry_run, why, inventory, &sync.owner), None);
            }
            let target = Target {
                pve: &pve,
                netbox: &netbox,
                tasks: &tasks,
                mark: &sync.owner,
                cluster_name: &sync.cluster_name,
            };
            let outcome = provision(&target, &settings, inventory).await;
            if outcome.created.is_empty() && outcome.destroyed.is_empty() {
                return (outcome, None);
            }
            // The sync of this pass documents what was created and forgets what was
            // destroyed, with the guests read again as the reader reads them.
            let created: Vec<GuestSummary> = outcome
                .created
                .iter()
                .map(|g| GuestSummary {
                    vmid: g.vmid,
                    kind: GuestKind::Qemu,
                    node: g.node.clone(),
                    name: g.name.clone(),
                    status: if g.running { "running" } else { "stopped" }.into(),
                    template: false,
                    tags: String::new(),
                    pool: settings.pool.clone().unwrap_or_default(),
                    max_memory: 0,
                    max_cpu: 0,
                    max_disk: 0,
                })
                .collect();
            let gone: BTreeSet<u32> = outcome.destroyed.iter().copied().collect();
            let refreshed =
                refresh_guests(&pve, inventory, &created, &gone, &read_options(config)).await;
            (outcome, Some(refreshed))
        })
    }
}
