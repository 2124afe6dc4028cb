//! What hookrelay's control plane and agent share: the generated protos, prefixed ids, Standard Webhooks signing,
//! validation of the configuration model, the URL and address policies every outbound request obeys, the pooled
//! HTTP client that enforces them ([`outbound`]), and the sealing of secrets at rest ([`sealed`]).

#![forbid(unsafe_code)]

pub mod allocator;
pub mod config_file;
pub mod ids;
pub mod listener;
pub mod logging;
pub mod model;
pub mod net_policy;
pub mod outbound;
pub mod proto;
pub mod sealed;
pub mod signing;
pub mod time;
pub mod url_policy;
