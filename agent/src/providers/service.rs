//! service provider: systemd (`systemctl`) when it is the running init,
//! else the `service` command / init scripts with `update-rc.d` (Debian) or
//! `chkconfig` (RedHat) for boot-time enabling. A refresh restarts a running
//! service once (not when this run just started it).
//!
//! Under `--root` no init system runs for the root, so services are not
//! managed there: the resource is neither checked nor changed, and its report
//! says so (status `unchanged` with the event `not managed under --root ...`,
//! a warning in the log, a `not managed` line in the run's output). It is not
//! a failure: converging an image or a chroot is expected to leave services
//! to the system that boots it; nothing is claimed about the service's state.

use super::{Ctx, Outcome, Tools, cmd};
use std::path::Path;
use troupe_catalog::{Kind, ServiceState};

#[derive(Clone, Copy, PartialEq, Eq)]
enum Init {
    Systemd,
    SysV,
}

/// systemd when it is the running init (or its `systemctl` is configured).
fn init(tools: &Tools) -> Init {
    if tools.has("systemctl") || Path::new("/run/systemd/system").is_dir() {
        Init::Systemd
    } else {
        Init::SysV
    }
}

fn running(t: &Tools, i: Init, name: &str) -> anyhow::Result<bool> {
    match i {
        Init::Systemd => cmd::succeeds(&[
            t.path("systemctl"),
            "is-active".into(),
            "--quiet".into(),
            "--".into(),
            name.into(),
        ]),
        Init::SysV => cmd::succeeds(&sysv(t, name, "status")),
    }
}

fn sysv(t: &Tools, name: &str, action: &str) -> Vec<String> {
    let script = format!("/etc/init.d/{name}");
    if t.has("service")
        || Path::new("/usr/sbin/service").exists()
        || Path::new("/sbin/service").exists()
    {
        vec![t.path("service"), name.into(), action.into()]
    } else {
        vec![script, action.to_owned()]
    }
}

/// Whether the service's boot-time state differs from `want`.
fn enable_differs(t: &Tools, i: Init, name: &str, want: bool) -> anyhow::Result<bool> {
    match i {
        Init::Systemd => {
            let o = cmd::run(&cmd::Spec {
                argv: &[
                    t.path("systemctl"),
                    "is-enabled".into(),
                    "--".into(),
                    name.into(),
                ],
                ..Default::default()
            })?;
            unit_enable_differs(name, &o.output, want)
        }
        Init::SysV => Ok(sysv_enabled(name)? != want),
    }
}

/// Reads `systemctl is-enabled` output (the unit file state) against the
/// wanted boot-time state: true when `systemctl enable`/`disable` is
/// needed. States that enable/disable cannot change are either already
/// what was asked (a static unit runs when something pulls it in; a masked
/// one never starts) or an error that says what to do, never a change
/// claimed again on every run.
pub(crate) fn unit_enable_differs(name: &str, output: &str, want: bool) -> anyhow::Result<bool> {
    let state = output.split_whitespace().next().unwrap_or("");
    match (state, want) {
        ("enabled" | "enabled-runtime", _) => Ok(!want),
        ("disabled" | "linked" | "linked-runtime", _) => Ok(want),
        ("static" | "indirect" | "generated" | "alias" | "transient", true) => Ok(false),
        ("static" | "indirect" | "generated" | "alias" | "transient", false) => anyhow::bail!(
            "unit {name} is {state}: it has no [Install] section to disable (it starts when \
             another unit pulls it in); mask it (systemctl mask {name}) or drop enable => false"
        ),
        ("masked" | "masked-runtime", false) => Ok(false),
        ("masked" | "masked-runtime", true) => anyhow::bail!(
            "unit {name} is masked, so it cannot be enabled; unmask it first \
             (systemctl unmask {name}) if it should run"
        ),
        _ => anyhow::bail!(
            "cannot tell whether unit {name} is enabled (is it installed?): systemctl is-enabled said {:?}",
            output.trim()
        ),
    }
}

/// SysV: started at boot in any multi-user runlevel.
fn sysv_enabled(name: &str) -> anyhow::Result<bool> {
    if Path::new("/usr/sbin/update-rc.d").exists() {
        // Debian: a start link in any multi-user runlevel, or in rcS.d
        // for early-boot scripts (Default-Start: S).
        for rl in ["2", "3", "4", "5", "S"] {
            if let Ok(rd) = std::fs::read_dir(format!("/etc/rc{rl}.d")) {
                for e in rd.flatten() {
                    let f = e.file_name().to_string_lossy().into_owned();
                    if f.starts_with('S') && f.get(3..) == Some(name) {
                        return Ok(true);
                    }
                }
            }
        }
        Ok(false)
    } else {
        cmd::succeeds(&cmd::argv(&["chkconfig", name]))
    }
}

fn action(t: &Tools, i: Init, name: &str, what: &str) -> anyhow::Result<()> {
    let a = match i {
        Init::Systemd => vec![t.path("systemctl"), what.into(), "--".into(), name.into()],
        Init::SysV => sysv(t, name, what),
    };
    let since = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs().saturating_sub(1))
        .unwrap_or(0);
    cmd::check(&a)?;
    if i == Init::Systemd && (what == "start" || what == "restart") {
        super::systemd_state::verify_running(t, name, what, since)?;
    }
    Ok(())
}

fn set_enabled(t: &Tools, i: Init, name: &str, on: bool) -> anyhow::Result<()> {
    match i {
        Init::Systemd => {
            cmd::check(&[
                t.path("systemctl"),
                if on { "enable" } else { "disable" }.into(),
                "--".into(),
                name.into(),
            ])?;
        }
        Init::SysV => {
            if Path::new("/usr/sbin/update-rc.d").exists() {
                if on {
                    cmd::check(&cmd::argv(&["update-rc.d", name, "defaults"]))?;
                }
                cmd::check(&cmd::argv(&[
                    "update-rc.d",
                    name,
                    if on { "enable" } else { "disable" },
                ]))?;
            } else {
                cmd::check(&cmd::argv(&[
                    "chkconfig",
                    name,
                    if on { "on" } else { "off" },
                ]))?;
            }
        }
    }
    Ok(())
}

pub fn service(ctx: &mut Ctx, kind: &Kind, refresh: bool) -> anyhow::Result<Outcome> {
    let Kind::Service {
        name,
        ensure,
        enable,
    } = kind
    else {
        anyhow::bail!("not a service resource");
    };
    anyhow::ensure!(
        !name.is_empty() && !name.starts_with('-') && !name.contains('/'),
        "invalid service name {name:?}"
    );
    if ctx.in_root() {
        return Ok(not_managed_in_root(ctx, name, *ensure, *enable, refresh));
    }
    let t = &ctx.tools;
    let i = init(t);
    let mut out = Outcome::default();
    let mut started = false;
    let is_running = running(t, i, name)?;
    match ensure {
        Some(ServiceState::Running) if !is_running => {
            out.change("started");
            started = true;
            if !ctx.noop {
                action(t, i, name, "start")?;
            }
        }
        Some(ServiceState::Stopped) if is_running => {
            out.change("stopped");
            if !ctx.noop {
                action(t, i, name, "stop")?;
            }
        }
        _ => {}
    }
    if let Some(on) = enable
        && enable_differs(t, i, name, *on)?
    {
        out.change(if *on {
            "enabled at boot"
        } else {
            "disabled at boot"
        });
        if !ctx.noop {
            set_enabled(t, i, name, *on)?;
        }
    }
    let will_run = match ensure {
        Some(ServiceState::Running) => true,
        Some(ServiceState::Stopped) => false,
        None => is_running,
    };
    if refresh && will_run && !started {
        out.refreshed = true;
        out.change("restarted (refresh)");
        if !ctx.noop {
            action(t, i, name, "restart")?;
        }
    }
    Ok(out)
}

/// A service command of the orchestration listener (`service.status`,
/// `.start`, `.stop`, `.restart`), through this provider: the same init
/// detection, commands and process handling (process group killed at the
/// timeout, an init script's daemon holding stdout does not hang it) and,
/// under systemd, the unit's real state read back after start/restart, so
/// a unit that failed or was skipped by a condition fails the command with
/// systemd's own words. Returns the state for `status`, else what was done.
pub(crate) fn command(tools: &Tools, verb: &str, name: &str) -> anyhow::Result<String> {
    anyhow::ensure!(
        !name.is_empty() && !name.starts_with('-') && !name.contains(['/', '\0', '\n']),
        "invalid service name {name:?}"
    );
    let i = init(tools);
    match verb {
        "status" => Ok(match i {
            Init::Systemd => {
                // is-active exits non-zero for anything but active: the
                // state is its output (active, inactive, failed, ...).
                let o = cmd::run(&cmd::Spec {
                    argv: &[
                        tools.path("systemctl"),
                        "is-active".into(),
                        "--".into(),
                        name.into(),
                    ],
                    ..Default::default()
                })?;
                match o.output.split_whitespace().next() {
                    Some(state) => state.to_owned(),
                    None => {
                        anyhow::bail!("systemctl is-active {name} said nothing ({})", o.describe())
                    }
                }
            }
            Init::SysV => {
                if running(tools, i, name)? {
                    "active".into()
                } else {
                    "inactive".into()
                }
            }
        }),
        "start" | "stop" | "restart" => {
            action(tools, i, name, verb)?;
            Ok(match (i, verb) {
                (Init::Systemd, "start" | "restart") => format!("{verb} done, the unit is running"),
                _ => format!("{verb} done"),
            })
        }
        other => anyhow::bail!("unknown service command {other:?}"),
    }
}

/// The outcome of a service resource under `--root`: nothing checked,
/// nothing changed, and an event saying what was wanted and not done.
fn not_managed_in_root(
    ctx: &Ctx,
    name: &str,
    ensure: Option<ServiceState>,
    enable: Option<bool>,
    refresh: bool,
) -> Outcome {
    let mut wanted = Vec::new();
    match ensure {
        Some(ServiceState::Running) => wanted.push("running"),
        Some(ServiceState::Stopped) => wanted.push("stopped"),
        None => {}
    }
    match enable {
        Some(true) => wanted.push("enabled at boot"),
        Some(false) => wanted.push("disabled at boot"),
        None => {}
    }
    if refresh {
        wanted.push("a restart (refresh)");
    }
    let wanted = if wanted.is_empty() {
        String::new()
    } else {
        format!("; wanted: {}", wanted.join(", "))
    };
    let msg = format!(
        "{NOT_MANAGED_IN_ROOT} {}: no init system runs there, service {name} was neither checked nor changed{wanted}",
        ctx.root.display()
    );
    tracing::warn!("service[{name}]: {msg}");
    Outcome {
        changed: false,
        events: vec![msg],
        diff: None,
        refreshed: false,
    }
}

/// How every service event under `--root` starts.
pub const NOT_MANAGED_IN_ROOT: &str = "not managed under --root";

/// `troupe-agent resource service [NAME]`: whether `name` runs and starts
/// at boot (`enable` left out when the init system cannot say, e.g. a
/// static unit), or every service the init system knows. Not under
/// `--root`: no init system runs there.
pub(crate) fn inspect(ctx: &Ctx, name: Option<&str>) -> anyhow::Result<Vec<Kind>> {
    anyhow::ensure!(
        !ctx.in_root(),
        "services are not managed under --root (no init system runs for {}): inspect them on the booted system",
        ctx.root.display()
    );
    let t = &ctx.tools;
    let i = init(t);
    let names: Vec<String> = match name {
        Some(n) => {
            anyhow::ensure!(
                !n.is_empty() && !n.starts_with('-') && !n.contains(['/', '\0', '\n']),
                "{n:?} is not a service name"
            );
            vec![n.to_owned()]
        }
        None => match i {
            Init::Systemd => {
                let o = cmd::run(&cmd::Spec {
                    argv: &[
                        t.path("systemctl"),
                        "list-unit-files".into(),
                        "--type=service".into(),
                        "--no-legend".into(),
                        "--plain".into(),
                    ],
                    ..Default::default()
                })?;
                anyhow::ensure!(o.ok(), "systemctl list-unit-files failed: {}", o.tail());
                o.output
                    .lines()
                    .filter_map(|l| l.split_whitespace().next())
                    .filter(|u| !u.contains('@'))
                    .map(|u| u.strip_suffix(".service").unwrap_or(u).to_owned())
                    .collect()
            }
            Init::SysV => {
                let mut v: Vec<String> = std::fs::read_dir("/etc/init.d")
                    .map(|rd| {
                        rd.flatten()
                            .map(|e| e.file_name().to_string_lossy().into_owned())
                            .filter(|n| !n.starts_with('.') && n != "README" && n != "rc")
                            .collect()
                    })
                    .unwrap_or_default();
                v.sort();
                v
            }
        },
    };
    let mut out = Vec::with_capacity(names.len());
    for n in names {
        let enable = match i {
            Init::Systemd => {
                let o = cmd::run(&cmd::Spec {
                    argv: &[
                        t.path("systemctl"),
                        "is-enabled".into(),
                        "--".into(),
                        n.clone(),
                    ],
                    ..Default::default()
                })?;
                match o.output.split_whitespace().next().unwrap_or("") {
                    "enabled" | "enabled-runtime" => Some(true),
                    "disabled" | "linked" | "linked-runtime" | "masked" | "masked-runtime" => {
                        Some(false)
                    }
                    _ => None,
                }
            }
            Init::SysV => sysv_enabled(&n).ok(),
        };
        let ensure = if running(t, i, &n)? {
            ServiceState::Running
        } else {
            ServiceState::Stopped
        };
        out.push(Kind::Service {
            name: n,
            ensure: Some(ensure),
            enable,
        });
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::unit_enable_differs as differs;

    #[test]
    fn systemd_unit_file_states_are_compared_without_a_change_on_every_run() {
        // Plain cases.
        assert!(!differs("a", "enabled\n", true).unwrap());
        assert!(differs("a", "enabled\n", false).unwrap());
        assert!(differs("a", "disabled\n", true).unwrap());
        assert!(!differs("a", "disabled\n", false).unwrap());
        assert!(!differs("a", "enabled-runtime\n", true).unwrap());
        // `systemctl is-enabled --quiet` exits 0 for a static unit: read as
        // "enabled", `enable => false` ran `systemctl disable` (which does
        // nothing for it) and reported a change on every run.
        assert!(!differs("a", "static\n", true).unwrap());
        let e = differs("a", "static\n", false).unwrap_err().to_string();
        assert!(
            e.contains("static") && e.contains("systemctl mask a"),
            "{e}"
        );
        // Masked: already disabled; enabling it needs an unmask first.
        assert!(!differs("a", "masked\n", false).unwrap());
        let e = differs("a", "masked\n", true).unwrap_err().to_string();
        assert!(e.contains("systemctl unmask a"), "{e}");
        // Unknown unit: a clear error, not "enabled at boot" every run.
        let e = differs(
            "nope",
            "Failed to get unit file state for nope.service: No such file or directory\n",
            true,
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("nope") && e.contains("installed"), "{e}");
        assert!(differs("a", "", true).is_err());
    }
}
