//! The last applied config, cached in the queue's tree so that an agent restarted while control is down still
//! delivers. It holds signing secrets, so it is sealed (XChaCha20-Poly1305) under the agent's own key, read from a
//! key file or generated in the data dir on first start. A wrong key fails startup with a clear error rather than
//! leaving the agent to sign with garbage.

use std::path::{Path, PathBuf};

use hookrelay_common::proto::v1 as pb;
use hookrelay_common::sealed::{MasterKey, SealError};
use prost::Message;

use crate::catalog::AppliedConfig;
use crate::queue::{Queue, QueueError};

/// Binds the sealed cache to its purpose, so no other sealed value can be passed off as it.
const CONTEXT: &[u8] = b"hookrelay/agent-config-cache/v1";
/// The key file created in the data dir when no key file is configured.
pub const DEFAULT_KEY_FILE: &str = "cache.key";

/// Why the cached config cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum CacheError {
    #[error("cache key: {0}")]
    Key(SealError),
    #[error(
        "the cached config does not open with the key in {key_file}: it was sealed under another key or tampered \
         with; give the agent the key it was written with, or delete the data dir's cache to start from control's \
         next snapshot"
    )]
    WrongKey { key_file: String },
    #[error("the cached config is corrupt: {0}")]
    Corrupt(prost::DecodeError),
    #[error(transparent)]
    Queue(#[from] QueueError),
}

/// Reads and writes the sealed config cache.
pub struct ConfigCache {
    queue: Queue,
    key: MasterKey,
    key_file: PathBuf,
}

impl ConfigCache {
    /// Loads the key from `key_file`, or from `<data_dir>/cache.key`, creating that file (mode 0600) on first start.
    pub fn open(queue: Queue, key_file: Option<&Path>, data_dir: &Path) -> Result<Self, CacheError> {
        let (key, key_file) = match key_file {
            Some(path) => (MasterKey::read_file(path).map_err(CacheError::Key)?, path.to_owned()),
            None => {
                let path = data_dir.join(DEFAULT_KEY_FILE);
                let key = if path.exists() { MasterKey::read_file(&path) } else { MasterKey::create_file(&path) };
                (key.map_err(CacheError::Key)?, path)
            }
        };
        Ok(Self { queue, key, key_file })
    }

    /// The cached config; the default (version 0) when nothing is cached.
    pub fn load(&self) -> Result<AppliedConfig, CacheError> {
        let Some(sealed) = self.queue.load_config()? else { return Ok(AppliedConfig::default()) };
        let plain = self
            .key
            .open(&sealed, CONTEXT)
            .map_err(|_| CacheError::WrongKey { key_file: self.key_file.display().to_string() })?;
        let snapshot = pb::ConfigSnapshot::decode(plain.as_slice()).map_err(CacheError::Corrupt)?;
        Ok(AppliedConfig::from_snapshot(snapshot))
    }

    /// Seals and durably stores `config`.
    pub async fn save(&self, config: &AppliedConfig) -> Result<(), QueueError> {
        let sealed = self.key.seal(&config.to_snapshot().encode_to_vec(), CONTEXT);
        self.queue.save_config(sealed).await
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use hookrelay_common::signing::Secret;
    use tokio::sync::mpsc;

    use super::*;
    use crate::queue::QueueOptions;

    fn queue(dir: &Path) -> Queue {
        let options = QueueOptions {
            cache_capacity_bytes: 1 << 20,
            dedup_window: Duration::from_secs(60),
            payload_retention: Duration::from_secs(60),
            sweep_interval: Duration::from_secs(60),
            sweep_batch: crate::queue::SWEEP_BATCH,
        };
        Queue::open(dir, options, mpsc::unbounded_channel().0).unwrap().0
    }

    fn config(secret: &str) -> AppliedConfig {
        AppliedConfig::from_snapshot(pb::ConfigSnapshot {
            version: 7,
            endpoints: vec![pb::AgentEndpoint {
                endpoint: Some(pb::Endpoint { id: "ep_1".into(), ..Default::default() }),
                secrets: vec![secret.to_owned()],
            }],
            ..Default::default()
        })
    }

    #[tokio::test]
    async fn round_trips_sealed_and_refuses_another_key() {
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path().join("data");
        let secret = Secret::generate().expose();
        {
            let queue = queue(&data);
            let cache = ConfigCache::open(queue.clone(), None, dir.path()).unwrap();
            assert_eq!(cache.load().unwrap().version, 0);
            cache.save(&config(&secret)).await.unwrap();
            let raw = queue.load_config().unwrap().unwrap();
            assert!(!raw.windows(secret.len()).any(|window| window == secret.as_bytes()), "secret in plaintext");
            assert_eq!(cache.load().unwrap().version, 7);
            queue.close().await;
        }
        let queue = queue(&data);
        let key_file = dir.path().join(DEFAULT_KEY_FILE);
        let reopened = ConfigCache::open(queue.clone(), Some(&key_file), dir.path()).unwrap();
        assert_eq!(reopened.load().unwrap().to_snapshot().endpoints[0].secrets, [secret]);

        let other_key = dir.path().join("other.key");
        MasterKey::create_file(&other_key).unwrap();
        let wrong = ConfigCache::open(queue.clone(), Some(&other_key), dir.path()).unwrap();
        let error = wrong.load().unwrap_err().to_string();
        assert!(error.contains("does not open with the key in") && error.contains("other.key"), "{error}");
        queue.close().await;
    }
}
