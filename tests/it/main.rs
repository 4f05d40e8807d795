//! The integration tests, as one binary (one link step for all of them).
//! `tests/logs.rs` stays a binary of its own: it installs a global TRACE
//! subscriber that would capture every other test's logs.

#[macro_use]
mod common;

mod books;
mod cli;
mod console;
mod contract;
mod crash;
mod deploy;
mod edges;
mod guarantees;
mod messages;
mod newcomer;
mod operations;
mod operator;
mod outcomes;
mod outsiders;
mod pos_events;
mod postgres_restart;
mod providers;
mod refunds;
mod reliability;
mod store;
mod upgrade;
