//! Mail delivery through a real SMTP server on loopback (Debian's python3-aiosmtpd): headers
//! and parts as expected, and an outage followed by recovery delivers exactly once.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::{Engine, TestApp};
use truevault_control_plane::config::SmtpSecurity;

engine_tests!(smtp_outage_then_recovery_delivers_once_with_both_parts);

const PYTHON: &str = "/usr/bin/python3";

/// An aiosmtpd server writing what it receives into a Maildir; killed when dropped.
struct SmtpServer(Child);

impl SmtpServer {
    fn start(port: u16, maildir: &Path) -> Self {
        let child = Command::new(PYTHON)
            .args([
                "-m",
                "aiosmtpd",
                "-n",
                "-l",
                &format!("127.0.0.1:{port}"),
                "-c",
                "aiosmtpd.handlers.Mailbox",
            ])
            .arg(maildir)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start aiosmtpd");
        let deadline = Instant::now() + Duration::from_secs(20);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(Instant::now() < deadline, "aiosmtpd did not start");
            std::thread::sleep(Duration::from_millis(50));
        }
        Self(child)
    }
}

impl Drop for SmtpServer {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn aiosmtpd_available() -> bool {
    let ok = Command::new(PYTHON)
        .args(["-c", "import aiosmtpd"])
        .status()
        .is_ok_and(|s| s.success());
    if !ok {
        assert!(
            std::env::var("CI").is_err(),
            "python3-aiosmtpd is required in CI (scripts/setup.sh installs it)"
        );
        eprintln!("SKIPPED SMTP test: python3-aiosmtpd is not installed (run scripts/setup.sh)");
    }
    ok
}

async fn smtp_outage_then_recovery_delivers_once_with_both_parts(engine: Engine) {
    if !aiosmtpd_available() {
        return;
    }
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let app = TestApp::start_with(engine, |s| {
        s.smtp_host = Some("127.0.0.1".into());
        s.smtp_port = Some(port);
        s.smtp_security = SmtpSecurity::None;
        s.smtp_timeout_secs = 5;
        s.mail_from = "TrueVault VPN <hello@truevault.test>".into();
    })
    .await;
    app.register("ada@example.com").await;

    // The SMTP server is down: the mail waits for a retry, nothing is lost.
    let report = app.automation().deliver_due(10).await.unwrap();
    assert_eq!((report.sent, report.retrying, report.failed), (0, 1, 0));
    let (status, attempts, error): (String, i64, Option<String>) =
        sqlx::query_as("SELECT status, attempts, last_error FROM mail_outbox")
            .fetch_one(app.db().pool())
            .await
            .unwrap();
    assert_eq!((status.as_str(), attempts), ("pending", 1));
    assert!(error.unwrap().contains("smtp"));

    let maildir = tempfile::tempdir().unwrap();
    let _smtp = SmtpServer::start(port, &maildir.path().join("box"));
    assert_eq!(
        app.deliver_mail().await,
        0,
        "the retry waits for its backoff"
    );
    app.advance(Duration::from_secs(31));
    assert_eq!(app.deliver_mail().await, 1);
    app.advance(Duration::from_secs(3600));
    assert_eq!(app.deliver_mail().await, 0, "sent once, recorded once");

    let new = maildir.path().join("box/new");
    let messages: Vec<String> = std::fs::read_dir(&new)
        .unwrap()
        .map(|e| std::fs::read_to_string(e.unwrap().path()).unwrap())
        .collect();
    assert_eq!(messages.len(), 1, "exactly one delivery");
    let message = &messages[0];
    let (uuid,): (String,) = sqlx::query_as("SELECT uuid FROM mail_outbox")
        .fetch_one(app.db().pool())
        .await
        .unwrap();
    for header in [
        r#"From: "TrueVault VPN" <hello@truevault.test>"#.to_owned(),
        "To: ada@example.com".to_owned(),
        "Subject: Confirm your email for TrueVault VPN".to_owned(),
        format!("Message-ID: <{uuid}@truevault.test>"),
        "X-RcptTo: ada@example.com".to_owned(),
    ] {
        assert!(
            message.contains(&header),
            "missing {header:?} in:\n{message}"
        );
    }
    assert!(message.contains("Content-Type: multipart/alternative"));
    assert!(message.contains("Content-Type: text/plain; charset=utf-8"));
    assert!(message.contains("Content-Type: text/html; charset=utf-8"));
    let unfolded = message.replace("=\r\n", "").replace("=\n", "");
    assert!(unfolded.contains("/verify-email?token="), "{message}");
    let (status, sent_at): (String, Option<i64>) =
        sqlx::query_as("SELECT status, sent_at FROM mail_outbox")
            .fetch_one(app.db().pool())
            .await
            .unwrap();
    assert_eq!(status, "sent");
    assert!(sent_at.is_some());
}
