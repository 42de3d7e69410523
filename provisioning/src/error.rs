use std::time::Duration;

/// What can go wrong talking to a provider. The distinction that matters is whether a failed
/// create may have happened anyway ([`Error::may_have_happened`]): then the instance is looked
/// up by its name before anything is created again.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// No answer, or none in time: the request may or may not have been carried out.
    #[error("no answer from the provider: {0}")]
    Transport(String),
    /// The provider asks us to slow down; the request was not carried out.
    #[error("the provider is rate limiting (retry after {retry_after:?})")]
    RateLimited { retry_after: Option<Duration> },
    /// An error status with the provider's message, parsed whatever its shape.
    #[error("the provider answered {status}: {message}")]
    Api { status: u16, message: String },
    /// The credentials were refused (also after a fresh token).
    #[error("the provider refused our credentials: {0}")]
    Auth(String),
    /// A 2xx answer we cannot read.
    #[error("unreadable answer from the provider: {0}")]
    Unreadable(String),
    /// More than one instance carries a name that must be unique to one order: someone must
    /// look (and cancel the extra one) before the order goes on.
    #[error("{count} instances are named {name}; an operator must resolve this")]
    Duplicates { name: String, count: usize },
    /// Settings that cannot work (no region mapping, no product).
    #[error("provisioning settings: {0}")]
    Config(String),
    #[error("cloud-init template: {0}")]
    Template(String),
    /// Gave up after the retry policy's attempts; the last error inside.
    #[error("gave up after {attempts} attempts: {last}")]
    GaveUp { attempts: u32, last: Box<Error> },
}

impl Error {
    /// Whether the request may have been carried out although it failed: a lost or late
    /// answer, or a server error (the work may be done before the failure).
    pub fn may_have_happened(&self) -> bool {
        match self {
            Self::Transport(_) => true,
            Self::Api { status, .. } => *status >= 500,
            _ => false,
        }
    }

    /// Whether trying again later can help.
    pub fn is_transient(&self) -> bool {
        match self {
            Self::Transport(_) | Self::RateLimited { .. } => true,
            Self::Api { status, .. } => *status >= 500 || *status == 408,
            _ => false,
        }
    }

    /// How long the provider asked us to wait, if it did.
    pub fn retry_after(&self) -> Option<Duration> {
        match self {
            Self::RateLimited { retry_after } => *retry_after,
            _ => None,
        }
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;
