//! What hookrelay's control plane and agent share: the generated protos, prefixed ids, Standard Webhooks signing,
//! validation of the configuration model, and the URL and address policies every outbound request obeys.

pub mod ids;
pub mod model;
pub mod net_policy;
pub mod proto;
pub mod signing;
pub mod time;
pub mod url_policy;
