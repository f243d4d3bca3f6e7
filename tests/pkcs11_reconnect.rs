//! Recovery when the token or module goes away under the backend. Its own
//! test binary: resetting the module must not disturb other tests.

mod common;

use cryptoki::context::{CInitializeArgs, CInitializeFlags, Pkcs11};
use lockstep::keys::KeyBackend;

use common::{key_ref, softhsm};

#[test]
fn signing_recovers_after_the_module_is_reset_and_a_token_appears_later() {
    let hsm = softhsm();
    let backend = hsm.backend();
    let key = backend.generate_key(&key_ref("r", 1), false).unwrap();
    key.sign(b"before").unwrap();

    // Reset the module behind the backend's back: every session handle and
    // the login become invalid, as when a token is pulled and re-inserted.
    let other = Pkcs11::new(common::MODULE).unwrap();
    other.clone().finalize().unwrap();
    let err = key.sign(b"while finalised");
    // Either it re-initialised by itself or it says the backend is gone;
    // never a crash or a wrong signature.
    if let Ok(sig) = &err {
        assert!(key.public_key().verify(b"while finalised", sig));
    }
    let _ = other.initialize(CInitializeArgs::new(CInitializeFlags::OS_LOCKING_OK));
    let sig = key.sign(b"after").expect("reconnects on the next call");
    assert!(key.public_key().verify(b"after", &sig));
    backend.check().unwrap();

    // Finalise and initialise again while the backend is idle: its pooled
    // session handles and cached object handles now name nothing
    // (CKR_SESSION_HANDLE_INVALID on the next call), and the login is gone.
    other.clone().finalize().unwrap();
    other
        .initialize(CInitializeArgs::new(CInitializeFlags::OS_LOCKING_OK))
        .unwrap();
    for i in 0..3 {
        let msg = format!("after re-init {i}");
        let sig = key
            .sign(msg.as_bytes())
            .expect("reconnects after the handles went bad");
        assert!(key.public_key().verify(msg.as_bytes(), &sig));
    }

    // A token created after the module was loaded is found by restarting
    // the module (SoftHSM2 scans tokens only at C_Initialize).
    std::thread::sleep(std::time::Duration::from_millis(1100));
    let label = hsm.new_token("late");
    let late = lockstep::keys::pkcs11::Pkcs11Backend::new(&hsm.config(&label)).unwrap();
    late.check()
        .expect("late token found after a module restart");
    // And the first backend carries on.
    let sig = key.sign(b"still").unwrap();
    assert!(key.public_key().verify(b"still", &sig));
}
