//! One node's `Sync` stream: hello, catch-up (snapshot or changes), then every committed change
//! as it lands, while acknowledgements and heartbeats come back. The reads and writes are
//! `nodes::session`; this module only drives the stream.

use std::time::Duration;

use tokio::sync::mpsc;
use tokio::time::{Instant, sleep_until};
use tonic::{Status, Streaming};
use truevault_proto::v1::{
    AgentMessage, ControlMessage, Hello, Ping, agent_message, control_message,
};

use super::NodeGrpc;
use crate::error::{Error, Result};
use crate::nodes::hub::Registration;
use crate::nodes::session::{self, AckBatch, Beat, Opened};

/// Messages queued towards one node. Small on purpose: a slow node holds back its own session
/// (which then reads a larger batch from the database later), never memory.
pub(super) const OUTBOUND_BUFFER: usize = 4;

/// How long a new stream may take to say hello.
const HELLO_TIMEOUT: Duration = Duration::from_secs(30);

/// How long acknowledgements gather before they are recorded together (one write for a burst).
const ACK_DELAY: Duration = Duration::from_millis(20);

type Outbound = mpsc::Sender<std::result::Result<ControlMessage, Status>>;

pub(super) struct NodeStream {
    grpc: NodeGrpc,
    server_id: i64,
    inbound: Streaming<AgentMessage>,
    out: Outbound,
    /// The last revision sent to the node.
    sent: i64,
    /// Acknowledgements not yet recorded, and when they are due.
    acks: AckBatch,
    acks_due: Option<Instant>,
}

impl std::fmt::Debug for NodeStream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NodeStream")
            .field("server_id", &self.server_id)
            .field("sent", &self.sent)
            .finish_non_exhaustive()
    }
}

/// Why a stream ended (for the log).
enum End {
    Closed,
    Superseded,
    Silent,
}

impl NodeStream {
    pub(super) fn new(
        grpc: NodeGrpc,
        server_id: i64,
        inbound: Streaming<AgentMessage>,
        out: Outbound,
    ) -> Self {
        Self {
            grpc,
            server_id,
            inbound,
            out,
            sent: 0,
            acks: AckBatch::default(),
            acks_due: None,
        }
    }

    pub(super) async fn run(mut self) {
        let metrics = std::sync::Arc::clone(&self.grpc.metrics);
        metrics.node_sessions.inc();
        let server_id = self.server_id;
        let end = self.drive().await;
        // Whatever the end, what the node acknowledged is true and worth keeping.
        if let Err(e) = self.record_acks().await {
            tracing::warn!(server_id, error = %e, "cannot record acknowledgements");
        }
        match end {
            Ok(End::Closed) => tracing::info!(server_id, "node stream closed"),
            Ok(End::Superseded) => tracing::info!(server_id, "node reconnected; old stream ended"),
            Ok(End::Silent) => tracing::warn!(server_id, "node missed 3 heartbeats; offline"),
            Err(e) => {
                tracing::warn!(server_id, error = %e, "node stream failed");
                let _ = self.out.send(Err(e.into())).await;
            }
        }
        metrics.node_sessions.dec();
    }

    async fn drive(&mut self) -> Result<End> {
        let hello = match tokio::time::timeout(HELLO_TIMEOUT, self.inbound.message()).await {
            Ok(Ok(Some(AgentMessage {
                body: Some(agent_message::Body::Hello(hello)),
            }))) => hello,
            Ok(Ok(None)) | Ok(Err(_)) => return Ok(End::Closed),
            Ok(Ok(Some(_))) => {
                return Err(Error::invalid(
                    "hello_expected",
                    "the first message must be a hello",
                ));
            }
            Err(_) => return Err(Error::invalid("hello_expected", "no hello within 30 s")),
        };
        let db = self.grpc.db.clone();
        let opened = session::open(&db, self.server_id, &hello, self.grpc.clock.now_ms()).await?;
        let mut registration = self.grpc.hub.register(self.server_id, opened.revision);
        tracing::info!(
            server_id = self.server_id,
            applied = hello.applied_revision,
            revision = opened.revision,
            agent = %hello.agent_version,
            "node connected"
        );
        if !self.catch_up(&hello, opened, &registration).await? {
            return Ok(End::Closed);
        }
        let beat =
            Duration::from_millis(u64::try_from(opened.heartbeat_interval_ms).unwrap_or(30_000));
        let mut silent_at = Instant::now() + beat * 3;
        let mut ping = tokio::time::interval_at(Instant::now() + beat, beat);
        loop {
            tokio::select! {
                message = self.inbound.message() => {
                    let Ok(Some(message)) = message else { return Ok(End::Closed) };
                    silent_at = Instant::now() + beat * 3;
                    if self.handle(message, opened).await? == Beat::Superseded {
                        return Ok(End::Superseded);
                    }
                }
                changed = registration.revision.changed() => {
                    if changed.is_err() {
                        return Ok(End::Superseded);
                    }
                    if !self.send_changes(&registration).await? {
                        return Ok(End::Closed);
                    }
                }
                () = sleep_until(self.acks_due.unwrap_or_else(Instant::now)), if self.acks_due.is_some() => {
                    self.record_acks().await?;
                }
                () = registration.superseded.notified() => return Ok(End::Superseded),
                () = self.grpc.hub.closed() => return Ok(End::Closed),
                _ = ping.tick() => {
                    let ping = control_message::Body::Ping(Ping { sent_at_ms: self.grpc.clock.now_ms() });
                    if !self.send(ping).await {
                        return Ok(End::Closed);
                    }
                }
                () = sleep_until(silent_at) => {
                    let now = self.grpc.clock.now_ms();
                    session::close_silent(&db, self.server_id, opened.generation, now).await?;
                    return Ok(End::Silent);
                }
            }
        }
    }

    /// Brings the node from its applied revision to now. False if the node went away.
    async fn catch_up(
        &mut self,
        hello: &Hello,
        opened: Opened,
        registration: &Registration,
    ) -> Result<bool> {
        let db = &self.grpc.db;
        let applied = i64::try_from(hello.applied_revision).unwrap_or(i64::MAX);
        if session::needs_snapshot(db, self.server_id, applied, opened.revision).await? {
            if !self.send_snapshot().await? {
                return Ok(false);
            }
        } else {
            self.sent = applied;
        }
        self.send_changes(registration).await
    }

    /// Sends every peer at the current revision, in chunks. False if the node went away.
    async fn send_snapshot(&mut self) -> Result<bool> {
        let (revision, interface, peers) = session::snapshot(&self.grpc.db, self.server_id).await?;
        let revision_u = u64::try_from(revision).unwrap_or_default();
        for chunk in truevault_proto::snapshot_chunks(revision_u, Some(interface), peers) {
            if !self.send(control_message::Body::Snapshot(chunk)).await {
                return Ok(false);
            }
        }
        self.sent = revision;
        Ok(true)
    }

    /// Sends every committed change after `sent`, in batches. False if the node went away.
    async fn send_changes(&mut self, registration: &Registration) -> Result<bool> {
        // The rows the hub already read for this node, when they continue from `sent`.
        if let Some(changes) = registration.take_changes(u64::try_from(self.sent).unwrap_or(0)) {
            self.sent = i64::try_from(changes.revision).unwrap_or(i64::MAX);
            return Ok(self.send(control_message::Body::Changes(changes)).await);
        }
        while let Some(changes) =
            session::changes_since(&self.grpc.db, self.server_id, self.sent).await?
        {
            let first = changes.changes.first().map(|c| c.revision);
            if first.is_some_and(|r| i64::try_from(r).unwrap_or(i64::MAX) > self.sent + 1) {
                // The log was pruned past where this node stands (while it caught up).
                if !self.send_snapshot().await? {
                    return Ok(false);
                }
                continue;
            }
            self.sent = i64::try_from(changes.revision).unwrap_or(i64::MAX);
            // A short batch was everything there was: no second query to learn that.
            let more = changes.changes.len() >= session::CHANGES_BATCH_LEN;
            if !self.send(control_message::Body::Changes(changes)).await {
                return Ok(false);
            }
            if !more {
                break;
            }
        }
        Ok(true)
    }

    async fn record_acks(&mut self) -> Result<()> {
        self.acks_due = None;
        if self.acks.is_empty() {
            return Ok(());
        }
        let batch = std::mem::take(&mut self.acks);
        let latencies = session::acknowledge(&self.grpc.db, self.server_id, &batch).await?;
        for ms in latencies {
            #[allow(clippy::cast_precision_loss)]
            self.grpc
                .metrics
                .peer_propagation
                .observe(ms.max(0) as f64 / 1000.0);
        }
        Ok(())
    }

    async fn send(&self, body: control_message::Body) -> bool {
        self.out
            .send(Ok(ControlMessage { body: Some(body) }))
            .await
            .is_ok()
    }

    async fn handle(&mut self, message: AgentMessage, opened: Opened) -> Result<Beat> {
        let now = self.grpc.clock.now_ms();
        match message.body {
            Some(agent_message::Body::Ack(ack)) => {
                for error in &ack.errors {
                    tracing::warn!(server_id = self.server_id, key = %error.public_key, error = %error.message, "node could not apply a peer");
                    self.grpc.metrics.peer_apply_errors.inc();
                }
                let revision = i64::try_from(ack.revision).unwrap_or(i64::MAX);
                self.acks
                    .add(revision, ack.errors.into_iter().map(|e| e.public_key), now);
                self.acks_due
                    .get_or_insert_with(|| Instant::now() + ACK_DELAY);
                Ok(Beat::Recorded)
            }
            Some(agent_message::Body::Heartbeat(beat)) => {
                session::heartbeat(&self.grpc.db, self.server_id, opened.generation, &beat, now)
                    .await
            }
            Some(agent_message::Body::Hello(_)) => Err(Error::invalid(
                "unexpected_hello",
                "hello is only the first message of a stream",
            )),
            None => Ok(Beat::Recorded),
        }
    }
}
