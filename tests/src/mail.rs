//! A real local SMTP server for the sink tests (issue 17): Debian's
//! aiosmtpd with STARTTLS required, its certificate for `localhost` signed
//! by a CA of the test's own, delivering into a maildir.

use crate::Proc;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// Starts aiosmtpd on a free loopback port. Writes `DIR/smtp-ca.pem` (the
/// CA a sink must trust), the server's certificate and key; mail lands in
/// the returned maildir. The server stops when the [`Proc`] is dropped.
pub fn smtp_server(dir: &Path) -> (Proc, u16, PathBuf) {
    let ca_key = rcgen::KeyPair::generate().unwrap();
    let mut ca_p = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_p.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    let ca = ca_p.self_signed(&ca_key).unwrap();
    let issuer = rcgen::Issuer::new(ca_p, ca_key);
    let key = rcgen::KeyPair::generate().unwrap();
    let leaf = rcgen::CertificateParams::new(vec!["localhost".to_string()])
        .unwrap()
        .signed_by(&key, &issuer)
        .unwrap();
    std::fs::write(dir.join("smtp-ca.pem"), ca.pem()).unwrap();
    std::fs::write(dir.join("smtp-cert.pem"), leaf.pem()).unwrap();
    std::fs::write(dir.join("smtp-key.pem"), key.serialize_pem()).unwrap();
    let maildir = dir.join("mail");
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let child = Command::new("/usr/bin/python3")
        .args(["-m", "aiosmtpd", "-n", "-l"])
        .arg(format!("127.0.0.1:{port}"))
        .arg("--tlscert")
        .arg(dir.join("smtp-cert.pem"))
        .arg("--tlskey")
        .arg(dir.join("smtp-key.pem"))
        .args(["-c", "aiosmtpd.handlers.Mailbox"])
        .arg(&maildir)
        .stderr(Stdio::null())
        .spawn()
        .expect("python3 -m aiosmtpd (apt-get install python3-aiosmtpd)");
    let p = Proc(child);
    let t = Instant::now();
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(
            t.elapsed() < Duration::from_secs(20),
            "aiosmtpd did not start (apt-get install python3-aiosmtpd)"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    (p, port, maildir)
}

/// Every mail delivered to `maildir`, sorted, quoted-printable soft line
/// breaks undone.
pub fn mails(maildir: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(maildir.join("new"))
        .map(|rd| {
            rd.flatten()
                .map(|e| {
                    std::fs::read_to_string(e.path())
                        .unwrap_or_default()
                        .replace("=\r\n", "")
                        .replace("=\n", "")
                })
                .collect()
        })
        .unwrap_or_default();
    v.sort();
    v
}
