//! Text that comes from a plugin, made safe for a log, a terminal or an
//! error: what it prints on stdout and stderr, captured per call, and
//! [`sanitize`] for every string it hands over.

use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll};

use wasmtime_wasi::cli::{IsTerminal, StdoutStream};
use wasmtime_wasi::p2::{OutputStream, Pollable, StreamResult};

/// Bytes of stdout and stderr kept per call; the rest is counted and dropped.
const MAX_CAPTURED_BYTES: usize = 16 * 1024;

/// `text` with control characters escaped (a newline becomes `\n`, an
/// escape `\u{1b}`), so that it cannot forge log lines or drive a terminal,
/// and cut to at most `max` bytes with its full length noted.
pub fn sanitize(text: &str, max: usize) -> String {
    let mut out = String::with_capacity(text.len().min(max) + 32);
    for c in text.chars() {
        if out.len() >= max {
            out.push_str(&format!("… ({} bytes in all)", text.len()));
            return out;
        }
        // Controls, and the invisible marks that reorder or hide text on a
        // terminal (bidi overrides, zero-width characters).
        if c.is_control() || matches!(c, '\u{200B}'..='\u{200F}' | '\u{2028}'..='\u{202E}' | '\u{2066}'..='\u{2069}' | '\u{FEFF}') {
            out.extend(c.escape_default());
        } else {
            out.push(c);
        }
    }
    out
}

/// stdout and stderr of one instance, gathered between calls.
#[derive(Clone, Default)]
pub(crate) struct CapturedOutput {
    inner: Arc<Mutex<Captured>>,
    /// Whether anything was written since the last `take_lines`: checked on
    /// every call, so it avoids the lock.
    written: Arc<AtomicBool>,
}

#[derive(Default)]
struct Captured {
    /// (stream, bytes) in the order written.
    chunks: Vec<(&'static str, Vec<u8>)>,
    bytes: usize,
    dropped: usize,
}

impl CapturedOutput {
    /// A WASI output stream that writes here, labelled `name`.
    pub(crate) fn stream(&self, name: &'static str) -> CaptureStream {
        CaptureStream { name, output: self.clone() }
    }

    fn lock(&self) -> MutexGuard<'_, Captured> {
        self.inner.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Nothing was written since the last `take_lines`.
    pub(crate) fn is_empty(&self) -> bool {
        !self.written.load(Ordering::Relaxed)
    }

    fn write(&self, name: &'static str, bytes: &[u8]) {
        self.written.store(true, Ordering::Relaxed);
        let mut captured = self.lock();
        let room = MAX_CAPTURED_BYTES.saturating_sub(captured.bytes);
        let kept = bytes.len().min(room);
        captured.dropped += bytes.len() - kept;
        if kept == 0 {
            return;
        }
        captured.bytes += kept;
        match captured.chunks.last_mut() {
            Some((last, chunk)) if *last == name => chunk.extend_from_slice(&bytes[..kept]),
            _ => captured.chunks.push((name, bytes[..kept].to_vec())),
        }
    }

    /// What was written since the last call, as (stream, line) pairs, and
    /// resets the budget.
    pub(crate) fn take_lines(&self) -> Vec<(&'static str, String)> {
        self.written.store(false, Ordering::Relaxed);
        let captured = std::mem::take(&mut *self.lock());
        let mut lines: Vec<(&'static str, String)> = captured
            .chunks
            .iter()
            .flat_map(|(name, bytes)| {
                String::from_utf8_lossy(bytes).lines().filter(|l| !l.trim().is_empty()).map(|l| (*name, l.to_owned())).collect::<Vec<_>>()
            })
            .collect();
        if captured.dropped > 0 {
            lines.push(("output", format!("{} more bytes dropped (at most {MAX_CAPTURED_BYTES} are kept per call)", captured.dropped)));
        }
        lines
    }
}

/// One of the instance's output streams.
pub(crate) struct CaptureStream {
    name: &'static str,
    output: CapturedOutput,
}

impl IsTerminal for CaptureStream {
    fn is_terminal(&self) -> bool {
        false
    }
}

impl StdoutStream for CaptureStream {
    fn p2_stream(&self) -> Box<dyn OutputStream> {
        Box::new(CaptureStream { name: self.name, output: self.output.clone() })
    }

    fn async_stream(&self) -> Box<dyn tokio::io::AsyncWrite + Send + Sync> {
        Box::new(CaptureStream { name: self.name, output: self.output.clone() })
    }
}

// Writes never block and never fail: a plugin that prints too much loses
// the excess, not its call.
impl OutputStream for CaptureStream {
    fn write(&mut self, bytes: bytes::Bytes) -> StreamResult<()> {
        self.output.write(self.name, &bytes);
        Ok(())
    }

    fn flush(&mut self) -> StreamResult<()> {
        Ok(())
    }

    fn check_write(&mut self) -> StreamResult<usize> {
        Ok(64 * 1024)
    }
}

#[wasmtime_wasi::async_trait]
impl Pollable for CaptureStream {
    async fn ready(&mut self) {}
}

impl tokio::io::AsyncWrite for CaptureStream {
    fn poll_write(self: Pin<&mut Self>, _cx: &mut Context<'_>, buf: &[u8]) -> Poll<std::io::Result<usize>> {
        self.output.write(self.name, buf);
        Poll::Ready(Ok(buf.len()))
    }

    fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn control_characters_are_escaped_and_long_text_is_cut() {
        assert_eq!(sanitize("a\nb\u{1b}[31mc", 100), "a\\nb\\u{1b}[31mc");
        let long = "x".repeat(50_000);
        let cut = sanitize(&long, 100);
        assert!(cut.starts_with(&"x".repeat(100)) && cut.ends_with("… (50000 bytes in all)"), "{cut}");
        assert_eq!(sanitize("é".repeat(3).as_str(), 100), "ééé");
        // Adversarial run: names with these reached `plan`'s table raw.
        assert_eq!(sanitize("db\u{202E}x\u{2028}y\u{9b}", 100), "db\\u{202e}x\\u{2028}y\\u{9b}");
    }

    #[test]
    fn output_is_bounded_per_call_and_split_into_lines() {
        let output = CapturedOutput::default();
        output.write("stdout", b"one\ntwo");
        output.write("stderr", b"three\n");
        assert_eq!(output.take_lines(), [("stdout", "one".to_owned()), ("stdout", "two".to_owned()), ("stderr", "three".to_owned())]);
        output.write("stdout", &vec![b'y'; MAX_CAPTURED_BYTES + 10]);
        let lines = output.take_lines();
        assert_eq!(lines.last().map(|(_, l)| l.as_str()), Some("10 more bytes dropped (at most 16384 are kept per call)"));
        assert!(output.take_lines().is_empty(), "the budget resets");
    }
}
