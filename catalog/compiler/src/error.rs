//! Errors that name the file, line and column, say what was expected, and
//! render as miette diagnostics (with the offending source line) in the CLI.

use std::fmt;
use std::sync::Arc;

/// One file of the module tree, kept in memory so errors can quote it.
#[derive(Debug)]
pub struct SourceFile {
    /// Path relative to the module tree root, `/`-separated.
    pub path: String,
    pub text: Arc<str>,
    line_starts: Vec<usize>,
    /// `path` once more, shared by the `source` of every catalog resource
    /// declared in this file.
    name: Arc<str>,
}

impl SourceFile {
    pub fn new(path: String, text: Arc<str>) -> SourceFile {
        let mut line_starts = vec![0];
        line_starts.extend(text.match_indices('\n').map(|(i, _)| i + 1));
        SourceFile {
            name: Arc::from(path.as_str()),
            path,
            text,
            line_starts,
        }
    }

    /// 1-based line and column (in characters) of a byte offset.
    pub fn line_col(&self, offset: usize) -> (usize, usize) {
        let offset = offset.min(self.text.len());
        let line = match self.line_starts.binary_search(&offset) {
            Ok(i) => i,
            Err(i) => i.saturating_sub(1),
        };
        let start = self.line_starts[line];
        let col = self
            .text
            .get(start..offset)
            .map(|s| s.chars().count())
            .unwrap_or(0);
        (line + 1, col + 1)
    }
}

/// A byte range in one source file.
#[derive(Debug, Clone)]
pub struct Span {
    pub file: Arc<SourceFile>,
    pub start: usize,
    pub end: usize,
}

impl Span {
    pub fn new(file: &Arc<SourceFile>, range: std::ops::Range<usize>) -> Span {
        Span {
            file: file.clone(),
            start: range.start,
            end: range.end.max(range.start),
        }
    }
    /// Where it starts, as a catalog resource's `source`: reads as
    /// [`Span::location`], holds a pointer to the file's name and two
    /// numbers.
    pub fn source(&self) -> troupe_catalog::Source {
        let (l, c) = self.file.line_col(self.start);
        // A tree file is at most 16 MiB (`tree::MAX_FILE_BYTES`), so its
        // line and column numbers fit 32 bits.
        troupe_catalog::Source::at(
            self.file.name.clone(),
            u32::try_from(l).unwrap_or(u32::MAX),
            u32::try_from(c).unwrap_or(u32::MAX),
        )
    }

    /// `path:line:col`.
    pub fn location(&self) -> String {
        use std::fmt::Write as _;
        let (l, c) = self.file.line_col(self.start);
        // Sized once: one of these is kept per catalog resource.
        let mut s = String::with_capacity(self.file.path.len() + 16);
        let _ = write!(s, "{}:{l}:{c}", self.file.path);
        s
    }
}

impl fmt::Display for Span {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.location())
    }
}

/// What went wrong, for callers (and tests) that branch on it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorKind {
    /// Reading the tree failed (missing directory, unreadable file).
    Io,
    /// Not valid TOML.
    Syntax,
    /// Valid TOML, but not what the language expects (unknown attribute,
    /// wrong type, bad value).
    Schema,
    /// A resource declared twice, or a profile included twice with
    /// different parameters.
    Duplicate,
    /// A dependency cycle.
    Cycle,
    /// A relationship names a resource that is not in the catalog.
    Reference,
    /// A template (or `{{ }}` expression) failed to parse or render.
    Template,
    /// A template or source file that does not exist.
    MissingFile,
    /// A path that tries to leave the module tree.
    PathTraversal,
    /// A data key (or profile parameter) found at no level and with no default.
    MissingData,
    /// A secret that cannot be decrypted here (wrong environment, no key).
    Secret,
    /// The node cannot be classified (no rule, unknown role or environment).
    Classification,
    /// Bad input facts.
    Facts,
}

struct Inner {
    kind: ErrorKind,
    message: String,
    span: Option<Span>,
    help: Option<String>,
}

/// A compiler error. `Display` gives `path:line:col: message` (and the
/// help on a second line); as a [`miette::Diagnostic`] it also quotes the
/// source.
pub struct Error(Box<Inner>);

pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    pub fn new(kind: ErrorKind, message: impl Into<String>) -> Error {
        Error(Box::new(Inner {
            kind,
            message: message.into(),
            span: None,
            help: None,
        }))
    }
    pub fn at(kind: ErrorKind, span: &Span, message: impl Into<String>) -> Error {
        Error::new(kind, message).with_span(span)
    }
    pub fn with_span(mut self, span: &Span) -> Error {
        self.0.span = Some(span.clone());
        self
    }
    pub fn with_help(mut self, help: impl Into<String>) -> Error {
        self.0.help = Some(help.into());
        self
    }
    /// Says where in a loop the error happened: `(CONTEXT)` after the
    /// message.
    pub(crate) fn in_context(mut self, context: &str) -> Error {
        self.0.message = format!("{} ({context})", self.0.message);
        self
    }
    /// Adds a span only if the error has none yet.
    pub fn or_span(self, span: &Span) -> Error {
        if self.0.span.is_some() {
            self
        } else {
            self.with_span(span)
        }
    }
    /// Replaces every occurrence of the given secrets in the message.
    pub(crate) fn scrub(mut self, secrets: &[zeroize::Zeroizing<String>]) -> Error {
        for s in secrets.iter().filter(|s| !s.is_empty()) {
            if self.0.message.contains(s.as_str()) {
                self.0.message = self.0.message.replace(s.as_str(), "<sensitive>");
            }
            if let Some(h) = &mut self.0.help
                && h.contains(s.as_str())
            {
                *h = h.replace(s.as_str(), "<sensitive>");
            }
        }
        self
    }
    /// Appends `note` to the message (e.g. which instance of a defined
    /// type was being compiled).
    pub(crate) fn note(mut self, note: &str) -> Error {
        self.0.message.push_str(note);
        self
    }
    pub fn kind(&self) -> ErrorKind {
        self.0.kind
    }
    pub fn message(&self) -> &str {
        &self.0.message
    }
    pub fn span(&self) -> Option<&Span> {
        self.0.span.as_ref()
    }
    /// `path:line:col` of the error, if it has one.
    pub fn location(&self) -> Option<String> {
        self.0.span.as_ref().map(Span::location)
    }
    /// A multi-line rendering that quotes the offending source line.
    pub fn render(&self) -> String {
        let mut out = String::new();
        let handler =
            miette::GraphicalReportHandler::new_themed(miette::GraphicalTheme::unicode_nocolor());
        if handler.render_report(&mut out, &self.diagnostic()).is_err() {
            return self.to_string();
        }
        out
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if let Some(loc) = self.location() {
            write!(f, "{loc}: ")?;
        }
        f.write_str(&self.0.message)?;
        if let Some(h) = &self.0.help {
            write!(f, "\n  help: {h}")?;
        }
        Ok(())
    }
}

impl fmt::Debug for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Error({:?}: {self})", self.0.kind)
    }
}

impl std::error::Error for Error {}

/// The miette view of an [`Error`]: the message as the title, the source
/// line quoted under the file name, the help below.
pub struct Diagnostic {
    message: String,
    help: Option<String>,
    source: Option<miette::NamedSource<Arc<str>>>,
    span: Option<(usize, usize)>,
    label: String,
}

impl fmt::Debug for Diagnostic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl fmt::Display for Diagnostic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for Diagnostic {}

impl miette::Diagnostic for Diagnostic {
    fn help<'a>(&'a self) -> Option<Box<dyn fmt::Display + 'a>> {
        self.help
            .as_ref()
            .map(|h| Box::new(h) as Box<dyn fmt::Display>)
    }
    fn source_code(&self) -> Option<&dyn miette::SourceCode> {
        self.source.as_ref().map(|s| s as &dyn miette::SourceCode)
    }
    fn labels(&self) -> Option<Box<dyn Iterator<Item = miette::LabeledSpan> + '_>> {
        let (start, len) = self.span?;
        let label = miette::LabeledSpan::new(Some(self.label.clone()), start, len);
        Some(Box::new(std::iter::once(label)))
    }
}

impl Error {
    /// The error as a miette diagnostic.
    pub fn diagnostic(&self) -> Diagnostic {
        let s = self.0.span.as_ref();
        Diagnostic {
            message: self.0.message.clone(),
            help: self.0.help.clone(),
            source: s.map(|s| miette::NamedSource::new(&s.file.path, s.file.text.clone())),
            span: s.map(|s| {
                let len = s.file.text.len();
                let start = s.start.min(len);
                let max = len - start;
                (start, s.end.saturating_sub(start).clamp(1, 200).min(max))
            }),
            label: "here".into(),
        }
    }
}

/// Converts a toml parse error into ours, with its position.
pub(crate) fn from_toml(file: &Arc<SourceFile>, e: &toml::de::Error) -> Error {
    let msg = e.message().trim().to_owned();
    let err = Error::new(ErrorKind::Syntax, format!("invalid TOML: {msg}"));
    match e.span() {
        Some(r) => err.with_span(&Span::new(file, r)),
        None => err.with_span(&Span::new(file, 0..0)),
    }
}

/// A template error and its causes on one line.
pub(crate) fn jinja_message(e: &minijinja::Error) -> String {
    let mut s = e.to_string();
    let mut src = std::error::Error::source(e);
    while let Some(inner) = src {
        s.push_str(": ");
        s.push_str(&inner.to_string());
        src = inner.source();
    }
    s
}
