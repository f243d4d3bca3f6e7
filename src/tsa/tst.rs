//! The RFC 3161 structures lockstep writes and reads, derived with `der`.
//!
//! `x509-tsp` defines them too, but only on the previous RustCrypto
//! generation (der 0.7, x509-cert 0.2); these few SEQUENCEs are cheaper to
//! declare here than to cross generations for every token. The CMS around
//! them comes from the `cms` crate.

use der::asn1::{GeneralizedTime, Int, ObjectIdentifier, OctetString};
use der::{Enumerated, Sequence};
use spki::AlgorithmIdentifierOwned;
use x509_cert::ext::pkix::name::GeneralNames;
use x509_cert::serial_number::SerialNumber;

/// `TSTInfo` (RFC 3161 §2.4.2): what a timestamp token signs.
#[derive(Clone, Debug, Eq, PartialEq, Sequence)]
pub struct TstInfo {
    /// Always 1.
    pub version: u8,
    /// The TSA policy the token was issued under.
    pub policy: ObjectIdentifier,
    /// The hash of what was stamped.
    pub message_imprint: MessageImprint,
    /// Unique per token of this TSA.
    pub serial_number: SerialNumber,
    /// When.
    pub gen_time: GeneralizedTime,
    /// How far off `gen_time` may be.
    #[asn1(optional = "true")]
    pub accuracy: Option<Accuracy>,
    /// The client's nonce, echoed.
    #[asn1(optional = "true")]
    pub nonce: Option<Int>,
}

/// `MessageImprint`: a hash algorithm and the hash.
#[derive(Clone, Debug, Eq, PartialEq, Sequence)]
pub struct MessageImprint {
    /// The hash algorithm (SHA-256 here).
    pub hash_algorithm: AlgorithmIdentifierOwned,
    /// The hash.
    pub hashed_message: OctetString,
}

/// `Accuracy`, in whole seconds (lockstep's clock is read to the second).
#[derive(Clone, Debug, Eq, PartialEq, Sequence)]
pub struct Accuracy {
    /// Seconds either side of `genTime`.
    #[asn1(optional = "true")]
    pub seconds: Option<u32>,
}

/// `PKIStatus` values lockstep answers with.
#[derive(Clone, Copy, Debug, Eq, PartialEq, Enumerated)]
#[asn1(type = "INTEGER")]
#[repr(u8)]
pub enum PkiStatus {
    /// The token is there.
    Granted = 0,
    /// The token is there, with changes.
    GrantedWithMods = 1,
    /// No token.
    Rejection = 2,
    /// Not yet.
    Waiting = 3,
    /// Revocation is imminent.
    RevocationWarning = 4,
    /// Revoked.
    RevocationNotification = 5,
}

/// `PKIStatusInfo` with the status alone.
#[derive(Clone, Debug, Eq, PartialEq, Sequence)]
pub struct PkiStatusInfo {
    /// The status.
    pub status: PkiStatus,
}

/// `TimeStampResp` (RFC 3161 §2.4.2): the status and the token, a CMS
/// `ContentInfo` holding `SignedData` over the `TSTInfo`.
#[derive(Clone, Debug, Eq, PartialEq, Sequence)]
pub struct TimeStampResp {
    /// Granted, for every response lockstep writes.
    pub status: PkiStatusInfo,
    /// The token.
    #[asn1(optional = "true")]
    pub time_stamp_token: Option<cms::content_info::ContentInfo>,
}

/// `SigningCertificateV2` (RFC 5035): which certificate signed the token.
#[derive(Clone, Debug, Eq, PartialEq, Sequence)]
pub struct SigningCertificateV2 {
    /// The TSA's certificate first.
    pub certs: Vec<EssCertIdV2>,
}

/// `ESSCertIDv2` with the default hash (SHA-256, so the algorithm is
/// left out as DER requires).
#[derive(Clone, Debug, Eq, PartialEq, Sequence)]
pub struct EssCertIdV2 {
    /// SHA-256 of the certificate's DER.
    pub cert_hash: OctetString,
    /// The certificate's issuer and serial.
    pub issuer_serial: IssuerSerial,
}

/// `IssuerSerial`: the issuer as a directory name, and the serial.
#[derive(Clone, Debug, Eq, PartialEq, Sequence)]
pub struct IssuerSerial {
    /// The issuer's name.
    pub issuer: GeneralNames,
    /// The serial.
    pub serial_number: SerialNumber,
}
