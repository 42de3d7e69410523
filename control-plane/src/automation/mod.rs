//! Automation: scheduled workflows and mail. This part holds the mail outbox that domain
//! transactions write to; delivery (templates, SMTP, retries) is built on top of it.

pub mod outbox;
