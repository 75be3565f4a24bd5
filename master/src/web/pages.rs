//! The HTML pages: minijinja templates embedded in the binary, rendered
//! from the same JSON values the API returns ([`super::data`]). HTML
//! escaping is on for every template (`.html` names).

use super::{ApiError, Params, Web, blocking, data};
use axum::extract::{Path, Query as QueryParams, State};
use axum::http::{StatusCode, header};
use axum::response::{Html, IntoResponse, Response};
use minijinja::Environment;
use serde_json::{Value, json};
use std::sync::Arc;

const TEMPLATES: &[(&str, &str)] = &[
    ("base.html", include_str!("templates/base.html")),
    ("overview.html", include_str!("templates/overview.html")),
    ("nodes.html", include_str!("templates/nodes.html")),
    ("node.html", include_str!("templates/node.html")),
    ("report.html", include_str!("templates/report.html")),
    ("csrs.html", include_str!("templates/csrs.html")),
    (
        "environments.html",
        include_str!("templates/environments.html"),
    ),
    (
        "orchestration.html",
        include_str!("templates/orchestration.html"),
    ),
    ("audit.html", include_str!("templates/audit.html")),
    ("error.html", include_str!("templates/error.html")),
    ("deploys.html", include_str!("templates/deploys.html")),
    ("deploy.html", include_str!("templates/deploy.html")),
];

const CSS: &str = include_str!("static/style.css");
const JS: &str = include_str!("static/app.js");

/// The compiled templates.
pub struct Pages {
    env: Environment<'static>,
}

impl Pages {
    pub fn new() -> anyhow::Result<Pages> {
        let mut env = Environment::new();
        env.set_undefined_behavior(minijinja::UndefinedBehavior::Chainable);
        for (name, src) in TEMPLATES {
            env.add_template(name, src)
                .map_err(|e| anyhow::anyhow!("dashboard template {name}: {e}"))?;
        }
        Ok(Pages { env })
    }

    fn render(&self, name: &str, ctx: Value) -> Response {
        match self
            .env
            .get_template(name)
            .and_then(|t| t.render(minijinja::Value::from(minijinja::value::Serde(&ctx))))
        {
            Ok(html) => Html(html).into_response(),
            Err(e) => {
                tracing::error!("dashboard: rendering {name}: {e:#}");
                (
                    StatusCode::INTERNAL_SERVER_ERROR,
                    format!("could not render the page: {e}\n"),
                )
                    .into_response()
            }
        }
    }

    fn error(&self, e: ApiError) -> Response {
        let mut r = self.render(
            "error.html",
            json!({"status": e.status.as_u16(), "message": e.message, "page": "error"}),
        );
        *r.status_mut() = e.status;
        r
    }
}

async fn page(
    web: Arc<Web>,
    name: &'static str,
    f: impl FnOnce(&crate::state::MasterState) -> Result<Value, ApiError> + Send + 'static,
) -> Response {
    match blocking(&web, f).await {
        Ok(ctx) => web.pages.render(name, ctx),
        Err(e) => web.pages.error(e),
    }
}

pub async fn overview(State(web): State<Arc<Web>>) -> Response {
    page(web, "overview.html", |st| {
        let o = data::overview(st).map_err(ApiError::internal)?;
        let failing = data::events(
            st,
            &super::query::Query::parse("status = failed", &data::EVENT_SCHEMA)
                .map_err(ApiError::bad)?,
            true,
            20,
        )
        .map_err(ApiError::internal)?;
        let recent = super::deploys::fleet_events(
            st,
            &crate::events::EventQuery {
                limit: 15,
                ..Default::default()
            },
        );
        Ok(json!({"page": "overview", "o": o, "failing": failing, "recent": recent["events"]}))
    })
    .await
}

pub async fn nodes(
    State(web): State<Arc<Web>>,
    QueryParams(params): QueryParams<Params>,
) -> Response {
    page(web, "nodes.html", move |st| {
        let all = data::node_rows(st, false).map_err(ApiError::internal)?;
        let mut roles: Vec<String> = all.iter().map(|n| n.rec.role.clone()).collect();
        roles.sort();
        roles.dedup();
        let mut envs: Vec<String> = all.iter().map(|n| n.rec.environment.clone()).collect();
        envs.sort();
        envs.dedup();
        // Empty form fields mean "any".
        let mut p = params.clone();
        p.retain(|_, v| !v.is_empty());
        // `fact=KEY=VALUE` from the form is a `fact.KEY` filter.
        if let Some(f) = p.remove("fact") {
            let Some((k, v)) = f.split_once('=') else {
                return Err(ApiError::bad(format!(
                    "fact filter {f:?}: write it as KEY=VALUE, e.g. os.family=Debian"
                )));
            };
            p.insert(format!("fact.{}", k.trim()), v.trim().to_owned());
        }
        let (rows, error) = match super::select_nodes(st, &p) {
            Ok(r) => (r, None),
            Err(e) => (Vec::new(), Some(e.message)),
        };
        let sort = p.get("sort").cloned().unwrap_or_else(|| "name".into());
        let order = p.get("order").cloned().unwrap_or_else(|| "asc".into());
        // Links of the column headers keep the filters.
        let keep: Vec<(String, String)> = params
            .iter()
            .filter(|(k, v)| k.as_str() != "sort" && k.as_str() != "order" && !v.is_empty())
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        let base = keep
            .iter()
            .map(|(k, v)| format!("{}={}", enc(k), enc(v)))
            .collect::<Vec<_>>()
            .join("&");
        Ok(json!({
            "page": "nodes",
            "nodes": rows.iter().map(|r| r.json()).collect::<Vec<_>>(),
            "roles": roles, "environments": envs,
            "statuses": ["changed", "failed", "unchanged", "unreported", "disabled"],
            "params": params, "error": error,
            "sort": sort, "order": order, "base": base,
        }))
    })
    .await
}

/// Percent-encodes a query string component.
fn enc(s: &str) -> String {
    let mut out = String::new();
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-_.~".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

pub async fn node(State(web): State<Arc<Web>>, Path(host): Path<String>) -> Response {
    page(web, "node.html", move |st| {
        let n = data::node(st, &host)
            .map_err(ApiError::internal)?
            .ok_or_else(|| super::no_node(&host))?;
        Ok(json!({"page": "nodes", "n": n}))
    })
    .await
}

pub async fn report(
    State(web): State<Arc<Web>>,
    Path((host, run)): Path<(String, String)>,
) -> Response {
    page(web, "report.html", move |st| {
        let r = data::report(st, &host, &run)
            .map_err(ApiError::internal)?
            .ok_or_else(|| {
                ApiError::new(
                    StatusCode::NOT_FOUND,
                    format!("no report {run:?} for {host:?}"),
                )
            })?;
        Ok(json!({"page": "nodes", "host": host, "r": r}))
    })
    .await
}

pub async fn csrs(State(web): State<Arc<Web>>) -> Response {
    page(web, "csrs.html", |st| {
        let c = data::csrs(st).map_err(ApiError::internal)?;
        Ok(json!({"page": "csrs", "c": c}))
    })
    .await
}

pub async fn environments(State(web): State<Arc<Web>>) -> Response {
    page(web, "environments.html", |st| {
        Ok(json!({"page": "environments", "e": data::environments(st)}))
    })
    .await
}

pub async fn orchestration(State(web): State<Arc<Web>>) -> Response {
    page(web, "orchestration.html", |st| {
        Ok(json!({"page": "orchestration", "h": data::orchestration(st, 200)}))
    })
    .await
}

pub async fn audit(State(web): State<Arc<Web>>) -> Response {
    page(web, "audit.html", |st| {
        Ok(json!({"page": "audit", "a": data::audit(st, 20)}))
    })
    .await
}

pub async fn deploys(State(web): State<Arc<Web>>) -> Response {
    page(web, "deploys.html", |st| {
        Ok(json!({"page": "deploys", "d": super::deploys::list(st, 200)?}))
    })
    .await
}

pub async fn deploy(State(web): State<Arc<Web>>, Path(id): Path<String>) -> Response {
    page(web, "deploy.html", move |st| {
        Ok(json!({"page": "deploys", "r": super::deploys::one(st, &id)?}))
    })
    .await
}

pub async fn css() -> Response {
    ([(header::CONTENT_TYPE, "text/css; charset=utf-8")], CSS).into_response()
}

pub async fn js() -> Response {
    (
        [(header::CONTENT_TYPE, "text/javascript; charset=utf-8")],
        JS,
    )
        .into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_template_compiles_and_escapes() {
        let p = Pages::new().unwrap();
        let t = p.env.get_template("error.html").unwrap();
        let html = t
            .render(minijinja::value::Serde(
                json!({"status": 400, "message": "<script>x</script>"}),
            ))
            .unwrap();
        assert!(html.contains("&lt;script&gt;x&lt;"), "{html}");
        assert!(!html.contains("<script>x"), "{html}");
        assert_eq!(enc("os.family=Debian 12"), "os.family%3DDebian%2012");
    }

    #[test]
    fn git_environments_show_their_commits() {
        let p = Pages::new().unwrap();
        let t = p.env.get_template("environments.html").unwrap();
        let (a, b) = ("a".repeat(40), "b".repeat(40));
        let html = t
            .render(minijinja::value::Serde(
                json!({"page": "environments", "e": {
                "modules": "git+file:///srv/m.git", "generation": 3,
                "environments": [
                    {"name": "production", "serving": "v1", "staged": "v2", "held": true,
                     "commit": a, "staged_commit": b},
                    {"name": "testing", "serving": "v3", "held": false},
                ]}}),
            ))
            .unwrap();
        assert!(
            html.contains(&format!("title=\"{a}\">{}</code>", &a[..12])),
            "{html}"
        );
        assert!(
            html.contains(&format!("title=\"{b}\">{}</code>", &b[..12])),
            "{html}"
        );
        assert!(html.contains("troupe env promote production"), "{html}");
        assert_eq!(html.matches("class=\"commit\"").count(), 2, "{html}");
    }
}
