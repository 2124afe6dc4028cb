//! The delivery log on PostgreSQL. A placeholder until the delivery-log half lands: listings and ingest are
//! unavailable, and the log counts as empty.

use deadpool_postgres::Pool;
use hookrelay_common::ids::DeliveryId;
use hookrelay_common::proto::v1 as pb;

use crate::error::{Error, Result};
use crate::store::{DeliveryQuery, IngestOutcome, Page, Report};

const NOT_YET: &str = "the delivery log is not available on PostgreSQL yet";

pub(super) async fn ingest(_pool: &Pool, _node_name: &str, _reports: Vec<Report>) -> Result<IngestOutcome> {
    Err(Error::Unavailable(NOT_YET.into()))
}

pub(super) async fn list_deliveries(_pool: &Pool, _query: &DeliveryQuery) -> Result<Page<pb::Delivery>> {
    Err(Error::Unavailable(NOT_YET.into()))
}

pub(super) async fn get_delivery(_pool: &Pool, _id: &DeliveryId) -> Result<(pb::Delivery, Vec<pb::Attempt>)> {
    Err(Error::Unavailable(NOT_YET.into()))
}

pub(super) async fn count_deliveries(_pool: &Pool) -> Result<u64> {
    Ok(0)
}
