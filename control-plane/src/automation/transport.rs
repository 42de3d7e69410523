//! Where mail goes: an SMTP server through lettre (STARTTLS, implicit TLS, or plain for a relay
//! on loopback), or, with no SMTP settings, `.eml` files in the data directory.

use std::os::unix::fs::{DirBuilderExt as _, OpenOptionsExt as _};
use std::path::PathBuf;
use std::time::Duration;

use lettre::message::{Mailbox, MultiPart};
use lettre::transport::smtp::authentication::Credentials;
use lettre::{AsyncSmtpTransport, AsyncTransport as _, Message, Tokio1Executor};

use crate::config::{Settings, SmtpSecurity};
use crate::error::{Error, Result};

use super::render::RenderedMail;

/// Why a message was not delivered, and whether trying again can help.
#[derive(Debug)]
pub struct SendFailure {
    pub permanent: bool,
    pub message: String,
}

#[derive(Debug)]
pub enum MailTransport {
    Smtp {
        transport: AsyncSmtpTransport<Tokio1Executor>,
        from: Mailbox,
    },
    Files {
        dir: PathBuf,
        from: Mailbox,
    },
}

impl MailTransport {
    pub fn from_settings(settings: &Settings) -> Result<Self> {
        let from: Mailbox = settings
            .mail_from
            .parse()
            .map_err(|e| Error::Config(format!("mail_from is not a mailbox: {e}")))?;
        let Some(host) = settings.smtp_host.as_deref().filter(|h| !h.is_empty()) else {
            return Ok(Self::Files {
                dir: settings.data_dir.join("mail"),
                from,
            });
        };
        let builder = match settings.smtp_security {
            SmtpSecurity::Tls => AsyncSmtpTransport::<Tokio1Executor>::relay(host),
            SmtpSecurity::Starttls => AsyncSmtpTransport::<Tokio1Executor>::starttls_relay(host),
            SmtpSecurity::None => Ok(AsyncSmtpTransport::<Tokio1Executor>::builder_dangerous(
                host,
            )),
        }
        .map_err(|e| Error::Config(format!("smtp_host: {e}")))?;
        let port = settings.smtp_port.unwrap_or(match settings.smtp_security {
            SmtpSecurity::Tls => 465,
            SmtpSecurity::Starttls => 587,
            SmtpSecurity::None => 25,
        });
        let mut builder = builder
            .port(port)
            .timeout(Some(Duration::from_secs(settings.smtp_timeout_secs)));
        if let Some(user) = &settings.smtp_username {
            let password = settings.smtp_password.as_ref().ok_or_else(|| {
                Error::Config("smtp_username is set but smtp_password is not".into())
            })?;
            builder =
                builder.credentials(Credentials::new(user.clone(), password.expose().to_owned()));
        }
        Ok(Self::Smtp {
            transport: builder.build(),
            from,
        })
    }

    pub fn describe(&self) -> String {
        match self {
            Self::Smtp { .. } => "smtp".to_owned(),
            Self::Files { dir, .. } => format!("files in {}", dir.display()),
        }
    }

    /// Sends one message. `id` becomes its Message-ID (and its file name), so a resend after a
    /// crash is recognisable as the same message.
    pub async fn send(&self, id: &str, to: &str, mail: &RenderedMail) -> Result<(), SendFailure> {
        let from = match self {
            Self::Smtp { from, .. } | Self::Files { from, .. } => from.clone(),
        };
        let to: Mailbox = to.parse().map_err(|e| SendFailure {
            permanent: true,
            message: format!("invalid recipient: {e}"),
        })?;
        let domain = from.email.domain().to_owned();
        let message = Message::builder()
            .from(from)
            .to(to)
            .subject(mail.subject.clone())
            .message_id(Some(format!("<{id}@{domain}>")))
            .multipart(MultiPart::alternative_plain_html(
                mail.text.clone(),
                mail.html.clone(),
            ))
            .map_err(|e| SendFailure {
                permanent: true,
                message: format!("building the message: {e}"),
            })?;
        match self {
            Self::Smtp { transport, .. } => {
                transport
                    .send(message)
                    .await
                    .map(|_| ())
                    .map_err(|e| SendFailure {
                        permanent: e.is_permanent(),
                        message: format!("smtp: {e}"),
                    })
            }
            Self::Files { dir, .. } => {
                write_eml(dir, id, &message.formatted())
                    .await
                    .map_err(|e| SendFailure {
                        permanent: false,
                        message: format!("writing the mail file: {e}"),
                    })
            }
        }
    }
}

/// Writes `<dir>/<id>.eml` atomically (temporary file, then rename): a resend replaces the
/// same file instead of adding a second one.
async fn write_eml(dir: &std::path::Path, id: &str, bytes: &[u8]) -> std::io::Result<()> {
    let dir = dir.to_path_buf();
    let id = id.to_owned();
    let bytes = bytes.to_vec();
    tokio::task::spawn_blocking(move || {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&dir)?;
        let tmp = dir.join(format!(".{id}.tmp"));
        let mut file = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&tmp)?;
        std::io::Write::write_all(&mut file, &bytes)?;
        file.sync_all()?;
        std::fs::rename(&tmp, dir.join(format!("{id}.eml")))
    })
    .await
    .map_err(std::io::Error::other)?
}
