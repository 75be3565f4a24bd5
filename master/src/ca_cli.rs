//! `troupe ca ...`: certificate authority administration.
//!
//! Every command takes `--data DIR` (the master's data directory) and talks
//! to the running master through its admin socket (see [`crate::admin`]);
//! with no master running it opens the CA directly.

use crate::admin::{self, AdminRequest, AdminResponse};
use anyhow::{Context, Result, bail};
use std::path::{Path, PathBuf};
use troupe_base::error_code::{self, ErrorCode, code_of};
use troupe_pki::{Authority, CaPolicy, ListEntry, ListFilter};

/// The master's data directory.
#[derive(clap::Args, Debug, Clone)]
pub struct DataArg {
    /// The master's data directory (as given to `troupe master --data`).
    #[arg(long, env = "TROUPE_DATA", default_value = "/var/lib/troupe")]
    pub data: PathBuf,
}

/// Certificate authority administration.
#[derive(clap::Subcommand, Debug)]
pub enum CaCmd {
    /// Print the CA certificate's SHA-256 fingerprint (for agents'
    /// `--ca-fingerprint`).
    Fingerprint {
        #[command(flatten)]
        data: DataArg,
    },
    /// One-time pre-shared keys for autosigning.
    #[command(subcommand)]
    Psk(PskCmd),
    /// List certificate requests and certificates.
    List {
        #[command(flatten)]
        data: DataArg,
        /// Only pending requests.
        #[arg(long, conflicts_with = "all")]
        pending: bool,
        /// Everything: also rejected, revoked and expired, and PSKs.
        #[arg(long)]
        all: bool,
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Sign the pending request of HOST (`troupe ca list --pending` shows
    /// them); the waiting agent picks its certificate up at its next poll.
    Sign {
        /// Host name, as the agent gave it in `--name`.
        host: String,
        #[command(flatten)]
        data: DataArg,
    },
    /// Reject the pending request of HOST (the agent learns it).
    Reject {
        /// Host name, as the agent gave it in `--name`.
        host: String,
        #[command(flatten)]
        data: DataArg,
    },
    /// Revoke HOST's certificate: refused at its next handshake. The host
    /// cannot join again until `troupe ca clean HOST`.
    Revoke {
        /// Host name.
        host: String,
        #[command(flatten)]
        data: DataArg,
    },
    /// Forget HOST (revoking its certificate) so it can join again.
    Clean {
        /// Host name.
        host: String,
        #[command(flatten)]
        data: DataArg,
    },
}

/// `troupe ca psk ...`
#[derive(clap::Subcommand, Debug)]
pub enum PskCmd {
    /// Issue a one-time key for HOST and print it (only line on stdout).
    /// The master keeps only its hash; a new key replaces an unused one.
    ///
    /// On the new host: `TROUPE_PSK=KEY troupe-agent bootstrap --name HOST
    /// --server https://MASTER:8140 --ca-fingerprint FP`.
    New {
        /// Host name the key is bound to (lower case, a-z 0-9 - .).
        host: String,
        /// How long the key stays valid, e.g. `2h`, `30m` (at most 30 days).
        #[arg(long, default_value = "2h", value_parser = parse_psk_ttl)]
        ttl: humantime::Duration,
        #[command(flatten)]
        data: DataArg,
    },
}

/// Longest life of a one-time key: an unused key is a standing credential.
const PSK_TTL_MAX: std::time::Duration = std::time::Duration::from_secs(30 * 86_400);

fn parse_psk_ttl(s: &str) -> std::result::Result<humantime::Duration, String> {
    let d: humantime::Duration = s.parse().map_err(|e| format!("{e} (e.g. 2h, 30m)"))?;
    if d.is_zero() {
        return Err("a one-time key that lives 0s could never be used; e.g. 2h".into());
    }
    if *d > PSK_TTL_MAX {
        return Err("at most 30d: issue the key closer to the host's first boot".into());
    }
    Ok(d)
}

/// Adds what to do next to the CA's refusals an operator meets most,
/// chosen by the answer's error code (never its wording).
pub(crate) fn hint(host: &str, error: anyhow::Error) -> anyhow::Error {
    let text = error.to_string();
    match code_of(&error) {
        Some(ErrorCode::NoPendingRequest) => error_code::error(
            ErrorCode::NoPendingRequest,
            format!(
                "{text}; `troupe ca list --pending` shows the requests waiting (an agent sends one with `troupe-agent bootstrap --name {host}`)"
            ),
        ),
        Some(ErrorCode::NoValidCertificate) => error_code::error(
            ErrorCode::NoValidCertificate,
            format!("{text}; `troupe ca list --all` shows what the CA knows about it"),
        ),
        _ => error,
    }
}

/// [`admin::call`], saying what to do when the socket may not be used.
pub(crate) fn call(data: &Path, req: &AdminRequest) -> Result<Option<AdminResponse>> {
    admin::call(data, req).map_err(|e| {
        let denied = e.chain().any(|c| {
            c.downcast_ref::<std::io::Error>()
                .is_some_and(|io| io.kind() == std::io::ErrorKind::PermissionDenied)
        });
        if denied {
            anyhow::anyhow!(
                "{e:#}: only the user the master runs as may use it (run this as root or with sudo)"
            )
        } else {
            e
        }
    })
}

fn send(data: &Path, req: AdminRequest) -> Result<serde_json::Value> {
    let resp: AdminResponse = match call(data, &req)? {
        Some(r) => r,
        None => {
            // No master running: work on the CA directly (never create one).
            if !data.join("ca").join("ca_key.pem").exists() {
                bail!(
                    "no master is running on {} and it holds no CA yet; start `troupe master --data {}` first",
                    data.display(),
                    data.display()
                );
            }
            let ca = Authority::open(&data.join("ca"), CaPolicy::default()).with_context(|| {
                format!(
                    "no master is running on {}, and opening its CA failed",
                    data.display()
                )
            })?;
            admin::handle(&ca, &req)
        }
    };
    resp.into_result()
}

fn print_list(entries: &[ListEntry]) {
    if entries.is_empty() {
        println!("(nothing)");
        return;
    }
    println!("{:<40} {:<12} {:<25} ID", "HOST", "STATE", "TIME");
    for e in entries {
        println!("{:<40} {:<12} {:<25} {}", e.host, e.state, e.time, e.id);
    }
}

/// The `serials` of an answer, comma-separated (`none` when empty).
fn serials(r: &serde_json::Value) -> String {
    let list: Vec<&str> = r["serials"]
        .as_array()
        .map(|a| a.iter().filter_map(|s| s.as_str()).collect())
        .unwrap_or_default();
    if list.is_empty() {
        "none".into()
    } else {
        list.join(", ")
    }
}

/// Runs a `troupe ca` command.
pub fn run(cmd: CaCmd) -> Result<u8> {
    match cmd {
        CaCmd::Fingerprint { data } => {
            // Read the certificate directly: works with or without a master.
            let path = data.data.join("ca").join("ca_crt.pem");
            let pem = std::fs::read(&path).with_context(|| {
                format!(
                    "reading {} (has `troupe master --data {}` run yet?)",
                    path.display(),
                    data.data.display()
                )
            })?;
            use rustls::pki_types::{CertificateDer, pem::PemObject};
            let der = CertificateDer::from_pem_slice(&pem)
                .with_context(|| format!("{} is not a PEM certificate", path.display()))?;
            println!("{}", troupe_pki::util::fingerprint_sha256(&der));
        }
        CaCmd::Psk(PskCmd::New { host, ttl, data }) => {
            let r = send(
                &data.data,
                AdminRequest::PskNew {
                    host: host.clone(),
                    ttl_secs: ttl.as_secs(),
                },
            )?;
            eprintln!(
                "one-time key for {} (valid until {}):",
                r["host"].as_str().unwrap_or("?"),
                r["expires"].as_str().unwrap_or("?")
            );
            // A key for a host that still holds a certificate is refused at
            // bootstrap ("already has a valid certificate"): say so now.
            if let Ok(l) = send(
                &data.data,
                AdminRequest::List {
                    filter: ListFilter::Default,
                },
            ) && let Ok(entries) = serde_json::from_value::<Vec<ListEntry>>(l["entries"].clone())
                && entries
                    .iter()
                    .any(|e| e.host == host && e.state == "signed")
            {
                eprintln!(
                    "note: {host} still holds a valid certificate: a bootstrap with this key is refused until `troupe ca clean {host}`"
                );
            }
            println!("{}", r["psk"].as_str().unwrap_or_default());
        }
        CaCmd::List {
            data,
            pending,
            all,
            json,
        } => {
            let filter = if pending {
                ListFilter::Pending
            } else if all {
                ListFilter::All
            } else {
                ListFilter::Default
            };
            let r = send(&data.data, AdminRequest::List { filter })?;
            let entries: Vec<ListEntry> =
                serde_json::from_value(r["entries"].clone()).context("malformed list")?;
            if json {
                println!("{}", serde_json::to_string_pretty(&entries)?);
            } else {
                print_list(&entries);
            }
        }
        CaCmd::Sign { host, data } => {
            let r = send(&data.data, AdminRequest::Sign { host: host.clone() })
                .map_err(|e| hint(&host, e))?;
            println!(
                "signed {} (serial {}, expires {})",
                r["host"].as_str().unwrap_or("?"),
                r["serial"].as_str().unwrap_or("?"),
                r["expires"].as_str().unwrap_or("?")
            );
        }
        CaCmd::Reject { host, data } => {
            send(&data.data, AdminRequest::Reject { host: host.clone() })
                .map_err(|e| hint(&host, e))?;
            println!("rejected the request of {host}");
        }
        CaCmd::Revoke { host, data } => {
            let r = send(&data.data, AdminRequest::Revoke { host: host.clone() })
                .map_err(|e| hint(&host, e))?;
            println!(
                "revoked {host} (serial {}): refused from its next handshake; `troupe ca clean {host}` lets it join again",
                serials(&r)
            );
        }
        CaCmd::Clean { host, data } => {
            let r = send(&data.data, AdminRequest::Clean { host: host.clone() })?;
            println!(
                "cleaned {host} (revoked serials: {}): it may join again with a new key and request",
                serials(&r)
            );
        }
    }
    Ok(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hints_follow_the_code_not_the_wording() {
        // Reworded message, same code: the hint is still added.
        let e = error_code::error(ErrorCode::NoPendingRequest, "nothing waits for web1");
        let h = hint("web1", e).to_string();
        assert!(
            h.starts_with("nothing waits for web1; `troupe ca list --pending`"),
            "{h}"
        );
        let e = error_code::error(ErrorCode::NoValidCertificate, "web1: none valid");
        assert!(
            hint("web1", e)
                .to_string()
                .ends_with("`troupe ca list --all` shows what the CA knows about it")
        );
        // The old wording without the code: no hint (text decides nothing).
        let e = anyhow::anyhow!("no pending certificate request for \"web1\"");
        assert_eq!(
            hint("web1", e).to_string(),
            "no pending certificate request for \"web1\""
        );
        let e = error_code::error(ErrorCode::Revoked, "no pending certificate request");
        assert_eq!(code_of(&hint("web1", e)), Some(ErrorCode::Revoked));
    }
}
