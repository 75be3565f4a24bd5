//! Assertions on what the command lines print: a refusal is one line, a
//! usage error exits 64, and neither shows panics, Debug output or a cause
//! said twice. Used by the CLI error tests.

use crate::Out;

/// Exit status of a malformed command line (both binaries).
pub const EXIT_USAGE: i32 = 64;

/// A refusal as the CLI must print it: exit 1, one line on stderr starting
/// with `PROG: error: `, holding every needle, and no noise.
pub fn refused(out: &Out, prog: &str, needles: &[&str]) {
    assert_eq!(out.code, Some(1), "{out:#?}");
    let lines: Vec<&str> = out.stderr.lines().collect();
    assert_eq!(lines.len(), 1, "one line of error expected: {out:#?}");
    assert!(
        lines[0].starts_with(&format!("{prog}: error: ")),
        "{out:#?}"
    );
    for n in needles {
        assert!(lines[0].contains(n), "stderr lacks {n:?}: {out:#?}");
    }
    clean(out);
}

/// No panic, no Debug-formatted error, no cause repeated.
pub fn clean(out: &Out) {
    for bad in [
        "panicked",
        "Caused by",
        "RUST_BACKTRACE",
        "Error {",
        "Os {",
        "kind: ",
    ] {
        assert!(!out.stderr.contains(bad), "{bad:?} in {out:#?}");
    }
    for part in out.stderr.split(": ").filter(|p| p.len() > 12) {
        assert!(
            out.stderr.matches(part).count() == 1,
            "{part:?} said twice: {out:#?}"
        );
    }
}

/// A usage error: exit 64, clap's message naming the option.
pub fn usage(out: &Out, needle: &str) {
    assert_eq!(out.code, Some(EXIT_USAGE), "{out:#?}");
    assert!(out.stderr.contains(needle), "{needle:?}: {out:#?}");
    assert!(out.stdout.is_empty(), "{out:#?}");
    clean(out);
}
