//! The client's WireGuard configuration (wg-quick format) and its QR code for phones.

use std::fmt::Write as _;

use qrcode::QrCode;
use qrcode::render::svg;

use crate::error::{Error, Result};
use crate::secret::Secret;

/// Stands where the private key goes when the client generated its own (and kept it).
pub const PRIVATE_KEY_PLACEHOLDER: &str = "<your device's private key>";

#[derive(Debug)]
pub struct ConfigInput<'a> {
    pub device_name: &'a str,
    /// None when the client holds its private key.
    pub private_key: Option<&'a Secret>,
    pub ipv4: &'a str,
    pub ipv6: Option<&'a str>,
    pub dns: &'a [String],
    pub server_public_key: &'a str,
    pub endpoint_host: &'a str,
    pub endpoint_port: u16,
}

/// Renders the config. Every value is either validated (keys, addresses) or produced here, so
/// nothing a user typed can add a line: the device name goes in a comment with line breaks
/// removed.
pub fn render(c: &ConfigInput<'_>) -> String {
    let name: String = c
        .device_name
        .chars()
        .filter(|ch| !ch.is_control())
        .collect();
    let mut addresses = format!("{}/32", c.ipv4);
    if let Some(v6) = c.ipv6 {
        addresses.push_str(&format!(", {v6}/128"));
    }
    let host = if c.endpoint_host.contains(':') {
        format!("[{}]", c.endpoint_host)
    } else {
        c.endpoint_host.to_owned()
    };
    let mut out = String::new();
    let _ = writeln!(out, "# TrueVault VPN: {name}");
    let _ = writeln!(out, "[Interface]");
    let _ = writeln!(
        out,
        "PrivateKey = {}",
        c.private_key
            .map_or(PRIVATE_KEY_PLACEHOLDER, Secret::expose)
    );
    let _ = writeln!(out, "Address = {addresses}");
    if !c.dns.is_empty() {
        let _ = writeln!(out, "DNS = {}", c.dns.join(", "));
    }
    let _ = writeln!(out);
    let _ = writeln!(out, "[Peer]");
    let _ = writeln!(out, "PublicKey = {}", c.server_public_key);
    let _ = writeln!(out, "Endpoint = {host}:{}", c.endpoint_port);
    let _ = writeln!(out, "AllowedIPs = 0.0.0.0/0, ::/0");
    let _ = writeln!(out, "PersistentKeepalive = 25");
    out
}

fn qr(text: &str) -> Result<QrCode> {
    QrCode::new(text.as_bytes()).map_err(|e| Error::internal(format!("QR code: {e}")))
}

pub fn qr_svg(text: &str) -> Result<String> {
    Ok(qr(text)?
        .render::<svg::Color<'_>>()
        .min_dimensions(320, 320)
        .quiet_zone(true)
        .build())
}

/// A black-on-white PNG, 8 pixels a module, with the standard 4-module quiet zone.
pub fn qr_png(text: &str) -> Result<Vec<u8>> {
    const SCALE: usize = 8;
    const QUIET: usize = 4;
    let code = qr(text)?;
    let modules = code.width();
    let colors = code.to_colors();
    let side = (modules + 2 * QUIET) * SCALE;
    let mut pixels = vec![255u8; side * side];
    for (i, color) in colors.iter().enumerate() {
        if *color == qrcode::Color::Dark {
            let (mx, my) = (i % modules + QUIET, i / modules + QUIET);
            for y in my * SCALE..(my + 1) * SCALE {
                pixels[y * side + mx * SCALE..y * side + (mx + 1) * SCALE].fill(0);
            }
        }
    }
    let mut png = Vec::new();
    let side = u32::try_from(side).map_err(|_| Error::internal("QR code too large"))?;
    let mut encoder = png::Encoder::new(&mut png, side, side);
    encoder.set_color(png::ColorType::Grayscale);
    encoder.set_depth(png::BitDepth::Eight);
    encoder
        .write_header()
        .and_then(|mut w| w.write_image_data(&pixels))
        .map_err(|e| Error::internal(format!("PNG: {e}")))?;
    Ok(png)
}
