//! What both binaries print for an error, and how they end when the
//! reader of their output goes away.

/// Makes the process exit quietly with status 141 (128 + SIGPIPE, what a
/// shell reports for `cmd | head` when `cmd` is killed by SIGPIPE) when
/// writing to stdout fails because its reader has gone: `troupe nodes |
/// head`, `troupe-agent rollback --list | head -3`. Rust ignores SIGPIPE,
/// so `print!` would panic with a backtrace hint instead.
///
/// Done with a panic hook rather than by restoring SIGPIPE's default
/// action: that action would also kill the process on a write to a child's
/// closed stdin (exec hooks, providers) or to a closed Unix socket (the
/// admin socket), where the error must be reported, not die silently. Any
/// other panic goes to the hook installed before.
pub fn exit_quietly_when_stdout_closes() {
    let previous = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        let payload = info.payload();
        let text = payload
            .downcast_ref::<String>()
            .map(String::as_str)
            .or_else(|| payload.downcast_ref::<&str>().copied())
            .unwrap_or("");
        if is_closed_stdout(text) {
            std::process::exit(141);
        }
        previous(info);
    }));
}

/// Whether a panic message is std's "failed printing to stdout" for EPIPE.
fn is_closed_stdout(text: &str) -> bool {
    text.starts_with("failed printing to stdout") && text.ends_with(&format!("(os error {EPIPE})"))
}

/// EPIPE's number on Linux (asm-generic/errno-base.h).
const EPIPE: i32 = 32;

/// An error and its causes on one line, each said once, for both
/// binaries' error output: a cause whose text the line already holds (an
/// `io::Error` both wrapped and shown) is left out, and so are leading
/// `HEAD: ` parts of a cause that the line already says.
pub fn one_line(e: &anyhow::Error) -> String {
    let mut line = String::new();
    for cause in e.chain() {
        let mut text = cause.to_string();
        while let Some((head, rest)) = text.split_once(": ") {
            if !line.contains(head.trim()) {
                break;
            }
            text = rest.to_string();
        }
        let text = text.trim();
        if text.is_empty() || line.contains(text) {
            continue;
        }
        if !line.is_empty() {
            line.push_str(": ");
        }
        line.push_str(text);
    }
    line
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_a_closed_stdout_is_a_quiet_exit() {
        assert!(is_closed_stdout(
            "failed printing to stdout: Broken pipe (os error 32)"
        ));
        assert!(!is_closed_stdout(
            "failed printing to stdout: No space left on device (os error 28)"
        ));
        assert!(!is_closed_stdout(
            "failed printing to stderr: Broken pipe (os error 32)"
        ));
        assert!(!is_closed_stdout("index out of bounds"));
    }

    #[test]
    fn one_line_says_each_cause_once() {
        let io = std::io::Error::new(std::io::ErrorKind::NotFound, "No such file or directory");
        let e = anyhow::Error::new(io).context("cannot read /k: No such file or directory");
        assert_eq!(one_line(&e), "cannot read /k: No such file or directory");
        let e = anyhow::anyhow!("cannot reach the master at X: connection refused")
            .context("cannot reach the master at X for the catalog");
        assert_eq!(
            one_line(&e),
            "cannot reach the master at X for the catalog: connection refused"
        );
        let e = anyhow::anyhow!("disk full").context("could not store the report");
        assert_eq!(one_line(&e), "could not store the report: disk full");
    }
}
