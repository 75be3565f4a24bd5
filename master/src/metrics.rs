//! Master metrics in the Prometheus/OpenMetrics text format, served on a
//! listener of its own (plain HTTP, `GET /metrics`), apart from the mTLS
//! gRPC port so that scraping needs no client certificate and exposes no
//! agent-facing call.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;
use std::sync::Arc;

/// Labels of the request counters: the gRPC method and the outcome.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RequestLabels {
    pub method: String,
    /// `ok` or the gRPC status code name (`permission_denied`, ...).
    pub outcome: String,
}

/// Labels of the event counters: the event kind.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct KindLabels {
    pub kind: String,
}

/// Labels of the event sink counters: the sink's name and what became of
/// an event (`delivered`, `failed` after its retries, `dropped` on a full
/// queue).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct SinkLabels {
    pub sink: String,
    pub outcome: String,
}

/// Labels of the TLS connection counter: how the handshake went.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct HandshakeLabels {
    /// `full` (certificates verified) or `resumed` (a session ticket).
    pub kind: String,
}

/// Labels of the failed-attempt counter: the sink's name.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct SinkNameLabels {
    pub sink: String,
}

/// Every metric the master exports.
pub struct Metrics {
    registry: Registry,
    /// Seconds spent compiling one catalog.
    pub compile_seconds: Histogram,
    /// Requests by method and outcome.
    pub requests: Family<RequestLabels, Counter>,
    /// Catalog requests answered "unchanged" (no catalog resent).
    pub catalogs_unchanged: Counter,
    /// Catalog requests answered from the compiled-catalog cache.
    pub catalog_cache_hits: Counter,
    /// Agents with an open command stream.
    pub connected_agents: Gauge,
    /// CSRs waiting for an operator.
    pub csrs_pending: Gauge,
    /// Nodes that missed their check-in intervals.
    pub nodes_stale: Gauge,
    /// Nodes known to the master.
    pub nodes: Gauge,
    /// Module trees that failed to load (the previous one kept serving).
    pub code_load_failures: Counter,
    /// Events emitted, by kind (`crate::events`).
    pub events: Family<KindLabels, Counter>,
    /// Events per sink by outcome.
    pub event_sink_events: Family<SinkLabels, Counter>,
    /// Failed delivery attempts per sink (retries included).
    pub event_sink_attempt_failures: Family<SinkNameLabels, Counter>,
    /// TLS connections established on the gRPC port, by handshake kind
    /// (each costs the master far more than a call on an open one).
    pub tls_connections: Family<HandshakeLabels, Counter>,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Metrics {
        let mut registry = Registry::with_prefix("troupe");
        // 100 µs .. ~3.3 s, doubling.
        let compile_seconds = Histogram::new(
            prometheus_client::metrics::histogram::exponential_buckets(0.0001, 2.0, 16),
        );
        let m = Metrics {
            compile_seconds,
            requests: Family::default(),
            catalogs_unchanged: Counter::default(),
            catalog_cache_hits: Counter::default(),
            connected_agents: Gauge::default(),
            csrs_pending: Gauge::default(),
            nodes_stale: Gauge::default(),
            nodes: Gauge::default(),
            code_load_failures: Counter::default(),
            events: Family::default(),
            event_sink_events: Family::default(),
            event_sink_attempt_failures: Family::default(),
            tls_connections: Family::default(),
            registry: Registry::default(),
        };
        registry.register(
            "catalog_compile_seconds",
            "Time to compile one catalog",
            m.compile_seconds.clone(),
        );
        registry.register(
            "requests",
            "gRPC requests by method and outcome",
            m.requests.clone(),
        );
        registry.register(
            "catalogs_unchanged",
            "Catalog requests answered unchanged",
            m.catalogs_unchanged.clone(),
        );
        registry.register(
            "catalog_cache_hits",
            "Catalog requests served from the compiled-catalog cache",
            m.catalog_cache_hits.clone(),
        );
        registry.register(
            "connected_agents",
            "Agents with an open command stream",
            m.connected_agents.clone(),
        );
        registry.register(
            "csrs_pending",
            "Certificate requests waiting for an operator",
            m.csrs_pending.clone(),
        );
        registry.register(
            "nodes_stale",
            "Nodes that missed their check-in intervals",
            m.nodes_stale.clone(),
        );
        registry.register("nodes", "Nodes known to the master", m.nodes.clone());
        registry.register(
            "code_load_failures",
            "Module trees that failed to load",
            m.code_load_failures.clone(),
        );
        registry.register("events", "Events emitted, by kind", m.events.clone());
        registry.register(
            "event_sink_events",
            "Events per sink: delivered, failed (after retries) or dropped (queue full)",
            m.event_sink_events.clone(),
        );
        registry.register(
            "event_sink_attempt_failures",
            "Failed event delivery attempts per sink, retries included",
            m.event_sink_attempt_failures.clone(),
        );
        registry.register(
            "tls_connections",
            "TLS connections established on the gRPC port, by handshake kind (full, resumed)",
            m.tls_connections.clone(),
        );
        Metrics { registry, ..m }
    }

    /// Counts one established TLS connection.
    pub fn tls_connection(&self, resumed: bool) {
        let kind = if resumed { "resumed" } else { "full" };
        self.tls_connections
            .get_or_create(&HandshakeLabels { kind: kind.into() })
            .inc();
    }

    /// Counts one emitted event.
    pub fn event(&self, kind: &str) {
        self.events
            .get_or_create(&KindLabels {
                kind: kind.to_owned(),
            })
            .inc();
    }

    /// Counts what became of one event at one sink.
    pub fn sink(&self, sink: &str, outcome: &str) {
        self.event_sink_events
            .get_or_create(&SinkLabels {
                sink: sink.to_owned(),
                outcome: outcome.to_owned(),
            })
            .inc();
    }

    /// Counts one failed delivery attempt.
    pub fn sink_attempt_failed(&self, sink: &str) {
        self.event_sink_attempt_failures
            .get_or_create(&SinkNameLabels {
                sink: sink.to_owned(),
            })
            .inc();
    }

    /// Counts one request.
    pub fn request(&self, method: &str, outcome: &str) {
        self.requests
            .get_or_create(&RequestLabels {
                method: method.to_owned(),
                outcome: outcome.to_owned(),
            })
            .inc();
    }

    /// The text exposition.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        // Writing into a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }
}

/// Serves `GET /metrics` on `listener` until `shutdown` resolves. `refresh`
/// runs before each scrape to update gauges computed from state.
pub async fn serve(
    listener: tokio::net::TcpListener,
    metrics: Arc<Metrics>,
    refresh: Arc<dyn Fn(&Metrics) + Send + Sync>,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    use axum::http::header;
    let app = axum::Router::new().route(
        "/metrics",
        axum::routing::get(move || {
            let metrics = metrics.clone();
            let refresh = refresh.clone();
            async move {
                refresh(&metrics);
                (
                    [(
                        header::CONTENT_TYPE,
                        "application/openmetrics-text; version=1.0.0; charset=utf-8",
                    )],
                    metrics.encode(),
                )
            }
        }),
    );
    axum::serve(listener, app)
        .with_graceful_shutdown(shutdown)
        .await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exposition_names_every_metric() {
        let m = Metrics::new();
        m.compile_seconds.observe(0.002);
        m.request("GetCatalog", "ok");
        m.request("GetCatalog", "permission_denied");
        m.csrs_pending.set(3);
        m.tls_connection(true);
        let text = m.encode();
        for needle in [
            "troupe_catalog_compile_seconds_bucket",
            "troupe_catalog_compile_seconds_count 1",
            "troupe_requests_total{method=\"GetCatalog\",outcome=\"ok\"} 1",
            "troupe_requests_total{method=\"GetCatalog\",outcome=\"permission_denied\"} 1",
            "troupe_csrs_pending 3",
            "troupe_nodes_stale 0",
            "troupe_connected_agents 0",
            "troupe_tls_connections_total{kind=\"resumed\"} 1",
        ] {
            assert!(text.contains(needle), "missing {needle:?} in:\n{text}");
        }
    }

    #[tokio::test]
    async fn serves_metrics_over_http() {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let metrics = Arc::new(Metrics::new());
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let refresh: Arc<dyn Fn(&Metrics) + Send + Sync> = Arc::new(|m| {
            m.nodes.set(7);
        });
        let server = tokio::spawn(serve(listener, metrics, refresh, async {
            let _ = rx.await;
        }));
        let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
        s.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            .await
            .unwrap();
        let mut body = String::new();
        s.read_to_string(&mut body).await.unwrap();
        assert!(body.starts_with("HTTP/1.1 200"), "{body}");
        assert!(body.contains("troupe_nodes 7"), "{body}");
        tx.send(()).unwrap();
        server.await.unwrap().unwrap();
    }
}
