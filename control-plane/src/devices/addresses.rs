//! Tunnel addresses. Each server has an IPv4 subnet (a /16 by default) and an IPv6 ULA /64;
//! a device gets one host index, the same in both (`10.8.0.7` and `fd..::7`). Allocation is
//! O(1): a released index past its quarantine is reused, otherwise the server's `next_host`
//! counter advances. The subnet is never scanned, and `UNIQUE(server_id, host)` backs it.

use std::net::{Ipv4Addr, Ipv6Addr};

use sqlx::AnyConnection;

use crate::clock::Millis;
use crate::error::{Error, FieldError, Result};
use crate::storage::Engine;

/// The first host index given to devices: `.0` is the network, `.1` the server.
pub const FIRST_DEVICE_HOST: i64 = 2;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Subnets {
    pub v4: (Ipv4Addr, u8),
    pub v6: Option<(Ipv6Addr, u8)>,
}

impl Subnets {
    pub fn parse(v4: &str, v6: Option<&str>) -> Result<Self> {
        let v4 = parse_v4(v4)?;
        let v6 = v6.map(parse_v6).transpose()?;
        Ok(Self { v4, v6 })
    }

    /// The largest host index usable in both subnets (the IPv4 broadcast address excluded).
    pub fn max_host(&self) -> i64 {
        let v4 = (1i64 << (32 - u32::from(self.v4.1))) - 2;
        match self.v6 {
            Some((_, prefix)) => {
                let bits = 128 - u32::from(prefix);
                let v6 = if bits >= 62 {
                    i64::MAX
                } else {
                    (1i64 << bits) - 1
                };
                v4.min(v6)
            }
            None => v4,
        }
    }

    pub fn ipv4(&self, host: i64) -> Ipv4Addr {
        let base = u32::from(self.v4.0);
        Ipv4Addr::from(base + u32::try_from(host).unwrap_or(0))
    }

    pub fn ipv6(&self, host: i64) -> Option<Ipv6Addr> {
        self.v6
            .map(|(net, _)| Ipv6Addr::from(u128::from(net) + u128::try_from(host).unwrap_or(0)))
    }
}

fn bad_subnet(field: &'static str, message: String) -> Error {
    Error::Validation(vec![FieldError::new(field, "invalid", message)])
}

pub fn parse_v4(cidr: &str) -> Result<(Ipv4Addr, u8)> {
    let (addr, prefix) = cidr
        .trim()
        .split_once('/')
        .ok_or_else(|| bad_subnet("ipv4_subnet", "expected a CIDR such as 10.8.0.0/16".into()))?;
    let addr: Ipv4Addr = addr
        .parse()
        .map_err(|_| bad_subnet("ipv4_subnet", format!("{addr} is not an IPv4 address")))?;
    let prefix: u8 = prefix
        .parse()
        .ok()
        .filter(|p| (8..=29).contains(p))
        .ok_or_else(|| {
            bad_subnet(
                "ipv4_subnet",
                "the prefix must be between /8 and /29".into(),
            )
        })?;
    let mask = u32::MAX << (32 - u32::from(prefix));
    if u32::from(addr) & !mask != 0 {
        return Err(bad_subnet(
            "ipv4_subnet",
            format!("{cidr} is not a network address"),
        ));
    }
    if !addr.is_private() {
        return Err(bad_subnet(
            "ipv4_subnet",
            "tunnel addresses must be private (RFC 1918)".into(),
        ));
    }
    Ok((addr, prefix))
}

pub fn parse_v6(cidr: &str) -> Result<(Ipv6Addr, u8)> {
    let (addr, prefix) = cidr.trim().split_once('/').ok_or_else(|| {
        bad_subnet(
            "ipv6_subnet",
            "expected a CIDR such as fd00:1:2:3::/64".into(),
        )
    })?;
    let addr: Ipv6Addr = addr
        .parse()
        .map_err(|_| bad_subnet("ipv6_subnet", format!("{addr} is not an IPv6 address")))?;
    let prefix: u8 = prefix
        .parse()
        .ok()
        .filter(|p| (48..=112).contains(p))
        .ok_or_else(|| {
            bad_subnet(
                "ipv6_subnet",
                "the prefix must be between /48 and /112".into(),
            )
        })?;
    let mask = u128::MAX << (128 - u32::from(prefix));
    if u128::from(addr) & !mask != 0 {
        return Err(bad_subnet(
            "ipv6_subnet",
            format!("{cidr} is not a network address"),
        ));
    }
    if addr.segments()[0] & 0xfe00 != 0xfc00 {
        return Err(bad_subnet(
            "ipv6_subnet",
            "tunnel addresses must be unique local (fc00::/7)".into(),
        ));
    }
    Ok((addr, prefix))
}

/// A random ULA /64 (RFC 4193), for a server created without one.
pub fn random_ula64() -> String {
    let r = uuid::Uuid::new_v4().as_u128();
    let global = (r >> 88) & 0xff_ffff_ffff; // 40 random bits
    let subnet = (r >> 40) & 0xffff;
    let net = (0xfdu128 << 120) | (global << 80) | (subnet << 64);
    format!("{}/64", Ipv6Addr::from(net))
}

/// Takes a host index on `server_id`: a released one past its quarantine (looked for only if
/// the server `has_released` any), else a new one. None when the subnet is full.
pub async fn allocate(
    conn: &mut AnyConnection,
    engine: Engine,
    server_id: i64,
    max_host: i64,
    has_released: bool,
    now: Millis,
) -> Result<Option<i64>> {
    if has_released && let Some(host) = reuse(conn, engine, server_id, now).await? {
        return Ok(Some(host));
    }
    let fresh: Option<(i64,)> = sqlx::query_as(
        "UPDATE vpn_servers SET next_host = next_host + 1 WHERE id = $1 AND next_host <= $2 RETURNING next_host - 1",
    )
    .bind(server_id)
    .bind(max_host)
    .fetch_optional(conn)
    .await?;
    Ok(fresh.map(|(h,)| h))
}

/// The longest-released address whose quarantine is over, taken off the list.
async fn reuse(
    conn: &mut AnyConnection,
    engine: Engine,
    server_id: i64,
    now: Millis,
) -> Result<Option<i64>> {
    let reuse = match engine {
        Engine::Postgres => {
            "DELETE FROM released_addresses WHERE server_id = $1 AND host =
               (SELECT host FROM released_addresses WHERE server_id = $1 AND available_at <= $2
                ORDER BY available_at LIMIT 1 FOR UPDATE SKIP LOCKED)
             RETURNING host"
        }
        Engine::Sqlite => {
            "DELETE FROM released_addresses WHERE server_id = $1 AND host =
               (SELECT host FROM released_addresses WHERE server_id = $1 AND available_at <= $2
                ORDER BY available_at LIMIT 1)
             RETURNING host"
        }
    };
    let reused: Option<(i64,)> = sqlx::query_as(reuse)
        .bind(server_id)
        .bind(now)
        .fetch_optional(conn)
        .await?;
    Ok(reused.map(|(h,)| h))
}

/// Returns a host index to the server, usable again after `available_at`.
pub async fn release(
    conn: &mut AnyConnection,
    server_id: i64,
    host: i64,
    available_at: Millis,
) -> Result<()> {
    sqlx::query(
        "INSERT INTO released_addresses (server_id, host, available_at) VALUES ($1, $2, $3)
         ON CONFLICT (server_id, host) DO NOTHING",
    )
    .bind(server_id)
    .bind(host)
    .bind(available_at)
    .execute(conn)
    .await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn maps_host_indexes_into_both_subnets() {
        let s = Subnets::parse("10.8.0.0/16", Some("fd12:3456:789a:1::/64")).unwrap();
        assert_eq!(s.max_host(), 65_534);
        assert_eq!(s.ipv4(2).to_string(), "10.8.0.2");
        assert_eq!(s.ipv4(256).to_string(), "10.8.1.0");
        assert_eq!(s.ipv4(65_534).to_string(), "10.8.255.254");
        assert_eq!(s.ipv6(2).unwrap().to_string(), "fd12:3456:789a:1::2");
        // A small IPv6 subnet bounds the host indexes too.
        let narrow = Subnets::parse("10.0.0.0/8", Some("fd00::/112")).unwrap();
        assert_eq!(narrow.max_host(), 65_535);
    }

    #[test]
    fn rejects_bad_subnets() {
        for bad in [
            "10.8.0.1/16",
            "10.8.0.0",
            "10.8.0.0/31",
            "8.8.8.0/24",
            "x/16",
        ] {
            assert!(parse_v4(bad).is_err(), "{bad}");
        }
        for bad in ["2001:db8::/64", "fd00::1/64", "fd00::/40"] {
            assert!(parse_v6(bad).is_err(), "{bad}");
        }
        let ula = random_ula64();
        assert!(parse_v6(&ula).is_ok(), "{ula}");
    }
}
