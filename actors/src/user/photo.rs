//! Profile photos: an upload (JPEG, PNG or WebP) is decoded with limits, turned upright, scaled
//! to fit `photo_dimension_max` and re-encoded (JPEG, or PNG when it has transparency), which
//! also drops its metadata (camera, GPS). Only the re-encoded image is stored, in the object
//! store at `users/<user id>/photo`, so every node serves it.
//!
//! Decoding is CPU-heavy: callers run [`reencode`] on the blocking pool.

use std::io::Cursor;
use std::sync::Arc;

use bytes::Bytes;
use image::codecs::jpeg::JpegEncoder;
use image::codecs::png::PngEncoder;
use image::imageops::FilterType;
use image::{DynamicImage, ImageDecoder, ImageEncoder, ImageError, ImageFormat, ImageReader};
use object_store::path::Path;
use object_store::{ObjectStore, ObjectStoreExt};

/// Largest width or height of an upload we decode; bigger is refused before decoding.
pub const DECODE_DIMENSION_MAX: u32 = 10_000;
/// Memory the decoder may allocate for one upload.
pub const DECODE_BYTES_MAX: u64 = 256 * 1024 * 1024;
/// JPEG quality of stored photos.
pub const JPEG_QUALITY: u8 = 85;

/// Why an upload is not a photo we keep.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PhotoError {
    #[error("not a JPEG, PNG or WebP image")]
    Unsupported,
    #[error("the image cannot be decoded: {0}")]
    Undecodable(String),
    #[error("the image is larger than {DECODE_DIMENSION_MAX} pixels on a side")]
    TooManyPixels,
    #[error("the photo store failed: {0}")]
    Store(String),
}

/// A photo ready to store.
#[derive(Clone, PartialEq, Eq)]
pub struct EncodedPhoto {
    pub bytes: Vec<u8>,
    pub content_type: &'static str,
    pub width: u32,
    pub height: u32,
}

impl std::fmt::Debug for EncodedPhoto {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            formatter,
            "EncodedPhoto({} {}x{}, {} bytes)",
            self.content_type,
            self.width,
            self.height,
            self.bytes.len()
        )
    }
}

/// The content type of a stored or uploaded image, from its first bytes.
pub fn content_type_of(bytes: &[u8]) -> Option<&'static str> {
    match image::guess_format(bytes).ok()? {
        ImageFormat::Jpeg => Some("image/jpeg"),
        ImageFormat::Png => Some("image/png"),
        ImageFormat::WebP => Some("image/webp"),
        _ => None,
    }
}

/// Decodes `upload`, scales it to fit a `dimension_max` square and re-encodes it.
pub fn reencode(upload: &[u8], dimension_max: u32) -> Result<EncodedPhoto, PhotoError> {
    if content_type_of(upload).is_none() {
        return Err(PhotoError::Unsupported);
    }
    let mut reader = ImageReader::new(Cursor::new(upload))
        .with_guessed_format()
        .map_err(|error| PhotoError::Undecodable(error.to_string()))?;
    let mut limits = image::Limits::default();
    limits.max_image_width = Some(DECODE_DIMENSION_MAX);
    limits.max_image_height = Some(DECODE_DIMENSION_MAX);
    limits.max_alloc = Some(DECODE_BYTES_MAX);
    reader.limits(limits);
    let mut decoder = reader.into_decoder().map_err(decode_error)?;
    let orientation = decoder.orientation().map_err(decode_error)?;
    let mut image = DynamicImage::from_decoder(decoder).map_err(decode_error)?;
    image.apply_orientation(orientation);
    if image.width() > dimension_max || image.height() > dimension_max {
        image = image.resize(dimension_max, dimension_max, FilterType::Triangle);
    }
    encode(&image)
}

fn decode_error(error: ImageError) -> PhotoError {
    match error {
        ImageError::Limits(_) => PhotoError::TooManyPixels,
        ImageError::Unsupported(_) => PhotoError::Unsupported,
        other => PhotoError::Undecodable(other.to_string()),
    }
}

fn encode(image: &DynamicImage) -> Result<EncodedPhoto, PhotoError> {
    let (width, height) = (image.width(), image.height());
    let mut bytes = Vec::new();
    let transparent = image.has_alpha() && image.to_rgba8().pixels().any(|pixel| pixel.0[3] < 255);
    let content_type = if transparent {
        let rgba = image.to_rgba8();
        PngEncoder::new(&mut bytes)
            .write_image(&rgba, width, height, image::ExtendedColorType::Rgba8)
            .map_err(|error| PhotoError::Undecodable(error.to_string()))?;
        "image/png"
    } else {
        let rgb = image.to_rgb8();
        JpegEncoder::new_with_quality(&mut bytes, JPEG_QUALITY)
            .write_image(&rgb, width, height, image::ExtendedColorType::Rgb8)
            .map_err(|error| PhotoError::Undecodable(error.to_string()))?;
        "image/jpeg"
    };
    Ok(EncodedPhoto {
        bytes,
        content_type,
        width,
        height,
    })
}

/// Where a user's photo lives in the object store. `user_id` must be a valid id.
pub fn object_path(user_id: &str) -> Path {
    assert!(
        super::validate::is_user_id(user_id),
        "photo paths are built from checked user ids only"
    );
    Path::from_iter(["users", user_id, "photo"])
}

/// Stores (replaces) the photo of `user_id`.
pub async fn store(
    store: &Arc<dyn ObjectStore>,
    user_id: &str,
    photo: Vec<u8>,
) -> Result<(), PhotoError> {
    store
        .put(&object_path(user_id), photo.into())
        .await
        .map(|_| ())
        .map_err(|error| PhotoError::Store(error.to_string()))
}

/// The stored photo of `user_id`, if any.
pub async fn load(
    store: &Arc<dyn ObjectStore>,
    user_id: &str,
) -> Result<Option<Bytes>, PhotoError> {
    match store.get(&object_path(user_id)).await {
        Ok(result) => result
            .bytes()
            .await
            .map(Some)
            .map_err(|error| PhotoError::Store(error.to_string())),
        Err(object_store::Error::NotFound { .. }) => Ok(None),
        Err(error) => Err(PhotoError::Store(error.to_string())),
    }
}

/// Deletes the photo of `user_id`; nothing to delete is fine.
pub async fn delete(store: &Arc<dyn ObjectStore>, user_id: &str) -> Result<(), PhotoError> {
    match store.delete(&object_path(user_id)).await {
        Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(()),
        Err(error) => Err(PhotoError::Store(error.to_string())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use image::{Rgb, RgbImage, Rgba, RgbaImage};

    fn png_of(image: &DynamicImage) -> Vec<u8> {
        let mut bytes = Vec::new();
        image
            .write_to(&mut Cursor::new(&mut bytes), ImageFormat::Png)
            .expect("encode png");
        bytes
    }

    #[test]
    fn a_large_photo_is_scaled_to_fit_and_becomes_a_jpeg() {
        let big = DynamicImage::ImageRgb8(RgbImage::from_pixel(1200, 600, Rgb([200, 30, 30])));
        let photo = reencode(&png_of(&big), 512).expect("reencode");
        assert_eq!((photo.width, photo.height), (512, 256));
        assert_eq!(photo.content_type, "image/jpeg");
        assert_eq!(content_type_of(&photo.bytes), Some("image/jpeg"));
        let decoded = image::load_from_memory(&photo.bytes).expect("decodes");
        assert_eq!((decoded.width(), decoded.height()), (512, 256));
    }

    #[test]
    fn transparency_is_kept_as_png_and_small_images_keep_their_size() {
        let mut pixels = RgbaImage::from_pixel(40, 30, Rgba([0, 0, 255, 255]));
        pixels.put_pixel(0, 0, Rgba([0, 0, 0, 0]));
        let photo = reencode(&png_of(&DynamicImage::ImageRgba8(pixels)), 512).expect("reencode");
        assert_eq!(photo.content_type, "image/png");
        assert_eq!((photo.width, photo.height), (40, 30));
    }

    #[test]
    fn webp_and_jpeg_uploads_are_accepted() {
        let image = DynamicImage::ImageRgb8(RgbImage::from_pixel(64, 64, Rgb([1, 2, 3])));
        for format in [ImageFormat::WebP, ImageFormat::Jpeg] {
            let mut bytes = Vec::new();
            image
                .write_to(&mut Cursor::new(&mut bytes), format)
                .expect("encode");
            let photo = reencode(&bytes, 32).expect("reencode");
            assert_eq!((photo.width, photo.height), (32, 32), "{format:?}");
        }
    }

    #[test]
    fn non_images_and_broken_images_are_refused() {
        assert_eq!(reencode(b"hello, world", 512), Err(PhotoError::Unsupported));
        assert_eq!(reencode(b"", 512), Err(PhotoError::Unsupported));
        let gif = b"GIF89a\x01\x00\x01\x00\x00\x00\x00;";
        assert_eq!(reencode(gif, 512), Err(PhotoError::Unsupported));
        let image = DynamicImage::ImageRgb8(RgbImage::from_pixel(64, 64, Rgb([1, 2, 3])));
        let png = png_of(&image);
        let truncated = &png[..png.len() / 2];
        assert!(matches!(
            reencode(truncated, 512),
            Err(PhotoError::Undecodable(_))
        ));
    }

    #[test]
    fn a_decompression_bomb_is_refused_before_decoding() {
        // A valid PNG header claiming 20000 x 20000 pixels.
        let image = DynamicImage::ImageRgb8(RgbImage::new(1, 1));
        let mut png = png_of(&image);
        png[16..20].copy_from_slice(&20_000u32.to_be_bytes());
        png[20..24].copy_from_slice(&20_000u32.to_be_bytes());
        assert!(matches!(
            reencode(&png, 512),
            Err(PhotoError::TooManyPixels | PhotoError::Undecodable(_))
        ));
    }

    #[test]
    fn photo_paths_are_per_user() {
        let path = object_path("0123456789abcdef0123456789abcdef");
        assert_eq!(
            path.as_ref(),
            "users/0123456789abcdef0123456789abcdef/photo"
        );
    }
}
