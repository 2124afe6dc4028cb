//! The schema, as numbered SQL migrations embedded in the binary ([`MIGRATIONS`], files in `migrations/`), applied
//! at start by [`apply`].
//!
//! Each applied migration is a row of `hookrelay_schema_migrations`. [`apply`] takes a session advisory lock
//! ([`MIGRATION_LOCK`]) on a connection of its own, so replicas starting together apply each migration once: the
//! others wait, then find it applied. Each migration runs in its own transaction with its row. A database whose
//! schema is newer than this binary's is refused rather than used with a schema it does not know.

use deadpool_postgres::Pool;

use super::{db_error, pool_error};
use crate::error::{Error, Result};

/// The key of the advisory lock held while migrations are applied ("hookrelay" and 1, as text bytes).
const MIGRATION_LOCK: i64 = 0x6872_6d69_6772_0001;

/// One schema change.
#[derive(Debug, Clone, Copy)]
pub(super) struct Migration {
    /// Its position; applied in ascending order, each once.
    pub(super) version: i32,
    /// A short name, recorded with the version.
    pub(super) name: &'static str,
    /// The statements.
    pub(super) sql: &'static str,
}

/// Every migration this binary knows, in order. A new one is a file in `migrations/` and a line here.
pub(super) const MIGRATIONS: &[Migration] = &[
    Migration { version: 1, name: "config", sql: include_str!("migrations/0001_config.sql") },
    Migration { version: 2, name: "delivery_log", sql: include_str!("migrations/0002_delivery_log.sql") },
];

/// Brings the database's schema to the newest of [`MIGRATIONS`].
pub(super) async fn apply(pool: &Pool) -> Result<()> {
    apply_these(pool, MIGRATIONS).await
}

/// Applies those of `migrations` the database lacks, under the migration lock; refuses a database that has one
/// newer than the last of them.
pub(super) async fn apply_these(pool: &Pool, migrations: &[Migration]) -> Result<()> {
    // Taken out of the pool: the session lock ends with this connection, whatever fails below.
    let mut client = deadpool_postgres::Object::take(pool.get().await.map_err(pool_error)?);
    client.execute("SELECT pg_advisory_lock($1)", &[&MIGRATION_LOCK]).await.map_err(db_error)?;
    client
        .batch_execute(
            "CREATE TABLE IF NOT EXISTS hookrelay_schema_migrations (
                 version int PRIMARY KEY,
                 name text NOT NULL,
                 applied_at timestamptz NOT NULL DEFAULT now()
             )",
        )
        .await
        .map_err(db_error)?;
    let applied: Vec<i32> = client
        .query("SELECT version FROM hookrelay_schema_migrations ORDER BY version", &[])
        .await
        .map_err(db_error)?
        .iter()
        .map(|row| row.get(0))
        .collect();
    let known = migrations.last().map_or(0, |migration| migration.version);
    if let Some(&newest) = applied.last()
        && newest > known
    {
        return Err(Error::SchemaTooNew { found: newest, known });
    }
    for migration in migrations.iter().filter(|migration| !applied.contains(&migration.version)) {
        let tx = client.transaction().await.map_err(db_error)?;
        tx.batch_execute(migration.sql).await.map_err(|error| {
            Error::Database(format!("migration {} ({}) failed: {error}", migration.version, migration.name))
        })?;
        tx.execute(
            "INSERT INTO hookrelay_schema_migrations (version, name) VALUES ($1, $2)",
            &[&migration.version, &migration.name],
        )
        .await
        .map_err(db_error)?;
        tx.commit().await.map_err(db_error)?;
        tracing::info!(version = migration.version, name = migration.name, "applied a schema migration");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::postgres::tests::pool_for;

    async fn versions(pool: &Pool) -> Vec<(i32, String)> {
        let client = pool.get().await.unwrap();
        let rows = client.query("SELECT version, name FROM hookrelay_schema_migrations ORDER BY version", &[]);
        rows.await.unwrap().iter().map(|row| (row.get(0), row.get(1))).collect()
    }

    fn all_versions() -> Vec<(i32, String)> {
        MIGRATIONS.iter().map(|migration| (migration.version, migration.name.to_owned())).collect()
    }

    #[test]
    fn migrations_are_numbered_in_order_and_named_like_their_files() {
        for (index, migration) in MIGRATIONS.iter().enumerate() {
            assert_eq!(migration.version, i32::try_from(index).unwrap() + 1, "{}", migration.name);
            assert!(!migration.sql.trim().is_empty());
        }
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("src/store/postgres/migrations");
        let mut files: Vec<String> =
            std::fs::read_dir(dir).unwrap().map(|entry| entry.unwrap().file_name().into_string().unwrap()).collect();
        files.sort();
        let expected: Vec<String> =
            MIGRATIONS.iter().map(|migration| format!("{:04}_{}.sql", migration.version, migration.name)).collect();
        assert_eq!(files, expected, "every file in migrations/ is listed, in order");
    }

    #[tokio::test]
    async fn an_empty_database_gets_every_migration_once_even_from_replicas_starting_together() {
        let Some(url) = fresh_url() else { return };
        let replicas: Vec<Pool> = (0..4).map(|_| pool_for(&url)).collect();
        let results = futures::future::join_all(replicas.iter().map(apply)).await;
        assert!(results.iter().all(Result::is_ok), "{results:?}");
        assert_eq!(versions(&replicas[0]).await, all_versions());
        // Applying again changes nothing.
        apply(&replicas[1]).await.unwrap();
        assert_eq!(versions(&replicas[1]).await, all_versions());
    }

    #[tokio::test]
    async fn a_database_at_the_previous_version_is_brought_up_to_date() {
        let Some(url) = fresh_url() else { return };
        let pool = pool_for(&url);
        let previous = &MIGRATIONS[..MIGRATIONS.len() - 1];
        apply_these(&pool, previous).await.unwrap();
        assert_eq!(versions(&pool).await.len(), previous.len());
        apply(&pool).await.unwrap();
        assert_eq!(versions(&pool).await, all_versions());
    }

    #[tokio::test]
    async fn a_database_newer_than_the_binary_is_refused() {
        let Some(url) = fresh_url() else { return };
        let pool = pool_for(&url);
        apply(&pool).await.unwrap();
        let next = MIGRATIONS.len() as i32 + 1;
        let client = pool.get().await.unwrap();
        client
            .execute("INSERT INTO hookrelay_schema_migrations (version, name) VALUES ($1, 'from_the_future')", &[&next])
            .await
            .unwrap();
        let error = apply(&pool).await.unwrap_err();
        assert!(matches!(error, Error::SchemaTooNew { .. }), "{error:?}");
        assert_eq!(
            error.to_string(),
            format!(
                "the database's schema is at version {next}, newer than this control's ({}); run a control at least \
                 as new as the one that last migrated it",
                next - 1
            )
        );
    }

    fn fresh_url() -> Option<String> {
        Some(hookrelay_tests::postgres::postgres()?.fresh_database())
    }
}
