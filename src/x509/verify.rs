//! Public keys from `SubjectPublicKeyInfo` and signature verification, for
//! the keys lockstep accepts from outside: EC P-256, EC P-384 and RSA of
//! 2048 to 8192 bits. Verification uses `ring`.

use der::asn1::{ObjectIdentifier, UintRef};
use der::{Decode, Sequence, Tagged};
use ring::signature::{self as rs, UnparsedPublicKey};
use spki::{AlgorithmIdentifierOwned, SubjectPublicKeyInfoRef};

use super::X509Error;
use super::oids;

/// The smallest RSA modulus accepted.
pub const MIN_RSA_BITS: usize = 2048;
/// The largest RSA modulus accepted (bounds verification cost).
pub const MAX_RSA_BITS: usize = 8192;

/// A public key of a kind lockstep accepts.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum KeyKind {
    /// EC over P-256.
    EcP256,
    /// EC over P-384.
    EcP384,
    /// RSA with a modulus of this many bits.
    Rsa {
        /// Modulus size in bits.
        bits: usize,
    },
}

impl std::fmt::Display for KeyKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::EcP256 => f.write_str("EC P-256"),
            Self::EcP384 => f.write_str("EC P-384"),
            Self::Rsa { bits } => write!(f, "RSA {bits}"),
        }
    }
}

/// `RSAPublicKey ::= SEQUENCE { modulus INTEGER, publicExponent INTEGER }`.
#[derive(Sequence)]
struct RsaPublicKey<'a> {
    modulus: UintRef<'a>,
    public_exponent: UintRef<'a>,
}

/// Classifies a `SubjectPublicKeyInfo`, refusing kinds lockstep does not
/// accept with an error that says what is accepted.
pub fn key_kind(spki: &SubjectPublicKeyInfoRef<'_>) -> Result<KeyKind, X509Error> {
    let alg = spki.algorithm.oid;
    let bits = spki.subject_public_key.as_bytes().ok_or_else(|| {
        X509Error::UnsupportedKey("the public key bit string is not whole bytes".into())
    })?;
    if alg == oids::EC_PUBLIC_KEY {
        let curve: ObjectIdentifier = spki
            .algorithm
            .parameters
            .as_ref()
            .and_then(|p| p.decode_as().ok())
            .ok_or_else(|| X509Error::UnsupportedKey("EC key without a named curve".into()))?;
        let (kind, len) = if curve == oids::P256 {
            (KeyKind::EcP256, 65)
        } else if curve == oids::P384 {
            (KeyKind::EcP384, 97)
        } else if curve == oids::P521 {
            return Err(X509Error::UnsupportedKey(
                "EC P-521 is not accepted; use EC P-256, EC P-384 or RSA ≥ 2048".into(),
            ));
        } else {
            return Err(X509Error::UnsupportedKey(format!(
                "EC curve {curve} is not accepted; use EC P-256, EC P-384 or RSA ≥ 2048"
            )));
        };
        if bits.len() != len || bits[0] != 0x04 {
            return Err(X509Error::UnsupportedKey(format!(
                "{kind} public key must be an uncompressed point of {len} bytes"
            )));
        }
        if kind == KeyKind::EcP256 && p256::PublicKey::from_sec1_bytes(bits).is_err() {
            return Err(X509Error::UnsupportedKey(
                "EC P-256 point is not on the curve".into(),
            ));
        }
        return Ok(kind);
    }
    if alg == oids::RSA_ENCRYPTION {
        let key = RsaPublicKey::from_der(bits)
            .map_err(|_| X509Error::UnsupportedKey("malformed RSA public key".into()))?;
        let n = key.modulus.as_bytes();
        let bits = n.len() * 8 - n.first().map_or(8, |b| b.leading_zeros() as usize);
        if bits < MIN_RSA_BITS {
            return Err(X509Error::UnsupportedKey(format!(
                "RSA {bits} is too small; use RSA ≥ {MIN_RSA_BITS} (or EC P-256)"
            )));
        }
        if bits > MAX_RSA_BITS {
            return Err(X509Error::UnsupportedKey(format!(
                "RSA {bits} is larger than the {MAX_RSA_BITS}-bit maximum"
            )));
        }
        let e = key.public_exponent.as_bytes();
        if e.is_empty() || e.last().is_some_and(|b| b & 1 == 0) || e == [1] {
            return Err(X509Error::UnsupportedKey(
                "RSA public exponent is invalid".into(),
            ));
        }
        return Ok(KeyKind::Rsa { bits });
    }
    let name = if alg == oids::ED25519 {
        "Ed25519".to_owned()
    } else if alg == oids::ED448 {
        "Ed448".to_owned()
    } else if alg == oids::DSA {
        "DSA".to_owned()
    } else if alg == oids::RSASSA_PSS {
        "RSASSA-PSS-only RSA".to_owned()
    } else {
        format!("algorithm {alg}")
    };
    Err(X509Error::UnsupportedKey(format!(
        "{name} keys are not accepted; use EC P-256, EC P-384 or RSA ≥ 2048"
    )))
}

/// Verifies `signature` over `message` made with the key in `spki` using
/// `algorithm`. Returns `SignatureInvalid` when it does not verify and
/// `UnsupportedAlgorithm` for algorithms lockstep does not accept.
pub fn verify_signature(
    spki: &SubjectPublicKeyInfoRef<'_>,
    algorithm: &AlgorithmIdentifierOwned,
    message: &[u8],
    signature: &[u8],
) -> Result<(), X509Error> {
    let kind = key_kind(spki)?;
    let oid = algorithm.oid;
    let params: &dyn rs::VerificationAlgorithm = match (&kind, oid) {
        (KeyKind::EcP256, o) if o == oids::ECDSA_SHA256 => &rs::ECDSA_P256_SHA256_ASN1,
        (KeyKind::EcP256, o) if o == oids::ECDSA_SHA384 => &rs::ECDSA_P256_SHA384_ASN1,
        (KeyKind::EcP384, o) if o == oids::ECDSA_SHA256 => &rs::ECDSA_P384_SHA256_ASN1,
        (KeyKind::EcP384, o) if o == oids::ECDSA_SHA384 => &rs::ECDSA_P384_SHA384_ASN1,
        (KeyKind::Rsa { .. }, o) if o == oids::RSA_SHA256 => &rs::RSA_PKCS1_2048_8192_SHA256,
        (KeyKind::Rsa { .. }, o) if o == oids::RSA_SHA384 => &rs::RSA_PKCS1_2048_8192_SHA384,
        (KeyKind::Rsa { .. }, o) if o == oids::RSA_SHA512 => &rs::RSA_PKCS1_2048_8192_SHA512,
        (_, o) => {
            let name = match o {
                o if o == oids::ECDSA_SHA512 => "ecdsa-with-SHA512".to_owned(),
                o if o == oids::RSASSA_PSS => "RSASSA-PSS".to_owned(),
                o if o == oids::ED25519 => "Ed25519".to_owned(),
                o if o == oids::RSA_SHA1 => "sha1WithRSAEncryption (SHA-1)".to_owned(),
                o if o == oids::ECDSA_SHA1 => "ecdsa-with-SHA1 (SHA-1)".to_owned(),
                o => o.to_string(),
            };
            return Err(X509Error::UnsupportedAlgorithm(format!(
                "signature algorithm {name} with a {kind} key is not accepted; sign with SHA-256 or SHA-384 (ECDSA) or PKCS#1 v1.5 with SHA-256/384/512 (RSA)"
            )));
        }
    };
    // ECDSA and PKCS#1 v1.5 signature algorithm identifiers carry no
    // parameters (RSA ones an explicit NULL); anything else is malformed.
    if let Some(p) = &algorithm.parameters {
        let is_null = p.tag() == der::Tag::Null && p.value().is_empty();
        if !(matches!(kind, KeyKind::Rsa { .. }) && is_null) {
            return Err(X509Error::UnsupportedAlgorithm(
                "unexpected parameters in the signature algorithm".into(),
            ));
        }
    }
    let key_bytes = spki.subject_public_key.raw_bytes();
    UnparsedPublicKey::new(params, key_bytes)
        .verify(message, signature)
        .map_err(|_| X509Error::SignatureInvalid)
}
