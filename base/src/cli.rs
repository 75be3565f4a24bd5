//! What both binaries print for an error.

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
