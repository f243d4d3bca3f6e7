//! The PKCS#11 backend against a real SoftHSM2 token.

mod common;

use std::sync::Arc;

use lockstep::keys::{DeviceKey, KeyBackend, ObjectInfo};

use common::{key_ref, softhsm};

fn objects_labelled(backend: &dyn KeyBackend, label: &str) -> Vec<ObjectInfo> {
    backend
        .list()
        .unwrap()
        .into_iter()
        .filter(|o| o.label == label)
        .collect()
}

#[test]
fn generated_key_signs_and_verifies() {
    let backend = softhsm().backend();
    let key = backend.generate_key(&key_ref("sign", 1), false).unwrap();
    let sig = key.sign(b"to be signed").unwrap();
    assert!(key.public_key().verify(b"to be signed", &sig));
    assert!(!key.public_key().verify(b"something else", &sig));
    // A second backend (as after a restart) finds the same key.
    let again = softhsm().backend().open_key(&key_ref("sign", 1)).unwrap();
    assert_eq!(again.public_key(), key.public_key());
}

#[test]
fn existing_keys_are_not_overwritten_unless_forced() {
    let backend = softhsm().backend();
    let first = backend.generate_key(&key_ref("force", 2), false).unwrap();
    let err = backend
        .generate_key(&key_ref("force", 2), false)
        .unwrap_err();
    assert_eq!(err.code(), "key_exists");
    assert!(err.to_string().contains("--force"), "{err}");
    // The same id under another label is a conflict too.
    let err = backend
        .generate_key(&key_ref("force-other", 2), false)
        .unwrap_err();
    assert_eq!(err.code(), "key_exists");
    let second = backend.generate_key(&key_ref("force", 2), true).unwrap();
    assert_ne!(first.public_key(), second.public_key());
    assert_eq!(
        objects_labelled(backend.as_ref(), "force").len(),
        2,
        "old pair destroyed, one new pair present"
    );
    // The old handle cache does not leak the destroyed key.
    let sig = second.sign(b"x").unwrap();
    assert!(second.public_key().verify(b"x", &sig));
}

#[test]
fn private_keys_are_sensitive_and_never_extractable() {
    let backend = softhsm().backend();
    backend.generate_key(&key_ref("attrs", 3), false).unwrap();
    let objects = objects_labelled(backend.as_ref(), "attrs");
    let private = objects.iter().find(|o| o.class == "private-key").unwrap();
    assert_eq!(private.id, "03");
    assert_eq!(private.key_type.as_deref(), Some("EC P-256"));
    let p = private.protection.unwrap();
    assert!(p.sensitive && !p.extractable && p.always_sensitive && p.never_extractable && p.local);
    assert!(p.is_hardware_bound());
    let public = objects.iter().find(|o| o.class == "public-key").unwrap();
    assert!(public.protection.is_none());
}

#[test]
fn missing_keys_and_tokens_are_clear_errors() {
    let hsm = softhsm();
    let err = hsm.backend().open_key(&key_ref("nope", 99)).unwrap_err();
    assert_eq!(err.code(), "key_not_found");
    assert!(err.to_string().contains("lockstep init"), "{err}");

    let mut config = hsm.config("no-such-token");
    config.token_label = Some("no-such-token".into());
    let err = lockstep::keys::pkcs11::Pkcs11Backend::new(&config)
        .unwrap()
        .check()
        .unwrap_err();
    assert_eq!(err.code(), "key_backend_unavailable");
    assert!(err.to_string().contains("no-such-token"), "{err}");

    let mut config = hsm.config("x");
    config.token_serial = Some("123".into());
    let err = lockstep::keys::pkcs11::Pkcs11Backend::new(&config).unwrap_err();
    assert_eq!(err.code(), "key_backend_config");
}

#[test]
fn parallel_signing_from_eight_threads_gives_valid_signatures() {
    let backend = softhsm().backend();
    let key: Arc<dyn DeviceKey> = backend
        .generate_key(&key_ref("parallel", 4), false)
        .unwrap();
    let threads: Vec<_> = (0..8)
        .map(|t| {
            let key = key.clone();
            std::thread::spawn(move || {
                for i in 0..200 {
                    let msg = format!("thread {t} message {i}");
                    let sig = key.sign(msg.as_bytes()).unwrap();
                    assert!(
                        key.public_key().verify(msg.as_bytes(), &sig),
                        "bad signature {t}/{i}"
                    );
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
}

#[test]
fn reading_the_private_key_value_fails() {
    use cryptoki::context::{CInitializeArgs, CInitializeFlags, Pkcs11};
    use cryptoki::object::{Attribute, AttributeInfo, AttributeType, ObjectClass};
    use cryptoki::session::UserType;
    use secrecy::SecretString;

    let hsm = softhsm();
    hsm.backend()
        .generate_key(&key_ref("value", 5), false)
        .unwrap();
    // An independent PKCS#11 client on the same token.
    let ctx = Pkcs11::new(common::MODULE).unwrap();
    let _ = ctx.initialize(CInitializeArgs::new(CInitializeFlags::OS_LOCKING_OK));
    let slot = ctx
        .get_slots_with_token()
        .unwrap()
        .into_iter()
        .find(|s| ctx.get_token_info(*s).unwrap().label().trim_end() == hsm.token)
        .unwrap();
    let session = ctx.open_ro_session(slot).unwrap();
    let _ = session.login(UserType::User, Some(&SecretString::from(common::USER_PIN)));
    let handles = session
        .find_objects(&[
            Attribute::Class(ObjectClass::PRIVATE_KEY),
            Attribute::Label(b"value".to_vec()),
        ])
        .unwrap();
    assert_eq!(handles.len(), 1);
    let info = session
        .get_attribute_info(handles[0], &[AttributeType::Value])
        .unwrap();
    assert!(matches!(info[0], AttributeInfo::Sensitive), "{info:?}");
    let values = session
        .get_attributes(handles[0], &[AttributeType::Value])
        .unwrap();
    assert!(
        !values.iter().any(|a| matches!(a, Attribute::Value(_))),
        "private key value was returned"
    );
}
