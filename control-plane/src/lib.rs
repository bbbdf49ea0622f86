//! toolmesh: the control plane's catalog service.
//!
//! `toolmesh serve` keeps the catalog — registered MCP servers, what discovery found on them,
//! and the virtual servers composed from it — behind a REST API, and compiles it into the
//! policy the Envoy filter enforces. The app is a set of functions: [`build_state`] opens the
//! store and prepares keys and the admin token, [`api::router`] is the whole HTTP surface, and
//! [`run`] serves it until a shutdown signal; `main.rs` only parses flags and sets up logging.
//!
//! For the xDS wiring: [`api::AppState::catalog_version`] is a `watch` channel that changes after
//! every committed catalog change (also from other replicas on Postgres), and
//! [`policy::gateway_model`] reads the catalog at one version into the policy snapshot plus the
//! upstream clusters.

pub mod admin;
pub mod api;
pub mod cli;
pub mod config;
pub mod crypto;
pub mod discovery;
pub mod gateway;
pub mod naming;
pub mod policy;
pub mod store;
pub mod tokens;
pub mod usage;
pub mod watchers;

use std::future::Future;

pub use api::{AppState, router};
pub use config::{ServeConfig, StoreConfig};
pub use policy::{
    GatewayModel, PolicySettings, UpstreamEndpoint, compile_policy, gateway_model,
    gateway_model_with,
};
pub use store::Store;

use crate::admin::TokenSetup;
use crate::crypto::{KEY_CHECK_CONTEXT, KeySource, SecretKey};

/// Why `serve` could not start.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    /// The catalog store failed.
    #[error("catalog store: {0}")]
    Store(#[from] store::StoreError),
    /// The secret key could not be loaded.
    #[error(transparent)]
    Crypto(#[from] crypto::CryptoError),
    /// The usage tables could not be opened.
    #[error("usage store: {0}")]
    Usage(#[from] usage::UsageError),
    /// The key does not open what the catalog holds.
    #[error(
        "the secret key does not match the one this catalog was created with; set TOOLMESH_SECRET_KEY or TOOLMESH_SECRET_KEY_FILE to the original key"
    )]
    WrongKey,
    /// I/O (data directory, listener).
    #[error("{what}: {source}")]
    Io {
        /// What was being done.
        what: String,
        /// The error.
        source: std::io::Error,
    },
}

const KEY_CHECK_SETTING: &str = "secret_key_check";

/// Remove the password from a database URL for logging.
pub fn redact_url(url: &str) -> String {
    match reqwest::Url::parse(url) {
        Ok(mut u) if u.password().is_some() => {
            let _ = u.set_password(Some("***"));
            u.to_string()
        }
        _ => url.to_string(),
    }
}

/// Open the store for `config` (creating the data directory for the default SQLite file).
pub async fn open_store(config: &StoreConfig) -> Result<Store, ServeError> {
    if config
        .database_url
        .as_deref()
        .is_none_or(|u| u.trim().is_empty())
    {
        std::fs::create_dir_all(&config.data_dir).map_err(|source| ServeError::Io {
            what: format!("creating data directory {}", config.data_dir.display()),
            source,
        })?;
    }
    Ok(Store::connect(&config.effective_database_url()).await?)
}

/// Open the store, load the secret key, and put the admin token in place. Logs what it did and
/// prints a generated admin token once (`admin token: …` on stdout).
pub async fn build_state(config: &ServeConfig) -> Result<AppState, ServeError> {
    let store = open_store(&config.store).await?;
    let db = config.store.effective_database_url();
    tracing::info!(backend = store.backend_name(), database = %redact_url(&db), data_dir = %config.store.data_dir.display(), "catalog store ready");

    let (key, source) = SecretKey::load(
        config.secret_key.as_deref(),
        config.secret_key_file.as_deref(),
        &config.store.data_dir,
    )?;
    match &source {
        KeySource::Env => tracing::info!("credential encryption key from TOOLMESH_SECRET_KEY"),
        KeySource::File(p) => {
            tracing::info!(path = %p.display(), "credential encryption key from file")
        }
        KeySource::Generated(p) => tracing::warn!(
            path = %p.display(),
            "generated a new credential encryption key (mode 0600); keep it with the catalog, and give every replica the same key through TOOLMESH_SECRET_KEY_FILE"
        ),
    }
    match store.get_setting(KEY_CHECK_SETTING).await? {
        Some(check) => {
            let sealed = hex::decode(check).map_err(|_| ServeError::WrongKey)?;
            key.open(KEY_CHECK_CONTEXT, &sealed)
                .map_err(|_| ServeError::WrongKey)?;
        }
        None => {
            let sealed = key.seal(KEY_CHECK_CONTEXT, b"toolmesh");
            store
                .set_setting_if_absent(KEY_CHECK_SETTING, &hex::encode(sealed))
                .await?;
        }
    }

    match tokens::ensure_signing_key(&store, &key).await {
        Ok(true) => {
            tracing::info!("generated the token signing key (Ed25519, sealed with the secret key)")
        }
        Ok(false) => {}
        Err(tokens::TokenError::Store(e)) => return Err(e.into()),
        Err(e) => tracing::error!(error = %e, "could not create the token signing key"),
    }

    match admin::ensure_admin_token(&store, config.admin_token.as_deref()).await? {
        TokenSetup::FromEnv => tracing::info!("admin token set from TOOLMESH_ADMIN_TOKEN"),
        TokenSetup::Generated(token) => {
            tracing::warn!(
                "generated an admin token; it is shown only now (stdout line `admin token: …`). `toolmesh admin reset-token` replaces it"
            );
            println!("admin token: {token}");
        }
        TokenSetup::Existing => tracing::info!(
            "using the admin token created earlier (only its hash is stored); if it is lost, `toolmesh admin reset-token` prints a new one"
        ),
    }

    let usage = usage::Usage::new(
        usage::UsageStore::connect(&db).await?,
        config.usage_settings(),
    );
    Ok(AppState::new(
        store,
        key,
        api::ApiSettings {
            public_mcp_url: config.public_mcp_url.clone(),
            discovery_timeout: config.discovery_timeout(),
            policy: config.policy_settings(),
        },
    )
    .with_usage(usage))
}

/// Serve the REST API, the xDS server and the discovery schedule until `shutdown` completes.
pub async fn run(
    config: ServeConfig,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), ServeError> {
    let state = build_state(&config).await?;
    let addr = config.api_addr();
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|source| ServeError::Io {
            what: format!("binding the REST API to {addr}"),
            source,
        })?;
    serve(state, listener, &config, shutdown).await
}

/// Serve on an already bound listener (tests and embedders bind port 0 themselves).
pub async fn serve(
    state: AppState,
    listener: tokio::net::TcpListener,
    config: &ServeConfig,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), ServeError> {
    let local = listener.local_addr().map_err(|source| ServeError::Io {
        what: "reading the listener address".into(),
        source,
    })?;
    tracing::info!(
        api = %format!("http://{local}"),
        openapi = %format!("http://{local}/openapi.json"),
        public_mcp_url = %config.public_mcp_url,
        "toolmesh REST API listening"
    );
    let scheduler = config.discovery_interval().map(|interval| {
        tracing::info!(
            interval_s = interval.as_secs(),
            timeout_s = config.discovery_timeout().as_secs(),
            "discovery schedule started"
        );
        discovery::spawn_scheduler(
            state.store.clone(),
            state.key.clone(),
            interval,
            config.discovery_timeout(),
        )
    });
    let watchers = config.discovery_watch.then(|| {
        tracing::info!(
            "rediscovering on list_changed notifications (one watcher session per MCP server)"
        );
        watchers::spawn_watchers(
            state.store.clone(),
            state.key.clone(),
            config.discovery_timeout(),
        )
    });
    // One shutdown signal, fanned out to the REST API, the xDS server and the publisher.
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    tokio::spawn(async move {
        shutdown.await;
        let _ = stop_tx.send(true);
    });
    let stopped = |mut rx: tokio::sync::watch::Receiver<bool>| async move {
        let _ = rx.wait_for(|s| *s).await;
    };

    let xds_addr = config.xds_addr();
    let xds_listener = tokio::net::TcpListener::bind(xds_addr)
        .await
        .map_err(|source| ServeError::Io {
            what: format!("binding the xDS server to {xds_addr}"),
            source,
        })?;
    let xds_local = xds_listener.local_addr().map_err(|source| ServeError::Io {
        what: "reading the xDS listener address".into(),
        source,
    })?;
    let settings = config.gateway_settings();
    if !settings.wasm_path.exists() {
        tracing::warn!(wasm = %settings.wasm_path.display(), "the filter's wasm file is not on this host; Envoy must find it at this path (TOOLMESH_WASM_PATH)");
    }
    tracing::info!(
        xds = %xds_local,
        mcp_listener = %format!("{}:{}", settings.listener_address, settings.listener_port),
        wasm = %settings.wasm_path.display(),
        "toolmesh xDS (ADS) server listening"
    );
    let (xds_server, xds) = toolmesh_xds::XdsServer::new(settings);
    // Envoys stream their stats to the same port (metrics service); usage is summed from them.
    let usage_tasks = state.usage.clone().map(|u| {
        let (tx, rx) = tokio::sync::mpsc::channel(256);
        (
            tx,
            [
                usage::spawn_ingestor(u.clone(), rx),
                usage::spawn_maintenance(u),
            ],
        )
    });
    let xds_server = match &usage_tasks {
        Some((tx, _)) => xds_server.with_metrics_sink(tx.clone()),
        None => xds_server,
    };
    let state = state.with_xds(xds.clone());
    let publisher = gateway::spawn_publisher(
        state.store.clone(),
        state.catalog_version.clone(),
        xds,
        state.published.clone(),
        config.policy_settings(),
        state.key.clone(),
    );
    let xds_task = tokio::spawn(xds_server.serve(xds_listener, stopped(stop_rx.clone())));

    let store = state.store.clone();
    let usage_store = state.usage.as_ref().map(|u| u.store.clone());
    let result = axum::serve(listener, router(state))
        .with_graceful_shutdown(stopped(stop_rx))
        .await;
    publisher.abort();
    match xds_task.await {
        Ok(Err(e)) => tracing::error!(error = %e, "the xDS server failed"),
        Err(e) => tracing::error!(error = %e, "the xDS server task failed"),
        Ok(Ok(())) => {}
    }
    for task in scheduler.into_iter().chain(watchers) {
        task.abort();
    }
    if let Some((tx, tasks)) = usage_tasks {
        // The xDS server has stopped: let the ingestor store what it has, then stop.
        drop(tx);
        let [ingestor, maintenance] = tasks;
        maintenance.abort();
        let _ = tokio::time::timeout(std::time::Duration::from_secs(10), ingestor).await;
    }
    if let Some(u) = usage_store {
        u.close().await;
    }
    store.close().await;
    tracing::info!("toolmesh stopped");
    result.map_err(|source| ServeError::Io {
        what: "serving the REST API".into(),
        source,
    })
}

/// Completes on SIGINT (Ctrl-C) or SIGTERM.
pub async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {},
        _ = term => {},
    }
    tracing::info!("shutdown signal received; finishing in-flight requests");
}
