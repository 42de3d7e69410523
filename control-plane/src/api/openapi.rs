//! The OpenAPI document, generated from the handlers' annotations (served at `/openapi.json`).

use utoipa::openapi::security::{Http, HttpAuthScheme, SecurityScheme};
use utoipa::{Modify, OpenApi};

use super::{admin, admin_dedicated, admin_fleet, auth, billing, dedicated, devices, error, me};

#[derive(Debug, OpenApi)]
#[openapi(
    info(title = "TrueVault VPN control plane", description = "Customer and operator REST API"),
    paths(
        auth::register, auth::login, auth::refresh, auth::logout, auth::verify_email,
        auth::resend_verification, auth::request_password_reset, auth::confirm_password_reset,
        me::me, me::update_profile, me::change_password, me::close_account, me::rotate_scanner_token, me::identities,
        admin::list_users, admin::get_user, admin::list_vips, admin::upsert_vip, admin::remove_vip, admin::list_audit,
        admin::list_tasks, admin::retry_task, admin::cancel_task, admin::extend_trial,
        devices::list_plans, devices::list_servers, devices::validate_promo, devices::list_devices,
        devices::create_device, devices::rename_device, devices::delete_device, devices::rotate_key,
        devices::device_config, devices::device_qr_png, devices::device_qr_svg,
        admin_fleet::list_servers, admin_fleet::add_server, admin_fleet::retire_server, admin_fleet::evacuate_server, admin_fleet::enrollment_token, admin_fleet::revoke_certificates,
        admin_fleet::update_plan, admin_fleet::change_plan, admin_fleet::suspend, admin_fleet::restore,
        admin_dedicated::list_pool, admin_dedicated::add_to_pool, admin_dedicated::set_pool_status,
        admin_dedicated::list_orders, admin_dedicated::place_manual_order, admin_dedicated::retry_order, admin_dedicated::refund_order,
        dedicated::list_purchases,
        billing::checkout, billing::get_subscription, billing::cancel_subscription, billing::paypal_webhook, billing::list_invoices, billing::invoice, billing::invoice_page,
    ),
    components(schemas(error::ErrorBody, error::ErrorObject)),
    modifiers(&BearerAuth),
    tags((name = "auth"), (name = "account"), (name = "devices"), (name = "billing"), (name = "dedicated"), (name = "admin")),
)]
pub struct ApiDoc;

#[derive(Debug)]
struct BearerAuth;

impl Modify for BearerAuth {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(Http::new(HttpAuthScheme::Bearer)),
        );
    }
}
