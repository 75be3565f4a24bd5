//! TOML with a span on every key and value: what the rest of the compiler
//! reads, so any message can point at the exact place.

use crate::error::{Error, ErrorKind, Result, SourceFile, Span, from_toml};
use std::sync::Arc;
use toml::de::{DeTable, DeValue};

/// A value with its place in the source.
#[derive(Debug, Clone)]
pub struct N {
    pub v: V,
    pub span: Span,
}

#[derive(Debug, Clone)]
pub enum V {
    Str(String),
    Int(i64),
    Float(f64),
    Bool(bool),
    Datetime(String),
    Array(Vec<N>),
    /// Entries in source order.
    Table(Vec<(Key, N)>),
}

#[derive(Debug, Clone)]
pub struct Key {
    pub name: String,
    pub span: Span,
}

impl N {
    pub fn type_name(&self) -> &'static str {
        match &self.v {
            V::Str(_) => "a string",
            V::Int(_) => "an integer",
            V::Float(_) => "a float",
            V::Bool(_) => "a boolean",
            V::Datetime(_) => "a date-time",
            V::Array(_) => "an array",
            V::Table(_) => "a table",
        }
    }
    pub fn as_str(&self) -> Option<&str> {
        match &self.v {
            V::Str(s) => Some(s),
            _ => None,
        }
    }
    pub fn as_table(&self) -> Option<&[(Key, N)]> {
        match &self.v {
            V::Table(t) => Some(t),
            _ => None,
        }
    }
    pub fn get(&self, key: &str) -> Option<&N> {
        self.as_table()?
            .iter()
            .find(|(k, _)| k.name == key)
            .map(|(_, v)| v)
    }
    /// An error pointing at this value.
    pub fn err(&self, kind: ErrorKind, msg: impl Into<String>) -> Error {
        Error::at(kind, &self.span, msg)
    }
    /// The string, or a schema error saying a string was expected for `what`.
    pub fn expect_str(&self, what: &str) -> Result<&str> {
        self.as_str().ok_or_else(|| {
            self.err(
                ErrorKind::Schema,
                format!("{what}: expected a string, found {}", self.type_name()),
            )
        })
    }
    pub fn expect_table(&self, what: &str) -> Result<&[(Key, N)]> {
        self.as_table().ok_or_else(|| {
            self.err(
                ErrorKind::Schema,
                format!("{what}: expected a table, found {}", self.type_name()),
            )
        })
    }
    /// A string or an array of strings.
    pub fn expect_str_list(&self, what: &str) -> Result<Vec<(String, Span)>> {
        match &self.v {
            V::Str(s) => Ok(vec![(s.clone(), self.span.clone())]),
            V::Array(items) => items
                .iter()
                .map(|i| Ok((i.expect_str(what)?.to_owned(), i.span.clone())))
                .collect(),
            _ => Err(self.err(
                ErrorKind::Schema,
                format!(
                    "{what}: expected a string or an array of strings, found {}",
                    self.type_name()
                ),
            )),
        }
    }
    /// Plain JSON (secrets stay as their `{ env, secret }` table).
    pub fn to_json(&self) -> serde_json::Value {
        use serde_json::Value as J;
        match &self.v {
            V::Str(s) => J::String(s.clone()),
            V::Int(i) => J::from(*i),
            V::Float(f) => serde_json::Number::from_f64(*f)
                .map(J::Number)
                .unwrap_or(J::Null),
            V::Bool(b) => J::Bool(*b),
            V::Datetime(s) => J::String(s.clone()),
            V::Array(a) => J::Array(a.iter().map(N::to_json).collect()),
            V::Table(t) => J::Object(
                t.iter()
                    .map(|(k, v)| (k.name.clone(), v.to_json()))
                    .collect(),
            ),
        }
    }
}

/// Checks that a table has only the `allowed` keys.
pub fn check_keys(table: &[(Key, N)], allowed: &[&str], what: &str) -> Result<()> {
    for (k, _) in table {
        if !allowed.contains(&k.name.as_str()) {
            return Err(Error::at(
                ErrorKind::Schema,
                &k.span,
                format!("unknown key `{}` in {what}", k.name),
            )
            .with_help(format!("expected one of: {}", allowed.join(", "))));
        }
    }
    Ok(())
}

/// Parses a whole TOML document into a spanned table.
pub fn parse(file: &Arc<SourceFile>) -> Result<N> {
    let text = file.text.clone();
    let parsed = DeTable::parse(&text).map_err(|e| from_toml(file, &e))?;
    let span = Span::new(file, 0..text.len());
    Ok(N {
        v: convert_table(file, parsed.get_ref()),
        span,
    })
}

fn convert_table(file: &Arc<SourceFile>, t: &DeTable<'_>) -> V {
    let mut entries: Vec<(Key, N)> = t
        .iter()
        .map(|(k, v)| {
            (
                Key {
                    name: k.get_ref().to_string(),
                    span: Span::new(file, k.span()),
                },
                convert(file, v.get_ref(), v.span()),
            )
        })
        .collect();
    entries.sort_by_key(|(k, _)| k.span.start);
    V::Table(entries)
}

fn convert(file: &Arc<SourceFile>, v: &DeValue<'_>, span: std::ops::Range<usize>) -> N {
    let v = match v {
        DeValue::String(s) => V::Str(s.to_string()),
        DeValue::Integer(i) => {
            // The parser has validated the digits; an out-of-range literal
            // becomes a float-free error value via the string form.
            let digits = i.as_str().replace('_', "");
            let parsed = match i.radix() {
                10 => digits.parse::<i64>().ok(),
                r => {
                    let body = digits
                        .trim_start_matches('+')
                        .trim_start_matches("0x")
                        .trim_start_matches("0o")
                        .trim_start_matches("0b");
                    i64::from_str_radix(body, r).ok()
                }
            };
            match parsed {
                Some(n) => V::Int(n),
                None => V::Str(i.as_str().to_owned()),
            }
        }
        DeValue::Float(f) => V::Float(f.as_str().replace('_', "").parse::<f64>().unwrap_or(0.0)),
        DeValue::Boolean(b) => V::Bool(*b),
        DeValue::Datetime(d) => V::Datetime(d.to_string()),
        DeValue::Array(a) => V::Array(
            a.iter()
                .map(|e| convert(file, e.get_ref(), e.span()))
                .collect(),
        ),
        DeValue::Table(t) => convert_table(file, t),
    };
    N {
        v,
        span: Span::new(file, span),
    }
}
