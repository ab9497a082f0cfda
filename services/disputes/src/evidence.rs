//! Where uploaded evidence files live: an `object_store` store, a local folder under the data
//! directory by default, keyed by dispute and content hash so a file cannot be swapped later.
//!
//! The upload RPC checks the content type before storing any byte and counts bytes as they
//! arrive, refusing a file above the limit without buffering the rest.

use std::path::PathBuf;
use std::sync::Arc;

use object_store::ObjectStore;
use object_store::local::LocalFileSystem;
use object_store::path::Path;
use returns_domain::ids::DisputeId;
use returns_domain::negotiation::MAX_EVIDENCE_BYTES;
use returns_platform::ApiError;
use tokio::sync::OnceCell;

/// The URI scheme of files the suite stores itself.
pub const URI_PREFIX: &str = "returns-evidence://";

/// Evidence storage for uploads.
#[derive(Debug, Clone)]
pub struct EvidenceStore {
    root: PathBuf,
    max_bytes: i64,
    /// Opened on first use, so a service that never receives an upload creates no folder.
    store: Arc<OnceCell<Arc<dyn ObjectStore>>>,
}

impl EvidenceStore {
    /// Files under `root` (created when the first file arrives).
    pub fn local(root: impl Into<PathBuf>) -> Self {
        EvidenceStore {
            root: root.into(),
            max_bytes: MAX_EVIDENCE_BYTES,
            store: Arc::default(),
        }
    }

    /// The default folder: `$RETURNS_DATA_DIR/evidence` (`./data/evidence` when unset).
    pub fn default_local() -> Self {
        let data = std::env::var_os("RETURNS_DATA_DIR")
            .map(PathBuf::from)
            .unwrap_or_else(|| PathBuf::from("./data"));
        Self::local(data.join("evidence"))
    }

    /// Lowers the size limit (never above the domain's limit).
    pub fn with_max_bytes(mut self, max_bytes: i64) -> Self {
        self.max_bytes = max_bytes.min(MAX_EVIDENCE_BYTES);
        self
    }

    pub fn max_bytes(&self) -> i64 {
        self.max_bytes
    }

    async fn store(&self) -> Result<&Arc<dyn ObjectStore>, ApiError> {
        self.store
            .get_or_try_init(|| async {
                tokio::fs::create_dir_all(&self.root)
                    .await
                    .map_err(ApiError::internal)?;
                let store =
                    LocalFileSystem::new_with_prefix(&self.root).map_err(ApiError::internal)?;
                Ok::<Arc<dyn ObjectStore>, ApiError>(Arc::new(store))
            })
            .await
    }

    /// Stores `bytes` of a dispute's evidence under its SHA-256 and returns the URI.
    pub async fn put(
        &self,
        dispute: &DisputeId,
        sha256: &str,
        bytes: Vec<u8>,
    ) -> Result<String, ApiError> {
        let key = format!("disputes/{dispute}/{sha256}");
        let path = Path::parse(&key).map_err(ApiError::internal)?;
        self.store()
            .await?
            .put(&path, bytes.into())
            .await
            .map_err(ApiError::internal)?;
        Ok(format!("{URI_PREFIX}{key}"))
    }

    /// Reads a stored file back (for tests and future downloads).
    pub async fn get(&self, uri: &str) -> Result<Vec<u8>, ApiError> {
        let key = uri
            .strip_prefix(URI_PREFIX)
            .ok_or_else(|| ApiError::invalid("uri", "is not a suite evidence URI"))?;
        let path = Path::parse(key).map_err(|_| ApiError::invalid("uri", "is not a valid key"))?;
        let result = self
            .store()
            .await?
            .get(&path)
            .await
            .map_err(|_| ApiError::not_found("evidence", uri))?;
        let bytes = result.bytes().await.map_err(ApiError::internal)?;
        Ok(bytes.to_vec())
    }
}
