//! The one call each part of the master makes to raise an event: report
//! intake, the CA service, the code poller and admin socket,
//! orchestration (refusals and release records).

use super::{Event, EventKind};
use crate::state::MasterState;
use troupe_base::error_code::ErrorCode;
use troupe_bastion::deploy_record::DeployRecord;
use troupe_catalog::report::{Report, Status};

/// The typed error code of a command answer's status or a release step's
/// result ([`troupe_events::status_code`]).
pub use troupe_events::status_code;

/// Whether `node`'s last stored run failed (`None`: no run stored).
/// Called before a new report is stored.
pub fn last_run_failed(state: &MasterState, node: &str) -> Option<bool> {
    let r = state.store.report(node, None).ok().flatten()?;
    Some(run_failed(&r))
}

fn run_failed(r: &Report) -> bool {
    let (_, _, failed, skipped) = r.counts();
    failed + skipped > 0
}

/// A report was stored: `run_failed` when it failed and the run before
/// did not (or there was none), `run_recovered` when it did not fail and
/// the run before did.
pub fn report_stored(state: &MasterState, node: &str, before: Option<bool>, r: &Report) {
    let failed = run_failed(r);
    let (_, changed, nfailed, skipped) = r.counts();
    let kind = match (before, failed) {
        (Some(true), true) | (Some(false) | None, false) => return,
        (_, true) => EventKind::RunFailed,
        (Some(true), false) => EventKind::RunRecovered,
    };
    let failing: Vec<String> = r
        .resources
        .iter()
        .filter(|x| x.status == Status::Failed)
        .take(10)
        .map(|x| x.id.to_string())
        .collect();
    let text = match kind {
        EventKind::RunFailed => format!(
            "{node}: run failed ({nfailed} resource(s) failed, {skipped} skipped){}",
            if failing.is_empty() {
                String::new()
            } else {
                format!(": {}", failing.join(", "))
            }
        ),
        _ => format!("{node}: run recovered ({changed} resource(s) changed)"),
    };
    let mut e = Event::new(kind, text);
    if kind == EventKind::RunFailed {
        e = e.code(ErrorCode::Failed);
    }
    state.events.emit(
        e.node(node)
            .environment(r.environment.clone())
            .data(serde_json::json!({
                "run_id": r.run_id,
                "started": r.started,
                "changed": changed,
                "failed": nfailed,
                "skipped": skipped,
                "failed_resources": failing,
                "code_version": r.code_version,
                "from_cache": r.from_cache,
            })),
    );
}

/// A CSR waits for an operator (once per name and hour: agents resubmit).
pub fn csr_pending(state: &MasterState, name: &str, source: &str) {
    if !state.events.first_in(&format!("csr:{name}"), 3600) {
        return;
    }
    state.events.emit(
        Event::new(
            EventKind::CsrPending,
            format!("{name}: certificate request waiting (troupe ca sign {name})"),
        )
        .node(name)
        .data(serde_json::json!({ "source": source })),
    );
}

/// The module tree failed to load.
pub fn code_load_failed(state: &MasterState, error: &str, serving: Option<&str>) {
    let text = match serving {
        Some(v) => format!("module code failed to load; {v} keeps serving"),
        None => "module code failed to load; no catalogs are served until it does".to_string(),
    };
    state.events.emit(
        Event::new(EventKind::CodeLoadFailed, text)
            .code(ErrorCode::CompileFailed)
            .data(serde_json::json!({
                "error": error,
                "serving": serving,
            })),
    );
}

/// Staged code was promoted.
pub fn code_promoted(state: &MasterState, env: &str, version: &str) {
    state.events.emit(
        Event::new(
            EventKind::CodePromoted,
            format!("{env}: code {version} promoted"),
        )
        .environment(env)
        .data(serde_json::json!({ "version": version })),
    );
}

/// A signed command was refused: by the master (`node` None: unknown
/// signer, bad signature, ...) or by an agent (its answer's status:
/// `policy_denied`, `unknown_signer`, ...).
pub fn command_refused(
    state: &MasterState,
    caller: &str,
    action: Option<&str>,
    node: Option<&str>,
    code: &str,
    message: &str,
) {
    let what = action.map_or("a command".to_string(), |a| format!("command {a}"));
    let text = match node {
        Some(n) => format!("{n}: {what} from {caller} refused: {code}: {message}"),
        None => format!("master: {what} from {caller} refused: {code}: {message}"),
    };
    let mut e = Event::new(EventKind::CommandRefused, text)
        .code(status_code(code).unwrap_or(ErrorCode::Unclassified))
        .data(serde_json::json!({
            "caller": caller,
            "action": action,
            "code": code,
            "message": message,
        }));
    if let Some(n) = node {
        e = e.node(n);
    }
    state.events.emit(e);
}

/// Whether an agent's answer status is a refusal (not a failure of the
/// action itself).
pub fn is_refusal(status: &str) -> bool {
    !matches!(status, "ok" | "failed" | "error" | "timeout")
}

/// A release record was stored: its event.
pub fn deploy_record(state: &MasterState, id: &str, by: &str, r: &DeployRecord) {
    let (title, environment) = state.events.deploys.meta(id).unwrap_or_default();
    state.events.emit(troupe_bastion::deploy_log::event_of(
        id,
        by,
        &title,
        environment.as_deref(),
        r,
        |host, step| failed_step_result(state, id, host, step),
    ));
}

/// The result of the last step record of release `id` on `host` named
/// `step` that did not succeed (`failed`, `policy_denied`, `error`, ...).
fn failed_step_result(state: &MasterState, id: &str, host: &str, step: &str) -> Option<String> {
    let log = state.events.deploys.read(id).ok().flatten()?;
    log.entries.iter().rev().find_map(|e| match &e.record {
        DeployRecord::Step {
            host: h,
            step: s,
            result,
            ..
        } if h == host && s == step && result != "ok" => Some(result.clone()),
        _ => None,
    })
}
