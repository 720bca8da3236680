//! Default values of the ChatCluster spec's fields.

pub fn replicas() -> i32 {
    3
}
/// 40 s: room for the default 20 s drain + 15 s of preStop, close and flush.
pub fn termination_grace() -> i64 {
    40
}
pub fn drain_timeout() -> String {
    "20s".into()
}
pub fn queues() -> u32 {
    4
}
pub fn retry_max() -> u32 {
    3
}
pub fn heartbeat() -> String {
    "30s".into()
}
pub fn presence_ttl() -> String {
    "5m".into()
}
pub fn max_content() -> u32 {
    4096
}
pub fn max_frame() -> u32 {
    65536
}
pub fn rate_limit() -> u32 {
    30
}
pub fn rate_burst() -> u32 {
    60
}
pub fn max_connections() -> u32 {
    100_000
}
pub fn history() -> u32 {
    1000
}
pub fn inbox() -> u32 {
    10_000
}
pub fn group_members() -> u32 {
    1000
}
pub fn service_type() -> super::ServiceType {
    super::ServiceType::ClusterIP
}
pub fn service_port() -> i32 {
    80
}
pub fn yes() -> bool {
    true
}
pub fn one() -> i32 {
    1
}
pub fn recall_window() -> String {
    "2m".into()
}
pub fn outbox_limit() -> u32 {
    160_000
}
pub fn command_retries() -> u32 {
    3
}
pub fn command_retry_initial() -> String {
    "100ms".into()
}
pub fn command_retry_multiplier() -> u32 {
    2
}
pub fn command_retry_max() -> String {
    "10s".into()
}
pub fn command_redeliveries() -> u32 {
    2
}
pub fn command_dedup_ttl() -> String {
    "72h".into()
}
pub fn request_timeout() -> String {
    "10s".into()
}
pub fn webhook_timeout() -> String {
    "500ms".into()
}
pub fn sample_ratio() -> String {
    switchboard_settings::telemetry::DEFAULT_SAMPLE_RATIO.to_string()
}
