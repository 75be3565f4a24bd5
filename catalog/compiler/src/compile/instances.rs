//! Compiling instances of defined types: `["nginx::vhost"."www"]` in a
//! profile declares the type's resources once more, with its own title and
//! parameters. Titles are unique per type; an instance's `require`,
//! `before`, `notify`, `subscribe`, `tags` and `sensitive` apply to every
//! resource it declares, and `TYPE[TITLE]` of an instance in a relationship
//! means all of them.

use super::{Compiler, J, to_mj};
use crate::error::{Error, ErrorKind, Result, Span};
use crate::tree::ResourceDecl;
use minijinja::Value;
use std::sync::Arc;
use troupe_catalog::ResourceId;

/// Instances may contain instances, at most this deep.
const MAX_DEPTH: usize = 16;

/// What resources being declared inherit from where they are declared.
#[derive(Default, Clone)]
pub(super) struct Scope {
    pub(super) tags: Vec<String>,
    pub(super) sensitive: bool,
    pub(super) noop: bool,
    /// require, before, notify, subscribe (as in `Inst::refs`).
    pub(super) refs: [Vec<(String, Span)>; 4],
    pub(super) depth: usize,
}

impl Scope {
    /// A profile's own resources: its `tags`, nothing else.
    pub(super) fn profile(tags: &[String], depth: usize) -> Scope {
        Scope {
            tags: tags.to_vec(),
            depth,
            ..Scope::default()
        }
    }
}

/// One declared instance.
pub(super) struct Instance {
    /// The resources it declared (its nested instances' too): a range of
    /// `Compiler::insts`.
    pub(super) range: std::ops::Range<usize>,
    pub(super) span: Span,
    pub(super) profile: String,
}

impl Compiler<'_> {
    /// Declares one instance of defined type `tname` titled `title`; `ctx`
    /// is where it is declared (its attributes are evaluated there).
    pub(super) fn instantiate(
        &mut self,
        profile: &Arc<str>,
        decl: &ResourceDecl,
        tname: &str,
        title: String,
        ctx: &Value,
    ) -> Result<()> {
        let env = self.env.clone();
        let Some(def) = env.defines.get(tname) else {
            return Err(Error::at(
                ErrorKind::Schema,
                &decl.span,
                format!("defined type `{tname}` does not exist"),
            ));
        };
        let id = ResourceId::new(tname, &title);
        if let Some(prev) = self.instances.get(&id) {
            return Err(Error::at(
                ErrorKind::Duplicate,
                &decl.span,
                format!(
                    "{id} is declared twice: first at {} (profile `{}`), again at {} (profile `{profile}`); titles of a defined type are unique",
                    prev.span.location(),
                    prev.profile,
                    decl.span.location()
                ),
            ));
        }
        if self.scope.depth >= MAX_DEPTH {
            return Err(Error::at(
                ErrorKind::Schema,
                &decl.span,
                format!(
                    "{id}: defined types nest more than {MAX_DEPTH} deep here (does a type declare an instance of itself?)"
                ),
            ));
        }
        let here = format!(" (in {id}, declared at {})", decl.span.location());
        // Parameters: the attributes beside `params = TABLE` win over it.
        let mut given = serde_json::Map::new();
        if let Some(sp) = &decl.splat {
            match self.eval(sp, ctx, &format_args!("{id}: params"))? {
                J::Object(m) => {
                    for (k, v) in m {
                        if !def.params.iter().any(|p| p.name == k) {
                            return Err(Error::at(
                                ErrorKind::Schema,
                                &sp.span,
                                format!("{id}: params: the defined type `{tname}` has no parameter `{k}`"),
                            )
                            .with_help(format!(
                                "its parameters: {}",
                                def.params.iter().map(|p| p.name.as_str()).collect::<Vec<_>>().join(", ")
                            )));
                        }
                        given.insert(k, v);
                    }
                }
                J::Null => {}
                other => {
                    return Err(sp.err(
                        ErrorKind::Schema,
                        format!("{id}: params: expected a table of parameters, found {other}"),
                    ));
                }
            }
        }
        for (k, v) in &decl.attrs {
            let j = self.eval(v, ctx, &format_args!("{id}: parameter `{}`", k.name))?;
            given.insert(k.name.clone(), j);
        }
        let mut params = serde_json::Map::new();
        for p in &def.params {
            let value = if let Some(v) = given.remove(&p.name) {
                v
            } else if let Some(d) = &p.default {
                let dctx = minijinja::context! {
                    params => to_mj(&J::Object(params.clone())),
                    title => title.clone(),
                    ..self.base.clone()
                };
                self.eval(d, &dctx, &format_args!("default of parameter `{}`", p.name))
                    .map_err(|e| e.note(&here))?
            } else {
                return Err(Error::at(
                    ErrorKind::MissingData,
                    &decl.span,
                    format!(
                        "{id} needs parameter `{}`: it is not given here and the defined type `{tname}` has no default for it",
                        p.name
                    ),
                ));
            };
            params.insert(p.name.clone(), value);
        }
        // What every resource of the instance inherits.
        let mut scope = self.scope.clone();
        scope.depth += 1;
        scope.sensitive |= decl.sensitive;
        scope.noop |= decl.noop;
        for t in def.tags.iter().cloned().chain([tname.to_owned()]) {
            if !scope.tags.contains(&t) {
                scope.tags.push(t);
            }
        }
        for t in &decl.tags {
            if let J::String(s) = self.eval(t, ctx, &"tags")? {
                crate::define::check_tag(&s)
                    .map_err(|why| Error::at(ErrorKind::Schema, &t.span, format!("{id}: {why}")))?;
                if !scope.tags.contains(&s) {
                    scope.tags.push(s);
                }
            }
        }
        for (slot, list) in [&decl.require, &decl.before, &decl.notify, &decl.subscribe]
            .into_iter()
            .enumerate()
        {
            for n in list {
                match self.eval(n, ctx, &"relationship")? {
                    J::String(s) => scope.refs[slot].push((s, n.span.clone())),
                    J::Array(a) => {
                        for s in a {
                            let J::String(s) = s else {
                                return Err(n.err(
                                    ErrorKind::Schema,
                                    format!(
                                        "expected a reference like \"package[nginx]\", found {s}"
                                    ),
                                ));
                            };
                            scope.refs[slot].push((s, n.span.clone()));
                        }
                    }
                    other => {
                        return Err(n.err(
                            ErrorKind::Schema,
                            format!("expected a reference like \"package[nginx]\", found {other}"),
                        ));
                    }
                }
            }
        }
        let body_ctx = minijinja::context! {
            params => to_mj(&J::Object(params)),
            title => title.clone(),
            ..self.base.clone()
        };
        // Reserve the title first: an instance that declares itself again
        // is a duplicate, not a loop.
        let start = self.insts.len();
        self.instances.insert(
            id.clone(),
            Instance {
                range: start..start,
                span: decl.span.clone(),
                profile: profile.to_string(),
            },
        );
        let outer = std::mem::replace(&mut self.scope, scope);
        let res = (|| -> Result<()> {
            for inc in &def.includes {
                // An included profile's resources are its own, not the
                // instance's.
                let inner = std::mem::take(&mut self.scope);
                let r = self.include_decl(inc, &body_ctx);
                self.scope = inner;
                r?;
            }
            for d in &def.resources {
                self.declare(profile, d, &body_ctx)?;
            }
            Ok(())
        })();
        self.scope = outer;
        res.map_err(|e| e.note(&here))?;
        let end = self.insts.len();
        if let Some(inst) = self.instances.get_mut(&id) {
            inst.range = start..end;
        }
        Ok(())
    }

    /// The resources of instance `TYPE[TITLE]`, for a relationship.
    pub(super) fn resolve_instance(
        &self,
        tname: &str,
        title: &str,
        span: &Span,
        from: usize,
    ) -> Result<Vec<usize>> {
        let id = ResourceId::new(tname, title);
        match self.instances.get(&id) {
            Some(inst) => Ok(inst.range.clone().collect()),
            None => Err(Error::at(
                ErrorKind::Reference,
                span,
                format!(
                    "{} refers to {id}, which is not declared for this node",
                    self.catalog.resources[from].id
                ),
            )),
        }
    }
}
