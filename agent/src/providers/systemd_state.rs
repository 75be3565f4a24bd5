//! After `systemctl start`/`restart`, what the unit really did.
//!
//! `systemctl start` returns 0 for a unit that systemd skipped because a
//! condition was not met (`ConditionCapability=` in a container, say) and,
//! for `Type=simple`, for a unit whose program could not even be executed
//! (status 203/EXEC): the job "succeeded" because the fork did. So the
//! service provider reads the unit's state back (`systemctl show`:
//! ActiveState, SubState, Result, ConditionResult, ExecMainCode/Status)
//! and fails the resource with systemd's own words (its journal lines for
//! the unit since the start) instead of reporting "started" on every run.

use super::{Tools, cmd};
use std::collections::HashMap;
use std::time::{Duration, Instant};

/// How long a unit may stay `activating` (or in auto-restart) after the
/// start job returned before the resource fails. Longer than a usual
/// RestartSec: a unit that failed at boot and waits to be restarted
/// (Restart=always, RestartSec=10) does not take a `systemctl start` at
/// once, and comes up when its pause ends (seen on a booted host).
const SETTLE: Duration = Duration::from_secs(30);
/// A `Type=simple` unit is "active" as soon as it forked: it is read once
/// more after this pause, so a program that dies at once is caught.
const RECHECK: Duration = Duration::from_millis(250);

const PROPS: &str = "ActiveState,SubState,Result,ConditionResult,AssertResult,Type,ExecMainCode,ExecMainStatus,LoadState,ExecStart";

/// What one read of the unit's properties says.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Verdict {
    /// Running (or, for a oneshot, finished successfully).
    Up,
    /// Still on its way (activating, auto-restart): read again.
    Pending,
    /// Did not start; the text says why in systemd's terms.
    Failed(String),
}

pub(crate) fn parse(out: &str) -> HashMap<String, String> {
    out.lines()
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k.to_string(), v.trim().to_string()))
        .collect()
}

/// Judges one `systemctl show` reading.
pub(crate) fn judge(p: &HashMap<String, String>) -> Verdict {
    let g = |k: &str| p.get(k).map(String::as_str).unwrap_or("");
    if !g("LoadState").is_empty() && g("LoadState") != "loaded" {
        return Verdict::Failed(format!("the unit is {} (LoadState)", g("LoadState")));
    }
    if g("ConditionResult") == "no" {
        return Verdict::Failed(
            "systemd skipped it: a start condition (Condition...=) was not met".into(),
        );
    }
    if g("AssertResult") == "no" {
        return Verdict::Failed("systemd refused it: a start assertion (Assert...=) failed".into());
    }
    let result = g("Result");
    let exit = || {
        let code = match g("ExecMainCode") {
            "1" => "exited",
            "2" => "killed",
            "3" => "dumped core",
            _ => "",
        };
        if code.is_empty() || g("ExecMainStatus") == "0" && code == "exited" {
            String::new()
        } else if code == "exited" && g("ExecMainStatus") == "203" {
            // 203/EXEC: the program could not be run at all. The executor's
            // own journal line naming it may not be written yet, so name
            // it from the unit (ExecStart's path=).
            let path = g("ExecStart")
                .split_once("path=")
                .and_then(|(_, rest)| rest.split([' ', ';']).next())
                .unwrap_or("");
            format!(
                ", main process exited with status 203 (EXEC: systemd could not execute {})",
                if path.is_empty() { "ExecStart" } else { path }
            )
        } else {
            format!(", main process {code} with status {}", g("ExecMainStatus"))
        }
    };
    match (g("ActiveState"), g("SubState")) {
        ("active" | "reloading", _) => Verdict::Up,
        ("activating", "auto-restart") if result != "success" => Verdict::Pending,
        ("activating" | "deactivating", _) => Verdict::Pending,
        ("failed", sub) => Verdict::Failed(format!(
            "it failed (ActiveState=failed, SubState={sub}, Result={result}{})",
            exit()
        )),
        ("inactive", _) if g("Type") == "oneshot" && result == "success" => Verdict::Up,
        (state, sub) => Verdict::Failed(format!(
            "it is not running (ActiveState={state}, SubState={sub}, Result={result}{})",
            exit()
        )),
    }
}

fn show(t: &Tools, name: &str) -> anyhow::Result<HashMap<String, String>> {
    let o = cmd::run(&cmd::Spec {
        argv: &[
            t.path("systemctl"),
            "show".into(),
            "--property".into(),
            PROPS.into(),
            "--".into(),
            name.into(),
        ],
        ..Default::default()
    })?;
    anyhow::ensure!(o.ok(), "systemctl show {name} failed: {}", o.output.trim());
    Ok(parse(&o.output))
}

/// systemd's journal lines about the unit since `since` (epoch seconds),
/// the last few, joined; empty when the journal has nothing.
fn journal(t: &Tools, name: &str, since: u64) -> String {
    let journalctl = t.path("journalctl");
    let argv = cmd::argv(&[
        &journalctl,
        "--no-pager",
        "--output=cat",
        "--lines=4",
        &format!("--since=@{since}"),
        "--unit",
        name,
    ]);
    match cmd::run(&cmd::Spec {
        argv: &argv,
        timeout: Some(Duration::from_secs(10)),
        ..Default::default()
    }) {
        Ok(o) if o.ok() => o
            .output
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty() && !l.starts_with("-- "))
            .collect::<Vec<_>>()
            .join(" / "),
        _ => String::new(),
    }
}

/// Fails unless unit `name` is running after `systemctl WHAT` returned.
/// `since` (epoch seconds, taken before the action) bounds the journal
/// lines quoted in the error.
pub(crate) fn verify_running(t: &Tools, name: &str, what: &str, since: u64) -> anyhow::Result<()> {
    let deadline = Instant::now() + SETTLE;
    let mut rechecked = false;
    loop {
        let p = show(t, name)?;
        match judge(&p) {
            Verdict::Up => {
                let simple = matches!(
                    p.get("Type").map(String::as_str),
                    Some("simple" | "exec" | "idle")
                );
                if !simple || rechecked {
                    return Ok(());
                }
                rechecked = true;
                std::thread::sleep(RECHECK);
            }
            Verdict::Pending if Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(100));
            }
            Verdict::Pending => anyhow::bail!(
                "systemctl {what} {name}: still not running {}s later (ActiveState={}, SubState={}); systemd says: {}",
                SETTLE.as_secs(),
                p.get("ActiveState").map(String::as_str).unwrap_or("?"),
                p.get("SubState").map(String::as_str).unwrap_or("?"),
                or_none(journal(t, name, since))
            ),
            Verdict::Failed(why) => anyhow::bail!(
                "systemctl {what} {name} returned, but {why}; systemd says: {} (see systemctl status {name})",
                or_none(journal(t, name, since))
            ),
        }
    }
}

fn or_none(s: String) -> String {
    if s.is_empty() {
        "nothing in the journal".into()
    } else {
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v(s: &str) -> Verdict {
        judge(&parse(s))
    }

    #[test]
    fn readings_of_systemctl_show_are_judged_as_systemd_means_them() {
        assert_eq!(
            v(
                "Type=simple\nResult=success\nActiveState=active\nSubState=running\nConditionResult=yes\nLoadState=loaded\n"
            ),
            Verdict::Up
        );
        // chrony in a container: skipped by ConditionCapability=, start returned 0.
        let Verdict::Failed(w) = v(
            "Type=forking\nResult=success\nActiveState=inactive\nSubState=dead\nConditionResult=no\nLoadState=loaded\n",
        ) else {
            panic!()
        };
        assert!(w.contains("condition"), "{w}");
        // ExecStart missing: 203/EXEC.
        let Verdict::Failed(w) = v(
            "Type=simple\nResult=exit-code\nExecMainCode=1\nExecMainStatus=203\nActiveState=failed\nSubState=failed\nConditionResult=yes\nExecStart={ path=/nonexistent/x ; argv[]=/nonexistent/x -f ; ignore_errors=no ; start_time=[n/a] ; stop_time=[n/a] ; pid=0 ; code=(null) ; status=0/0 }\n",
        ) else {
            panic!()
        };
        assert!(w.contains("could not execute /nonexistent/x"), "{w}");
        assert!(
            w.contains("Result=exit-code") && w.contains("status 203"),
            "{w}"
        );
        assert_eq!(
            v("Type=notify\nActiveState=activating\nSubState=start\nResult=success\n"),
            Verdict::Pending
        );
        assert_eq!(
            v("Type=simple\nActiveState=activating\nSubState=auto-restart\nResult=exit-code\n"),
            Verdict::Pending
        );
        assert_eq!(
            v(
                "Type=oneshot\nActiveState=inactive\nSubState=dead\nResult=success\nConditionResult=yes\n"
            ),
            Verdict::Up
        );
        // A simple service that exited 0 at once is not running.
        assert!(matches!(
            v(
                "Type=simple\nActiveState=inactive\nSubState=dead\nResult=success\nConditionResult=yes\nExecMainCode=1\nExecMainStatus=0\n"
            ),
            Verdict::Failed(_)
        ));
        let Verdict::Failed(w) = v("LoadState=not-found\nActiveState=inactive\n") else {
            panic!()
        };
        assert!(w.contains("not-found"), "{w}");
    }
}
