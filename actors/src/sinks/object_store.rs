//! Builds the object store from `[objects]`: the local filesystem (default) or S3-compatible.

use std::sync::Arc;

use object_store::aws::{AmazonS3, AmazonS3Builder};
use object_store::local::LocalFileSystem;
use object_store::ObjectStore;

use crate::config::ObjectsConfig;

/// Object store configuration errors.
#[derive(Debug, thiserror::Error)]
pub enum ObjectsError {
    /// The directory cannot be created.
    #[error("objects.url: cannot create {0}: {1}")]
    Dir(String, std::io::Error),
    /// The store refused the settings.
    #[error("objects: {0}")]
    Store(#[from] object_store::Error),
    /// Neither file:// nor s3://.
    #[error("objects.url must start with file:// or s3://, got {0:?}")]
    Scheme(String),
}

/// Where local objects live, for `file://` URLs (`file:///abs` or `file://relative`).
pub fn local_root(url: &str) -> Option<std::path::PathBuf> {
    url.strip_prefix("file://").map(std::path::PathBuf::from)
}

/// Builds the store.
pub fn build(cfg: &ObjectsConfig) -> Result<Arc<dyn ObjectStore>, ObjectsError> {
    if let Some(root) = local_root(&cfg.url) {
        std::fs::create_dir_all(&root)
            .map_err(|e| ObjectsError::Dir(root.display().to_string(), e))?;
        let root = root
            .canonicalize()
            .map_err(|e| ObjectsError::Dir(root.display().to_string(), e))?;
        let local = LocalFileSystem::new_with_prefix(root)?.with_fsync(cfg.fsync);
        return Ok(Arc::new(local));
    }
    if let Some(s3) = s3(cfg)? {
        return Ok(Arc::new(s3));
    }
    Err(ObjectsError::Scheme(cfg.url.clone()))
}

/// The S3 client for an `s3://` URL, `None` for any other scheme. [`build`] makes the store
/// from it, and [`super::signer`] the URL signer, so both see the same bucket and credentials.
pub fn s3(cfg: &ObjectsConfig) -> Result<Option<AmazonS3>, ObjectsError> {
    let Some(bucket) = cfg.url.strip_prefix("s3://") else {
        return Ok(None);
    };
    let bucket = bucket.trim_end_matches('/');
    let mut b = AmazonS3Builder::from_env()
        .with_bucket_name(bucket)
        .with_region(&cfg.region)
        .with_allow_http(cfg.allow_http);
    if let Some(ep) = &cfg.endpoint {
        b = b.with_endpoint(ep).with_virtual_hosted_style_request(false);
    }
    if let Some(k) = &cfg.access_key_id {
        b = b.with_access_key_id(k);
    }
    if let Some(s) = &cfg.secret_access_key {
        b = b.with_secret_access_key(secrecy::ExposeSecret::expose_secret(s));
    }
    Ok(Some(b.build()?))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn local(fsync: Option<bool>) -> Arc<dyn ObjectStore> {
        let dir = std::env::temp_dir().join(format!("ff-objects-{}", std::process::id()));
        let mut cfg = ObjectsConfig {
            url: format!("file://{}", dir.display()),
            ..ObjectsConfig::default()
        };
        if let Some(f) = fsync {
            cfg.fsync = f;
        }
        build(&cfg).unwrap()
    }

    /// A local object is on disk before the write returns (and so before its capture is
    /// acknowledged), unless the operator turned that off.
    #[test]
    fn local_objects_are_fsynced_by_default() {
        assert!(format!("{:?}", local(None)).contains("fsync: true"));
        assert!(format!("{:?}", local(Some(false))).contains("fsync: false"));
    }
}
