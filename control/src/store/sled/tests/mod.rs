//! The sled store's own tests (raw database access, legacy layouts), one file per concern; what every backend
//! must do is tested by the conformance suite (`store/conformance`), whose fixtures these share.

mod log;
mod retention;
mod secrets;

use std::path::Path;

use hookrelay_common::ids::{DeliveryId, EndpointId, ReportId};
use hookrelay_common::proto::v1 as pb;
use hookrelay_common::sealed::MasterKey;
use hookrelay_common::time::to_timestamp;

use super::SledStore;
use crate::store::conformance::{endpoint, id_of, owner, report};
use crate::store::{Report, Store};

fn open() -> (tempfile::TempDir, SledStore) {
    let dir = tempfile::tempdir().unwrap();
    let store = SledStore::open(dir.path(), MasterKey::generate()).unwrap();
    (dir, store)
}

/// Opens the store's sled database itself, once it is unlocked, to read or damage what the store wrote.
fn raw_db(path: &Path) -> sled::Db {
    hookrelay_tests::eventually::when_unlocked(|| sled::open(path)).unwrap()
}
