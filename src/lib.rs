//! pgveil: a PostgreSQL wire-protocol gateway.
//!
//! Clients connect to pgveil as they would to PostgreSQL. pgveil establishes
//! who they are, connects to the real server with a credential that only it
//! holds, decides every statement before the server sees it, and carries the
//! session with as little rewriting as the capabilities need.
//!
//! Modules follow the data path: [`frontend`] (listeners, startup,
//! authentication), [`backend`] (connections to the server), [`relay`] (the
//! session itself), with [`policy`], [`audit`] and [`cancel`] plugged into
//! it. [`wire`] is the IO-free protocol codec.

#![deny(clippy::unwrap_used, clippy::todo, clippy::unimplemented)]
#![warn(missing_docs)]

pub mod audit;
pub mod auth;
pub mod backend;
pub mod cancel;
pub mod check;
pub mod cli;
pub mod config;
pub mod demo;
pub mod frontend;
pub mod mask;
pub mod net;
pub mod pgtemp;
pub mod policy;
pub mod relay;
pub mod session;
pub mod tls;
pub mod wire;
