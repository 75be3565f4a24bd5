//! Release manifests (`RELEASE.toml`) and the rolling-release planner.
//!
//! Pure logic: parsing, validation, the per-host step sequence and a
//! [`Rollout`] state machine that says which batch runs next and when to
//! stop. Executing steps (sending signed commands, waiting for results) is
//! the CLI's job.
//!
//! ```toml
//! title = "nginx 1.24.0 with openssl 3.0.11"
//!
//! [lb]                       # optional: drain/restore in HAProxy
//! backend = "be_web"
//!
//! [health]                   # optional: checked after start, before restore
//! http = "http://127.0.0.1:80/healthz"   # this host only (health.http)
//! expect_status = 200
//! timeout_secs = 5           # per attempt
//! retries = 3                # extra attempts
//! interval_secs = 2          # between attempts
//!
//! [[package]]
//! name = "openssl"
//! version = "3.0.11-1~deb12u2"
//! services = ["nginx"]       # default: [name]; [] for none
//!
//! [[package]]
//! name = "nginx"
//! version = "1.24.0-1"
//! [package.health]           # this package's own check (replaces [health])
//! action = "nginx.healthcheck"   # a module-declared action (its exit code)
//! retries = 5
//! ```
//!
//! A health check is one of `http` (built-in `health.http`: GET on the
//! host itself, expecting `expect_status`), `tcp` (built-in `health.tcp`: a
//! port on 127.0.0.1 accepts connections) or `action` (a module-declared
//! action without arguments; its `ok_exit` codes say healthy). Each attempt
//! is its own signed command; the check fails after `1 + retries` failed
//! attempts.
//!
//! For each package in order, hosts go batch by batch through: enter
//! maintenance, drain, stop services, update to the version, verify the
//! version, start services, check health, restore, leave maintenance. A host
//! that fails a step stops there (it stays drained and in maintenance); the
//! release stops once more hosts failed than the failure threshold allows
//! (0 by default: the first failure stops it).

use std::collections::BTreeMap;
use std::collections::BTreeSet;

use troupe_command::envelope::{ArgValue, clip};
use troupe_command::registry::{
    check_identifier, check_package_name, check_service_name, check_version,
};

/// Most packages in one release.
pub const MAX_PACKAGES: usize = 256;

/// A parsed, validated release manifest.
#[derive(Debug, Clone, PartialEq, Eq, serde::Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields)]
pub struct Release {
    pub title: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lb: Option<LoadBalancer>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub health: Option<HealthCheck>,
    #[serde(rename = "package")]
    pub packages: Vec<PackageRelease>,
}

/// HAProxy backend the hosts are drained from.
#[derive(Debug, Clone, PartialEq, Eq, serde::Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields)]
pub struct LoadBalancer {
    pub backend: String,
}

/// How to check a host's health after an update.
#[derive(Debug, Clone, PartialEq, Eq, serde::Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields)]
pub struct HealthCheck {
    /// An HTTP(S) URL fetched on the host.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub http: Option<String>,
    /// Expected HTTP status (default 200).
    #[serde(default = "default_status")]
    pub expect_status: u16,
    /// A local TCP port that must accept connections.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tcp: Option<u16>,
    /// A module-declared action (no arguments) whose success means healthy.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub action: Option<String>,
    /// Per attempt (default 5, 1..=300).
    #[serde(default = "default_timeout")]
    pub timeout_secs: u32,
    /// Extra attempts (default 3, 0..=20).
    #[serde(default = "default_retries")]
    pub retries: u32,
    /// Pause between attempts (default 2, 0..=60).
    #[serde(default = "default_interval")]
    pub interval_secs: u32,
}

impl HealthCheck {
    fn validate(&self, at: &str) -> Result<(), ReleaseError> {
        let set = [
            self.http.is_some(),
            self.tcp.is_some(),
            self.action.is_some(),
        ];
        match set.iter().filter(|b| **b).count() {
            0 => return Err(invalid(format!("{at}: set `http`, `tcp` or `action`"))),
            1 => {}
            _ => {
                return Err(invalid(format!(
                    "{at}: set only one of `http`, `tcp` and `action`"
                )));
            }
        }
        if let Some(url) = &self.http {
            troupe_command::registry::check_local_url(url)
                .map_err(|e| invalid(format!("{at}.http: {e}")))?;
        }
        if self.tcp == Some(0) {
            return Err(invalid(format!("{at}.tcp: port 0 is not valid")));
        }
        if let Some(a) = &self.action
            && !(troupe_command::envelope::is_action_name(a) && a.contains('.'))
        {
            return Err(invalid(format!(
                "{at}.action: {:?} is not a module action name (`module.action`)",
                clip(a)
            )));
        }
        if !(100..=599).contains(&self.expect_status) {
            return Err(invalid(format!("{at}.expect_status must be 100..=599")));
        }
        if !(1..=300).contains(&self.timeout_secs) {
            return Err(invalid(format!("{at}.timeout_secs must be 1..=300")));
        }
        if self.retries > 20 {
            return Err(invalid(format!("{at}.retries must be 0..=20")));
        }
        if self.interval_secs > 60 {
            return Err(invalid(format!("{at}.interval_secs must be 0..=60")));
        }
        Ok(())
    }

    /// The action and arguments of one attempt.
    pub fn action(&self) -> (String, BTreeMap<String, ArgValue>) {
        let mut a = BTreeMap::new();
        if let Some(url) = &self.http {
            a.insert("url".into(), ArgValue::Str(url.clone()));
            a.insert(
                "expect_status".into(),
                ArgValue::Int(i64::from(self.expect_status)),
            );
            a.insert(
                "timeout_secs".into(),
                ArgValue::Int(i64::from(self.timeout_secs)),
            );
            ("health.http".into(), a)
        } else if let Some(port) = self.tcp {
            a.insert("port".into(), ArgValue::Int(i64::from(port)));
            a.insert(
                "timeout_secs".into(),
                ArgValue::Int(i64::from(self.timeout_secs)),
            );
            ("health.tcp".into(), a)
        } else {
            (self.action.clone().unwrap_or_default(), a)
        }
    }

    /// Attempts in all (`1 + retries`).
    pub fn attempts(&self) -> u32 {
        1 + self.retries
    }

    /// A one-line description (`GET http://... expecting 200`).
    pub fn describe(&self) -> String {
        if let Some(url) = &self.http {
            format!("GET {url} expecting {}", self.expect_status)
        } else if let Some(p) = self.tcp {
            format!("TCP port {p} on 127.0.0.1")
        } else {
            format!("action {}", self.action.as_deref().unwrap_or(""))
        }
    }
}

fn default_status() -> u16 {
    200
}
fn default_timeout() -> u32 {
    5
}
fn default_retries() -> u32 {
    3
}
fn default_interval() -> u32 {
    2
}

/// One package of the release.
#[derive(Debug, Clone, PartialEq, Eq, serde::Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields)]
pub struct PackageRelease {
    pub name: String,
    pub version: String,
    /// Services stopped before and started after the update (default: the
    /// package name).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub services: Option<Vec<String>>,
    /// This package's health check (default: the release's `[health]`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub health: Option<HealthCheck>,
}

impl PackageRelease {
    /// The services to stop/start.
    pub fn services(&self) -> Vec<String> {
        self.services
            .clone()
            .unwrap_or_else(|| vec![self.name.clone()])
    }
}

/// Why a manifest or plan is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ReleaseError {
    #[error("cannot parse release manifest: {0}")]
    Parse(String),
    #[error("release manifest: {0}")]
    Invalid(String),
    #[error("release plan: {0}")]
    Plan(String),
}

fn invalid(s: impl Into<String>) -> ReleaseError {
    ReleaseError::Invalid(s.into())
}

impl Release {
    /// Parses and validates a `RELEASE.toml`.
    pub fn from_toml(text: &str) -> Result<Self, ReleaseError> {
        let r: Release = toml::from_str(text).map_err(|e| ReleaseError::Parse(e.to_string()))?;
        r.validate()?;
        Ok(r)
    }

    /// Checks every field; errors name the package and the field.
    pub fn validate(&self) -> Result<(), ReleaseError> {
        let t = self.title.trim();
        if t.is_empty()
            || self.title.chars().count() > 200
            || self.title.chars().any(char::is_control)
        {
            return Err(invalid(
                "title must be 1..=200 characters without control characters",
            ));
        }
        if self.packages.is_empty() {
            return Err(invalid("no [[package]] listed"));
        }
        if self.packages.len() > MAX_PACKAGES {
            return Err(invalid(format!("more than {MAX_PACKAGES} packages")));
        }
        let mut seen = BTreeSet::new();
        for (i, p) in self.packages.iter().enumerate() {
            let at = format!("package #{} ({})", i + 1, clip(&p.name));
            check_package_name(&p.name).map_err(|e| invalid(format!("{at}: name: {e}")))?;
            check_version(&p.version).map_err(|e| invalid(format!("{at}: version: {e}")))?;
            if !seen.insert(p.name.as_str()) {
                return Err(invalid(format!("{at}: listed twice")));
            }
            for s in p.services.iter().flatten() {
                check_service_name(s).map_err(|e| invalid(format!("{at}: services: {e}")))?;
            }
            if let Some(h) = &p.health {
                h.validate(&format!("{at}: health"))?;
            }
        }
        if let Some(lb) = &self.lb {
            check_identifier(&lb.backend).map_err(|e| invalid(format!("lb.backend: {e}")))?;
        }
        if let Some(h) = &self.health {
            h.validate("health")?;
        }
        Ok(())
    }
}

/// One step on one host.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
#[serde(tag = "step", rename_all = "snake_case")]
pub enum Step {
    EnterMaintenance { message: String },
    Drain { backend: String },
    StopService { service: String },
    UpdatePackage { package: String, version: String },
    VerifyVersion { package: String, version: String },
    StartService { service: String },
    CheckHealth { check: HealthCheck },
    Restore { backend: String },
    LeaveMaintenance,
}

impl Step {
    /// The action and arguments that perform this step (`VerifyVersion` is
    /// a `package.status` whose answer the executor compares; `CheckHealth`
    /// is one attempt, repeated by the executor as the check says).
    pub fn action(&self) -> Option<(String, BTreeMap<String, ArgValue>)> {
        self.builtin()
            .map(|(a, args)| (a.to_string(), args))
            .or_else(|| match self {
                Step::CheckHealth { check } => Some(check.action()),
                _ => None,
            })
    }

    fn builtin(&self) -> Option<(&'static str, BTreeMap<String, ArgValue>)> {
        let one = |k: &str, v: &str| -> BTreeMap<String, ArgValue> {
            [(k.to_string(), ArgValue::Str(v.to_string()))].into()
        };
        match self {
            Step::EnterMaintenance { message } => Some(("maintenance.on", one("message", message))),
            Step::Drain { backend } => Some(("lb.drain", one("backend", backend))),
            Step::StopService { service } => Some(("service.stop", one("name", service))),
            Step::UpdatePackage { package, version } => {
                let mut a = one("name", package);
                a.insert("version".into(), ArgValue::Str(version.clone()));
                Some(("package.update", a))
            }
            Step::VerifyVersion { package, .. } => Some(("package.status", one("name", package))),
            Step::StartService { service } => Some(("service.start", one("name", service))),
            Step::CheckHealth { .. } => None,
            Step::Restore { backend } => Some(("lb.restore", one("backend", backend))),
            Step::LeaveMaintenance => Some(("maintenance.off", BTreeMap::new())),
        }
    }
}

/// The steps of one host for one package.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct HostSteps {
    pub host: String,
    pub steps: Vec<Step>,
}

/// One package rolled out over all hosts, batch by batch.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Phase {
    pub package: String,
    pub version: String,
    /// Batches of host names, in order.
    pub batches: Vec<Vec<String>>,
}

/// How to roll out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PlanOptions {
    /// Hosts per batch (at least 1).
    pub batch_size: usize,
    /// Failed hosts tolerated before stopping (0: stop at the first failure).
    pub failure_threshold: usize,
}

impl Default for PlanOptions {
    fn default() -> Self {
        Self {
            batch_size: 1,
            failure_threshold: 0,
        }
    }
}

/// A complete plan: per package, batches of hosts.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Plan {
    pub title: String,
    pub phases: Vec<Phase>,
    #[serde(skip)]
    release: Release,
    #[serde(skip)]
    options: PlanOptions,
}

/// Builds the plan for `hosts` (in the given order).
pub fn plan(
    release: &Release,
    hosts: &[String],
    options: PlanOptions,
) -> Result<Plan, ReleaseError> {
    release.validate()?;
    if options.batch_size == 0 {
        return Err(ReleaseError::Plan("batch size must be at least 1".into()));
    }
    if hosts.is_empty() {
        return Err(ReleaseError::Plan("no hosts matched".into()));
    }
    let mut seen = BTreeSet::new();
    for h in hosts {
        let ok = !h.is_empty()
            && h.len() <= 253
            && h.chars()
                .all(|c| c.is_ascii_alphanumeric() || ".-".contains(c));
        if !ok {
            return Err(ReleaseError::Plan(format!(
                "invalid host name {:?}",
                clip(h)
            )));
        }
        if !seen.insert(h.as_str()) {
            return Err(ReleaseError::Plan(format!("host {h} listed twice")));
        }
    }
    let batches: Vec<Vec<String>> = hosts
        .chunks(options.batch_size)
        .map(<[String]>::to_vec)
        .collect();
    let phases = release
        .packages
        .iter()
        .map(|p| Phase {
            package: p.name.clone(),
            version: p.version.clone(),
            batches: batches.clone(),
        })
        .collect();
    Ok(Plan {
        title: release.title.clone(),
        phases,
        release: release.clone(),
        options,
    })
}

impl Plan {
    /// The step sequence of `host` for package number `phase`.
    pub fn steps(&self, phase: usize, host: &str) -> Option<HostSteps> {
        let p = self.release.packages.get(phase)?;
        let message = format!(
            "release: {} ({} {})",
            clip(&self.release.title),
            p.name,
            p.version
        );
        let mut steps = vec![Step::EnterMaintenance { message }];
        if let Some(lb) = &self.release.lb {
            steps.push(Step::Drain {
                backend: lb.backend.clone(),
            });
        }
        for s in p.services() {
            steps.push(Step::StopService { service: s });
        }
        steps.push(Step::UpdatePackage {
            package: p.name.clone(),
            version: p.version.clone(),
        });
        steps.push(Step::VerifyVersion {
            package: p.name.clone(),
            version: p.version.clone(),
        });
        for s in p.services() {
            steps.push(Step::StartService { service: s });
        }
        if let Some(h) = p.health.as_ref().or(self.release.health.as_ref()) {
            steps.push(Step::CheckHealth { check: h.clone() });
        }
        if let Some(lb) = &self.release.lb {
            steps.push(Step::Restore {
                backend: lb.backend.clone(),
            });
        }
        steps.push(Step::LeaveMaintenance);
        Some(HostSteps {
            host: host.to_string(),
            steps,
        })
    }

    /// Starts executing this plan.
    pub fn rollout(&self) -> Rollout {
        Rollout {
            plan: self.clone(),
            phase: 0,
            batch: 0,
            failed: BTreeMap::new(),
            done: 0,
            stopped: None,
        }
    }
}

/// The outcome of one host's batch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HostOutcome {
    /// Every step succeeded.
    Ok,
    /// Step number `step` (0-based) failed; later steps were not run, so the
    /// host stays drained and in maintenance.
    Failed { step: usize, error: String },
}

/// A failed host.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Failure {
    pub host: String,
    pub package: String,
    pub step: Option<Step>,
    pub error: String,
}

/// The next thing to do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Next {
    /// Run these hosts' steps (package phase `phase`).
    Batch { phase: usize, hosts: Vec<HostSteps> },
    /// Everything ran.
    Done,
    /// Stopped: too many failures.
    Stopped { failures: Vec<Failure> },
}

/// The rolling-release state machine: ask [`Rollout::next_batch`], run the batch,
/// report with [`Rollout::record`], repeat.
#[derive(Debug, Clone)]
pub struct Rollout {
    plan: Plan,
    phase: usize,
    batch: usize,
    failed: BTreeMap<String, Failure>,
    done: usize,
    stopped: Option<Vec<Failure>>,
}

impl Rollout {
    /// The next batch, or the end. Hosts that already failed are skipped in
    /// later batches and packages.
    pub fn next_batch(&mut self) -> Next {
        if let Some(f) = &self.stopped {
            return Next::Stopped {
                failures: f.clone(),
            };
        }
        loop {
            let Some(phase) = self.plan.phases.get(self.phase) else {
                return Next::Done;
            };
            let Some(batch) = phase.batches.get(self.batch) else {
                self.phase += 1;
                self.batch = 0;
                continue;
            };
            let hosts: Vec<HostSteps> = batch
                .iter()
                .filter(|h| !self.failed.contains_key(*h))
                .filter_map(|h| self.plan.steps(self.phase, h))
                .collect();
            if hosts.is_empty() {
                self.batch += 1;
                continue;
            }
            return Next::Batch {
                phase: self.phase,
                hosts,
            };
        }
    }

    /// Records the outcome of the batch returned by the last [`Rollout::next_batch`]
    /// and advances. Hosts of that batch missing from `outcomes` count as
    /// failed (no answer).
    pub fn record(&mut self, outcomes: &BTreeMap<String, HostOutcome>) -> Next {
        let Next::Batch { phase, hosts } = self.next_batch() else {
            return self.next_batch();
        };
        let package = self.plan.phases[phase].package.clone();
        for hs in &hosts {
            let failure = match outcomes.get(&hs.host) {
                Some(HostOutcome::Ok) => {
                    self.done += 1;
                    None
                }
                Some(HostOutcome::Failed { step, error }) => Some(Failure {
                    host: hs.host.clone(),
                    package: package.clone(),
                    step: hs.steps.get(*step).cloned(),
                    error: error.clone(),
                }),
                None => Some(Failure {
                    host: hs.host.clone(),
                    package: package.clone(),
                    step: None,
                    error: "no answer".into(),
                }),
            };
            if let Some(f) = failure {
                self.failed.insert(hs.host.clone(), f);
            }
        }
        self.batch += 1;
        if self.failed.len() > self.plan.options.failure_threshold {
            self.stopped = Some(self.failed.values().cloned().collect());
        }
        self.next_batch()
    }

    /// Failures so far.
    pub fn failures(&self) -> Vec<Failure> {
        self.failed.values().cloned().collect()
    }

    /// Host-package updates that completed.
    pub fn completed(&self) -> usize {
        self.done
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use troupe_command::registry::Registry;

    const MANIFEST: &str = r#"
        title = "nginx 1.24"
        [lb]
        backend = "be_web"
        [health]
        http = "http://127.0.0.1:80/healthz"
        [[package]]
        name = "openssl"
        version = "3.0.11-1~deb12u2"
        services = ["nginx"]
        [[package]]
        name = "nginx"
        version = "1.24.0-1"
    "#;

    fn hosts(n: usize) -> Vec<String> {
        (1..=n).map(|i| format!("web-{i}")).collect()
    }

    #[test]
    fn parses_and_orders_steps() {
        let r = Release::from_toml(MANIFEST).unwrap();
        assert_eq!(r.packages.len(), 2);
        assert_eq!(r.health.as_ref().unwrap().expect_status, 200);
        let p = plan(&r, &hosts(3), PlanOptions::default()).unwrap();
        assert_eq!(p.phases.len(), 2);
        assert_eq!(
            p.phases[0].batches,
            vec![
                vec!["web-1".to_string()],
                vec!["web-2".into()],
                vec!["web-3".into()]
            ]
        );
        let s = p.steps(1, "web-1").unwrap().steps;
        let names: Vec<&str> = s
            .iter()
            .map(|st| match st {
                Step::EnterMaintenance { .. } => "maint-on",
                Step::Drain { .. } => "drain",
                Step::StopService { .. } => "stop",
                Step::UpdatePackage { .. } => "update",
                Step::VerifyVersion { .. } => "verify",
                Step::StartService { .. } => "start",
                Step::CheckHealth { .. } => "health",
                Step::Restore { .. } => "restore",
                Step::LeaveMaintenance => "maint-off",
            })
            .collect();
        assert_eq!(
            names,
            [
                "maint-on",
                "drain",
                "stop",
                "update",
                "verify",
                "start",
                "health",
                "restore",
                "maint-off"
            ]
        );
        assert_eq!(
            s[3],
            Step::UpdatePackage {
                package: "nginx".into(),
                version: "1.24.0-1".into()
            }
        );
        assert_eq!(
            p.steps(0, "web-1").unwrap().steps[2],
            Step::StopService {
                service: "nginx".into()
            }
        );
    }

    #[test]
    fn every_step_action_passes_the_registry() {
        let r = Release::from_toml(MANIFEST).unwrap();
        let p = plan(&r, &hosts(2), PlanOptions::default()).unwrap();
        let reg = Registry::builtin();
        for phase in 0..2 {
            for st in p.steps(phase, "web-1").unwrap().steps {
                let (action, args) = st.action().unwrap();
                reg.get(&action).unwrap().check_args(&args).unwrap();
            }
        }
    }

    #[test]
    fn without_lb_or_health_those_steps_are_left_out() {
        let r = Release::from_toml(
            "title = \"t\"\n[[package]]\nname = \"libfoo1\"\nversion = \"1.0\"\nservices = []\n",
        )
        .unwrap();
        let p = plan(&r, &hosts(1), PlanOptions::default()).unwrap();
        let s = p.steps(0, "web-1").unwrap().steps;
        assert_eq!(s.len(), 4);
        assert!(matches!(s[1], Step::UpdatePackage { .. }));
    }

    #[test]
    fn per_package_health_replaces_the_release_one() {
        let r = Release::from_toml(
            r#"
            title = "t"
            [health]
            tcp = 5432
            [[package]]
            name = "libpq5"
            version = "15.1"
            services = []
            [[package]]
            name = "nginx"
            version = "1.24.0-1"
            [package.health]
            http = "http://127.0.0.1:8080/healthz"
            expect_status = 204
            retries = 0
            "#,
        )
        .unwrap();
        let p = plan(&r, &hosts(1), PlanOptions::default()).unwrap();
        let health = |phase| {
            p.steps(phase, "web-1")
                .unwrap()
                .steps
                .into_iter()
                .find_map(|s| match s {
                    Step::CheckHealth { check } => Some(check),
                    _ => None,
                })
                .unwrap()
        };
        let (a, args) = health(0).action();
        assert_eq!(a, "health.tcp");
        assert_eq!(args["port"], ArgValue::Int(5432));
        let h = health(1);
        assert_eq!(h.attempts(), 1);
        let (a, args) = h.action();
        assert_eq!(a, "health.http");
        assert_eq!(args["expect_status"], ArgValue::Int(204));
        Registry::builtin()
            .get(&a)
            .unwrap()
            .check_args(&args)
            .unwrap();
        let r = Release::from_toml(
            "title = \"t\"\n[health]\naction = \"app.ready\"\n[[package]]\nname = \"app\"\nversion = \"2\"\n",
        )
        .unwrap();
        let h = r.health.unwrap();
        assert_eq!(h.action(), ("app.ready".to_string(), BTreeMap::new()));
        assert_eq!(h.attempts(), 4);
    }

    #[test]
    fn manifest_refusals() {
        let cases = [
            ("", "parse"),
            ("title = \"t\"\n", "parse"),
            ("title = \"t\"\npackage = []\n", "no [[package]]"),
            (
                "title = \"\"\n[[package]]\nname = \"nginx\"\nversion = \"1\"\n",
                "title",
            ),
            (
                "title = \"t\"\n[[package]]\nname = \"nginx; rm -rf /\"\nversion = \"1\"\n",
                "name",
            ),
            (
                "title = \"t\"\n[[package]]\nname = \"nginx\"\nversion = \"latest\"\n",
                "version",
            ),
            (
                "title = \"t\"\n[[package]]\nname = \"nginx\"\nversion = \"1\"\n[[package]]\nname = \"nginx\"\nversion = \"2\"\n",
                "twice",
            ),
            (
                "title = \"t\"\n[[package]]\nname = \"nginx\"\nversion = \"1\"\nservices = [\"a b\"]\n",
                "services",
            ),
            (
                "title = \"t\"\n[[package]]\nname = \"nginx\"\nversion = \"1\"\nsevice = \"x\"\n",
                "parse",
            ),
            (
                "title = \"t\"\n[health]\nexpect_status = 200\n[[package]]\nname = \"nginx\"\nversion = \"1\"\n",
                "health",
            ),
            (
                "title = \"t\"\n[health]\nhttp = \"ftp://x\"\n[[package]]\nname = \"nginx\"\nversion = \"1\"\n",
                "http",
            ),
            (
                "title = \"t\"\n[health]\nhttp = \"http://10.1.2.3/\"\n[[package]]\nname = \"nginx\"\nversion = \"1\"\n",
                "host must be localhost",
            ),
            (
                "title = \"t\"\n[health]\ntcp = 80\naction = \"nginx.check\"\n[[package]]\nname = \"nginx\"\nversion = \"1\"\n",
                "only one",
            ),
            (
                "title = \"t\"\n[[package]]\nname = \"nginx\"\nversion = \"1\"\n[package.health]\naction = \"rm -rf\"\n",
                "package #1 (nginx): health.action",
            ),
            (
                "title = \"t\"\n[[package]]\nname = \"nginx\"\nversion = \"1\"\n[package.health]\ntcp = 80\ninterval_secs = 61\n",
                "interval_secs",
            ),
            (
                "title = \"t\"\n[health]\ntcp = 80\ntimeout_secs = 0\n[[package]]\nname = \"nginx\"\nversion = \"1\"\n",
                "timeout",
            ),
            (
                "title = \"t\"\n[lb]\nbackend = \"be web\"\n[[package]]\nname = \"nginx\"\nversion = \"1\"\n",
                "lb.backend",
            ),
        ];
        for (text, want) in cases {
            let e = Release::from_toml(text).unwrap_err().to_string();
            assert!(e.contains(want), "{text:?}: {e}");
        }
    }

    #[test]
    fn plan_refusals() {
        let r = Release::from_toml(MANIFEST).unwrap();
        assert!(plan(&r, &[], PlanOptions::default()).is_err());
        assert!(
            plan(
                &r,
                &hosts(2),
                PlanOptions {
                    batch_size: 0,
                    failure_threshold: 0
                }
            )
            .is_err()
        );
        assert!(plan(&r, &["a".into(), "a".into()], PlanOptions::default()).is_err());
        assert!(plan(&r, &["a;b".into()], PlanOptions::default()).is_err());
    }

    fn ok_all(hosts: &[HostSteps]) -> BTreeMap<String, HostOutcome> {
        hosts
            .iter()
            .map(|h| (h.host.clone(), HostOutcome::Ok))
            .collect()
    }

    #[test]
    fn rollout_completes_batch_by_batch() {
        let r = Release::from_toml(MANIFEST).unwrap();
        let p = plan(
            &r,
            &hosts(5),
            PlanOptions {
                batch_size: 2,
                failure_threshold: 0,
            },
        )
        .unwrap();
        let mut ro = p.rollout();
        let mut seen = Vec::new();
        let mut next = ro.next_batch();
        while let Next::Batch { phase, hosts } = next {
            seen.push((
                phase,
                hosts.iter().map(|h| h.host.clone()).collect::<Vec<_>>(),
            ));
            next = ro.record(&ok_all(&hosts));
        }
        assert_eq!(next, Next::Done);
        assert_eq!(seen.len(), 6);
        assert_eq!(seen[0], (0, vec!["web-1".to_string(), "web-2".to_string()]));
        assert_eq!(seen[2], (0, vec!["web-5".to_string()]));
        assert_eq!(seen[3].0, 1);
        assert_eq!(ro.completed(), 10);
    }

    #[test]
    fn rollout_stops_at_the_failed_second_host() {
        let r = Release::from_toml(MANIFEST).unwrap();
        let p = plan(&r, &hosts(4), PlanOptions::default()).unwrap();
        let mut ro = p.rollout();
        let Next::Batch { hosts: b1, .. } = ro.next_batch() else {
            panic!()
        };
        assert_eq!(b1[0].host, "web-1");
        let Next::Batch { hosts: b2, .. } = ro.record(&ok_all(&b1)) else {
            panic!()
        };
        assert_eq!(b2[0].host, "web-2");
        let fail: BTreeMap<_, _> = [(
            "web-2".to_string(),
            HostOutcome::Failed {
                step: 4,
                error: "version is 3.0.9".into(),
            },
        )]
        .into();
        let Next::Stopped { failures } = ro.record(&fail) else {
            panic!()
        };
        assert_eq!(failures.len(), 1);
        assert_eq!(failures[0].host, "web-2");
        assert_eq!(failures[0].package, "openssl");
        assert!(matches!(failures[0].step, Some(Step::VerifyVersion { .. })));
        // It stays stopped; web-3 never runs.
        assert!(matches!(ro.next_batch(), Next::Stopped { .. }));
        assert_eq!(ro.completed(), 1);
    }

    #[test]
    fn rollout_threshold_tolerates_and_skips_failed_hosts() {
        let r = Release::from_toml(MANIFEST).unwrap();
        let p = plan(
            &r,
            &hosts(3),
            PlanOptions {
                batch_size: 3,
                failure_threshold: 1,
            },
        )
        .unwrap();
        let mut ro = p.rollout();
        let Next::Batch { hosts: b, .. } = ro.next_batch() else {
            panic!()
        };
        // web-3 does not answer: 1 failure, tolerated.
        let mut out = ok_all(&b);
        out.remove("web-3");
        let Next::Batch {
            phase: 1,
            hosts: b2,
        } = ro.record(&out)
        else {
            panic!()
        };
        // The failed host is not touched again.
        assert_eq!(
            b2.iter().map(|h| h.host.as_str()).collect::<Vec<_>>(),
            ["web-1", "web-2"]
        );
        let mut out = ok_all(&b2);
        out.insert(
            "web-1".into(),
            HostOutcome::Failed {
                step: 0,
                error: "x".into(),
            },
        );
        assert!(matches!(ro.record(&out), Next::Stopped { failures } if failures.len() == 2));
    }
}
