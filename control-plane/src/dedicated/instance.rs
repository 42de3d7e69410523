//! The order's instance at the provider: created at most once (every create recorded on the
//! order first, under a live lease, so a process taking over waits out the settle time of the
//! last one), with a cloud-init carrying a fresh single-use enrollment token; and reinstalled
//! with a new token when the old one expired unused (an operator's retry after the deadline).

use std::time::Duration;

use truevault_provisioning::cloud_init::{self, NodeBootstrap};
use truevault_provisioning::provider::BoxFuture;
use truevault_provisioning::{
    CreateInstance, Error as ProvisioningError, Instance, Provider, create_once_resuming,
};

use crate::audit::Actor;
use crate::clock::MINUTE;
use crate::error::{Error, Result};
use crate::nodes::enrollment;

use super::lifecycle::{Open, Step};
use super::runner::{OrderRunner, Provisioning};

impl OrderRunner {
    /// Creates the order's instance (or finds the one an earlier attempt made) and records
    /// its id. `None` when the order waits (a transient failure) or failed.
    pub(super) async fn create(
        &self,
        order: &Open,
        provisioning: &Provisioning,
        server_id: i64,
    ) -> Result<Option<String>> {
        let name = order.instance_name();
        let user_data = match self
            .user_data(order, provisioning, server_id, &name)
            .await?
        {
            Ok(document) => document,
            Err(reason) => {
                self.fail(order, &reason).await?;
                return Ok(None);
            }
        };
        let request = CreateInstance {
            display_name: name,
            region: order.region.clone(),
            user_data,
            trace_id: Some(format!("order-{}", order.id)),
        };
        // A create another process sent may still land: wait out the settle time from it.
        let last_create_age = order
            .create_sent_at
            .map(|at| Duration::from_millis(u64::try_from(self.clock.now_ms() - at).unwrap_or(0)));
        let recording = RecordingCreates {
            inner: provisioning.provider.as_ref(),
            runner: self,
            order: order.id,
        };
        let created = create_once_resuming(
            &recording,
            &request,
            provisioning.create_policy,
            last_create_age,
        )
        .await;
        let instance = match created {
            Ok(instance) => instance,
            // Retried inside until the policy gave up: an outage or a rate limit, worth
            // trying again at the next poll (the deadline ends it).
            Err(e) if e.is_transient() || matches!(e, ProvisioningError::GaveUp { .. }) => {
                tracing::warn!(order = order.id, error = %e, "the instance is not created yet");
                self.park(order.id, None).await?;
                return Ok(None);
            }
            Err(e) => {
                if !self.renew(order.id).await? {
                    return Ok(None); // no longer ours: why it stopped is not ours to record
                }
                let reason = format!("creating the server at {}: {e}", provisioning.provider_name);
                self.fail(order, &reason).await?;
                return Ok(None);
            }
        };
        let now = self.clock.now_ms();
        let mut tx = self.db.begin_write().await?;
        let recorded = self
            .write_leased(
                tx.conn(),
                order.id,
                "provider_instance_id = $3, updated_at = $4",
                None,
                |q| q.bind(instance.id.clone()).bind(now),
            )
            .await?;
        sqlx::query(
            "UPDATE vpn_servers SET provider = $1, provider_instance_id = $2, updated_at = $3 WHERE id = $4",
        )
        .bind(&provisioning.provider_name)
        .bind(&instance.id)
        .bind(now)
        .bind(server_id)
        .execute(tx.conn())
        .await?;
        if !recorded {
            // Whoever holds the order now finds the instance by its name.
            tx.rollback().await?;
            return Ok(None);
        }
        tx.commit().await?;
        tracing::info!(order = order.id, instance = %instance.id, "instance created");
        Ok(Some(instance.id))
    }

    /// The node's cloud-init, with a fresh single-use enrollment token valid until the
    /// deadline. `Err` holds why it cannot be made (settings), which fails the order.
    pub(super) async fn user_data(
        &self,
        order: &Open,
        provisioning: &Provisioning,
        server_id: i64,
        hostname: &str,
    ) -> Result<std::result::Result<String, String>> {
        let now = self.clock.now_ms();
        let (ipv4_subnet, ipv6_subnet): (String, Option<String>) =
            sqlx::query_as("SELECT ipv4_subnet, ipv6_subnet FROM vpn_servers WHERE id = $1")
                .bind(server_id)
                .fetch_one(self.db.pool())
                .await?;
        let ttl = order
            .deadline_at
            .map_or(self.settings.deadline, |d| d - now)
            .max(10 * MINUTE);
        let token = enrollment::issue(&self.db, server_id, ttl, Actor::System, None, now).await?;
        let boot = &provisioning.bootstrap;
        let node = NodeBootstrap {
            hostname: hostname.to_owned(),
            control_plane_url: boot.control_plane_url.clone(),
            control_plane_name: boot.control_plane_name.clone(),
            ca_pem: boot.ca_pem.clone(),
            enrollment_token: truevault_provisioning::Secret::new(token.token.expose()),
            interface: boot.interface.clone(),
            agent_url: boot.agent_url.clone(),
            agent_sha256: boot.agent_sha256.clone(),
            tunnel_ipv4: ipv4_subnet,
            tunnel_ipv6: ipv6_subnet,
        };
        Ok(cloud_init::render(&node).map_err(|e| e.to_string()))
    }

    /// Whether the order's node can still enroll with a token it was given.
    pub(super) async fn has_live_token(&self, order: &Open) -> Result<bool> {
        match (order.server_id, &order.instance_id) {
            (Some(server), Some(_)) => {
                enrollment::has_live_token(&self.db, server, self.clock.now_ms()).await
            }
            // A pool server enrolled long ago, or nothing booted yet.
            _ => Ok(true),
        }
    }

    /// Reinstalls the order's instance with a new cloud-init (a fresh token) and waits for it
    /// to run again.
    pub(super) async fn reboot(&self, order: &Open) -> Result<Step> {
        let (Some(provisioning), Some(server), Some(instance)) = (
            &self.settings.provisioning,
            order.server_id,
            &order.instance_id,
        ) else {
            self.park(order.id, None).await?;
            return Ok(Step::Waits);
        };
        let name = order.instance_name();
        let user_data = match self.user_data(order, provisioning, server, &name).await? {
            Ok(document) => document,
            Err(reason) => return self.fail(order, &reason).await,
        };
        match provisioning.provider.reinstall(instance, &user_data).await {
            Ok(()) => {}
            Err(e) if e.is_transient() => {
                tracing::warn!(order = order.id, error = %e, "cannot reinstall the instance now");
                self.park(order.id, None).await?;
                return Ok(Step::Waits);
            }
            Err(e) => {
                let reason = format!("reinstalling instance {instance}: {e}");
                return self.fail(order, &reason).await;
            }
        }
        let now = self.clock.now_ms();
        let mut tx = self.db.begin_write().await?;
        let moved = self
            .write_leased(
                tx.conn(),
                order.id,
                "status = 'provisioning', updated_at = $3",
                Some("status = 'configuring'"),
                |q| q.bind(now),
            )
            .await?;
        if !moved {
            tx.rollback().await?;
            return Ok(Step::Waits);
        }
        tx.commit().await?;
        tracing::info!(order = order.id, %instance, "reinstalled the instance with a fresh enrollment token");
        self.park(order.id, None).await?;
        Ok(Step::Waits)
    }
}

/// The provider as the runner's creates see it: each create is first recorded on the order
/// (`create_sent_at`), and only while this process still holds a live lease on it, so a
/// process that lost the order never sends one, and the next owner knows when the last was.
#[derive(Debug)]
struct RecordingCreates<'a> {
    inner: &'a dyn Provider,
    runner: &'a OrderRunner,
    order: i64,
}

impl RecordingCreates<'_> {
    async fn record(&self) -> std::result::Result<(), ProvisioningError> {
        let recorded = async {
            let now = self.runner.clock.now_ms();
            let mut tx = self.runner.db.begin_write().await?;
            let recorded = self
                .runner
                .write_leased(
                    tx.conn(),
                    self.order,
                    "create_sent_at = $3",
                    Some("lease_until > $3"),
                    |q| q.bind(now),
                )
                .await?;
            tx.commit().await?;
            Ok::<_, Error>(recorded)
        };
        match recorded.await {
            Ok(true) => Ok(()),
            Ok(false) => Err(ProvisioningError::Config(
                "this process no longer holds the order".into(),
            )),
            // Nothing was sent: trying again later is safe.
            Err(e) => Err(ProvisioningError::RateLimited { retry_after: None }).inspect_err(
                |_| tracing::warn!(order = self.order, error = %e, "cannot record a create"),
            ),
        }
    }
}

impl Provider for RecordingCreates<'_> {
    fn create<'a>(
        &'a self,
        request: &'a CreateInstance,
    ) -> BoxFuture<'a, truevault_provisioning::Result<Instance>> {
        Box::pin(async move {
            self.record().await?;
            self.inner.create(request).await
        })
    }

    fn get<'a>(&'a self, id: &'a str) -> BoxFuture<'a, truevault_provisioning::Result<Instance>> {
        self.inner.get(id)
    }

    fn find_by_name<'a>(
        &'a self,
        display_name: &'a str,
    ) -> BoxFuture<'a, truevault_provisioning::Result<Option<Instance>>> {
        self.inner.find_by_name(display_name)
    }

    fn cancel<'a>(&'a self, id: &'a str) -> BoxFuture<'a, truevault_provisioning::Result<()>> {
        self.inner.cancel(id)
    }

    fn reinstall<'a>(
        &'a self,
        id: &'a str,
        user_data: &'a str,
    ) -> BoxFuture<'a, truevault_provisioning::Result<()>> {
        self.inner.reinstall(id, user_data)
    }
}
