//! Issue 19 item 5 end to end: git-backed environments with a real master
//! (`--modules git+file://REPO`) and real agents. Each branch of a git
//! repository made here is an environment: a new branch appears at
//! `troupe env sync`, a commit to an unheld branch is served after the
//! sync, a commit to the held production is staged until `troupe env
//! promote`, a branch whose name is not an environment name is skipped, a
//! commit that does not load keeps the old one serving and shows the
//! error.

use std::path::{Path, PathBuf};
use std::process::Command;
use troupe_tests::{Master, MasterOptions, Out};

struct Repo {
    dir: tempfile::TempDir,
}

impl Repo {
    fn git(&self, args: &[&str]) -> String {
        let out = Command::new("git")
            .args(["-c", "user.name=t", "-c", "user.email=t@example.com"])
            .args(args)
            .current_dir(self.dir.path())
            .env("GIT_CONFIG_GLOBAL", "/dev/null")
            .output()
            .expect("git");
        assert!(out.status.success(), "git {args:?}: {out:?}");
        String::from_utf8(out.stdout).unwrap().trim().to_owned()
    }

    fn write(&self, rel: &str, text: &str) {
        let p = self.dir.path().join(rel);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(p, text).unwrap();
    }

    /// Commits an environment whose hosts get this motd on `branch`
    /// (branched off the current one when new); returns the commit.
    fn commit(&self, branch: &str, motd: &str) -> String {
        if !self.git(&["branch", "--list"]).is_empty() {
            if self.git(&["branch", "--list", branch]).is_empty() {
                self.git(&["checkout", "-q", "-b", branch]);
            } else {
                self.git(&["checkout", "-q", branch]);
            }
        }
        self.write(
            "site.toml",
            "default_environment = \"production\"\n[[node]]\nmatch = \"dev*\"\nenvironment = \"development\"\n[[node]]\nmatch = \"*\"\nrole = \"base\"\n",
        );
        self.write(
            "hierarchy.toml",
            "[[level]]\nname = \"common\"\npath = \"common.toml\"\n",
        );
        self.write("roles/base.toml", "include = [\"motd\"]\n");
        self.write(
            "profiles/motd.toml",
            &format!("[file.\"/etc/motd\"]\ncontent = \"{motd}\\n\"\nmode = \"0644\"\n"),
        );
        self.git(&["add", "-A"]);
        self.git(&["commit", "-q", "-m", motd]);
        self.git(&["rev-parse", "HEAD"])
    }
}

struct Fleet {
    m: Master,
}

impl Fleet {
    fn root(&self, host: &str) -> PathBuf {
        let r = self.m.root.path().join("roots").join(host);
        std::fs::create_dir_all(r.join("etc")).unwrap();
        r
    }

    fn motd(&self, host: &str) -> String {
        let root = self.root(host);
        let out = self
            .m
            .agent_cmd(host, "run", &["--once", "--root", root.to_str().unwrap()]);
        assert!(
            matches!(out.code, Some(0) | Some(2)),
            "{host}: {out:#?}\nmaster log:\n{}",
            self.m.log()
        );
        std::fs::read_to_string(root.join("etc/motd")).unwrap()
    }

    fn troupe(&self, args: &[&str]) -> Out {
        troupe_tests::run(
            Command::new(troupe_tests::troupe_bin())
                .args(args)
                .arg("--data")
                .arg(&self.m.data),
        )
    }

    fn status(&self) -> serde_json::Value {
        let s = self.troupe(&["env", "status", "--json"]);
        serde_json::from_str(&s.stdout).unwrap_or_else(|e| panic!("{e}: {s:#?}"))
    }
}

fn has_checkout(data: &Path, env: &str, commit: &str) -> bool {
    data.join("git/checkouts")
        .join(format!("{env}.{commit}"))
        .join("environments")
        .join(env)
        .join("profiles/motd.toml")
        .is_file()
}

#[test]
fn git_branches_are_environments_with_a_master() {
    let repo = Repo {
        dir: tempfile::tempdir().unwrap(),
    };
    repo.git(&["init", "-q", "-b", "production"]);
    let p1 = repo.commit("production", "prod v1");
    let url = format!("git+file://{}", repo.dir.path().display());
    let m = Master::start_with(MasterOptions {
        modules: Some(PathBuf::from(&url)),
        extra_args: ["--hold", "production", "--git-poll", "0"]
            .map(String::from)
            .to_vec(),
    });
    let f = Fleet { m };
    for h in ["web1", "dev1"] {
        let psk = f.m.psk(h);
        f.m.bootstrap(h, Some(&psk)).assert_success();
    }
    assert_eq!(f.motd("web1"), "prod v1\n");
    let st = f.status();
    assert_eq!(st["source"], "git");
    assert_eq!(st["commits"]["production"], p1.as_str());
    assert_eq!(st["git"]["poll_secs"], 0);
    assert!(has_checkout(&f.m.data, "production", &p1));

    // 1. A new branch appears as an environment at `troupe env sync`.
    let d1 = repo.commit("development", "dev v1");
    let s = f.troupe(&["env", "sync"]);
    assert_eq!(s.code, Some(0), "{s:#?}");
    assert!(
        s.stdout
            .contains(&format!("development      added: serving {:.12}", d1)),
        "{}",
        s.stdout
    );
    assert_eq!(f.motd("dev1"), "dev v1\n");

    // 2. A commit to an unheld branch serves after the sync, not before.
    let d2 = repo.commit("development", "dev v2");
    assert_eq!(f.motd("dev1"), "dev v1\n");
    let s = f.troupe(&["env", "sync", "development", "--json"]);
    assert_eq!(s.code, Some(0), "{s:#?}");
    let v: serde_json::Value = serde_json::from_str(&s.stdout).unwrap();
    assert_eq!(v["environments"]["development"]["action"], "updated");
    assert_eq!(v["environments"]["development"]["serving"], d2.as_str());
    assert_eq!(f.motd("dev1"), "dev v2\n");

    // 3. A commit to the held production: staged, not served, until
    //    promoted; status shows both commits.
    let p2 = repo.commit("production", "prod v2");
    let s = f.troupe(&["env", "sync"]);
    assert_eq!(s.code, Some(0), "{s:#?}");
    assert!(
        s.stdout.contains(&format!(
            "production       staged {:.12} (held; {:.12} keeps serving",
            p2, p1
        )),
        "{}",
        s.stdout
    );
    assert_eq!(f.motd("web1"), "prod v1\n");
    let st = f.status();
    assert_eq!(st["commits"]["production"], p1.as_str());
    assert_eq!(st["staged_commits"]["production"], p2.as_str());
    let text = f.troupe(&["env", "status"]);
    assert_eq!(text.code, Some(0), "{text:#?}");
    assert!(
        text.stdout.contains(&format!("commit {:.12}  (held)", p1))
            && text.stdout.contains(&format!(
                "commit {:.12}: `troupe env promote production`",
                p2
            )),
        "{}",
        text.stdout
    );
    let d = f.troupe(&["env", "diff", "production", "--staged"]);
    assert_eq!(d.code, Some(2), "{d:#?}");
    assert!(d.stdout.contains("+prod v2"), "{}", d.stdout);
    let p = f.troupe(&["env", "promote", "production", "--yes"]);
    assert_eq!(p.code, Some(0), "{p:#?}");
    assert_eq!(f.motd("web1"), "prod v2\n");
    let st = f.status();
    assert_eq!(st["commits"]["production"], p2.as_str());
    assert!(st["staged_commits"].is_null(), "{st}");

    // 4. A branch whose name is not an environment name is skipped, with
    //    the reason, and nothing on disk is named after it.
    repo.git(&["branch", "Feature/X"]);
    let s = f.troupe(&["env", "sync"]);
    assert_eq!(s.code, Some(0), "{s:#?}");
    assert!(
        s.stdout
            .contains("branch \"Feature/X\" is not a valid environment name"),
        "{}",
        s.stdout
    );
    let st = f.status();
    assert!(st["git"]["skipped"]["Feature/X"].is_string(), "{st}");
    assert!(st["environments"].get("Feature/X").is_none());
    assert!(
        std::fs::read_dir(f.m.data.join("git/checkouts"))
            .unwrap()
            .all(|e| !e.unwrap().file_name().to_string_lossy().contains("Feature")),
    );

    // 5. A commit whose module tree does not load: the old commit keeps
    //    serving, sync and status say why (exit 2).
    repo.git(&["checkout", "-q", "development"]);
    repo.write("profiles/motd.toml", "[file.\"/etc/motd\"\ncontent = \n");
    repo.git(&["commit", "-q", "-am", "broken"]);
    let broken = repo.git(&["rev-parse", "HEAD"]);
    let s = f.troupe(&["env", "sync"]);
    assert_eq!(s.code, Some(2), "{s:#?}");
    assert!(
        s.stdout.contains(&format!(
            "development      FAILED: commit {:.12} does not load; {:.12} keeps serving",
            broken, d2
        )) && s.stdout.contains("motd.toml"),
        "{}",
        s.stdout
    );
    assert_eq!(f.motd("dev1"), "dev v2\n");
    let text = f.troupe(&["env", "status"]);
    assert_eq!(text.code, Some(2), "{text:#?}");
    assert!(
        text.stdout.contains("does NOT load") && text.stdout.contains("motd.toml"),
        "{}",
        text.stdout
    );
    let st = f.status();
    assert_eq!(
        st["git"]["failed"]["development"]["commit"],
        broken.as_str()
    );
    assert_eq!(st["commits"]["development"], d2.as_str());
    assert!(f.m.log().contains("does not load"), "{}", f.m.log());

    // 6. A restart serves the same commits (production stays promoted,
    //    development on its last good commit), and with a poll the next
    //    good commit serves without `env sync`.
    let mut f = f;
    let opts = MasterOptions {
        modules: Some(PathBuf::from(&url)),
        extra_args: ["--hold", "production", "--git-poll", "1s"]
            .map(String::from)
            .to_vec(),
    };
    f.m.restart(&opts);
    let st = f.status();
    assert_eq!(st["commits"]["production"], p2.as_str());
    assert_eq!(st["commits"]["development"], d2.as_str());
    assert_eq!(
        st["git"]["failed"]["development"]["commit"],
        broken.as_str()
    );
    let d3 = repo.commit("development", "dev v3");
    troupe_tests::wait_until(std::time::Duration::from_secs(20), "the poll", || {
        f.status()["commits"]["development"] == d3.as_str()
    });
    assert_eq!(f.motd("dev1"), "dev v3\n");
    assert!(f.status()["git"]["failed"].as_object().unwrap().is_empty());

    // 7. A deleted branch keeps its environment serving (listed as
    //    removed) until `troupe env sync ENV` names it.
    let q = repo.commit("qa", "qa v1");
    troupe_tests::wait_until(std::time::Duration::from_secs(20), "qa", || {
        f.status()["commits"]["qa"] == q.as_str()
    });
    repo.git(&["checkout", "-q", "production"]);
    repo.git(&["branch", "-D", "qa"]);
    troupe_tests::wait_until(std::time::Duration::from_secs(20), "qa removed", || {
        f.status()["git"]["removed"] == serde_json::json!(["qa"])
    });
    let st = f.status();
    assert_eq!(st["commits"]["qa"], q.as_str());
    assert!(st["environments"]["qa"].is_string());
    let text = f.troupe(&["env", "status"]);
    assert!(
        text.stdout
            .contains("(branch removed: `troupe env sync qa` removes it)"),
        "{}",
        text.stdout
    );
    let s = f.troupe(&["env", "sync", "qa"]);
    assert_eq!(s.code, Some(0), "{s:#?}");
    assert!(
        s.stdout.contains("qa               removed"),
        "{}",
        s.stdout
    );
    let st = f.status();
    assert!(st["environments"].get("qa").is_none(), "{st}");
    assert!(st["commits"].get("qa").is_none(), "{st}");
}
