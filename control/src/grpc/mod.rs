//! The gRPC services. Handlers stay thin: check the request ([`crate::validate`]), call the
//! [`Store`](crate::store::Store) or the [`ConfigHub`](crate::watch::ConfigHub), and let
//! `From<Error> for tonic::Status` ([`crate::error`]) say what went wrong.

mod admin;
mod agent;

pub use admin::{AdminApi, AdminParts};
pub use agent::AgentApi;

/// Wraps a handler's answer, converting control's error into its status.
fn respond<T>(result: crate::error::Result<T>) -> Result<tonic::Response<T>, tonic::Status> {
    result.map(tonic::Response::new).map_err(tonic::Status::from)
}
