//! Golden catalogs: every shipped role compiled for Debian 12, Ubuntu 22.04,
//! Ubuntu 24.04, Rocky 9 and AlmaLinux 9. Regenerate after a reviewed change with
//! `TROUPE_BLESS=1 cargo test -p troupe-compiler --test golden`.

mod common;

use troupe_catalog::{Catalog, Kind};

const DISTROS: &[&str] = &["debian12", "ubuntu2204", "ubuntu2404", "rocky9", "alma9"];

fn rhel(distro: &str) -> bool {
    matches!(distro, "rocky9" | "alma9")
}

fn body(cat: &Catalog, id: &str) -> String {
    let Kind::File {
        content: Some(cr), ..
    } = &res(cat, id).kind
    else {
        panic!("{id} has no content")
    };
    String::from_utf8(cat.contents[&cr.sha256].bytes().unwrap()).unwrap()
}

fn has(cat: &Catalog, id: &str) -> bool {
    cat.resources.iter().any(|r| r.id.0 == id)
}

fn check(role: &str, host: &str, distro: &str) -> Catalog {
    let tree = common::shipped();
    let facts = common::facts(distro);
    let cat = tree
        .compile(host, &facts, &common::opts())
        .unwrap_or_else(|e| panic!("{role}/{distro}: {}", e.render()));
    assert_eq!(cat.environment, "production");
    assert!(
        cat.resources
            .iter()
            .all(|r| r.tags.first().map(String::as_str) == Some(role))
    );
    // What an agent would do with it: decode and validate.
    let back = Catalog::from_json(&cat.to_canonical_json()).unwrap();
    assert_eq!(back, cat);
    check_orchestration(&cat, role, distro);
    let path = common::tests_dir()
        .join("golden")
        .join(format!("{role}-{distro}.json"));
    let text = cat.to_pretty_json() + "\n";
    if std::env::var_os("TROUPE_BLESS").is_some() {
        std::fs::write(&path, &text).unwrap();
    } else {
        let want = std::fs::read_to_string(&path).unwrap_or_else(|e| {
            panic!(
                "{}: {e} (run with TROUPE_BLESS=1 to create)",
                path.display()
            )
        });
        if want != text {
            let d = similar::TextDiff::from_lines(&want, &text);
            panic!(
                "{role}/{distro} differs from {}:\n{}",
                path.display(),
                d.unified_diff().context_radius(3)
            );
        }
    }
    cat
}

/// The agent's orchestration configuration on every role: environment and
/// actions_dir set, the module actions' declarations only where their
/// profile is (nginx on web, postgresql on db), byte-for-byte the files the
/// bastion checks arguments with, root-owned and not writable by others (or
/// the agent would refuse its whole configuration), and the policy allows
/// them only on their role.
fn check_orchestration(cat: &Catalog, role: &str, distro: &str) {
    let ctx = format!("{role}/{distro}");
    let Kind::Directory {
        mode,
        owner,
        group,
        purge,
        ..
    } = &res(cat, "directory[/etc/troupe/actions.d]").kind
    else {
        panic!("{ctx}: actions.d is not a directory")
    };
    assert_eq!(
        (*mode, owner.as_deref(), group.as_deref(), *purge),
        (Some(0o755), Some("root"), Some("root"), true),
        "{ctx}"
    );
    let shipped = common::modules().join("environments/production/files/troupe/actions.d");
    let mut declared = Vec::new();
    for (module, on_role) in [("nginx", "web"), ("postgresql", "db")] {
        let id = format!("file[/etc/troupe/actions.d/{module}.toml]");
        assert_eq!(has(cat, &id), role == on_role, "{ctx}: {id}");
        if role != on_role {
            continue;
        }
        declared.push(module);
        let Kind::File {
            mode, owner, group, ..
        } = &res(cat, &id).kind
        else {
            panic!("{ctx}: {id} is not a file")
        };
        assert_eq!(
            (*mode, owner.as_deref(), group.as_deref()),
            (Some(0o644), Some("root"), Some("root")),
            "{ctx}: {id}"
        );
        let want = std::fs::read_to_string(shipped.join(format!("{module}.toml"))).unwrap();
        assert_eq!(body(cat, &id), want, "{ctx}: {id}");
        assert!(pos(cat, "directory[/etc/troupe/actions.d]") < pos(cat, &id));
    }
    // Nothing else is put there.
    let in_dir: Vec<&str> = cat
        .resources
        .iter()
        .map(|r| r.id.0.as_str())
        .filter(|id| id.contains("/etc/troupe/actions.d/"))
        .collect();
    assert_eq!(in_dir.len(), declared.len(), "{ctx}: {in_dir:?}");

    let orch: toml::Table = body(cat, "file[/etc/troupe/orchestration.toml]")
        .parse()
        .unwrap_or_else(|e| panic!("{ctx}: orchestration.toml: {e}"));
    assert_eq!(orch["role"].as_str(), Some(role), "{ctx}");
    assert_eq!(orch["environment"].as_str(), Some("production"), "{ctx}");
    assert_eq!(
        orch["actions_dir"].as_str(),
        Some("/etc/troupe/actions.d"),
        "{ctx}"
    );
    // (action glob, roles the rule is limited to) of every allow rule.
    let rules: Vec<(String, Vec<String>)> = orch["rule"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|r| {
            assert_eq!(r["effect"].as_str(), Some("allow"), "{ctx}: {r}");
            assert_eq!(r["signers"].as_array().unwrap().len(), 1, "{ctx}: {r}");
            let roles: Vec<String> = r
                .get("roles")
                .and_then(|v| v.as_array())
                .map(|a| a.iter().map(|v| v.as_str().unwrap().to_owned()).collect())
                .unwrap_or_default();
            r["actions"]
                .as_array()
                .unwrap()
                .iter()
                .map(move |a| (a.as_str().unwrap().to_owned(), roles.clone()))
                .collect::<Vec<_>>()
        })
        .collect();
    let allowed = |action: &str| rules.iter().find(|(a, _)| a == action);
    assert_eq!(
        allowed("health.*"),
        Some(&("health.*".into(), vec![])),
        "{ctx}"
    );
    for action in ["nginx.reload", "nginx.configtest", "postgresql.vacuum"] {
        let module = action.split('.').next().unwrap();
        let rule = allowed(action);
        assert_eq!(
            rule.is_some(),
            declared.contains(&module),
            "{ctx}: {action}"
        );
        if let Some((_, roles)) = rule {
            assert_eq!(roles, &[role.to_string()], "{ctx}: {action}");
        }
    }
    // Deny by default: no rule allows everything.
    assert!(!rules.iter().any(|(a, _)| a == "*"), "{ctx}: {rules:?}");
}

fn res<'a>(cat: &'a Catalog, id: &str) -> &'a troupe_catalog::Resource {
    cat.resources
        .iter()
        .find(|r| r.id.0 == id)
        .unwrap_or_else(|| panic!("{id} not in catalog"))
}

fn pos(cat: &Catalog, id: &str) -> usize {
    cat.resources.iter().position(|r| r.id.0 == id).unwrap()
}

#[test]
fn golden_base() {
    for d in DISTROS {
        let cat = check("base", "mon2.example.com", d);
        // SSH hardening is there, validated, and restarts the right service.
        let sshd = res(&cat, "file[/etc/ssh/sshd_config]");
        let svc = if rhel(d) {
            "service[sshd]"
        } else {
            "service[ssh]"
        };
        assert_eq!(sshd.notify[0].0, svc);
        assert!(
            matches!(&sshd.kind, Kind::File { validate: Some(v), mode: Some(0o600), .. } if v[0] == "/usr/sbin/sshd")
        );
        assert!(pos(&cat, svc) > pos(&cat, "file[/etc/ssh/sshd_config]"));
        // Debian/Ubuntu: sshd's privilege separation directory exists before
        // `sshd -t` validates (systemd makes it only while ssh runs).
        assert_eq!(has(&cat, "directory[/run/sshd]"), !rhel(d), "{d}");
        if !rhel(d) {
            assert!(pos(&cat, "directory[/run/sshd]") < pos(&cat, "file[/etc/ssh/sshd_config]"));
        }
        // What acts on the running system is guarded, so the tree also
        // converges into a root or an image (tests/modules_debian_root.rs).
        for (id, dir) in [
            ("exec[sysctl-apply]", "/proc/sys/net"),
            ("exec[troupe-systemd-daemon-reload]", "/run/systemd/system"),
        ] {
            assert!(
                matches!(&res(&cat, id).kind, Kind::Exec { onlyif: Some(o), .. } if o == &["/usr/bin/test", "-d", dir]),
                "{d}: {id}"
            );
        }
        // Zone data: mon2 is in zone 2.
        let chrony = if rhel(d) {
            "file[/etc/chrony.conf]"
        } else {
            "file[/etc/chrony/chrony.conf]"
        };
        assert!(body(&cat, chrony).contains("pool ntp2.example.com iburst"));
        assert!(cat.resources.iter().all(|r| !r.sensitive));

        // Hardened sshd: no root, no passwords, only the managed keys.
        let cfg = body(&cat, "file[/etc/ssh/sshd_config]");
        for line in [
            "PermitRootLogin no",
            "PasswordAuthentication no",
            "AuthenticationMethods publickey",
            "AllowGroups admins",
            "AllowTcpForwarding no",
            "Banner /etc/issue.net",
        ] {
            assert!(cfg.lines().any(|l| l == line), "{d}: {line} missing");
        }
        assert!(
            !cfg.contains("Include /etc/ssh/sshd_config.d"),
            "{d}: drop-ins could re-enable passwords"
        );
        assert_eq!(
            cfg.contains("Include /etc/crypto-policies/back-ends/opensshserver.config"),
            rhel(d)
        );
        // sudo for admins, validated by visudo.
        assert!(matches!(
            &res(&cat, "file[/etc/sudoers.d/troupe-admins]").kind,
            Kind::File { validate: Some(v), mode: Some(0o440), .. } if v[0] == "/usr/sbin/visudo"
        ));
        // Firewall: ufw or firewalld, ssh open, enabled only after the rule.
        if rhel(d) {
            assert!(!has(&cat, "package[ufw]"));
            let z = body(&cat, "file[/etc/firewalld/zones/public.xml]");
            assert!(z.contains(r#"<port protocol="tcp" port="22"/>"#));
            assert_eq!(z.matches("<port ").count(), 1, "{d}: only ssh on base");
            assert!(pos(&cat, "exec[firewalld-reload]") > pos(&cat, "service[firewalld]"));
        } else {
            assert!(!has(&cat, "package[firewalld]"));
            assert!(pos(&cat, "exec[ufw-allow-ssh]") < pos(&cat, "exec[ufw-enable]"));
            assert!(!has(&cat, "exec[ufw-allow-http]"));
        }
        // fail2ban bans through the right firewall.
        let jail = body(&cat, "file[/etc/fail2ban/jail.d/troupe-sshd.local]");
        let banaction = if rhel(d) {
            "banaction = firewallcmd-rich-rules"
        } else {
            "banaction = ufw"
        };
        assert!(jail.contains(banaction) && jail.contains("[sshd]\nenabled = true"));
        assert_eq!(has(&cat, "package[epel-release]"), rhel(d));
        // Automatic security updates.
        if rhel(d) {
            assert!(
                body(&cat, "file[/etc/dnf/automatic.conf]").contains("upgrade_type = security")
            );
            res(&cat, "service[dnf-automatic.timer]");
        } else {
            let u = body(
                &cat,
                "file[/etc/apt/apt.conf.d/52troupe-unattended-upgrades]",
            );
            assert!(u.contains("-security"), "{d}: {u}");
            res(&cat, "file[/etc/apt/apt.conf.d/20auto-upgrades]");
        }
        // sysctl hardening, applied when it changes.
        let sysctl = body(&cat, "file[/etc/sysctl.d/60-troupe-hardening.conf]");
        assert!(sysctl.contains("net.ipv4.conf.all.accept_redirects = 0"));
        assert!(sysctl.contains("net.ipv4.tcp_syncookies = 1"));
        assert!(
            pos(&cat, "exec[sysctl-apply]")
                > pos(&cat, "file[/etc/sysctl.d/60-troupe-hardening.conf]")
        );
        // Banner, no ClamAV by default, the agent manages itself.
        assert!(body(&cat, "file[/etc/issue.net]").contains("Authorised access only"));
        assert!(!has(&cat, "package[clamav]"));
        let orch = body(&cat, "file[/etc/troupe/orchestration.toml]");
        assert!(orch.contains("role = \"base\"") && orch.contains("[[signer]]"));
        assert!(!orch.contains("haproxy_socket"));
        res(&cat, "service[troupe-agent]");
    }
}

#[test]
fn golden_web() {
    for d in DISTROS {
        let cat = check("web", "web4.example.com", d);
        res(&cat, "file[/etc/nginx/conf.d/www.conf]");
        res(&cat, "file[/etc/nginx/conf.d/status.conf]");
        // The vhost config comes after its directory's package and before the restart.
        assert!(pos(&cat, "package[nginx]") < pos(&cat, "directory[/etc/nginx/conf.d]"));
        assert!(pos(&cat, "file[/etc/nginx/conf.d/www.conf]") < pos(&cat, "service[nginx]"));
        let pkgs: Vec<&str> = cat
            .resources
            .iter()
            .filter(|r| r.id.kind() == "package")
            .map(|r| r.id.title())
            .collect();
        assert!(
            pkgs.contains(&"logrotate"),
            "role-level data merged deep: {pkgs:?}"
        );
        assert!(pkgs.contains(&"curl"));
        // TLS: the host's certificate copied for nginx before nginx.conf is
        // validated, the key 0600.
        let key = "file[/etc/nginx/tls/key.pem]";
        assert!(matches!(
            &res(&cat, key).kind,
            Kind::File {
                mode: Some(0o600),
                content: None,
                ..
            }
        ));
        assert!(pos(&cat, "exec[tls-nginx-key]") < pos(&cat, "file[/etc/nginx/nginx.conf]"));
        assert!(pos(&cat, "exec[tls-nginx-cert]") < pos(&cat, "service[nginx]"));
        let Kind::Exec {
            command, unless, ..
        } = &res(&cat, "exec[tls-nginx-key]").kind
        else {
            panic!()
        };
        assert_eq!(command[0], "/usr/bin/install");
        assert_eq!(unless.as_ref().unwrap()[0], "/usr/bin/cmp");
        let www = body(&cat, "file[/etc/nginx/conf.d/www.conf]");
        assert!(
            www.contains("listen 443 ssl;")
                && www.contains("ssl_certificate_key /etc/nginx/tls/key.pem;")
        );
        // Local HAProxy to the databases: web4 is in zone 1, as is db1.
        let h = body(&cat, "file[/etc/haproxy/haproxy.cfg]");
        assert!(h.contains("bind 127.0.0.1:5432"));
        assert!(h.contains("server db1.example.com db1.example.com:5432 check\n"));
        assert!(h.contains("server db2.example.com db2.example.com:5432 check backup\n"));
        assert!(h.contains("server db3.example.com db3.example.com:5432 check backup\n"));
        // SELinux lets HAProxy reach PostgreSQL on RHEL.
        assert_eq!(has(&cat, "exec[selinux-haproxy-connect-any]"), rhel(d));
        // Ports 80 and 443 opened.
        if rhel(d) {
            assert!(body(&cat, "file[/etc/firewalld/zones/public.xml]").contains(r#"port="443""#));
        } else {
            res(&cat, "exec[ufw-allow-https]");
        }
    }
}

#[test]
fn golden_lb() {
    for d in DISTROS {
        let cat = check("lb", "lb2.example.com", d);
        let h = body(&cat, "file[/etc/haproxy/haproxy.cfg]");
        assert!(h.contains("bind 0.0.0.0:443"));
        // lb2 is in zone 2: web2 and web5 primary, the rest backup.
        for n in 1..=6 {
            let primary = n % 3 == 2;
            let line = format!(
                "server web{n}.example.com web{n}.example.com:443 check check-ssl verify required ca-file /etc/haproxy/tls/ca.pem{}\n",
                if primary { "" } else { " backup" }
            );
            assert!(h.contains(&line), "{d}: {line}");
        }
        assert!(pos(&cat, "exec[tls-haproxy-ca]") < pos(&cat, "file[/etc/haproxy/haproxy.cfg]"));
        res(&cat, "file[/etc/haproxy/tls/cert.pem.key]");
        let sock = if rhel(d) {
            "/var/lib/haproxy/admin.sock"
        } else {
            "/run/haproxy/admin.sock"
        };
        assert!(h.contains(&format!("stats socket {sock} ")));
        let orch = body(&cat, "file[/etc/troupe/orchestration.toml]");
        assert!(orch.contains(&format!("haproxy_socket = \"{sock}\"")));
    }
}

#[test]
fn golden_bastion() {
    for d in DISTROS {
        let cat = check("bastion", "bastion.example.com", d);
        let cfg = body(&cat, "file[/etc/ssh/sshd_config]");
        assert!(cfg.contains("AllowTcpForwarding yes\n"));
        assert!(cfg.contains("PasswordAuthentication no\n"));
        // ClamAV turned on through data.
        res(&cat, "package[clamav]");
        let fresh = if rhel(d) {
            "package[clamav-update]"
        } else {
            "package[clamav-freshclam]"
        };
        res(&cat, fresh);
        res(&cat, "cron[troupe-clamscan]");
        // No number in the name: no zone line in the motd.
        assert!(!body(&cat, "file[/etc/motd]").contains("zone:"));
    }
}

#[test]
fn golden_proxy() {
    for d in DISTROS {
        let cat = check("proxy", "proxy1.example.com", d);
        let squid = res(&cat, "file[/etc/squid/squid.conf]");
        assert!(
            matches!(&squid.kind, Kind::File { validate: Some(v), .. } if v[..3] == ["/usr/sbin/squid", "-k", "parse"])
        );
        let conf = body(&cat, "file[/etc/squid/squid.conf]");
        assert!(conf.contains("acl whitelist dstdomain .debian.org\n"));
        assert!(conf.contains("http_access allow clients whitelist\nhttp_access allow localhost whitelist\nhttp_access deny all\n"));
        if !rhel(d) {
            res(&cat, "exec[ufw-allow-squid]");
        }
    }
}

#[test]
fn golden_db_with_secret() {
    for d in DISTROS {
        let cat = check("db", "db1.example.com", d);
        let sql = res(&cat, "file[/etc/troupe-postgresql/app.sql]");
        assert!(sql.sensitive, "the file holding the password is sensitive");
        let Kind::File {
            content: Some(cr), ..
        } = &sql.kind
        else {
            panic!()
        };
        let body = String::from_utf8(cat.contents[&cr.sha256].bytes().unwrap()).unwrap();
        assert!(body.contains("PASSWORD 'example-db-password-prod'"));
        // The key for PostgreSQL: root:ssl-cert 0640 on Debian, postgres 0600 on RHEL.
        let Kind::File {
            owner, group, mode, ..
        } = &res(&cat, "file[/etc/postgresql-tls/key.pem]").kind
        else {
            panic!()
        };
        if rhel(d) {
            assert_eq!(
                (owner.as_deref(), group.as_deref(), *mode),
                (Some("postgres"), Some("postgres"), Some(0o600))
            );
        } else {
            assert_eq!(
                (owner.as_deref(), group.as_deref(), *mode),
                (Some("root"), Some("ssl-cert"), Some(0o640))
            );
        }
        assert!(pos(&cat, "exec[tls-postgresql-key]") < pos(&cat, "service[postgresql]"));
        let conf_dir = match *d {
            "debian12" => "/etc/postgresql/15/main",
            "ubuntu2204" => "/etc/postgresql/14/main",
            "ubuntu2404" => "/etc/postgresql/16/main",
            _ => "/var/lib/pgsql/data",
        };
        let hba = self::body(&cat, &format!("file[{conf_dir}/pg_hba.conf]"));
        assert!(
            self::body(&cat, &format!("file[{conf_dir}/conf.d/50-troupe.conf]"))
                .contains("ssl_key_file = '/etc/postgresql-tls/key.pem'")
        );
        assert!(hba.contains("hostssl app"));
        // No internet access: packages through the egress proxy.
        let proxy = if rhel(d) {
            self::body(&cat, "file[/etc/dnf/dnf.conf]")
        } else {
            self::body(&cat, "file[/etc/apt/apt.conf.d/95troupe-proxy]")
        };
        assert!(
            proxy.contains("http://proxy1.example.com:3128"),
            "{d}: {proxy}"
        );
        // Only resources that hold the secret are sensitive.
        assert_eq!(cat.sensitive_ids().len(), 1);
        let initdb = cat
            .resources
            .iter()
            .any(|r| r.id.0 == "exec[postgresql-initdb]");
        assert_eq!(initdb, rhel(d));
    }
}

#[test]
fn development_environment_uses_its_own_tree_and_key() {
    let tree = common::shipped();
    let cat = tree
        .compile(
            "db3.dev.example.com",
            &common::facts("debian12"),
            &common::opts(),
        )
        .unwrap_or_else(|e| panic!("{}", e.render()));
    assert_eq!(cat.environment, "development");
    let f = res(&cat, "file[/etc/dbdev.conf]");
    assert!(f.sensitive);
    assert_ne!(
        tree.env_code_version("development"),
        tree.env_code_version("production")
    );
    assert_eq!(
        cat.code_version,
        tree.env_code_version("development").unwrap()
    );
}
