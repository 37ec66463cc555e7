//! Images between PNG, JPEG, WebP, GIF, BMP and TIFF (the `image` crate), with an optional
//! resize that keeps the aspect ratio. Decoding has limits, so a small file that claims huge
//! dimensions (a decompression bomb) is refused before it is allocated; so does a resize whose
//! working buffers would be too large (a 20000×20000 picture resized to 6000 wide needs about
//! 2 GB of intermediate floats, whatever the size of its file).

use std::io::Cursor;

use image::imageops::FilterType;
use image::{DynamicImage, ImageDecoder, ImageReader, Limits};

use super::{Conversion, ConvertError, RESIZE_DIMENSION_MAX};
use crate::job::format::Format;

/// Largest width or height of an input we decode.
pub const DECODE_DIMENSION_MAX: u32 = 20_000;
/// Memory the decoder may allocate for one input.
pub const DECODE_BYTES_MAX: u64 = 256 * 1024 * 1024;
/// Pixels of a decoded input (e.g. 10000×10000): whatever the file's size, decoding a
/// picture allocates its pixels, and every later step copies them.
pub const DECODE_PIXELS_MAX: u64 = 100_000_000;
/// Memory a resize may use for its working buffers: `image` resizes in two passes, the first
/// into a 16-byte-a-pixel (RGBA f32) buffer of the input's width and the output's height, the
/// second into the output.
pub const RESIZE_BUFFER_BYTES_MAX: u64 = 256 * 1024 * 1024;
/// Bytes a pixel takes in the resize's float buffers (4 channels of f32).
const RESIZE_FLOAT_PIXEL_BYTES: u64 = 16;

/// Pixels of a resized output: an upscale to the largest box would need gigabytes.
pub const OUTPUT_PIXELS_MAX: u64 = 40_000_000;

/// The size of `width × height` scaled to fit `box_width × box_height`, keeping its ratio
/// (as `DynamicImage::resize` computes it, up to rounding).
fn fit(width: u32, height: u32, box_width: u32, box_height: u32) -> (u32, u32) {
    let scale = f64::min(
        f64::from(box_width) / f64::from(width.max(1)),
        f64::from(box_height) / f64::from(height.max(1)),
    );
    let scaled = |side: u32| ((f64::from(side) * scale).round() as u32).max(1);
    (scaled(width), scaled(height))
}

pub fn convert(conversion: &Conversion<'_>, to: Format) -> Result<Vec<u8>, ConvertError> {
    let format = to.image_format().ok_or(ConvertError::Unsupported {
        from: conversion.from,
        to: conversion.to,
    })?;
    (conversion.progress)(20, "decoding");
    let image = decode(conversion)?;
    conversion.checkpoint()?;
    let image = match (conversion.options.width, conversion.options.height) {
        (None, None) => image,
        (width, height) => {
            let width = width.unwrap_or(RESIZE_DIMENSION_MAX);
            let height = height.unwrap_or(RESIZE_DIMENSION_MAX);
            let (fit_width, fit_height) = fit(image.width(), image.height(), width, height);
            if u64::from(fit_width) * u64::from(fit_height) > OUTPUT_PIXELS_MAX {
                return Err(ConvertError::TooLarge(format!(
                    "the resized image would have more than {OUTPUT_PIXELS_MAX} pixels"
                )));
            }
            let buffers = resize_buffer_bytes(image.width(), fit_width, fit_height);
            if buffers > RESIZE_BUFFER_BYTES_MAX {
                return Err(ConvertError::TooLarge(format!(
                    "resizing this {}×{} image to {fit_width}×{fit_height} would need {} MiB of \
                     working memory (at most {} MiB); resize it in steps or start from a \
                     smaller image",
                    image.width(),
                    image.height(),
                    buffers.div_ceil(1024 * 1024),
                    RESIZE_BUFFER_BYTES_MAX / (1024 * 1024)
                )));
            }
            (conversion.progress)(45, "resizing");
            image.resize(width, height, FilterType::Triangle)
        }
    };
    conversion.checkpoint()?;
    (conversion.progress)(70, "encoding");
    // Each encoder takes 8-bit RGB(A); JPEG has no alpha channel at all.
    let image = if to == Format::Jpeg || !image.color().has_alpha() {
        DynamicImage::ImageRgb8(image.to_rgb8())
    } else {
        DynamicImage::ImageRgba8(image.to_rgba8())
    };
    let mut bytes = Vec::new();
    image
        .write_to(&mut Cursor::new(&mut bytes), format)
        .map_err(|error| ConvertError::Failed(format!("cannot encode {to}: {error}")))?;
    Ok(bytes)
}

fn decode(conversion: &Conversion<'_>) -> Result<DynamicImage, ConvertError> {
    let format = conversion
        .from
        .image_format()
        .ok_or_else(|| conversion.corrupt("not an image"))?;
    let mut reader = ImageReader::with_format(Cursor::new(conversion.input), format);
    let mut limits = Limits::default();
    limits.max_image_width = Some(DECODE_DIMENSION_MAX);
    limits.max_image_height = Some(DECODE_DIMENSION_MAX);
    limits.max_alloc = Some(DECODE_BYTES_MAX);
    reader.limits(limits);
    let too_large = |error| {
        ConvertError::TooLarge(format!(
            "the image is too large to convert ({error}; at most {DECODE_DIMENSION_MAX} pixels a side)"
        ))
    };
    let classify = |error| match error {
        image::ImageError::Limits(error) => too_large(error),
        other => conversion.corrupt(other),
    };
    let decoder = reader.into_decoder().map_err(classify)?;
    let (width, height) = decoder.dimensions();
    if u64::from(width) * u64::from(height) > DECODE_PIXELS_MAX {
        return Err(ConvertError::TooLarge(format!(
            "the image is too large to convert ({width}×{height} pixels; at most {DECODE_PIXELS_MAX} pixels)"
        )));
    }
    DynamicImage::from_decoder(decoder).map_err(classify)
}

/// Bytes of the buffers `DynamicImage::resize` allocates to turn a `width` wide image into
/// `fit_width × fit_height`: the vertical pass (input width × output height, RGBA f32) and
/// the output, counted at the same 16 bytes a pixel to stay on the safe side.
fn resize_buffer_bytes(width: u32, fit_width: u32, fit_height: u32) -> u64 {
    (u64::from(width) + u64::from(fit_width)) * u64::from(fit_height) * RESIZE_FLOAT_PIXEL_BYTES
}

#[cfg(test)]
mod tests {
    use super::{RESIZE_BUFFER_BYTES_MAX, fit, resize_buffer_bytes};

    #[test]
    fn fitting_keeps_the_ratio() {
        assert_eq!(fit(64, 48, 32, 10_000), (32, 24));
        assert_eq!(fit(64, 48, 10_000, 12), (16, 12));
        assert_eq!(fit(10, 10, 10_000, 10_000), (10_000, 10_000));
    }

    #[test]
    fn the_issue_s_resize_is_over_the_bound_and_an_ordinary_one_is_not() {
        // 20000×20000 to 6000 wide: about 2.1 GB of floats.
        let (width, height) = fit(20_000, 20_000, 6_000, 10_000);
        assert!(resize_buffer_bytes(20_000, width, height) > RESIZE_BUFFER_BYTES_MAX);
        let (width, height) = fit(4_000, 3_000, 1_024, 10_000);
        assert!(resize_buffer_bytes(4_000, width, height) < RESIZE_BUFFER_BYTES_MAX / 4);
    }
}
