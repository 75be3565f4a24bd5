//! `troupe env diff ENV [--to DIR | --staged]` on the running master: every
//! node of the environment (a valid certificate, checked in, last served
//! in ENV) compiled with its stored facts against the code serving ENV and
//! against the new code, diffed per node ([`troupe_compiler::env_diff`]).
//!
//! The new code is DIR (`--to`, a whole module tree), the code staged for
//! a held ENV (`--staged`), or by default the staged code when there is
//! some, else the module tree on disk now. Secrets are compared with the
//! master's keys where it has them, else by ciphertext; values of
//! sensitive resources never leave the master, only names and hashes.

use crate::state::MasterState;
use anyhow::{Context, Result};
use std::path::PathBuf;
use std::sync::Arc;
use troupe_base::error_code::{ErrorCode, error};
use troupe_compiler::ModuleTree;
use troupe_compiler::env_diff::DiffNode;

/// Runs the diff (blocking: compiles every node twice) and returns the
/// JSON document `troupe env diff --json` prints.
pub fn run(
    state: &MasterState,
    env: &str,
    to: Option<&PathBuf>,
    staged: bool,
) -> Result<serde_json::Value> {
    let Some(code) = &state.code else {
        return Err(error(
            ErrorCode::NoModuleTree,
            "this master serves no module tree (started without --modules)",
        ));
    };
    let serving = code.current().map_err(|e| {
        error(
            ErrorCode::Unavailable,
            format!("no module tree is loaded: {e}"),
        )
    })?;
    let Some(from_version) = serving.env_code_version(env) else {
        return Err(error(
            ErrorCode::NotFound,
            format!(
                "environment `{env}` does not exist (environments: {})",
                serving.environments().collect::<Vec<_>>().join(", ")
            ),
        ));
    };
    let (new, what): (Arc<ModuleTree>, String) = match (to, staged) {
        (Some(_), true) => {
            return Err(error(
                ErrorCode::InvalidArgument,
                "give --to DIR or --staged, not both",
            ));
        }
        (Some(dir), false) => {
            let t = ModuleTree::load(dir)
                .map_err(|e| anyhow::anyhow!("{}", e.render()))
                .with_context(|| format!("the module tree {} does not load", dir.display()))?;
            (Arc::new(t), dir.display().to_string())
        }
        (None, true) => match code.staged_tree(env) {
            Some(t) => (t, "the staged code".into()),
            None => {
                return Err(error(
                    ErrorCode::NotFound,
                    format!(
                        "nothing is staged for environment `{env}`: it already serves the newest code{}",
                        if code.status().hold.iter().any(|h| h == env) {
                            ""
                        } else {
                            " (it is not on hold: its code goes live as soon as it loads)"
                        }
                    ),
                ));
            }
        },
        (None, false) => match code.staged_tree(env) {
            Some(t) => (t, "the staged code".into()),
            None => {
                let Some(dir) = code.disk_dir() else {
                    return Err(error(
                        ErrorCode::NotFound,
                        format!(
                            "nothing is staged for environment `{env}`: it serves the newest commit of its branch that loads \
                             (`troupe env sync {env}` fetches; give --to DIR to compare with a module tree)"
                        ),
                    ));
                };
                let t = ModuleTree::load(dir)
                    .map_err(|e| anyhow::anyhow!("{}", e.render()))
                    .with_context(|| format!("the module tree {} does not load", dir.display()))?;
                (
                    Arc::new(t),
                    format!("the module tree on disk ({})", dir.display()),
                )
            }
        },
    };
    let Some(to_version) = new.env_code_version(env) else {
        return Err(error(
            ErrorCode::NotFound,
            format!("environment `{env}` does not exist in {what}"),
        ));
    };
    // The nodes of the environment, with their last stable facts.
    crate::catalog_service::flush_checkins(state);
    let signed: std::collections::BTreeSet<String> = state
        .ca
        .list(troupe_pki::ListFilter::Default)
        .map_err(|e| anyhow::anyhow!("cannot list certificates: {e}"))?
        .into_iter()
        .filter(|e| e.state == "signed")
        .map(|e| e.host)
        .collect();
    let mut nodes = Vec::new();
    for n in state.store.nodes()? {
        if n.environment != env || !signed.contains(&n.name) {
            continue;
        }
        let facts = state
            .store
            .facts(&n.name)?
            .unwrap_or_else(|| serde_json::json!({}));
        let facts = crate::catalog_service::stable_facts(&facts)
            .map(|(f, _)| f)
            .unwrap_or_else(|_| serde_json::json!({}));
        nodes.push(DiffNode {
            name: n.name,
            facts,
        });
    }
    let fleet = state.catalogs.fleet.snapshot(state).ok();
    let result = troupe_compiler::env_diff::env_diff(
        &serving,
        &new,
        env,
        &nodes,
        state.secrets.clone(),
        fleet,
    );
    let mut doc = serde_json::to_value(&result)?;
    doc["from_version"] = serde_json::json!(from_version);
    doc["to_version"] = serde_json::json!(to_version);
    doc["to"] = serde_json::json!(what);
    Ok(doc)
}
