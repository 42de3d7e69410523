//! The agent's one error type.

use std::path::PathBuf;

pub type Result<T, E = Error> = std::result::Result<T, E>;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("configuration: {0}")]
    Config(String),
    #[error("{path}: {source}")]
    File {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("not enrolled yet: run `truevault-agent enroll` or provide the enrollment token file")]
    NotEnrolled,
    #[error("enrollment: {0}")]
    Enrollment(String),
    #[error("key material: {0}")]
    Keys(String),
    #[error("WireGuard: {0}")]
    WireGuard(String),
    #[error("control plane connection: {0}")]
    Transport(#[from] tonic::transport::Error),
    #[error("control plane: {0}")]
    Rpc(#[from] tonic::Status),
    #[error("control plane protocol: {0}")]
    Protocol(String),
}

impl Error {
    pub fn file(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Self::File {
            path: path.into(),
            source,
        }
    }
}
