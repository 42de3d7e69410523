//! Embeds `migrations/sqlite` and `migrations/postgres` into the binary, so a deployed control
//! plane migrates itself with nothing but its executable (and without sqlx's proc macros, which
//! would compile both database drivers a second time for the host).

// A build script reports problems by panicking with a message.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

fn main() {
    let root = PathBuf::from(std::env::var("CARGO_MANIFEST_DIR").expect("manifest dir"))
        .join("../migrations");
    println!("cargo:rerun-if-changed={}", root.display());
    let mut out = String::new();
    for (engine, constant) in [("sqlite", "SQLITE"), ("postgres", "POSTGRES")] {
        let dir = root.join(engine);
        println!("cargo:rerun-if-changed={}", dir.display());
        writeln!(
            out,
            "pub(crate) const {constant}: &[EmbeddedMigration] = &["
        )
        .unwrap();
        for (version, description, path) in list(&dir) {
            writeln!(
                out,
                "    EmbeddedMigration {{ version: {version}, description: {description:?}, sql: include_str!({path:?}) }},",
                path = path.display()
            )
            .unwrap();
        }
        writeln!(out, "];").unwrap();
    }
    let dest = PathBuf::from(std::env::var("OUT_DIR").expect("out dir")).join("migrations.rs");
    std::fs::write(dest, out).expect("write migrations.rs");
}

fn list(dir: &Path) -> Vec<(i64, String, PathBuf)> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display())) {
        let path = entry.expect("dir entry").path();
        let Some(name) = path.file_name().and_then(|n| n.to_str()) else {
            continue;
        };
        let Some(stem) = name.strip_suffix(".sql") else {
            continue;
        };
        let (version, description) = stem.split_once('_').unwrap_or_else(|| {
            panic!("migration {name} must be named <version>_<description>.sql")
        });
        let version: i64 = version
            .parse()
            .unwrap_or_else(|_| panic!("migration {name} must start with a number"));
        println!("cargo:rerun-if-changed={}", path.display());
        found.push((
            version,
            description.replace('_', " "),
            path.canonicalize().expect("path"),
        ));
    }
    found.sort();
    found
}
