//! `lockstep ssh`: an OpenSSH user certificate for an open `ssh-user`
//! session, for a key generated in memory or one the user has.

use std::path::{Path, PathBuf};

use clap::Args;
use ssh_key::private::{EcdsaKeypair, KeypairData};
use ssh_key::{LineEnding, PrivateKey};

use super::Output;
use super::client_args::ClientArgs;
use crate::api::views::SshCertificateBody;
use crate::error::Error;
use crate::fsio::write_atomic;

/// Get an SSH user certificate for an open session: a key generated in
/// memory (written 0600 with its certificate) or `--public-key`. Prints
/// the `ssh` command line to use.
#[derive(Debug, Args)]
pub struct SshArgs {
    #[command(flatten)]
    client: ClientArgs,
    /// The session id.
    id: String,
    /// Certify this public key (an OpenSSH `.pub` file) instead of
    /// generating one; the certificate goes beside it as `…-cert.pub`.
    #[arg(long)]
    public_key: Option<PathBuf>,
    /// Where the generated private key goes (mode 0600); the certificate
    /// is written beside it as `…-cert.pub`.
    #[arg(long, default_value = "lockstep-ssh", conflicts_with = "public_key")]
    key_out: PathBuf,
    /// The host to show in the printed `ssh` command.
    #[arg(long, default_value = "HOST")]
    host: String,
}

/// Where ssh looks for the certificate of the key at `key`: `key-cert.pub`
/// (for `key.pub`, the same name).
fn certificate_path(key: &Path) -> PathBuf {
    let name = key
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let stem = name.strip_suffix(".pub").unwrap_or(&name);
    key.with_file_name(format!("{stem}-cert.pub"))
}

/// A fresh ecdsa-sha2-nistp256 key, in memory only.
fn generated_key(comment: &str) -> Result<PrivateKey, Error> {
    let secret = super::cert::fresh_p256_key()?;
    let public = secret.public_key();
    let pair = EcdsaKeypair::NistP256 {
        public: public.into(),
        private: secret.into(),
    };
    PrivateKey::new(KeypairData::Ecdsa(pair), comment)
        .map_err(|e| Error::InvalidArgument(format!("key generation: {e}")))
}

/// Runs `ssh`.
pub fn run(args: SshArgs, out: Output) -> Result<(), Error> {
    let client = args.client.client()?;
    let (key, public_key, cert_path) = match &args.public_key {
        Some(path) => {
            let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
            (None, text, certificate_path(path))
        }
        None => {
            let key = generated_key(&format!("lockstep {}", args.id))?;
            let public = key
                .public_key()
                .to_openssh()
                .map_err(|e| Error::InvalidArgument(format!("key encoding: {e}")))?;
            (Some(key), public, certificate_path(&args.key_out))
        }
    };
    let body = SshCertificateBody { public_key };
    let issued = super::session::runtime()?.block_on(client.ssh_certificate(&args.id, &body))?;
    let identity = match &key {
        Some(key) => {
            let pem = key
                .to_openssh(LineEnding::LF)
                .map_err(|e| Error::InvalidArgument(format!("key encoding: {e}")))?;
            write_atomic(&args.key_out, pem.as_bytes(), 0o600)?;
            args.key_out.clone()
        }
        None => {
            let path = args.public_key.clone().unwrap_or_default();
            let name = path.to_string_lossy();
            PathBuf::from(name.strip_suffix(".pub").unwrap_or(&name).to_owned())
        }
    };
    write_atomic(
        &cert_path,
        format!("{}\n", issued.certificate).as_bytes(),
        0o600,
    )?;
    let principal = issued.principals.first().cloned().unwrap_or_default();
    let command = format!(
        "ssh -i {} -o CertificateFile={} {principal}@{}",
        identity.display(),
        cert_path.display(),
        args.host
    );
    out.print(
        &serde_json::json!({
            "session": issued.session, "serial": issued.serial, "key_id": issued.key_id,
            "principals": issued.principals, "fingerprint": issued.fingerprint,
            "valid_after": issued.valid_after, "valid_before": issued.valid_before,
            "key_file": key.as_ref().map(|_| &args.key_out), "certificate_file": cert_path,
            "ssh": command,
        }),
        || {
            format!(
                "SSH certificate {} for session {} as {} until {}\n  wrote {}{}\n  {command}\n",
                issued.serial,
                issued.session,
                issued.principals.join(", "),
                issued.valid_before,
                cert_path.display(),
                key.as_ref()
                    .map(|_| format!(", {} (0600)", args.key_out.display()))
                    .unwrap_or_default(),
            )
        },
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn certificates_go_where_ssh_looks_for_them() {
        assert_eq!(
            certificate_path(Path::new("/k/id_ed25519.pub")),
            Path::new("/k/id_ed25519-cert.pub")
        );
        assert_eq!(
            certificate_path(Path::new("lockstep-ssh")),
            Path::new("lockstep-ssh-cert.pub")
        );
    }
}
