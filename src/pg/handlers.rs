//! The pgwire handler set for one connection: startup (auth), queries,
//! cancel requests and error reporting.

use std::sync::Arc;

use async_trait::async_trait;
use pgwire::api::auth::StartupHandler;
use pgwire::api::cancel::CancelHandler;
use pgwire::api::query::{ExtendedQueryHandler, SimpleQueryHandler};
use pgwire::api::{ClientInfo, ErrorHandler, PgWireServerHandlers};
use pgwire::error::PgWireError;
use pgwire::messages::cancel::CancelRequest;

use super::backends::Backends;
use super::errors;
use super::session::Session;
use super::startup::Startup;

pub struct ConnectionHandlers {
    pub startup: Arc<Startup>,
    pub session: Arc<Session>,
    pub cancel: Arc<CancelByKey>,
}

impl PgWireServerHandlers for ConnectionHandlers {
    fn simple_query_handler(&self) -> Arc<impl SimpleQueryHandler> {
        self.session.clone()
    }

    fn extended_query_handler(&self) -> Arc<impl ExtendedQueryHandler> {
        self.session.clone()
    }

    fn startup_handler(&self) -> Arc<impl StartupHandler> {
        self.startup.clone()
    }

    fn error_handler(&self) -> Arc<impl ErrorHandler> {
        Arc::new(ReportErrors)
    }

    fn cancel_handler(&self) -> Arc<impl CancelHandler> {
        self.cancel.clone()
    }

    fn copy_handler(&self) -> Arc<impl pgwire::api::copy::CopyHandler> {
        self.session.clone()
    }
}

/// Cancel requests arrive on a fresh connection carrying (pid, secret key).
pub struct CancelByKey(pub Arc<Backends>);

#[async_trait]
impl CancelHandler for CancelByKey {
    async fn on_cancel_request(&self, request: CancelRequest) {
        let cancelled = self.0.cancel_with_key(request.pid, &request.secret_key.to_bytes());
        tracing::info!(pid = request.pid, cancelled, "cancel request");
    }
}

/// Gives every error its SQLSTATE and logs it.
struct ReportErrors;

impl ErrorHandler for ReportErrors {
    fn on_error<C: ClientInfo>(&self, client: &C, error: &mut PgWireError) {
        // SCRAM names the user of its own first message, which libpq leaves
        // empty: name the one the client logged in as.
        if let PgWireError::InvalidPassword(name) = error
            && name.is_empty()
        {
            *name = client.metadata().get("user").cloned().unwrap_or_default();
        }
        errors::normalize(error);
        let (pid, _) = client.pid_and_secret_key();
        match error {
            PgWireError::UserError(info) => {
                tracing::info!(pid, code = %info.code, message = %info.message, "query error")
            }
            other => tracing::warn!(pid, error = %other, "protocol error"),
        }
    }
}
