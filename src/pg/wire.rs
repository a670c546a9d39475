//! The message loop of one connection. pgwire decodes and dispatches the
//! messages; this loop decides what a broken or hostile client gets, as
//! PostgreSQL does:
//! - a client that has not logged in within `authentication_timeout` is
//!   disconnected (pgwire's own limit is a fixed minute);
//! - a message that cannot be decoded (or whose decoding panics) gets a FATAL
//!   `08P01` and the connection closes;
//! - a FATAL error (failed login, too many connections, terminate) is the last
//!   message: no ReadyForQuery follows it;
//! - a panic while handling a message ends this connection with `XX000`,
//!   never the server.

use std::panic::AssertUnwindSafe;
use std::time::Duration;

use futures::{FutureExt, SinkExt, StreamExt};
use pgwire::api::{ClientInfo, ErrorHandler, PgWireConnectionState, PgWireServerHandlers};
use pgwire::error::{ErrorInfo, PgWireError};
use pgwire::messages::{PgWireBackendMessage, PgWireFrontendMessage};
use pgwire::tokio::server::{negotiate_tls, process_error, process_message};
use tokio::net::TcpStream;

use super::errors;
use super::tls::{Tls, TlsMode};

/// How much of a result gathers before it is written to the socket.
const WRITE_BUFFER_BYTES: usize = 64 << 10;

/// What ended the loop, for the connection's log line.
#[derive(Debug)]
pub enum Ended {
    /// The client said goodbye or closed its socket.
    Client,
    /// The client did not log in within the timeout.
    StartupTimeout,
    /// The client sent something that is not the protocol.
    ProtocolViolation(String),
    /// A FATAL error was sent.
    Fatal(String),
    Io(std::io::Error),
}

/// Serve `tcp` with `handlers` until the client leaves or a FATAL error.
/// `on_login` runs once, when the client is first ready for queries.
pub async fn serve<H: PgWireServerHandlers>(
    tcp: TcpStream,
    handlers: H,
    tls: Option<Tls>,
    authentication_timeout: Duration,
    mut on_login: impl FnMut(),
) -> Ended {
    let startup = handlers.startup_handler();
    let simple = handlers.simple_query_handler();
    let extended = handlers.extended_query_handler();
    let copy = handlers.copy_handler();
    let cancel = handlers.cancel_handler();
    let error_handler = handlers.error_handler();

    let login_deadline = tokio::time::sleep(authentication_timeout);
    tokio::pin!(login_deadline);
    let mut socket = tokio::select! {
        _ = &mut login_deadline => return Ended::StartupTimeout,
        negotiated = negotiate_tls(tcp, tls.as_ref().map(|t| t.acceptor.clone())) => match negotiated {
            Ok(Some(socket)) => socket,
            Ok(None) => return Ended::ProtocolViolation("TLS requested directly but not configured".into()),
            Err(err) => return Ended::Io(err),
        },
    };
    // Rows are fed to the socket one message at a time; it is written out
    // when this much has gathered (tokio-util's default, 8 KB, made a write
    // and a wake-up of the client per ~60 lineitem rows).
    socket.set_backpressure_boundary(WRITE_BUFFER_BYTES);
    let mut logged_in = false;
    loop {
        let starting = matches!(
            socket.state(),
            PgWireConnectionState::AwaitingStartup | PgWireConnectionState::AuthenticationInProgress
        );
        // Decoding runs inside `next()`; pgwire's decoders can panic on a
        // truncated body, which is a protocol violation like any other.
        let next = AssertUnwindSafe(socket.next()).catch_unwind();
        let received = if starting {
            tokio::select! {
                _ = &mut login_deadline => {
                    let info = errors::fatal("08006", "authentication timeout: the client did not log in in time");
                    let _ = send_fatal(&mut socket, info).await;
                    return Ended::StartupTimeout;
                }
                received = next => received,
            }
        } else {
            next.await
        };
        let message = match received {
            Ok(Some(Ok(message))) => message,
            Ok(None) => return Ended::Client,
            Ok(Some(Err(err))) => {
                let reason = err.to_string();
                let info = errors::fatal("08P01", format!("invalid frontend message: {reason}"));
                let _ = send_fatal(&mut socket, info).await;
                return Ended::ProtocolViolation(reason);
            }
            Err(_) => {
                let info = errors::fatal("08P01", "invalid frontend message: truncated or malformed");
                let _ = send_fatal(&mut socket, info).await;
                return Ended::ProtocolViolation("a message could not be decoded".into());
            }
        };
        if matches!(message, PgWireFrontendMessage::Terminate(_)) {
            return Ended::Client;
        }
        if let PgWireFrontendMessage::Startup(_) = message
            && tls.as_ref().is_some_and(|t| t.mode == TlsMode::Required)
            && !socket.is_secure()
        {
            let info = errors::with_hint(
                errors::fatal("28000", "this server accepts only TLS connections; the connection was refused"),
                "connect with TLS: sslmode=require or verify-full (psql, psycopg), ssl=true (pgjdbc), ssl='require' (asyncpg)",
            );
            let _ = send_fatal(&mut socket, info).await;
            return Ended::Fatal("plaintext connection refused: TLS is required".into());
        }
        let is_extended = match socket.state() {
            PgWireConnectionState::CopyInProgress(extended) => extended,
            _ => message.is_extended_query(),
        };
        let handled = AssertUnwindSafe(process_message(
            message,
            &mut socket,
            startup.clone(),
            simple.clone(),
            extended.clone(),
            copy.clone(),
            cancel.clone(),
        ))
        .catch_unwind()
        .await;
        let mut error = match handled {
            Ok(Ok(())) => None,
            Ok(Err(error)) => Some(error),
            Err(panic) => {
                tracing::error!(panic = %crate::engine::panic_message(&panic), "panic while handling a client message");
                Some(errors::user(errors::fatal(
                    errors::INTERNAL,
                    "internal error while handling a message; the connection is closed (the server is still running)",
                )))
            }
        };
        if let Some(error) = &mut error {
            error_handler.on_error(&socket, error);
            let still_starting = matches!(
                socket.state(),
                PgWireConnectionState::AwaitingStartup | PgWireConnectionState::AuthenticationInProgress
            );
            let info = error_info(std::mem::replace(error, PgWireError::NotReadyForQuery), starting || still_starting);
            if info.is_fatal() {
                let message = info.message.clone();
                let _ = send_fatal(&mut socket, info).await;
                return Ended::Fatal(message);
            }
            if let Err(err) = process_error(&mut socket, errors::user(info), is_extended).await {
                return Ended::Io(err);
            }
        }
        if !logged_in && matches!(socket.state(), PgWireConnectionState::ReadyForQuery) {
            logged_in = true;
            on_login();
        }
    }
}

/// The error as the client will see it; any error before login is FATAL.
fn error_info(error: PgWireError, starting: bool) -> ErrorInfo {
    let mut info: ErrorInfo = error.into();
    if starting && !info.is_fatal() {
        info.severity = "FATAL".into();
    }
    info
}

/// Send a FATAL error as the connection's last message, then close it.
async fn send_fatal<S>(socket: &mut S, info: ErrorInfo) -> Result<(), PgWireError>
where
    S: futures::Sink<PgWireBackendMessage> + Unpin,
    PgWireError: From<S::Error>,
{
    socket.send(PgWireBackendMessage::ErrorResponse(info.into())).await?;
    socket.close().await?;
    Ok(())
}

impl Ended {
    /// Whether this end is worth a warning in the log.
    pub fn is_abnormal(&self) -> bool {
        !matches!(self, Ended::Client)
    }
}

impl std::fmt::Display for Ended {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Ended::Client => f.write_str("client disconnected"),
            Ended::StartupTimeout => f.write_str("authentication timeout"),
            Ended::ProtocolViolation(why) => write!(f, "protocol violation: {why}"),
            Ended::Fatal(message) => write!(f, "fatal error: {message}"),
            Ended::Io(err) => write!(f, "socket error: {err}"),
        }
    }
}
