//! Chunk assembly for one capture (§4.4), as pure logic: one buffer allocated at the announced
//! size, a bitmap of received chunks, duplicate and length checks, and the missing ranges a NACK
//! lists. Timeouts and effects live in the device state machine.
//!
//! Two modes: the strict one of fleetflow's protocol (every chunk's length follows from the
//! announced sizes), and the GXP firmware's, whose declared `image_size` is only checked once
//! every chunk is in (error 2202): there the last chunk may be any length up to the chunk size,
//! and bytes past the declared size are counted, not stored.

use bytes::Bytes;
use sha2::{Digest, Sha256};

/// The sizes a capture announced.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Layout {
    /// Total image size.
    pub image_bytes: u32,
    /// Size of every chunk but the last.
    pub chunk_size: u32,
    /// Number of chunks.
    pub total_chunks: u32,
}

impl Layout {
    /// The expected length of chunk `index`, or `None` when out of range.
    pub fn chunk_len(&self, index: u32) -> Option<usize> {
        if index >= self.total_chunks {
            return None;
        }
        if index + 1 == self.total_chunks {
            let before = u64::from(self.chunk_size) * u64::from(self.total_chunks - 1);
            Some(u64::from(self.image_bytes).saturating_sub(before) as usize)
        } else {
            Some(self.chunk_size as usize)
        }
    }
}

/// What adding one chunk did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChunkOutcome {
    /// Stored; more chunks are missing.
    Accepted,
    /// Stored, and the capture is now complete.
    Complete,
    /// Same index, same bytes: ignored.
    Duplicate,
    /// Index out of range (2207).
    OutOfRange,
    /// Wrong length for its index (2207).
    WrongLength {
        /// Expected bytes.
        expected: usize,
        /// Received bytes.
        got: usize,
    },
    /// Same index, different bytes; the first copy is kept (2207).
    Conflict,
}

/// An in-flight image.
#[derive(Debug)]
pub struct Assembly {
    layout: Layout,
    buf: Vec<u8>,
    received: Vec<u64>,
    received_count: u32,
    /// GXP mode: the declared size is checked at the end, not per chunk.
    lenient: bool,
    /// GXP mode: the last chunk's length, once received.
    tail_len: Option<usize>,
}

impl Assembly {
    /// Allocates the image buffer once, at the announced size.
    pub fn new(layout: Layout) -> Self {
        let words = (layout.total_chunks as usize).div_ceil(64);
        Self {
            layout,
            buf: vec![0; layout.image_bytes as usize],
            received: vec![0; words],
            received_count: 0,
            lenient: false,
            tail_len: None,
        }
    }

    /// The GXP firmware's mode: one buffer at the declared size, every chunk but the last of
    /// `chunk_size` bytes, the last of 1 to `chunk_size` bytes; [`Self::assembled_len`] says
    /// whether the declared size held.
    pub fn new_lenient(layout: Layout) -> Self {
        Self {
            lenient: true,
            ..Self::new(layout)
        }
    }

    /// The image length the chunks make: `(total - 1) × chunk_size + last`. Differs from the
    /// declared size only in the lenient mode (error 2202).
    pub fn assembled_len(&self) -> usize {
        let l = self.layout;
        match self.tail_len {
            Some(tail) => (l.total_chunks as usize - 1) * l.chunk_size as usize + tail,
            None => l.image_bytes as usize,
        }
    }

    /// The announced layout.
    pub fn layout(&self) -> Layout {
        self.layout
    }

    /// Bytes this assembly holds.
    pub fn held_bytes(&self) -> usize {
        self.buf.len() + self.received.len() * 8
    }

    fn has(&self, index: u32) -> bool {
        self.received[(index / 64) as usize] & (1 << (index % 64)) != 0
    }

    /// Adds one chunk, copying its bytes into place.
    pub fn add(&mut self, index: u32, data: &[u8]) -> ChunkOutcome {
        if let Some(bad) = self.check_len(index, data.len()) {
            return bad;
        }
        let start = (index as usize * self.layout.chunk_size as usize).min(self.buf.len());
        // Lenient mode: bytes past the declared size are not stored (the size check fails).
        let end = (start + data.len()).min(self.buf.len());
        let stored = &data[..end - start];
        let is_last = index + 1 == self.layout.total_chunks;
        if self.has(index) {
            let same_len = !(self.lenient && is_last) || self.tail_len == Some(data.len());
            return if same_len && self.buf[start..end] == *stored {
                ChunkOutcome::Duplicate
            } else {
                ChunkOutcome::Conflict
            };
        }
        self.buf[start..end].copy_from_slice(stored);
        if self.lenient && is_last {
            self.tail_len = Some(data.len());
        }
        self.received[(index / 64) as usize] |= 1 << (index % 64);
        self.received_count += 1;
        if self.is_complete() {
            ChunkOutcome::Complete
        } else {
            ChunkOutcome::Accepted
        }
    }

    /// `Some(outcome)` when `len` bytes are wrong for chunk `index`.
    fn check_len(&self, index: u32, len: usize) -> Option<ChunkOutcome> {
        let expected = match self.layout.chunk_len(index) {
            None => return Some(ChunkOutcome::OutOfRange),
            Some(_) if self.lenient && index + 1 == self.layout.total_chunks => {
                let max = self.layout.chunk_size as usize;
                return (len == 0 || len > max).then_some(ChunkOutcome::WrongLength {
                    expected: max,
                    got: len,
                });
            }
            Some(_) if self.lenient => self.layout.chunk_size as usize,
            Some(e) => e,
        };
        (len != expected).then_some(ChunkOutcome::WrongLength { expected, got: len })
    }

    /// Whether the image starts with the JPEG SOI marker (`FF D8`) and ends with EOI (`FF D9`).
    pub fn is_jpeg(&self) -> bool {
        let b = &self.buf;
        b.len() >= 4 && b[..2] == [0xFF, 0xD8] && b[b.len() - 2..] == [0xFF, 0xD9]
    }

    /// Whether every chunk is present.
    pub fn is_complete(&self) -> bool {
        self.received_count == self.layout.total_chunks
    }

    /// Chunks received so far.
    pub fn received_count(&self) -> u32 {
        self.received_count
    }

    /// Missing chunk indexes as inclusive ranges, in order.
    pub fn missing_ranges(&self) -> Vec<[u32; 2]> {
        let mut out = Vec::new();
        let mut start: Option<u32> = None;
        for i in 0..self.layout.total_chunks {
            match (self.has(i), start) {
                (false, None) => start = Some(i),
                (true, Some(s)) => {
                    out.push([s, i - 1]);
                    start = None;
                }
                _ => {}
            }
        }
        if let Some(s) = start {
            out.push([s, self.layout.total_chunks - 1]);
        }
        out
    }

    /// Forgets every chunk (after a checksum mismatch) but keeps the buffer.
    pub fn reset(&mut self) {
        self.received.iter_mut().for_each(|w| *w = 0);
        self.received_count = 0;
        self.tail_len = None;
    }

    /// Checks the SHA-256 of the complete image against `expected_hex`.
    pub fn verify_sha256(&self, expected_hex: &str) -> bool {
        let digest = Sha256::digest(&self.buf);
        let mut hex = [0u8; 64];
        if hex::encode_to_slice(digest, &mut hex).is_err() {
            return false;
        }
        hex.eq_ignore_ascii_case(expected_hex.as_bytes())
    }

    /// The complete image, without copying the buffer.
    pub fn into_image(self) -> Bytes {
        Bytes::from(self.buf)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn layout(image_bytes: u32, chunk_size: u32) -> Layout {
        Layout {
            image_bytes,
            chunk_size,
            total_chunks: image_bytes.div_ceil(chunk_size),
        }
    }

    fn image(n: usize) -> Vec<u8> {
        (0..n).map(|i| (i * 31 % 251) as u8).collect()
    }

    #[test]
    fn the_last_chunk_is_shorter_and_everything_else_is_chunk_size() {
        let l = layout(51_234, 1024);
        assert_eq!(l.total_chunks, 51);
        assert_eq!(l.chunk_len(0), Some(1024));
        assert_eq!(l.chunk_len(50), Some(51_234 - 1024 * 50));
        assert_eq!(l.chunk_len(51), None);
    }

    #[test]
    fn missing_ranges_are_inclusive_and_merged() {
        let img = image(51_234);
        let mut a = Assembly::new(layout(51_234, 1024));
        for i in (0..51).filter(|i| *i != 3 && !(17..=20).contains(i)) {
            let s = i as usize * 1024;
            a.add(i, &img[s..(s + 1024).min(img.len())]);
        }
        assert_eq!(a.missing_ranges(), vec![[3, 3], [17, 20]]);
    }

    #[test]
    fn bad_chunks_are_classified() {
        let img = image(3000);
        let mut a = Assembly::new(layout(3000, 1024));
        assert_eq!(a.add(3, &img[..1]), ChunkOutcome::OutOfRange);
        assert_eq!(
            a.add(0, &img[..10]),
            ChunkOutcome::WrongLength {
                expected: 1024,
                got: 10
            }
        );
        assert_eq!(a.add(0, &img[..1024]), ChunkOutcome::Accepted);
        assert_eq!(a.add(0, &img[..1024]), ChunkOutcome::Duplicate);
        assert_eq!(a.add(0, &img[1..1025]), ChunkOutcome::Conflict);
        assert_eq!(a.add(1, &img[1024..2048]), ChunkOutcome::Accepted);
        assert_eq!(a.add(2, &img[2048..]), ChunkOutcome::Complete);
        assert_eq!(&a.into_image()[..], &img[..]);
    }

    #[test]
    fn sha256_is_verified_case_insensitively() {
        let img = image(700);
        let mut a = Assembly::new(layout(700, 256));
        for i in 0..3u32 {
            let s = i as usize * 256;
            a.add(i, &img[s..(s + 256).min(700)]);
        }
        let hex = hex::encode(Sha256::digest(&img));
        assert!(a.verify_sha256(&hex));
        assert!(a.verify_sha256(&hex.to_uppercase()));
        assert!(!a.verify_sha256(&"0".repeat(64)));
    }

    #[test]
    fn lenient_mode_checks_the_declared_size_only_at_the_end() {
        // The worker's size-mismatch test: 6 bytes in 3 chunks of 2, declared 100.
        let l = Layout {
            image_bytes: 100,
            chunk_size: 2,
            total_chunks: 3,
        };
        let mut a = Assembly::new_lenient(l);
        assert_eq!(a.add(2, &[0xFF, 0xD9]), ChunkOutcome::Accepted);
        assert_eq!(a.add(0, &[0xFF, 0xD8]), ChunkOutcome::Accepted);
        assert_eq!(
            a.add(1, &[1]),
            ChunkOutcome::WrongLength {
                expected: 2,
                got: 1
            }
        );
        assert_eq!(a.add(1, &[0xAA, 0xBB]), ChunkOutcome::Complete);
        assert_eq!(a.assembled_len(), 6);
        // Declared smaller than the chunks: the excess is counted, not written.
        let small = Layout {
            image_bytes: 3,
            chunk_size: 2,
            total_chunks: 2,
        };
        let mut b = Assembly::new_lenient(small);
        assert_eq!(b.add(1, &[3, 4]), ChunkOutcome::Accepted);
        assert_eq!(b.add(1, &[3, 4]), ChunkOutcome::Duplicate);
        assert_eq!(b.add(1, &[3]), ChunkOutcome::Conflict);
        assert_eq!(b.add(0, &[1, 2]), ChunkOutcome::Complete);
        assert_eq!(b.assembled_len(), 4);
        // Exact: the image is the buffer.
        let exact = Layout {
            image_bytes: 4,
            chunk_size: 2,
            total_chunks: 2,
        };
        let mut c = Assembly::new_lenient(exact);
        c.add(0, &[0xFF, 0xD8]);
        assert_eq!(c.add(1, &[0xFF, 0xD9]), ChunkOutcome::Complete);
        assert_eq!(c.assembled_len(), 4);
        assert_eq!(&c.into_image()[..], &[0xFF, 0xD8, 0xFF, 0xD9]);
    }

    proptest! {
        /// Model: a set of received indexes. Any order, with duplicates and gaps, the assembly
        /// agrees with the model on completeness, missing ranges and, once complete, the bytes.
        #[test]
        fn assembly_matches_a_set_model_under_reordering_duplicates_and_gaps(
            image_bytes in 1u32..20_000,
            chunk_size in 256u32..2048,
            ops in proptest::collection::vec((0u32..100, any::<bool>(), any::<bool>()), 0..300),
        ) {
            let l = layout(image_bytes, chunk_size);
            let img = image(image_bytes as usize);
            let mut a = Assembly::new(l);
            let mut model = std::collections::BTreeSet::new();
            for (raw, corrupt, short) in ops {
                let i = raw % (l.total_chunks + 2);
                let start = (i as usize) * chunk_size as usize;
                let good: Vec<u8> = if i < l.total_chunks {
                    img[start..(start + chunk_size as usize).min(img.len())].to_vec()
                } else { vec![0; chunk_size as usize] };
                let mut data = good.clone();
                if corrupt && !data.is_empty() { data[0] ^= 0xff; }
                if short && data.len() > 1 { data.pop(); }
                let out = a.add(i, &data);
                if i >= l.total_chunks {
                    prop_assert_eq!(out, ChunkOutcome::OutOfRange);
                } else if short && good.len() > 1 {
                    prop_assert!(matches!(out, ChunkOutcome::WrongLength { expected: _, got: _ }), "wrong length expected");
                } else if model.contains(&i) {
                    prop_assert!(matches!(out, ChunkOutcome::Duplicate | ChunkOutcome::Conflict));
                } else if !corrupt {
                    model.insert(i);
                    prop_assert!(matches!(out, ChunkOutcome::Accepted | ChunkOutcome::Complete));
                } else {
                    // A corrupt first copy is accepted (nothing to compare against); repair it
                    // in the model by resetting, which is what a checksum NACK does.
                    a.reset();
                    model.clear();
                }
            }
            prop_assert_eq!(a.is_complete(), model.len() as u32 == l.total_chunks);
            let missing: u32 = a.missing_ranges().iter().map(|[s, e]| e - s + 1).sum();
            prop_assert_eq!(missing, l.total_chunks - model.len() as u32);
            if a.is_complete() {
                prop_assert_eq!(&a.into_image()[..], &img[..]);
            }
        }
    }
}
