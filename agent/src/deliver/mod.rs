//! Delivery: one attempt as a signed request through the pooled, address-checked client of
//! `hookrelay_common::outbound` ([`attempt`]), the retry decision with its reason ([`retry`]), and the
//! [`dispatcher`] that leases due deliveries per endpoint within each endpoint's limits.

pub mod attempt;
pub mod dispatcher;
pub mod retry;
