//! Delivery: one pooled HTTP client whose resolver enforces the address policy ([`client`]), one attempt as a
//! signed request ([`attempt`]), the retry decision with its reason ([`retry`]), and the [`dispatcher`] that leases
//! due deliveries per endpoint within each endpoint's limits.

pub mod attempt;
pub mod client;
pub mod dispatcher;
pub mod retry;
