//! Invoices: gapless numbers, line items and discounts, one per payment, as JSON and as a
//! printable page.
//!
//! The number comes from `invoice_sequence`, bumped inside the transaction that writes the
//! invoice: a rolled-back payment leaves no hole (the bump rolls back with it), and concurrent
//! payments queue on that one row (PostgreSQL) or on SQLite's single writer.

use minijinja::{AutoEscape, Environment, context};
use serde::{Deserialize, Serialize};
use sqlx::any::AnyRow;
use sqlx::{AnyConnection, Row as _};
use utoipa::ToSchema;

use crate::clock::{Millis, rfc3339};
use crate::error::{Error, Result};
use crate::storage::Db;

const PAGE: &str = include_str!("../../templates/invoice.html");

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema, PartialEq, Eq)]
pub struct LineItem {
    pub description: String,
    pub amount_cents: i64,
}

/// What an invoice is for.
#[derive(Debug, Clone)]
pub struct NewInvoice {
    pub user_id: i64,
    pub payment_id: Option<i64>,
    pub currency: String,
    pub items: Vec<LineItem>,
    pub discount_cents: i64,
    pub period: Option<(Millis, Millis)>,
}

#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct InvoiceView {
    /// `TV-000042`.
    pub number: String,
    pub status: String,
    pub currency: String,
    pub items: Vec<LineItem>,
    pub subtotal_cents: i64,
    pub discount_cents: i64,
    pub tax_cents: i64,
    pub total_cents: i64,
    pub period_start: Option<String>,
    pub period_end: Option<String>,
    pub issued_at: String,
}

pub fn display_number(number: i64) -> String {
    format!("TV-{number:06}")
}

/// Writes a paid invoice with the next number; returns the number.
pub async fn issue(conn: &mut AnyConnection, invoice: NewInvoice, now: Millis) -> Result<i64> {
    let subtotal: i64 = invoice.items.iter().map(|i| i.amount_cents).sum();
    if subtotal < 0 || invoice.discount_cents < 0 || invoice.discount_cents > subtotal {
        return Err(Error::internal(format!(
            "invoice amounts do not add up: subtotal {subtotal}, discount {}",
            invoice.discount_cents
        )));
    }
    let (number,): (i64,) = sqlx::query_as(
        "UPDATE invoice_sequence SET last_number = last_number + 1 WHERE id = 1 RETURNING last_number",
    )
    .fetch_one(&mut *conn)
    .await?;
    let items = serde_json::to_string(&invoice.items).map_err(Error::internal)?;
    sqlx::query(
        "INSERT INTO invoices (number, user_id, payment_id, currency, subtotal_cents, discount_cents,
                               tax_cents, total_cents, status, line_items, period_start, period_end,
                               issued_at, created_at)
         VALUES ($1, $2, $3, $4, $5, $6, 0, $7, 'paid', $8, $9, $10, $11, $11)",
    )
    .bind(number)
    .bind(invoice.user_id)
    .bind(invoice.payment_id)
    .bind(&invoice.currency)
    .bind(subtotal)
    .bind(invoice.discount_cents)
    .bind(subtotal - invoice.discount_cents)
    .bind(items)
    .bind(invoice.period.map(|p| p.0))
    .bind(invoice.period.map(|p| p.1))
    .bind(now)
    .execute(&mut *conn)
    .await?;
    Ok(number)
}

const SELECT: &str =
    "SELECT number, status, currency, line_items, subtotal_cents, discount_cents, tax_cents,
        total_cents, period_start, period_end, issued_at FROM invoices";

fn view(r: &AnyRow) -> std::result::Result<InvoiceView, sqlx::Error> {
    let items: String = r.try_get(3)?;
    Ok(InvoiceView {
        number: display_number(r.try_get(0)?),
        status: r.try_get(1)?,
        currency: r.try_get(2)?,
        items: serde_json::from_str(&items).unwrap_or_default(),
        subtotal_cents: r.try_get(4)?,
        discount_cents: r.try_get(5)?,
        tax_cents: r.try_get(6)?,
        total_cents: r.try_get(7)?,
        period_start: r.try_get::<Option<i64>, _>(8)?.map(rfc3339),
        period_end: r.try_get::<Option<i64>, _>(9)?.map(rfc3339),
        issued_at: rfc3339(r.try_get(10)?),
    })
}

/// A user's invoices, newest first.
pub async fn list(db: &Db, user_id: i64) -> Result<Vec<InvoiceView>> {
    let rows = sqlx::query(sqlx::AssertSqlSafe(format!(
        "{SELECT} WHERE user_id = $1 ORDER BY number DESC LIMIT 500"
    )))
    .bind(user_id)
    .fetch_all(db.pool())
    .await?;
    Ok(rows
        .iter()
        .map(view)
        .collect::<std::result::Result<_, _>>()?)
}

/// One of the user's invoices by its number (`TV-000042` or `42`); another user's is not found.
pub async fn get(db: &Db, user_id: i64, number: &str) -> Result<InvoiceView> {
    let number: i64 = number
        .trim()
        .trim_start_matches("TV-")
        .parse()
        .map_err(|_| Error::NotFound("invoice"))?;
    let row = sqlx::query(sqlx::AssertSqlSafe(format!(
        "{SELECT} WHERE user_id = $1 AND number = $2"
    )))
    .bind(user_id)
    .bind(number)
    .fetch_optional(db.pool())
    .await?
    .ok_or(Error::NotFound("invoice"))?;
    Ok(view(&row)?)
}

/// One of the user's invoices as a printable page, billed to their name and address.
pub async fn page(db: &Db, user_id: i64, number: &str) -> Result<String> {
    let invoice = get(db, user_id, number).await?;
    let (email, first, last): (String, String, String) =
        sqlx::query_as("SELECT email, first_name, last_name FROM users WHERE id = $1")
            .bind(user_id)
            .fetch_one(db.pool())
            .await?;
    let name = format!("{first} {last}");
    let customer = match name.trim() {
        "" => email,
        name => format!("{name} <{email}>"),
    };
    render_html(&invoice, &customer)
}

/// The invoice as a printable HTML page (values escaped).
pub fn render_html(invoice: &InvoiceView, customer: &str) -> Result<String> {
    let mut env = Environment::new();
    env.set_auto_escape_callback(|_| AutoEscape::Html);
    env.add_template("invoice.html", PAGE)
        .map_err(Error::internal)?;
    let money = |cents: i64| format!("{}.{:02}", cents / 100, (cents % 100).abs());
    let items: Vec<(String, String)> = invoice
        .items
        .iter()
        .map(|i| (i.description.clone(), money(i.amount_cents)))
        .collect();
    env.get_template("invoice.html")
        .and_then(|t| {
            t.render(context! {
                number => invoice.number,
                status => invoice.status,
                customer => customer,
                issued_at => invoice.issued_at.get(..10).unwrap_or(&invoice.issued_at),
                period_start => invoice.period_start.as_deref().and_then(|p| p.get(..10)),
                period_end => invoice.period_end.as_deref().and_then(|p| p.get(..10)),
                currency => invoice.currency,
                items => items,
                subtotal => money(invoice.subtotal_cents),
                discount => (invoice.discount_cents > 0).then(|| money(invoice.discount_cents)),
                tax => money(invoice.tax_cents),
                total => money(invoice.total_cents),
            })
        })
        .map_err(Error::internal)
}
