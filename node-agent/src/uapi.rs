//! The userspace device's control socket (WireGuard's cross-platform UAPI), for what
//! defguard_wireguard_rs does one peer per connection: a whole difference in at most two
//! `set` operations.
//!
//! Why: each `set` makes boringtun stop all of its worker threads and take its device lock,
//! and defguard sends each peer as a separate connection in three writes, which the device
//! reads while holding that lock. One message per difference costs one lock round; a batch
//! of 1,000 changes costs about what one did.
//!
//! boringtun carries a section's flags (`remove`, `replace_allowed_ips`) over into the next
//! peer's section, so removals and additions never share a message: every section of one
//! message sets the same flags.

use std::io::{self, BufRead as _, BufReader, Write as _};
use std::os::unix::net::UnixStream;
use std::time::Duration;

use defguard_wireguard_rs::peer::Peer;

/// How long the device may take to answer one message (10,000 peers take about 1.5 s).
const ANSWER_TIMEOUT: Duration = Duration::from_secs(15);

fn socket_path(interface: &str) -> String {
    format!("/var/run/wireguard/{interface}.sock")
}

/// Sends one UAPI message and returns the device's errno (0 is success).
fn exchange(interface: &str, message: &[u8], timeout: Duration) -> io::Result<i32> {
    let mut socket = UnixStream::connect(socket_path(interface))?;
    socket.set_read_timeout(Some(timeout))?;
    socket.set_write_timeout(Some(timeout))?;
    socket.write_all(message)?;
    let mut reader = BufReader::new(socket);
    let mut line = String::new();
    loop {
        line.clear();
        if reader.read_line(&mut line)? == 0 {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "the device closed its control socket without an answer",
            ));
        }
        if let Some(errno) = line.trim_end().strip_prefix("errno=") {
            return errno
                .parse()
                .map_err(|_| io::Error::new(io::ErrorKind::InvalidData, "unreadable errno"));
        }
    }
}

/// Removes every peer in `remove` in one `set`.
pub fn remove_all(interface: &str, remove: &[Peer]) -> io::Result<()> {
    set(interface, remove.iter().map(Peer::as_uapi_remove))
}

/// Adds every peer in `add` (none of which may be on the device: boringtun cannot modify a
/// peer in place) in one `set`.
pub fn add_all(interface: &str, add: &[Peer]) -> io::Result<()> {
    set(interface, add.iter().map(Peer::as_uapi_update))
}

fn set(interface: &str, sections: impl Iterator<Item = String>) -> io::Result<()> {
    let mut message = String::from("set=1\n");
    let mut any = false;
    for section in sections {
        message.push_str(&section);
        any = true;
    }
    if !any {
        return Ok(());
    }
    message.push('\n');
    match exchange(interface, message.as_bytes(), ANSWER_TIMEOUT)? {
        0 => Ok(()),
        errno => Err(io::Error::other(format!(
            "the device refused the change (errno {errno})"
        ))),
    }
}

/// Whether the device answers at all. It is asked a command it does not know, which it answers
/// with an errno line at once (`get=1` would make it list every peer).
pub fn answers(interface: &str) -> bool {
    exchange(interface, b"ping=1\n\n", Duration::from_secs(2)).is_ok()
}
