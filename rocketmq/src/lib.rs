//! Switchboard's RocketMQ layer: the names of a cluster's topics and groups
//! ([`names`]), their provisioning ([`Admin`]) and a thin producer and push consumer
//! ([`Producer`], [`Consumer`]). Nothing here knows about chat; the node builds its
//! cross-node bus on top of it.
//!
//! Every client runs on a [`Runtime`] of its own:
//!
//! ```no_run
//! # async fn demo() -> Result<(), switchboard_rocketmq::Error> {
//! use switchboard_rocketmq::{Admin, Consumer, ConsumerConfig, Producer, Runtime};
//!
//! let rt = Runtime::new()?;
//! let admin = Admin::connect(&rt, "127.0.0.1:9876").await?;
//! admin.ensure_topic("demo", 4).await?;
//! admin.ensure_group("demo-readers", 3).await?;
//! let config = ConsumerConfig {
//!     namesrv: "127.0.0.1:9876".into(),
//!     topic: "demo".into(),
//!     group: "demo-readers".into(),
//!     max_reconsume_times: None, // the group's 3
//!     in_order: false,
//!     batch: 32,
//!     credentials: None, // or Some(Credentials::new("user", "password")?) on an ACL broker
//! };
//! let consumer = Consumer::start(&rt, config, |d| async move {
//!     tracing::info!(key = ?d.key, len = d.body.len(), "received");
//!     Ok::<(), std::convert::Infallible>(())
//! })
//! .await?;
//! let producer = Producer::start(&rt, "127.0.0.1:9876", "demo-writers").await?;
//! producer.send("demo", "key-1", b"hello".to_vec()).await?;
//! producer.shutdown().await;
//! consumer.shutdown().await;
//! admin.shutdown().await;
//! rt.shutdown().await;
//! # Ok(()) }
//! ```

// The RocketMQ client's futures nest deeply (its own examples raise the limit too).
#![recursion_limit = "512"]

mod admin;
mod consumer;
mod credentials;
pub mod direct;
mod error;
pub mod names;
mod producer;
mod runtime;

use std::sync::atomic::{AtomicU64, Ordering};

pub use admin::Admin;
pub use consumer::{Consumer, ConsumerConfig, Delivery};
pub use credentials::Credentials;
pub use error::Error;
pub use producer::{Producer, Record};
pub use runtime::Runtime;

/// A client instance name unique in this machine: RocketMQ identifies a client by IP
/// and instance name, and clients sharing one would share (and fight over) one
/// connection set and group registration.
fn unique_instance_name(role: &str) -> String {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    format!(
        "{role}-{}-{}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    )
}
