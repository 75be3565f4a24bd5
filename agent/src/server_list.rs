//! Several masters tried in order (`server = [..]` in agent.toml, like
//! Puppet's `server_list`): each run asks the first; when it fails, the
//! next, and so on; the report goes to the first that takes it. When all
//! fail, the error names each one (and the run falls back to the cached
//! catalog as with one master).

use crate::master_client::MasterClient;
use crate::source::{CatalogSource, Fetched, ReportSink};
use anyhow::Result;
use troupe_catalog::report::Report;

pub struct ServerList(pub Vec<MasterClient>);

impl ServerList {
    fn names(&self) -> String {
        self.0
            .iter()
            .map(|c| c.server())
            .collect::<Vec<_>>()
            .join(", ")
    }

    fn each<T>(&mut self, mut call: impl FnMut(&mut MasterClient) -> Result<T>) -> Result<T> {
        let mut errors = Vec::new();
        for c in &mut self.0 {
            match call(c) {
                Ok(v) => return Ok(v),
                Err(e) => {
                    tracing::warn!("master {} failed: {e:#}", c.server());
                    errors.push(format!(
                        "{}: {}",
                        c.server(),
                        troupe_base::cli::one_line(&e)
                    ));
                }
            }
        }
        anyhow::bail!("every master failed: {}", errors.join("; "))
    }
}

impl CatalogSource for ServerList {
    fn describe(&self) -> String {
        format!("masters [{}]", self.names())
    }

    fn before_run(&mut self) {
        // Certificate upkeep with the first; fresh connections to all.
        for (i, c) in self.0.iter_mut().enumerate() {
            if i == 0 {
                c.before_run();
            } else {
                ReportSink::new_run(c);
            }
        }
    }

    fn cache_fallback(&self) -> bool {
        self.0.first().is_none_or(|c| c.cache_fallback())
    }

    fn fetch(&mut self, facts: &serde_json::Value, cached_hash: Option<&str>) -> Result<Fetched> {
        self.each(|c| c.fetch(facts, cached_hash))
    }

    fn checkin_disabled(&mut self, reason: &str, since: &str) {
        for c in &mut self.0 {
            c.checkin_disabled(reason, since);
        }
    }
}

impl ReportSink for ServerList {
    fn describe(&self) -> String {
        format!("masters [{}]", self.names())
    }

    fn send(&mut self, report: &Report) -> Result<()> {
        self.each(|c| c.send(report))
    }

    fn new_run(&mut self) {
        for c in &mut self.0 {
            c.new_run();
        }
    }
}
