//! Trust checks for native code: the compile cache directory must be ours alone, and a
//! precompiled component loads only from a path no one else could have written.

use std::path::Path;

use wasmtime::Engine;

/// Makes sure the compile cache at `dir` is ours alone: native code loaded from it runs as
/// trusted code, so a directory another user could write to would let them run code in this
/// process. Created with mode 0700 when missing; an existing one must be a directory owned by
/// this user, and is narrowed to 0700.
#[cfg(all(unix, feature = "compiler"))]
pub(super) fn private_cache_dir(dir: &Path) -> Result<(), String> {
    use std::os::unix::fs::{DirBuilderExt, MetadataExt, PermissionsExt};
    if !dir.exists() {
        std::fs::DirBuilder::new().recursive(true).mode(0o700).create(dir).map_err(|e| e.to_string())?;
    }
    let meta = std::fs::symlink_metadata(dir).map_err(|e| e.to_string())?;
    if !meta.is_dir() {
        return Err("is not a directory (a symlink is refused too)".into());
    }
    // SAFETY: geteuid has no preconditions and cannot fail.
    let me = unsafe { libc::geteuid() };
    if meta.uid() != me {
        return Err(format!(
            "is owned by user {}, not by this process's user {me}: code compiled there would run here",
            meta.uid()
        ));
    }
    if meta.mode() & 0o077 != 0 {
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700)).map_err(|e| e.to_string())?;
        tracing::info!(dir = %dir.display(), "compile cache narrowed to mode 0700");
    }
    Ok(())
}

#[cfg(all(not(unix), feature = "compiler"))]
pub(super) fn private_cache_dir(_dir: &Path) -> Result<(), String> {
    Ok(())
}

/// A precompiled component (`tessera compile`'s output, an ELF file wasmtime recognises) rather
/// than a WebAssembly one, whatever the file is called.
pub fn is_precompiled(path: &Path) -> bool {
    matches!(Engine::detect_precompiled_file(path), Ok(Some(wasmtime::Precompiled::Component)))
}

/// A precompiled component is native code the host runs as its own, so it loads only from a
/// trusted path: the file and every directory above it owned by this process's user or root,
/// and none of them writable by group or others (a sticky directory such as /tmp excepted only
/// for files this user owns), as ssh treats its keys.
#[cfg(unix)]
pub(super) fn trusted(path: &Path) -> Result<(), String> {
    use std::os::unix::fs::MetadataExt;
    let path = std::fs::canonicalize(path).map_err(|e| e.to_string())?;
    // SAFETY: geteuid has no preconditions and cannot fail.
    let me = unsafe { libc::geteuid() };
    let file = std::fs::metadata(&path).map_err(|e| e.to_string())?;
    if !file.is_file() {
        return Err(format!("{} is not a file", path.display()));
    }
    let check = |p: &Path, meta: &std::fs::Metadata, sticky_ok: bool| {
        if meta.uid() != me && meta.uid() != 0 {
            return Err(format!(
                "{} is owned by user {}, not by this process's user {me} or root",
                p.display(),
                meta.uid()
            ));
        }
        let sticky = meta.mode() & 0o1000 != 0;
        if meta.mode() & 0o022 != 0 && !(sticky && sticky_ok) {
            return Err(format!("{} can be written by other users (mode {:o})", p.display(), meta.mode() & 0o7777));
        }
        Ok(())
    };
    check(&path, &file, false)?;
    for dir in path.ancestors().skip(1) {
        let meta = std::fs::metadata(dir).map_err(|e| e.to_string())?;
        check(dir, &meta, file.uid() == me)?;
    }
    Ok(())
}

#[cfg(not(unix))]
pub(super) fn trusted(_path: &Path) -> Result<(), String> {
    Ok(())
}
