//! What the master's event bus holds, for the dashboard: deploy history
//! and live release progress from the release logs the master stores for
//! `troupe deploy` (`DATA/deploys/ID.jsonl`, read through
//! [`crate::events::deploys::DeployStore`]), and the recent fleet events
//! (run failed/recovered, stale, CSR pending, ...: [`crate::events`]).

use super::{ApiError, Params, Web, blocking};
use crate::state::MasterState;
use axum::extract::{Path, Query as QueryParams, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};
use std::sync::Arc;

/// Host-package updates a release plans (every host of every batch of
/// every package).
fn planned(log: &crate::events::deploys::DeployLog) -> usize {
    log.packages
        .iter()
        .map(|p| p.batches.iter().map(Vec::len).sum::<usize>())
        .sum()
}

/// Releases, newest first (summaries plus planned updates for progress).
pub fn list(st: &MasterState, limit: usize) -> Result<Value, ApiError> {
    let store = &st.events.deploys;
    let ids = store
        .ids()
        .map_err(|e| ApiError::internal(anyhow::anyhow!("reading the release logs: {e}")))?;
    let mut out = Vec::new();
    for id in ids.iter().rev().take(limit) {
        match store.read(id) {
            Ok(Some(log)) => {
                let mut v = serde_json::to_value(log.summary()).unwrap_or(Value::Null);
                v["planned"] = planned(&log).into();
                v["completed"] = log.completed.into();
                out.push(v);
            }
            Ok(None) => {}
            Err(e) => return Err(ApiError::internal(anyhow::anyhow!("{e}"))),
        }
    }
    let key = |v: &Value| {
        (
            v["started"].as_str().unwrap_or("").to_owned(),
            v["id"].as_str().unwrap_or("").to_owned(),
        )
    };
    out.sort_by(|a, b| {
        let (a, b) = (key(a), key(b));
        crate::events::deploys::newest_first((&a.0, &a.1), (&b.0, &b.1))
    });
    Ok(json!({"deploys": out}))
}

/// One release's whole log, with `planned` and the summary counts.
pub fn one(st: &MasterState, id: &str) -> Result<Value, ApiError> {
    use crate::events::deploys::DeployError;
    match st.events.deploys.read(id) {
        Ok(Some(log)) => {
            let mut v = serde_json::to_value(&log).unwrap_or(Value::Null);
            v["planned"] = planned(&log).into();
            v["summary"] = serde_json::to_value(log.summary()).unwrap_or(Value::Null);
            Ok(v)
        }
        Ok(None) => Err(ApiError::new(
            StatusCode::NOT_FOUND,
            format!("no release {id:?} is stored on this master"),
        )),
        Err(e @ DeployError::BadId(_)) => Err(ApiError::bad(e.to_string())),
        Err(e) => Err(ApiError::internal(anyhow::anyhow!("{e}"))),
    }
}

/// Release summaries for the live stream, by id, with the log file's
/// length and mtime they were read at.
pub type Cache = std::sync::Mutex<
    std::collections::HashMap<String, (u64, Option<std::time::SystemTime>, Value)>,
>;

/// Releases the live stream follows: the newest.
const LIVE_RELEASES: usize = 10;

/// What the live stream says about releases: the newest
/// [`LIVE_RELEASES`], by id, with their status and progress. A log is
/// read again only when its file changed (length or mtime).
pub fn snapshot(st: &MasterState, cache: &Cache) -> Value {
    let store = &st.events.deploys;
    let Ok(ids) = store.ids() else {
        return json!({});
    };
    let mut cache = cache.lock().unwrap_or_else(|p| p.into_inner());
    let keep: Vec<&String> = ids.iter().rev().take(LIVE_RELEASES).collect();
    cache.retain(|id, _| keep.contains(&id));
    let mut out = serde_json::Map::new();
    for id in keep {
        let meta = std::fs::metadata(store.dir().join(format!("{id}.jsonl"))).ok();
        let (len, mtime) = (
            meta.as_ref().map_or(0, |m| m.len()),
            meta.as_ref().and_then(|m| m.modified().ok()),
        );
        let fresh = cache
            .get(id)
            .is_some_and(|(l, t, _)| *l == len && *t == mtime);
        if !fresh {
            let Ok(Some(log)) = store.read(id) else {
                continue;
            };
            let s = log.summary();
            let v = json!({"status": s.status, "completed": log.completed,
                           "planned": planned(&log), "steps": s.steps,
                           "entries": log.entries.len(), "failed_hosts": s.failed_hosts});
            cache.insert(id.clone(), (len, mtime, v));
        }
        if let Some((_, _, v)) = cache.get(id) {
            out.insert(id.clone(), v.clone());
        }
    }
    Value::Object(out)
}

pub async fn api_list(
    State(web): State<Arc<Web>>,
    QueryParams(params): QueryParams<Params>,
) -> Result<Response, ApiError> {
    let limit = super::limit(&params)?;
    let v = blocking(&web, move |st| list(st, limit)).await?;
    Ok(axum::Json(v).into_response())
}

pub async fn api_one(
    State(web): State<Arc<Web>>,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    let v = blocking(&web, move |st| one(st, &id)).await?;
    Ok(axum::Json(v).into_response())
}

/// `GET /api/v1/fleet-events`: the bus's recent events, newest first.
/// `kind=` (repeatable as a comma list), `node=`, `release=`, `since=SEQ`,
/// `limit=`.
pub async fn api_fleet_events(
    State(web): State<Arc<Web>>,
    QueryParams(params): QueryParams<Params>,
) -> Result<Response, ApiError> {
    let q = fleet_query(&params)?;
    let v = blocking(&web, move |st| Ok(fleet_events(st, &q))).await?;
    Ok(axum::Json(v).into_response())
}

/// The bus query from API parameters (unknown kinds and parameters: 400).
pub fn fleet_query(params: &Params) -> Result<crate::events::EventQuery, ApiError> {
    use crate::events::{EventKind, EventQuery};
    let mut q = EventQuery {
        limit: super::limit(params)?,
        ..EventQuery::default()
    };
    for (k, v) in params {
        match k.as_str() {
            "kind" => {
                for name in v.split(',').map(str::trim).filter(|s| !s.is_empty()) {
                    q.kinds.push(EventKind::parse(name).ok_or_else(|| {
                        ApiError::bad(format!("kind={name}: not an event kind (see docs/api.md)"))
                    })?);
                }
            }
            "node" => q.node = Some(v.clone()),
            "release" => q.release = Some(v.clone()),
            "since" => {
                q.since = Some(v.parse().map_err(|_| {
                    ApiError::bad(format!("since={v}: expected an event sequence number"))
                })?)
            }
            "limit" => {}
            other => {
                return Err(ApiError::bad(format!(
                    "{other}: unknown parameter; use kind, node, release, since or limit"
                )));
            }
        }
    }
    Ok(q)
}

/// Recent fleet events matching `q`, newest first.
pub fn fleet_events(st: &MasterState, q: &crate::events::EventQuery) -> Value {
    let mut v = st.events.recent(q);
    v.reverse();
    json!({"events": v})
}
