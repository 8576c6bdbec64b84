//! A guest's stdout and stderr, when granted, into the host's log, with two budgets so that a
//! guest costs the host a counter, not memory or log volume: per call ([`CALL_BUDGET_BYTES`];
//! lines cut at [`MAX_LINE_BYTES`]) and per second across all of one guest's calls
//! (`limits.guest_log_bytes_per_second`, a token bucket), so that a guest printing its whole
//! call budget on every request cannot fill the log at a thousand requests a second. What
//! either budget drops is counted (`tessera_guest_output_dropped_bytes_total`, by guest, stream
//! and budget) and said in one warning a minute per guest.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use wasmtime_wasi::cli::{IsTerminal, StdoutStream};
use wasmtime_wasi::p2::{OutputStream, Pollable, StreamError};

use crate::metrics::GuestOutputDropped;

/// Most of a guest's output one call may put in the log.
pub(super) const CALL_BUDGET_BYTES: usize = 16 << 10;
/// Longest line logged; longer ones are cut.
const MAX_LINE_BYTES: usize = 1 << 10;
/// At most one warning about dropped output per guest in this long.
const WARNING_EVERY: Duration = Duration::from_secs(60);

/// Which budget dropped output.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Budget {
    /// [`CALL_BUDGET_BYTES`] a call, or [`MAX_LINE_BYTES`] a line.
    Call,
    /// `limits.guest_log_bytes_per_second`, all of the guest's calls together.
    Rate,
}

impl Budget {
    fn as_str(self) -> &'static str {
        match self {
            Budget::Call => "call",
            Budget::Rate => "rate",
        }
    }
}

/// One guest's log budget per second and its warnings, shared by all its calls.
pub(super) struct GuestLog {
    guest: String,
    bytes_per_second: usize,
    counter: Option<GuestOutputDropped>,
    state: Mutex<RateState>,
}

struct RateState {
    /// Bytes the guest may still log now, up to one second's worth.
    tokens: usize,
    refilled: Instant,
    /// Dropped since the last warning, by budget.
    unwarned: [usize; 2],
    warned: Option<Instant>,
}

impl GuestLog {
    pub(super) fn new(guest: &str, bytes_per_second: usize, counter: Option<GuestOutputDropped>) -> Self {
        GuestLog {
            guest: guest.to_string(),
            bytes_per_second,
            counter,
            state: Mutex::new(RateState {
                tokens: bytes_per_second,
                refilled: Instant::now(),
                unwarned: [0; 2],
                warned: None,
            }),
        }
    }

    /// Takes `bytes` from this second's budget if that many are left.
    fn take(&self, bytes: usize) -> bool {
        let mut s = self.state.lock().unwrap_or_else(|e| e.into_inner());
        let now = Instant::now();
        let earned = (now - s.refilled).as_secs_f64() * self.bytes_per_second as f64;
        if earned >= 1.0 {
            s.tokens = (s.tokens + earned as usize).min(self.bytes_per_second);
            s.refilled = now;
        }
        match s.tokens.checked_sub(bytes) {
            Some(left) => {
                s.tokens = left;
                true
            }
            None => false,
        }
    }

    /// Counts what one call's `stream` dropped under `budget`, and warns if a minute has passed
    /// since this guest's last warning.
    fn dropped(&self, stream: &'static str, budget: Budget, bytes: usize) {
        if bytes == 0 {
            return;
        }
        if let Some(counter) = &self.counter {
            counter.add(&self.guest, stream, budget.as_str(), bytes as u64);
        }
        let mut s = self.state.lock().unwrap_or_else(|e| e.into_inner());
        s.unwarned[budget as usize] += bytes;
        let now = Instant::now();
        if s.warned.is_some_and(|at| now - at < WARNING_EVERY) {
            return;
        }
        let [call, rate] = std::mem::take(&mut s.unwarned);
        s.warned = Some(now);
        tracing::warn!(
            guest = %self.guest,
            dropped_over_call_budget_bytes = call,
            dropped_over_rate_bytes = rate,
            call_budget_bytes = CALL_BUDGET_BYTES,
            bytes_per_second = self.bytes_per_second,
            "guest output over its budget was dropped (at most one such warning a minute per guest; \
             tessera_guest_output_dropped_bytes_total counts every byte)"
        );
    }
}

/// One call's stdout or stderr: complete lines go to the host's log (in the guest call's span,
/// so with the guest's name and the request id) within both budgets; the rest is counted when
/// the call ends. Writes never block or fail: wasmtime's `MemoryOutputPipe` traps the guest when
/// full, which would turn a chatty guest into a failed request.
#[derive(Clone)]
pub(super) struct GuestOutput(Arc<Mutex<OutputLog>>);

struct OutputLog {
    log: Arc<GuestLog>,
    stream: &'static str,
    line: Vec<u8>,
    logged: usize,
    /// Dropped in this call, by budget.
    dropped: [usize; 2],
}

impl GuestOutput {
    pub(super) fn new(log: Arc<GuestLog>, stream: &'static str) -> Self {
        GuestOutput(Arc::new(Mutex::new(OutputLog { log, stream, line: Vec::new(), logged: 0, dropped: [0; 2] })))
    }

    fn write(&self, bytes: &[u8]) {
        self.0.lock().unwrap_or_else(|e| e.into_inner()).take(bytes);
    }

    /// Logs the unfinished line and counts what was dropped, once per call.
    pub(super) fn finish(&self) {
        self.0.lock().unwrap_or_else(|e| e.into_inner()).finish();
    }
}

impl OutputLog {
    fn take(&mut self, mut bytes: &[u8]) {
        while !bytes.is_empty() {
            if self.logged >= CALL_BUDGET_BYTES {
                self.dropped[Budget::Call as usize] += bytes.len();
                return;
            }
            let end = bytes.iter().position(|&b| b == b'\n');
            let (part, rest) = match end {
                Some(i) => (&bytes[..i], &bytes[i + 1..]),
                None => (bytes, &[][..]),
            };
            let room = MAX_LINE_BYTES.saturating_sub(self.line.len());
            self.line.extend_from_slice(&part[..part.len().min(room)]);
            self.dropped[Budget::Call as usize] += part.len().saturating_sub(room);
            if end.is_some() {
                self.emit();
            }
            bytes = rest;
        }
    }

    /// Logs the line held, if the guest's budget per second has room for it.
    fn emit(&mut self) {
        let bytes = self.line.len() + 1;
        if self.log.take(bytes) {
            let text = String::from_utf8_lossy(&self.line);
            tracing::info!(target: "tessera::guest_output", guest = %self.log.guest, stream = self.stream, "{text}");
        } else {
            self.dropped[Budget::Rate as usize] += bytes;
        }
        // Whether logged or not, it counts towards the call's budget: a call's output past it
        // is dropped without looking at each line.
        self.logged += bytes;
        self.line.clear();
    }

    fn finish(&mut self) {
        if !self.line.is_empty() && self.logged < CALL_BUDGET_BYTES {
            self.emit();
        }
        self.line.clear();
        let [call, rate] = std::mem::take(&mut self.dropped);
        self.log.dropped(self.stream, Budget::Call, call);
        self.log.dropped(self.stream, Budget::Rate, rate);
    }
}

impl Drop for OutputLog {
    fn drop(&mut self) {
        self.finish();
    }
}

impl IsTerminal for GuestOutput {
    fn is_terminal(&self) -> bool {
        false
    }
}

impl StdoutStream for GuestOutput {
    fn p2_stream(&self) -> Box<dyn OutputStream> {
        Box::new(self.clone())
    }

    fn async_stream(&self) -> Box<dyn tokio::io::AsyncWrite + Send + Sync> {
        Box::new(self.clone())
    }
}

#[async_trait::async_trait]
impl OutputStream for GuestOutput {
    fn write(&mut self, bytes: Bytes) -> Result<(), StreamError> {
        GuestOutput::write(self, &bytes);
        Ok(())
    }

    fn flush(&mut self) -> Result<(), StreamError> {
        Ok(())
    }

    fn check_write(&mut self) -> Result<usize, StreamError> {
        Ok(64 << 10)
    }
}

#[async_trait::async_trait]
impl Pollable for GuestOutput {
    async fn ready(&mut self) {}
}

impl tokio::io::AsyncWrite for GuestOutput {
    fn poll_write(
        self: std::pin::Pin<&mut Self>,
        _cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        GuestOutput::write(&self, buf);
        std::task::Poll::Ready(Ok(buf.len()))
    }

    fn poll_flush(
        self: std::pin::Pin<&mut Self>,
        _cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::task::Poll::Ready(Ok(()))
    }

    fn poll_shutdown(
        self: std::pin::Pin<&mut Self>,
        _cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::task::Poll::Ready(Ok(()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dropped(out: &GuestOutput) -> [usize; 2] {
        out.0.lock().unwrap().dropped
    }

    #[test]
    fn output_is_cut_into_lines_and_capped_per_call() {
        let out = GuestOutput::new(Arc::new(GuestLog::new("g", 1 << 20, None)), "stdout");
        out.write(b"one\ntw");
        out.write(b"o\n");
        {
            let log = out.0.lock().unwrap();
            assert_eq!((log.logged, log.dropped, log.line.len()), (8, [0, 0], 0));
        }
        out.write(&vec![b'x'; 3 * MAX_LINE_BYTES]);
        out.write(b"\n");
        assert_eq!(dropped(&out), [2 * MAX_LINE_BYTES, 0], "a long line is cut");
        let flood = vec![b'y'; 10 * CALL_BUDGET_BYTES];
        out.write(&flood);
        let log = out.0.lock().unwrap();
        assert!(log.logged <= CALL_BUDGET_BYTES + MAX_LINE_BYTES + 1, "{}", log.logged);
        assert!(log.dropped[0] >= 9 * CALL_BUDGET_BYTES, "{:?}", log.dropped);
    }

    /// Calls that each stay within their own budget still share the guest's budget per second:
    /// ten calls of 16 KiB each (made in far less than the 4 s that 32 KiB/s would need) cannot
    /// all be logged.
    #[test]
    fn a_guest_s_calls_share_its_budget_per_second() {
        let log = Arc::new(GuestLog::new("g", 2 * CALL_BUDGET_BYTES, None));
        let line = [b'z'; 1023];
        let call = || {
            let out = GuestOutput::new(log.clone(), "stdout");
            for _ in 0..CALL_BUDGET_BYTES / 1024 {
                out.write(&line);
                out.write(b"\n");
            }
            dropped(&out)
        };
        assert_eq!(call(), [0, 0], "the first call finds the whole second's budget");
        let later: Vec<[usize; 2]> = (0..9).map(|_| call()).collect();
        assert!(later.iter().all(|[call_budget, _]| *call_budget == 0), "each within its own budget: {later:?}");
        let rate: usize = later.iter().map(|[_, rate]| rate).sum();
        assert!(rate >= 4 * CALL_BUDGET_BYTES, "the guest's second was spent: only {rate} bytes dropped");
    }
}
