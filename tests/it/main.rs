//! The one integration test binary. Every test talks to a real `workbench`
//! process over a real socket, with real Delta tables on disk.

mod harness;
mod maintenance;
mod http;
mod bounded;
mod cdc;
mod clients;
mod cluster;
mod coordination;
mod encoding;
mod functions;
mod governance;
mod hardening;
mod join_order;
mod memory;
mod metadata;
mod monitoring;
mod pipeline;
mod run_control;
mod s3;
mod scheduler;
mod server;
mod upload;
