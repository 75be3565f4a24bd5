//! Live progress for long work on a terminal (indicatif): the fan-out's
//! "answered N/M", the deploy's batch and step. Drawn on stderr, and only
//! when stderr is a terminal and the output is not JSON; otherwise this
//! does nothing and the plain lines on stdout are all there is (no escape
//! codes in pipes or logs).

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use std::io::IsTerminal;
use std::time::Duration;

/// A progress bar or spinner, or nothing.
#[derive(Clone, Default)]
pub struct Progress(Option<ProgressBar>);

impl Progress {
    /// Shown only when `wanted` and stderr is a terminal.
    pub fn new(wanted: bool) -> Progress {
        if !wanted || !std::io::stderr().is_terminal() {
            return Progress(None);
        }
        let bar = ProgressBar::with_draw_target(None, ProgressDrawTarget::stderr());
        bar.enable_steady_tick(Duration::from_millis(120));
        Progress(Some(bar))
    }

    /// Counting answers: `WHAT answered N/M` with a bar (an empty `what`
    /// keeps the one set before).
    pub fn count(&self, total: u64, what: &str) {
        if let Some(b) = &self.0 {
            b.set_length(total);
            b.set_position(0);
            if let Ok(style) = ProgressStyle::with_template(
                "{spinner} {msg} answered {pos}/{len} [{bar:30}] {elapsed}",
            ) {
                b.set_style(style.progress_chars("=> "));
            }
            if !what.is_empty() {
                b.set_message(what.to_string());
            }
        }
    }

    pub fn inc(&self) {
        if let Some(b) = &self.0 {
            b.inc(1);
        }
    }

    /// A spinner saying what runs now (a deploy's batch and step).
    pub fn status(&self, msg: String) {
        if let Some(b) = &self.0 {
            if let Ok(style) = ProgressStyle::with_template("{spinner} {msg} {elapsed}") {
                b.set_style(style);
            }
            b.set_message(msg);
        }
    }

    /// Runs `f` (which prints to stdout) with the bar hidden, so lines and
    /// bar do not garble each other.
    pub fn suspend<R>(&self, f: impl FnOnce() -> R) -> R {
        match &self.0 {
            Some(b) => b.suspend(f),
            None => f(),
        }
    }

    pub fn finish(&self) {
        if let Some(b) = &self.0 {
            b.finish_and_clear();
        }
    }

    pub fn is_drawn(&self) -> bool {
        self.0.is_some()
    }
}

/// Stdout that hides the progress line while it writes.
pub struct Out {
    progress: Progress,
    inner: std::io::Stdout,
}

impl Out {
    pub fn new(progress: &Progress) -> Out {
        Out {
            progress: progress.clone(),
            inner: std::io::stdout(),
        }
    }
}

impl std::io::Write for Out {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let inner = &mut self.inner;
        self.progress.suspend(|| inner.write(buf))
    }
    fn flush(&mut self) -> std::io::Result<()> {
        self.inner.flush()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Not a terminal (a test's stderr): nothing is drawn.
    #[test]
    fn nothing_is_drawn_without_a_terminal() {
        if std::io::stderr().is_terminal() {
            return;
        }
        let p = Progress::new(true);
        assert!(!p.is_drawn());
        p.count(3, "ping");
        p.inc();
        assert_eq!(p.suspend(|| 7), 7);
        p.finish();
        assert!(!Progress::new(false).is_drawn());
    }
}
