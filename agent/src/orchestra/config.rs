//! The agent's orchestration configuration (`STATE/orchestration.toml` or
//! `--orchestration FILE`): who may command this host, what, and the local
//! settings some actions need. Trust comes only from here, never from a
//! command.
//!
//! ```toml
//! role = "web"                              # optional: this host's role
//! environment = "production"                # optional: this host's environment
//!                                           # (targeting: fact `environment`)
//! actions_dir = "/etc/troupe/actions.d"     # optional: module actions, one
//!                                           # MODULE.toml per module
//! haproxy_socket = "/run/haproxy/admin.sock" # for lb.drain / lb.restore
//! skew_secs = 30                            # clock-skew allowance
//! converge_root = "/"                       # --root for agent.run
//!
//! [[signer]]                                # trusted signers
//! name = "alice"
//! key = "ed25519:..."
//!
//! [[rule]]                                  # policy (deny by default)
//! effect = "allow"
//! signers = ["alice"]
//! actions = ["ping", "service.*"]
//!
//! [tools]                                   # optional: absolute paths of the
//! systemctl = "/usr/local/bin/systemctl"    # programs actions run (dpkg_query,
//!                                           # dpkg, apt_get, apt_cache, rpm, dnf,
//!                                           # systemctl, journalctl, service)
//!
//! [modules.mysql]                           # extra actions a module declares
//! [[modules.mysql.action]]
//! name = "mysql.backup"
//! [[modules.mysql.action.run]]
//! argv = ["/usr/local/sbin/mysql-backup"]
//! ```
//!
//! A missing file means: no signer, no rule, so every command is refused.
//! Files in `actions_dir` hold `[[action]]` tables (as in the bastion's
//! `--module-actions` files); the file name's stem is the module. They
//! decide which programs run, so they (and the directory) must be owned by
//! root or by the agent's user and writable by nobody else; otherwise the
//! whole configuration is refused.

use anyhow::{Context, Result, anyhow, bail};
use std::path::{Path, PathBuf};
use troupe_command::{Policy, Registry, TrustedSigners};

/// The default file name in the state directory.
pub const DEFAULT_FILE: &str = "orchestration.toml";

/// A loaded configuration.
#[derive(Debug, Clone)]
pub struct OrchestraConfig {
    pub role: Option<String>,
    /// This host's environment, sent in the hello as fact `environment`.
    pub environment: Option<String>,
    /// Where module action files are read from.
    pub actions_dir: Option<PathBuf>,
    pub haproxy_socket: Option<PathBuf>,
    pub skew_secs: Option<i64>,
    pub signers: TrustedSigners,
    pub policy: Policy,
    pub registry: Registry,
    pub tools: Tools,
    /// `--root` passed to `troupe-agent run` by `agent.run` (default `/`).
    pub converge_root: Option<PathBuf>,
}

/// Paths of the programs the package and service actions run (the
/// providers' own tool table).
pub use crate::providers::Tools;

impl Default for OrchestraConfig {
    fn default() -> Self {
        Self {
            role: None,
            environment: None,
            actions_dir: None,
            haproxy_socket: None,
            skew_secs: None,
            signers: TrustedSigners::default(),
            policy: Policy::default(),
            registry: Registry::builtin(),
            tools: Tools::default(),
            converge_root: None,
        }
    }
}

const KNOWN: &[&str] = &[
    "role",
    "environment",
    "actions_dir",
    "haproxy_socket",
    "skew_secs",
    "signer",
    "rule",
    "modules",
    "tools",
    "converge_root",
];

fn sub_toml(key: &str, v: Option<&toml::Value>) -> Result<String> {
    let mut t = toml::Table::new();
    if let Some(v) = v {
        t.insert(key.to_string(), v.clone());
    }
    toml::to_string(&t).map_err(|e| anyhow!("{key}: {e}"))
}

impl OrchestraConfig {
    /// Parses the TOML text. Unknown keys are refused, so a typo cannot
    /// silently change what is allowed.
    pub fn from_toml(text: &str) -> Result<Self> {
        let t: toml::Table = toml::from_str(text).context("not valid TOML")?;
        for k in t.keys() {
            if !KNOWN.contains(&k.as_str()) {
                bail!("unknown key {k:?} (known: {})", KNOWN.join(", "));
            }
        }
        let role = match t.get("role") {
            None => None,
            Some(toml::Value::String(r)) if troupe_command::envelope::is_role_name(r) => {
                Some(r.clone())
            }
            Some(_) => bail!("role must be a role name (lowercase letters, digits, _ and -)"),
        };
        let haproxy_socket = match t.get("haproxy_socket") {
            None => None,
            Some(toml::Value::String(p)) if p.starts_with('/') => Some(PathBuf::from(p)),
            Some(_) => bail!("haproxy_socket must be an absolute path"),
        };
        let skew_secs = match t.get("skew_secs") {
            None => None,
            Some(toml::Value::Integer(i)) if (0..=300).contains(i) => Some(*i),
            Some(_) => bail!("skew_secs must be an integer 0..=300"),
        };
        let signers = TrustedSigners::from_toml(&sub_toml("signer", t.get("signer"))?)
            .map_err(|e| anyhow!("{e}"))?;
        let policy =
            Policy::from_toml(&sub_toml("rule", t.get("rule"))?).map_err(|e| anyhow!("{e}"))?;
        let mut registry = Registry::builtin();
        if let Some(m) = t.get("modules") {
            let toml::Value::Table(mods) = m else {
                bail!("modules must be a table of module names");
            };
            for (module, decl) in mods {
                let toml::Value::Table(decl) = decl else {
                    bail!("modules.{module} must be a table");
                };
                let text = toml::to_string(decl).map_err(|e| anyhow!("modules.{module}: {e}"))?;
                registry
                    .add_module_toml(module, &text)
                    .map_err(|e| anyhow!("modules.{module}: {e}"))?;
            }
        }
        let environment = match t.get("environment") {
            None => None,
            Some(toml::Value::String(e))
                if troupe_command::registry::check_environment(e).is_ok() =>
            {
                Some(e.clone())
            }
            Some(_) => bail!("environment must be an environment name ([a-z][a-z0-9_]*)"),
        };
        let actions_dir = match t.get("actions_dir") {
            None => None,
            Some(toml::Value::String(p)) if p.starts_with('/') => Some(PathBuf::from(p)),
            Some(_) => bail!("actions_dir must be an absolute path"),
        };
        if let Some(dir) = &actions_dir {
            load_actions_dir(dir, &mut registry)?;
        }
        let converge_root = match t.get("converge_root") {
            None => None,
            Some(toml::Value::String(p)) if p.starts_with('/') => Some(PathBuf::from(p)),
            Some(_) => bail!("converge_root must be an absolute path"),
        };
        let tools: Tools = match t.get("tools") {
            None => Tools::default(),
            Some(v) => v.clone().try_into().map_err(|e| anyhow!("tools: {e}"))?,
        };
        for p in tools.configured() {
            if !p.is_absolute() {
                bail!("tools: {} is not an absolute path", p.display());
            }
        }
        Ok(Self {
            role,
            environment,
            actions_dir,
            haproxy_socket,
            skew_secs,
            signers,
            policy,
            registry,
            tools,
            converge_root,
        })
    }

    /// Loads `path`; a missing file gives the deny-everything default. The
    /// file (it names the signers and the policy) is refused when anyone but
    /// root or this user could change it ([`crate::trust`]).
    pub fn load(path: &Path) -> Result<Self> {
        match crate::trust::read_trusted_file(path, "orchestration configuration")? {
            Some(text) => Self::from_toml(&text).with_context(|| format!("{}", path.display())),
            None => {
                tracing::warn!(path = %path.display(), "no orchestration configuration: every command will be refused");
                Ok(Self::default())
            }
        }
    }
}

pub use troupe_command::action_files::{load_actions_dir, load_actions_dir_checked};

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn empty_is_deny_all() {
        let c = OrchestraConfig::from_toml("").unwrap();
        assert!(c.signers.is_empty());
        assert!(c.policy.rules.is_empty());
        assert!(c.registry.get("ping").is_some());
    }

    #[test]
    fn parses_signers_rules_modules() {
        let key = troupe_bastion::FileSigner::generate()
            .unwrap()
            .key_id()
            .clone();
        let text = format!(
            r#"
role = "web"
haproxy_socket = "/run/haproxy.sock"
[[signer]]
name = "alice"
key = "{key}"
[[rule]]
effect = "allow"
signers = ["alice"]
actions = ["ping"]
[modules.mysql]
[[modules.mysql.action]]
name = "mysql.backup"
"#
        );
        let c = OrchestraConfig::from_toml(&text).unwrap();
        assert_eq!(c.role.as_deref(), Some("web"));
        assert_eq!(c.signers.name_of(&key), Some("alice"));
        assert_eq!(c.policy.rules.len(), 1);
        assert!(c.registry.get("mysql.backup").is_some());
    }

    #[test]
    fn refuses_typos_and_bad_values() {
        assert!(OrchestraConfig::from_toml("rules = []").is_err());
        assert!(OrchestraConfig::from_toml("role = 'Web Server'").is_err());
        assert!(OrchestraConfig::from_toml("haproxy_socket = 'relative'").is_err());
        assert!(OrchestraConfig::from_toml("[tools]\nsystemctl = 'systemctl'").is_err());
        assert!(OrchestraConfig::from_toml("[tools]\nshell = '/bin/sh'").is_err());
        let c = OrchestraConfig::from_toml("[tools]\nsystemctl = '/opt/x/systemctl'").unwrap();
        assert_eq!(c.tools.systemctl, Some(PathBuf::from("/opt/x/systemctl")));
        assert!(OrchestraConfig::from_toml("[[rule]]\neffect='allow'\nsignerz=['*']").is_err());
        assert!(OrchestraConfig::from_toml("environment = 'Prod DR'").is_err());
        assert!(OrchestraConfig::from_toml("actions_dir = 'relative'").is_err());
        let c = OrchestraConfig::from_toml("environment = 'dr'").unwrap();
        assert_eq!(c.environment.as_deref(), Some("dr"));
    }

    #[test]
    fn actions_dir_files_are_modules_and_must_be_private() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path().join("actions.d");
        std::fs::create_dir(&d).unwrap();
        std::fs::set_permissions(&d, std::fs::Permissions::from_mode(0o755)).unwrap();
        let f = d.join("app.toml");
        std::fs::write(
            &f,
            "[[action]]\nname = \"app.flush\"\n[[action.run]]\nargv = [\"/bin/true\"]\n",
        )
        .unwrap();
        std::fs::set_permissions(&f, std::fs::Permissions::from_mode(0o644)).unwrap();
        std::fs::write(d.join("README"), "not toml: ignored").unwrap();
        let text = format!("actions_dir = \"{}\"", d.display());
        let c = OrchestraConfig::from_toml(&text).unwrap();
        assert_eq!(c.registry.get("app.flush").unwrap().run.len(), 1);
        // Writable by others: the whole configuration is refused.
        std::fs::set_permissions(&f, std::fs::Permissions::from_mode(0o666)).unwrap();
        let e = OrchestraConfig::from_toml(&text).unwrap_err();
        assert!(
            format!("{e:#}").contains("writable by group or others"),
            "{e:#}"
        );
        std::fs::set_permissions(&f, std::fs::Permissions::from_mode(0o644)).unwrap();
        // An action named for another module than its file.
        std::fs::write(d.join("other.toml"), "[[action]]\nname = \"app.x\"\n").unwrap();
        let e = OrchestraConfig::from_toml(&text).unwrap_err();
        assert!(format!("{e:#}").contains("namespaced"), "{e:#}");
        std::fs::remove_file(d.join("other.toml")).unwrap();
        // A symlink is not followed.
        std::os::unix::fs::symlink(&f, d.join("link.toml")).unwrap();
        assert!(OrchestraConfig::from_toml(&text).is_err());
        std::fs::remove_file(d.join("link.toml")).unwrap();
        // A missing directory adds nothing.
        let c = OrchestraConfig::from_toml("actions_dir = \"/nonexistent/troupe\"").unwrap();
        assert!(c.registry.get("app.flush").is_none());
    }
}
