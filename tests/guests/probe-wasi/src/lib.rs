//! Test fixture: a rules guest built for `wasm32-wasip2`, so Rust's standard library imports
//! WASI (environment, stdio, clocks, random, filesystem, sockets) as any language runtime's
//! would. The `x-probe` metadata entry says what to reach for:
//! - `env`: counts the environment variables and arguments it sees;
//! - `file`: reads `/etc/passwd`;
//! - `clock`: reads the wall clock;
//! - `print`: writes a line to stdout and one to stderr;
//! - `flood`: writes `x-probe-mib` MiB (default 64) to stdout, in 1 KiB lines;
//! - `net`: connects a TCP socket to 127.0.0.1:9;
//! - anything else or absent: accepts.
//!
//! Each answer says what happened in its `reason`; a call the host denies traps inside the
//! host, which answers the request with the failure.

#[cfg(target_arch = "wasm32")]
mod component {
    wit_bindgen::generate!({
        world: "rules",
        path: "../../../wit",
    });

    use std::io::Write;

    struct Probe;

    fn meta<'a>(meta: &'a Metadata, key: &str) -> Option<&'a str> {
        meta.iter().find(|(k, _)| k == key).map(|(_, v)| v.as_str())
    }

    impl Guest for Probe {
        fn decide(_preds: Vec<Prediction>, md: Metadata, _config: Metadata) -> Result<Decision, Error> {
            let reason = match meta(&md, "x-probe") {
                Some("env") => format!("env: {} vars, {} args", std::env::vars().count(), std::env::args().count()),
                Some("file") => match std::fs::read("/etc/passwd") {
                    Ok(bytes) => format!("file: read {} bytes", bytes.len()),
                    Err(e) => format!("file: {e}"),
                },
                Some("clock") => {
                    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH);
                    format!("clock: {}", now.map(|d| d.as_secs() > 1_700_000_000).unwrap_or(false))
                }
                Some("print") => {
                    println!("probe-wasi says hello on stdout");
                    eprintln!("probe-wasi says hello on stderr");
                    "print: done".into()
                }
                Some("flood") => {
                    // 1 MiB of 1 KiB lines at a time, `x-probe-mib` times (default 64).
                    let mib: usize = meta(&md, "x-probe-mib").and_then(|v| v.parse().ok()).unwrap_or(64);
                    let chunk: Vec<u8> = (0..1 << 20).map(|i| if i % 1024 == 1023 { b'\n' } else { b'x' }).collect();
                    let mut out = std::io::stdout().lock();
                    for _ in 0..mib {
                        let _ = out.write_all(&chunk);
                    }
                    format!("flood: {mib} MiB")
                }
                Some("net") => match std::net::TcpStream::connect("127.0.0.1:9") {
                    Ok(_) => "net: connected".into(),
                    Err(e) => format!("net: {e}"),
                },
                _ => "probe accepts".into(),
            };
            Ok(Decision { accepted: true, reason, category: None, tags: vec![] })
        }
    }

    export!(Probe);
}
