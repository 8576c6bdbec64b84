//! Test support: start the real `tessera` binary on an ephemeral port, wait for readiness,
//! and make the generated image sets the tests use as data.

#![allow(dead_code)] // each helper is used by some of the tests, not all

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use serde_json::Value;

/// The repository root.
pub fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap().to_path_buf()
}

/// The release binary `just test` builds before running the tests.
pub fn tessera_bin() -> PathBuf {
    let bin = root().join("target/release/tessera");
    assert!(
        bin.is_file(),
        "{} is missing: run the tests with `./run test` (it builds the host and the guests)",
        bin.display()
    );
    bin
}

/// A guest component built by `just guests`.
pub fn guest(name: &str) -> PathBuf {
    let path = root().join("target/guests").join(format!("{name}.wasm"));
    assert!(path.is_file(), "{} is missing: run `./run test` (it builds the guests)", path.display());
    path
}

/// How long a server may take to load models and guests.
const READY_TIMEOUT: Duration = Duration::from_secs(120);
/// Interval between readiness probes.
const READY_POLL: Duration = Duration::from_millis(25);

/// A running `tessera serve`; killed when dropped.
pub struct Server {
    child: Option<Child>,
    pub addr: String,
    /// `None` when started with `--grpc-addr off`.
    pub grpc_addr: Option<String>,
    /// `None` when started with `--admin-addr off`.
    pub admin_addr: Option<String>,
    pub stderr_path: PathBuf,
}

impl Server {
    /// Starts `tessera serve --addr 127.0.0.1:0 --grpc-addr 127.0.0.1:0 <args>` (no
    /// `--grpc-addr` of ours when `args` has one) and waits until `/readyz` is 200.
    pub fn start(args: &[&str]) -> Server {
        Self::start_bin(&tessera_bin(), args)
    }

    /// As [`Server::start`], with another build of the binary (the runtime-only one).
    pub fn start_bin(bin: &Path, args: &[&str]) -> Server {
        let logs = root().join("target/test-logs");
        std::fs::create_dir_all(&logs).unwrap();
        let stderr_path = logs.join(format!("server-{}-{}.log", std::process::id(), unique()));
        let grpc: &[&str] = if args.contains(&"--grpc-addr") { &[] } else { &["--grpc-addr", "127.0.0.1:0"] };
        let admin: &[&str] = if args.contains(&"--admin-addr") { &[] } else { &["--admin-addr", "127.0.0.1:0"] };
        let mut child = Command::new(bin)
            .current_dir(root())
            .args(["serve", "--addr", "127.0.0.1:0"])
            .args(grpc)
            .args(admin)
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(std::fs::File::create(&stderr_path).unwrap())
            .spawn()
            .expect("starting tessera");
        // "tessera listening on http://ADDR", then "... grpc://ADDR" and "... admin http://ADDR"
        // unless they are off.
        let flag_off = |flag: &str| args.windows(2).any(|w| w[0] == flag && w[1] == "off");
        let mut stdout = BufReader::new(child.stdout.take().unwrap());
        let mut line = String::new();
        let (mut addr, mut grpc_addr, mut admin_addr) = (None, None, None);
        while addr.is_none()
            || (grpc_addr.is_none() && !flag_off("--grpc-addr"))
            || (admin_addr.is_none() && !flag_off("--admin-addr"))
        {
            line.clear();
            if stdout.read_line(&mut line).unwrap() == 0 {
                panic!(
                    "the server said {:?} and stopped; stderr: {}",
                    (&addr, &grpc_addr, &admin_addr),
                    std::fs::read_to_string(&stderr_path).unwrap_or_default()
                );
            }
            let line = line.trim();
            if let Some(a) = line.strip_prefix("tessera listening on http://") {
                addr = Some(a.to_string());
            } else if let Some(a) = line.strip_prefix("tessera listening on grpc://") {
                grpc_addr = Some(a.to_string());
            } else if let Some(a) = line.strip_prefix("tessera listening on admin http://") {
                admin_addr = Some(a.to_string());
            } else {
                panic!("unexpected line {line:?}");
            }
        }
        let mut server = Server { child: Some(child), addr: addr.unwrap(), grpc_addr, admin_addr, stderr_path };
        server.wait_ready();
        server
    }

    fn wait_ready(&mut self) {
        let client = client();
        let started = Instant::now();
        loop {
            if let Ok(r) = client.get(self.url("/readyz")).send()
                && r.status() == 200
            {
                return;
            }
            if let Some(status) = self.child.as_mut().and_then(|c| c.try_wait().ok().flatten()) {
                panic!("server exited with {status} before it was ready: {}", self.stderr());
            }
            assert!(started.elapsed() < READY_TIMEOUT, "server not ready after {READY_TIMEOUT:?}: {}", self.stderr());
            std::thread::sleep(READY_POLL);
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    /// `path` on the admin listener.
    pub fn admin_url(&self, path: &str) -> String {
        format!("http://{}{path}", self.admin_addr.as_ref().expect("the server has an admin listener"))
    }

    pub fn stderr(&self) -> String {
        std::fs::read_to_string(&self.stderr_path).unwrap_or_default()
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().unwrap().id()
    }

    /// Waits for the exit of a server that was sent a signal, returning its code and log.
    pub fn terminate_after_signal(mut self) -> (Option<i32>, String) {
        let code = self.child.take().unwrap().wait().unwrap().code();
        (code, self.stderr())
    }

    /// POSTs `image` to `/v1/classify` with a query string and extra headers.
    pub fn classify(
        &self,
        image: &[u8],
        query: &str,
        headers: &[(&str, &str)],
    ) -> (u16, Value, reqwest::header::HeaderMap) {
        let mut req = client().post(self.url(&format!("/v1/classify{query}"))).body(image.to_vec());
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        let resp = req.send().expect("request failed");
        let status = resp.status().as_u16();
        let headers = resp.headers().clone();
        let body: Value = resp.json().unwrap_or(Value::Null);
        (status, body, headers)
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

fn unique() -> u64 {
    use std::sync::atomic::{AtomicU64, Ordering};
    static N: AtomicU64 = AtomicU64::new(0);
    N.fetch_add(1, Ordering::Relaxed)
}

pub fn client() -> reqwest::blocking::Client {
    reqwest::blocking::Client::builder().timeout(Duration::from_secs(30)).build().unwrap()
}

/// Sends raw bytes on a fresh connection and returns everything the server answered before
/// closing (for requests a well-behaved client library would refuse to send).
pub fn raw_exchange(addr: &str, request: &[u8]) -> String {
    let mut stream = TcpStream::connect(addr).unwrap();
    stream.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    stream.write_all(request).unwrap();
    let mut out = Vec::new();
    let _ = stream.read_to_end(&mut out);
    String::from_utf8_lossy(&out).into_owned()
}

/// Starts a raw-body upload of `len` bytes with `Expect: 100-continue` and returns once the
/// server answered "100 Continue", which hyper sends exactly when the handler starts reading
/// the body: from then on the request is in flight (admitted, holding its slot) and the test
/// knows it without sleeping. Write the body to the stream to finish it.
pub fn start_upload(addr: &str, len: usize) -> TcpStream {
    let mut stream = TcpStream::connect(addr).unwrap();
    stream.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let head = format!(
        "POST /v1/classify HTTP/1.1\r\nHost: t\r\nContent-Type: image/png\r\nConnection: close\r\nExpect: 100-continue\r\nContent-Length: {len}\r\n\r\n"
    );
    stream.write_all(head.as_bytes()).unwrap();
    let mut interim = Vec::new();
    let mut byte = [0u8; 1];
    while !interim.ends_with(b"\r\n\r\n") {
        stream.read_exact(&mut byte).unwrap();
        interim.push(byte[0]);
    }
    assert!(interim.starts_with(b"HTTP/1.1 100"), "{}", String::from_utf8_lossy(&interim));
    stream
}

/// Sends the rest of an upload and reads the whole answer (`Connection: close` ends it).
pub fn finish_upload(mut stream: TcpStream, body: &[u8]) -> String {
    stream.write_all(body).unwrap();
    let mut out = Vec::new();
    let _ = stream.read_to_end(&mut out);
    String::from_utf8_lossy(&out).into_owned()
}

/// One labelled image of a generated set.
pub struct Case {
    pub path: PathBuf,
    pub label: String,
}

/// The shapes image set for `seed` (made by the project's generator, cached under target/).
/// Held-out sets use seeds the training script never uses (it trains on 1 and validates on 1001).
pub fn shapes(seed: u64, per_class: usize) -> Vec<Case> {
    static LOCK: Mutex<()> = Mutex::new(());
    let _guard = LOCK.lock().unwrap_or_else(|e| e.into_inner());
    let dir = root().join(format!("target/test-data/shapes-{seed}-{per_class}"));
    let labels = dir.join("labels.csv");
    if !labels.is_file() {
        let python = root().join(".venv/bin/python");
        assert!(python.is_file(), "{} is missing: run `./run test` (it installs the Python tools)", python.display());
        let status = Command::new(python)
            .arg(root().join("models/tools/generate_shapes.py"))
            .args(["--seed", &seed.to_string(), "--per-class", &per_class.to_string(), "--out"])
            .arg(&dir)
            .status()
            .unwrap();
        assert!(status.success(), "the image generator failed");
    }
    std::fs::read_to_string(&labels)
        .unwrap()
        .lines()
        .skip(1)
        .map(|line| {
            let (file, label) = line.split_once(',').unwrap();
            Case { path: dir.join(file), label: label.to_string() }
        })
        .collect()
}

/// One generated scene (models/tools/generate_scenes.py): its file and its objects, each a
/// label and a box `[x_min, y_min, x_max, y_max]` in the image's pixels.
pub struct Scene {
    pub path: PathBuf,
    pub objects: Vec<(String, [f64; 4])>,
}

/// The detection scene set for `seed` (made by the project's generator, cached under target/).
/// Held-out sets use seeds the training script never uses (train_detect.py trains on 1 and
/// validates on 1001).
pub fn scenes(seed: u64, count: usize) -> Vec<Scene> {
    static LOCK: Mutex<()> = Mutex::new(());
    let _guard = LOCK.lock().unwrap_or_else(|e| e.into_inner());
    let dir = root().join(format!("target/test-data/scenes-{seed}-{count}"));
    let labels = dir.join("labels.jsonl");
    if !labels.is_file() {
        let python = root().join(".venv/bin/python");
        assert!(python.is_file(), "{} is missing: run `./run test` (it installs the Python tools)", python.display());
        let status = Command::new(python)
            .arg(root().join("models/tools/generate_scenes.py"))
            .args(["--seed", &seed.to_string(), "--count", &count.to_string(), "--out"])
            .arg(&dir)
            .status()
            .unwrap();
        assert!(status.success(), "the scene generator failed");
    }
    std::fs::read_to_string(&labels)
        .unwrap()
        .lines()
        .map(|line| {
            let row: Value = serde_json::from_str(line).unwrap();
            let objects = row["objects"]
                .as_array()
                .unwrap()
                .iter()
                .map(|o| {
                    let b: Vec<f64> = o["box"].as_array().unwrap().iter().map(|v| v.as_f64().unwrap()).collect();
                    (o["label"].as_str().unwrap().to_string(), [b[0], b[1], b[2], b[3]])
                })
                .collect();
            Scene { path: dir.join(row["file"].as_str().unwrap()), objects }
        })
        .collect()
}

/// `tessera compile --target <this architecture> --cpu <baseline level>` of guest `name` into
/// `out/<name>.cwasm`, as the Dockerfile runs it: code a smaller CPU than this one can run.
pub fn precompile_for_baseline(name: &str, out: &std::path::Path) -> std::path::PathBuf {
    let triple = format!("{}-unknown-linux-gnu", std::env::consts::ARCH);
    let cpu = if cfg!(target_arch = "x86_64") { "x86-64-v2" } else { "baseline" };
    let cwasm = out.join(format!("{name}.cwasm"));
    let status = Command::new(tessera_bin())
        .current_dir(root())
        .args(["compile", "--no-compile-cache", "--target", &triple, "--cpu", cpu])
        .arg(guest(name))
        .arg("-o")
        .arg(&cwasm)
        .status()
        .unwrap();
    assert!(status.success(), "tessera compile --target {triple} --cpu {cpu} {name}");
    cwasm
}

/// A PNG of `w × h` pixels of a busy pattern (so it does not compress to nothing).
pub fn png(w: u32, h: u32) -> Vec<u8> {
    encoded(w, h, image::ImageFormat::Png)
}

/// The same pattern as [`png`], as a JPEG.
pub fn jpeg(w: u32, h: u32) -> Vec<u8> {
    encoded(w, h, image::ImageFormat::Jpeg)
}

fn encoded(w: u32, h: u32, format: image::ImageFormat) -> Vec<u8> {
    let img =
        image::RgbImage::from_fn(w, h, |x, y| image::Rgb([((x * 7) ^ (y * 13)) as u8, (x * y) as u8, (x + y) as u8]));
    let mut out = std::io::Cursor::new(Vec::new());
    img.write_to(&mut out, format).unwrap();
    out.into_inner()
}

/// A PNG of `w × h` 16-bit RGBA pixels (8 bytes each) whose data is one empty IDAT chunk: the
/// header is valid (CRCs included), so a decoder trusts the size until it reads the data.
pub fn png_rgba16_header(w: u32, h: u32) -> Vec<u8> {
    fn crc32(bytes: &[u8]) -> u32 {
        let mut crc = !0u32;
        for &b in bytes {
            crc ^= u32::from(b);
            for _ in 0..8 {
                crc = if crc & 1 == 1 { (crc >> 1) ^ 0xEDB8_8320 } else { crc >> 1 };
            }
        }
        !crc
    }
    let chunk = |kind: &[u8], data: &[u8]| {
        let mut c = (data.len() as u32).to_be_bytes().to_vec();
        let body = [kind, data].concat();
        c.extend_from_slice(&body);
        c.extend_from_slice(&crc32(&body).to_be_bytes());
        c
    };
    let mut ihdr = Vec::new();
    ihdr.extend_from_slice(&w.to_be_bytes());
    ihdr.extend_from_slice(&h.to_be_bytes());
    ihdr.extend_from_slice(&[16, 6, 0, 0, 0]); // 16 bits, RGBA, deflate, no filter method, no interlace
    [b"\x89PNG\r\n\x1a\n".to_vec(), chunk(b"IHDR", &ihdr), chunk(b"IDAT", &[]), chunk(b"IEND", &[])].concat()
}

/// A BMP header claiming `w × h` pixels with no pixel data: a decompression-bomb stand-in.
pub fn bmp_header(w: u32, h: u32) -> Vec<u8> {
    let mut b = Vec::new();
    b.extend_from_slice(b"BM");
    b.extend_from_slice(&(54u32 + 16).to_le_bytes()); // file size (a lie, like a bomb's)
    b.extend_from_slice(&[0; 4]);
    b.extend_from_slice(&54u32.to_le_bytes()); // pixel data offset
    b.extend_from_slice(&40u32.to_le_bytes()); // BITMAPINFOHEADER
    b.extend_from_slice(&(w as i32).to_le_bytes());
    b.extend_from_slice(&(h as i32).to_le_bytes());
    b.extend_from_slice(&1u16.to_le_bytes()); // planes
    b.extend_from_slice(&24u16.to_le_bytes()); // bits per pixel
    b.extend_from_slice(&[0; 24]); // no compression, sizes and palette counts
    b.extend_from_slice(&[0; 16]);
    b
}

/// The guests a classification says ran, as (stage, name), in order.
pub fn guests_ran(body: &serde_json::Value) -> Vec<(String, String)> {
    let guests = body["guests"].as_array().unwrap_or_else(|| panic!("no guests list: {body}"));
    guests.iter().map(|g| (g["stage"].as_str().unwrap().into(), g["name"].as_str().unwrap().into())).collect()
}

/// `(stage, name)` pairs as [`guests_ran`] gives them.
pub fn pairs(list: &[(&str, &str)]) -> Vec<(String, String)> {
    list.iter().map(|(a, b)| (a.to_string(), b.to_string())).collect()
}

/// Writes `DIR/tessera.toml`: the repository's models, the default preprocess and postprocess
/// guests, the shared compile cache, then `rules` (TOML of `[[guests.rules]]` entries, paths
/// quoted by the caller); returns its path.
pub fn config_with_rules(dir: &Path, rules: &str) -> PathBuf {
    std::fs::create_dir_all(dir).unwrap();
    let config = dir.join("tessera.toml");
    std::fs::write(
        &config,
        format!(
            "models_dir = {:?}\ncompile_cache_dir = {:?}\n[guests]\npreprocess = {:?}\npostprocess = {:?}\n{rules}",
            root().join("models"),
            root().join("target/cache/components"),
            guest("preprocess"),
            guest("postprocess"),
        ),
    )
    .unwrap();
    config
}
