//! Wiring: starts the sinks, the router with its device arbiters, the MQTT source and the HTTP
//! server, and runs the coordinated shutdown: stop forwarding from MQTT, drain device actors,
//! flush the sinks (which acknowledges what became durable), disconnect, all within a deadline.

use std::sync::Arc;
use std::time::Duration;

use actix::prelude::*;
use fleetflow_actors::device::DeviceDeps;
use fleetflow_actors::router::{DeviceRouter, RawPublish, StopAll};
use fleetflow_actors::sinks::objects::ObjectSink;
use fleetflow_actors::sinks::pg::{Flush, PgSink};
use fleetflow_actors::source;
use fleetflow_protocol::budget::GlobalBudget;
use fleetflow_protocol::schedule::ScheduleBook;
use fleetflow_protocol::topic::TopicParser;
use metrics_exporter_prometheus::PrometheusHandle;
use tokio::sync::mpsc;

use crate::config::{redact_url, Config};
use crate::{db, http};
use fleetflow_actors::sinks::object_store as objects;

/// Startup failures.
#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    /// Database.
    #[error(transparent)]
    Db(#[from] db::DbError),
    /// Object store.
    #[error(transparent)]
    Objects(#[from] objects::ObjectsError),
    /// MQTT settings.
    #[error(transparent)]
    Source(#[from] source::SourceError),
    /// Admin settings.
    #[error("{0}")]
    Admin(String),
    /// A token or password file.
    #[error(transparent)]
    Secret(#[from] crate::config::SecretFileError),
    /// HTTP bind.
    #[error("http.bind {0}: {1}")]
    Bind(String, std::io::Error),
}

/// A running engine.
pub struct Engine {
    sources: tokio::sync::watch::Sender<fleetflow_actors::source_manager::ManagerControl>,
    sources_task: tokio::task::JoinHandle<()>,
    admin_source: source::SourceHandle,
    router: Addr<DeviceRouter>,
    pg: Addr<PgSink>,
    arbiters: Arc<Vec<ArbiterHandle>>,
    http_task: tokio::task::JoinHandle<()>,
    stats_task: tokio::task::JoinHandle<()>,
    restart_worker: tokio::task::JoinHandle<()>,
    hosted_task: Option<tokio::task::JoinHandle<()>>,
    /// The wake-schedule reloader and the device-command queue.
    control_tasks: [tokio::task::JoinHandle<()>; 2],
    deadline: Duration,
    /// The bound HTTP address.
    pub http_addr: std::net::SocketAddr,
}

/// The runtime's parts, started in dependency order, that the control plane wires together.
struct Runtime {
    pool: deadpool_postgres::Pool,
    store: Arc<dyn object_store::ObjectStore>,
    pg: Addr<PgSink>,
    sinks: crate::restart::Sinks,
    router: Addr<DeviceRouter>,
    arbiters: Arc<Vec<ArbiterHandle>>,
    book: Arc<ScheduleBook>,
    schedules_task: tokio::task::JoinHandle<()>,
}

impl Engine {
    /// Starts everything; must run inside an actix `System`: the runtime (storage, sinks,
    /// router, sources), then the control plane (restarts, commands, hosted broker, HTTP).
    pub async fn start(cfg: Config, prometheus: PrometheusHandle) -> Result<Self, EngineError> {
        // Validate the [mqtt] section now, so that bad settings fail at startup.
        source::options(&cfg.mqtt)?;
        let secret_key =
            crate::secrets::SecretKey::from_env().map_err(|e| EngineError::Admin(e.to_string()))?;
        let (tx, rx) = mpsc::channel::<RawPublish>(source::ROUTER_QUEUE_CAPACITY);
        let rt = start_runtime(&cfg, rx).await?;
        let mut manager = fleetflow_actors::source_manager::SourceManager::new(
            rt.pool.clone(),
            cfg.postgres.url.clone(),
            cfg.mqtt.clone(),
            tx,
            rt.pg.clone(),
            secret_key
                .clone()
                .map(|k| Arc::new(k) as Arc<dyn fleetflow_actors::source_manager::PasswordOpener>),
        );
        // Sources start once the router exists; they feed its queue.
        manager.set_router(rt.router.clone());
        let links = manager.links.clone();
        let (sources, sources_restart, sources_connected, sources_task) =
            manager.spawn(Duration::from_secs(cfg.admin.restart_poll_secs.max(1)));
        // Commands from the admin API go out on a connection of their own.
        let mut admin_mqtt = cfg.mqtt.clone();
        admin_mqtt.client_id = format!("{}-admin", cfg.mqtt.client_id);
        admin_mqtt.clean_start = true;
        let admin_source = source::spawn_publisher(&admin_mqtt)?;
        let commands = crate::command_queue::CommandSender::new(
            rt.router.clone(),
            admin_source.link.clone(),
            TopicParser::new(cfg.mqtt.topic_prefix.clone()),
        );
        let commands_task = crate::command_queue::spawn(
            rt.pool.clone(),
            cfg.postgres.url.clone(),
            commands.clone(),
        );
        let restarter = crate::restart::Restarter::new(rt.pool.clone(), rt.router.clone())
            .with_sources(sources_restart)
            .with_sinks(rt.sinks.clone());
        let restart_worker = crate::restart::spawn_worker(
            restarter.clone(),
            cfg.postgres.url.clone(),
            Duration::from_secs(cfg.admin.restart_poll_secs.max(1)),
        );
        let (hosted, hosted_task) = start_hosted(&cfg, rt.pool.clone(), secret_key.clone())?;
        let admin = admin_state(&cfg, &rt, &prometheus, restarter, commands, links, hosted)?;
        let admin = crate::admin::AdminState {
            secret_key,
            ..admin
        };
        let (http_addr, http_task) =
            serve_http(&cfg, &rt, prometheus, sources_connected, admin).await?;
        let stats_task = crate::fleet_stats::spawn(
            rt.pool.clone(),
            Duration::from_millis(cfg.http.fleet_stats_interval_ms),
        );
        tracing::info!(
            mqtt = %cfg.mqtt.url,
            prefix = %cfg.mqtt.topic_prefix,
            postgres = %redact_url(&cfg.postgres.url),
            objects = %cfg.objects.url,
            http = %http_addr,
            arbiters = rt.arbiters.len(),
            "fleetflow engine started"
        );
        Ok(Self {
            pg: rt.pg,
            sources,
            sources_task,
            admin_source,
            router: rt.router,
            arbiters: rt.arbiters,
            http_task,
            stats_task,
            restart_worker,
            control_tasks: [rt.schedules_task, commands_task],
            hosted_task,
            deadline: Duration::from_millis(cfg.shutdown.deadline_ms),
            http_addr,
        })
    }
}

/// Storage (migrations, pool, object store), the sinks, the schedule book and the router with
/// its device arbiters.
async fn start_runtime(
    cfg: &Config,
    rx: mpsc::Receiver<RawPublish>,
) -> Result<Runtime, EngineError> {
    if cfg.postgres.migrate_on_start {
        let n = db::migrate(&cfg.postgres).await?;
        tracing::info!(applied = n, "database schema is up to date");
    }
    let pool = db::pool(&cfg.postgres)?;
    let store = objects::build(&cfg.objects)?;
    let (sinks_cfg, pg_pool) = (cfg.sinks.clone(), pool.clone());
    let pg = PgSink::create(move |_| PgSink::new(pg_pool, sinks_cfg));
    let (obj_store, obj_pg, obj_cfg) = (store.clone(), pg.clone(), cfg.objects.clone());
    let objects = ObjectSink::create(move |_| ObjectSink::new(obj_store, obj_pg, obj_cfg));
    let sinks = crate::restart::Sinks {
        pg: pg.clone(),
        objects: objects.clone(),
        postgres: cfg.postgres.clone(),
        objects_cfg: cfg.objects.clone(),
    };
    let book = Arc::new(ScheduleBook::new());
    let schedules_task =
        crate::schedules::spawn(pool.clone(), cfg.postgres.url.clone(), book.clone())
            .await
            .map_err(|e| EngineError::Admin(format!("loading wake schedules: {e}")))?;
    let arbiters = match cfg.devices.arbiters {
        0 => std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(2),
        n => n,
    };
    let arbiters: Arc<Vec<ArbiterHandle>> =
        Arc::new((0..arbiters).map(|_| Arbiter::new().handle()).collect());
    let router = start_router(cfg, rx, &pg, objects, &book, arbiters.clone());
    Ok(Runtime {
        pool,
        store,
        pg,
        sinks,
        router,
        arbiters,
        book,
        schedules_task,
    })
}

/// The device router, fed by the sources' queue, with what every device actor shares.
fn start_router(
    cfg: &Config,
    rx: mpsc::Receiver<RawPublish>,
    pg: &Addr<PgSink>,
    objects: Addr<ObjectSink>,
    book: &Arc<ScheduleBook>,
    arbiters: Arc<Vec<ArbiterHandle>>,
) -> Addr<DeviceRouter> {
    let budget = Arc::new(GlobalBudget::new(cfg.assembly.global_budget_bytes));
    let assembly = Arc::new(cfg.assembly.clone());
    let devices = Arc::new(cfg.devices.clone());
    let (pg, book) = (pg.clone(), book.clone());
    DeviceRouter::create(move |ctx| {
        let deps = DeviceDeps {
            assembly,
            devices,
            budget,
            pg,
            objects,
            router: ctx.address(),
            book,
        };
        let stream =
            futures::stream::unfold(rx, |mut rx| async move { rx.recv().await.map(|m| (m, rx)) });
        ctx.add_stream(stream);
        let mut r = DeviceRouter::new(arbiters);
        r.set_deps(deps);
        r
    })
}

/// The admin API's state (without the secret key, which the caller moves in).
fn admin_state(
    cfg: &Config,
    rt: &Runtime,
    prometheus: &PrometheusHandle,
    restarter: crate::restart::Restarter,
    commands: crate::command_queue::CommandSender,
    links: fleetflow_actors::source_manager::Links,
    hosted: Option<crate::hosted::Hosted>,
) -> Result<crate::admin::AdminState, EngineError> {
    let token = cfg.admin.resolve_token()?;
    let restart_token = cfg.admin.resolve_restart_token()?;
    if token.is_none() {
        tracing::warn!("no admin token configured (FLEETFLOW_ADMIN__TOKEN or admin.token_file): the admin API and console are disabled");
    }
    Ok(crate::admin::AdminState {
        pool: rt.pool.clone(),
        store: rt.store.clone(),
        router: rt.router.clone(),
        token: token.map(Arc::from),
        prometheus: prometheus.clone(),
        restarter,
        cooldown_secs: cfg.admin.restart_cooldown_secs,
        restart_max: cfg.admin.restart_max_per_window,
        restart_token: restart_token.map(Arc::from),
        commands,
        book: rt.book.clone(),
        secret_key: None,
        links,
        hosted,
    })
}

/// Binds `[http] bind` and serves `/metrics`, `/health`, `/ready`, the admin API and console.
async fn serve_http(
    cfg: &Config,
    rt: &Runtime,
    prometheus: PrometheusHandle,
    mqtt_connected: Arc<std::sync::atomic::AtomicBool>,
    admin: crate::admin::AdminState,
) -> Result<(std::net::SocketAddr, tokio::task::JoinHandle<()>), EngineError> {
    let listener = tokio::net::TcpListener::bind(&cfg.http.bind)
        .await
        .map_err(|e| EngineError::Bind(cfg.http.bind.clone(), e))?;
    let http_addr = listener
        .local_addr()
        .map_err(|e| EngineError::Bind(cfg.http.bind.clone(), e))?;
    let app = http::router(http::HttpState {
        prometheus,
        pool: rt.pool.clone(),
        store: rt.store.clone(),
        mqtt_connected,
    })
    .merge(crate::admin::routes(admin));
    let task = tokio::spawn(async move {
        if let Err(e) = axum::serve(listener, app).await {
            tracing::error!(error = %e, "HTTP server failed");
        }
    });
    Ok((http_addr, task))
}

/// Connects to the hosted broker as its admin and starts the reconcile loop, when
/// `[hosted] broker_url` is set.
#[allow(clippy::type_complexity)]
fn start_hosted(
    cfg: &Config,
    pool: deadpool_postgres::Pool,
    key: Option<crate::secrets::SecretKey>,
) -> Result<
    (
        Option<crate::hosted::Hosted>,
        Option<tokio::task::JoinHandle<()>>,
    ),
    EngineError,
> {
    let h = &cfg.hosted;
    let Some(url) = &h.broker_url else {
        return Ok((None, None));
    };
    let password = h.resolve_password()?.ok_or_else(|| {
        EngineError::Admin(
            "hosted.broker_url is set but hosted.admin_password(_file) is not".into(),
        )
    })?;
    let client_id = format!(
        "{}-dynsec-{:08x}",
        cfg.mqtt.client_id,
        rand::random::<u32>()
    );
    let (seen_tx, seen_rx) = tokio::sync::mpsc::channel(4096);
    let dynsec = crate::hosted::dynsec::Dynsec::connect(
        url,
        &h.admin_username,
        &password,
        &client_id,
        Some(seen_tx),
    )
    .map_err(|e| EngineError::Admin(e.to_string()))?;
    crate::hosted::usage::spawn(pool.clone(), seen_rx, h.client_prefix.clone());
    if key.is_none() {
        tracing::warn!("FLEETFLOW_SECRET_KEY is not set: hosted-broker credentials cannot be created, and missing broker clients cannot be re-created");
    }
    let task = crate::hosted::reconcile::Reconciler::new(pool, dynsec.clone(), h.clone(), key)
        .spawn(cfg.postgres.url.clone());
    tracing::info!(broker = %url, prefix = %h.client_prefix, "hosted broker: managing clients");
    Ok((
        Some(crate::hosted::Hosted {
            dynsec,
            cfg: h.clone(),
        }),
        Some(task),
    ))
}

impl Engine {
    /// The router, for admin queries.
    pub fn router(&self) -> &Addr<DeviceRouter> {
        &self.router
    }

    /// Graceful shutdown: stop forwarding, drain device actors, flush sinks (acks follow each
    /// commit), disconnect. Whatever is left after the deadline is logged and abandoned; the
    /// broker redelivers everything that was not acknowledged.
    pub async fn shutdown(self) -> bool {
        let started = tokio::time::Instant::now();
        let deadline = started + self.deadline;
        tracing::info!(
            deadline_ms = self.deadline.as_millis() as u64,
            "shutting down"
        );
        let _ = self
            .sources
            .send(fleetflow_actors::source_manager::ManagerControl::Drain);
        let mut clean = true;
        match tokio::time::timeout_at(deadline, self.router.send(StopAll)).await {
            Ok(Ok(n)) => tracing::info!(device_actors = n, "device actors drained"),
            Ok(Err(e)) => tracing::warn!(error = %e, "router unavailable during shutdown"),
            Err(_) => {
                clean = false;
                tracing::warn!("device actors did not drain before the deadline");
            }
        }
        match tokio::time::timeout_at(deadline, self.pg.send(Flush)).await {
            Ok(_) => tracing::info!("postgres sink flushed"),
            Err(_) => {
                clean = false;
                tracing::warn!("postgres sink did not flush before the deadline; unacknowledged messages will be redelivered");
            }
        }
        let _ = self
            .sources
            .send(fleetflow_actors::source_manager::ManagerControl::Stop);
        let _ = self.admin_source.control.send(source::SourceControl::Stop);
        if tokio::time::timeout_at(deadline + Duration::from_secs(3), self.sources_task)
            .await
            .is_err()
        {
            clean = false;
            tracing::warn!("MQTT source did not stop before the deadline");
        }
        self.http_task.abort();
        self.stats_task.abort();
        self.restart_worker.abort();
        for t in &self.control_tasks {
            t.abort();
        }
        if let Some(t) = self.hosted_task {
            t.abort();
        }
        for a in self.arbiters.iter() {
            a.stop();
        }
        tracing::info!(
            elapsed_ms = started.elapsed().as_millis() as u64,
            clean,
            "shutdown complete"
        );
        clean
    }
}
