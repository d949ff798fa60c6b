//! Test images: real JPEGs of an exact size (a small generated picture, padded with JPEG comment
//! segments), JPEG-shaped random bytes for sizes too small for that, and chunking at the
//! protocol's chunk size.

use bytes::Bytes;

/// A real, decodable JPEG of exactly `len` bytes when `len` allows (about 1.5 KB and up): a
/// 160×120 colour gradient that depends on `seed`, padded with COM segments after SOI.
/// Smaller sizes fall back to [`jpeg_like`].
pub fn jpeg(len: usize, seed: u64) -> Bytes {
    for (w, h) in [(160u32, 120u32), (48, 36), (16, 12)] {
        let base = encode(w, h, seed);
        if base.len() + 4 <= len || base.len() == len {
            return Bytes::from(pad(base, len));
        }
    }
    jpeg_like(len, seed)
}

fn encode(w: u32, h: u32, seed: u64) -> Vec<u8> {
    let (r0, g0, b0) = (
        seed.wrapping_mul(67) % 256,
        seed.wrapping_mul(131) % 256,
        seed.wrapping_mul(29) % 256,
    );
    let img = image::RgbImage::from_fn(w, h, |x, y| {
        let r = (r0 as u32 + x * 255 / w) % 256;
        let g = (g0 as u32 + y * 255 / h) % 256;
        let b = (b0 as u32 + (x + y) * 2) % 256;
        image::Rgb([r as u8, g as u8, b as u8])
    });
    let mut out = Vec::new();
    let mut enc = image::codecs::jpeg::JpegEncoder::new_with_quality(&mut out, 80);
    enc.encode_image(&img)
        .expect("encoding a generated JPEG into memory cannot fail");
    out
}

/// Inserts COM segments (FF FE, 2-byte length) after SOI until the file is `len` bytes.
fn pad(jpeg: Vec<u8>, len: usize) -> Vec<u8> {
    let mut need = len - jpeg.len();
    let mut out = Vec::with_capacity(len);
    out.extend_from_slice(&jpeg[..2]);
    while need > 0 {
        // A segment is 4 bytes of header plus 0..=65533 bytes of payload; never leave 1..=3.
        let mut seg = need.min(65_537);
        if need - seg > 0 && need - seg < 4 {
            seg -= 4;
        }
        let payload = seg - 4;
        out.extend_from_slice(&[0xFF, 0xFE]);
        out.extend_from_slice(&((payload + 2) as u16).to_be_bytes());
        out.extend(std::iter::repeat_n(b' ', payload));
        need -= seg;
    }
    out.extend_from_slice(&jpeg[2..]);
    out
}

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
    fn generated_jpegs_have_the_exact_size_and_decode() {
        for len in [2_000, 51_234, 51_200, 200_000] {
            let img = jpeg(len, 3);
            assert_eq!(img.len(), len);
            let decoded = image::load_from_memory_with_format(&img, image::ImageFormat::Jpeg)
                .expect("decodes");
            assert!(decoded.width() >= 16);
        }
        assert_eq!(jpeg(300, 1).len(), 300);
    }

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
