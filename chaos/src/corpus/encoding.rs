//! Byte-level building blocks of the corpus: deterministic noise, CRC-32, zlib and deflate of
//! repeated bytes (gigabytes inflated from kilobytes), and a minimal zip writer.

use std::io::Write;

/// `length` bytes of deterministic noise (xorshift) from `seed`.
pub fn noise(length: usize, seed: u64) -> Vec<u8> {
    let mut state = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
    (0..length)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            (state >> 24) as u8
        })
        .collect()
}

/// CRC-32 (zip and PNG) through `flate2`'s implementation, which is fast enough for the
/// gigabyte-long entries of the zip bombs.
pub(super) struct Crc32 {
    inner: flate2::Crc,
}

impl Crc32 {
    pub(super) fn new() -> Self {
        Self {
            inner: flate2::Crc::new(),
        }
    }

    pub(super) fn update(&mut self, bytes: &[u8]) {
        self.inner.update(bytes);
    }

    /// CRC-32 of `count` copies of `byte`, fed in blocks.
    pub(super) fn update_repeated(&mut self, byte: u8, count: usize) {
        let block = [byte; 64 * 1024];
        let mut left = count;
        while left > 0 {
            let take = left.min(block.len());
            self.update(&block[..take]);
            left -= take;
        }
    }

    pub(super) fn finish(&self) -> u32 {
        self.inner.sum()
    }
}

/// A raw deflate stream of `count` copies of `byte`, without its final block. Built from one
/// compressed megabyte repeated: each copy ends on a byte boundary (a sync flush) and only
/// refers back to bytes that are the same, so copies can be concatenated. Fast for gigabytes.
fn deflate_repeated(byte: u8, count: usize) -> Vec<u8> {
    const BLOCK_BYTES: usize = 1024 * 1024;
    fn compress(byte: u8, length: usize) -> Vec<u8> {
        let mut compressor = flate2::Compress::new(flate2::Compression::best(), false);
        let input = vec![byte; length];
        let mut output = Vec::with_capacity(length / 256 + 1024);
        compressor
            .compress_vec(&input, &mut output, flate2::FlushCompress::Sync)
            .expect("deflate in memory cannot fail");
        output
    }
    let whole = compress(byte, BLOCK_BYTES);
    let mut out = Vec::with_capacity(whole.len() * (count / BLOCK_BYTES + 1));
    for _ in 0..count / BLOCK_BYTES {
        out.extend_from_slice(&whole);
    }
    if !count.is_multiple_of(BLOCK_BYTES) {
        out.extend(compress(byte, count % BLOCK_BYTES));
    }
    out
}

/// The final, empty deflate block (fixed Huffman codes, end of block only).
const DEFLATE_END: [u8; 2] = [0x03, 0x00];

/// A zlib stream of `count` zero bytes.
pub(super) fn zlib_zeros(count: usize) -> Vec<u8> {
    let mut out = vec![0x78, 0xda];
    out.extend(deflate_repeated(0, count));
    out.extend_from_slice(&DEFLATE_END);
    // Adler-32 of zeros: a stays 1, b adds 1 per byte.
    let b = (count % 65_521) as u32;
    out.extend_from_slice(&((b << 16) | 1).to_be_bytes());
    out
}

/// A minimal zip writer: deflated or stored entries, then the central directory.
#[derive(Default)]
pub(super) struct ZipWriter {
    out: Vec<u8>,
    central: Vec<u8>,
    entries: u16,
}

impl ZipWriter {
    fn entry(&mut self, name: &str, method: u16, crc: u32, compressed: &[u8], size: u64) {
        let offset = self.out.len() as u32;
        let size = u32::try_from(size).unwrap_or(u32::MAX);
        let mut local = Vec::new();
        local.extend_from_slice(&0x0403_4b50u32.to_le_bytes());
        local.extend_from_slice(&20u16.to_le_bytes());
        local.extend_from_slice(&0u16.to_le_bytes());
        local.extend_from_slice(&method.to_le_bytes());
        local.extend_from_slice(&[0, 0, 0x21, 0]);
        local.extend_from_slice(&crc.to_le_bytes());
        local.extend_from_slice(&(compressed.len() as u32).to_le_bytes());
        local.extend_from_slice(&size.to_le_bytes());
        local.extend_from_slice(&(name.len() as u16).to_le_bytes());
        local.extend_from_slice(&0u16.to_le_bytes());
        local.extend_from_slice(name.as_bytes());
        self.out.extend_from_slice(&local);
        self.out.extend_from_slice(compressed);
        self.central
            .extend_from_slice(&0x0201_4b50u32.to_le_bytes());
        self.central.extend_from_slice(&20u16.to_le_bytes());
        self.central.extend_from_slice(&20u16.to_le_bytes());
        self.central.extend_from_slice(&0u16.to_le_bytes());
        self.central.extend_from_slice(&method.to_le_bytes());
        self.central.extend_from_slice(&[0, 0, 0x21, 0]);
        self.central.extend_from_slice(&crc.to_le_bytes());
        self.central
            .extend_from_slice(&(compressed.len() as u32).to_le_bytes());
        self.central.extend_from_slice(&size.to_le_bytes());
        self.central
            .extend_from_slice(&(name.len() as u16).to_le_bytes());
        self.central.extend_from_slice(&[0; 12]);
        self.central.extend_from_slice(&offset.to_le_bytes());
        self.central.extend_from_slice(name.as_bytes());
        self.entries += 1;
    }

    pub(super) fn add(&mut self, name: &str, data: &[u8]) {
        let mut crc = Crc32::new();
        crc.update(data);
        let mut encoder =
            flate2::write::DeflateEncoder::new(Vec::new(), flate2::Compression::best());
        encoder
            .write_all(data)
            .expect("deflate in memory cannot fail");
        let compressed = encoder.finish().expect("deflate in memory cannot fail");
        self.entry(name, 8, crc.finish(), &compressed, data.len() as u64);
    }

    pub(super) fn add_stored(&mut self, name: &str, data: &[u8]) {
        let mut crc = Crc32::new();
        crc.update(data);
        self.entry(name, 0, crc.finish(), data, data.len() as u64);
    }

    /// `head`, `count` copies of `byte`, `tail`: deflated without ever being held inflated.
    pub(super) fn add_repeated(
        &mut self,
        name: &str,
        head: &[u8],
        byte: u8,
        count: usize,
        tail: &[u8],
    ) {
        let mut crc = Crc32::new();
        crc.update(head);
        crc.update_repeated(byte, count);
        crc.update(tail);
        let mut compressed = stored_block(head);
        compressed.extend(deflate_repeated(byte, count));
        let mut encoder =
            flate2::write::DeflateEncoder::new(Vec::new(), flate2::Compression::best());
        encoder
            .write_all(tail)
            .expect("deflate in memory cannot fail");
        compressed.extend(encoder.finish().expect("deflate in memory cannot fail"));
        let size = (head.len() + count + tail.len()) as u64;
        self.entry(name, 8, crc.finish(), &compressed, size);
    }

    pub(super) fn finish(mut self) -> Vec<u8> {
        let offset = self.out.len() as u32;
        let central = std::mem::take(&mut self.central);
        self.out.extend_from_slice(&central);
        self.out.extend_from_slice(&0x0605_4b50u32.to_le_bytes());
        self.out.extend_from_slice(&[0; 4]);
        self.out.extend_from_slice(&self.entries.to_le_bytes());
        self.out.extend_from_slice(&self.entries.to_le_bytes());
        self.out
            .extend_from_slice(&(central.len() as u32).to_le_bytes());
        self.out.extend_from_slice(&offset.to_le_bytes());
        self.out.extend_from_slice(&0u16.to_le_bytes());
        self.out
    }
}

/// A non-final stored deflate block holding `data` (at most 65535 bytes).
fn stored_block(data: &[u8]) -> Vec<u8> {
    let length = data.len() as u16;
    let mut block = vec![0x00];
    block.extend_from_slice(&length.to_le_bytes());
    block.extend_from_slice(&(!length).to_le_bytes());
    block.extend_from_slice(data);
    block
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;

    #[test]
    fn repeated_deflate_inflates_to_what_it_claims() {
        let zlib = zlib_zeros(3 * 1024 * 1024 + 17);
        let mut inflated = Vec::new();
        flate2::read::ZlibDecoder::new(zlib.as_slice())
            .read_to_end(&mut inflated)
            .expect("a valid zlib stream, checksum included");
        assert_eq!(inflated.len(), 3 * 1024 * 1024 + 17);
        assert!(inflated.iter().all(|byte| *byte == 0));
        assert!(zlib.len() < 8 * 1024, "{} bytes", zlib.len());
    }

    #[test]
    fn zip_entries_read_back_with_their_checksums() {
        let mut zip = ZipWriter::default();
        zip.add("a.xml", b"<a/>");
        zip.add_stored("mimetype", b"text/plain");
        zip.add_repeated("big.txt", b"<t>", b'A', 2 * 1024 * 1024 + 5, b"</t>");
        let bytes = zip.finish();
        // The crc and sizes are checked by inflating the last entry by hand.
        let entry_start = bytes
            .windows(7)
            .position(|window| window == b"big.txt")
            .expect("local header")
            + 7;
        let mut inflated = Vec::new();
        flate2::read::DeflateDecoder::new(&bytes[entry_start..])
            .read_to_end(&mut inflated)
            .expect("inflates");
        assert_eq!(inflated.len(), 3 + 2 * 1024 * 1024 + 5 + 4);
        let mut crc = Crc32::new();
        crc.update(&inflated);
        let mut repeated = Crc32::new();
        repeated.update(b"<t>");
        repeated.update_repeated(b'A', 2 * 1024 * 1024 + 5);
        repeated.update(b"</t>");
        assert_eq!(crc.finish(), repeated.finish());
        let mut bitwise = Crc32::new();
        bitwise.update(b"123456789");
        assert_eq!(bitwise.finish(), 0xcbf4_3926, "the CRC-32 check value");
    }
}
