//! Where uploaded evidence files live: an `object_store` store, a local folder under the data
//! directory by default or any store `RETURNS_EVIDENCE_URL` names (`s3://bucket/prefix` with
//! the standard `AWS_*` settings, `file:///path`, `memory:///` for trials), keyed by dispute
//! and content hash so a file cannot be swapped later.
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
    /// A local folder to open on first use, or `None` when `store` was configured by URL.
    root: Option<PathBuf>,
    /// Key prefix inside the store (the path part of a configured URL).
    prefix: String,
    max_bytes: i64,
    /// Opened on first use, so a service that never receives an upload creates no folder.
    store: Arc<OnceCell<Arc<dyn ObjectStore>>>,
}

/// A `RETURNS_EVIDENCE_URL` the suite cannot use.
#[derive(Debug, thiserror::Error)]
#[error("RETURNS_EVIDENCE_URL {url:?}: {reason}")]
pub struct EvidenceUrlError {
    pub url: String,
    pub reason: String,
}

impl EvidenceStore {
    /// Files under `root` (created when the first file arrives).
    pub fn local(root: impl Into<PathBuf>) -> Self {
        EvidenceStore {
            root: Some(root.into()),
            prefix: String::new(),
            max_bytes: MAX_EVIDENCE_BYTES,
            store: Arc::default(),
        }
    }

    /// The store a URL names: `file:///path` is a local folder; `s3://bucket/prefix` (with
    /// the `AWS_*` environment: region, credentials, endpoint) and `memory:///` go through
    /// `object_store`. Checked at start, so a typo fails the service rather than an upload.
    pub fn from_url(url: &str) -> Result<Self, EvidenceUrlError> {
        let refuse = |reason: String| EvidenceUrlError {
            url: url.to_string(),
            reason,
        };
        let parsed = url::Url::parse(url).map_err(|error| refuse(error.to_string()))?;
        if parsed.scheme() == "file" {
            let root = parsed
                .to_file_path()
                .map_err(|_| refuse("not a local path".to_string()))?;
            return Ok(Self::local(root));
        }
        if !matches!(parsed.scheme(), "s3" | "s3a" | "memory") {
            return Err(refuse(format!(
                "unsupported scheme {:?}; use s3://, file:// or memory://",
                parsed.scheme()
            )));
        }
        // object_store reads its S3 settings under lower-case names (aws_region, ...).
        let options = std::env::vars()
            .filter(|(key, _)| key.starts_with("AWS_"))
            .map(|(key, value)| (key.to_ascii_lowercase(), value));
        let (store, prefix) = object_store::parse_url_opts(&parsed, options)
            .map_err(|error| refuse(error.to_string()))?;
        let cell = OnceCell::new_with(Some(Arc::from(store)));
        Ok(EvidenceStore {
            root: None,
            prefix: prefix.to_string(),
            max_bytes: MAX_EVIDENCE_BYTES,
            store: Arc::new(cell),
        })
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
                let root = self.root.as_ref().ok_or_else(|| {
                    ApiError::Internal("evidence store configured without a location".into())
                })?;
                // Buyers' photos and videos: readable by the service's user only.
                let folder = root.clone();
                tokio::task::spawn_blocking(move || returns_platform::db::private_dir_all(&folder))
                    .await
                    .map_err(ApiError::internal)?
                    .map_err(ApiError::internal)?;
                let store = LocalFileSystem::new_with_prefix(root).map_err(ApiError::internal)?;
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
        let path = self.path(&key)?;
        self.store()
            .await?
            .put(&path, bytes.into())
            .await
            .map_err(ApiError::internal)?;
        Ok(format!("{URI_PREFIX}{key}"))
    }

    /// The store path of `key`, under the configured prefix.
    fn path(&self, key: &str) -> Result<Path, ApiError> {
        let full = if self.prefix.is_empty() {
            key.to_string()
        } else {
            format!("{}/{key}", self.prefix)
        };
        Path::parse(full).map_err(ApiError::internal)
    }

    /// Reads a stored file back (for tests and future downloads).
    pub async fn get(&self, uri: &str) -> Result<Vec<u8>, ApiError> {
        let key = uri
            .strip_prefix(URI_PREFIX)
            .ok_or_else(|| ApiError::invalid("uri", "is not a suite evidence URI"))?;
        let path = self
            .path(key)
            .map_err(|_| ApiError::invalid("uri", "is not a valid key"))?;
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
