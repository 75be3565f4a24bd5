//! The dashboard API's query language, in the style of PuppetDB: a
//! `query=` parameter holding either
//!
//! - an infix expression: `fact.os.family = Debian and (status = failed or
//!   report.changed > 0)`, `name ~ "^web[0-9]+$"`, `not role = db`, or
//! - PuppetDB's JSON AST: `["and", ["=", "fact.os.family", "Debian"],
//!   ["~", "name", "^web"]]`.
//!
//! Operators: `=`, `!=`, `<`, `>`, `<=`, `>=`, `~` (regex, unanchored),
//! `!~`; `and`, `or`, `not`, parentheses. `<`/`>` compare numbers when both
//! sides are numbers, text otherwise (RFC 3339 times sort as text). A field
//! an item does not have (a fact a node lacks) matches nothing, not even
//! `!=`. Unknown fields, bad regexes and syntax errors are refused before
//! anything is evaluated, with the position and what was expected.

use regex::Regex;
use serde_json::Value;

/// Most bytes of a query, and most clauses in one.
pub const MAX_QUERY_BYTES: usize = 8192;
const MAX_CLAUSES: usize = 256;
const MAX_DEPTH: usize = 32;

/// Comparison operators.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op {
    Eq,
    Ne,
    Lt,
    Gt,
    Le,
    Ge,
    Match,
    NotMatch,
}

impl Op {
    fn parse(s: &str) -> Option<Op> {
        Some(match s {
            "=" | "==" => Op::Eq,
            "!=" => Op::Ne,
            "<" => Op::Lt,
            ">" => Op::Gt,
            "<=" => Op::Le,
            ">=" => Op::Ge,
            "~" => Op::Match,
            "!~" => Op::NotMatch,
            _ => return None,
        })
    }
}

/// A parsed query.
#[derive(Debug, Clone)]
pub enum Query {
    All,
    And(Vec<Query>),
    Or(Vec<Query>),
    Not(Box<Query>),
    Cmp {
        field: String,
        op: Op,
        value: String,
        regex: Option<Regex>,
    },
}

/// Which fields an endpoint's items have: exact names, plus prefixes under
/// which any name is allowed (`fact.`).
pub struct Schema {
    pub fields: &'static [&'static str],
    pub prefixes: &'static [&'static str],
}

impl Schema {
    fn check(&self, field: &str) -> Result<(), String> {
        if self.fields.contains(&field)
            || self
                .prefixes
                .iter()
                .any(|p| field.len() > p.len() && field.starts_with(p))
        {
            return Ok(());
        }
        let mut known: Vec<String> = self.fields.iter().map(|s| s.to_string()).collect();
        known.extend(self.prefixes.iter().map(|p| format!("{p}NAME")));
        Err(format!(
            "unknown field {field:?}; fields here are: {}",
            known.join(", ")
        ))
    }
}

/// Something a query is evaluated against: the value of a field, `None`
/// when the item does not have it.
pub trait Fields {
    fn field(&self, name: &str) -> Option<Value>;
}

impl Query {
    /// Parses `text` (infix or JSON AST), checking every field against
    /// `schema`. An empty text is [`Query::All`].
    pub fn parse(text: &str, schema: &Schema) -> Result<Query, String> {
        if text.len() > MAX_QUERY_BYTES {
            return Err(format!(
                "the query is {} bytes; at most {MAX_QUERY_BYTES} are accepted",
                text.len()
            ));
        }
        let t = text.trim();
        if t.is_empty() {
            return Ok(Query::All);
        }
        let mut clauses = 0;
        let q = if t.starts_with('[') {
            let v: Value =
                serde_json::from_str(t).map_err(|e| format!("the JSON query is not JSON: {e}"))?;
            from_ast(&v, schema, 0, &mut clauses)?
        } else {
            let toks = lex(t)?;
            let mut p = Parser {
                toks,
                pos: 0,
                schema,
                clauses: 0,
            };
            let q = p.expr(0)?;
            if let Some(tok) = p.toks.get(p.pos) {
                return Err(format!(
                    "unexpected {} at character {}; expected `and`, `or` or the end",
                    tok.show(),
                    tok.at + 1
                ));
            }
            q
        };
        Ok(q)
    }

    /// An equality clause (from a plain `name=value` parameter).
    pub fn eq(field: &str, value: &str, schema: &Schema) -> Result<Query, String> {
        schema.check(field)?;
        Ok(Query::Cmp {
            field: field.to_owned(),
            op: Op::Eq,
            value: value.to_owned(),
            regex: None,
        })
    }

    /// Whether `item` matches.
    pub fn matches(&self, item: &dyn Fields) -> bool {
        match self {
            Query::All => true,
            Query::And(v) => v.iter().all(|q| q.matches(item)),
            Query::Or(v) => v.iter().any(|q| q.matches(item)),
            Query::Not(q) => !q.matches(item),
            Query::Cmp {
                field,
                op,
                value,
                regex,
            } => match item.field(field) {
                None | Some(Value::Null) => false,
                Some(have) => compare(&have, *op, value, regex.as_ref()),
            },
        }
    }
}

fn text_of(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

fn compare(have: &Value, op: Op, want: &str, re: Option<&Regex>) -> bool {
    let h = text_of(have);
    match op {
        Op::Match => re.is_some_and(|r| r.is_match(&h)),
        Op::NotMatch => re.is_some_and(|r| !r.is_match(&h)),
        _ => {
            let ord = match (h.parse::<f64>(), want.parse::<f64>()) {
                (Ok(a), Ok(b)) if !matches!(have, Value::String(_)) || is_numeric_text(&h) => {
                    a.partial_cmp(&b)
                }
                _ => Some(h.as_str().cmp(want)),
            };
            let Some(ord) = ord else { return false };
            use std::cmp::Ordering::*;
            match op {
                Op::Eq => ord == Equal,
                Op::Ne => ord != Equal,
                Op::Lt => ord == Less,
                Op::Gt => ord == Greater,
                Op::Le => ord != Greater,
                Op::Ge => ord != Less,
                Op::Match | Op::NotMatch => unreachable!("handled above"),
            }
        }
    }
}

/// Plain decimal numbers only (not `inf`, `NaN`, `1e5` spelled by facts).
fn is_numeric_text(s: &str) -> bool {
    let s = s.strip_prefix('-').unwrap_or(s);
    !s.is_empty()
        && s.chars().all(|c| c.is_ascii_digit() || c == '.')
        && s.chars().filter(|&c| c == '.').count() <= 1
        && !s.starts_with('.')
}

fn cmp_clause(
    field: &str,
    op: Op,
    value: String,
    schema: &Schema,
    clauses: &mut usize,
) -> Result<Query, String> {
    schema.check(field)?;
    *clauses += 1;
    if *clauses > MAX_CLAUSES {
        return Err(format!("the query has more than {MAX_CLAUSES} clauses"));
    }
    let regex = match op {
        Op::Match | Op::NotMatch => Some(
            regex::RegexBuilder::new(&value)
                .size_limit(1 << 20)
                .build()
                .map_err(|e| format!("{field} ~ {value:?}: not a valid regular expression: {e}"))?,
        ),
        _ => None,
    };
    Ok(Query::Cmp {
        field: field.to_owned(),
        op,
        value,
        regex,
    })
}

fn from_ast(
    v: &Value,
    schema: &Schema,
    depth: usize,
    clauses: &mut usize,
) -> Result<Query, String> {
    if depth > MAX_DEPTH {
        return Err(format!("the query nests deeper than {MAX_DEPTH} levels"));
    }
    let arr = v
        .as_array()
        .ok_or_else(|| format!("expected a JSON array like [\"=\", FIELD, VALUE], got {v}"))?;
    let head = arr
        .first()
        .and_then(Value::as_str)
        .ok_or_else(|| format!("a query array starts with an operator string, got {v}"))?;
    match head {
        "and" | "or" => {
            if arr.len() < 2 {
                return Err(format!("[\"{head}\", ...] needs at least one query"));
            }
            let parts = arr[1..]
                .iter()
                .map(|q| from_ast(q, schema, depth + 1, clauses))
                .collect::<Result<Vec<_>, _>>()?;
            Ok(if head == "and" {
                Query::And(parts)
            } else {
                Query::Or(parts)
            })
        }
        "not" => {
            if arr.len() != 2 {
                return Err("[\"not\", QUERY] takes exactly one query".into());
            }
            Ok(Query::Not(Box::new(from_ast(
                &arr[1],
                schema,
                depth + 1,
                clauses,
            )?)))
        }
        op => {
            let op = Op::parse(op).ok_or_else(|| {
                format!(
                    "unknown operator {op:?}; operators are =, !=, <, >, <=, >=, ~, !~, and, or, not"
                )
            })?;
            if arr.len() != 3 {
                return Err(format!(
                    "[\"{head}\", FIELD, VALUE] takes a field and a value"
                ));
            }
            let field = arr[1]
                .as_str()
                .ok_or_else(|| format!("the field in {v} must be a string"))?;
            let value = match &arr[2] {
                Value::String(s) => s.clone(),
                n @ (Value::Number(_) | Value::Bool(_)) => n.to_string(),
                other => {
                    return Err(format!(
                        "the value in {v} must be a string, number or boolean, got {other}"
                    ));
                }
            };
            cmp_clause(field, op, value, schema, clauses)
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
enum Tok {
    Word(String),
    Quoted(String),
    Op(String),
    Open,
    Close,
}

#[derive(Debug, Clone)]
struct Token {
    tok: Tok,
    at: usize,
}

impl Token {
    fn show(&self) -> String {
        match &self.tok {
            Tok::Word(w) => format!("`{w}`"),
            Tok::Quoted(q) => format!("{q:?}"),
            Tok::Op(o) => format!("`{o}`"),
            Tok::Open => "`(`".into(),
            Tok::Close => "`)`".into(),
        }
    }
}

fn lex(s: &str) -> Result<Vec<Token>, String> {
    let b: Vec<char> = s.chars().collect();
    let mut out = Vec::new();
    let mut i = 0;
    while i < b.len() {
        let c = b[i];
        if c.is_whitespace() {
            i += 1;
            continue;
        }
        let at = i;
        match c {
            '(' => {
                out.push(Token { tok: Tok::Open, at });
                i += 1;
            }
            ')' => {
                out.push(Token {
                    tok: Tok::Close,
                    at,
                });
                i += 1;
            }
            '"' | '\'' => {
                let quote = c;
                let mut v = String::new();
                i += 1;
                loop {
                    match b.get(i) {
                        None => {
                            return Err(format!(
                                "the quoted value starting at character {} is not closed",
                                at + 1
                            ));
                        }
                        Some('\\') if matches!(b.get(i + 1), Some(q) if *q == quote || *q == '\\') =>
                        {
                            v.push(b[i + 1]);
                            i += 2;
                        }
                        Some(q) if *q == quote => {
                            i += 1;
                            break;
                        }
                        Some(ch) => {
                            v.push(*ch);
                            i += 1;
                        }
                    }
                }
                out.push(Token {
                    tok: Tok::Quoted(v),
                    at,
                });
            }
            '=' | '!' | '<' | '>' | '~' => {
                let two: String = b[i..(i + 2).min(b.len())].iter().collect();
                let op = if ["!=", "<=", ">=", "!~", "=="].contains(&two.as_str()) {
                    two
                } else if c == '!' {
                    return Err(format!(
                        "`!` at character {} must be followed by `=` or `~`",
                        at + 1
                    ));
                } else {
                    c.to_string()
                };
                i += op.chars().count();
                out.push(Token {
                    tok: Tok::Op(op),
                    at,
                });
            }
            _ => {
                let mut w = String::new();
                while let Some(&ch) = b.get(i) {
                    if ch.is_whitespace() || "()=!<>~\"'".contains(ch) {
                        break;
                    }
                    w.push(ch);
                    i += 1;
                }
                out.push(Token {
                    tok: Tok::Word(w),
                    at,
                });
            }
        }
    }
    Ok(out)
}

struct Parser<'a> {
    toks: Vec<Token>,
    pos: usize,
    schema: &'a Schema,
    clauses: usize,
}

impl Parser<'_> {
    fn peek_word(&self, w: &str) -> bool {
        matches!(self.toks.get(self.pos), Some(Token { tok: Tok::Word(x), .. }) if x.eq_ignore_ascii_case(w))
    }

    fn expr(&mut self, depth: usize) -> Result<Query, String> {
        if depth > MAX_DEPTH {
            return Err(format!("the query nests deeper than {MAX_DEPTH} levels"));
        }
        let mut parts = vec![self.term(depth)?];
        while self.peek_word("or") {
            self.pos += 1;
            parts.push(self.term(depth)?);
        }
        Ok(if parts.len() == 1 {
            parts.remove(0)
        } else {
            Query::Or(parts)
        })
    }

    fn term(&mut self, depth: usize) -> Result<Query, String> {
        let mut parts = vec![self.factor(depth)?];
        while self.peek_word("and") {
            self.pos += 1;
            parts.push(self.factor(depth)?);
        }
        Ok(if parts.len() == 1 {
            parts.remove(0)
        } else {
            Query::And(parts)
        })
    }

    fn end_err(&self, what: &str) -> String {
        format!("the query ends where {what} was expected")
    }

    fn factor(&mut self, depth: usize) -> Result<Query, String> {
        if self.peek_word("not") {
            self.pos += 1;
            return Ok(Query::Not(Box::new(self.factor(depth + 1)?)));
        }
        let t = self
            .toks
            .get(self.pos)
            .cloned()
            .ok_or_else(|| self.end_err("a condition like `role = web`"))?;
        self.pos += 1;
        match t.tok {
            Tok::Open => {
                let q = self.expr(depth + 1)?;
                match self.toks.get(self.pos) {
                    Some(Token {
                        tok: Tok::Close, ..
                    }) => {
                        self.pos += 1;
                        Ok(q)
                    }
                    Some(o) => Err(format!(
                        "unexpected {} at character {}; expected `)`",
                        o.show(),
                        o.at + 1
                    )),
                    None => Err(self.end_err("`)`")),
                }
            }
            Tok::Word(field) => {
                let op = match self.toks.get(self.pos) {
                    Some(Token {
                        tok: Tok::Op(o), ..
                    }) => Op::parse(o).ok_or_else(|| format!("unknown operator `{o}`"))?,
                    Some(o) => {
                        return Err(format!(
                            "unexpected {} at character {} after field `{field}`; expected an \
                             operator (=, !=, <, >, <=, >=, ~, !~)",
                            o.show(),
                            o.at + 1
                        ));
                    }
                    None => return Err(self.end_err(&format!("an operator after `{field}`"))),
                };
                self.pos += 1;
                let value = match self.toks.get(self.pos) {
                    Some(Token {
                        tok: Tok::Word(v) | Tok::Quoted(v),
                        ..
                    }) => v.clone(),
                    Some(o) => {
                        return Err(format!(
                            "unexpected {} at character {}; expected a value (quote it if it \
                             holds spaces or parentheses)",
                            o.show(),
                            o.at + 1
                        ));
                    }
                    None => return Err(self.end_err(&format!("a value after `{field}`"))),
                };
                self.pos += 1;
                cmp_clause(&field, op, value, self.schema, &mut self.clauses)
            }
            _ => Err(format!(
                "unexpected {} at character {}; expected a condition like `role = web`",
                t.show(),
                t.at + 1
            )),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    static S: Schema = Schema {
        fields: &["name", "role", "status", "report.changed", "last_checkin"],
        prefixes: &["fact."],
    };

    struct M(BTreeMap<&'static str, Value>);
    impl Fields for M {
        fn field(&self, name: &str) -> Option<Value> {
            self.0.get(name).cloned()
        }
    }

    fn node(name: &str, role: &str, family: &str, changed: u64) -> M {
        let mut m = BTreeMap::new();
        m.insert("name", Value::from(name));
        m.insert("role", Value::from(role));
        m.insert("fact.os.family", Value::from(family));
        m.insert("fact.processors.count", Value::from("12"));
        m.insert("report.changed", Value::from(changed));
        M(m)
    }

    fn q(s: &str) -> Query {
        Query::parse(s, &S).unwrap_or_else(|e| panic!("{s}: {e}"))
    }

    #[test]
    fn infix_operators_and_precedence() {
        let web = node("web1", "web", "Debian", 3);
        let db = node("db1", "db", "RedHat", 0);
        assert!(q("fact.os.family = Debian").matches(&web));
        assert!(!q("fact.os.family = Debian").matches(&db));
        assert!(q("fact.os.family != Debian").matches(&db));
        assert!(q("report.changed > 2").matches(&web));
        assert!(!q("report.changed < 2").matches(&web));
        assert!(q("report.changed <= 0").matches(&db));
        // Numbers compare as numbers, not text ("12" > "9").
        assert!(q("fact.processors.count > 9").matches(&web));
        assert!(q("name ~ '^web[0-9]+$'").matches(&web));
        assert!(q("name !~ ^web").matches(&db));
        assert!(q("role = db or role = web and report.changed > 1").matches(&db));
        assert!(!q("(role = db or role = web) and report.changed > 1").matches(&db));
        assert!(q("not role = web").matches(&db));
        assert!(
            q("ROLE = web AND name = \"web1\""
                .replace("ROLE", "role")
                .as_str())
            .matches(&web)
        );
        // A fact the node lacks matches nothing, not even !=.
        assert!(!q("fact.missing != x").matches(&web));
        assert!(q("").matches(&web));
    }

    #[test]
    fn json_ast() {
        let web = node("web1", "web", "Debian", 3);
        assert!(
            q(r#"["and", ["=", "fact.os.family", "Debian"], ["~", "name", "^web"]]"#).matches(&web)
        );
        assert!(q(r#"["or", ["=", "role", "db"], [">", "report.changed", 2]]"#).matches(&web));
        assert!(!q(r#"["not", ["=", "role", "web"]]"#).matches(&web));
    }

    #[test]
    fn bad_queries_say_what_is_wrong() {
        for (text, needle) in [
            ("colour = red", "unknown field \"colour\""),
            ("role", "an operator after `role`"),
            ("role =", "a value after `role`"),
            ("role = web and", "a condition"),
            ("(role = web", "`)`"),
            ("role = web)", "unexpected `)`"),
            ("name ~ '(unclosed'", "not a valid regular expression"),
            ("name = 'open", "not closed"),
            ("role ! web", "must be followed by"),
            ("role = web role = db", "expected `and`, `or` or the end"),
            ("fact. = x", "unknown field"),
            (r#"["=", "role"]"#, "takes a field and a value"),
            (r#"["like", "role", "x"]"#, "unknown operator"),
            (r#"[1]"#, "starts with an operator"),
            ("[nope", "not JSON"),
        ] {
            let err = Query::parse(text, &S).unwrap_err();
            assert!(err.contains(needle), "{text}: {err}");
        }
        let deep = "(".repeat(100) + "role = web" + &")".repeat(100);
        assert!(
            Query::parse(&deep, &S)
                .unwrap_err()
                .contains("nests deeper")
        );
    }
}
