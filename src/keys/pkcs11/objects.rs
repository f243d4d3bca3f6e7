//! PKCS#11 object templates and attribute decoding: what a lockstep signing
//! key looks like on a token, and how `keys list` reads what is there.

use cryptoki::object::{Attribute, AttributeType, KeyType, ObjectClass, ObjectHandle};
use cryptoki::session::Session;
use der::Decode;
use der::asn1::{ObjectIdentifier, OctetStringRef};

use crate::keys::{KeyRef, ObjectInfo, Protection};

/// `prime256v1` / `secp256r1`.
pub(super) const P256_OID: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.2.840.10045.3.1.7");
/// `secp384r1`.
const P384_OID: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.3.132.0.34");

/// DER of the P-256 named-curve OID, the value of `CKA_EC_PARAMS`.
pub(super) fn p256_params() -> Vec<u8> {
    der::Encode::to_der(&P256_OID).unwrap_or_default()
}

/// Templates for an ECDSA P-256 signing key pair generated on the token.
///
/// The private key is a token object, private (login needed), sensitive
/// and non-extractable, and may only sign. SoftHSM2 and other tokens
/// default to allowing decrypt/unwrap/derive on generated keys, so those are
/// switched off explicitly.
pub(super) fn signing_key_templates(key: &KeyRef) -> (Vec<Attribute>, Vec<Attribute>) {
    let label = key.label.as_bytes().to_vec();
    let public = vec![
        Attribute::Token(true),
        Attribute::Private(false),
        Attribute::Label(label.clone()),
        Attribute::Id(key.id.clone()),
        Attribute::EcParams(p256_params()),
        Attribute::Verify(true),
        Attribute::Encrypt(false),
        Attribute::Wrap(false),
        Attribute::Derive(false),
    ];
    let private = vec![
        Attribute::Token(true),
        Attribute::Private(true),
        Attribute::Sensitive(true),
        Attribute::Extractable(false),
        Attribute::Label(label),
        Attribute::Id(key.id.clone()),
        Attribute::Sign(true),
        Attribute::SignRecover(false),
        Attribute::Decrypt(false),
        Attribute::Unwrap(false),
        Attribute::Derive(false),
    ];
    (public, private)
}

/// Extracts the SEC1 point from `CKA_EC_POINT`.
///
/// The specification says the attribute is the DER encoding of an OCTET
/// STRING wrapping the point; some tokens return the bare point. Both are
/// accepted, told apart by length.
pub(super) fn ec_point(attr: &[u8]) -> Option<Vec<u8>> {
    if let Ok(inner) = <&OctetStringRef>::from_der(attr) {
        let bytes = inner.as_bytes();
        if matches!(bytes.len(), 33 | 65) && matches!(bytes[0], 0x02..=0x04) {
            return Some(bytes.to_vec());
        }
    }
    if matches!(attr.len(), 33 | 65) && matches!(attr[0], 0x02..=0x04) {
        return Some(attr.to_vec());
    }
    None
}

/// Reads one object's description for `keys list`.
pub(super) fn describe(
    session: &Session,
    handle: ObjectHandle,
) -> Result<ObjectInfo, cryptoki::error::Error> {
    let attrs = session.get_attributes(
        handle,
        &[
            AttributeType::Class,
            AttributeType::Label,
            AttributeType::Id,
            AttributeType::KeyType,
            AttributeType::EcParams,
            AttributeType::ModulusBits,
            AttributeType::Sensitive,
            AttributeType::Extractable,
            AttributeType::AlwaysSensitive,
            AttributeType::NeverExtractable,
            AttributeType::Local,
        ],
    )?;
    let mut info = ObjectInfo {
        class: String::new(),
        label: String::new(),
        id: String::new(),
        key_type: None,
        protection: None,
        handle: None,
        attributes: Vec::new(),
    };
    let mut class = None;
    let mut key_type = None;
    let mut curve = None;
    let mut bits = None;
    let mut prot = Protection {
        sensitive: false,
        extractable: true,
        always_sensitive: false,
        never_extractable: false,
        local: false,
    };
    for attr in attrs {
        match attr {
            Attribute::Class(c) => class = Some(c),
            Attribute::Label(l) => info.label = String::from_utf8_lossy(&l).into_owned(),
            Attribute::Id(id) => info.id = hex::encode(id),
            Attribute::KeyType(k) => key_type = Some(k),
            Attribute::EcParams(p) => curve = ObjectIdentifier::from_der(&p).ok(),
            Attribute::ModulusBits(b) => bits = Some(*b),
            Attribute::Sensitive(v) => prot.sensitive = v,
            Attribute::Extractable(v) => prot.extractable = v,
            Attribute::AlwaysSensitive(v) => prot.always_sensitive = v,
            Attribute::NeverExtractable(v) => prot.never_extractable = v,
            Attribute::Local(v) => prot.local = v,
            _ => {}
        }
    }
    info.class = match class {
        Some(ObjectClass::PRIVATE_KEY) => "private-key".into(),
        Some(ObjectClass::PUBLIC_KEY) => "public-key".into(),
        Some(ObjectClass::SECRET_KEY) => "secret-key".into(),
        Some(ObjectClass::CERTIFICATE) => "certificate".into(),
        Some(ObjectClass::DATA) => "data".into(),
        Some(other) => format!("{other}"),
        None => "unknown".into(),
    };
    info.key_type = key_type.map(|k| match k {
        KeyType::EC => match curve {
            Some(oid) if oid == P256_OID => "EC P-256".to_owned(),
            Some(oid) if oid == P384_OID => "EC P-384".to_owned(),
            Some(oid) => format!("EC {oid}"),
            None => "EC".to_owned(),
        },
        KeyType::RSA => match bits {
            Some(b) => format!("RSA {b}"),
            None => "RSA".to_owned(),
        },
        other => format!("{other}"),
    });
    if matches!(
        class,
        Some(ObjectClass::PRIVATE_KEY) | Some(ObjectClass::SECRET_KEY)
    ) {
        info.protection = Some(prot);
    }
    Ok(info)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ec_point_accepts_wrapped_and_bare_points() {
        let mut point = vec![0x04];
        point.extend([0x11; 64]);
        let mut wrapped = vec![0x04, 65];
        wrapped.extend(&point);
        assert_eq!(ec_point(&wrapped).unwrap(), point);
        assert_eq!(ec_point(&point).unwrap(), point);
        assert!(ec_point(&[0x04, 0x01, 0x00]).is_none());
        assert!(ec_point(&[]).is_none());
    }

    #[test]
    fn p256_params_is_the_named_curve_oid() {
        assert_eq!(
            p256_params(),
            vec![0x06, 0x08, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x03, 0x01, 0x07]
        );
    }

    #[test]
    fn private_template_is_non_extractable_and_sign_only() {
        let key = KeyRef {
            label: "k".into(),
            id: vec![1],
            handle: None,
        };
        let (_, private) = signing_key_templates(&key);
        for required in [
            Attribute::Token(true),
            Attribute::Private(true),
            Attribute::Sensitive(true),
            Attribute::Extractable(false),
            Attribute::Sign(true),
            Attribute::Decrypt(false),
            Attribute::Unwrap(false),
        ] {
            assert!(private.contains(&required), "{required:?}");
        }
    }
}
