use super::*;

#[test]
fn a_response_reads_back_what_was_stamped() {
    // Built without a device: the structure round-trips through DER.
    let info = TstInfo {
        version: 1,
        policy: oids::TSA_POLICY,
        message_imprint: MessageImprint {
            hash_algorithm: sha256(),
            hashed_message: OctetString::new(vec![7; 32]).unwrap(),
        },
        serial_number: SerialNumber::new(&[0x41, 2, 3]).unwrap(),
        gen_time: generalized(Timestamp::from_unix(1_800_000_000)).unwrap(),
        accuracy: Some(Accuracy { seconds: Some(1) }),
        nonce: Some(Int::new(&[0x12, 0x34]).unwrap()),
    };
    let der = info.to_der().unwrap();
    assert_eq!(TstInfo::from_der(&der).unwrap(), info);
}
