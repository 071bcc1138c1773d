//! The live stages: the PVE API over HTTPS, SSH to the nodes, the NetBox REST API.

mod provisioner;

pub use provisioner::LiveProvisioner;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use chrono::{DateTime, Utc};
use futures::future::BoxFuture;

use serde_json::Value;

use super::write_settle::{WriteSettle, settle_window};
use super::{CallCounter, NetBoxResult, NetBoxWriter, ProxmoxRead, ProxmoxReader, SharedPve};
use crate::conditions::{PermissionWarning, reasons};
use crate::config::{PveCredentials, ResolvedCluster, ResolvedNetBox};
use crate::hardware::facts::NodeHardware;
use crate::inventory::{Inventory, ReadFailure, ReadOutcome, ReadScope};
use crate::net::guard::EndpointGuard;
use crate::netbox::client::{
    NetBoxApi, NetBoxClient, NetBoxConnection, NetBoxError, NetBoxMetrics, NetBoxVersion,
};
use crate::netbox::engine::{SyncSettings, delete_owned, sync};
use crate::netbox::settings::GuestOverrides;
use crate::pve::client::{PveApi, PveAuth, PveClient, PveConnection, PveError};
use crate::pve::metrics::PveMetrics;
use crate::pve::permissions;
use crate::pve::reader::{ReadOptions, read_inventory};
use crate::pve::resources::read_resources;
use crate::pve::write::PveWriteApi;
use crate::stage_errors::{NetBoxSyncError, ProxmoxReadError};
use crate::status::{CALL_SUCCESS, systems};
use crate::watch::{self, PollOutcome, WatchMemory};

/// A PVE API that records each request's outcome (one per request as the reader sees
/// it, after retries and failover): `success` or [`PveError::metric_label`].
/// Once the stage's transport budget is spent it answers every request with
/// [`PveError::TransportLimit`] without making it.
pub struct CountedPve<'a, A: ?Sized> {
    /// The API.
    pub inner: &'a A,
    /// Where the outcomes go; holds the stage's transport budget.
    pub calls: &'a CallCounter,
}

impl<A: ?Sized> CountedPve<'_, A> {
    /// Makes one request (unless the budget is spent: then it is not even started) and
    /// records its outcome.
    async fn counted<'a>(
        &'a self,
        request: impl FnOnce() -> BoxFuture<'a, Result<Value, PveError>>,
    ) -> Result<Value, PveError> {
        let budget = &self.calls.proxmox_budget;
        let r = if budget.exhausted() {
            Err(PveError::TransportLimit {
                limit: budget.limit(),
            })
        } else {
            request().await
        };
        if r.as_ref().is_err_and(PveError::is_transport) {
            budget.spend();
        }
        let outcome = match &r {
            Ok(_) => CALL_SUCCESS,
            Err(e) => e.metric_label(),
        };
        self.calls.record(systems::PROXMOX, outcome, 1);
        r
    }
}

impl<A: PveApi + ?Sized> PveApi for CountedPve<'_, A> {
    fn get<'a>(&'a self, path: &'a str) -> BoxFuture<'a, Result<Value, PveError>> {
        Box::pin(self.counted(|| self.inner.get(path)))
    }
}

impl<A: PveWriteApi + ?Sized> PveWriteApi for CountedPve<'_, A> {
    fn post<'a>(
        &'a self,
        path: &'a str,
        form: &'a [(String, String)],
    ) -> BoxFuture<'a, Result<Value, PveError>> {
        Box::pin(self.counted(|| self.inner.post(path, form)))
    }

    fn put<'a>(
        &'a self,
        path: &'a str,
        form: &'a [(String, String)],
    ) -> BoxFuture<'a, Result<Value, PveError>> {
        Box::pin(self.counted(|| self.inner.put(path, form)))
    }

    fn delete<'a>(
        &'a self,
        path: &'a str,
        query: &'a [(String, String)],
    ) -> BoxFuture<'a, Result<Value, PveError>> {
        Box::pin(self.counted(|| self.inner.delete(path, query)))
    }
}

/// A NetBox API that records each operation's outcome (a paginated list or a retried
/// request counts once): `success` or [`NetBoxError::metric_label`]. HTTP-level request
/// counts stay those of the inner client. Once the stage's transport budget is spent it
/// answers every operation with [`NetBoxError::TransportLimit`] without making it.
pub struct CountedNetBox<'a, A: ?Sized> {
    /// The API.
    pub inner: &'a A,
    /// Where the outcomes go; holds the stage's transport budget.
    pub calls: &'a CallCounter,
}

impl<A: ?Sized> CountedNetBox<'_, A> {
    fn check(&self) -> Result<(), NetBoxError> {
        let budget = &self.calls.netbox_budget;
        if budget.exhausted() {
            let err = NetBoxError::TransportLimit {
                limit: budget.limit(),
            };
            self.calls.record(systems::NETBOX, err.metric_label(), 1);
            return Err(err);
        }
        Ok(())
    }

    fn record<T>(&self, r: &Result<T, NetBoxError>) {
        if r.as_ref().is_err_and(NetBoxError::is_transport) {
            self.calls.netbox_budget.spend();
        }
        let outcome = match r {
            Ok(_) => CALL_SUCCESS,
            Err(e) => e.metric_label(),
        };
        self.calls.record(systems::NETBOX, outcome, 1);
    }
}

impl<A: NetBoxApi + ?Sized> NetBoxApi for CountedNetBox<'_, A> {
    fn list<'a>(
        &'a self,
        endpoint: &'a str,
        query: &'a [(String, String)],
    ) -> BoxFuture<'a, Result<Vec<Value>, NetBoxError>> {
        Box::pin(async move {
            self.check()?;
            let r = self.inner.list(endpoint, query).await;
            self.record(&r);
            r
        })
    }

    fn create<'a>(
        &'a self,
        endpoint: &'a str,
        objects: Vec<Value>,
    ) -> BoxFuture<'a, Result<Vec<Value>, NetBoxError>> {
        Box::pin(async move {
            self.check()?;
            let r = self.inner.create(endpoint, objects).await;
            self.record(&r);
            r
        })
    }

    fn update<'a>(
        &'a self,
        endpoint: &'a str,
        patches: Vec<Value>,
    ) -> BoxFuture<'a, Result<Vec<Value>, NetBoxError>> {
        Box::pin(async move {
            self.check()?;
            let r = self.inner.update(endpoint, patches).await;
            self.record(&r);
            r
        })
    }

    fn delete<'a>(
        &'a self,
        endpoint: &'a str,
        ids: Vec<u64>,
    ) -> BoxFuture<'a, Result<(), NetBoxError>> {
        Box::pin(async move {
            self.check()?;
            let r = self.inner.delete(endpoint, ids).await;
            self.record(&r);
            r
        })
    }

    fn request_counts(&self) -> (u64, u64) {
        self.inner.request_counts()
    }

    fn version(&self) -> BoxFuture<'_, Result<Option<NetBoxVersion>, NetBoxError>> {
        Box::pin(async move {
            self.check()?;
            let r = self.inner.version().await;
            self.record(&r);
            r
        })
    }
}

/// Reads Proxmox VE over its HTTPS API.
#[derive(Clone, Debug, Default)]
pub struct LiveReader {
    /// What the PVE endpoints may reach (`--allow-endpoint-cidr`).
    pub endpoint_guard: EndpointGuard,
    /// Where the PVE requests are timed; `None` records nothing.
    pub metrics: Option<PveMetrics>,
}

impl LiveReader {
    /// The PVE client of a cluster's resolved settings.
    fn client(&self, config: &ResolvedCluster) -> Result<PveClient, PveError> {
        pve_client(
            config,
            &config.pve_credentials,
            &self.endpoint_guard,
            self.metrics.as_ref(),
        )
    }
}

/// A PVE client of a cluster's resolved settings with `credentials`.
fn pve_client(
    config: &ResolvedCluster,
    credentials: &PveCredentials,
    endpoint_guard: &EndpointGuard,
    metrics: Option<&PveMetrics>,
) -> Result<PveClient, PveError> {
    let auth = match credentials {
        PveCredentials::Token { token_id, secret } => PveAuth::Token {
            token_id: token_id.clone(),
            secret: secret.clone(),
        },
        PveCredentials::Ticket { username, password } => PveAuth::Ticket {
            username: username.clone(),
            password: password.clone(),
        },
    };
    let client = PveClient::new(PveConnection {
        endpoints: config.pve_endpoints.clone(),
        auth,
        tls: config.pve_tls.clone(),
        timeout: config.pve_timeout,
        max_concurrency: config.pve_concurrency,
        retries: 2,
        endpoint_guard: endpoint_guard.clone(),
    })?;
    Ok(match metrics {
        Some(m) => client.with_recorder(m.recorder(&config.netbox.owner.resource())),
        None => client,
    })
}

/// What the inventory read of a cluster reads besides the essentials.
fn read_options(config: &ResolvedCluster) -> ReadOptions {
    ReadOptions {
        guest_agent: config.pve_read_guest_agent,
        ceph: config.pve_read_ceph,
        concurrency: config.pve_concurrency,
    }
}

impl ProxmoxReader for LiveReader {
    fn poll<'a>(
        &'a self,
        config: &'a ResolvedCluster,
        memory: &'a WatchMemory,
        client: Option<&'a dyn PveApi>,
        calls: &'a CallCounter,
    ) -> BoxFuture<'a, PollOutcome> {
        Box::pin(async move {
            let opts = read_options(config);
            if let Some(client) = client {
                let client = CountedPve {
                    inner: client,
                    calls,
                };
                return watch::poll(&client, memory, &opts).await;
            }
            let client = match self.client(config) {
                Ok(c) => c,
                Err(e) => return PollOutcome::Failed(e.into()),
            };
            let client = CountedPve {
                inner: &client,
                calls,
            };
            watch::poll(&client, memory, &opts).await
        })
    }

    fn read<'a>(
        &'a self,
        config: &'a ResolvedCluster,
        calls: &'a CallCounter,
    ) -> BoxFuture<'a, Result<ProxmoxRead, ProxmoxReadError>> {
        Box::pin(async move {
            let shared: Arc<PveClient> =
                Arc::new(self.client(config).map_err(ProxmoxReadError::Api)?);
            let client = CountedPve {
                inner: shared.as_ref(),
                calls,
            };
            let opts = read_options(config);
            // First: a change made while the rest is read is found by the next poll. With
            // polls off (`watchInterval: 0s`) nothing would compare with it.
            let resources = match config.watch_interval {
                None => None,
                Some(_) => match read_resources(&client).await {
                    Ok(r) => Some(r),
                    Err(e) => {
                        tracing::warn!(error = %e, "cluster resources not read: the next pass is a full one again");
                        None
                    }
                },
            };
            let mut inventory = read_inventory(&client, &opts)
                .await
                .map_err(ProxmoxReadError::Api)?;
            let permission_warning = match client.get("/access/permissions").await {
                Ok(p) => {
                    // Provisioning with the read's own token: its privileges are wanted.
                    let report = match &config.provisioning {
                        Some(prov) if prov.credentials.is_none() => {
                            let allowed: Vec<&str> = permissions::PROVISIONING_PRIVILEGES
                                .iter()
                                .chain(permissions::PROVISIONING_EXTRA_PRIVILEGES)
                                .copied()
                                .collect();
                            permissions::evaluate_allowing(&p, &allowed)
                        }
                        _ => permissions::evaluate(&p),
                    };
                    // Only a clean preflight lets pruning read an absence as "deleted".
                    let outcome = if report.is_clean() {
                        ReadOutcome::Complete
                    } else {
                        ReadOutcome::NotApplicable {
                            reason: ReadFailure::Forbidden,
                            message: format!(
                                "the token cannot see everything (missing on /: {:?}; restricted: {:?}): pruning is off",
                                report.missing, report.restricted
                            ),
                        }
                    };
                    inventory
                        .completeness
                        .record(ReadScope::Permissions, outcome);
                    if !report.restricted.is_empty() {
                        Some(PermissionWarning {
                            reason: reasons::MISSING_PRIVILEGES,
                            message: format!(
                                "ACLs hide part of the cluster from the PVE token ({}): guests and nodes there are left out, and nothing is pruned (see docs/proxmox-setup.md)",
                                report.restricted.join(", ")
                            ),
                        })
                    } else if !report.missing.is_empty() {
                        Some(PermissionWarning {
                            reason: reasons::MISSING_PRIVILEGES,
                            message: format!(
                                "the PVE token lacks {} on / (see docs/proxmox-setup.md)",
                                report.missing.join(", ")
                            ),
                        })
                    } else if !report.excess_write.is_empty() {
                        Some(PermissionWarning {
                            reason: reasons::EXCESS_PRIVILEGES,
                            message: format!(
                                "the PVE token holds write privileges an inventory reader does not need: {}",
                                report.excess_write.join(", ")
                            ),
                        })
                    } else {
                        None
                    }
                }
                Err(e) => {
                    inventory.completeness.record(
                        ReadScope::Permissions,
                        ReadOutcome::NotApplicable {
                            reason: e.read_failure(),
                            message: format!("permission preflight skipped: {e}"),
                        },
                    );
                    None
                }
            };
            if calls.proxmox_budget.exhausted() {
                return Err(ProxmoxReadError::Api(PveError::TransportLimit {
                    limit: calls.proxmox_budget.limit(),
                }));
            }
            Ok(ProxmoxRead {
                inventory,
                permission_warning,
                resources,
                client: Some(SharedPve(shared)),
            })
        })
    }
}

/// Writes to NetBox over its REST API.
#[derive(Clone, Debug, Default)]
pub struct LiveWriter {
    /// What the NetBox URL may reach (`--allow-endpoint-cidr`).
    pub endpoint_guard: EndpointGuard,
    /// Writes of earlier syncs NetBox may still be executing, per owner.
    pub settle: Arc<WriteSettle>,
    /// Where the NetBox requests are timed; `None` records nothing.
    pub metrics: Option<NetBoxMetrics>,
}

/// The engine settings of a cluster: its resolved settings, completed by the inventory
/// (the owner mark, the NetBox cluster name).
pub fn sync_settings(config: &ResolvedCluster, inventory: &Inventory) -> SyncSettings {
    let options = &config.sync;
    let owner = &config.netbox.owner;
    SyncSettings {
        owner: owner.mark(
            &inventory
                .pve_identity()
                .unwrap_or_else(|| "unknown".to_string()),
        ),
        adopt_previous: options.adopt_previous_owner.then(|| owner.clone()),
        site: options.site.clone(),
        tenant: options.tenant.clone(),
        vrf: options.vrf.clone(),
        cluster_name: options
            .cluster_name
            .clone()
            .or_else(|| inventory.cluster.name.clone())
            .unwrap_or_else(|| options.resource_name.clone()),
        cluster_group: options.cluster_group.clone(),
        cluster_type: options.cluster_type.clone(),
        device_role: options.device_role.clone(),
        role_qemu: options.role_qemu.clone(),
        role_lxc: options.role_lxc.clone(),
        role_template: options.role_template.clone(),
        extra_tags: options.extra_tags.clone(),
        sync_templates: options.sync_templates,
        nodes: options.nodes,
        node_interfaces: options.node_interfaces,
        virtual_machines: options.virtual_machines,
        vm_interfaces: options.vm_interfaces,
        virtual_disks: options.virtual_disks,
        ip_addresses: options.ip_addresses,
        adopt_existing: options.adopt_existing,
        description_from_notes: options.description_from_notes,
        create_missing_vlans: options.create_missing_vlans,
        prune: options.prune,
        hardware_discovery: config.hardware_discovery,
        grace_period: config.prune_grace_period,
        prune_max_percent: options.prune_max_percent,
        batch_size: 50,
        scope: None,
        guests: Default::default(),
        max_in_flight: config.netbox.max_in_flight,
    }
}

fn netbox_client(
    config: &ResolvedNetBox,
    endpoint_guard: &EndpointGuard,
    metrics: Option<&NetBoxMetrics>,
) -> Result<NetBoxClient, NetBoxSyncError> {
    let client = NetBoxClient::new(NetBoxConnection {
        url: config.url.clone(),
        token: config.token.clone(),
        tls: config.tls.clone(),
        timeout: config.timeout,
        max_in_flight: config.max_in_flight,
        retries: 3,
        allow_insecure_http: config.allow_insecure_http,
        endpoint_guard: endpoint_guard.clone(),
    })
    .map_err(NetBoxSyncError::Api)?;
    Ok(match metrics {
        Some(m) => client.with_recorder(m.recorder(&config.owner.resource())),
        None => client,
    })
}

impl NetBoxWriter for LiveWriter {
    fn sync<'a>(
        &'a self,
        config: &'a ResolvedCluster,
        inventory: &'a Inventory,
        hardware: &'a BTreeMap<String, NodeHardware>,
        scope: Option<&'a BTreeSet<u32>>,
        guests: &'a GuestOverrides,
        dry_run: bool,
        now: DateTime<Utc>,
        calls: &'a CallCounter,
    ) -> BoxFuture<'a, Result<NetBoxResult, NetBoxSyncError>> {
        Box::pin(async move {
            let client =
                netbox_client(&config.netbox, &self.endpoint_guard, self.metrics.as_ref())?;
            let client = CountedNetBox {
                inner: &client,
                calls,
            };
            let settings = SyncSettings {
                scope: scope.cloned(),
                guests: guests.clone(),
                ..sync_settings(config, inventory)
            };
            let window = settle_window(config.netbox.timeout);
            let guard = if dry_run {
                None
            } else {
                let interrupted = config.sync.netbox_sync_interrupted;
                if let Some(until) = self.settle.wait_until(&settings.owner, interrupted, window) {
                    tracing::info!(
                        owner = %settings.owner,
                        wait_seconds = until.saturating_duration_since(tokio::time::Instant::now()).as_secs(),
                        "an earlier sync may have left NetBox writes running: waiting for them to settle before reading"
                    );
                    tokio::time::sleep_until(until).await;
                }
                Some(self.settle.begin(&settings.owner, window))
            };
            let result = sync(&client, &settings, inventory, hardware, dry_run, now).await;
            let lost = match &result {
                Ok(report) => report.lost_creates > 0,
                Err(e) => e.is_transport(),
            };
            if let Some(guard) = guard {
                guard.finished(lost);
            }
            let report = result.map_err(NetBoxSyncError::Api)?;
            if calls.netbox_budget.exhausted() {
                return Err(NetBoxSyncError::Api(NetBoxError::TransportLimit {
                    limit: calls.netbox_budget.limit(),
                }));
            }
            Ok(NetBoxResult {
                summary: report.summary(),
                kinds: report.kinds.clone(),
                report,
            })
        })
    }

    fn delete_owned<'a>(
        &'a self,
        config: &'a ResolvedNetBox,
    ) -> BoxFuture<'a, Result<String, NetBoxSyncError>> {
        Box::pin(async move {
            let client = netbox_client(config, &self.endpoint_guard, self.metrics.as_ref())?;
            let n = delete_owned(&client, &config.owner)
                .await
                .map_err(NetBoxSyncError::Api)?;
            Ok(format!(
                "deleted {n} NetBox object(s) owned by {}",
                config.owner.resource()
            ))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::owner::OwnerScope;
    use crate::stage_errors::StageFailure;

    struct Answers;
    impl PveApi for Answers {
        fn get<'a>(&'a self, path: &'a str) -> BoxFuture<'a, Result<Value, PveError>> {
            Box::pin(async move {
                match path {
                    "/version" => Ok(serde_json::json!({"version": "9.1.3"})),
                    _ => Err(PveError::Timeout { path: path.into() }),
                }
            })
        }
    }

    impl NetBoxApi for Answers {
        fn list<'a>(
            &'a self,
            endpoint: &'a str,
            _query: &'a [(String, String)],
        ) -> BoxFuture<'a, Result<Vec<Value>, NetBoxError>> {
            Box::pin(async move {
                if endpoint == "dcim/devices" {
                    Ok(Vec::new())
                } else {
                    Err(NetBoxError::Auth {
                        endpoint: endpoint.into(),
                        status: 403,
                        message: "no permission".into(),
                    })
                }
            })
        }
        fn create<'a>(
            &'a self,
            endpoint: &'a str,
            _objects: Vec<Value>,
        ) -> BoxFuture<'a, Result<Vec<Value>, NetBoxError>> {
            Box::pin(async move {
                Err(NetBoxError::Invalid {
                    endpoint: endpoint.into(),
                    message: "name: too long".into(),
                })
            })
        }
        fn update<'a>(
            &'a self,
            _endpoint: &'a str,
            patches: Vec<Value>,
        ) -> BoxFuture<'a, Result<Vec<Value>, NetBoxError>> {
            Box::pin(async move { Ok(patches) })
        }
        fn delete<'a>(
            &'a self,
            _endpoint: &'a str,
            _ids: Vec<u64>,
        ) -> BoxFuture<'a, Result<(), NetBoxError>> {
            Box::pin(async { Ok(()) })
        }
        fn request_counts(&self) -> (u64, u64) {
            (7, 3)
        }
        fn version(&self) -> BoxFuture<'_, Result<Option<NetBoxVersion>, NetBoxError>> {
            Box::pin(async { Ok(None) })
        }
    }

    #[tokio::test]
    async fn counting_wrappers_record_each_call_by_outcome() {
        let calls = CallCounter::default();
        let pve = CountedPve {
            inner: &Answers,
            calls: &calls,
        };
        assert!(pve.get("/version").await.is_ok());
        assert!(pve.get("/version").await.is_ok());
        assert!(pve.get("/nodes").await.is_err());
        let nb = CountedNetBox {
            inner: &Answers,
            calls: &calls,
        };
        assert!(nb.list("dcim/devices", &[]).await.is_ok());
        assert!(nb.list("ipam/ip-addresses", &[]).await.is_err());
        assert!(nb.create("dcim/devices", vec![]).await.is_err());
        assert!(nb.update("dcim/devices", vec![]).await.is_ok());
        assert!(nb.delete("dcim/devices", vec![1]).await.is_ok());
        assert_eq!(
            nb.request_counts(),
            (7, 3),
            "HTTP counts come from the client"
        );
        let c = calls.snapshot();
        assert_eq!(c.get(systems::PROXMOX, CALL_SUCCESS), 2);
        assert_eq!(c.get(systems::PROXMOX, "Timeout"), 1);
        assert_eq!(c.get(systems::NETBOX, CALL_SUCCESS), 3);
        assert_eq!(c.get(systems::NETBOX, "NetBoxUnauthorized"), 1);
        assert_eq!(c.get(systems::NETBOX, "NetBoxRejected"), 1);
        assert_eq!(c.0.len(), 5);
    }

    /// Answers every request with no answer (PVE: a timeout; NetBox: a 503 from a
    /// gateway), counting the requests that reach it.
    #[derive(Default)]
    struct Unanswered(std::sync::atomic::AtomicU32);
    impl Unanswered {
        fn hit(&self) -> u32 {
            self.0.fetch_add(1, std::sync::atomic::Ordering::Relaxed) + 1
        }
        fn count(&self) -> u32 {
            self.0.load(std::sync::atomic::Ordering::Relaxed)
        }
    }
    impl PveApi for Unanswered {
        fn get<'a>(&'a self, path: &'a str) -> BoxFuture<'a, Result<Value, PveError>> {
            self.hit();
            Box::pin(async move {
                match path {
                    // An answer, but an error one: not a transport error.
                    "/version" => Err(PveError::Status {
                        path: path.into(),
                        status: 595,
                        message: "node offline".into(),
                    }),
                    _ => Err(PveError::Timeout { path: path.into() }),
                }
            })
        }
    }
    impl NetBoxApi for Unanswered {
        fn list<'a>(
            &'a self,
            endpoint: &'a str,
            _query: &'a [(String, String)],
        ) -> BoxFuture<'a, Result<Vec<Value>, NetBoxError>> {
            let n = self.hit();
            Box::pin(async move {
                Err(NetBoxError::Status {
                    endpoint: endpoint.into(),
                    status: if n == 1 { 500 } else { 503 },
                    message: "unavailable".into(),
                })
            })
        }
        fn create<'a>(
            &'a self,
            _e: &'a str,
            _o: Vec<Value>,
        ) -> BoxFuture<'a, Result<Vec<Value>, NetBoxError>> {
            unreachable!("no create in this test")
        }
        fn update<'a>(
            &'a self,
            _e: &'a str,
            _p: Vec<Value>,
        ) -> BoxFuture<'a, Result<Vec<Value>, NetBoxError>> {
            unreachable!("no update in this test")
        }
        fn delete<'a>(
            &'a self,
            _e: &'a str,
            _ids: Vec<u64>,
        ) -> BoxFuture<'a, Result<(), NetBoxError>> {
            unreachable!("no delete in this test")
        }
        fn request_counts(&self) -> (u64, u64) {
            (0, 0)
        }
        fn version(&self) -> BoxFuture<'_, Result<Option<NetBoxVersion>, NetBoxError>> {
            Box::pin(async { Ok(None) })
        }
    }

    #[tokio::test]
    async fn a_stage_stops_calling_once_its_transport_errors_reach_the_limit() {
        let calls = CallCounter::with_transport_limit(3);
        let inner = Unanswered::default();
        let pve = CountedPve {
            inner: &inner,
            calls: &calls,
        };
        // The 595 is an answer: it does not count.
        assert!(pve.get("/version").await.is_err());
        for _ in 0..3 {
            assert!(matches!(
                pve.get("/nodes").await,
                Err(PveError::Timeout { .. })
            ));
        }
        for _ in 0..5 {
            assert_eq!(
                pve.get("/nodes").await,
                Err(PveError::TransportLimit { limit: 3 })
            );
        }
        assert_eq!(inner.count(), 4, "no request after the limit");
        // The whole reader gives up the same way on a PVE that never answers.
        let inner = Unanswered::default();
        let calls = CallCounter::with_transport_limit(3);
        let pve = CountedPve {
            inner: &inner,
            calls: &calls,
        };
        let err = read_inventory(&pve, &ReadOptions::default()).await;
        assert!(err.is_err());
        assert!(inner.count() <= 4, "{} requests", inner.count());

        // NetBox: a 500 is an answer, 503s are not; the NetBox budget is its own.
        let calls = CallCounter::with_transport_limit(2);
        let inner = Unanswered::default();
        let nb = CountedNetBox {
            inner: &inner,
            calls: &calls,
        };
        for _ in 0..3 {
            assert!(matches!(
                nb.list("dcim/devices", &[]).await,
                Err(NetBoxError::Status { .. })
            ));
        }
        let err = nb.list("dcim/devices", &[]).await.unwrap_err();
        assert_eq!(err, NetBoxError::TransportLimit { limit: 2 });
        assert_eq!(
            err.to_string(),
            "gave up on NetBox after 2 requests without an answer (timeouts, refused or reset connections, 502/503/504)"
        );
        assert_eq!(inner.count(), 3);
        assert!(!calls.proxmox_budget.exhausted());
        let c = calls.snapshot();
        assert_eq!(c.get(systems::NETBOX, "TransportErrorLimit"), 1);
        assert_eq!(c.get(systems::NETBOX, "NetBoxError"), 3);
    }

    /// A cluster aimed at `pve` and `netbox`, with its Secrets in a temporary directory.
    fn guarded_cluster(pve: &str, netbox: &str) -> (crate::crd::ProxmoxCluster, tempfile::TempDir) {
        let dir = tempfile::tempdir().unwrap();
        for (secret, key, value) in [
            ("pve", "tokenId", "u@pve!t"),
            ("pve", "tokenSecret", "s"),
            ("nb", "token", "nbt_x.y"),
        ] {
            std::fs::create_dir_all(dir.path().join(secret)).unwrap();
            std::fs::write(dir.path().join(secret).join(key), value).unwrap();
        }
        let cluster = serde_json::from_value(serde_json::json!({
            "apiVersion": "proxmox-netbox.io/v1alpha1", "kind": "ProxmoxCluster",
            "metadata": {"name": "lab", "namespace": "infra", "generation": 1},
            "spec": {
                "proxmox": {"endpoints": [pve], "credentialsSecretRef": {"name": "pve"}},
                "netbox": {"url": netbox, "tokenSecretRef": {"name": "nb", "key": "token"}, "site": "dc1"}
            }
        }))
        .unwrap();
        (cluster, dir)
    }

    #[tokio::test]
    async fn a_refused_endpoint_makes_the_cluster_not_ready_with_reason_endpoint_refused() {
        use crate::conditions::types;
        use crate::hardware::discovery::SshProber;
        use crate::pipeline::{RunOptions, Stages, run_pipeline};
        use crate::secrets::DirSecrets;
        use crate::status::build_status;

        crate::tls::install_crypto_provider();
        let now = chrono::Utc::now();
        let ready = |status: &crate::crd::ProxmoxClusterStatus| {
            status
                .conditions
                .iter()
                .find(|c| c.type_ == types::READY)
                .cloned()
                .unwrap()
        };
        // The PVE endpoint is the metadata service: refused before any connection.
        let (cluster, dir) =
            guarded_cluster("https://169.254.169.254", "https://netbox.example.com");
        let run = run_pipeline(
            &Stages::new(
                &LiveReader::default(),
                &SshProber::default(),
                &LiveWriter::default(),
            ),
            &cluster,
            &[],
            &DirSecrets::new(dir.path()),
            RunOptions::default(),
            now,
        )
        .await;
        let c = ready(&build_status(Some(1), None, &run.outcome, now));
        assert_eq!(c.status, "False");
        assert_eq!(c.reason, reasons::ENDPOINT_REFUSED);
        assert_eq!(
            c.message,
            "spec.proxmox.endpoints[0]: 169.254.169.254 is a cloud metadata address; refused (allow it only by listing it exactly: --allow-endpoint-cidr 169.254.169.254/32)"
        );
        // A plain-http NetBox URL: the NetBox client is refused with the same reason.
        let (cluster, dir) =
            guarded_cluster("https://pve1.example.com:8006", "http://netbox.example.com");
        let config = crate::config::resolve(
            &cluster,
            OwnerScope::new("test", "infra", "lab"),
            &DirSecrets::new(dir.path()),
        )
        .await
        .unwrap();
        let err = netbox_client(&config.netbox, &EndpointGuard::default(), None)
            .err()
            .unwrap();
        assert_eq!(err.reason(), reasons::ENDPOINT_REFUSED);
        assert!(err.is_permanent());
        assert_eq!(
            err.to_string(),
            "spec.netbox.url: plain http is refused: use https, or set spec.netbox.allowInsecureHttp: true"
        );
    }
}
