//! TPM object templates and attribute decoding: what a lockstep signing key
//! and its parent look like in the TPM, and how `keys list` reads what is
//! there.

use tss_esapi::Error as TssError;
use tss_esapi::attributes::ObjectAttributes;
use tss_esapi::interface_types::algorithm::{HashingAlgorithm, PublicAlgorithm};
use tss_esapi::interface_types::ecc::EccCurve;
use tss_esapi::structures::{
    EccParameter, EccPoint, EccScheme, HashScheme, Public, PublicBuilder,
    PublicEccParametersBuilder, SymmetricDefinitionObject,
};

use crate::keys::{KeyError, ObjectInfo, Protection, PublicKey};

/// The template of the primary key lockstep creates its keys under: the
/// ECC P-256 Storage Root Key template of the TCG "TPM 2.0 Provisioning
/// Guidance" (and of `tpm2_createprimary -C o -G ecc256:aes128cfb`), in the
/// owner hierarchy.
///
/// - type ECC, curve NIST P-256, name algorithm SHA-256, no KDF, scheme
///   NULL;
/// - attributes `fixedTPM | fixedParent | sensitiveDataOrigin |
///   userWithAuth | noDA | restricted | decrypt`;
/// - symmetric AES-128-CFB (for its children's private parts);
/// - empty auth value and auth policy; `unique` = x and y of 32 zero bytes.
///
/// A primary key is derived from the hierarchy's seed and the template, so
/// this template gives the same key on every call until the owner
/// hierarchy is cleared; lockstep creates it only while creating a key and
/// flushes it right after (its keys are then persistent on their own).
pub(super) fn primary_template() -> Result<Public, TssError> {
    let attributes = ObjectAttributes::builder()
        .with_fixed_tpm(true)
        .with_fixed_parent(true)
        .with_sensitive_data_origin(true)
        .with_user_with_auth(true)
        .with_no_da(true)
        .with_restricted(true)
        .with_decrypt(true)
        .build()?;
    let zero = EccParameter::try_from(vec![0u8; 32])?;
    PublicBuilder::new()
        .with_public_algorithm(PublicAlgorithm::Ecc)
        .with_name_hashing_algorithm(HashingAlgorithm::Sha256)
        .with_object_attributes(attributes)
        .with_ecc_parameters(
            PublicEccParametersBuilder::new_restricted_decryption_key(
                SymmetricDefinitionObject::AES_128_CFB,
                EccCurve::NistP256,
            )
            .build()?,
        )
        .with_ecc_unique_identifier(EccPoint::new(zero.clone(), zero))
        .build()
}

/// The template of a lockstep signing key: ECC P-256, scheme ECDSA with
/// SHA-256, name algorithm SHA-256, attributes `fixedTPM | fixedParent |
/// sensitiveDataOrigin | userWithAuth | sign` (not `decrypt`, not
/// `restricted`, so it signs digests computed outside the TPM and can do
/// nothing else). `fixedTPM | fixedParent` mean it can never be duplicated
/// out of this TPM; `sensitiveDataOrigin` means the TPM generated it.
pub(super) fn signing_template() -> Result<Public, TssError> {
    let attributes = ObjectAttributes::builder()
        .with_fixed_tpm(true)
        .with_fixed_parent(true)
        .with_sensitive_data_origin(true)
        .with_user_with_auth(true)
        .with_sign_encrypt(true)
        .with_decrypt(false)
        .with_restricted(false)
        .build()?;
    PublicBuilder::new()
        .with_public_algorithm(PublicAlgorithm::Ecc)
        .with_name_hashing_algorithm(HashingAlgorithm::Sha256)
        .with_object_attributes(attributes)
        .with_ecc_parameters(
            PublicEccParametersBuilder::new_unrestricted_signing_key(
                EccScheme::EcDsa(HashScheme::new(HashingAlgorithm::Sha256)),
                EccCurve::NistP256,
            )
            .build()?,
        )
        .with_ecc_unique_identifier(EccPoint::default())
        .build()
}

/// Left-pads a TPM2B big-endian value to 32 bytes (the TPM drops leading
/// zero bytes).
fn pad32(v: &[u8]) -> Option<[u8; 32]> {
    if v.len() > 32 {
        return None;
    }
    let mut out = [0u8; 32];
    out[32 - v.len()..].copy_from_slice(v);
    Some(out)
}

/// The public key of a lockstep signing key, after checking that the
/// object is one: ECC P-256, signing, not decrypting, not restricted, with
/// scheme ECDSA-SHA256 (or none, in which case lockstep names it when
/// signing).
pub(super) fn signing_public_key(public: &Public, what: &str) -> Result<PublicKey, KeyError> {
    let Public::Ecc {
        object_attributes,
        parameters,
        unique,
        ..
    } = public
    else {
        return Err(KeyError::Unsupported(format!("{what} is not an ECC key")));
    };
    if parameters.ecc_curve() != EccCurve::NistP256 {
        return Err(KeyError::Unsupported(format!(
            "{what} is not an EC P-256 key ({:?})",
            parameters.ecc_curve()
        )));
    }
    if !object_attributes.sign_encrypt()
        || object_attributes.decrypt()
        || object_attributes.restricted()
    {
        return Err(KeyError::Unsupported(format!(
            "{what} is not an unrestricted signing-only key (attributes {})",
            attribute_names(*object_attributes).join("|")
        )));
    }
    match parameters.ecc_scheme() {
        EccScheme::Null => {}
        EccScheme::EcDsa(h) if h.hashing_algorithm() == HashingAlgorithm::Sha256 => {}
        other => {
            return Err(KeyError::Unsupported(format!(
                "{what} has signing scheme {other:?}; lockstep needs ECDSA with SHA-256"
            )));
        }
    }
    let (Some(x), Some(y)) = (pad32(unique.x().value()), pad32(unique.y().value())) else {
        return Err(KeyError::Unsupported(format!(
            "{what} has an EC point longer than P-256's"
        )));
    };
    let mut point = Vec::with_capacity(65);
    point.push(0x04);
    point.extend_from_slice(&x);
    point.extend_from_slice(&y);
    PublicKey::from_p256_sec1(&point)
}

/// The TPM object attributes that are set, by their specification names in
/// lower case (as `tpm2_readpublic` prints them).
pub(super) fn attribute_names(a: ObjectAttributes) -> Vec<String> {
    [
        (a.fixed_tpm(), "fixedtpm"),
        (a.st_clear(), "stclear"),
        (a.fixed_parent(), "fixedparent"),
        (a.sensitive_data_origin(), "sensitivedataorigin"),
        (a.user_with_auth(), "userwithauth"),
        (a.admin_with_policy(), "adminwithpolicy"),
        (a.no_da(), "noda"),
        (a.encrypted_duplication(), "encryptedduplication"),
        (a.restricted(), "restricted"),
        (a.decrypt(), "decrypt"),
        (a.sign_encrypt(), "sign"),
        (a.x509_sign(), "x509sign"),
    ]
    .into_iter()
    .filter(|(set, _)| *set)
    .map(|(_, name)| name.to_owned())
    .collect()
}

/// The PKCS#11-style protection flags of a TPM object:
///
/// - `extractable` = not (`fixedTPM` and `fixedParent`): only an object
///   with both set can never be duplicated (wrapped) out from under its
///   parent;
/// - `sensitive` = not `extractable`: the TPM never reveals a private part
///   in plaintext, so what matters is whether it can leave at all;
/// - `always_sensitive` = `never_extractable` = `sensitiveDataOrigin` and
///   `fixedTPM`: generated inside this TPM and bound to it since creation
///   (an imported key or a duplicable one may have existed elsewhere);
/// - `local` = `sensitiveDataOrigin`: the TPM generated the private part.
pub(super) fn protection(a: ObjectAttributes) -> Protection {
    let extractable = !(a.fixed_tpm() && a.fixed_parent());
    let bound_since_creation = a.sensitive_data_origin() && a.fixed_tpm();
    Protection {
        sensitive: !extractable,
        extractable,
        always_sensitive: bound_since_creation,
        never_extractable: bound_since_creation,
        local: a.sensitive_data_origin(),
    }
}

/// Describes the persistent object at `handle` for `keys list`.
pub(super) fn describe(handle: u32, public: &Public, label: Option<&str>) -> ObjectInfo {
    let attributes = public.object_attributes();
    let (class, key_type) = match public {
        Public::Ecc { parameters, .. } => (
            "private-key".to_owned(),
            match parameters.ecc_curve() {
                EccCurve::NistP256 => "EC P-256".to_owned(),
                EccCurve::NistP384 => "EC P-384".to_owned(),
                EccCurve::NistP521 => "EC P-521".to_owned(),
                other => format!("EC {other:?}"),
            },
        ),
        Public::Rsa { parameters, .. } => (
            "private-key".to_owned(),
            format!("RSA {}", u16::from(parameters.key_bits())),
        ),
        Public::KeyedHash { .. } if attributes.sign_encrypt() => {
            ("secret-key".to_owned(), "HMAC".to_owned())
        }
        Public::KeyedHash { .. } => ("data".to_owned(), "sealed".to_owned()),
        Public::SymCipher { .. } => ("secret-key".to_owned(), "SYMCIPHER".to_owned()),
    };
    ObjectInfo {
        class,
        label: label.unwrap_or_default().to_owned(),
        id: String::new(),
        key_type: Some(key_type),
        protection: Some(protection(attributes)),
        handle: Some(format!("{handle:#010x}")),
        attributes: attribute_names(attributes),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signing_template_is_a_fixed_sign_only_p256_key() {
        let public = signing_template().unwrap();
        let a = public.object_attributes();
        assert_eq!(
            attribute_names(a),
            [
                "fixedtpm",
                "fixedparent",
                "sensitivedataorigin",
                "userwithauth",
                "sign"
            ]
        );
        let p = protection(a);
        assert!(p.is_hardware_bound() && p.local);
        let Public::Ecc { parameters, .. } = &public else {
            panic!("not ECC")
        };
        assert_eq!(parameters.ecc_curve(), EccCurve::NistP256);
        assert_eq!(
            parameters.ecc_scheme(),
            EccScheme::EcDsa(HashScheme::new(HashingAlgorithm::Sha256))
        );
    }

    #[test]
    fn primary_template_is_the_tcg_ecc_srk() {
        let public = primary_template().unwrap();
        assert_eq!(
            attribute_names(public.object_attributes()),
            [
                "fixedtpm",
                "fixedparent",
                "sensitivedataorigin",
                "userwithauth",
                "noda",
                "restricted",
                "decrypt"
            ]
        );
        // It is no signing key.
        assert!(signing_public_key(&public, "srk").is_err());
    }

    #[test]
    fn protection_follows_fixed_tpm_parent_and_origin() {
        let duplicable = ObjectAttributes::builder()
            .with_sensitive_data_origin(true)
            .with_user_with_auth(true)
            .with_sign_encrypt(true)
            .build()
            .unwrap();
        let p = protection(duplicable);
        assert!(p.extractable && !p.sensitive && !p.never_extractable && p.local);
        assert!(!p.is_hardware_bound());
    }

    #[test]
    fn short_coordinates_are_left_padded() {
        assert_eq!(pad32(&[1, 2]).unwrap()[30..], [1, 2]);
        assert_eq!(pad32(&[]).unwrap(), [0u8; 32]);
        assert!(pad32(&[0u8; 33]).is_none());
    }
}
