//! Hot reload: a file watcher on the model repository and the guest component files that
//! reloads the host (models and guests) once the files have been quiet for a moment.
//!
//! `notify` reports every write of a file being copied; reloading on each would load
//! half-written models. Events are debounced: a reload runs `QUIET_MS` after the last one.
//! A half-written file that still slips through fails to load, is reported, and is retried on
//! the next event; the old version keeps serving meanwhile.

use std::path::PathBuf;
use std::time::Duration;

use notify::RecursiveMode;

use crate::config::Config;

/// Quiet time after the last file event before reloading.
pub const QUIET_MS: u64 = 300;

/// Keeps the watcher alive; dropping it stops watching.
pub struct WatchGuard {
    _watcher: Box<dyn notify::Watcher + Send + Sync>,
}

/// Why watching could not start.
#[derive(Debug, thiserror::Error)]
#[error("cannot watch {path} for changes: {source}")]
pub struct WatchError {
    pub path: PathBuf,
    pub source: notify::Error,
}

/// Watches `config`'s model directory (recursively) and the directories of its guest files, and
/// calls `reload` once they have been quiet for `QUIET_MS` after a change. `reload` returns false
/// when there is nothing left to reload (the host is gone), which ends the watching thread. A
/// callback rather than the `Host`: the host starts the watcher, so the watcher knows no host.
pub fn watch(config: &Config, reload: impl Fn() -> bool + Send + 'static) -> Result<WatchGuard, WatchError> {
    let (tx, rx) = crossbeam_channel::unbounded::<()>();
    let handler = move |event: notify::Result<notify::Event>| {
        if event.is_ok_and(|e| !e.kind.is_access()) {
            let _ = tx.send(());
        }
    };
    // inotify sees only what this kernel writes: on a network filesystem (NFS, a Kubernetes
    // ReadWriteMany volume) a file copied in from another node raises no event, so there the
    // directories are scanned every `watch_poll_ms` instead (notify's PollWatcher compares
    // modification times).
    let watcher: notify::Result<Box<dyn notify::Watcher + Send + Sync>> = match config.watch_poll_ms {
        0 => notify::recommended_watcher(handler).map(|w| Box::new(w) as _),
        ms => {
            let every = notify::Config::default().with_poll_interval(Duration::from_millis(ms));
            notify::PollWatcher::new(handler, every).map(|w| Box::new(w) as _)
        }
    };
    let mut watcher = watcher.map_err(|source| WatchError { path: PathBuf::new(), source })?;
    let mut dirs = vec![(config.models_dir.clone(), RecursiveMode::Recursive)];
    for path in config.guest_paths() {
        let dir = path.parent().map(|p| if p.as_os_str().is_empty() { PathBuf::from(".") } else { p.to_path_buf() });
        if let Some(dir) = dir
            && !dirs.iter().any(|(d, _)| *d == dir)
        {
            dirs.push((dir, RecursiveMode::NonRecursive));
        }
    }
    for (dir, mode) in &dirs {
        watcher.watch(dir, *mode).map_err(|source| WatchError { path: dir.clone(), source })?;
    }
    std::thread::Builder::new()
        .name("tessera-watch".into())
        .spawn(move || debounce_loop(rx, reload))
        .expect("spawning the watch thread");
    tracing::info!(
        dirs = ?dirs.iter().map(|(d, _)| d.display().to_string()).collect::<Vec<_>>(),
        poll_ms = config.watch_poll_ms,
        "watching for model and guest changes"
    );
    Ok(WatchGuard { _watcher: watcher })
}

fn debounce_loop(events: crossbeam_channel::Receiver<()>, reload: impl Fn() -> bool) {
    let quiet = Duration::from_millis(QUIET_MS);
    // Ends when the watcher (the sender) is dropped.
    while events.recv().is_ok() {
        while events.recv_timeout(quiet).is_ok() {}
        // A panic while reloading (versions' loads are already caught one by one) must not end
        // the watching: the next change is reloaded again.
        match std::panic::catch_unwind(std::panic::AssertUnwindSafe(&reload)) {
            Ok(true) => {}
            Ok(false) => return,
            Err(panic) => tracing::error!(
                panic = crate::error::panic_message(&*panic),
                "reload panicked; the previous models and guests keep serving"
            ),
        }
    }
}
