//! `troupe ca ...`: certificate authority administration.
//!
//! Every command takes `--data DIR` (the master's data directory) and talks
//! to the running master through its admin socket (see [`crate::admin`]);
//! with no master running it opens the CA directly.

use crate::admin::{self, AdminRequest, AdminResponse};
use anyhow::{Context, Result, bail};
use std::path::{Path, PathBuf};
use troupe_pki::{Authority, CaPolicy, ListEntry, ListFilter};

/// The master's data directory.
#[derive(clap::Args, Debug, Clone)]
pub struct DataArg {
    /// The master's data directory.
    #[arg(long, env = "TROUPE_DATA")]
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
    /// Sign the pending request of HOST.
    Sign {
        /// Host name.
        host: String,
        #[command(flatten)]
        data: DataArg,
    },
    /// Reject the pending request of HOST (the agent learns it).
    Reject {
        /// Host name.
        host: String,
        #[command(flatten)]
        data: DataArg,
    },
    /// Revoke HOST's certificate: refused at its next handshake.
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
    New {
        /// Host name the key is bound to (lower case, a-z 0-9 - .).
        host: String,
        /// How long the key stays valid, e.g. `2h`, `30m`.
        #[arg(long, default_value = "2h")]
        ttl: humantime::Duration,
        #[command(flatten)]
        data: DataArg,
    },
}

fn send(data: &Path, req: AdminRequest) -> Result<serde_json::Value> {
    let resp: AdminResponse = match admin::call(data, &req)? {
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
    if resp.ok {
        Ok(resp.result.unwrap_or(serde_json::Value::Null))
    } else {
        bail!("{}", resp.error.unwrap_or_else(|| "unknown error".into()))
    }
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
                    host,
                    ttl_secs: ttl.as_secs(),
                },
            )?;
            eprintln!(
                "one-time key for {} (valid until {}):",
                r["host"].as_str().unwrap_or("?"),
                r["expires"].as_str().unwrap_or("?")
            );
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
            let r = send(&data.data, AdminRequest::Sign { host })?;
            println!(
                "signed {} (serial {}, expires {})",
                r["host"].as_str().unwrap_or("?"),
                r["serial"].as_str().unwrap_or("?"),
                r["expires"].as_str().unwrap_or("?")
            );
        }
        CaCmd::Reject { host, data } => {
            send(&data.data, AdminRequest::Reject { host: host.clone() })?;
            println!("rejected the request of {host}");
        }
        CaCmd::Revoke { host, data } => {
            let r = send(&data.data, AdminRequest::Revoke { host: host.clone() })?;
            println!("revoked {host}: serials {}", r["serials"]);
        }
        CaCmd::Clean { host, data } => {
            let r = send(&data.data, AdminRequest::Clean { host: host.clone() })?;
            println!("cleaned {host} (revoked serials {})", r["serials"]);
        }
    }
    Ok(0)
}
