//! The periodic scan for events no request causes: stale nodes, expiring
//! certificates.
