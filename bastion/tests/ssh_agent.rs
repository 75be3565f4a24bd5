//! Signing through a real ssh-agent (OpenSSH), started by the test on a
//! temporary socket and killed at the end. Needs `openssh-client`
//! (ssh-agent, ssh-add, ssh-keygen); CI installs it.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command as Proc, Stdio};
use std::time::{Duration, Instant};

use troupe_bastion::keys::{SshAgentSigner, ssh_agent_keys};
use troupe_command::envelope::{Command, TargetFilter};
use troupe_command::keys::{KeyError, KeyId, Signer};
use troupe_command::verify::{HostContext, TrustedSigners, Verifier};
use troupe_command::{Policy, Registry};

fn require(tool: &str) {
    let found = std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).any(|d| d.join(tool).is_file()))
        .unwrap_or(false);
    assert!(
        found,
        "`{tool}` not found: install OpenSSH's client tools (`apt-get install -y openssh-client`); \
         CI's .ci/run must install openssh-client for this test"
    );
}

/// A running ssh-agent, killed on drop.
struct Agent {
    child: Child,
    sock: PathBuf,
}

impl Agent {
    fn start(dir: &Path) -> Self {
        require("ssh-agent");
        let sock = dir.join("agent.sock");
        let child = Proc::new("ssh-agent")
            .args(["-D", "-a"])
            .arg(&sock)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("cannot start ssh-agent");
        let agent = Agent { child, sock };
        let deadline = Instant::now() + Duration::from_secs(10);
        while !agent.sock.exists() {
            assert!(
                Instant::now() < deadline,
                "ssh-agent did not create its socket within 10 s"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        agent
    }

    fn add(&self, key: &Path) {
        require("ssh-add");
        let st = Proc::new("ssh-add")
            .arg(key)
            .env("SSH_AUTH_SOCK", &self.sock)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .expect("cannot run ssh-add");
        assert!(st.success(), "ssh-add failed");
    }

    fn remove_all(&self) {
        let st = Proc::new("ssh-add")
            .arg("-D")
            .env("SSH_AUTH_SOCK", &self.sock)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .expect("cannot run ssh-add");
        assert!(st.success());
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn keygen(dir: &Path, name: &str, ty: &str) -> PathBuf {
    require("ssh-keygen");
    let path = dir.join(name);
    let st = Proc::new("ssh-keygen")
        .args(["-q", "-t", ty, "-N", "", "-C", name, "-f"])
        .arg(&path)
        .stdout(Stdio::null())
        .status()
        .expect("cannot run ssh-keygen");
    assert!(st.success(), "ssh-keygen failed");
    path
}

fn openssh_fingerprint(pubkey: &Path) -> String {
    let out = Proc::new("ssh-keygen")
        .args(["-l", "-E", "sha256", "-f"])
        .arg(pubkey)
        .output()
        .unwrap();
    assert!(out.status.success());
    String::from_utf8(out.stdout)
        .unwrap()
        .split_whitespace()
        .nth(1)
        .unwrap()
        .to_string()
}

#[test]
fn signs_through_a_real_ssh_agent_and_verifies() {
    let dir = tempfile::tempdir().unwrap();
    let agent = Agent::start(dir.path());
    let key = keygen(dir.path(), "ops_ed25519", "ed25519");
    agent.add(&key);
    // An RSA key in the agent is ignored (not an ed25519 signer).
    let rsa = keygen(dir.path(), "other_rsa", "rsa");
    agent.add(&rsa);

    let listed = ssh_agent_keys(&agent.sock).unwrap();
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0].1, "ops_ed25519");

    let mut signer = SshAgentSigner::connect(&agent.sock, None).unwrap();
    let id = signer.key_id().clone();
    // Our fingerprint is OpenSSH's.
    assert_eq!(
        id.openssh_fingerprint(),
        openssh_fingerprint(&key.with_extension("pub"))
    );

    let cmd = Command::new(
        id.clone(),
        "ping",
        BTreeMap::new(),
        TargetFilter::default(),
        1_800_000_000,
        60,
    )
    .unwrap();
    let sc = cmd.sign(&mut signer).unwrap();

    let mut trusted = TrustedSigners::default();
    trusted.add("ops", id.clone()).unwrap();
    let policy = Policy::from_toml(
        "[[rule]]\neffect = \"allow\"\nsigners = [\"ops\"]\nactions = [\"ping\"]\n",
    )
    .unwrap();
    let host = HostContext {
        name: "web-01".into(),
        ..Default::default()
    };
    let v = Verifier::new(
        trusted,
        Registry::builtin(),
        policy,
        &dir.path().join("replay.redb"),
        host,
    )
    .unwrap();
    let ok = v.verify_wire(&sc.to_wire(), 1_800_000_000).unwrap();
    assert_eq!(ok.signer_name, "ops");

    // Choosing the key by id works; an id the agent does not hold is refused.
    SshAgentSigner::connect(&agent.sock, Some(&id)).unwrap();
    let other = troupe_bastion::FileSigner::generate()
        .unwrap()
        .key_id()
        .clone();
    assert!(matches!(
        SshAgentSigner::connect(&agent.sock, Some(&other)),
        Err(KeyError::AgentNoKey(_))
    ));

    // Two ed25519 keys and no choice: ambiguous.
    let second = keygen(dir.path(), "second_ed25519", "ed25519");
    agent.add(&second);
    assert!(matches!(
        SshAgentSigner::connect(&agent.sock, None),
        Err(KeyError::AgentAmbiguous(_))
    ));

    // Keys removed from the agent: signing fails with an error, no panic.
    agent.remove_all();
    assert!(signer.sign(b"anything").is_err());
    assert!(matches!(
        SshAgentSigner::connect(&agent.sock, None),
        Err(KeyError::AgentNoKey(_))
    ));
}

#[test]
fn no_agent_is_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    match SshAgentSigner::connect(&dir.path().join("nope.sock"), None) {
        Err(KeyError::Agent(msg)) => assert!(msg.contains("cannot connect"), "{msg}"),
        other => panic!("{other:?}"),
    }
    let _ = KeyId::parse("ed25519:x").unwrap_err();
}
