//! Tessera's preprocess stage: encoded image bytes → the model's normalized NCHW f32 tensor.
//!
//! The pure pipeline lives in [`preprocess`] so the very same code builds natively (the
//! reference the WASM build is measured and checked against) and as a wasm32 component
//! (see `component`), which is what the host runs.

use std::io::Cursor;

use fast_image_resize::images::Image;
use fast_image_resize::{FilterType, PixelType, ResizeAlg, ResizeOptions, Resizer};
use image::{DynamicImage, ImageDecoder, ImageFormat, ImageReader};

#[cfg(all(target_arch = "wasm32", feature = "component"))]
mod component;

/// What the model wants: a `1×3×height×width` tensor, the shorter side first scaled to
/// `resize` pixels, then the centre `height×width` taken, pixels scaled to [0, 1] and
/// normalized per channel with `mean`/`std` (torchvision's Resize → CenterCrop → ToTensor →
/// Normalize).
#[derive(Debug, Clone, PartialEq)]
pub struct Spec {
    pub height: u32,
    pub width: u32,
    pub resize: u32,
    pub mean: [f32; 3],
    pub std: [f32; 3],
}

/// Decoding limits, checked before any pixel is decoded.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Limits {
    /// Largest accepted `width × height`.
    pub max_pixels: u64,
    /// Largest allocation the decoder may make, in bytes.
    pub max_alloc_bytes: u64,
}

/// Why an image could not be turned into a tensor.
#[derive(Debug, Clone, PartialEq)]
pub enum Error {
    /// Empty, truncated, corrupt or unrecognisable bytes.
    InvalidInput(String),
    /// A recognised format this build does not decode.
    Unsupported(String),
    /// Over a size limit.
    TooLarge(String),
    /// A bad model spec or a bug.
    Internal(String),
}

/// The formats this stage decodes, for error messages.
pub const SUPPORTED_FORMATS: &str = "JPEG, PNG, WebP, GIF or BMP";

/// Decodes `bytes`, applies EXIF orientation, converts any pixel format to RGB, resizes only
/// the centre-crop region and returns the normalized NCHW data (`3 × height × width` floats).
///
/// A large JPEG is decoded at a reduced scale (see [`decode_rgb_scaled`]): never below the
/// resolution the resize step needs, so the result differs from a full decode only by the
/// filter that does the shrinking (the DCT's instead of the bilinear convolution's).
pub fn preprocess(bytes: &[u8], spec: &Spec, limits: &Limits) -> Result<Vec<f32>, Error> {
    validate_spec(spec)?;
    let rgb = decode_rgb_scaled(bytes, limits, spec.resize)?;
    let (w, h) = (rgb.width(), rgb.height());
    let resized = resize_center_crop(rgb.into_raw(), w, h, spec)?;
    Ok(normalize_nchw(&resized, spec))
}

fn validate_spec(spec: &Spec) -> Result<(), Error> {
    if spec.height == 0 || spec.width == 0 {
        return Err(Error::Internal("model spec: input height and width must be positive".into()));
    }
    if spec.resize < spec.height.max(spec.width) {
        return Err(Error::Internal(format!(
            "model spec: resize ({}) must be at least the crop size ({}x{})",
            spec.resize, spec.width, spec.height
        )));
    }
    if spec.std.iter().any(|s| *s == 0.0 || !s.is_finite()) {
        return Err(Error::Internal("model spec: std must be finite and non-zero".into()));
    }
    Ok(())
}

/// Decodes to 8-bit RGB at full size, refusing oversize images from their header.
pub fn decode_rgb(bytes: &[u8], limits: &Limits) -> Result<image::RgbImage, Error> {
    let format = sniff(bytes)?;
    decode_full(bytes, format, limits)
}

/// Decodes to 8-bit RGB, a JPEG at the smallest of its full, 1/2, 1/4 or 1/8 scales whose
/// shorter side is still at least `min_short_side` pixels (the decoder's DCT-domain scaling,
/// as Pillow's `draft()` does: a 12 MP photo decodes to 1/8 for a 256 px resize, ~8× less
/// work). Other formats, images already small enough, and JPEGs in CMYK or 12-bit precision
/// are decoded at full size, exactly as [`decode_rgb`] does.
pub fn decode_rgb_scaled(bytes: &[u8], limits: &Limits, min_short_side: u32) -> Result<image::RgbImage, Error> {
    let format = sniff(bytes)?;
    if format == ImageFormat::Jpeg
        && let Some(rgb) = decode_jpeg_scaled(bytes, limits, min_short_side)?
    {
        return Ok(rgb);
    }
    decode_full(bytes, format, limits)
}

/// The size of the image in `bytes` as its viewer sees it, EXIF orientation applied (width and
/// height swap for a quarter turn), read from its header alone; None when the header does not
/// parse. What boxes found on a reduced-scale decode ([`decode_rgb_scaled`]) map back to.
pub fn oriented_size(bytes: &[u8]) -> Option<(u32, u32)> {
    use image::metadata::Orientation;
    let format = sniff(bytes).ok()?;
    let mut decoder = ImageReader::with_format(Cursor::new(bytes), format).into_decoder().ok()?;
    let (w, h) = decoder.dimensions();
    let turned = matches!(
        decoder.orientation().unwrap_or(Orientation::NoTransforms),
        Orientation::Rotate90 | Orientation::Rotate270 | Orientation::Rotate90FlipH | Orientation::Rotate270FlipH
    );
    Some(if turned { (h, w) } else { (w, h) })
}

fn sniff(bytes: &[u8]) -> Result<ImageFormat, Error> {
    if bytes.is_empty() {
        return Err(Error::InvalidInput("the image is empty (0 bytes)".into()));
    }
    let format = image::guess_format(bytes)
        .map_err(|_| Error::InvalidInput(format!("the bytes are not a recognised image; send {SUPPORTED_FORMATS}")))?;
    if !matches!(format, ImageFormat::Jpeg | ImageFormat::Png | ImageFormat::WebP | ImageFormat::Gif | ImageFormat::Bmp)
    {
        return Err(Error::Unsupported(format!("{format:?} images are not supported; send {SUPPORTED_FORMATS}")));
    }
    if format == ImageFormat::Jpeg && !jpeg_reaches_its_end(bytes) {
        // Both JPEG decoders we use fill a truncated scan with grey and succeed (zune-jpeg
        // unless strict, which would also refuse harmless oddities; jpeg-decoder always), so a
        // cut-off upload would be classified. Pillow refuses such files by default; so do we.
        return Err(Error::InvalidInput(
            "the Jpeg image is truncated: its data ends before the end-of-image marker".into(),
        ));
    }
    Ok(format)
}

/// Whether a JPEG's bytes reach its end-of-image marker (EOI), walking its structure: marker
/// segments are skipped by their length (an EXIF thumbnail's own EOI sits inside one), and
/// entropy-coded data byte by byte, where `FF` is only ever followed by a stuffed `00` or a
/// restart marker. Bytes after the EOI (a motion photo's video, a vendor trailer) are allowed,
/// and so are stray bytes between segments, which decoders skip too.
fn jpeg_reaches_its_end(bytes: &[u8]) -> bool {
    if !bytes.starts_with(&[0xFF, 0xD8]) {
        return false;
    }
    let mut i = 2;
    while i + 1 < bytes.len() {
        if bytes[i] != 0xFF {
            // memchr scans 16 bytes at a time (wasm simd128): most of a photo is entropy-coded
            // data, where 0xFF is rare.
            match memchr::memchr(0xFF, &bytes[i..]) {
                Some(skip) => i += skip,
                None => return false,
            }
            continue;
        }
        match bytes[i + 1] {
            0xD9 => return true,
            // Fill bytes, a stuffed zero, restart markers, TEM and a stray SOI have no length.
            0xFF => i += 1,
            0x00 | 0x01 | 0xD0..=0xD8 => i += 2,
            _ => {
                let Some(len) = bytes.get(i + 2..i + 4).map(|l| usize::from(u16::from_be_bytes([l[0], l[1]]))) else {
                    return false;
                };
                if len < 2 {
                    return false;
                }
                i += 2 + len;
            }
        }
    }
    false
}

/// The reduced-scale JPEG path of [`decode_rgb_scaled`]; `None` when it does not apply (the
/// image is too small to reduce, or its pixel format is not 8-bit grey or YCbCr/RGB).
fn decode_jpeg_scaled(bytes: &[u8], limits: &Limits, min_short_side: u32) -> Result<Option<image::RgbImage>, Error> {
    use jpeg_decoder::PixelFormat;
    let invalid = |e: jpeg_decoder::Error| Error::InvalidInput(format!("the Jpeg image could not be decoded: {e}"));
    let mut decoder = jpeg_decoder::Decoder::new(bytes);
    decoder.read_info().map_err(invalid)?;
    let info = decoder.info().ok_or_else(|| Error::InvalidInput("the Jpeg image has no frame header".into()))?;
    let (w, h) = (u32::from(info.width), u32::from(info.height));
    check_pixels(w, h, limits)?;
    let Some(divisor) = [8u32, 4, 2].into_iter().find(|d| w.min(h).div_ceil(*d) >= min_short_side.max(1)) else {
        return Ok(None);
    };
    if !matches!(info.pixel_format, PixelFormat::L8 | PixelFormat::RGB24) {
        return Ok(None);
    }
    // The decoder picks the smallest scale at which either side reaches the request, so
    // asking for exactly the 1/divisor size selects 1/divisor.
    let request = |side: u32| u16::try_from(side.div_ceil(divisor)).unwrap_or(u16::MAX);
    let (sw, sh) = decoder.scale(request(w), request(h)).map_err(invalid)?;
    let (sw, sh) = (u32::from(sw), u32::from(sh));
    decoder.set_max_decoding_buffer_size(usize::try_from(limits.max_alloc_bytes).unwrap_or(usize::MAX));
    let pixels = decoder.decode().map_err(|e| match e {
        jpeg_decoder::Error::Unsupported(u) => Error::Unsupported(format!("Jpeg: {u:?}")),
        other => invalid(other),
    })?;
    let rgb = match info.pixel_format {
        PixelFormat::RGB24 => image::RgbImage::from_raw(sw, sh, pixels),
        _ => image::GrayImage::from_raw(sw, sh, pixels).map(|g| DynamicImage::ImageLuma8(g).to_rgb8()),
    }
    .ok_or_else(|| Error::Internal(format!("the Jpeg decoder returned a short buffer for {sw}x{sh}")))?;
    let orientation = decoder
        .exif_data()
        .and_then(image::metadata::Orientation::from_exif_chunk)
        .unwrap_or(image::metadata::Orientation::NoTransforms);
    let mut img = DynamicImage::ImageRgb8(rgb);
    img.apply_orientation(orientation);
    Ok(Some(img.into_rgb8()))
}

fn check_pixels(w: u32, h: u32, limits: &Limits) -> Result<(), Error> {
    let pixels = u64::from(w) * u64::from(h);
    if pixels > limits.max_pixels {
        return Err(Error::TooLarge(format!(
            "the image is {w}x{h} = {pixels} pixels, over the limit of {} pixels; send a smaller image",
            limits.max_pixels
        )));
    }
    if w == 0 || h == 0 {
        return Err(Error::InvalidInput(format!("the image has no pixels ({w}x{h})")));
    }
    Ok(())
}

fn decode_full(bytes: &[u8], format: ImageFormat, limits: &Limits) -> Result<image::RgbImage, Error> {
    let mut reader = ImageReader::with_format(Cursor::new(bytes), format);
    let mut decoder_limits = image::Limits::default();
    decoder_limits.max_alloc = Some(limits.max_alloc_bytes);
    reader.limits(decoder_limits);
    let mut decoder = reader.into_decoder().map_err(|e| decode_error(format, e))?;
    let (w, h) = decoder.dimensions();
    check_pixels(w, h, limits)?;
    check_decode_bytes(format, &decoder, limits)?;
    // A decoder without orientation metadata reports `NoTransforms`; a broken EXIF block is
    // not worth refusing an otherwise good image for.
    let orientation = decoder.orientation().unwrap_or(image::metadata::Orientation::NoTransforms);
    let mut img = DynamicImage::from_decoder(decoder).map_err(|e| decode_error(format, e))?;
    img.apply_orientation(orientation);
    Ok(match img {
        DynamicImage::ImageRgb8(rgb) => rgb,
        other => other.to_rgb8(),
    })
}

/// `DynamicImage::from_decoder` allocates the decoder's whole output without the image crate's
/// `Limits::reserve` check (only the decoder's own buffers are counted), so the decoded image
/// plus its 8-bit RGB copy are checked against `max_alloc_bytes` here, from the header, before
/// anything is allocated: a 36 MP RGBA16 PNG is 288 MB decoded.
fn check_decode_bytes(format: ImageFormat, decoder: &impl ImageDecoder, limits: &Limits) -> Result<(), Error> {
    let (w, h) = decoder.dimensions();
    let decoded = decoder.total_bytes();
    let rgb_copy = if decoder.color_type() == image::ColorType::Rgb8 { 0 } else { u64::from(w) * u64::from(h) * 3 };
    let needed = decoded.saturating_add(rgb_copy);
    if needed > limits.max_alloc_bytes {
        return Err(Error::TooLarge(format!(
            "decoding the {format:?} image ({w}x{h}, {:?}) needs {needed} bytes, over the limit of {} bytes; send a \
             smaller image",
            decoder.color_type(),
            limits.max_alloc_bytes
        )));
    }
    Ok(())
}

fn decode_error(format: ImageFormat, e: image::ImageError) -> Error {
    match e {
        image::ImageError::Limits(l) => {
            Error::TooLarge(format!("decoding the {format:?} image needs more memory than allowed: {l}"))
        }
        image::ImageError::Unsupported(u) => Error::Unsupported(format!("{format:?}: {u}")),
        other => Error::InvalidInput(format!("the {format:?} image could not be decoded: {other}")),
    }
}

/// Resizes only the region that survives the centre crop, straight to `width × height`.
///
/// Scaling the shorter side to `resize` and then cropping the centre is the same as cropping
/// the centre `width·s × height·s` source pixels (s = shorter / resize) and scaling that, so a
/// 2000×3 image never becomes a 170,000-pixel-wide intermediate.
pub fn resize_center_crop(rgb: Vec<u8>, w: u32, h: u32, spec: &Spec) -> Result<Vec<u8>, Error> {
    let src = Image::from_vec_u8(w, h, rgb, PixelType::U8x3)
        .map_err(|e| Error::Internal(format!("resize source buffer: {e}")))?;
    let scale = f64::from(w.min(h)) / f64::from(spec.resize);
    let crop_w = f64::from(spec.width) * scale;
    let crop_h = f64::from(spec.height) * scale;
    let left = (f64::from(w) - crop_w) / 2.0;
    let top = (f64::from(h) - crop_h) / 2.0;
    let mut dst = Image::new(spec.width, spec.height, PixelType::U8x3);
    // Bilinear convolution with a support that grows when downscaling: the same antialiased
    // filter PIL (and so torchvision) uses for Resize.
    let options =
        ResizeOptions::new().resize_alg(ResizeAlg::Convolution(FilterType::Bilinear)).crop(left, top, crop_w, crop_h);
    Resizer::new().resize(&src, &mut dst, &options).map_err(|e| Error::Internal(format!("resize: {e}")))?;
    Ok(dst.into_vec())
}

/// An image fitted into a square by [`letterbox`], and where it went: a point `(x, y)` of the
/// square is `((x - left) / scale_x, (y - top) / scale_y)` in the source image.
#[derive(Debug, Clone, PartialEq)]
pub struct Letterbox {
    /// `size × size` interleaved RGB.
    pub rgb: Vec<u8>,
    pub scale_x: f32,
    pub scale_y: f32,
    pub left: u32,
    pub top: u32,
}

/// Scales `w × h` interleaved RGB so that its longer side is `size` (the shorter one rounded
/// half up, at least 1 pixel) and centres it on a `size × size` square of grey `fill`: a
/// detector's input, which keeps the whole image and its aspect ratio (YOLO's letterbox). The
/// filter is the one [`resize_center_crop`] uses, Pillow's antialiased bilinear, so a model
/// trained on Pillow's letterbox (models/tools/train_detect.py) sees the same pixels.
pub fn letterbox(rgb: Vec<u8>, w: u32, h: u32, size: u32, fill: u8) -> Result<Letterbox, Error> {
    if w == 0 || h == 0 || size == 0 {
        return Err(Error::Internal(format!("letterbox of {w}x{h} into {size}x{size}")));
    }
    let scale = f64::from(size) / f64::from(w.max(h));
    let fit = |side: u32| ((f64::from(side) * scale + 0.5).floor() as u32).clamp(1, size);
    let (nw, nh) = (fit(w), fit(h));
    let src = Image::from_vec_u8(w, h, rgb, PixelType::U8x3)
        .map_err(|e| Error::Internal(format!("letterbox source: {e}")))?;
    let mut dst = Image::new(nw, nh, PixelType::U8x3);
    let options = ResizeOptions::new().resize_alg(ResizeAlg::Convolution(FilterType::Bilinear));
    Resizer::new().resize(&src, &mut dst, &options).map_err(|e| Error::Internal(format!("letterbox: {e}")))?;
    let (left, top) = ((size - nw) / 2, (size - nh) / 2);
    let row = 3 * size as usize;
    let mut out = vec![fill; row * size as usize];
    for (y, line) in dst.buffer().chunks_exact(3 * nw as usize).enumerate() {
        let start = (top as usize + y) * row + 3 * left as usize;
        out[start..start + line.len()].copy_from_slice(line);
    }
    Ok(Letterbox { rgb: out, scale_x: nw as f32 / w as f32, scale_y: nh as f32 / h as f32, left, top })
}

/// An encoded image made a detector's input: decoded (EXIF orientation applied; a large JPEG at
/// a reduced scale whose shorter side is still `size`), [`letterbox`]ed into `size × size` on
/// grey `fill` and normalized like [`normalize_nchw`]. Its placement maps a point of the square
/// back to the pixels of the image as sent, whatever scale it was decoded at.
#[derive(Debug, Clone, PartialEq)]
pub struct Fitted {
    /// `3 × size × size` floats, planar.
    pub data: Vec<f32>,
    /// Square pixels per sent pixel, across and down.
    pub scale_x: f32,
    pub scale_y: f32,
    /// Where the image starts in the square.
    pub left: u32,
    pub top: u32,
    /// The image as sent, after orientation.
    pub width: u32,
    pub height: u32,
}

impl Fitted {
    /// Square pixels `[x_min, y_min, x_max, y_max]` → sent pixels, clipped to the image.
    pub fn to_sent(&self, b: [f32; 4]) -> [f32; 4] {
        let x = |v: f32| ((v - self.left as f32) / self.scale_x).clamp(0.0, self.width as f32);
        let y = |v: f32| ((v - self.top as f32) / self.scale_y).clamp(0.0, self.height as f32);
        [x(b[0]), y(b[1]), x(b[2]), y(b[3])]
    }
}

/// See [`Fitted`].
pub fn fit(bytes: &[u8], limits: &Limits, size: u32, fill: u8, mean: [f32; 3], std: [f32; 3]) -> Result<Fitted, Error> {
    if std.iter().any(|s| *s == 0.0 || !s.is_finite()) {
        return Err(Error::Internal("model spec: std must be finite and non-zero".into()));
    }
    let rgb = decode_rgb_scaled(bytes, limits, size)?;
    let (w, h) = (rgb.width(), rgb.height());
    // A JPEG decoded at 1/k scale: boxes map back through k too. Other formats decode whole, so
    // their header need not be read again.
    let jpeg = image::guess_format(bytes).is_ok_and(|f| f == ImageFormat::Jpeg);
    let (width, height) = if jpeg { oriented_size(bytes).unwrap_or((w, h)) } else { (w, h) };
    let boxed = letterbox(rgb.into_raw(), w, h, size, fill)?;
    let square = Spec { height: size, width: size, resize: size, mean, std };
    Ok(Fitted {
        data: normalize_nchw(&boxed.rgb, &square),
        scale_x: boxed.scale_x * w as f32 / width as f32,
        scale_y: boxed.scale_y * h as f32 / height as f32,
        left: boxed.left,
        top: boxed.top,
        width,
        height,
    })
}

/// Interleaved RGB u8 → planar (CHW) f32, `(p / 255 − mean[c]) / std[c]`.
pub fn normalize_nchw(rgb: &[u8], spec: &Spec) -> Vec<f32> {
    let plane = (spec.width * spec.height) as usize;
    let mut out = vec![0f32; 3 * plane];
    // Fold the three operations into one multiply-add per channel.
    let scale: [f32; 3] = std::array::from_fn(|c| 1.0 / (255.0 * spec.std[c]));
    let offset: [f32; 3] = std::array::from_fn(|c| -spec.mean[c] / spec.std[c]);
    let (r, rest) = out.split_at_mut(plane);
    let (g, b) = rest.split_at_mut(plane);
    for (i, px) in rgb.chunks_exact(3).enumerate() {
        r[i] = f32::from(px[0]) * scale[0] + offset[0];
        g[i] = f32::from(px[1]) * scale[1] + offset[1];
        b[i] = f32::from(px[2]) * scale[2] + offset[2];
    }
    out
}

/// The fuzz target's body (`fuzz/fuzz_targets/decode.rs`) and its corpus replay in the tests:
/// any bytes, with the server's default limits, give a tensor of the spec's size with finite
/// values or a refusal that blames the input, never a panic or an internal error.
pub fn fuzz_decode(data: &[u8]) {
    let spec = Spec { height: 224, width: 224, resize: 256, mean: [0.485, 0.456, 0.406], std: [0.229, 0.224, 0.225] };
    let limits = Limits { max_pixels: 40_000_000, max_alloc_bytes: 192 << 20 };
    match preprocess(data, &spec, &limits) {
        Ok(tensor) => {
            assert_eq!(tensor.len(), 3 * 224 * 224);
            assert!(tensor.iter().all(|v| v.is_finite()));
        }
        Err(Error::Internal(e)) => panic!("internal error on an input: {e}"),
        Err(_) => {}
    }
}
