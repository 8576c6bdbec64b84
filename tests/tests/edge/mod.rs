//! The runtime-only build an edge node runs (`just runtime-only`: HTTP, no gRPC, no trace
//! exporter, no compiler): it serves guests the full build precompiled for a baseline CPU,
//! refuses WebAssembly, compiling and gRPC with the reason, and carries no Cranelift and no
//! tonic at all.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::support::{Server, guest, precompile_for_baseline, root, shapes, tessera_bin};
use crate::{CLASSES_SEED, read};

fn runtime_only_bin() -> PathBuf {
    let bin = root().join("target/release/tessera-runtime-only");
    assert!(bin.is_file(), "{} is missing: run the tests with `./run test` (it builds it)", bin.display());
    bin
}

/// Whether the file holds `needle` anywhere (a symbol, a panic location's crate path).
fn contains(path: &Path, needle: &[u8]) -> bool {
    std::fs::read(path).unwrap().windows(needle.len()).any(|w| w == needle)
}

/// Runs `bin serve` with `args` until it exits (at most 60 s); returns its code and stderr.
fn serve_until_exit(bin: &Path, args: &[&str]) -> (Option<i32>, String) {
    let mut child = Command::new(bin)
        .current_dir(root())
        .args(["serve", "--addr", "127.0.0.1:0", "--admin-addr", "off"])
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let started = Instant::now();
    while child.try_wait().unwrap().is_none() {
        if started.elapsed() > Duration::from_secs(60) {
            let _ = child.kill();
            panic!("{} serve {args:?} did not exit", bin.display());
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let out = child.wait_with_output().unwrap();
    (out.status.code(), String::from_utf8_lossy(&out.stderr).into_owned())
}

#[test]
fn the_runtime_only_build_serves_precompiled_guests_and_refuses_what_it_cannot_do() {
    let bin = runtime_only_bin();
    // What it leaves out is not in the file at all (no symbol of those crates: legacy-mangled
    // names start `_ZN<len><crate>`); the full binary has both, so the check can fail.
    for needle in [&b"_ZN17cranelift_codegen"[..], b"_ZN5tonic"] {
        let name = String::from_utf8_lossy(needle);
        assert!(contains(&tessera_bin(), needle), "the full binary has {name}");
        assert!(!contains(&bin, needle), "the runtime-only binary carries {name}");
    }

    let dir = root().join(format!("target/test-data/runtime-only-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let cwasm: Vec<PathBuf> = ["preprocess", "postprocess", "rules-threshold"]
        .iter()
        .map(|name| precompile_for_baseline(name, &dir))
        .collect();
    let config = |preprocess: &Path| {
        let path = dir.join(format!("{}.toml", preprocess.file_stem().unwrap().to_string_lossy()));
        std::fs::write(
            &path,
            format!(
                "models_dir = {:?}\n[guests]\npreprocess = {:?}\npostprocess = {:?}\n\
                 [[guests.rules]]\npath = {:?}\nconfig = {{ \"min-confidence\" = \"0.5\" }}\n",
                root().join("models"),
                preprocess,
                cwasm[1],
                cwasm[2]
            ),
        )
        .unwrap();
        path
    };

    // Serves: the precompiled guests load as they are, the answers are the full build's.
    let good = config(&cwasm[0]);
    let server =
        Server::start_bin(&bin, &["--config", good.to_str().unwrap(), "--grpc-addr", "off", "--admin-addr", "off"]);
    assert!(server.stderr().contains("precompiled=true"), "{}", server.stderr());
    for case in shapes(CLASSES_SEED, 2).iter().take(3) {
        let (status, body, _) = server.classify(&read(&case.path), "", &[]);
        assert_eq!(status, 200, "{body}");
        assert_eq!(body["label"], case.label.as_str(), "{body}");
        assert_eq!(body["decision"]["rule"], "rules-threshold", "{body}");
    }
    let (status, body, _) = server.classify(b"not an image", "", &[]);
    assert_eq!((status, body["error"]["code"].as_str()), (400, Some("invalid_image")), "{body}");
    drop(server);

    // A guest given as WebAssembly: the server stops at load, saying why and what to do.
    let wasm = config(&guest("preprocess"));
    let (code, stderr) = serve_until_exit(&bin, &["--config", wasm.to_str().unwrap(), "--grpc-addr", "off"]);
    assert_ne!(code, Some(0), "{stderr}");
    assert!(stderr.contains("runtime-only") && stderr.contains("tessera compile"), "{stderr}");
    // gRPC asked of a build without it.
    let (code, stderr) = serve_until_exit(&bin, &["--config", good.to_str().unwrap(), "--grpc-addr", "127.0.0.1:0"]);
    assert_ne!(code, Some(0), "{stderr}");
    assert!(stderr.contains("no gRPC server") && stderr.contains("grpc_addr"), "{stderr}");
    // Compiling.
    let out =
        Command::new(&bin).arg("compile").arg(guest("preprocess")).arg("-o").arg(dir.join("x.cwasm")).output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && stderr.contains("runtime-only"), "{stderr}");
    let _ = std::fs::remove_dir_all(&dir);
}

/// An x86_64 machine precompiles guests for an aarch64 board, and the reverse (Cranelift's x86-64
/// and arm64 backends are in every build that compiles): the file is native code for that
/// machine, and a build here refuses to load it, naming the architecture, rather than run it.
#[test]
fn guests_precompiled_for_the_other_architecture_are_its_code_and_refused_here() {
    let (other, elf_machine) = if cfg!(target_arch = "x86_64") { ("aarch64", 183u16) } else { ("x86_64", 62) };
    let triple = format!("{other}-unknown-linux-gnu");
    let dir = root().join(format!("target/test-data/cross-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let cwasm = dir.join("preprocess.cwasm");
    let out = Command::new(tessera_bin())
        .current_dir(root())
        .args(["compile", "--no-compile-cache", "--target", &triple])
        .arg(guest("preprocess"))
        .arg("-o")
        .arg(&cwasm)
        .output()
        .unwrap();
    assert!(out.status.success(), "compile --target {triple}: {}", String::from_utf8_lossy(&out.stderr));
    // An ELF file (wasmtime's .cwasm) whose e_machine is the other architecture's.
    let bytes = std::fs::read(&cwasm).unwrap();
    assert_eq!(&bytes[..4], b"\x7fELF");
    assert_eq!(u16::from_le_bytes([bytes[18], bytes[19]]), elf_machine, "e_machine of a .cwasm for {triple}");

    let out = Command::new(tessera_bin()).current_dir(root()).arg("inspect").arg(&cwasm).output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "a .cwasm for {triple} loaded here: {stderr}");
    assert!(stderr.contains("preprocess.cwasm") && stderr.contains(other), "{stderr}");
    let _ = std::fs::remove_dir_all(&dir);
}

/// An aarch64 board whose kernel gives a process 39 bits of address space (512 GiB, as Raspberry
/// Pi OS's does) cannot reserve the default guest pool (about 1 TiB: 256 memories of 4 GiB);
/// simulated here with RLIMIT_AS. The start fails naming the setting; with
/// `guest_memory_reservation_bytes = guest_memory_bytes` the same machine classifies, and guests
/// precompiled for it must be compiled with that config, as a .cwasm of the default is refused.
#[test]
fn a_39_bit_address_space_takes_the_small_guest_pool() {
    let dir = root().join(format!("target/test-data/small-pool-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let case = shapes(CLASSES_SEED, 1).into_iter().next().unwrap();
    let classify = |config: &Path| {
        let out = Command::new("prlimit")
            .arg(format!("--as={}", 512u64 << 30))
            .arg("--")
            .arg(tessera_bin())
            .current_dir(root())
            .args(["classify", "--no-compile-cache", "--no-watch", "--config"])
            .arg(config)
            .arg(&case.path)
            .output()
            .unwrap();
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    // A config with the default guests, `preprocess` instead of the default one if given.
    let write = |name: &str, limits: &str, preprocess: Option<&Path>| {
        let path = dir.join(name);
        let preprocess = preprocess.map_or_else(|| guest("preprocess"), Path::to_path_buf);
        let text = format!(
            "models_dir = {:?}\n{limits}[guests]\npreprocess = {preprocess:?}\npostprocess = {:?}\n\
             [[guests.rules]]\npath = {:?}\n",
            root().join("models"),
            guest("postprocess"),
            guest("rules-threshold")
        );
        std::fs::write(&path, text).unwrap();
        path
    };
    let small_limits = "[limits]\nguest_memory_reservation_bytes = 268435456\n";

    let (ok, _, stderr) = classify(&write("default.toml", "", None));
    assert!(!ok, "the default pool fit in 512 GiB of address space");
    assert!(
        stderr.contains("limits.guest_memory_reservation_bytes") && stderr.contains("GiB of address space"),
        "{stderr}"
    );

    let small = write("small.toml", small_limits, None);
    let (ok, stdout, stderr) = classify(&small);
    assert!(ok, "{stderr}");
    let body: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    assert_eq!(body["label"], case.label.as_str(), "{body}");

    // Precompiled guests carry the reservation they were compiled for.
    let compile = |config: Option<&Path>, out: &Path| {
        let mut command = Command::new(tessera_bin());
        command.current_dir(root()).args(["compile", "--no-compile-cache"]);
        if let Some(config) = config {
            command.arg("--config").arg(config);
        }
        let done = command.arg(guest("preprocess")).arg("-o").arg(out).output().unwrap();
        assert!(done.status.success(), "{}", String::from_utf8_lossy(&done.stderr));
    };
    let for_default = dir.join("default.cwasm");
    compile(None, &for_default);
    let (ok, _, stderr) = classify(&write("default-cwasm.toml", small_limits, Some(&for_default)));
    assert!(!ok && stderr.contains("default.cwasm") && stderr.contains("memory reservation"), "{stderr}");
    let for_small = dir.join("small.cwasm");
    compile(Some(&small), &for_small);
    let (ok, stdout, stderr) = classify(&write("small-cwasm.toml", small_limits, Some(&for_small)));
    assert!(ok, "{stderr}");
    let body: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    assert_eq!(body["label"], case.label.as_str(), "{body}");
    let _ = std::fs::remove_dir_all(&dir);
}
