//! What a waiting bootstrap shows: on a terminal, one live spinner line
//! saying what it waits for and for how long (indicatif, on stderr); when
//! stderr is not a terminal (a log, a pipe, systemd), plain lines, one per
//! poll, and never an escape code.

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use std::io::IsTerminal;
use std::time::{Duration, Instant};

/// A wait in progress.
pub struct Waiting {
    bar: Option<ProgressBar>,
    what: String,
    started: Instant,
}

impl Waiting {
    /// Starts waiting for `what` (e.g. "waiting for an operator to sign
    /// web1"). The spinner is drawn only when stderr is a terminal.
    pub fn start(what: impl Into<String>) -> Waiting {
        Waiting::start_on(what, std::io::stderr().is_terminal())
    }

    fn start_on(what: impl Into<String>, terminal: bool) -> Waiting {
        let what = what.into();
        let bar = terminal.then(|| {
            let b = ProgressBar::with_draw_target(None, ProgressDrawTarget::stderr());
            if let Ok(style) = ProgressStyle::with_template("{spinner} {msg} ({elapsed})") {
                b.set_style(style);
            }
            b.set_message(what.clone());
            b.enable_steady_tick(Duration::from_millis(120));
            b
        });
        Waiting {
            bar,
            what,
            started: Instant::now(),
        }
    }

    /// After a poll that changed nothing: the spinner keeps turning by
    /// itself; without a terminal, one plain line.
    pub fn still(&self) {
        if self.bar.is_none() {
            eprintln!("{}", self.plain_line());
        }
    }

    fn plain_line(&self) -> String {
        format!(
            "still {} ({} so far)",
            self.what,
            humantime::format_duration(Duration::from_secs(self.started.elapsed().as_secs()))
        )
    }

    /// Runs `f` (which logs or prints) with the spinner line hidden.
    pub fn suspend<R>(&self, f: impl FnOnce() -> R) -> R {
        match &self.bar {
            Some(b) => b.suspend(f),
            None => f(),
        }
    }
}

impl Drop for Waiting {
    fn drop(&mut self) {
        if let Some(b) = &self.bar {
            b.finish_and_clear();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_lines_say_what_and_how_long_without_escape_codes() {
        let w = Waiting::start_on("waiting for an operator to sign web1", false);
        assert!(w.bar.is_none());
        let l = w.plain_line();
        assert_eq!(l, "still waiting for an operator to sign web1 (0s so far)");
        assert!(!l.contains('\x1b'));
    }
}
