//! The Keel host: the general ledger and the shared master data of a company, served over an
//! HTTP API and a CLI.

pub mod api;
pub mod audit;
pub mod authz;
pub mod cli;
pub mod company;
pub mod currency;
pub mod db;
pub mod error;
pub mod events;
pub mod idempotency;
pub mod identity;
pub mod ledger;
pub mod parties;
pub mod runtime;
pub mod testing;
