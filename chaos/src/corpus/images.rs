//! Hostile images: decompression bombs (huge declared dimensions in every format, a PNG whose
//! zlib stream inflates to a 20000×20000 picture, resizes whose buffers would be gigabytes)
//! and broken files (a real picture cut in half, magic bytes followed by noise).

use super::HostileInput;
use super::encoding::{Crc32, noise, zlib_zeros};

pub(super) fn image_bombs() -> Vec<HostileInput> {
    vec![
        HostileInput::new(
            "png-huge-dimensions.png",
            "png",
            &["jpeg"],
            "a 100-byte PNG declaring 1000000×1000000 RGBA pixels (4 TB decoded)",
            png(1_000_000, 1_000_000, 6, &zlib_zeros(1024)),
        ),
        HostileInput::new(
            "png-20000-square-resize.png",
            "png",
            &["jpeg"],
            "the issue's 389 KB PNG: 20000×20000 grey pixels whose zlib stream inflates to 400 MB, resized to 6000 wide (2 GB of float buffers)",
            png(20_000, 20_000, 0, &zlib_zeros(20_000 * 20_001)),
        )
        .with_option("width", 6000),
        HostileInput::new(
            "png-resize-buffers.png",
            "png",
            &["png"],
            "a 10000×10000 grey PNG that decodes within limits, resized to 4000 wide: the resize's float buffers need 900 MB",
            png(10_000, 10_000, 0, &zlib_zeros(10_000 * 10_001)),
        )
        .with_option("width", 4000),
        HostileInput::new(
            "png-zlib-bomb.png",
            "png",
            &["jpeg"],
            "a 64×64 PNG whose IDAT zlib stream inflates to 1 GiB and never ends properly",
            png_unterminated(64, 64, 0, &zlib_zeros(1024 * 1024 * 1024)),
        ),
        HostileInput::new(
            "gif-huge-dimensions.gif",
            "gif",
            &["png"],
            "a GIF whose screen and frame declare 65535×65535 pixels",
            gif_huge(),
        ),
        HostileInput::new(
            "webp-huge-dimensions.webp",
            "webp",
            &["png"],
            "a lossless WebP header declaring 16384×16384 pixels (1 GiB RGBA) with no image data",
            webp_huge(),
        ),
        HostileInput::new(
            "tiff-huge-dimensions.tiff",
            "tiff",
            &["png"],
            "a TIFF whose IFD declares 1000000×1000000 pixels in one strip of one byte",
            tiff_huge(),
        ),
        HostileInput::new(
            "bmp-huge-dimensions.bmp",
            "bmp",
            &["png"],
            "a BMP header declaring 1000000×1000000 24-bit pixels and no pixel data",
            bmp_huge(),
        ),
        HostileInput::new(
            "jpeg-huge-dimensions.jpg",
            "jpeg",
            &["png"],
            "a JPEG frame header declaring 65500×65500 pixels and nothing else",
            jpeg_huge(),
        ),
    ]
}

/// Each image format: a real small picture cut in half, and its magic bytes followed by noise.
pub(super) fn broken_images() -> Vec<HostileInput> {
    let formats: [(&'static str, &str, image::ImageFormat, &[u8]); 6] = [
        ("png", "png", image::ImageFormat::Png, b"\x89PNG\r\n\x1a\n"),
        ("jpeg", "jpg", image::ImageFormat::Jpeg, b"\xff\xd8\xff\xe0"),
        ("gif", "gif", image::ImageFormat::Gif, b"GIF89a"),
        (
            "webp",
            "webp",
            image::ImageFormat::WebP,
            b"RIFF\x00\x10\x00\x00WEBPVP8L",
        ),
        ("bmp", "bmp", image::ImageFormat::Bmp, b"BM"),
        ("tiff", "tiff", image::ImageFormat::Tiff, b"II*\x00"),
    ];
    let mut inputs = Vec::new();
    for (format, extension, encoding, magic) in formats {
        let target = if format == "png" { "jpeg" } else { "png" };
        let mut truncated = small_picture(encoding);
        truncated.truncate(truncated.len() / 2);
        inputs.push(HostileInput::new(
            &format!("{format}-truncated.{extension}"),
            format,
            &[target],
            "a valid small picture cut in half",
            truncated,
        ));
        let mut garbage = magic.to_vec();
        garbage.extend(noise(4096, magic.len() as u64));
        inputs.push(HostileInput::new(
            &format!("{format}-garbage.{extension}"),
            format,
            &[target],
            "the format's magic bytes followed by 4 KiB of noise",
            garbage,
        ));
    }
    inputs
}

fn small_picture(format: image::ImageFormat) -> Vec<u8> {
    let picture = image::RgbImage::from_fn(64, 48, |x, y| {
        image::Rgb([(x * 4) as u8, (y * 5) as u8, ((x + y) % 256) as u8])
    });
    let mut bytes = Vec::new();
    image::DynamicImage::ImageRgb8(picture)
        .write_to(&mut std::io::Cursor::new(&mut bytes), format)
        .expect("encoding a small picture in memory cannot fail");
    bytes
}

fn png_chunk(out: &mut Vec<u8>, kind: &[u8; 4], data: &[u8]) {
    out.extend_from_slice(&(data.len() as u32).to_be_bytes());
    out.extend_from_slice(kind);
    out.extend_from_slice(data);
    let mut crc = Crc32::new();
    crc.update(kind);
    crc.update(data);
    out.extend_from_slice(&crc.finish().to_be_bytes());
}

fn png_header(width: u32, height: u32, color_type: u8) -> Vec<u8> {
    let mut out = b"\x89PNG\r\n\x1a\n".to_vec();
    let mut header = Vec::new();
    header.extend_from_slice(&width.to_be_bytes());
    header.extend_from_slice(&height.to_be_bytes());
    header.extend_from_slice(&[8, color_type, 0, 0, 0]);
    png_chunk(&mut out, b"IHDR", &header);
    out
}

/// A PNG with one IDAT chunk holding `zlib`.
fn png(width: u32, height: u32, color_type: u8, zlib: &[u8]) -> Vec<u8> {
    let mut out = png_header(width, height, color_type);
    png_chunk(&mut out, b"IDAT", zlib);
    png_chunk(&mut out, b"IEND", &[]);
    out
}

/// A PNG whose IDAT is `zlib` cut before its end, with no IEND.
fn png_unterminated(width: u32, height: u32, color_type: u8, zlib: &[u8]) -> Vec<u8> {
    let mut out = png_header(width, height, color_type);
    png_chunk(&mut out, b"IDAT", &zlib[..zlib.len().saturating_sub(6)]);
    out
}

fn gif_huge() -> Vec<u8> {
    let mut out = b"GIF89a".to_vec();
    out.extend_from_slice(&[0xff, 0xff, 0xff, 0xff, 0, 0, 0]);
    out.push(0x2c);
    out.extend_from_slice(&[0, 0, 0, 0, 0xff, 0xff, 0xff, 0xff, 0]);
    // LZW minimum code size 2, one sub-block (clear, end), then the trailer.
    out.extend_from_slice(&[2, 2, 0x4c, 0x01, 0, 0x3b]);
    out
}

fn webp_huge() -> Vec<u8> {
    let side = 16_384u32;
    let bits = (side - 1) | ((side - 1) << 14);
    let mut chunk = vec![0x2f];
    chunk.extend_from_slice(&bits.to_le_bytes());
    chunk.extend_from_slice(&[0; 3]);
    let mut out = b"RIFF".to_vec();
    out.extend_from_slice(&(4 + 8 + chunk.len() as u32).to_le_bytes());
    out.extend_from_slice(b"WEBPVP8L");
    out.extend_from_slice(&(chunk.len() as u32).to_le_bytes());
    out.extend_from_slice(&chunk);
    out
}

fn tiff_huge() -> Vec<u8> {
    // Tag, type (3 short, 4 long), value.
    let entries: [(u16, u16, u32); 9] = [
        (256, 4, 1_000_000),
        (257, 4, 1_000_000),
        (258, 3, 8),
        (259, 3, 1),
        (262, 3, 1),
        (273, 4, 0),
        (277, 3, 1),
        (278, 4, 1_000_000),
        (279, 4, 1),
    ];
    let mut out = b"II*\x00".to_vec();
    out.extend_from_slice(&8u32.to_le_bytes());
    out.extend_from_slice(&(entries.len() as u16).to_le_bytes());
    for (tag, kind, value) in entries {
        out.extend_from_slice(&tag.to_le_bytes());
        out.extend_from_slice(&kind.to_le_bytes());
        out.extend_from_slice(&1u32.to_le_bytes());
        out.extend_from_slice(&value.to_le_bytes());
    }
    out.extend_from_slice(&0u32.to_le_bytes());
    out.push(0);
    out
}

fn bmp_huge() -> Vec<u8> {
    let mut out = b"BM".to_vec();
    out.extend_from_slice(&70u32.to_le_bytes());
    out.extend_from_slice(&0u32.to_le_bytes());
    out.extend_from_slice(&54u32.to_le_bytes());
    out.extend_from_slice(&40u32.to_le_bytes());
    out.extend_from_slice(&1_000_000i32.to_le_bytes());
    out.extend_from_slice(&1_000_000i32.to_le_bytes());
    out.extend_from_slice(&1u16.to_le_bytes());
    out.extend_from_slice(&24u16.to_le_bytes());
    out.extend_from_slice(&[0; 24]);
    out.extend_from_slice(&[0; 16]);
    out
}

fn jpeg_huge() -> Vec<u8> {
    let mut out = vec![0xff, 0xd8];
    out.extend_from_slice(&[0xff, 0xc0, 0x00, 0x11, 0x08]);
    out.extend_from_slice(&65_500u16.to_be_bytes());
    out.extend_from_slice(&65_500u16.to_be_bytes());
    out.extend_from_slice(&[3, 1, 0x22, 0, 2, 0x11, 1, 3, 0x11, 1]);
    out.extend_from_slice(&[0xff, 0xd9]);
    out
}
