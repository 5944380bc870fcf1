//! A throwaway certificate authority made with strongSwan's `pki`, once per test process.

use std::fs;
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::thread;

use anyhow::{ensure, Context, Result};

use crate::lab::{RunPrefix, TempDir};

/// The identity every responder presents (one VPN service behind one VIP, one certificate).
pub const SERVER_ID: &str = "vpn.ikelb.test";

/// The identity of client `i` (its certificate's CN and subjectAltName).
pub fn client_id(i: usize) -> String {
    format!("client{i:02}.ikelb.test")
}

/// RSA-3072 throughout: it makes IKE_AUTH ~1.8 kB, larger than the path MTU, which is the
/// point of the fragmentation assertions.
const KEY_BITS: &str = "3072";
/// Certificate lifetime in days; the CA lives only as long as the test process.
const LIFETIME_DAYS: &str = "2";
/// `pki` loads only what it needs (the default list includes `tpm`, which complains on every
/// call when no TPM stack is installed).
const PKI_CONF: &str = "pki {\n  load = random nonce openssl pem pkcs1 x509 sha2 gmp\n}\n";

/// PEM text of the CA certificate, the responders' key and certificate, and the clients' key
/// and certificates.
///
/// All clients share one key pair and differ by certificate: RSA key generation is the slow
/// part (~0.4 s a key), the identity a responder authenticates is the certificate's, and each
/// client still signs its own AUTH payload.
#[derive(Debug)]
pub struct Pki {
    pub ca_cert: String,
    pub server_key: String,
    pub server_cert: String,
    pub client_key: String,
    /// `client_certs[i]` names [`client_id`]`(i)`.
    pub client_certs: Vec<String>,
}

impl Pki {
    /// The process's CA with at least `clients` client certificates, made on first use (and
    /// remade, larger, if a later lab needs more clients).
    pub fn get(clients: usize) -> Result<Arc<Pki>> {
        static PKI: Mutex<Option<Arc<Pki>>> = Mutex::new(None);
        let mut cached = PKI.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        if let Some(pki) = cached.as_ref().filter(|p| p.client_certs.len() >= clients) {
            return Ok(Arc::clone(pki));
        }
        let pki = Arc::new(Self::generate(clients)?);
        *cached = Some(Arc::clone(&pki));
        Ok(pki)
    }

    fn generate(clients: usize) -> Result<Self> {
        let tmp = TempDir::new(&RunPrefix::new('s'))?;
        let dir = tmp.path();
        let conf = dir.join("pki.conf");
        fs::write(&conf, PKI_CONF)?;
        let pki = |args: &[&str]| pki(&conf, dir, args);

        let keys: Vec<Result<String>> = thread::scope(|s| {
            let gens: Vec<_> = (0..3)
                .map(|_| {
                    s.spawn(|| {
                        pki(&[
                            "--gen",
                            "--type",
                            "rsa",
                            "--size",
                            KEY_BITS,
                            "--outform",
                            "pem",
                        ])
                    })
                })
                .collect();
            gens.into_iter()
                .map(|g| g.join().expect("pki --gen thread panicked"))
                .collect()
        });
        let keys = keys.into_iter().collect::<Result<Vec<String>>>()?;
        let [ca_key, server_key, client_key] = <[String; 3]>::try_from(keys).expect("three keys");
        for (file, pem) in [
            ("ca.key", &ca_key),
            ("server.key", &server_key),
            ("client.key", &client_key),
        ] {
            fs::write(dir.join(file), pem)?;
        }

        let ca_cert = pki(&[
            "--self",
            "--ca",
            "--lifetime",
            LIFETIME_DAYS,
            "--in",
            "ca.key",
            "--dn",
            "CN=ikelb interop test CA",
            "--outform",
            "pem",
        ])?;
        fs::write(dir.join("ca.pem"), &ca_cert)?;
        for who in ["server", "client"] {
            let public = pki(&["--pub", "--in", &format!("{who}.key"), "--outform", "pem"])?;
            fs::write(dir.join(format!("{who}.pub")), public)?;
        }
        let issue = |public: &str, id: &str, flag: &str| {
            pki(&[
                "--issue",
                "--in",
                public,
                "--type",
                "pub",
                "--cacert",
                "ca.pem",
                "--cakey",
                "ca.key",
                "--lifetime",
                LIFETIME_DAYS,
                "--dn",
                &format!("CN={id}"),
                "--san",
                id,
                "--flag",
                flag,
                "--outform",
                "pem",
            ])
        };
        let server_cert = issue("server.pub", SERVER_ID, "serverAuth")?;
        let client_certs = (0..clients)
            .map(|i| issue("client.pub", &client_id(i), "clientAuth"))
            .collect::<Result<_>>()?;
        Ok(Self {
            ca_cert,
            server_key,
            server_cert,
            client_key,
            client_certs,
        })
    }
}

/// `pki ARGS` in `dir` with its own strongswan.conf; stdout (a PEM object) on success.
fn pki(conf: &Path, dir: &Path, args: &[&str]) -> Result<String> {
    let out = Command::new("pki")
        .args(args)
        .current_dir(dir)
        .env("STRONGSWAN_CONF", conf)
        .stdin(Stdio::null())
        .output()
        .context("cannot run pki (strongswan-pki)")?;
    ensure!(
        out.status.success(),
        "pki {args:?} failed ({}): {}",
        out.status,
        String::from_utf8_lossy(&out.stderr).trim()
    );
    let pem = String::from_utf8(out.stdout).context("pki printed non-UTF-8")?;
    ensure!(
        pem.starts_with("-----BEGIN "),
        "pki {args:?} printed no PEM: {pem}"
    );
    Ok(pem)
}
