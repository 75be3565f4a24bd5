//! Where events go besides the bus: webhooks, email, exec hooks.

use super::Event;
use super::deploys::DeployStore;

/// The configured sinks.
#[derive(Default)]
pub struct Sinks {}

impl Sinks {
    /// No sinks.
    pub fn none() -> Sinks {
        Sinks::default()
    }

    /// Queues `event` for every sink that takes it; never blocks.
    pub fn offer(&self, _event: &Event, _deploys: &DeployStore) {}
}
