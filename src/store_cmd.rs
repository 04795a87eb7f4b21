//! `signet store`: the PostgreSQL schema, and moving an appliance from
//! sled to PostgreSQL. sled needs no schema (it is created on first open);
//! a PostgreSQL database gets signet's tables from `migrations/postgres/`,
//! applied here by an officer before the first start and after each
//! upgrade.

use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use clap::Subcommand;
use serde_json::json;
use signet::config::{Config, Overrides};
use signet::store::SledStore;
use signet::store::postgres_store::{
    DEFAULT_TOMBSTONE_GRACE_MS, MIGRATIONS, PgOptions, PgStore, SCHEMA_VERSION,
};

#[derive(Subcommand)]
pub enum StoreCommand {
    /// Apply the PostgreSQL migrations the database of [store.postgres]
    /// lacks (each in its own transaction; instances migrating at the same
    /// time apply each once). Safe to repeat: an up-to-date database is left
    /// as it is.
    #[command(after_help = "Examples:\n  \
signet store migrate --config /etc/signet/signet.toml\n  \
signet store migrate --config /etc/signet/signet.toml --json")]
    Migrate {
        /// The service's configuration; its [store.postgres] table names
        /// the database, the password file and the CA.
        #[arg(long, value_name = "FILE")]
        config: PathBuf,
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Copy a stopped appliance's sled store into an empty, migrated
    /// PostgreSQL database, in one transaction, and verify it: every table
    /// is read back and compared with the source (record count and a
    /// SHA-256 over the records). A difference rolls the copy back.
    #[command(after_help = "Examples:\n  \
signet store copy --from sled:/var/lib/signet/data --to postgres:postgresql://signet@db.bank.example/signet --password-file /etc/signet/postgres/password --ca /etc/signet/postgres/ca.pem\n  \
signet store copy --from sled:var/dev/data --to postgres:postgresql://signet@127.0.0.1:5432/signet --password-file pw --ca ca.pem --json")]
    Copy {
        /// The source: sled:DIR, the data directory of a stopped service.
        #[arg(long, value_name = "sled:DIR")]
        from: String,
        /// The target: postgres:URL (postgresql://USER@HOST:PORT/DATABASE,
        /// migrated with `signet store migrate`, holding no signet data).
        #[arg(long, value_name = "postgres:URL")]
        to: String,
        /// The database role's password (mode 0600 or 0640).
        #[arg(long, value_name = "FILE")]
        password_file: PathBuf,
        /// The CA the database server's certificate chains to (PEM).
        #[arg(long, value_name = "PEM")]
        ca: PathBuf,
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
    },
}

pub fn run(command: StoreCommand) -> anyhow::Result<()> {
    match command {
        StoreCommand::Copy {
            from,
            to,
            password_file,
            ca,
            json,
        } => copy(&from, &to, &password_file, &ca, json),
        StoreCommand::Migrate { config, json } => {
            let loaded = Config::load(&config, &Overrides::from_env())
                .map_err(|e| anyhow::anyhow!("{}: {e}", config.display()))?;
            let Some(pg) = &loaded.store.postgres else {
                anyhow::bail!(
                    "{}: store.postgres: no [store.postgres] table (sled needs no migration)",
                    config.display()
                );
            };
            let options = pg
                .options(DEFAULT_TOMBSTONE_GRACE_MS)
                .map_err(|e| anyhow::anyhow!("{}: {e}", config.display()))?;
            let now_ms = SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX));
            let applied = PgStore::migrate(&options, now_ms)
                .map_err(|e| anyhow::anyhow!("store.postgres: {}: {e}", pg.url))?;
            if json {
                println!(
                    "{}",
                    serde_json::to_string_pretty(&json!({
                        "database": pg.url,
                        "applied": applied,
                        "schemaVersion": SCHEMA_VERSION,
                    }))?
                );
            } else if applied.is_empty() {
                println!("{}: schema version {SCHEMA_VERSION}, up to date", pg.url);
            } else {
                for version in &applied {
                    let name = MIGRATIONS
                        .iter()
                        .find(|m| m.0 == *version)
                        .map_or("", |m| m.1);
                    println!("{}: applied migration {version:04} ({name})", pg.url);
                }
                println!("{}: schema version {SCHEMA_VERSION}", pg.url);
            }
            Ok(())
        }
    }
}

fn copy(from: &str, to: &str, password_file: &Path, ca: &Path, json: bool) -> anyhow::Result<()> {
    let Some(dir) = from.strip_prefix("sled:") else {
        anyhow::bail!("--from: {from:?} is not sled:DIR");
    };
    let Some(url) = to.strip_prefix("postgres:") else {
        anyhow::bail!("--to: {to:?} is not postgres:URL");
    };
    let dir = Path::new(dir);
    // SledStore::open would create an empty store where none is.
    if !dir.join("db").is_file() {
        anyhow::bail!("--from: {}: no signet store there", dir.display());
    }
    signet::files::refuse_exposed_private_key(password_file)
        .map_err(|e| anyhow::anyhow!("--password-file: {e}"))?;
    let settings = signet::config::PostgresSettings {
        url: url.to_string(),
        password_file: password_file.to_path_buf(),
        ca: ca.to_path_buf(),
        pool_size: 1,
        connect_timeout: std::time::Duration::from_secs(10),
    };
    let options: PgOptions = settings
        .options(DEFAULT_TOMBSTONE_GRACE_MS)
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    let source = SledStore::open(dir).map_err(|e| {
        anyhow::anyhow!(
            "--from: {}: {e} (is the service still running? sled locks the directory)",
            dir.display()
        )
    })?;
    let target = PgStore::connect(&options).map_err(|e| anyhow::anyhow!("--to: {url}: {e}"))?;
    let started = std::time::Instant::now();
    let reports = target
        .import(&mut |visit| source.export(visit))
        .map_err(|e| anyhow::anyhow!("copy to {url}: {e}; nothing was written"))?;
    let seconds = started.elapsed().as_secs_f64();
    if json {
        println!(
            "{}",
            serde_json::to_string_pretty(&json!({
                "from": from, "to": url, "seconds": seconds, "tables": reports,
            }))?
        );
    } else {
        println!(
            "copied {} to {url} in {seconds:.1} s, verified:",
            dir.display()
        );
        println!("  {:<13} {:>9} {:>9}  sha256", "table", "read", "written");
        for r in &reports {
            println!(
                "  {:<13} {:>9} {:>9}  {}",
                r.table,
                r.source,
                r.target,
                signet::hex::encode(&r.sha256)
            );
        }
    }
    Ok(())
}
