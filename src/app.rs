//! `App::build` wires storage → engine → pg from a validated [`Config`]. Both
//! `main` and the integration tests start the server through it.

use std::net::SocketAddr;
use std::sync::Arc;

use tokio_util::sync::CancellationToken;

use crate::config::Config;
use crate::engine::{Engine, EngineError, EngineOptions};
use crate::pg::{Backends, PgServer, ServerOptions, UserStore};
use crate::storage::{Lake, StorageError};

#[derive(Debug, thiserror::Error)]
pub enum AppError {
    #[error(transparent)]
    Storage(#[from] StorageError),
    #[error(transparent)]
    Engine(#[from] EngineError),
    #[error("cannot listen on {addr}: {source}")]
    Listen {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("server failed: {0}")]
    Serve(std::io::Error),
}

pub struct App {
    server: PgServer,
    addr: SocketAddr,
    lake: Arc<Lake>,
    engine: Arc<Engine>,
}

impl App {
    pub async fn build(config: Config) -> Result<App, AppError> {
        let lake = Arc::new(Lake::open(&config.lake, config.storage_options.clone())?);
        let users = Arc::new(UserStore::new(
            config.users.iter().map(|u| (u.name.clone(), u.secret.clone())),
        ));
        let engine = Arc::new(Engine::new(
            lake.clone(),
            EngineOptions {
                query_memory_limit: config.query_memory_limit,
                // With trust auth anyone may connect; show the conventional role.
                roles: if users.is_empty() { vec!["workbench".into()] } else { users.names() },
                debug_functions: config.debug_functions,
            },
        )
        .await?);
        let server = PgServer::bind(
            config.listen,
            engine.clone(),
            users,
            ServerOptions {
                max_connections: config.max_connections,
                statement_timeout: config.statement_timeout,
                shutdown_timeout: config.shutdown_timeout,
            },
        )
        .await
        .map_err(|source| AppError::Listen {
            addr: config.listen,
            source,
        })?;
        let addr = server.local_addr().map_err(AppError::Serve)?;
        Ok(App {
            server,
            addr,
            lake,
            engine,
        })
    }

    /// The address the server listens on (resolves port 0).
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    pub fn lake(&self) -> &Arc<Lake> {
        &self.lake
    }

    pub fn engine(&self) -> &Arc<Engine> {
        &self.engine
    }

    pub fn backends(&self) -> Arc<Backends> {
        self.server.backends()
    }

    /// Serve until `shutdown` fires, then shut down gracefully.
    pub async fn run(self, shutdown: CancellationToken) -> Result<(), AppError> {
        tracing::info!(addr = %self.addr, lake = %self.lake.root(), "workbench listening");
        self.server.run(shutdown).await.map_err(AppError::Serve)
    }
}
