//! The key file is standard PKCS#8 (PBES2/scrypt/AES-256-CBC): OpenSSL reads
//! it with the passphrase and finds the same public key.

use std::process::Command as Proc;

use troupe_bastion::FileSigner;

#[test]
fn openssl_reads_the_encrypted_key_file() {
    let have = Proc::new("openssl")
        .arg("version")
        .output()
        .is_ok_and(|o| o.status.success());
    assert!(
        have,
        "`openssl` not found: install it (`apt-get install -y openssl`); CI's .ci/run installs it"
    );
    let dir = tempfile::tempdir().unwrap();
    let key = dir.path().join("ops.key");
    let pass = dir.path().join("pass");
    std::fs::write(&pass, "interop passphrase\n").unwrap();
    let signer = FileSigner::generate().unwrap();
    signer.write_encrypted(&key, "interop passphrase").unwrap();

    let out = Proc::new("openssl")
        .args(["pkey", "-pubout", "-outform", "DER", "-passin"])
        .arg(format!("file:{}", pass.display()))
        .arg("-in")
        .arg(&key)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "openssl: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    // SubjectPublicKeyInfo for ed25519 ends with the 32 raw key bytes.
    assert_eq!(out.stdout.len(), 44);
    assert_eq!(&out.stdout[12..], signer.verifying_key().as_bytes());

    // A wrong passphrase fails in OpenSSL too.
    std::fs::write(&pass, "wrong\n").unwrap();
    let out = Proc::new("openssl")
        .args(["pkey", "-noout", "-passin"])
        .arg(format!("file:{}", pass.display()))
        .arg("-in")
        .arg(&key)
        .output()
        .unwrap();
    assert!(!out.status.success());
}
