//! Retention on PostgreSQL. A placeholder until the delivery-log half lands: there is nothing to prune.

use std::num::NonZeroUsize;

use deadpool_postgres::Pool;
use hookrelay_common::ids::DeliveryId;

use crate::error::{Error, Result};
use crate::store::{PruneCutoff, PrunePass};

pub(super) async fn create_partitions_ahead(_pool: &Pool, _now_ms: u64, _days_ahead: u32) -> Result<()> {
    Ok(())
}

pub(super) async fn prune(
    _pool: &Pool,
    _cutoff: PruneCutoff,
    _after: Option<DeliveryId>,
    _limit: NonZeroUsize,
) -> Result<PrunePass> {
    Err(Error::Unavailable("retention is not available on PostgreSQL yet".into()))
}
