//! The Postgres wire protocol: listener, authentication, per-connection
//! sessions over datafusion-postgres, cancellation and SQLSTATE mapping.
//! Nothing here reads the lake or the specs directly; it talks to the engine
//! (and, for `COPY landing.x FROM STDIN`, hands the bytes to the pipeline).

mod backends;
mod copy;
mod cursor;
mod depth;
mod encode;
mod errors;
mod functions;
mod handlers;
mod labels;
mod late_bind;
mod readonly;
mod rewrite;
mod search_path;
mod server;
mod session;
mod settings;
mod startup;
mod statements;
mod tls;
mod upload;
mod wire;

pub use backends::{BackendInfo, Backends};
pub use server::{PgServer, ServerOptions};
pub use startup::UserStore;
pub use tls::{Tls, TlsError, TlsMode, server_config};
