//! What the order runner does in each state of an order (the seed's
//! `provision_dedicated_server`, without SSH):
//!
//! - `pending`: a pool server in the region if one waits; otherwise the order's server row is
//!   made (type `dedicated`, owned by the buyer, `provisioning`) with the provider-side name
//!   `tv-order-<id>`, and the deadline starts.
//! - `provisioning`: the instance is created at most once (`create_once`: its name is looked
//!   up before any create) with a cloud-init carrying a fresh single-use enrollment token, then
//!   polled until it runs with a public IPv4, which becomes the server's endpoint.
//! - `configuring`: done when the node's agent has enrolled and is online; the buyer gets the
//!   ready mail, and placement puts their devices on the server from then on.
//!
//! Past the deadline, or when the provider reports a state only a person can fix, the order
//! fails with its reason; the buyer and the operator are mailed, and an operator can retry it.
//! Every write re-checks this process's lease, so a stalled runner cannot overwrite the work
//! of the one that took over.

use serde_json::json;

use crate::accounts;
use crate::audit::{self, Actor};
use crate::automation::outbox::{self, OutgoingMail};
use crate::clock::Millis;
use crate::devices::addresses::random_ula64;
use crate::error::{Error, Result};
use crate::servers::{self, NewServer, country_of};

use super::orders;
use super::runner::{LET_GO, OrderRunner};

/// An open order as the runner reads it.
#[derive(Debug)]
pub(super) struct Open {
    pub(super) id: i64,
    pub(super) user_id: i64,
    pub(super) status: String,
    pub(super) region: String,
    pub(super) pool_id: Option<i64>,
    pub(super) server_id: Option<i64>,
    pub(super) display_name: Option<String>,
    pub(super) instance_id: Option<String>,
    pub(super) deadline_at: Option<Millis>,
    pub(super) attempt: i64,
    /// The buyer's subscription ended: the server is to be given back (`release`).
    pub(super) releasing: bool,
    /// When a create was last sent for this order (by any process).
    pub(super) create_sent_at: Option<Millis>,
}

impl Open {
    /// The instance's name at the provider: recorded when the order started, made from its id.
    pub(super) fn instance_name(&self) -> String {
        self.display_name
            .clone()
            .unwrap_or_else(|| instance_name(self.id))
    }
}

fn instance_name(order: i64) -> String {
    format!("tv-order-{order}")
}

/// Whether the order moved to another state (and the next step runs at once) or waits.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Step {
    Moved,
    Waits,
}

type OpenRow = (
    i64,
    String,
    Option<String>,
    Option<i64>,
    Option<String>,
    Option<String>,
    Option<i64>,
    i64,
    Option<i64>,
    Option<i64>,
    Option<i64>,
);

impl OrderRunner {
    /// Takes a leased order as far as it can go now.
    pub(super) async fn advance(&self, id: i64) -> Result<()> {
        // pending → provisioning → configuring → completed is at most three moves.
        for _ in 0..4 {
            let Some(order) = self.load(id).await? else {
                return Ok(()); // closed, or no longer ours
            };
            let step = match order.status.as_str() {
                _ if order.releasing => self.release(&order).await?,
                "pending" => self.start(&order).await?,
                "provisioning" => self.boot(&order).await?,
                "configuring" => self.connect(&order).await?,
                _ => Step::Waits,
            };
            if step == Step::Waits {
                return Ok(());
            }
        }
        Ok(())
    }

    async fn load(&self, id: i64) -> Result<Option<Open>> {
        let row: Option<OpenRow> = sqlx::query_as(
            "SELECT user_id, status, region_preference, vpn_server_id, provider_display_name,
                    provider_instance_id, deadline_at, attempt, server_pool_id, release_requested_at,
                    create_sent_at
             FROM server_provisioning_queue
             WHERE id = $1 AND lease_owner = $2 AND released_at IS NULL",
        )
        .bind(id)
        .bind(&self.worker_id)
        .fetch_optional(self.db.pool())
        .await?;
        Ok(row.map(
            |(
                user_id,
                status,
                region,
                server_id,
                display_name,
                instance_id,
                deadline_at,
                attempt,
                pool_id,
                release_requested_at,
                create_sent_at,
            )| Open {
                id,
                user_id,
                status,
                region: region.unwrap_or_default(),
                pool_id,
                server_id,
                display_name,
                instance_id,
                deadline_at,
                attempt,
                releasing: release_requested_at.is_some(),
                create_sent_at,
            },
        ))
    }

    fn past_deadline(&self, order: &Open) -> bool {
        order.deadline_at.is_some_and(|d| self.clock.now_ms() >= d)
    }

    /// `pending`: a pool server, else the order's own server row and name.
    async fn start(&self, order: &Open) -> Result<Step> {
        let now = self.clock.now_ms();
        let mut tx = self.db.begin_write().await?;
        let served = orders::serve_from_pool(
            tx.conn(),
            self.db.engine(),
            order.id,
            order.user_id,
            &order.region,
            now,
        )
        .await?;
        if served.is_some() {
            let view = orders::get(tx.conn(), order.id).await?;
            if view.status == "completed" {
                orders::notify_ready(tx.conn(), &view, now).await?;
            }
            tx.commit().await?;
            return Ok(Step::Moved);
        }
        let Some(provisioning) = &self.settings.provisioning else {
            tx.rollback().await?;
            self.park(order.id, None).await?;
            return Ok(Step::Waits);
        };
        let name = instance_name(order.id);
        let country = match country_of(&order.region) {
            Some(country) => country.to_owned(),
            // A region outside the built-in map: as its other servers say, else its name.
            None => sqlx::query_as::<_, (String,)>(
                "SELECT country FROM vpn_servers WHERE region = $1 LIMIT 1",
            )
            .bind(&order.region)
            .fetch_optional(tx.conn())
            .await?
            .map_or_else(|| order.region.clone(), |(c,)| c),
        };
        // No endpoint yet: placement needs the node's key, which it only has once enrolled,
        // and the address is set before that, when the instance reports it.
        let ipv6_subnet = random_ula64();
        let server_id = servers::insert(
            tx.conn(),
            &NewServer {
                name: &name,
                provider: &provisioning.provider_name,
                region: &order.region,
                country: &country,
                endpoint_host: "",
                endpoint_port: 51820,
                public_key: None,
                ipv4_subnet: "10.8.0.0/16",
                ipv6_subnet: Some(&ipv6_subnet),
                server_type: "dedicated",
                dedicated_user_id: Some(order.user_id),
                status: "provisioning",
            },
            now,
        )
        .await?;
        let moved = self
            .write_leased(
                tx.conn(),
                order.id,
                "status = 'provisioning', vpn_server_id = $3, provider = $4, provider_display_name = $5,
                 deadline_at = COALESCE(deadline_at, $6), started_at = COALESCE(started_at, $7), updated_at = $7",
                Some("status = 'pending'"),
                |q| {
                    q.bind(server_id)
                        .bind(provisioning.provider_name.clone())
                        .bind(name.clone())
                        .bind(now + self.settings.deadline)
                        .bind(now)
                },
            )
            .await?;
        if moved {
            tx.commit().await?;
            tracing::info!(order = order.id, server = server_id, %name, "creating a dedicated server");
        } else {
            tx.rollback().await?; // a pool server took it meanwhile, or the lease was lost
        }
        Ok(Step::Moved)
    }

    /// `provisioning`: the instance, created once, until it runs with an address.
    async fn boot(&self, order: &Open) -> Result<Step> {
        if self.past_deadline(order) {
            return self
                .fail(order, "the new server did not come up before the deadline")
                .await;
        }
        let Some(provisioning) = &self.settings.provisioning else {
            // Settings changed since the order started: it waits for them.
            self.park(order.id, None).await?;
            return Ok(Step::Waits);
        };
        let server_id = order
            .server_id
            .ok_or_else(|| Error::internal(format!("order {} has no server row", order.id)))?;
        let instance_id = match &order.instance_id {
            Some(id) => id.clone(),
            None => match self.create(order, provisioning, server_id).await? {
                Some(id) => id,
                None => return Ok(Step::Waits),
            },
        };
        let instance = match provisioning.provider.get(&instance_id).await {
            Ok(instance) => instance,
            Err(e) if e.is_transient() => {
                tracing::warn!(order = order.id, error = %e, "cannot look at the instance now");
                self.park(order.id, None).await?;
                return Ok(Step::Waits);
            }
            Err(e) => {
                let reason = format!("looking at instance {instance_id}: {e}");
                return self.fail(order, &reason).await;
            }
        };
        if instance.status.is_terminal_failure() {
            let reason = format!(
                "the provider reports instance {instance_id} as {:?}{}",
                instance.status,
                instance
                    .error_message
                    .map(|m| format!(": {m}"))
                    .unwrap_or_default()
            );
            return self.fail(order, &reason).await;
        }
        let Some(ipv4) = instance.ipv4.filter(|_| instance.is_up()) else {
            self.park(order.id, None).await?;
            return Ok(Step::Waits);
        };
        let now = self.clock.now_ms();
        let mut tx = self.db.begin_write().await?;
        let moved = self
            .write_leased(
                tx.conn(),
                order.id,
                "status = 'configuring', ip_address = $3, updated_at = $4",
                Some("status = 'provisioning'"),
                |q| q.bind(ipv4.to_string()).bind(now),
            )
            .await?;
        sqlx::query("UPDATE vpn_servers SET endpoint_host = $1, updated_at = $2 WHERE id = $3")
            .bind(ipv4.to_string())
            .bind(now)
            .bind(server_id)
            .execute(tx.conn())
            .await?;
        if moved {
            tx.commit().await?;
            tracing::info!(order = order.id, %ipv4, "the instance runs; waiting for its agent");
        } else {
            tx.rollback().await?;
        }
        Ok(Step::Moved)
    }

    /// `configuring`: done once the node's agent is enrolled and online.
    async fn connect(&self, order: &Open) -> Result<Step> {
        let server: Option<(String, Option<String>)> = match order.server_id {
            Some(id) => {
                sqlx::query_as("SELECT status, wg_public_key FROM vpn_servers WHERE id = $1")
                    .bind(id)
                    .fetch_optional(self.db.pool())
                    .await?
            }
            None => None,
        };
        let Some((status, key)) = server else {
            return self.fail(order, "the order's server is gone").await;
        };
        if status != "online" || key.is_none() {
            if self.past_deadline(order) {
                return self
                    .fail(order, "the node agent did not connect before the deadline")
                    .await;
            }
            if key.is_none() && !self.has_live_token(order).await? {
                // Its token expired unused (an operator's retry after the deadline): only a
                // fresh boot can give it a new one.
                return self.reboot(order).await;
            }
            self.park(order.id, None).await?;
            return Ok(Step::Waits);
        }
        let now = self.clock.now_ms();
        let mut tx = self.db.begin_write().await?;
        let set = format!(
            "status = 'completed', completed_at = $3, next_run_at = NULL, {LET_GO}, updated_at = $3"
        );
        let done = self
            .write_leased(
                tx.conn(),
                order.id,
                &set,
                Some("status = 'configuring'"),
                |q| q.bind(now),
            )
            .await?;
        if !done {
            tx.rollback().await?;
            return Ok(Step::Waits);
        }
        let view = orders::get(tx.conn(), order.id).await?;
        orders::notify_ready(tx.conn(), &view, now).await?;
        tx.commit().await?;
        tracing::info!(order = order.id, "dedicated server handed over");
        Ok(Step::Waits)
    }

    /// Fails the order with `reason`; the buyer and the operator are mailed, once per attempt.
    pub(super) async fn fail(&self, order: &Open, reason: &str) -> Result<Step> {
        let now = self.clock.now_ms();
        let mut tx = self.db.begin_write().await?;
        let set = format!(
            "status = 'failed', error_message = $3, next_run_at = NULL, {LET_GO}, updated_at = $4"
        );
        let guard = "status IN ('pending', 'provisioning', 'configuring')";
        let failed = self
            .write_leased(tx.conn(), order.id, &set, Some(guard), |q| {
                q.bind(reason.to_owned()).bind(now)
            })
            .await?;
        if !failed {
            tx.rollback().await?;
            return Ok(Step::Waits);
        }
        let (email, first_name) = accounts::contact(tx.conn(), order.user_id).await?;
        outbox::enqueue(
            tx.conn(),
            OutgoingMail {
                to: &email,
                user_id: Some(order.user_id),
                template: "dedicated_delayed",
                context: json!({ "first_name": first_name, "region": order.region }),
                dedupe_key: Some(format!("dedicated_delayed:{}:{}", order.id, order.attempt)),
            },
            now,
        )
        .await?;
        match &self.settings.operator_email {
            Some(operator) => {
                outbox::enqueue(
                    tx.conn(),
                    OutgoingMail {
                        to: operator,
                        user_id: None,
                        template: "order_failed",
                        context: json!({
                            "first_name": first_name,
                            "email": email,
                            "order_id": order.id,
                            "region": order.region,
                            "reason": reason,
                            "instance": order.instance_id,
                            "was": order.status,
                        }),
                        dedupe_key: Some(format!("order_failed:{}:{}", order.id, order.attempt)),
                    },
                    now,
                )
                .await?;
            }
            None => tracing::warn!(
                order = order.id,
                "no operator_email is set: nobody is mailed about this failure"
            ),
        }
        audit::record(
            tx.conn(),
            audit::Entry {
                actor: Actor::System,
                action: "order.failed",
                target_type: Some("order"),
                target_id: Some(order.id.to_string()),
                details: json!({ "reason": reason, "was": order.status }),
                ip: None,
            },
            now,
        )
        .await?;
        tx.commit().await?;
        tracing::error!(order = order.id, %reason, "dedicated-server order failed");
        Ok(Step::Waits)
    }
}
