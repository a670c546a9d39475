//! The listener: accepts connections, enforces `max_connections`, gives each
//! connection its own session and backend entry, and shuts down gracefully
//! (stop accepting, let running queries finish within the deadline, then
//! cancel them and close every connection).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::Instrument;

use super::backends::Backends;
use super::handlers::{CancelByKey, ConnectionHandlers};
use super::session::Session;
use super::settings::Settings;
use crate::engine::SessionSettingsRows;
use super::startup::{Login, Slots, Startup, UserStore};
use crate::governance::audit::Auditor;
use crate::governance::{Access, Policy};
use super::tls::Tls;
use super::wire;
use super::functions;
use crate::engine::Engine;

#[derive(Debug, Clone)]
pub struct ServerOptions {
    pub max_connections: usize,
    pub statement_timeout: Option<Duration>,
    pub shutdown_timeout: Duration,
    /// How long a new connection may take to log in.
    pub authentication_timeout: Duration,
    /// How many connections may be logging in at once.
    pub max_startup_connections: usize,
    /// TLS, when configured.
    pub tls: Option<Tls>,
}

pub struct PgServer {
    listener: TcpListener,
    engine: Arc<Engine>,
    users: Arc<UserStore>,
    policy: Arc<Policy>,
    auditor: Option<Arc<Auditor>>,
    backends: Arc<Backends>,
    options: ServerOptions,
}

impl PgServer {
    pub async fn bind(
        addr: SocketAddr,
        engine: Arc<Engine>,
        users: Arc<UserStore>,
        policy: Arc<Policy>,
        auditor: Option<Arc<Auditor>>,
        options: ServerOptions,
    ) -> std::io::Result<PgServer> {
        let listener = TcpListener::bind(addr).await?;
        Ok(PgServer {
            listener,
            engine,
            users,
            policy,
            auditor,
            backends: Arc::new(Backends::default()),
            options,
        })
    }

    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.listener.local_addr()
    }

    pub fn backends(&self) -> Arc<Backends> {
        self.backends.clone()
    }

    /// Serve until `shutdown` fires, then drain as described above.
    pub async fn run(self, shutdown: CancellationToken) -> std::io::Result<()> {
        let slots = Arc::new(Semaphore::new(self.options.max_connections));
        let starting = Arc::new(Semaphore::new(self.options.max_startup_connections));
        let connections = TaskTracker::new();
        let stopping = CancellationToken::new();
        loop {
            let (socket, addr) = tokio::select! {
                _ = shutdown.cancelled() => break,
                accepted = self.listener.accept() => match accepted {
                    Ok(accepted) => accepted,
                    Err(err) => {
                        // Out of file descriptors and the like: back off, keep serving.
                        tracing::warn!(%err, "accept failed");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                },
            };
            // Sockets that have not logged in yet are capped on their own, so
            // a flood of silent ones can neither take the slots of real
            // clients nor pile up without bound.
            let Ok(login_slot) = starting.clone().try_acquire_owned() else {
                tracing::warn!(%addr, max = self.options.max_startup_connections, "too many connections logging in at once: closing a new one");
                drop(socket);
                continue;
            };
            let connection = Connection {
                engine: self.engine.clone(),
                users: self.users.clone(),
                policy: self.policy.clone(),
                auditor: self.auditor.clone(),
                backends: self.backends.clone(),
                slots: slots.clone(),
                options: self.options.clone(),
                stopping: stopping.clone(),
            };
            connections.spawn(
                connection
                    .serve(socket, addr, login_slot)
                    .instrument(tracing::info_span!("connection", %addr)),
            );
        }
        drop(self.listener);
        stopping.cancel();
        connections.close();
        let busy = self.backends.busy_count();
        tracing::info!(busy, deadline = ?self.options.shutdown_timeout, "shutting down: waiting for running queries");
        let drained = tokio::time::timeout(self.options.shutdown_timeout, async {
            while self.backends.busy_count() > 0 {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        })
        .await;
        if drained.is_err() {
            tracing::warn!(busy = self.backends.busy_count(), "shutdown deadline passed: cancelling running queries");
        }
        for backend in self.backends.all() {
            backend.terminate();
        }
        if tokio::time::timeout(Duration::from_secs(5), connections.wait()).await.is_err() {
            tracing::warn!("some connections did not close within 5s of shutdown");
        }
        if let Some(auditor) = &self.auditor {
            auditor.close(Duration::from_secs(5)).await;
        }
        tracing::info!("server stopped");
        Ok(())
    }
}

struct Connection {
    engine: Arc<Engine>,
    users: Arc<UserStore>,
    policy: Arc<Policy>,
    auditor: Option<Arc<Auditor>>,
    backends: Arc<Backends>,
    slots: Arc<Semaphore>,
    options: ServerOptions,
    stopping: CancellationToken,
}

impl Connection {
    async fn serve(self, socket: TcpStream, addr: SocketAddr, login_slot: OwnedSemaphorePermit) {
        let _ = socket.set_nodelay(true);
        let _counted = crate::metrics::connection();
        let registration = self.backends.register(addr);
        let backend = registration.backend.clone();
        let access = Arc::new(Access::default());
        let ctx = match self.engine.client_session(access.clone()) {
            Ok(ctx) => ctx,
            Err(err) => {
                tracing::error!(%err, "cannot set up a session: closing the connection");
                return;
            }
        };
        let startup = Startup::new(
            backend.clone(),
            &self.users,
            Slots {
                slots: self.slots.clone(),
                max: self.options.max_connections,
                stopping: self.stopping.clone(),
            },
            Login {
                access,
                policy: self.policy.clone(),
                auditor: self.auditor.clone(),
            },
        );
        let defaults = self
            .options
            .statement_timeout
            .map(|t| ("statement_timeout".to_string(), format!("{}ms", t.as_millis())));
        let settings = Settings::new(defaults);
        let rows = settings.clone();
        ctx.state_ref()
            .write()
            .config_mut()
            .set_extension(Arc::new(SessionSettingsRows(Box::new(move || {
                rows.all().into_iter().map(|(n, v, d)| (n, v, d.to_string())).collect()
            }))));
        functions::register(&ctx, &backend, &self.backends, &settings);
        let handlers = Arc::new(ConnectionHandlers {
            startup: Arc::new(startup),
            session: Arc::new(Session::new(ctx, backend.clone(), settings)),
            cancel: Arc::new(CancelByKey(self.backends.clone())),
        });
        let closed = backend.closed();
        let mut login_slot = Some(login_slot);
        let process = wire::serve(socket, handlers, self.options.tls.clone(), self.options.authentication_timeout, move || {
            login_slot.take();
        });
        tokio::pin!(process);
        let ended = tokio::select! {
            ended = &mut process => ended,
            _ = closed.cancelled() => {
                // Let a cancelled query report its error before the socket closes.
                tokio::time::timeout(Duration::from_secs(1), &mut process)
                    .await
                    .unwrap_or(wire::Ended::Client)
            }
        };
        if ended.is_abnormal() {
            tracing::info!(pid = backend.pid, %ended, "connection closed");
        } else {
            tracing::debug!(pid = backend.pid, %ended, "connection closed");
        }
        drop(registration);
    }
}
