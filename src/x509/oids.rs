//! Object identifiers lockstep reads or writes, in one place.

use der::asn1::ObjectIdentifier as Oid;

/// `id-ecPublicKey`.
pub const EC_PUBLIC_KEY: Oid = Oid::new_unwrap("1.2.840.10045.2.1");
/// `secp256r1` (P-256).
pub const P256: Oid = Oid::new_unwrap("1.2.840.10045.3.1.7");
/// `secp384r1` (P-384).
pub const P384: Oid = Oid::new_unwrap("1.3.132.0.34");
/// `secp521r1` (P-521), recognised only to be refused by name.
pub const P521: Oid = Oid::new_unwrap("1.3.132.0.35");
/// `rsaEncryption`.
pub const RSA_ENCRYPTION: Oid = Oid::new_unwrap("1.2.840.113549.1.1.1");
/// `id-RSASSA-PSS`.
pub const RSASSA_PSS: Oid = Oid::new_unwrap("1.2.840.113549.1.1.10");
/// `id-Ed25519`.
pub const ED25519: Oid = Oid::new_unwrap("1.3.101.112");
/// `id-Ed448`.
pub const ED448: Oid = Oid::new_unwrap("1.3.101.113");
/// `id-dsa`.
pub const DSA: Oid = Oid::new_unwrap("1.2.840.10040.4.1");

/// `ecdsa-with-SHA1`, recognised only to be refused by name.
pub const ECDSA_SHA1: Oid = Oid::new_unwrap("1.2.840.10045.4.1");
/// `sha1WithRSAEncryption`, recognised only to be refused by name.
pub const RSA_SHA1: Oid = Oid::new_unwrap("1.2.840.113549.1.1.5");
/// `ecdsa-with-SHA256`.
pub const ECDSA_SHA256: Oid = Oid::new_unwrap("1.2.840.10045.4.3.2");
/// `ecdsa-with-SHA384`.
pub const ECDSA_SHA384: Oid = Oid::new_unwrap("1.2.840.10045.4.3.3");
/// `ecdsa-with-SHA512`.
pub const ECDSA_SHA512: Oid = Oid::new_unwrap("1.2.840.10045.4.3.4");
/// `sha256WithRSAEncryption`.
pub const RSA_SHA256: Oid = Oid::new_unwrap("1.2.840.113549.1.1.11");
/// `sha384WithRSAEncryption`.
pub const RSA_SHA384: Oid = Oid::new_unwrap("1.2.840.113549.1.1.12");
/// `sha512WithRSAEncryption`.
pub const RSA_SHA512: Oid = Oid::new_unwrap("1.2.840.113549.1.1.13");

/// `id-ad-ocsp` (Authority Information Access).
pub const AD_OCSP: Oid = Oid::new_unwrap("1.3.6.1.5.5.7.48.1");
/// `id-kp-serverAuth`.
pub const KP_SERVER_AUTH: Oid = Oid::new_unwrap("1.3.6.1.5.5.7.3.1");
/// `id-kp-clientAuth`.
pub const KP_CLIENT_AUTH: Oid = Oid::new_unwrap("1.3.6.1.5.5.7.3.2");
/// `id-kp-codeSigning`.
pub const KP_CODE_SIGNING: Oid = Oid::new_unwrap("1.3.6.1.5.5.7.3.3");
/// `id-kp-timeStamping` (RFC 3161 requires it alone, and critical).
pub const KP_TIME_STAMPING: Oid = Oid::new_unwrap("1.3.6.1.5.5.7.3.8");

/// `id-sha256`.
pub const SHA256: Oid = Oid::new_unwrap("2.16.840.1.101.3.4.2.1");
/// `id-sha384`.
pub const SHA384: Oid = Oid::new_unwrap("2.16.840.1.101.3.4.2.2");
/// `id-sha512`.
pub const SHA512: Oid = Oid::new_unwrap("2.16.840.1.101.3.4.2.3");
/// CMS `id-signedData`.
pub const SIGNED_DATA: Oid = Oid::new_unwrap("1.2.840.113549.1.7.2");
/// RFC 3161 `id-ct-TSTInfo`: the content a timestamp token signs.
pub const CT_TST_INFO: Oid = Oid::new_unwrap("1.2.840.113549.1.9.16.1.4");
/// CMS signed attribute `contentType`.
pub const ATTR_CONTENT_TYPE: Oid = Oid::new_unwrap("1.2.840.113549.1.9.3");
/// CMS signed attribute `messageDigest`.
pub const ATTR_MESSAGE_DIGEST: Oid = Oid::new_unwrap("1.2.840.113549.1.9.4");
/// ESS `id-aa-signingCertificateV2` (RFC 5035): binds the TSA's
/// certificate into what it signs.
pub const ATTR_SIGNING_CERTIFICATE_V2: Oid = Oid::new_unwrap("1.2.840.113549.1.9.16.2.47");

/// `commonName`.
pub const COMMON_NAME: Oid = Oid::new_unwrap("2.5.4.3");
/// `organizationName`.
pub const ORGANIZATION: Oid = Oid::new_unwrap("2.5.4.10");
/// `organizationalUnitName`.
pub const ORGANIZATIONAL_UNIT: Oid = Oid::new_unwrap("2.5.4.11");
/// `countryName`.
pub const COUNTRY: Oid = Oid::new_unwrap("2.5.4.6");

/// The arc under which lockstep defines its own identifiers.
///
/// It sits under IANA Private Enterprise Number 32473, which RFC 5612
/// reserves for documentation and examples. lockstep uses it until it has
/// an enterprise number of its own; every lockstep OID is derived from this
/// one constant, so moving is a one-line change. (A `2.25.<UUID>` arc needs
/// no registration, but its 128-bit arc breaks common X.509 parsers, Go's
/// and RustCrypto's among them.)
pub const LOCKSTEP_ARC: Oid = Oid::new_unwrap("1.3.6.1.4.1.32473.7683");
/// The extended key usage of lockstep's audit signer (checkpoint
/// signatures): `{ lockstep-arc 2 1 }`.
pub const KP_LOCKSTEP_AUDIT: Oid = Oid::new_unwrap("1.3.6.1.4.1.32473.7683.2.1");
/// The certificate extension carrying a certificate's lockstep session
/// (see [`super::extension`]): `{ lockstep-arc 1 1 }`.
pub const LOCKSTEP_SESSION_EXT: Oid = Oid::new_unwrap("1.3.6.1.4.1.32473.7683.1.1");
/// The policy under which lockstep's timestamp authority issues its
/// RFC 3161 tokens: `{ lockstep-arc 3 1 }`. It says: the time is the
/// issuer's clock, to the second (accuracy 1 s); the imprint is of the
/// signature bytes a session's own certificate made, and lockstep checked
/// that signature, that the session was open and that the artifact was
/// the approved one before it stamped.
pub const TSA_POLICY: Oid = Oid::new_unwrap("1.3.6.1.4.1.32473.7683.3.1");

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lockstep_oids_hang_off_the_arc() {
        assert!(LOCKSTEP_SESSION_EXT.starts_with(LOCKSTEP_ARC));
        assert!(TSA_POLICY.starts_with(LOCKSTEP_ARC));
    }
}
