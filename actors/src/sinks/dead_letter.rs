//! The dead-letter directory: images whose upload failed after every retry are written here,
//! with a JSON sidecar describing the capture, so that `fleetflow replay-dead-letters` can
//! upload them later. The directory is bounded by `objects.dead_letter_max_bytes`.

use std::path::{Path, PathBuf};

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::metrics as m;
use fleetflow_protocol::state_machine::StoreRequest;

/// What the sidecar records about a dead-lettered capture.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct DeadLetter {
    /// The device.
    pub device_id: String,
    /// The device's capture id.
    pub capture_id: String,
    /// Capture time (dates the object key).
    pub captured_at: DateTime<Utc>,
    /// The object key the image belongs at.
    pub object_key: String,
    /// Size.
    pub image_bytes: u32,
    /// Chunk size.
    pub chunk_size: u32,
    /// Chunk count.
    pub total_chunks: u32,
    /// Announced checksum.
    pub sha256: Option<String>,
    /// Why the upload failed.
    pub reason: String,
    /// When it was written here.
    pub failed_at: DateTime<Utc>,
}

/// Dead-letter I/O errors.
#[derive(Debug, thiserror::Error)]
pub enum DeadLetterError {
    /// Over the configured size.
    #[error("dead-letter directory is full ({used} of {max} bytes)")]
    Full {
        /// Bytes in use.
        used: u64,
        /// Limit.
        max: u64,
    },
    /// Filesystem error.
    #[error("dead-letter I/O: {0}")]
    Io(#[from] std::io::Error),
    /// Bad sidecar.
    #[error("dead-letter sidecar: {0}")]
    Json(#[from] serde_json::Error),
}

/// The directory.
#[derive(Debug, Clone)]
pub struct DeadLetterDir {
    root: PathBuf,
    max_bytes: u64,
}

impl DeadLetterDir {
    /// A directory at `root` holding at most `max_bytes`.
    pub fn new(root: impl Into<PathBuf>, max_bytes: u64) -> Self {
        Self {
            root: root.into(),
            max_bytes,
        }
    }

    /// The root.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Bytes in the directory. A temporary file older than [`STALE_TMP`] was left by a process
    /// that died mid-write: it is removed instead of counted.
    fn used(&self) -> u64 {
        fn walk(p: &Path) -> u64 {
            let Ok(rd) = std::fs::read_dir(p) else {
                return 0;
            };
            rd.filter_map(|e| e.ok())
                .map(|e| match (e.file_type(), e.metadata()) {
                    (Ok(t), _) if t.is_dir() => walk(&e.path()),
                    (_, Ok(m)) if is_stale_tmp(&e.path(), &m) => {
                        let _ = std::fs::remove_file(e.path());
                        0
                    }
                    (_, m) => m.map(|m| m.len()).unwrap_or(0),
                })
                .sum()
        }
        walk(&self.root)
    }

    /// Keeps the image and its sidecar. Blocking I/O: call from `spawn_blocking`.
    pub fn put(&self, req: &StoreRequest, reason: &str) -> Result<PathBuf, DeadLetterError> {
        let used = self.used();
        if used + req.image.len() as u64 > self.max_bytes {
            return Err(DeadLetterError::Full {
                used,
                max: self.max_bytes,
            });
        }
        let key = req.object_key();
        let path = self.root.join(&key);
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir)?;
        }
        write_durably(&self.root, &path, &req.image)?;
        let meta = DeadLetter {
            device_id: req.device_id.to_string(),
            capture_id: req.capture_id.clone(),
            captured_at: req.captured_at,
            object_key: key,
            image_bytes: req.layout.image_bytes,
            chunk_size: req.layout.chunk_size,
            total_chunks: req.layout.total_chunks,
            sha256: req.sha256.clone(),
            reason: reason.to_string(),
            failed_at: Utc::now(),
        };
        let sidecar = serde_json::to_vec_pretty(&meta).map_err(DeadLetterError::from);
        if let Err(e) = sidecar.and_then(|json| {
            write_durably(&self.root, &path.with_extension("json"), &json).map_err(Into::into)
        }) {
            // Without its sidecar the image would never be listed, replayed or removed.
            let _ = std::fs::remove_file(&path);
            return Err(e);
        }
        metrics::counter!(m::DEAD_LETTERS_TOTAL).increment(1);
        Ok(path)
    }

    /// Every dead letter: (sidecar, image path).
    pub fn list(&self) -> Result<Vec<(DeadLetter, PathBuf)>, DeadLetterError> {
        let mut out = Vec::new();
        fn walk(p: &Path, out: &mut Vec<PathBuf>) {
            let Ok(rd) = std::fs::read_dir(p) else { return };
            for e in rd.filter_map(|e| e.ok()) {
                let path = e.path();
                if path.is_dir() {
                    walk(&path, out);
                } else if path.extension().is_some_and(|x| x == "json") {
                    out.push(path);
                }
            }
        }
        let mut sidecars = Vec::new();
        walk(&self.root, &mut sidecars);
        sidecars.sort();
        for s in sidecars {
            let meta: DeadLetter = serde_json::from_slice(&std::fs::read(&s)?)?;
            out.push((meta, s.with_extension("jpg")));
        }
        Ok(out)
    }

    /// Removes a replayed dead letter.
    pub fn remove(&self, image: &Path) -> Result<(), DeadLetterError> {
        std::fs::remove_file(image)?;
        std::fs::remove_file(image.with_extension("json"))?;
        Ok(())
    }
}

/// How old a temporary file must be to count as left behind by a process that died mid-write.
const STALE_TMP: std::time::Duration = std::time::Duration::from_secs(3600);

/// Whether `path` is one of [`write_durably`]'s temporary files, older than [`STALE_TMP`].
fn is_stale_tmp(path: &Path, meta: &std::fs::Metadata) -> bool {
    let name = path.file_name().unwrap_or_default().to_string_lossy();
    let old = meta
        .modified()
        .ok()
        .and_then(|t| t.elapsed().ok())
        .is_some_and(|age| age > STALE_TMP);
    meta.is_file() && name.starts_with('.') && name.ends_with(".tmp") && old
}

/// Writes `bytes` to `path` so that it survives a power loss once this returns: a temporary file
/// in the same directory, synced, renamed over `path`, then every directory from its own up to
/// `root` synced (`create_dir_all` may just have made them, and a new directory's entry lives in
/// its parent). This copy is what `fleetflow replay-dead-letters` uploads later. A write that
/// fails (a full disk) removes its temporary file, so that it does not count against the
/// directory's bound.
fn write_durably(root: &Path, path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    let name = path.file_name().unwrap_or_default().to_string_lossy();
    let tmp = path.with_file_name(format!(".{name}.tmp"));
    let written = std::fs::File::create(&tmp).and_then(|mut f| {
        f.write_all(bytes)?;
        f.sync_all()
    });
    if let Err(e) = written.and_then(|()| std::fs::rename(&tmp, path)) {
        let _ = std::fs::remove_file(&tmp);
        return Err(e);
    }
    let mut dir = path.parent();
    while let Some(d) = dir {
        std::fs::File::open(d)?.sync_all()?;
        if d == root || !d.starts_with(root) {
            break;
        }
        dir = d.parent();
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::{write_durably, DeadLetterDir};

    #[test]
    fn a_durable_write_replaces_the_file_and_leaves_no_temporary_file() {
        let root = tempfile::tempdir().unwrap();
        let path = root.path().join("a/b/x.jpg");
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        write_durably(root.path(), &path, b"one").unwrap();
        write_durably(root.path(), &path, b"two").unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), b"two");
        let names: Vec<_> = std::fs::read_dir(path.parent().unwrap())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, ["x.jpg"]);
    }

    #[test]
    fn temporary_files_left_over_an_hour_ago_are_removed_and_not_counted() {
        let root = tempfile::tempdir().unwrap();
        let dir = DeadLetterDir::new(root.path(), 1 << 20);
        let stale = root.path().join(".old.jpg.tmp");
        let fresh = root.path().join(".new.jpg.tmp");
        let kept = root.path().join("x.jpg");
        for p in [&stale, &fresh, &kept] {
            std::fs::write(p, [0u8; 100]).unwrap();
        }
        let two_hours_ago = std::time::SystemTime::now() - std::time::Duration::from_secs(7200);
        for p in [&stale, &kept] {
            let f = std::fs::File::options().write(true).open(p).unwrap();
            f.set_modified(two_hours_ago).unwrap();
        }
        // The fresh one may be a write in progress; the old image is data.
        assert_eq!(dir.used(), 200);
        assert!(!stale.exists());
        assert!(fresh.exists() && kept.exists());
    }

    #[test]
    fn an_image_whose_sidecar_cannot_be_written_is_not_left_behind() {
        use fleetflow_protocol::{assembler::Layout, ids::DeviceId, state_machine::StoreRequest};
        let root = tempfile::tempdir().unwrap();
        let dir = DeadLetterDir::new(root.path(), 1 << 20);
        let req = StoreRequest {
            format: fleetflow_protocol::state_machine::WireFormat::V1,
            meta: None,
            device_id: DeviceId::parse("AABBCCDDEEFF").unwrap(),
            capture_id: "c1".into(),
            captured_at: "2026-11-29T12:00:00Z".parse().unwrap(),
            image: bytes::Bytes::from_static(b"jpeg"),
            layout: Layout {
                image_bytes: 4,
                chunk_size: 1024,
                total_chunks: 1,
            },
            sha256: None,
            nack_rounds: 0,
            completed_at: std::time::Instant::now(),
        };
        let image = root.path().join(req.object_key());
        // Positive control: a put that can write both files keeps both.
        assert_eq!(dir.put(&req, "test").unwrap(), image);
        assert!(image.exists() && image.with_extension("json").exists());
        dir.remove(&image).unwrap();
        // A directory where the sidecar goes: its rename fails after the image was written.
        std::fs::create_dir(image.with_extension("json")).unwrap();
        std::fs::write(image.with_extension("json").join("keep"), b"").unwrap();
        assert!(dir.put(&req, "test").is_err());
        assert!(!image.exists(), "the image stayed without its sidecar");
    }

    #[test]
    fn a_failed_durable_write_removes_its_temporary_file() {
        let root = tempfile::tempdir().unwrap();
        // A directory where the file should go: the rename over it fails.
        let path = root.path().join("x.jpg");
        std::fs::create_dir(&path).unwrap();
        std::fs::write(path.join("keep"), b"").unwrap();
        assert!(write_durably(root.path(), &path, b"image").is_err());
        assert!(!root.path().join(".x.jpg.tmp").exists());
        assert!(path.join("keep").exists());
    }
}
