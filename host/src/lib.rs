//! Tessera: image classification with native tract inference and WebAssembly component stages.
//!
//! The library is the product; the `tessera` binary and its HTTP server are thin layers over
//! it. Embed it in an edge node without any HTTP:
//!
//! ```no_run
//! let host = tessera::Host::builder().models("models").build()?;
//! let result = host.classify(&std::fs::read("cat.png")?)?;
//! println!("{} {:.3}", result.label, result.confidence);
//! # Ok::<(), anyhow::Error>(())
//! ```

pub mod config;
pub mod cpu;
pub mod error;
mod host;
pub mod inference;
pub mod pipeline;
pub mod repository;
pub mod runtime;
pub mod server;
pub mod watch;

pub use config::{Config, ConfigError, Limits, RuleConfig};
pub use error::{ErrorKind, PipelineError, Stage};
pub use host::{BuildError, Host, HostBuilder, ModelStatus, Preprocessor, ReloadReport, VersionStatus};
pub use inference::{EngineKind, EngineMode};
pub use pipeline::{Classification, ClassifyRequest, ModelRef, Timings, Verdict};
pub use repository::{ModelRepository, RepositoryError};
pub use runtime::{Decision, Prediction, RuntimeError};
