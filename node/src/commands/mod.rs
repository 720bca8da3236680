//! Commands from backends over RocketMQ: seed 002's activity events and the
//! generic group, notice and recall commands, read from `<prefix>-commands`
//! by the consumer group `<prefix>-commands` (each command handled by one
//! node).
//!
//! - [`parse`]: the command type (the message's tag, else its `event_type`
//!   property) and its JSON body, checked; what fails here is never retried.
//! - [`apply`]: the effect, through the same group and message paths as the
//!   admin API and clients, idempotent (applying a command twice leaves what
//!   applying it once left; its notice is stored once).
//! - [`consumer`]: exactly once in effect (a command's id is remembered in
//!   the [`crate::backend::CommandLog`] once applied), retries within the
//!   node with backoff, then RocketMQ redeliveries, then the dead-letter
//!   topic `%DLQ%<prefix>-commands` with the reason as properties.
//!
//! The contract for backends is `docs/integration.md` ("Commands").

pub mod apply;
pub mod consumer;
pub mod parse;

pub use parse::{Command, Rejected, parse};
