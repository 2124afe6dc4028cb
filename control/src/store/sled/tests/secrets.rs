//! Secrets at rest in sled's files: never in the clear, tampered or moved records, records of earlier versions.

use prost::Message;

use super::*;
use crate::error::Error;
use crate::store::secrets::{StoredEndpoint, secret_context};
use crate::store::sled::secrets::KEY_CHECK_KEY;

#[tokio::test]
async fn secrets_are_sealed_at_rest_and_open_only_under_the_right_key() {
    let dir = tempfile::tempdir().unwrap();
    let key = MasterKey::generate();
    let created = {
        let store = SledStore::reopen(dir.path(), key.clone()).unwrap();
        store.create_owner(owner("acme")).await.unwrap();
        store.create_endpoint(endpoint("acme", &["*"]), 10).await.unwrap()
    };
    let secret = created.secrets[0].clone();
    // Nowhere in the database files does the secret appear in the clear.
    for file in walk(dir.path()) {
        let bytes = std::fs::read(&file).unwrap();
        let key_bytes = &secret.as_bytes()["whsec_".len()..];
        assert!(!bytes.windows(key_bytes.len()).any(|window| window == key_bytes), "{} has it", file.display());
    }

    let error = SledStore::reopen(dir.path(), MasterKey::generate()).err().expect("a wrong key is refused");
    assert!(matches!(error, Error::WrongMasterKey));
    assert!(error.to_string().starts_with("the master key does not match"), "{error}");

    let store = SledStore::reopen(dir.path(), key).unwrap();
    let snapshot = store.config_snapshot().await.unwrap();
    assert_eq!(snapshot.endpoints[0].secrets, [secret]);
    assert_eq!(store.get_endpoint(&id_of(&created)).await.unwrap(), created.endpoint.unwrap());
}

fn walk(dir: &Path) -> Vec<std::path::PathBuf> {
    let mut files = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() { files.extend(walk(&path)) } else { files.push(path) }
    }
    files
}

/// Rewrites the stored record of endpoint `id` with `edit`, through sled directly.
fn tamper(dir: &Path, id: &EndpointId, edit: impl FnOnce(&mut StoredEndpoint)) {
    let db = raw_db(dir);
    let tree = db.open_tree("endpoints").unwrap();
    let mut stored = StoredEndpoint::decode(&tree.get(id.as_str()).unwrap().unwrap()[..]).unwrap();
    edit(&mut stored);
    tree.insert(id.as_str(), stored.encode_to_vec()).unwrap();
    db.flush().unwrap();
}

#[tokio::test]
async fn tampered_or_moved_secrets_fail_loudly_instead_of_signing_with_garbage() {
    let dir = tempfile::tempdir().unwrap();
    let key = MasterKey::generate();
    let (first, second) = {
        let store = SledStore::reopen(dir.path(), key.clone()).unwrap();
        store.create_owner(owner("acme")).await.unwrap();
        let first = store.create_endpoint(endpoint("acme", &["*"]), 10).await.unwrap();
        (first, store.create_endpoint(endpoint("acme", &["*"]), 10).await.unwrap())
    };
    tamper(dir.path(), &id_of(&first), |stored| {
        let last = stored.secrets[0].sealed.len() - 1;
        stored.secrets[0].sealed[last] ^= 0x40;
    });
    {
        let store = SledStore::reopen(dir.path(), key.clone()).unwrap();
        let error = store.config_snapshot().await.unwrap_err();
        assert!(matches!(error, Error::Corrupt { .. }));
        assert_eq!(
            error.to_string(),
            format!(
                "stored signing secret of endpoint {} is corrupt: sealed value does not open: tampered with, moved \
                 from another record, or sealed under another key",
                id_of(&first)
            )
        );
        assert_eq!(tonic::Status::from(error).code(), tonic::Code::Internal);
        // Reading the endpoint's fields needs no secret.
        store.get_endpoint(&id_of(&first)).await.unwrap();
    }
    // A valid sealed secret copied from another endpoint does not open either: secrets are bound to their id.
    let dir2 = dir.path().to_owned();
    let borrowed = {
        let db = raw_db(&dir2);
        let tree = db.open_tree("endpoints").unwrap();
        StoredEndpoint::decode(&tree.get(id_of(&second).as_str()).unwrap().unwrap()[..]).unwrap().secrets
    };
    tamper(dir.path(), &id_of(&first), |stored| stored.secrets = borrowed);
    let store = SledStore::reopen(dir.path(), key).unwrap();
    assert!(matches!(store.config_snapshot().await.unwrap_err(), Error::Corrupt { .. }));
}

#[tokio::test]
async fn plaintext_secrets_of_earlier_versions_are_sealed_on_open() {
    let dir = tempfile::tempdir().unwrap();
    let legacy = endpoint("acme", &["*"]);
    let secret = legacy.secrets[0].clone();
    {
        let store = SledStore::reopen(dir.path(), MasterKey::generate()).unwrap();
        store.create_owner(owner("acme")).await.unwrap();
    }
    {
        // What an earlier version wrote: the agent's view, secrets in the clear, and no key check yet.
        let db = raw_db(dir.path());
        db.open_tree("meta").unwrap().remove(KEY_CHECK_KEY).unwrap();
        db.open_tree("endpoints").unwrap().insert(id_of(&legacy).as_str(), legacy.encode_to_vec()).unwrap();
        db.flush().unwrap();
    }
    let key = MasterKey::generate();
    {
        let store = SledStore::reopen(dir.path(), key.clone()).unwrap();
        assert_eq!(store.config_snapshot().await.unwrap().endpoints, std::slice::from_ref(&legacy));
    }
    let db = raw_db(dir.path());
    let raw = db.open_tree("endpoints").unwrap().get(id_of(&legacy).as_str()).unwrap().unwrap();
    let stored = StoredEndpoint::decode(&raw[..]).unwrap();
    assert!(stored.legacy_secrets.is_empty());
    assert_eq!(
        key.open(&stored.secrets[0].sealed, &secret_context(id_of(&legacy).as_str())).unwrap(),
        secret.as_bytes()
    );
}
