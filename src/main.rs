//! `fleetflow`: the ingestion engine's command line.

use std::path::PathBuf;

use anyhow::Context as _;
use clap::{Parser, Subcommand};
use fleetflow::config::Config;
use fleetflow::engine::Engine;
use fleetflow::{db, telemetry};

#[derive(Parser)]
#[command(
    name = "fleetflow",
    version,
    about = "Actor-based MQTT ingestion engine for camera and sensor fleets"
)]
struct Cli {
    /// Config file (TOML). Environment variables `FLEETFLOW_SECTION__KEY` override it.
    #[arg(long, short, env = "FLEETFLOW_CONFIG", global = true)]
    config: Option<PathBuf>,
    /// Log level or filter, e.g. `info` or `fleetflow_actors=debug` (overrides `[log] level`).
    #[arg(long, global = true)]
    log_level: Option<String>,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand)]
enum Command {
    /// Run the engine (the default).
    Run,
    /// Apply database migrations and exit.
    Migrate,
    /// Validate the configuration and print it with secrets removed.
    Config,
    /// Upload images kept in the dead-letter directory and mark their captures stored, then
    /// publish the dead-lettered messages of one source again through the `[mqtt]` broker.
    ReplayDeadLetters {
        /// Whose messages: `default` (the `[mqtt]` source) or a product id. Point `[mqtt]` at
        /// that product's broker (FLEETFLOW_MQTT__URL, ...) first.
        #[arg(long, default_value = "default")]
        source: String,
    },
    /// Delete a fleet's partition consumers and members bucket from NATS JetStream (cluster
    /// mode: `[cluster]` and `[mqtt] topic_prefix` name them). For a fleet taken out of
    /// service, or consumers an earlier version made with other settings. Refused while an
    /// instance is a member, and while a consumer holds messages (deleting it deletes them).
    ClusterForget {
        /// Delete even while the members bucket names live instances (they stall until
        /// restarted).
        #[arg(long)]
        force: bool,
        /// Delete consumers that still hold messages: those messages are lost.
        #[arg(long)]
        discard_pending: bool,
    },
    /// Re-seal every stored broker password under a new key (the current one comes from
    /// FLEETFLOW_SECRET_KEY or FLEETFLOW_SECRET_KEY_FILE).
    RotateSecretKey {
        /// File holding the new key (64 hex digits).
        #[arg(long)]
        new_key_file: PathBuf,
    },
}

/// mimalloc: see Cargo.toml.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let mut cfg = Config::load(cli.config.as_deref())?;
    if let Some(level) = cli.log_level {
        cfg.log.level = level;
    }
    telemetry::init_logging(&cfg.log);
    match cli.command.unwrap_or(Command::Run) {
        Command::Config => {
            print!("{}", cfg.to_redacted_toml());
            Ok(())
        }
        Command::Migrate => {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            let n = rt.block_on(db::migrate(&cfg.postgres))?;
            println!("applied {n} migration(s)");
            Ok(())
        }
        Command::ReplayDeadLetters { source } => {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            let r = rt.block_on(fleetflow::replay::replay(&cfg, &source))?;
            println!(
                "replayed {} dead letter(s), {} still failing",
                r.replayed, r.failed
            );
            if r.failed > 0 {
                anyhow::bail!("{} dead letter(s) could not be replayed", r.failed);
            }
            Ok(())
        }
        Command::RotateSecretKey { new_key_file } => {
            let old = fleetflow::secrets::SecretKey::from_env()?.ok_or_else(|| {
                anyhow::anyhow!("set FLEETFLOW_SECRET_KEY (or _FILE) to the current key")
            })?;
            let text = std::fs::read_to_string(&new_key_file)
                .with_context(|| format!("reading {}", new_key_file.display()))?;
            let new = fleetflow::secrets::SecretKey::from_hex(&text)?;
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            let n = rt.block_on(fleetflow::rotate::rotate(&cfg, &old, &new))?;
            println!("re-sealed {n} broker password(s); restart the engines with the new key");
            Ok(())
        }
        Command::ClusterForget {
            force,
            discard_pending,
        } => cluster_forget(
            &cfg,
            fleetflow_actors::cluster::ForgetOptions {
                force_members: force,
                discard_pending,
            },
        ),
        Command::Run => run(cfg),
    }
}

/// `fleetflow cluster-forget`: the fleet of `[mqtt] topic_prefix` under `[cluster]`. Exits 3
/// when it refuses and deleted nothing (live members, messages held), 4 when it deleted the
/// fleet but instances joined meanwhile (restart them), and 1 on any other error. 2 stays
/// clap's, for a mistyped command line.
fn cluster_forget(
    cfg: &Config,
    opts: fleetflow_actors::cluster::ForgetOptions,
) -> anyhow::Result<()> {
    use fleetflow_actors::cluster::{ClusterError, ForgetError};
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let prefix = &cfg.mqtt.topic_prefix;
    let f = match rt.block_on(fleetflow_actors::cluster::forget(
        &cfg.cluster,
        prefix,
        opts,
    )) {
        Ok(f) => f,
        Err(ClusterError::Forget(e)) => {
            let code = match e {
                // Refused: nothing deleted.
                ForgetError::LiveMembers { .. } | ForgetError::MessagesHeld(_) => 3,
                // Deleted, but instances joined meanwhile.
                ForgetError::JoinedMeanwhile { .. } => 4,
                ForgetError::Nats(_) => 1,
            };
            eprintln!("Error: cluster-forget: {e}");
            drop(rt);
            std::process::exit(code);
        }
        Err(e) => return Err(e.into()),
    };
    let bucket = if f.members_bucket {
        " and the members bucket"
    } else {
        ""
    };
    println!(
        "fleet {prefix:?}: deleted {} partition consumer(s){bucket}",
        f.consumers
    );
    Ok(())
}

fn run(cfg: Config) -> anyhow::Result<()> {
    let prometheus = telemetry::init_metrics().context("installing the metrics recorder")?;
    // The actix System (the router, the sinks' actors and the control-plane actors) drives its
    // own thread; everything spawned with `tokio::spawn` (the MQTT source loops, the Postgres
    // connections' I/O, the HTTP server, webhooks, the control-plane loops) runs on a
    // multi-threaded runtime of `[runtime] io_threads` workers. Device actors keep their own
    // arbiters.
    let io_threads = cfg.runtime.io_threads();
    let system = actix::System::with_tokio_rt(move || {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(io_threads)
            .enable_all()
            .thread_name("fleetflow-io")
            .build()
            .expect("a tokio runtime")
    });
    let clean = system.block_on(async move {
        let engine = Engine::start(cfg, prometheus).await?;
        wait_for_signal().await;
        Ok::<_, anyhow::Error>(engine.shutdown().await)
    })?;
    if !clean {
        tracing::warn!("shutdown was not clean; the broker redelivers what was not acknowledged");
    }
    Ok(())
}

async fn wait_for_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = match signal(SignalKind::terminate()) {
        Ok(s) => s,
        Err(e) => {
            tracing::error!(error = %e, "cannot listen for SIGTERM");
            let _ = tokio::signal::ctrl_c().await;
            return;
        }
    };
    tokio::select! {
        _ = term.recv() => tracing::info!("SIGTERM received"),
        _ = tokio::signal::ctrl_c() => tracing::info!("SIGINT received"),
    }
}
