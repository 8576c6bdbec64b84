//! Per-thread CPU state that native code leaves behind and the next code on the thread pays for.
//!
//! tract's hand-written AVX/AVX-512 matmul kernels (tract-linalg 0.23.9,
//! `x86_64/{avx512,fma}/postamble.j2`) return without `vzeroupper`, so every thread that ran one
//! keeps the upper halves of YMM/ZMM0-15 "dirty". On Intel cores from Skylake on, each legacy
//! (non-VEX) SSE instruction then carries a false dependency on, and a merge with, those upper
//! bits. Cranelift emits legacy SSE encodings for much of wasm's float and SIMD code, and so does
//! rustc for the host's baseline x86-64 target: measured on this project's Xeon (Emerald Rapids),
//! the preprocess guest on a 224 px JPEG took 80–90 ms on a thread with dirty upper state and
//! 2.5–3 ms on a clean one. The thread that loaded the models (tract's constant folding runs the
//! kernels) stayed slow until something ran `vzeroupper` or the thread exited; that was the
//! "slow-thread effect". AVX-512 registers 16–31 do not matter: legacy SSE cannot name them.
//!
//! So the host cleans the state at the two boundaries it owns: before any guest code runs and
//! after tract code returns. `vzeroupper` costs a few cycles; it is executed only where AVX exists.

/// Puts the upper halves of the vector registers back in their clean (zero) state, so that
/// legacy-SSE code run next on this thread is not slowed. A no-op without AVX.
#[inline]
pub fn clean_upper_state() {
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("avx") {
        // SAFETY: AVX is present (checked above); vzeroupper only zeroes bits 128.. of YMM/ZMM0-15,
        // which no Rust code relies on across a call.
        unsafe { vzeroupper() }
    }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx")]
unsafe fn vzeroupper() {
    std::arch::x86_64::_mm256_zeroupper();
}

/// Whether this thread's upper vector state is dirty right now: `Some(true)` when the AVX
/// (YMM bits 128–255) or AVX-512 (ZMM0–15 bits 256–511) state components are in use according
/// to `XGETBV(1)` (XINUSE); `None` where the processor cannot tell (no AVX or no XGETBV(1)).
/// A diagnostic for tests and benchmarks: reading it costs more than cleaning.
pub fn upper_state_dirty() -> Option<bool> {
    #[cfg(target_arch = "x86_64")]
    {
        if !std::arch::is_x86_feature_detected!("avx") || !std::arch::is_x86_feature_detected!("xsave") {
            return None;
        }
        // CPUID.(EAX=0DH, ECX=1):EAX bit 2 = XGETBV with ECX = 1 is supported.
        let leaf = std::arch::x86_64::__cpuid_count(0xD, 1);
        if leaf.eax & (1 << 2) == 0 {
            return None;
        }
        let (lo, _hi): (u32, u32);
        // SAFETY: XGETBV(1) is supported (checked above); it only reads the XINUSE bitmap.
        unsafe {
            std::arch::asm!("xgetbv", in("ecx") 1u32, out("eax") lo, out("edx") _hi, options(nomem, nostack, preserves_flags));
        }
        // Bit 2: YMM_Hi128 (AVX); bit 6: ZMM_Hi256 (AVX-512 upper halves of ZMM0-15).
        Some(lo & ((1 << 2) | (1 << 6)) != 0)
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        None
    }
}

// x86_64 only: elsewhere there is no upper vector state to clean.
#[cfg(all(test, target_arch = "x86_64"))]
mod tests {
    use super::*;

    /// Dirties the upper halves the way tract's kernels leave them.
    fn dirty() {
        // SAFETY: only called where AVX exists; clobbers ymm1, declared.
        unsafe { std::arch::asm!("vpcmpeqd ymm1, ymm1, ymm1", out("ymm1") _) };
    }

    #[test]
    fn cleaning_puts_the_upper_state_back_to_init() {
        if upper_state_dirty().is_none() {
            eprintln!("no AVX / XGETBV(1) here: nothing to clean, nothing to check");
            return;
        }
        dirty();
        assert_eq!(upper_state_dirty(), Some(true), "the probe must see a dirtied YMM register");
        clean_upper_state();
        assert_eq!(upper_state_dirty(), Some(false));
    }
}

thread_local! {
    static COMPUTE: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

/// Marks the calling thread as a compute thread (once per thread): Linux's `SCHED_BATCH`.
///
/// Under overload every CPU is busy with guest and model code; the async threads that accept
/// connections, read requests and answer `/healthz`, `/readyz` and refusals (503) then wait
/// for a time slice behind the compute threads, and a refusal the server made in 0.05 ms
/// reached the client after 12–20 ms (p99, 2× capacity, 2 cores). `SCHED_BATCH` tells the
/// scheduler these threads are CPU-bound: a waking async thread preempts them at once. Unlike
/// a higher nice value it keeps their weight, so they get no less CPU next to other
/// processes. Elsewhere, and when the call fails, this does nothing.
pub fn compute_thread() {
    if COMPUTE.with(|c| c.replace(true)) {
        return;
    }
    #[cfg(target_os = "linux")]
    // SAFETY: sched_setscheduler on this thread's own id with a parameter that lives across
    // the call changes only its scheduling class.
    unsafe {
        let param = libc::sched_param { sched_priority: 0 };
        libc::sched_setscheduler(libc::gettid(), libc::SCHED_BATCH, &param);
    }
}
