//! What kind of credential a session is for.

use serde::{Deserialize, Serialize};

use crate::x509::CertProfile;

/// A session's credential profile.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Profile {
    /// A TLS client certificate (EKU clientAuth).
    MtlsClient,
    /// A code-signing certificate (EKU codeSigning).
    CodeSigning,
    /// A session-bound JWT.
    Token,
    /// An OpenSSH user certificate for a key the requester sends.
    SshUser,
}

impl Profile {
    /// The profile's name in policy and on the wire.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::MtlsClient => "mtls-client",
            Self::CodeSigning => "code-signing",
            Self::Token => "token",
            Self::SshUser => "ssh-user",
        }
    }

    /// The certificate profile, for profiles that mint certificates.
    pub fn certificate(self) -> Option<CertProfile> {
        match self {
            Self::MtlsClient => Some(CertProfile::MtlsClient),
            Self::CodeSigning => Some(CertProfile::CodeSigning),
            Self::Token | Self::SshUser => None,
        }
    }

    /// Parses a profile name.
    pub fn parse(text: &str) -> Option<Self> {
        match text {
            "mtls-client" => Some(Self::MtlsClient),
            "code-signing" => Some(Self::CodeSigning),
            "token" => Some(Self::Token),
            "ssh-user" => Some(Self::SshUser),
            _ => None,
        }
    }
}

impl std::fmt::Display for Profile {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}
