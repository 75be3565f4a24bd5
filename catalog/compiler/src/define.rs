//! Defined types (Puppet's `define`): a parameterised group of resources in
//! `environments/ENV/types/`, instantiated by profiles any number of times
//! with different titles. `types/nginx/vhost.toml` is the type
//! `nginx::vhost`; a profile declares an instance as
//! `["nginx::vhost"."www"]` with the type's parameters as attributes.
//!
//! This module holds the load-time side (names, instance declarations and
//! their parameters); compiling an instance is in `compile/instances.rs`.

use crate::error::{Error, ErrorKind, Result};
use crate::syntax::{Key, N, V};
use crate::tree::{
    META, Profile, ResourceDecl, TYPES, check_expression, check_template_syntax, list,
};
use std::collections::BTreeMap;

/// Top-level keys of a profile or type file that are not resources.
const RESERVED: &[&str] = &["description", "params", "include", "tags"];

/// The type name of `types/STEM.toml`: `nginx/vhost` → `nginx::vhost`.
pub(crate) fn type_name(stem: &str) -> std::result::Result<String, String> {
    let mut parts = Vec::new();
    for seg in stem.split('/') {
        let ok = seg.starts_with(|c: char| c.is_ascii_lowercase())
            && seg
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_');
        if !ok {
            return Err(format!(
                "`{seg}` cannot be part of a defined type's name (each directory and the file \
                 name: a lowercase letter, then lowercase letters, digits or _)"
            ));
        }
        parts.push(seg);
    }
    let name = parts.join("::");
    if TYPES.iter().any(|(t, _)| *t == name) || RESERVED.contains(&name.as_str()) {
        return Err(format!(
            "`{name}` is a built-in resource type or a reserved key; name the type after its \
             module, e.g. types/nginx/vhost.toml for `nginx::vhost`"
        ));
    }
    Ok(name)
}

/// A tag: lowercase letters, digits and `_ . : -`, starting with a letter,
/// digit or `_`; at most 128 bytes (as Puppet's, lowercased).
pub(crate) fn check_tag(tag: &str) -> std::result::Result<(), String> {
    let ok = !tag.is_empty()
        && tag.len() <= 128
        && !tag.starts_with(['.', ':', '-'])
        && tag
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"_.:-".contains(&b));
    if ok {
        Ok(())
    } else {
        Err(format!(
            "tag {tag:?} is not valid: use lowercase letters, digits, `_`, `.`, `:` and `-` \
             (starting with a letter, digit or `_`; at most 128 characters)"
        ))
    }
}

/// A defined type's parameter may not shadow what an instance or its body
/// uses for something else.
pub(crate) fn check_param_name(k: &Key) -> Result<()> {
    if k.name == "title" || k.name == "params" || META.contains(&k.name.as_str()) {
        return Err(Error::at(
            ErrorKind::Schema,
            &k.span,
            format!(
                "a defined type cannot have a parameter named `{}`: an instance uses it for \
                 something else (`title` is the instance's title, `params` passes a table of \
                 parameters, the others are {})",
                k.name,
                META.join(", ")
            ),
        ));
    }
    Ok(())
}

/// Parses `["TYPE"."TITLE"] ...` instances into `prof.resources`.
pub(crate) fn parse_instances(
    tk: &Key,
    tv: &N,
    jinja: &minijinja::Environment<'static>,
    prof: &mut Profile,
) -> Result<()> {
    let tname = tk.name.as_str();
    for (title, body) in tv.expect_table(&format!("[\"{tname}\"]"))? {
        let bt = body.as_table().ok_or_else(|| {
            body.err(
                ErrorKind::Schema,
                format!(
                    "{tname}[{}]: expected a table of parameters, found {}",
                    title.name,
                    body.type_name()
                ),
            )
        })?;
        let title_n = N {
            v: V::Str(title.name.clone()),
            span: title.span.clone(),
        };
        check_template_syntax(&title_n, jinja)?;
        let mut decl = ResourceDecl {
            rtype: "define",
            title: title_n,
            attrs: Vec::new(),
            when: None,
            for_each: None,
            require: Vec::new(),
            before: Vec::new(),
            notify: Vec::new(),
            subscribe: Vec::new(),
            tags: Vec::new(),
            sensitive: false,
            noop: false,
            span: title.span.clone(),
            source: title.span.source(),
            define: Some(tname.to_owned()),
            splat: None,
        };
        for (k, v) in bt {
            let key = k.name.as_str();
            match key {
                "when" => {
                    check_expression(v, jinja, "when")?;
                    decl.when = Some(v.clone());
                }
                "for_each" => {
                    if v.as_str().is_some() {
                        check_expression(v, jinja, "for_each")?;
                    }
                    decl.for_each = Some(v.clone());
                }
                "sensitive" | "noop" => match v.v {
                    V::Bool(b) if key == "noop" => decl.noop = b,
                    V::Bool(b) => decl.sensitive = b,
                    _ => {
                        return Err(v.err(
                            ErrorKind::Schema,
                            format!("{key}: expected true or false, found {}", v.type_name()),
                        ));
                    }
                },
                "params" => {
                    check_template_syntax(v, jinja)?;
                    decl.splat = Some(v.clone());
                }
                "require" | "before" | "notify" | "subscribe" | "tags" => {
                    let l = list(Some(v));
                    for item in &l {
                        item.expect_str(key)?;
                        check_template_syntax(item, jinja)?;
                    }
                    match key {
                        "require" => decl.require = l,
                        "before" => decl.before = l,
                        "notify" => decl.notify = l,
                        "subscribe" => decl.subscribe = l,
                        _ => decl.tags = l,
                    }
                }
                _ => {
                    check_template_syntax(v, jinja)?;
                    decl.attrs.push((k.clone(), v.clone()));
                }
            }
        }
        prof.resources.push(decl);
    }
    Ok(())
}

/// Every instance's parameters must be parameters of its type.
pub(crate) fn check_instances(
    profiles: &BTreeMap<String, Profile>,
    defines: &BTreeMap<String, Profile>,
) -> Result<()> {
    for prof in profiles.values().chain(defines.values()) {
        for decl in &prof.resources {
            let Some(tname) = &decl.define else { continue };
            let Some(def) = defines.get(tname) else {
                continue; // cannot happen: the key was checked against the names
            };
            for (k, _) in &decl.attrs {
                if !def.params.iter().any(|p| p.name == k.name) {
                    let mut known: Vec<&str> = def.params.iter().map(|p| p.name.as_str()).collect();
                    known.extend(["params"]);
                    known.extend(META);
                    return Err(Error::at(
                        ErrorKind::Schema,
                        &k.span,
                        format!(
                            "{tname}[{}]: the defined type `{tname}` has no parameter `{}`",
                            decl.title.as_str().unwrap_or_default(),
                            k.name
                        ),
                    )
                    .with_help(format!("expected one of: {}", known.join(", "))));
                }
            }
        }
    }
    Ok(())
}
