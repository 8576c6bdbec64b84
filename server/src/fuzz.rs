//! What the fuzz targets in `fuzz/` run, and the corpus replay in `./run test` with them: each
//! entry point takes the bytes libFuzzer made, runs what the server runs on a request's
//! untrusted parts before any guest or model sees them, and panics when an invariant breaks:
//! a refusal that is not a client error (4xx), or an accepted request that is not what it
//! claims (an image or tensor that does not fit its own description).
//!
//! Hand-written because these are the parsers we wrote around the crates (hyper, multer,
//! serde_json, prost, toml): the crates are fuzzed upstream, our glue is not.

use std::path::Path;
#[cfg(feature = "grpc")]
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{HeaderMap, HeaderName, HeaderValue};
#[cfg(feature = "grpc")]
use prost::Message;

use super::http::{self as h, Upload};
use super::oip::{self, Decoded};
#[cfg(feature = "grpc")]
use tessera::RequestContext;
use tessera::RequestError;
#[cfg(feature = "grpc")]
use tessera::config::Limits;

/// The longest a fuzz input may make one parse wait on itself (multipart over an in-memory
/// body never waits).
const POLLS: usize = 64;

/// `POST /v1/classify`: `data` is the query string, a line break, headers as `name: value`
/// lines, an empty line, then the body.
pub fn http_request(data: &[u8]) {
    let (query, rest) = split_line(data);
    let mut headers = HeaderMap::new();
    let mut rest = rest;
    loop {
        let (line, tail) = split_line(rest);
        rest = tail;
        if line.is_empty() {
            break;
        }
        let Some(colon) = line.iter().position(|&b| b == b':') else { continue };
        if let (Ok(name), Ok(value)) =
            (HeaderName::from_bytes(&line[..colon]), HeaderValue::from_bytes(line[colon + 1..].trim_ascii()))
        {
            headers.append(name, value);
        }
    }
    let client_error = |e: h::HttpError| assert!(e.status.is_client_error(), "{}: {}", e.status, e.message);
    // hyper hands over the query as text; bytes that are not cannot arrive.
    if let Ok(q) = std::str::from_utf8(query) {
        match h::parse_query(Some(q)) {
            Ok(q) => assert!(q.top_k.is_none_or(|k| k >= 1)),
            Err(e) => client_error(e),
        }
    }
    if let Err(e) = super::http::parse_timeout(&headers) {
        client_error(e);
    }
    let _ = h::metadata(&headers, "fuzz");
    match h::upload_kind(&headers) {
        Ok(Upload::Multipart(boundary)) => match block_on(h::multipart_image(Bytes::copy_from_slice(rest), boundary)) {
            Ok((image, media_type)) => {
                assert!(image.len() <= rest.len());
                assert!(media_type.is_none_or(|m| m.starts_with("image/")));
            }
            Err(e) => client_error(e),
        },
        Ok(Upload::Raw(media_type)) => assert!(media_type.is_none_or(|m| m.starts_with("image/"))),
        Err(e) => client_error(e),
    }
}

/// `POST /v2/models/{m}/infer` (OIP REST): `data` is the `Inference-Header-Content-Length`
/// value (empty: none), a line break, then the body.
pub fn oip_rest(data: &[u8]) {
    let (length, body) = split_line(data);
    let header_len = match std::str::from_utf8(length).ok().map(str::trim) {
        None | Some("") => None,
        Some(n) => match n.parse::<usize>() {
            Ok(n) => Some(n),
            Err(_) => return,
        },
    };
    match oip::rest::parse_rest(header_len, Bytes::copy_from_slice(body)) {
        Ok(rest) => decoded(oip::decode(rest.input)),
        Err(e) => client_kind(&e),
    }
}

/// `inference.GRPCInferenceService/ModelInfer`: `data` is the protobuf message.
#[cfg(feature = "grpc")]
pub fn oip_grpc(data: &[u8]) {
    let Ok(mut message) = super::oip::grpc::pb::ModelInferRequest::decode(data) else { return };
    match super::oip::grpc::parse_infer(&mut message) {
        Ok((input, _, _)) => decoded(oip::decode(input)),
        Err(e) => client_kind(&e),
    }
}

/// `image_recognition.ImageRecognitionService/Recognize`: `data` is the protobuf message.
#[cfg(feature = "grpc")]
pub fn tessera_grpc(data: &[u8]) {
    let Ok(message) = super::grpc::pb::ImageRequest::decode(data) else { return };
    let had_image = !message.image_data.is_empty();
    let context = RequestContext::new(&Limits::default(), Instant::now(), Some(Duration::from_secs(1)));
    match super::grpc::classify_request(message, context, Vec::new()) {
        Ok(request) => {
            assert!(had_image && !request.image.is_empty());
            assert!(request.media_type.is_none_or(|m| m.contains('/')));
        }
        Err(e) => client_kind(&e),
    }
}

/// The TOML files a server reads: `data` as a `model.toml`, a `repository.toml` and a
/// `tessera.toml`. A refusal names the file; an accepted `model.toml` holds what serving
/// relies on.
pub fn config_files(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else { return };
    match tessera::internals::Manifest::parse(text, Path::new("fuzz/model.toml")) {
        Ok(m) => {
            let [n, c, h, w] = m.input_shape;
            assert!(n == 1 && c == 3 && h > 0 && w > 0 && m.resize >= h.max(w));
            assert!(m.std.iter().all(|s| *s > 0.0 && s.is_finite()) && m.mean.iter().all(|v| v.is_finite()));
            assert!(tessera::internals::is_inside(&m.labels));
        }
        Err(e) => assert!(e.to_string().contains("fuzz/model.toml"), "{e}"),
    }
    let _ = toml::from_str::<tessera::internals::RepositoryManifest>(text);
    if let Ok(config) = toml::from_str::<tessera::config::Config>(text) {
        let _ = config.validate();
    }
}

fn decoded(result: Result<Decoded, RequestError>) {
    match result {
        Ok(Decoded::Image(image)) => assert!(!image.is_empty()),
        Ok(Decoded::Tensor { shape, data }) => assert_eq!(shape.iter().product::<usize>(), data.len()),
        Err(e) => client_kind(&e),
    }
}

fn client_kind(e: &RequestError) {
    let status = crate::http::status_for(e.kind);
    assert!(status.is_client_error(), "{status}: {e}");
}

fn split_line(data: &[u8]) -> (&[u8], &[u8]) {
    match data.iter().position(|&b| b == b'\n') {
        Some(i) => (data[..i].strip_suffix(b"\r").unwrap_or(&data[..i]), &data[i + 1..]),
        None => (data, &[]),
    }
}

/// Polls a future that never waits on I/O to its end.
fn block_on<F: Future>(future: F) -> F::Output {
    let mut future = std::pin::pin!(future);
    let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
    for _ in 0..POLLS {
        if let std::task::Poll::Ready(out) = future.as_mut().poll(&mut cx) {
            return out;
        }
    }
    panic!("a parse over an in-memory body kept waiting");
}
