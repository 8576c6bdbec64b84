//! The decode, orient, crop and resize behaviour through the crate's public functions, built
//! natively. An integration test rather than a `#[cfg(test)]` module: a unit-test module would
//! compile the whole crate a second time in test mode (every image decoder instantiated again,
//! ~35 s of CPU on every CI run), while this binary only links the library CI builds anyway.

use std::io::Cursor;

use image::{DynamicImage, ImageFormat};
use tessera_preprocess::{
    Error, Limits, Spec, decode_rgb, decode_rgb_scaled, normalize_nchw, preprocess, resize_center_crop,
};

fn spec() -> Spec {
    Spec { height: 224, width: 224, resize: 256, mean: [0.485, 0.456, 0.406], std: [0.229, 0.224, 0.225] }
}

const LIMITS: Limits = Limits { max_pixels: 40_000_000, max_alloc_bytes: 256 << 20 };

fn png(img: DynamicImage) -> Vec<u8> {
    let mut out = Cursor::new(Vec::new());
    img.write_to(&mut out, ImageFormat::Png).unwrap();
    out.into_inner()
}

#[test]
fn uniform_colour_normalizes_exactly() {
    let img = image::RgbImage::from_pixel(300, 200, image::Rgb([255, 0, 128]));
    let t = preprocess(&png(img.into()), &spec(), &LIMITS).unwrap();
    assert_eq!(t.len(), 3 * 224 * 224);
    let s = spec();
    let expect = [(1.0 - s.mean[0]) / s.std[0], -s.mean[1] / s.std[1], (128.0 / 255.0 - s.mean[2]) / s.std[2]];
    for c in 0..3 {
        let v = t[c * 224 * 224 + 1000];
        assert!((v - expect[c]).abs() < 1e-5, "channel {c}: {v} vs {}", expect[c]);
    }
}

#[test]
fn extreme_aspect_ratio_is_cropped_before_resizing() {
    let img = image::GrayImage::from_pixel(2000, 3, image::Luma([200]));
    let t = preprocess(&png(img.into()), &spec(), &LIMITS).unwrap();
    assert_eq!(t.len(), 3 * 224 * 224);
}

#[test]
fn pixel_limit_is_checked_from_the_header() {
    let img = image::RgbImage::new(100, 100);
    let err = preprocess(&png(img.into()), &spec(), &Limits { max_pixels: 9_999, ..LIMITS }).unwrap_err();
    assert!(matches!(err, Error::TooLarge(_)), "{err:?}");
}

#[test]
fn garbage_and_empty_are_invalid_input() {
    assert!(matches!(preprocess(b"", &spec(), &LIMITS), Err(Error::InvalidInput(_))));
    assert!(matches!(preprocess(b"hello world", &spec(), &LIMITS), Err(Error::InvalidInput(_))));
    let mut truncated = png(image::RgbImage::new(64, 64).into());
    truncated.truncate(60);
    assert!(matches!(preprocess(&truncated, &spec(), &LIMITS), Err(Error::InvalidInput(_))));
}

#[test]
fn exif_orientation_is_applied() {
    use image::ImageEncoder;
    // 40×20: left half red, right half blue; EXIF orientation 6 = "rotate 90° clockwise to
    // display", so the upright image is 20×40 with red on top.
    let img =
        image::RgbImage::from_fn(40, 20, |x, _| if x < 20 { image::Rgb([255, 0, 0]) } else { image::Rgb([0, 0, 255]) });
    let mut out = Vec::new();
    let mut encoder = image::codecs::jpeg::JpegEncoder::new_with_quality(&mut out, 95);
    encoder.set_exif_metadata(exif_rotated_90()).unwrap();
    encoder.write_image(&img, 40, 20, image::ExtendedColorType::Rgb8).unwrap();
    let rgb = decode_rgb(&out, &LIMITS).unwrap();
    assert_eq!((rgb.width(), rgb.height()), (20, 40));
    let top = rgb.get_pixel(10, 5);
    let bottom = rgb.get_pixel(10, 35);
    assert!(top[0] > 200 && top[2] < 60, "top should be red, got {top:?}");
    assert!(bottom[2] > 200 && bottom[0] < 60, "bottom should be blue, got {bottom:?}");
}

/// An EXIF block with orientation 6 ("rotate 90° clockwise to display").
fn exif_rotated_90() -> Vec<u8> {
    let mut exif = b"II*\x00\x08\x00\x00\x00\x01\x00".to_vec(); // TIFF header, IFD with 1 entry
    exif.extend_from_slice(&[0x12, 0x01, 3, 0, 1, 0, 0, 0, 6, 0, 0, 0]); // Orientation, SHORT, 1, value 6
    exif.extend_from_slice(&[0, 0, 0, 0]); // no next IFD
    exif
}

/// A smooth, photo-like RGB image (gradients and a few edges), `w × h`.
fn photo(w: u32, h: u32) -> image::RgbImage {
    image::RgbImage::from_fn(w, h, |x, y| {
        let (fx, fy) = (x as f32 / w as f32, y as f32 / h as f32);
        let edge = if (x / 97 + y / 131) % 2 == 0 { 40.0 } else { 0.0 };
        image::Rgb([(200.0 * fx + edge) as u8, (180.0 * fy + 30.0) as u8, (120.0 * (fx + fy) / 2.0 + edge) as u8])
    })
}

fn jpeg(img: &image::RgbImage, exif: Option<Vec<u8>>) -> Vec<u8> {
    use image::ImageEncoder;
    let mut out = Vec::new();
    let mut encoder = image::codecs::jpeg::JpegEncoder::new_with_quality(&mut out, 92);
    if let Some(exif) = exif {
        encoder.set_exif_metadata(exif).unwrap();
    }
    encoder.write_image(img, img.width(), img.height(), image::ExtendedColorType::Rgb8).unwrap();
    out
}

#[test]
fn a_large_jpeg_decodes_at_the_smallest_scale_the_resize_allows() {
    let bytes = jpeg(&photo(2048, 1536), None);
    // 1536 / 8 = 192 < 256 <= 1536 / 4: a quarter.
    let scaled = decode_rgb_scaled(&bytes, &LIMITS, 256).unwrap();
    assert_eq!((scaled.width(), scaled.height()), (512, 384));
    // Small enough already: full size, the same pixels as the full decode path.
    let small = jpeg(&photo(400, 300), None);
    assert_eq!(decode_rgb_scaled(&small, &LIMITS, 256).unwrap(), decode_rgb(&small, &LIMITS).unwrap());
}

#[test]
fn the_scaled_decode_gives_nearly_the_full_decodes_tensor() {
    let bytes = jpeg(&photo(3000, 2000), None);
    let fast = preprocess(&bytes, &spec(), &LIMITS).unwrap();
    let full = decode_rgb(&bytes, &LIMITS).unwrap();
    let (w, h) = (full.width(), full.height());
    let reference = normalize_nchw(&resize_center_crop(full.into_raw(), w, h, &spec()).unwrap(), &spec());
    let mean_abs = fast.iter().zip(&reference).map(|(a, b)| (a - b).abs()).sum::<f32>() / fast.len() as f32;
    // One 8-bit level is 1/(255·0.225) ≈ 0.017 in normalized units.
    assert!(mean_abs < 0.03, "mean |scaled - full| = {mean_abs}");
}

#[test]
fn the_scaled_decode_applies_exif_orientation() {
    // Landscape 2400×1200, left half red; orientation 6 makes it a portrait with red on top.
    let img =
        image::RgbImage::from_fn(
            2400,
            1200,
            |x, _| {
                if x < 1200 { image::Rgb([255, 0, 0]) } else { image::Rgb([0, 0, 255]) }
            },
        );
    let mut exif = b"II*\x00\x08\x00\x00\x00\x01\x00".to_vec();
    exif.extend_from_slice(&[0x12, 0x01, 3, 0, 1, 0, 0, 0, 6, 0, 0, 0]);
    exif.extend_from_slice(&[0, 0, 0, 0]);
    let rgb = decode_rgb_scaled(&jpeg(&img, Some(exif)), &LIMITS, 256).unwrap();
    assert_eq!((rgb.width(), rgb.height()), (300, 600));
    assert!(rgb.get_pixel(150, 50)[0] > 200 && rgb.get_pixel(150, 550)[2] > 200);
}

#[test]
fn a_truncated_jpeg_is_invalid_input_whatever_its_size_and_a_trailer_is_not() {
    for (w, h) in [(2048, 1536), (300, 200)] {
        let whole = jpeg(&photo(w, h), Some(exif_rotated_90()));
        assert!(preprocess(&whole, &spec(), &LIMITS).is_ok());
        // Anything after the end-of-image marker (a motion photo's video) is not ours.
        let trailer = [whole.clone(), b"ftypmp42 and some video".to_vec()].concat();
        assert!(preprocess(&trailer, &spec(), &LIMITS).is_ok());
        for keep in [whole.len() - 2, whole.len() * 2 / 3, whole.len() / 3, 100, 4] {
            let err = preprocess(&whole[..keep], &spec(), &LIMITS).unwrap_err();
            assert!(
                matches!(&err, Error::InvalidInput(m) if m.contains("truncated")),
                "{w}x{h} cut at {keep}: {err:?}"
            );
        }
    }
}

#[test]
fn sixteen_bit_alpha_is_converted() {
    let img = image::ImageBuffer::<image::Rgba<u16>, _>::from_pixel(50, 80, image::Rgba([65535, 0, 0, 1000]));
    let t = preprocess(&png(DynamicImage::ImageRgba16(img)), &spec(), &LIMITS).unwrap();
    let s = spec();
    assert!((t[0] - (1.0 - s.mean[0]) / s.std[0]).abs() < 1e-5);
}
