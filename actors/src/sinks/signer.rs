//! Signs object URLs (presigned `GET`s) for stores that can: S3 and S3-compatible servers. The
//! local filesystem cannot; callers then fall back to serving the bytes themselves.
//!
//! Built from the same `[objects]` settings as the store ([`super::object_store::s3`]), so a
//! signed URL names the bucket and endpoint the engine writes to. A URL signed with static
//! keys stays valid for its whole lifetime (S3 caps it at 7 days, [`MAX_EXPIRY`]); one signed
//! with temporary credentials ends when they do.

use std::sync::Arc;
use std::time::Duration;

use object_store::signer::Signer;

use super::object_store::{s3, ObjectsError};
use crate::config::ObjectsConfig;

/// The longest lifetime S3 accepts for a presigned URL (SigV4: 604800 s).
pub const MAX_EXPIRY: Duration = Duration::from_secs(7 * 24 * 3600);

/// The URL signer for `cfg`'s store: `Some` for `s3://`, `None` for `file://` (no signer).
pub fn build(cfg: &ObjectsConfig) -> Result<Option<Arc<dyn Signer>>, ObjectsError> {
    Ok(s3(cfg)?.map(|s3| Arc::new(s3) as Arc<dyn Signer>))
}

#[cfg(test)]
mod tests {
    use object_store::path::Path;
    use object_store::signer::Method;

    use super::*;

    fn objects(url: &str) -> ObjectsConfig {
        ObjectsConfig {
            url: url.into(),
            endpoint: Some("http://127.0.0.1:19000".into()),
            allow_http: true,
            access_key_id: Some("AKIDEXAMPLE".into()),
            secret_access_key: Some("secret".into()),
            ..ObjectsConfig::default()
        }
    }

    #[tokio::test]
    async fn an_s3_store_signs_a_get_for_the_bucket_and_path_it_writes_to() {
        let signer = build(&objects("s3://bucket-a")).unwrap().expect("a signer");
        let url = signer
            .signed_url(
                Method::GET,
                &Path::from("captures/AABBCCDDEEFF/img_1.jpg"),
                Duration::from_secs(900),
            )
            .await
            .unwrap();
        let s = url.as_str();
        assert!(
            s.starts_with("http://127.0.0.1:19000/bucket-a/captures/AABBCCDDEEFF/img_1.jpg?"),
            "{s}"
        );
        assert!(s.contains("X-Amz-Expires=900"), "{s}");
        assert!(s.contains("X-Amz-Signature="), "{s}");
        assert!(!s.contains("secret"), "{s}");
    }

    #[test]
    fn the_local_filesystem_has_no_signer() {
        let dir = std::env::temp_dir();
        let url = format!("file://{}", dir.display());
        assert!(build(&objects(&url)).unwrap().is_none());
    }
}
