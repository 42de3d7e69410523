//! The node gRPC service (tonic): the thin edge over `nodes`. `Enroll` needs no client
//! certificate (the single-use token is the credential); every other call is authenticated by
//! the client certificate alone, whose identity is the server id, and a revoked or unknown
//! serial is refused.

mod status;
mod sync;

use std::net::SocketAddr;
use std::sync::Arc;

use sqlx::AnyConnection;
use tokio::net::TcpListener;
use tonic::transport::{Certificate, Identity, Server, ServerTlsConfig};
use tonic::{Request, Response, Status, Streaming};
use truevault_proto::v1::node_service_server::{NodeService, NodeServiceServer};
use truevault_proto::v1::{
    AgentMessage, ControlMessage, EnrollRequest, EnrollResponse, RenewRequest, RenewResponse,
};

use crate::clock::{Millis, SharedClock};
use crate::devices::keys::parse_public_key;
use crate::error::{Error, Result};
use crate::metrics::Metrics;
use crate::nodes::ca::{self, CertificateAuthority, NodeCertificate};
use crate::nodes::enrollment;
use crate::nodes::hub::Hub;
use crate::nodes::session;
use crate::storage::{Db, is_unique_violation};

#[derive(Debug, Clone)]
pub struct NodeGrpc {
    db: Db,
    clock: SharedClock,
    ca: Arc<CertificateAuthority>,
    hub: Arc<Hub>,
    metrics: Arc<Metrics>,
}

impl NodeGrpc {
    pub fn new(
        db: Db,
        clock: SharedClock,
        ca: Arc<CertificateAuthority>,
        hub: Arc<Hub>,
        metrics: Arc<Metrics>,
    ) -> Self {
        Self {
            db,
            clock,
            ca,
            hub,
            metrics,
        }
    }

    /// Serves on `listener` with TLS from the CA (client certificates optional at the TLS
    /// layer, required by every call but `Enroll`) until `shutdown` completes.
    pub async fn serve(
        self,
        listener: TcpListener,
        server_names: Vec<String>,
        shutdown: impl std::future::Future<Output = ()> + Send + 'static,
    ) -> Result<()> {
        let identity = self
            .ca
            .server_identity(&server_names, self.clock.now_ms())?;
        let tls = ServerTlsConfig::new()
            .identity(Identity::from_pem(
                identity.cert_pem,
                identity.key_pem.expose(),
            ))
            .client_ca_root(Certificate::from_pem(self.ca.ca_pem()))
            .client_auth_optional(true);
        Server::builder()
            .tls_config(tls)
            .map_err(|e| Error::Config(format!("gRPC TLS: {e}")))?
            .add_service(NodeServiceServer::new(self))
            .serve_with_incoming_shutdown(incoming(listener), shutdown)
            .await
            .map_err(|e| Error::internal(format!("gRPC server: {e}")))
    }

    /// The node behind a call: from its verified client certificate, which must be one this
    /// control plane issued, unexpired and not revoked.
    async fn authenticate<T>(&self, request: &Request<T>) -> Result<i64> {
        let certs = request
            .peer_certs()
            .ok_or(Error::Unauthenticated("a client certificate is required"))?;
        let leaf = certs
            .first()
            .ok_or(Error::Unauthenticated("a client certificate is required"))?;
        let (node_id, serial) = ca::identify(leaf).ok_or(Error::Unauthenticated(
            "the client certificate names no node",
        ))?;
        let row: Option<(i64, i64, Option<i64>)> = sqlx::query_as(
            "SELECT server_id, not_after, revoked_at FROM node_certificates WHERE serial = $1",
        )
        .bind(&serial)
        .fetch_optional(self.db.pool())
        .await?;
        match row {
            Some((server_id, not_after, None))
                if server_id.to_string() == node_id && not_after > self.clock.now_ms() =>
            {
                Ok(server_id)
            }
            Some((_, _, Some(_))) => Err(Error::Forbidden("this certificate has been revoked")),
            _ => Err(Error::Unauthenticated("this certificate is not valid here")),
        }
    }

    async fn record(
        conn: &mut AnyConnection,
        server_id: i64,
        cert: &NodeCertificate,
        now: Millis,
    ) -> Result<()> {
        sqlx::query("INSERT INTO node_certificates (serial, server_id, not_after, created_at) VALUES ($1, $2, $3, $4)")
            .bind(&cert.serial)
            .bind(server_id)
            .bind(cert.not_after)
            .bind(now)
            .execute(conn)
            .await?;
        Ok(())
    }

    async fn enroll_node(&self, req: EnrollRequest) -> Result<EnrollResponse> {
        let wg_key = parse_public_key("wireguard_public_key", &req.wireguard_public_key)?;
        let now = self.clock.now_ms();
        let mut tx = self.db.begin_write().await?;
        let server_id = enrollment::consume(tx.conn(), &req.token, now).await?;
        let cert = self
            .ca
            .sign_node(&req.csr_der, &server_id.to_string(), now)?;
        Self::record(tx.conn(), server_id, &cert, now).await?;
        let row: std::result::Result<(String, Option<String>, i64), sqlx::Error> = sqlx::query_as(
            "UPDATE vpn_servers SET wg_public_key = $1, updated_at = $2 WHERE id = $3
             RETURNING ipv4_subnet, ipv6_subnet, endpoint_port",
        )
        .bind(&wg_key)
        .bind(now)
        .bind(server_id)
        .fetch_one(tx.conn())
        .await;
        let (v4, v6, port) = match row {
            Ok(row) => row,
            Err(e) if is_unique_violation(&e, "") => {
                return Err(Error::conflict(
                    "key_in_use",
                    "another server has this WireGuard key",
                ));
            }
            Err(e) => return Err(e.into()),
        };
        tx.commit().await?;
        tracing::info!(server_id, serial = %cert.serial, "node enrolled");
        Ok(EnrollResponse {
            node_id: server_id.to_string(),
            certificate_der: cert.der,
            ca_certificate_der: self.ca.ca_der().to_vec(),
            not_after_ms: cert.not_after,
            interface: Some(session::interface_settings(&v4, v6.as_deref(), port)),
        })
    }

    async fn renew_node(&self, server_id: i64, req: RenewRequest) -> Result<RenewResponse> {
        let now = self.clock.now_ms();
        let cert = self
            .ca
            .sign_node(&req.csr_der, &server_id.to_string(), now)?;
        let mut tx = self.db.begin_write().await?;
        Self::record(tx.conn(), server_id, &cert, now).await?;
        tx.commit().await?;
        Ok(RenewResponse {
            certificate_der: cert.der,
            not_after_ms: cert.not_after,
        })
    }
}

#[tonic::async_trait]
impl NodeService for NodeGrpc {
    async fn enroll(
        &self,
        request: Request<EnrollRequest>,
    ) -> std::result::Result<Response<EnrollResponse>, Status> {
        Ok(Response::new(self.enroll_node(request.into_inner()).await?))
    }

    async fn renew(
        &self,
        request: Request<RenewRequest>,
    ) -> std::result::Result<Response<RenewResponse>, Status> {
        let server_id = self.authenticate(&request).await?;
        Ok(Response::new(
            self.renew_node(server_id, request.into_inner()).await?,
        ))
    }

    type SyncStream = std::pin::Pin<
        Box<dyn futures_util::Stream<Item = std::result::Result<ControlMessage, Status>> + Send>,
    >;

    async fn sync(
        &self,
        request: Request<Streaming<AgentMessage>>,
    ) -> std::result::Result<Response<Self::SyncStream>, Status> {
        let server_id = self.authenticate(&request).await?;
        let (out, stream) = tokio::sync::mpsc::channel(sync::OUTBOUND_BUFFER);
        let node = sync::NodeStream::new(self.clone(), server_id, request.into_inner(), out);
        tokio::spawn(node.run());
        Ok(Response::new(Box::pin(
            tokio_stream::wrappers::ReceiverStream::new(stream),
        )))
    }
}

/// Accepted connections with Nagle's algorithm off: changes are small messages that must
/// leave at once (tonic's own `tcp_nodelay` setting does not apply to a given listener).
fn incoming(
    listener: TcpListener,
) -> impl futures_util::Stream<Item = std::io::Result<tokio::net::TcpStream>> {
    use futures_util::StreamExt as _;
    tokio_stream::wrappers::TcpListenerStream::new(listener).map(|stream| {
        if let Ok(stream) = &stream {
            let _ = stream.set_nodelay(true);
        }
        stream
    })
}

/// Binds the gRPC listener (so `serve` can report the address before running).
pub async fn bind(addr: SocketAddr) -> Result<TcpListener> {
    TcpListener::bind(addr)
        .await
        .map_err(|e| Error::Config(format!("cannot listen on {addr}: {e}")))
}
