//! Tessera's C API: a host created from a config file, images classified to JSON or to a struct,
//! reloads, and everything the library allocated freed by the library.
//!
//! For agents not written in Rust (edge nodes mostly run C, C++, Go or Python agents). The header
//! `include/tessera.h` is generated from this file by cbindgen; `docs/EMBEDDING.md` shows a
//! complete C program.
//!
//! The contract, the same for every function:
//! - A function that can fail returns a [`TesseraStatus`]: `TESSERA_STATUS_OK` (0) or the reason,
//!   one code per error kind of the HTTP API (`invalid_image`, `guest_trap`, ...), so an agent
//!   branches on the code, never on the message. When `error` is not null it receives the
//!   message on failure (free it with [`tessera_string_free`]) and null on success.
//! - Strings in are NUL-terminated UTF-8; strings out are allocated here and freed with
//!   [`tessera_string_free`], structs with their own `_free`. Null is accepted by every free.
//! - A [`TesseraHost`] is thread-safe: any number of threads may classify and reload at once
//!   through one pointer (the library's `Host` is `Send + Sync`). Freeing it while another
//!   thread uses it is the caller's bug, as with `free`.
//! - Nothing unwinds into C: a panic inside a call becomes `TESSERA_STATUS_INTERNAL`.

use std::ffi::{CStr, CString, c_char};
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::path::Path;

use tessera::{Classification, ClassifyRequest, Config, ErrorKind, Host, RequestError};

/// Why a call failed; 0 is success. Codes 10 and up are the library's error kinds, named as in
/// the HTTP API's `error.code`.
#[repr(i32)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TesseraStatus {
    Ok = 0,
    /// A null pointer where a value is required, or a string that is not UTF-8.
    InvalidArgument = 1,
    /// The config file could not be read or is not valid (the message names the key).
    Config = 2,
    /// The host could not start: a guest component or the model repository failed to load.
    Build = 3,
    BadRequest = 10,
    InvalidImage = 11,
    PayloadTooLarge = 12,
    UnsupportedMediaType = 13,
    ImageTooLarge = 14,
    ModelNotFound = 15,
    PipelineNotFound = 16,
    GuestTrap = 17,
    GuestMemoryExceeded = 18,
    GuestFailed = 19,
    /// A bug on our side (a panic included) or a broken deployment.
    Internal = 20,
    Overloaded = 21,
    DeadlineExceeded = 22,
    NotReady = 23,
    TaskNotFound = 24,
}

impl From<ErrorKind> for TesseraStatus {
    fn from(kind: ErrorKind) -> Self {
        match kind {
            ErrorKind::BadRequest => TesseraStatus::BadRequest,
            ErrorKind::InvalidImage => TesseraStatus::InvalidImage,
            ErrorKind::PayloadTooLarge => TesseraStatus::PayloadTooLarge,
            ErrorKind::UnsupportedMediaType => TesseraStatus::UnsupportedMediaType,
            ErrorKind::ImageTooLarge => TesseraStatus::ImageTooLarge,
            ErrorKind::ModelNotFound => TesseraStatus::ModelNotFound,
            ErrorKind::PipelineNotFound => TesseraStatus::PipelineNotFound,
            ErrorKind::GuestTrap => TesseraStatus::GuestTrap,
            ErrorKind::GuestMemoryExceeded => TesseraStatus::GuestMemoryExceeded,
            ErrorKind::GuestFailed => TesseraStatus::GuestFailed,
            ErrorKind::Internal => TesseraStatus::Internal,
            ErrorKind::Overloaded => TesseraStatus::Overloaded,
            ErrorKind::DeadlineExceeded => TesseraStatus::DeadlineExceeded,
            ErrorKind::NotReady => TesseraStatus::NotReady,
            ErrorKind::TaskNotFound => TesseraStatus::TaskNotFound,
        }
    }
}

impl TesseraStatus {
    /// The stable name: the HTTP API's `error.code` for the library's kinds.
    fn name(self) -> &'static CStr {
        match self {
            TesseraStatus::Ok => c"ok",
            TesseraStatus::InvalidArgument => c"invalid_argument",
            TesseraStatus::Config => c"config",
            TesseraStatus::Build => c"build",
            TesseraStatus::BadRequest => c"bad_request",
            TesseraStatus::InvalidImage => c"invalid_image",
            TesseraStatus::PayloadTooLarge => c"payload_too_large",
            TesseraStatus::UnsupportedMediaType => c"unsupported_media_type",
            TesseraStatus::ImageTooLarge => c"image_too_large",
            TesseraStatus::ModelNotFound => c"model_not_found",
            TesseraStatus::PipelineNotFound => c"pipeline_not_found",
            TesseraStatus::GuestTrap => c"guest_trap",
            TesseraStatus::GuestMemoryExceeded => c"guest_memory_exceeded",
            TesseraStatus::GuestFailed => c"guest_failed",
            TesseraStatus::Internal => c"internal",
            TesseraStatus::Overloaded => c"overloaded",
            TesseraStatus::DeadlineExceeded => c"deadline_exceeded",
            TesseraStatus::NotReady => c"not_ready",
            TesseraStatus::TaskNotFound => c"task_not_found",
        }
    }
}

/// A failure on its way out: the code and the message for `*error`.
struct Failure(TesseraStatus, String);

impl From<RequestError> for Failure {
    fn from(e: RequestError) -> Self {
        Failure(e.kind.into(), e.to_string())
    }
}

/// A running host: models loaded, guests instantiated. Opaque to C.
pub struct TesseraHost {
    host: Host,
}

/// One scored class of [`TesseraClassification`].
#[repr(C)]
pub struct TesseraPrediction {
    /// The class index in the model's output.
    pub index: u32,
    pub label: *const c_char,
    pub score: f32,
}

/// A classification as a struct; every pointer in it lives until
/// [`tessera_classification_free`]. The JSON form ([`tessera_classify_json`]) carries more:
/// timings per stage, the guests that ran, the decision's tags.
#[repr(C)]
pub struct TesseraClassification {
    /// The top-1 label and its score.
    pub label: *const c_char,
    pub confidence: f32,
    /// The model and version that answered.
    pub model: *const c_char,
    pub version: *const c_char,
    /// The rules' decision (true when no rules are configured) and its reason.
    pub accepted: bool,
    pub reason: *const c_char,
    /// The top-k classes, best first (k = 5).
    pub top_k: *const TesseraPrediction,
    pub top_k_len: usize,
    /// Time from the call to the answer, in milliseconds.
    pub total_ms: f64,
}

/// The struct handed to C and what its pointers point into, freed together. `view` is the
/// first field of a `repr(C)` struct, so a pointer to it is a pointer to the whole.
#[repr(C)]
struct OwnedClassification {
    view: TesseraClassification,
    _strings: Vec<CString>,
    _top_k: Vec<TesseraPrediction>,
}

impl OwnedClassification {
    fn new(c: &Classification) -> Box<Self> {
        let mut strings = Vec::new();
        // A CString's heap buffer does not move when the CString is moved into the Vec.
        let mut keep = |s: &str| {
            let owned = c_string(s);
            let ptr = owned.as_ptr();
            strings.push(owned);
            ptr
        };
        let top_k: Vec<TesseraPrediction> = c
            .top_k
            .iter()
            .map(|p| TesseraPrediction { index: p.index, label: keep(&p.label), score: p.score })
            .collect();
        let view = TesseraClassification {
            label: keep(&c.label),
            confidence: c.confidence,
            model: keep(&c.model.name),
            version: keep(&c.model.version),
            accepted: c.decision.accepted,
            reason: keep(&c.decision.reason),
            top_k: top_k.as_ptr(),
            top_k_len: top_k.len(),
            total_ms: c.timings_ms.total,
        };
        Box::new(OwnedClassification { view, _strings: strings, _top_k: top_k })
    }
}

/// A C string of `s`; an interior NUL (a label file may hold anything) ends it there.
fn c_string(s: &str) -> CString {
    let end = s.find('\0').unwrap_or(s.len());
    CString::new(&s[..end]).expect("cut at the first NUL")
}

/// Runs `body`, turning a panic into `Internal` and writing the message to `error` if asked.
///
/// # Safety
/// `error` is null or valid for one pointer write.
unsafe fn call(error: *mut *mut c_char, body: impl FnOnce() -> Result<(), Failure>) -> TesseraStatus {
    let outcome = catch_unwind(AssertUnwindSafe(body)).unwrap_or_else(|panic| {
        let what = panic
            .downcast_ref::<&str>()
            .map(|s| s.to_string())
            .or_else(|| panic.downcast_ref::<String>().cloned())
            .unwrap_or_else(|| "a panic".into());
        Err(Failure(TesseraStatus::Internal, format!("internal error (a bug in Tessera): {what}")))
    });
    let (status, message) = match outcome {
        Ok(()) => (TesseraStatus::Ok, None),
        Err(Failure(status, message)) => (status, Some(message)),
    };
    if !error.is_null() {
        // SAFETY: the caller passed a non-null `error` valid for a write (this fn's contract).
        unsafe { *error = message.map_or(std::ptr::null_mut(), |m| c_string(&m).into_raw()) };
    }
    status
}

/// # Safety
/// `s` is null or a NUL-terminated string valid for reads.
unsafe fn optional_str<'a>(s: *const c_char, what: &str) -> Result<Option<&'a str>, Failure> {
    if s.is_null() {
        return Ok(None);
    }
    // SAFETY: non-null, NUL-terminated by the caller's contract.
    let s = unsafe { CStr::from_ptr(s) };
    s.to_str().map(Some).map_err(|_| Failure(TesseraStatus::InvalidArgument, format!("{what} is not UTF-8")))
}

/// # Safety
/// `host` is null or a pointer from [`tessera_host_new`] not yet freed.
unsafe fn host_ref<'a>(host: *const TesseraHost) -> Result<&'a Host, Failure> {
    // SAFETY: null or live, by the caller's contract; shared access is what Host allows.
    unsafe { host.as_ref() }
        .map(|h| &h.host)
        .ok_or_else(|| Failure(TesseraStatus::InvalidArgument, "host is null".into()))
}

/// # Safety
/// `image` is valid for reads of `len` bytes unless `len` is 0.
unsafe fn request(host: &Host, model: *const c_char, image: *const u8, len: usize) -> Result<ClassifyRequest, Failure> {
    let bytes: &[u8] = match (image.is_null(), len) {
        (_, 0) => &[],
        (true, _) => return Err(Failure(TesseraStatus::InvalidArgument, "image is null".into())),
        // SAFETY: non-null and valid for `len` bytes by the caller's contract.
        (false, _) => unsafe { std::slice::from_raw_parts(image, len) },
    };
    // SAFETY: null or NUL-terminated by the caller's contract.
    let model = unsafe { optional_str(model, "model") }?.map(str::to_string);
    // The request's context (its deadline counts from here) is made once, at this edge.
    Ok(ClassifyRequest::new(bytes.to_vec(), host.context().with_model(model, None)))
}

/// Starts a host from a TOML config file (`config/tessera.example.toml` has every key; relative
/// paths in it are taken from the file's directory), or from the defaults when `config_path` is
/// null (models in `./models`, the guests `just guests` builds in `./target/guests`). Loads every
/// model and guest before it returns; on success `*host_out` is the host, to be freed with
/// [`tessera_host_free`].
///
/// Loads run in this process: name a `tessera` binary as `[inference] load_probe` to have each
/// new model version probed in a child process with bounded memory and time first.
///
/// # Safety
/// `config_path` is null or a NUL-terminated string; `host_out` is valid for a write; `error`
/// is null or valid for a write.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn tessera_host_new(
    config_path: *const c_char,
    host_out: *mut *mut TesseraHost,
    error: *mut *mut c_char,
) -> TesseraStatus {
    // SAFETY: `error` as this function's contract says.
    unsafe {
        call(error, || {
            if host_out.is_null() {
                return Err(Failure(TesseraStatus::InvalidArgument, "host_out is null".into()));
            }
            // SAFETY: as this function's contract says.
            let config = match optional_str(config_path, "config_path")? {
                Some(path) => {
                    Config::from_file(Path::new(path)).map_err(|e| Failure(TesseraStatus::Config, e.to_string()))?
                }
                None => Config::default(),
            };
            let host =
                Host::builder().config(config).build().map_err(|e| Failure(TesseraStatus::Build, format!("{e:#}")))?;
            *host_out = Box::into_raw(Box::new(TesseraHost { host }));
            Ok(())
        })
    }
}

/// Frees a host: its models, guests and threads. Null is ignored.
///
/// # Safety
/// `host` is null or a pointer from [`tessera_host_new`] that no other thread is using and that
/// is not freed again.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn tessera_host_free(host: *mut TesseraHost) {
    if !host.is_null() {
        // SAFETY: from Box::into_raw in tessera_host_new, freed once (the caller's contract).
        drop(unsafe { Box::from_raw(host) });
    }
}

/// Classifies an encoded image (JPEG, PNG, WebP, GIF, BMP) with `model` (null: the default
/// model) through the configured guests. On success `*json_out` is the answer as the HTTP API's
/// `POST /v1/classify` gives it (label, confidence, top_k, decision, model, timings_ms, guests),
/// to be freed with [`tessera_string_free`].
///
/// # Safety
/// `host` is a live host; `model` is null or a NUL-terminated string; `image` is valid for
/// reads of `len` bytes; `json_out` is valid for a write; `error` is null or valid for a write.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn tessera_classify_json(
    host: *const TesseraHost,
    model: *const c_char,
    image: *const u8,
    len: usize,
    json_out: *mut *mut c_char,
    error: *mut *mut c_char,
) -> TesseraStatus {
    // SAFETY: every pointer as this function's contract says.
    unsafe {
        call(error, || {
            if json_out.is_null() {
                return Err(Failure(TesseraStatus::InvalidArgument, "json_out is null".into()));
            }
            let host = host_ref(host)?;
            let classification = host.classify(&request(host, model, image, len)?)?;
            let json = serde_json::to_string(&classification).expect("serializing our own types");
            *json_out = c_string(&json).into_raw();
            Ok(())
        })
    }
}

/// As [`tessera_classify_json`], the answer as a struct: `*out` lives until
/// [`tessera_classification_free`].
///
/// # Safety
/// As [`tessera_classify_json`], with `out` valid for a write.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn tessera_classify(
    host: *const TesseraHost,
    model: *const c_char,
    image: *const u8,
    len: usize,
    out: *mut *mut TesseraClassification,
    error: *mut *mut c_char,
) -> TesseraStatus {
    // SAFETY: every pointer as this function's contract says.
    unsafe {
        call(error, || {
            if out.is_null() {
                return Err(Failure(TesseraStatus::InvalidArgument, "out is null".into()));
            }
            let host = host_ref(host)?;
            let classification = host.classify(&request(host, model, image, len)?)?;
            *out = Box::into_raw(OwnedClassification::new(&classification)).cast::<TesseraClassification>();
            Ok(())
        })
    }
}

/// Frees a classification from [`tessera_classify`]. Null is ignored.
///
/// # Safety
/// `classification` is null or a pointer from [`tessera_classify`] not freed before.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn tessera_classification_free(classification: *mut TesseraClassification) {
    if !classification.is_null() {
        // SAFETY: tessera_classify made it from a Box<OwnedClassification>, whose first field
        // (repr(C)) is the TesseraClassification; freed once by the caller's contract.
        drop(unsafe { Box::from_raw(classification.cast::<OwnedClassification>()) });
    }
}

/// Rescans the model directory and the guest files, as `POST /v1/admin/reload` does: new
/// versions load, removed ones unload, changed guests are replaced; what fails is reported and
/// the rest keeps serving. `*report_out` (when not null) receives the report as JSON (models
/// with each version's state, failed model directories, the guests' outcome), freed with
/// [`tessera_string_free`].
///
/// # Safety
/// `host` is a live host; `report_out` and `error` are null or valid for a write.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn tessera_reload(
    host: *const TesseraHost,
    report_out: *mut *mut c_char,
    error: *mut *mut c_char,
) -> TesseraStatus {
    // SAFETY: every pointer as this function's contract says.
    unsafe {
        call(error, || {
            let report = host_ref(host)?.reload();
            if !report_out.is_null() {
                let json = serde_json::to_string(&report).expect("serializing our own types");
                *report_out = c_string(&json).into_raw();
            }
            Ok(())
        })
    }
}

/// Frees a string this library returned. Null is ignored.
///
/// # Safety
/// `s` is null or a string from this library not freed before.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn tessera_string_free(s: *mut c_char) {
    if !s.is_null() {
        // SAFETY: made by CString::into_raw here, freed once by the caller's contract.
        drop(unsafe { CString::from_raw(s) });
    }
}

/// The stable name of a status (`"ok"`, `"invalid_image"`, ...): static, never freed. An
/// unknown value gives `"unknown"`.
#[unsafe(no_mangle)]
pub extern "C" fn tessera_status_name(status: i32) -> *const c_char {
    const ALL: [TesseraStatus; 19] = [
        TesseraStatus::Ok,
        TesseraStatus::InvalidArgument,
        TesseraStatus::Config,
        TesseraStatus::Build,
        TesseraStatus::BadRequest,
        TesseraStatus::InvalidImage,
        TesseraStatus::PayloadTooLarge,
        TesseraStatus::UnsupportedMediaType,
        TesseraStatus::ImageTooLarge,
        TesseraStatus::ModelNotFound,
        TesseraStatus::PipelineNotFound,
        TesseraStatus::GuestTrap,
        TesseraStatus::GuestMemoryExceeded,
        TesseraStatus::GuestFailed,
        TesseraStatus::Internal,
        TesseraStatus::Overloaded,
        TesseraStatus::DeadlineExceeded,
        TesseraStatus::NotReady,
        TesseraStatus::TaskNotFound,
    ];
    ALL.iter().find(|s| **s as i32 == status).map_or(c"unknown", |s| s.name()).as_ptr()
}

/// This library's version (the workspace's), static.
#[unsafe(no_mangle)]
pub extern "C" fn tessera_version() -> *const c_char {
    concat!(env!("CARGO_PKG_VERSION"), "\0").as_ptr().cast()
}
