//! The schema migrations, embedded at build time from `migrations/<engine>/`.

use std::borrow::Cow;

use sqlx::SqlSafeStr;
use sqlx::migrate::{Migration, MigrationType, Migrator};

use super::Engine;

#[derive(Debug, Clone, Copy)]
pub(crate) struct EmbeddedMigration {
    pub version: i64,
    pub description: &'static str,
    pub sql: &'static str,
}

include!(concat!(env!("OUT_DIR"), "/migrations.rs"));

pub(crate) fn embedded(engine: Engine) -> &'static [EmbeddedMigration] {
    match engine {
        Engine::Sqlite => SQLITE,
        Engine::Postgres => POSTGRES,
    }
}

pub(crate) fn migrator(engine: Engine) -> Migrator {
    let migrations = embedded(engine)
        .iter()
        .map(|m| {
            Migration::new(
                m.version,
                Cow::Borrowed(m.description),
                MigrationType::Simple,
                SqlSafeStr::into_sql_str(m.sql),
                false,
            )
        })
        .collect();
    Migrator::with_migrations(migrations)
}

/// Versions present in one engine's folder but not the other's; empty when they agree.
pub fn version_drift() -> Vec<String> {
    let versions = |e| embedded(e).iter().map(|m| m.version).collect::<Vec<_>>();
    let (lite, pg) = (versions(Engine::Sqlite), versions(Engine::Postgres));
    let mut drift = Vec::new();
    for v in &lite {
        if !pg.contains(v) {
            drift.push(format!("version {v} exists for sqlite but not postgres"));
        }
    }
    for v in &pg {
        if !lite.contains(v) {
            drift.push(format!("version {v} exists for postgres but not sqlite"));
        }
    }
    drift
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn both_engines_have_the_same_migration_versions() {
        assert!(!SQLITE.is_empty());
        assert_eq!(version_drift(), Vec::<String>::new());
        let descriptions = |m: &[EmbeddedMigration]| {
            m.iter()
                .map(|m| (m.version, m.description))
                .collect::<Vec<_>>()
        };
        assert_eq!(descriptions(SQLITE), descriptions(POSTGRES));
    }

    /// The embedded list must be exactly the folder's content (the build script could be stale
    /// only if cargo skipped it; this guards against a file without the `.sql` suffix too).
    #[test]
    fn embedded_list_matches_the_folders() {
        for (engine, folder) in [(Engine::Sqlite, "sqlite"), (Engine::Postgres, "postgres")] {
            let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
                .join("../migrations")
                .join(folder);
            let mut files: Vec<String> = std::fs::read_dir(&dir)
                .unwrap()
                .map(|e| e.unwrap().file_name().into_string().unwrap())
                .collect();
            files.sort();
            assert!(
                files.iter().all(|f| f.ends_with(".sql")),
                "{folder}: every file in a migrations folder must be a .sql migration: {files:?}"
            );
            assert_eq!(files.len(), embedded(engine).len(), "{folder}");
        }
    }
}
