//! `hanmadi gen-cert [--out-dir DIR] [--hostname NAME]...`: writes a
//! self-signed `cert.pem` and `key.pem` (mode 0600) for local TLS; the
//! default is `--out-dir . --hostname localhost`.

use std::path::PathBuf;

use clap::Args;

use super::TlsError;

/// `hanmadi gen-cert` flags.
#[derive(Debug, Clone, Args)]
pub struct GenCertArgs {
    /// Directory to write cert.pem and key.pem into (created if missing).
    #[arg(long, value_name = "DIR", default_value = ".")]
    pub out_dir: PathBuf,
    /// DNS name or IP address the certificate is for; repeat for several.
    #[arg(long = "hostname", value_name = "NAME", default_value = "localhost")]
    pub hostnames: Vec<String>,
}

impl GenCertArgs {
    /// Where the certificate goes: `<out_dir>/cert.pem`.
    #[must_use]
    pub fn cert_path(&self) -> PathBuf {
        self.out_dir.join("cert.pem")
    }

    /// Where the key goes: `<out_dir>/key.pem`.
    #[must_use]
    pub fn key_path(&self) -> PathBuf {
        self.out_dir.join("key.pem")
    }

    /// Creates `out_dir` if needed and writes the certificate and key.
    ///
    /// # Errors
    ///
    /// [`TlsError::Write`] if the directory cannot be created, otherwise
    /// whatever [`super::generate_self_signed`] returns.
    pub fn run(&self) -> Result<(), TlsError> {
        std::fs::create_dir_all(&self.out_dir).map_err(|source| TlsError::Write {
            path: self.out_dir.clone(),
            source,
        })?;
        super::generate_self_signed(&self.hostnames, &self.cert_path(), &self.key_path())
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use clap::Parser as _;

    use crate::config::{Cli, Command};

    #[test]
    fn gen_cert_args() {
        let Command::GenCert(g) = Cli::try_parse_from(["hanmadi", "gen-cert"])
            .unwrap()
            .command
        else {
            panic!("not gen-cert")
        };
        assert_eq!(g.out_dir, std::path::PathBuf::from("."));
        assert_eq!(g.hostnames, vec!["localhost".to_owned()]);

        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("certs");
        let Command::GenCert(g) = Cli::try_parse_from([
            "hanmadi",
            "gen-cert",
            "--out-dir",
            out.to_str().unwrap(),
            "--hostname",
            "chat.example.com",
            "--hostname",
            "127.0.0.1",
        ])
        .unwrap()
        .command
        else {
            panic!("not gen-cert")
        };
        assert_eq!(g.hostnames, vec!["chat.example.com", "127.0.0.1"]);
        g.run().unwrap();
        crate::tls::server_config(&g.cert_path(), &g.key_path()).unwrap();
    }
}
