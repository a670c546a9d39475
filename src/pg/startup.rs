//! Connection startup: trust on loopback by default, SCRAM-SHA-256 against
//! configured users otherwise, and clean refusals (too many connections,
//! shutting down) that clients show as ordinary Postgres errors.

use std::collections::HashMap;
use std::fmt::Debug;
use std::sync::{Arc, Mutex};

use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio_util::sync::CancellationToken;

use async_trait::async_trait;
use futures::Sink;
use pgwire::api::auth::sasl::SASLAuthStartupHandler;
use pgwire::api::auth::sasl::scram::ScramAuth;
use pgwire::api::auth::{
    AuthSource, DefaultServerParameterProvider, LoginInfo, Password, StartupHandler,
    finish_authentication, protocol_negotiation, save_startup_parameters_to_metadata,
};
use pgwire::api::{ClientInfo, PgWireConnectionState, PidSecretKeyGenerator};
use pgwire::error::{PgWireError, PgWireResult};
use pgwire::messages::startup::SecretKey;
use pgwire::messages::{PgWireBackendMessage, PgWireFrontendMessage, ProtocolVersion};

use super::backends::Backend;
use super::errors;
use crate::config::{SCRAM_ITERATIONS, ScramSecret};
use crate::engine::PG_VERSION;
use crate::governance::audit::{AuditIdentity, Auditor};
use crate::governance::{Access, Policy, Principal};

/// Users that may log in, by name.
#[derive(Debug, Default)]
pub struct UserStore {
    users: HashMap<String, ScramSecret>,
}

impl UserStore {
    pub fn new(users: impl IntoIterator<Item = (String, ScramSecret)>) -> Self {
        UserStore {
            users: users.into_iter().collect(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.users.is_empty()
    }

    pub fn names(&self) -> Vec<String> {
        let mut names: Vec<String> = self.users.keys().cloned().collect();
        names.sort();
        names
    }
}

#[async_trait]
impl AuthSource for UserStore {
    async fn get_password(&self, login: &LoginInfo) -> PgWireResult<Password> {
        let name = login.user().unwrap_or_default();
        match self.users.get(name) {
            Some(secret) => Ok(Password::new(
                Some(secret.salt.clone()),
                secret.salted_password.clone(),
            )),
            // Same answer as a wrong password, so user names cannot be probed.
            None => Err(PgWireError::InvalidPassword(name.to_string())),
        }
    }
}

/// Parameters reported to clients at startup.
pub fn server_parameters() -> DefaultServerParameterProvider {
    let mut params = DefaultServerParameterProvider::default();
    params.server_version = format!("{PG_VERSION} (Workbench {})", env!("CARGO_PKG_VERSION"));
    params.is_superuser = false;
    params.default_transaction_read_only = true;
    params.scram_iterations = SCRAM_ITERATIONS;
    params
}

/// Hands out this connection's pre-assigned pid with a random cancel key.
struct FixedPid(i32);

impl PidSecretKeyGenerator for FixedPid {
    fn generate(&self, client: &dyn ClientInfo) -> (i32, SecretKey) {
        let key = match client.protocol_version() {
            ProtocolVersion::PROTOCOL3_0 => SecretKey::I32(rand::random::<i32>()),
            _ => {
                let bytes: [u8; 32] = rand::random();
                SecretKey::Bytes(bytes.to_vec().into())
            }
        };
        (self.0, key)
    }
}

/// Why a connection is refused before it starts.
#[derive(Debug, Clone, Copy)]
pub enum Refusal {
    TooManyConnections(usize),
    ShuttingDown,
}

enum Method {
    Trust(DefaultServerParameterProvider),
    Scram(SASLAuthStartupHandler<DefaultServerParameterProvider>),
}

/// Where a connection takes its slot among `max_connections`: when its
/// startup message arrives, so a socket that never says anything (or is
/// still negotiating) holds none, and a full server refuses with 53300
/// before asking for a password.
pub struct Slots {
    pub slots: Arc<Semaphore>,
    pub max: usize,
    pub stopping: CancellationToken,
}

pub struct Startup {
    backend: Arc<Backend>,
    /// Who this connection is, set once it has logged in.
    login: Login,
    method: Method,
    slots: Slots,
    /// This connection's slot, held until the connection ends.
    slot: Mutex<Option<OwnedSemaphorePermit>>,
}

/// Where a successful login records its principal.
pub struct Login {
    pub access: Arc<Access>,
    pub policy: Arc<Policy>,
    /// Where statements and failed logins are audited, if anywhere.
    pub auditor: Option<Arc<Auditor>>,
}

impl Startup {
    pub fn new(backend: Arc<Backend>, users: &Arc<UserStore>, slots: Slots, login: Login) -> Startup {
        let method = if users.is_empty() {
            Method::Trust(server_parameters())
        } else {
            let mut scram = ScramAuth::new(users.clone());
            scram.set_iterations(SCRAM_ITERATIONS);
            let sasl = SASLAuthStartupHandler::new(Arc::new(server_parameters()))
                .with_scram(scram)
                .with_pid_secret_key_generator(Arc::new(FixedPid(backend.pid)));
            Method::Scram(sasl)
        };
        Startup {
            backend,
            login,
            method,
            slots,
            slot: Mutex::new(None),
        }
    }

    /// Take a connection slot for this connection, or say why not.
    fn take_slot(&self) -> Result<(), Refusal> {
        if self.slots.stopping.is_cancelled() {
            return Err(Refusal::ShuttingDown);
        }
        let mut slot = self.slot.lock().expect("startup slot poisoned");
        if slot.is_none() {
            let permit = self
                .slots
                .slots
                .clone()
                .try_acquire_owned()
                .map_err(|_| Refusal::TooManyConnections(self.slots.max))?;
            *slot = Some(permit);
        }
        Ok(())
    }
}

fn refusal_error(refusal: Refusal) -> PgWireError {
    let info = match refusal {
        Refusal::TooManyConnections(max) => errors::with_hint(
            errors::fatal(errors::TOO_MANY_CONNECTIONS, "sorry, too many clients already"),
            format!("the server allows {max} connections (max_connections); close idle ones or raise the limit"),
        ),
        Refusal::ShuttingDown => errors::fatal("57P03", "the database system is shutting down"),
    };
    errors::user(info)
}

fn mark_authenticated<C: ClientInfo>(client: &C, backend: &Backend, login: &Login) {
    if matches!(client.state(), PgWireConnectionState::ReadyForQuery) {
        let (_, key) = client.pid_and_secret_key();
        let user = client.metadata().get("user").cloned().unwrap_or_default();
        let principal = Principal::new(login.policy.clone(), &user);
        if let Some(auditor) = &login.auditor {
            backend.set_audit(AuditIdentity {
                auditor: auditor.clone(),
                user: user.clone(),
                roles: principal.roles.join(","),
                client_addr: backend.addr.ip().to_string(),
                application_name: client.metadata().get("application_name").cloned(),
            });
        }
        login.access.set(principal);
        backend.set_authenticated(&user, &key.to_bytes());
        tracing::info!(pid = backend.pid, user = %user, "client authenticated");
    }
}

#[async_trait]
impl StartupHandler for Startup {
    async fn on_startup<C>(&self, client: &mut C, message: PgWireFrontendMessage) -> PgWireResult<()>
    where
        C: ClientInfo + Sink<PgWireBackendMessage> + Unpin + Send + Sync,
        C::Error: Debug,
        PgWireError: From<<C as Sink<PgWireBackendMessage>>::Error>,
    {
        if let PgWireFrontendMessage::Startup(_) = message {
            self.take_slot().map_err(refusal_error)?;
        }
        match &self.method {
            Method::Trust(params) => {
                if let PgWireFrontendMessage::Startup(ref startup) = message {
                    protocol_negotiation(client, startup).await?;
                    save_startup_parameters_to_metadata(client, startup);
                    let (pid, key) = FixedPid(self.backend.pid).generate(client);
                    client.set_pid_and_secret_key(pid, key);
                    finish_authentication(client, params).await?;
                    mark_authenticated(client, &self.backend, &self.login);
                }
                Ok(())
            }
            Method::Scram(sasl) => {
                if let Err(err) = sasl.on_startup(client, message).await {
                    if let (PgWireError::InvalidPassword(_), Some(auditor)) = (&err, &self.login.auditor) {
                        // SCRAM names the user of its own first message, which
                        // libpq leaves empty: the startup message names them.
                        let user = client.metadata().get("user").cloned().unwrap_or_default();
                        AuditIdentity::login_failed(
                            auditor,
                            &user,
                            self.backend.addr.ip().to_string(),
                            client.metadata().get("application_name").cloned(),
                            "28P01",
                        );
                    }
                    return Err(err);
                }
                mark_authenticated(client, &self.backend, &self.login);
                Ok(())
            }
        }
    }
}
