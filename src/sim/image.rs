//! Test images: deterministic JPEG-shaped bytes (SOI/APP0 header, pseudo-random body, EOI) and
//! chunking at the protocol's chunk size.

use bytes::Bytes;

/// A deterministic JPEG-shaped image of exactly `len` bytes (at least 24).
pub fn jpeg_like(len: usize, seed: u64) -> Bytes {
    let len = len.max(24);
    let mut v = Vec::with_capacity(len);
    v.extend_from_slice(&[
        0xFF, 0xD8, 0xFF, 0xE0, 0x00, 0x10, b'J', b'F', b'I', b'F', 0x00, 0x01, 0x01, 0x00,
    ]);
    let mut x = seed
        .wrapping_mul(6364136223846793005)
        .wrapping_add(1442695040888963407)
        | 1;
    while v.len() < len - 2 {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        v.push((x >> 24) as u8);
    }
    v.extend_from_slice(&[0xFF, 0xD9]);
    Bytes::from(v)
}

/// The bytes of chunk `index` (zero-copy slice).
pub fn chunk(image: &Bytes, chunk_size: usize, index: usize) -> Bytes {
    let start = index * chunk_size;
    image.slice(start..(start + chunk_size).min(image.len()))
}

/// Number of chunks.
pub fn total_chunks(image_len: usize, chunk_size: usize) -> usize {
    image_len.div_ceil(chunk_size)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn images_have_the_requested_size_and_jpeg_markers() {
        let img = jpeg_like(51_234, 7);
        assert_eq!(img.len(), 51_234);
        assert_eq!(&img[..2], &[0xFF, 0xD8]);
        assert_eq!(&img[img.len() - 2..], &[0xFF, 0xD9]);
        assert_eq!(img, jpeg_like(51_234, 7));
        assert_ne!(img, jpeg_like(51_234, 8));
        assert_eq!(total_chunks(img.len(), 1024), 51);
        assert_eq!(chunk(&img, 1024, 50).len(), 51_234 - 50 * 1024);
    }
}
