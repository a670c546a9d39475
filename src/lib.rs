//! Workbench: raw files and database extracts → governed bronze/silver/gold
//! Delta tables, served over the PostgreSQL wire protocol.
//!
//! # Layout
//!
//! Data flows one way: `pg` → `engine` → `storage`, and
//! `pipeline` → {`spec`, `storage`, `engine`}.
//!
//! - [`config`]: typed configuration from file, environment and flags.
//! - [`app`]: wires storage → engine → pg; used by `main` and the tests.
//! - [`pg`]: wire protocol only: listener, auth, sessions, SQLSTATE mapping.
//! - [`engine`]: DataFusion session template and the `workbench` catalog.
//! - [`governance`]: roles, grants, masks and row filters; who sees what.
//! - [`functions`]: table functions (`run`, ...), one file each.
//! - [`storage`]: Delta tables at `<lake>/<layer>/<table>` on object_store.
//! - [`cache`]: Redis (or in-process) run locks, run events and result cache.
//! - [`meta`]: metadata store (Postgres or embedded SQLite): runs, steps, files, lineage.
//! - [`quality`]: expectations compiled to SQL checks (validate, pipeline on_fail).
//! - [`spec`]: dataset specs (YAML → raw serde types → validated).
//! - [`pipeline`]: runs datasets: sources → bronze → silver rules → gold;
//!   retries, timeouts, cancel, downstream runs.
//! - [`scheduler`]: runs datasets at their cron slots, once across replicas,
//!   and watches freshness.
//! - [`http`]: the HTTP API (health, readiness, Prometheus metrics).
//! - [`metrics`]: the process's Prometheus registry, fed by every layer.
//! - [`alerts`]: webhooks told about failures, failed expectations,
//!   anomalies and stale datasets (`workbench.alerts`).

pub mod alerts;
pub mod app;
pub mod cache;
pub mod cluster;
pub mod config;
pub mod engine;
pub mod meta;
pub mod metrics;
pub mod http;
pub mod functions;
pub mod governance;
pub mod pg;
pub mod pipeline;
pub mod quality;
pub mod scheduler;
pub mod spec;
pub mod storage;
