//! Wiring: starts storage, the runtime ([`Pipeline`]: sinks, router, device arbiters, sources),
//! the control plane (restarts, commands, hosted broker) and the HTTP server, and runs the
//! coordinated shutdown: stop forwarding from MQTT, drain device actors, flush the sinks (which
//! acknowledges what became durable), disconnect, all within a deadline.

use std::sync::Arc;
use std::time::Duration;

use fleetflow_actors::pipeline::{Pipeline, PipelineSettings, RunningPipeline};
use fleetflow_actors::source;
use fleetflow_actors::source_manager::PasswordOpener;
use fleetflow_protocol::schedule::ScheduleBook;
use fleetflow_protocol::topic::TopicParser;
use metrics_exporter_prometheus::PrometheusHandle;

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
    /// The data path could not start (`[mqtt]` publisher or `[cluster]` settings).
    #[error(transparent)]
    Pipeline(#[from] fleetflow_actors::pipeline::StartError),
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
    pipeline: RunningPipeline,
    http_task: tokio::task::JoinHandle<()>,
    stats_task: tokio::task::JoinHandle<()>,
    restart_worker: tokio::task::JoinHandle<()>,
    hosted_task: Option<tokio::task::JoinHandle<()>>,
    /// The retention task, when `[retention]` sets any period.
    retention_task: Option<tokio::task::JoinHandle<()>>,
    /// The old restart webhook's listener, when `[restart_webhook] bind` is set.
    webhook_task: Option<tokio::task::JoinHandle<()>>,
    /// The wake-schedule reloader and the device-command queue.
    control_tasks: [tokio::task::JoinHandle<()>; 2],
    deadline: Duration,
    /// The bound HTTP address.
    pub http_addr: std::net::SocketAddr,
}

/// Storage clients and the schedule book, which both the runtime and the control plane use.
struct Storage {
    pool: deadpool_postgres::Pool,
    store: Arc<dyn object_store::ObjectStore>,
    book: Arc<ScheduleBook>,
    schedules_task: tokio::task::JoinHandle<()>,
}

impl Engine {
    /// Starts everything; must run inside an actix `System`: storage, the runtime
    /// ([`Pipeline::start`]), then the control plane (restarts, commands, hosted broker, HTTP),
    /// which holds only the runtime's [`Pipeline`] handle.
    pub async fn start(cfg: Config, prometheus: PrometheusHandle) -> Result<Self, EngineError> {
        let secret_key =
            crate::secrets::SecretKey::from_env().map_err(|e| EngineError::Admin(e.to_string()))?;
        let st = start_storage(&cfg).await?;
        let pipeline = Pipeline::start(PipelineSettings {
            pool: st.pool.clone(),
            pg_url: cfg.postgres.url.clone(),
            store: st.store.clone(),
            mqtt: cfg.mqtt.clone(),
            sinks: cfg.sinks.clone(),
            objects: cfg.objects.clone(),
            assembly: cfg.assembly.clone(),
            devices: cfg.devices.clone(),
            publish_log: cfg.publish_log.clone(),
            book: st.book.clone(),
            passwords: secret_key
                .clone()
                .map(|k| Arc::new(k) as Arc<dyn PasswordOpener>),
            reconcile_every: Duration::from_secs(cfg.admin.restart_poll_secs.max(1)),
            cluster: cfg.cluster.clone(),
        })?;
        let p = pipeline.handle.clone();
        let commands = crate::command_queue::CommandSender::new(
            p.clone(),
            TopicParser::new(cfg.mqtt.topic_prefix.clone()),
        );
        let commands_task = crate::command_queue::spawn(
            st.pool.clone(),
            cfg.postgres.url.clone(),
            commands.clone(),
        );
        let restarter = crate::restart::Restarter::new(
            st.pool.clone(),
            p.clone(),
            cfg.postgres.clone(),
            cfg.objects.clone(),
        );
        let restart_worker = crate::restart::spawn_worker(
            restarter.clone(),
            cfg.postgres.url.clone(),
            Duration::from_secs(cfg.admin.restart_poll_secs.max(1)),
        );
        let (hosted, hosted_task) = start_hosted(&cfg, st.pool.clone(), secret_key.clone())?;
        let admin = admin_state(&cfg, &st, &p, &prometheus, restarter, commands, hosted)?;
        let admin = crate::admin::AdminState {
            secret_key,
            ..admin
        };
        let webhook_task = serve_restart_webhook(&cfg, &admin).await?;
        let (http_addr, http_task) =
            serve_http(&cfg, &st, prometheus, p.connected(), admin).await?;
        let retention_task =
            crate::retention::spawn(st.pool.clone(), st.store.clone(), cfg.retention.clone());
        let stats_task = crate::fleet_stats::spawn(
            st.pool.clone(),
            Duration::from_millis(cfg.http.fleet_stats_interval_ms),
            cfg.alerts.clone(),
        );
        tracing::info!(
            mqtt = %cfg.mqtt.url,
            prefix = %cfg.mqtt.topic_prefix,
            postgres = %redact_url(&cfg.postgres.url),
            objects = %cfg.objects.url,
            http = %http_addr,
            "fleetflow engine started"
        );
        Ok(Self {
            pipeline,
            http_task,
            stats_task,
            restart_worker,
            control_tasks: [st.schedules_task, commands_task],
            hosted_task,
            webhook_task,
            retention_task,
            deadline: Duration::from_millis(cfg.shutdown.deadline_ms),
            http_addr,
        })
    }
}

/// Migrations, the pool, the object store and the wake-schedule book (loaded, then kept
/// current by its reloader).
async fn start_storage(cfg: &Config) -> Result<Storage, EngineError> {
    if cfg.postgres.migrate_on_start {
        let n = db::migrate(&cfg.postgres).await?;
        tracing::info!(applied = n, "database schema is up to date");
    }
    let pool = db::pool(&cfg.postgres)?;
    let store = objects::build(&cfg.objects)?;
    let book = Arc::new(ScheduleBook::new());
    let schedules_task =
        crate::schedules::spawn(pool.clone(), cfg.postgres.url.clone(), book.clone())
            .await
            .map_err(|e| EngineError::Admin(format!("loading wake schedules: {e}")))?;
    Ok(Storage {
        pool,
        store,
        book,
        schedules_task,
    })
}

/// The admin API's state (without the secret key, which the caller moves in).
fn admin_state(
    cfg: &Config,
    st: &Storage,
    pipeline: &Pipeline,
    prometheus: &PrometheusHandle,
    restarter: crate::restart::Restarter,
    commands: crate::command_queue::CommandSender,
    hosted: Option<crate::hosted::Hosted>,
) -> Result<crate::admin::AdminState, EngineError> {
    let admin_tokens = cfg.admin.resolve_named_tokens()?;
    let restart_tokens: Vec<(String, String)> = cfg
        .admin
        .resolve_restart_token()?
        .map(|t| ("restart".to_string(), t))
        .into_iter()
        .collect();
    if admin_tokens.is_empty() {
        tracing::warn!("no admin token configured (FLEETFLOW_ADMIN__TOKEN, admin.token_file or admin.tokens_file): the admin API and console are disabled");
    }
    Ok(crate::admin::AdminState {
        pool: st.pool.clone(),
        store: st.store.clone(),
        signer: fleetflow_actors::sinks::signer::build(&cfg.objects)?,
        pipeline: pipeline.clone(),
        tokens: Arc::new(crate::admin::tokens::AdminTokens::new(
            admin_tokens,
            restart_tokens,
        )),
        audit: Arc::new(crate::admin::audit::Audit::new(st.pool.clone())),
        prometheus: prometheus.clone(),
        restarter,
        cooldown_secs: cfg.admin.restart_cooldown_secs,
        restart_max: cfg.admin.restart_max_per_window,
        commands,
        book: st.book.clone(),
        secret_key: None,
        hosted,
    })
}

/// Binds `[http] bind` and serves `/metrics`, `/health`, `/ready`, the admin API and console.
async fn serve_http(
    cfg: &Config,
    st: &Storage,
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
        pool: st.pool.clone(),
        store: st.store.clone(),
        mqtt_connected,
    })
    .merge(crate::admin::routes(admin));
    let task = tokio::spawn(async move {
        let app = app.into_make_service_with_connect_info::<std::net::SocketAddr>();
        if let Err(e) = axum::serve(listener, app).await {
            tracing::error!(error = %e, "HTTP server failed");
        }
    });
    Ok((http_addr, task))
}

/// Serves the old restart webhook's calls on `[restart_webhook] bind`, when set; it needs the
/// restart token.
async fn serve_restart_webhook(
    cfg: &Config,
    admin: &crate::admin::AdminState,
) -> Result<Option<tokio::task::JoinHandle<()>>, EngineError> {
    let Some(bind) = &cfg.restart_webhook.bind else {
        return Ok(None);
    };
    if !admin.tokens.has_restart() {
        return Err(EngineError::Admin(
            "restart_webhook.bind is set but admin.restart_token (FLEETFLOW_ADMIN__RESTART_TOKEN or admin.restart_token_file) is not".into(),
        ));
    }
    let listener = tokio::net::TcpListener::bind(bind)
        .await
        .map_err(|e| EngineError::Bind(bind.clone(), e))?;
    let addr = listener
        .local_addr()
        .map_err(|e| EngineError::Bind(bind.clone(), e))?;
    let app = crate::admin::restart_webhook::routes(admin.clone());
    tracing::info!(%addr, "restart webhook listening (GET /health, POST /restart)");
    Ok(Some(tokio::spawn(async move {
        let app = app.into_make_service_with_connect_info::<std::net::SocketAddr>();
        if let Err(e) = axum::serve(listener, app).await {
            tracing::error!(error = %e, "restart webhook server failed");
        }
    })))
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
    /// Graceful shutdown: the runtime stops in order (stop forwarding, drain device actors,
    /// flush sinks so that acks follow each commit, disconnect), then the control plane's tasks.
    /// Whatever is left after the deadline is logged and abandoned; the broker redelivers
    /// everything that was not acknowledged.
    pub async fn shutdown(self) -> bool {
        let started = tokio::time::Instant::now();
        tracing::info!(
            deadline_ms = self.deadline.as_millis() as u64,
            "shutting down"
        );
        let clean = self.pipeline.shutdown(started + self.deadline).await;
        self.http_task.abort();
        self.stats_task.abort();
        self.restart_worker.abort();
        for t in &self.control_tasks {
            t.abort();
        }
        for t in [self.hosted_task, self.webhook_task, self.retention_task]
            .into_iter()
            .flatten()
        {
            t.abort();
        }
        tracing::info!(
            elapsed_ms = started.elapsed().as_millis() as u64,
            clean,
            "shutdown complete"
        );
        clean
    }
}
