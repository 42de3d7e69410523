//! Mail templates: files under `control-plane/templates/mail/`, compiled into the binary and
//! rendered with minijinja. Each mail has a subject, a text part and an HTML part; HTML
//! templates escape every value, so user data (names) cannot inject markup.

use minijinja::{AutoEscape, Environment, Output, State, UndefinedBehavior};
use serde_json::Value;

use crate::error::{Error, Result};

macro_rules! mail_templates {
    ($($name:literal),* $(,)?) => {
        /// Every mail the control plane sends.
        pub const MAIL_TEMPLATES: &[&str] = &[$($name),*];
        const SOURCES: &[(&str, &str)] = &[
            ("layout.html", include_str!("../../templates/mail/layout.html")),
            $(
                (concat!($name, ".subject"), include_str!(concat!("../../templates/mail/", $name, ".subject"))),
                (concat!($name, ".txt"), include_str!(concat!("../../templates/mail/", $name, ".txt"))),
                (concat!($name, ".html"), include_str!(concat!("../../templates/mail/", $name, ".html"))),
            )*
        ];
    };
}

mail_templates!(
    "welcome_trial",
    "trial_getting_started",
    "trial_day1_tips",
    "trial_ending_soon",
    "trial_last_day",
    "trial_expired",
    "dedicated_processing",
    "dedicated_ready",
    "dedicated_delayed",
    "order_failed",
    "order_refunded",
    "duplicate_cancelled",
    "duplicate_refunded",
    "payment_failed",
    "renewal_reminder",
    "subscription_cancelled",
    "devices_moved",
    "account_closed",
    "password_changed",
    "welcome_vip",
    "verify_email",
    "password_reset",
    "task_dead",
);

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RenderedMail {
    pub subject: String,
    pub text: String,
    pub html: String,
}

#[derive(Debug)]
pub struct MailRenderer {
    env: Environment<'static>,
    dashboard_url: String,
}

impl MailRenderer {
    /// `public_url` is the customer site; mails link to `<public_url>/dashboard/...`.
    pub fn new(public_url: &str) -> Result<Self> {
        let mut env = Environment::new();
        // A placeholder missing from the context is an error, not an empty string in a mail.
        env.set_undefined_behavior(UndefinedBehavior::Strict);
        env.set_formatter(html_formatter);
        for (name, source) in SOURCES {
            env.add_template(name, source)
                .map_err(|e| Error::internal(format!("mail template {name}: {e}")))?;
        }
        Ok(Self {
            env,
            dashboard_url: format!("{}/dashboard/", public_url.trim_end_matches('/')),
        })
    }

    pub fn render(&self, template: &str, context: &Value) -> Result<RenderedMail> {
        if !MAIL_TEMPLATES.contains(&template) {
            return Err(Error::internal(format!(
                "no mail template named {template}"
            )));
        }
        let mut ctx = match context {
            Value::Object(map) => map.clone(),
            _ => serde_json::Map::new(),
        };
        ctx.entry("dashboard_url")
            .or_insert_with(|| Value::String(self.dashboard_url.clone()));
        ctx.entry("first_name")
            .or_insert(Value::String(String::new()));
        let ctx = minijinja::Value::from_serialize(&ctx);
        let render = |part: &str| -> Result<String> {
            let name = format!("{template}.{part}");
            self.env
                .get_template(&name)
                .and_then(|t| t.render(&ctx))
                .map_err(|e| Error::internal(format!("rendering {name}: {e:#}")))
        };
        let subject = render("subject")?
            .lines()
            .next()
            .unwrap_or_default()
            .trim()
            .to_owned();
        Ok(RenderedMail {
            subject,
            text: render("txt")?,
            html: render("html")?,
        })
    }
}

/// HTML parts escape `& < > " '` in every value not marked safe. (minijinja's default also
/// escapes `/`, which turns every link into `https:&#x2f;&#x2f;...` in the mail's source.)
fn html_formatter(
    out: &mut Output<'_>,
    state: &State<'_, '_>,
    value: &minijinja::Value,
) -> Result<(), minijinja::Error> {
    if !matches!(state.auto_escape(), AutoEscape::Html) || value.is_safe() || value.is_undefined() {
        return minijinja::escape_formatter(out, state, value);
    }
    let text = if value.is_none() {
        String::new()
    } else {
        value.to_string()
    };
    let mut escaped = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => escaped.push_str("&amp;"),
            '<' => escaped.push_str("&lt;"),
            '>' => escaped.push_str("&gt;"),
            '"' => escaped.push_str("&quot;"),
            '\'' => escaped.push_str("&#39;"),
            c => escaped.push(c),
        }
    }
    out.write_str(&escaped)
        .map_err(|e| minijinja::Error::new(minijinja::ErrorKind::WriteFailure, e.to_string()))
}

/// A date as people read it in a mail, e.g. "November 30, 2026" (UTC).
pub fn human_date(ms: crate::clock::Millis) -> String {
    const MONTHS: [&str; 12] = [
        "January",
        "February",
        "March",
        "April",
        "May",
        "June",
        "July",
        "August",
        "September",
        "October",
        "November",
        "December",
    ];
    let (year, month, day) = civil_from_days(ms.div_euclid(crate::clock::DAY));
    let month = MONTHS[usize::try_from(month - 1).unwrap_or(0)];
    format!("{month} {day}, {year}")
}

/// Days since 1970-01-01 to (year, month, day), proleptic Gregorian (H. Hinnant's algorithm).
fn civil_from_days(days: i64) -> (i64, i64, i64) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn context_for(template: &str) -> Value {
        json!({
            "first_name": "Ada <script>alert(1)</script>",
            "trial_ends": "November 30, 2026",
            "verify_url": "https://vpn.example/verify-email?token=abc",
            "reset_url": "https://vpn.example/reset-password?token=def",
            "expires_at": "2026-11-24T21:00:00.000Z",
            "vip_badge": "\u{1f451} VIP Dedicated",
            "tier": if template == "welcome_vip" { "vip_dedicated" } else { "" },
            "region": "us-east",
            "stage": "first",
            "days_left": 8,
            "plan": "Personal",
            "renews_on": "December 24, 2026",
            "address": "203.0.113.7",
            "location": "us-east (USA)",
            "order_id": 42,
            "email": "ada@example.com",
            "reason": "the node agent did not connect before the deadline",
            "instance": "200100",
            "was": "configuring",
            "user_id": 7,
            "sale": "SALE-9",
            "amount": "9.99 USD",
            "kept_plan": "Family",
            "id": 12,
            "key": "refund_duplicate_payment:SALE-9",
            "workflow": "payments",
            "step": "refund_duplicate_payment",
            "customer": "ada@example.com",
            "attempts": 8,
            "error": "upstream_error: HTTP 503",
            "remedy": "Refund sale SALE-9 (9.99 USD) in full at PayPal.",
            "access_until": "December 24, 2026",
            "changed_at": "2026-11-24T10:00:00.000Z",
            "how": "reset",
            "paypal": true,
        })
    }

    #[test]
    fn every_template_renders_all_three_parts_and_escapes_html() {
        let r = MailRenderer::new("https://vpn.example/").unwrap();
        for name in MAIL_TEMPLATES {
            let mail = r.render(name, &context_for(name)).unwrap();
            assert!(
                !mail.subject.is_empty() && !mail.subject.contains('\n'),
                "{name}"
            );
            assert!(
                mail.text.contains("Ada <script>"),
                "{name}: text part keeps the name as written"
            );
            assert!(
                mail.html.contains("Ada &lt;script&gt;"),
                "{name}: HTML must escape user data"
            );
            assert!(!mail.html.contains("<script>"), "{name}");
            assert!(mail.html.starts_with("<!DOCTYPE html>"), "{name}");
        }
    }

    #[test]
    fn placeholders_are_filled() {
        let r = MailRenderer::new("https://vpn.example").unwrap();
        let mail = r
            .render("trial_ending_soon", &context_for("trial_ending_soon"))
            .unwrap();
        assert!(
            mail.text
                .contains("Your free trial ends in 2 days (November 30, 2026).")
        );
        assert!(mail.text.contains("https://vpn.example/dashboard/billing"));
        assert!(
            mail.html
                .contains("href=\"https://vpn.example/dashboard/billing\"")
        );
        let vip = r
            .render("welcome_vip", &context_for("welcome_vip"))
            .unwrap();
        assert!(vip.subject.starts_with("\u{1f451} VIP Dedicated"));
        assert!(vip.text.contains("A dedicated server"));
        // No first name: a friendly fallback rather than "Hi ,".
        let anon = r.render("trial_expired", &json!({})).unwrap();
        assert!(anon.text.starts_with("Hi there,"));
    }

    #[test]
    fn a_missing_placeholder_is_an_error() {
        let r = MailRenderer::new("https://vpn.example").unwrap();
        assert!(
            r.render("verify_email", &json!({ "first_name": "A" }))
                .is_err()
        );
        assert!(r.render("no_such_template", &json!({})).is_err());
    }

    #[test]
    fn dates_read_naturally() {
        assert_eq!(human_date(0), "January 1, 1970");
        assert_eq!(human_date(1_796_073_498_723), "November 30, 2026");
        assert_eq!(human_date(951_782_400_000), "February 29, 2000");
    }
}
