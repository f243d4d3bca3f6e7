//! Building blocks shared by CA and leaf certificates: serial numbers,
//! validity times, and signing a builder's output through a device key.

use std::time::Duration;

use der::asn1::{BitString, GeneralizedTime, UtcTime};
use signature::Keypair;
use spki::{
    AlgorithmIdentifierOwned, DynSignatureAlgorithmIdentifier, EncodePublicKey,
    SubjectPublicKeyInfoRef,
};
use x509_cert::builder::Builder;
use x509_cert::builder::profile::BuilderProfile;
use x509_cert::certificate::TbsCertificate;
use x509_cert::ext::Extension;
use x509_cert::name::Name;
use x509_cert::serial_number::SerialNumber;
use x509_cert::time::Time;

use super::{X509Error, oids};
use crate::clock::Timestamp;
use crate::keys::{DeviceKey, PublicKey};

/// Bytes of a serial number: 16 bytes with the top bit clear, so 127 bits
/// of which 126 are random (well above the 64 bits CA/B Forum requires).
const SERIAL_BYTES: usize = 16;

/// A random, positive serial number from the operating system's CSPRNG.
pub fn random_serial() -> Result<SerialNumber, X509Error> {
    let mut bytes = [0u8; SERIAL_BYTES];
    getrandom::fill(&mut bytes)
        .map_err(|e| X509Error::Encoding(format!("no randomness from the OS: {e}")))?;
    // Clear the sign bit and set the next one: the integer is positive and
    // always encodes in exactly 16 bytes (no leading zero byte to strip).
    bytes[0] = (bytes[0] & 0x7f) | 0x40;
    Ok(SerialNumber::new(&bytes)?)
}

/// The X.509 `Time` for an instant: UTCTime through 2049, GeneralizedTime
/// from 2050 (RFC 5280 §4.1.2.5), at second precision.
pub fn certificate_time(t: Timestamp) -> Result<Time, X509Error> {
    let secs = u64::try_from(t.unix())
        .map_err(|_| X509Error::InvalidValidity(format!("{t} is before 1970")))?;
    let d = Duration::from_secs(secs);
    if t.year() <= 2049 {
        Ok(Time::UtcTime(UtcTime::from_unix_duration(d)?))
    } else if t.year() <= 9999 {
        Ok(Time::GeneralTime(GeneralizedTime::from_unix_duration(d)?))
    } else {
        Err(X509Error::InvalidValidity(format!(
            "{t} is after the year 9999"
        )))
    }
}

/// A `GeneralizedTime` at second precision (session evidence, timestamp
/// tokens).
pub fn generalized(t: Timestamp) -> Result<GeneralizedTime, X509Error> {
    let secs = u64::try_from(t.unix())
        .map_err(|_| X509Error::InvalidValidity(format!("{t} is before 1970")))?;
    Ok(GeneralizedTime::from_unix_duration(Duration::from_secs(
        secs,
    ))?)
}

/// Reads a certificate `Time` back as an instant.
pub(crate) fn timestamp_of(t: &Time) -> Timestamp {
    Timestamp::from_unix(t.to_unix_duration().as_secs() as i64)
}

/// Adapts a device key to the builder traits of `x509-cert`: it supplies
/// the public key and the signature algorithm; the signature itself is made
/// by [`sign_with`].
struct DeviceSigner<'a>(&'a dyn DeviceKey);

impl Keypair for DeviceSigner<'_> {
    type VerifyingKey = PublicKey;

    fn verifying_key(&self) -> PublicKey {
        self.0.public_key().clone()
    }
}

impl DynSignatureAlgorithmIdentifier for DeviceSigner<'_> {
    fn signature_algorithm_identifier(&self) -> spki::Result<AlgorithmIdentifierOwned> {
        Ok(AlgorithmIdentifierOwned {
            oid: oids::ECDSA_SHA256,
            parameters: None,
        })
    }
}

impl EncodePublicKey for PublicKey {
    fn to_public_key_der(&self) -> spki::Result<der::Document> {
        Ok(der::Document::try_from(self.spki_der())?)
    }
}

/// Finalises `builder`, has `key` sign the to-be-signed bytes, and
/// assembles the signed object.
pub(crate) fn sign_with<B: Builder>(
    mut builder: B,
    key: &dyn DeviceKey,
) -> Result<B::Output, X509Error> {
    let signer = DeviceSigner(key);
    let tbs = builder.finalize(&signer)?;
    let signature = key.sign(&tbs)?;
    let bits = BitString::from_bytes(&signature.to_der())?;
    Ok(builder.assemble(bits, &signer)?)
}

/// A builder profile whose subject, issuer and extensions are all decided
/// beforehand by the caller.
pub(crate) struct FixedProfile {
    pub subject: Name,
    pub issuer: Name,
    pub extensions: Vec<Extension>,
}

impl BuilderProfile for FixedProfile {
    fn get_issuer(&self, _subject: &Name) -> Name {
        self.issuer.clone()
    }

    fn get_subject(&self) -> Name {
        self.subject.clone()
    }

    fn build_extensions(
        &self,
        _spk: SubjectPublicKeyInfoRef<'_>,
        _issuer_spk: SubjectPublicKeyInfoRef<'_>,
        _tbs: &TbsCertificate,
    ) -> x509_cert::builder::Result<Vec<Extension>> {
        Ok(self.extensions.clone())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use der::Encode;

    #[test]
    fn serials_are_positive_sixteen_bytes_and_distinct() {
        let a = random_serial().unwrap();
        let b = random_serial().unwrap();
        assert_ne!(a, b);
        for s in [a, b] {
            assert_eq!(s.as_bytes().len(), 16);
            assert!(s.as_bytes()[0] & 0x80 == 0 && s.as_bytes()[0] & 0x40 != 0);
            // INTEGER tag, length 16, no leading zero byte.
            assert_eq!(&s.to_der().unwrap()[..2], &[0x02, 16]);
        }
    }

    #[test]
    fn time_encoding_switches_to_generalized_in_2050() {
        let last_utc = Timestamp::parse_rfc3339("2049-12-31T23:59:59Z").unwrap();
        assert!(matches!(
            certificate_time(last_utc).unwrap(),
            Time::UtcTime(_)
        ));
        let first_gen = last_utc.plus_secs(1);
        assert!(matches!(
            certificate_time(first_gen).unwrap(),
            Time::GeneralTime(_)
        ));
        assert_eq!(
            timestamp_of(&certificate_time(first_gen).unwrap()),
            first_gen
        );
        assert!(certificate_time(Timestamp::from_unix(-1)).is_err());
        assert!(
            certificate_time(Timestamp::parse_rfc3339("9999-12-31T23:59:59Z").unwrap()).is_ok()
        );
    }
}
