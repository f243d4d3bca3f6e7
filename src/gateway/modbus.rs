//! Modbus/TCP as a route protocol: the gateway reads the byte stream each
//! way as MBAP frames (Modbus Application Protocol header, then the PDU)
//! and lets through only requests whose function code the route allows.
//!
//! ```text
//! transaction id  u16   echoed in the answer
//! protocol id     u16   always 0 for Modbus
//! length          u16   bytes that follow: unit id + PDU (2..=254)
//! unit id         u8
//! function code   u8    a request's is 1..=127; an answer's has 0x80 set
//! data            ≤ 252 bytes
//! ```
//!
//! A disallowed request is answered with exception 01 (illegal function)
//! or ends the connection, as the route says; either way it never reaches
//! the target and is recorded. A frame that breaks these rules ends the
//! connection: the gateway never forwards bytes it could not read.

use serde::Deserialize;

/// The MBAP header's size.
pub const HEADER: usize = 7;
/// The longest frame: the header and a 253-byte PDU.
pub const MAX_FRAME: usize = HEADER + 253;
/// Exception code 01: the function is not allowed (or not supported).
pub const ILLEGAL_FUNCTION: u8 = 0x01;

/// Why bytes are not a Modbus/TCP frame.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum Malformed {
    /// The protocol id is not 0.
    #[error("protocol id {0} is not Modbus (0)")]
    Protocol(u16),
    /// The length field is outside 2..=254.
    #[error("length {0} is outside 2..=254")]
    Length(u16),
    /// A request with function code 0 or one with the exception bit set.
    #[error("function code {0:#04x} is not a request")]
    Function(u8),
}

/// One frame's header fields.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Header {
    /// Echoed in the answer.
    pub transaction: u16,
    /// The addressed unit (slave id).
    pub unit: u8,
    /// The function code.
    pub function: u8,
}

impl Header {
    /// The header of a whole frame.
    pub fn of(frame: &[u8]) -> Self {
        Self {
            transaction: u16::from_be_bytes([frame[0], frame[1]]),
            unit: frame[6],
            function: frame[7],
        }
    }
}

/// Splits a byte stream into whole MBAP frames, however the bytes arrive.
#[derive(Debug, Default)]
pub struct Framer {
    buf: Vec<u8>,
}

impl Framer {
    /// Adds bytes read from the stream.
    pub fn push(&mut self, bytes: &[u8]) {
        self.buf.extend_from_slice(bytes);
    }

    /// Bytes held that are not yet a whole frame.
    pub fn pending(&self) -> usize {
        self.buf.len()
    }

    /// The next whole frame, if one has arrived; an error as soon as the
    /// header shows the bytes are not Modbus/TCP. `requests` checks the
    /// function code as a request's (the client's side).
    pub fn next_frame(&mut self, requests: bool) -> Result<Option<Vec<u8>>, Malformed> {
        if self.buf.len() < HEADER {
            return Ok(None);
        }
        let protocol = u16::from_be_bytes([self.buf[2], self.buf[3]]);
        if protocol != 0 {
            return Err(Malformed::Protocol(protocol));
        }
        let length = u16::from_be_bytes([self.buf[4], self.buf[5]]);
        if !(2..=254).contains(&length) {
            return Err(Malformed::Length(length));
        }
        let total = HEADER - 1 + usize::from(length);
        if self.buf.len() < total {
            return Ok(None);
        }
        let function = self.buf[HEADER];
        if requests && (function == 0 || function & 0x80 != 0) {
            return Err(Malformed::Function(function));
        }
        let rest = self.buf.split_off(total);
        Ok(Some(std::mem::replace(&mut self.buf, rest)))
    }
}

/// The exception answer to `request`: same transaction and unit, the
/// function code with 0x80 set, and `code`.
pub fn exception(request: &Header, code: u8) -> Vec<u8> {
    let mut out = Vec::with_capacity(HEADER + 2);
    out.extend_from_slice(&request.transaction.to_be_bytes());
    out.extend_from_slice(&[0, 0, 0, 3, request.unit, request.function | 0x80, code]);
    out
}

/// A function code as written in a route or a policy: its number or its
/// name.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(untagged)]
pub enum FunctionName {
    /// 1..=127.
    Code(u8),
    /// `read-coils`, `read-holding-registers`, …
    Name(String),
}

/// The function codes of the Modbus application protocol specification
/// (v1.1b3), by the names a route may use.
const NAMED: &[(&str, u8)] = &[
    ("read-coils", 1),
    ("read-discrete-inputs", 2),
    ("read-holding-registers", 3),
    ("read-input-registers", 4),
    ("write-single-coil", 5),
    ("write-single-register", 6),
    ("read-exception-status", 7),
    ("diagnostics", 8),
    ("get-comm-event-counter", 11),
    ("get-comm-event-log", 12),
    ("write-multiple-coils", 15),
    ("write-multiple-registers", 16),
    ("report-server-id", 17),
    ("read-file-record", 20),
    ("write-file-record", 21),
    ("mask-write-register", 22),
    ("read-write-multiple-registers", 23),
    ("read-fifo-queue", 24),
    ("encapsulated-interface-transport", 43),
];

/// The read-only set: read coils, discrete inputs, holding and input
/// registers.
pub const READ_ONLY: [u8; 4] = [1, 2, 3, 4];

/// The function codes a route lets through.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Allowed(u128);

impl Allowed {
    /// The set of `codes`.
    pub fn of(codes: &[u8]) -> Self {
        Self(codes.iter().fold(0, |acc, c| acc | 1u128 << (c & 0x7f)))
    }

    /// Reads a route's list: numbers 1..=127, names, or `read-only`.
    pub fn parse(names: &[FunctionName]) -> Result<Self, String> {
        let mut codes = Vec::new();
        for n in names {
            match n {
                FunctionName::Code(c) if (1..=127).contains(c) => codes.push(*c),
                FunctionName::Code(c) => {
                    return Err(format!("function code {c} is outside 1..=127"));
                }
                FunctionName::Name(name) if name == "read-only" => codes.extend(READ_ONLY),
                FunctionName::Name(name) => match NAMED.iter().find(|(n, _)| n == name) {
                    Some((_, c)) => codes.push(*c),
                    None => {
                        return Err(format!(
                            "`{name}` is not a Modbus function (use a code 1..=127, `read-only`, or a name such as `read-holding-registers`)"
                        ));
                    }
                },
            }
        }
        if codes.is_empty() {
            return Err("allow at least one function".into());
        }
        Ok(Self::of(&codes))
    }

    /// Whether `function` may pass.
    pub fn allows(self, function: u8) -> bool {
        function < 128 && self.0 & (1u128 << function) != 0
    }

    /// The functions both sets let through.
    pub fn and(self, other: Self) -> Self {
        Self(self.0 & other.0)
    }

    /// The codes, ascending.
    pub fn codes(self) -> Vec<u8> {
        (1..128).filter(|c| self.allows(*c)).collect()
    }
}

/// What a route does with a request whose function it does not allow.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum OnRefused {
    /// Answer with exception 01 (illegal function) and carry on.
    #[default]
    Answer,
    /// End the connection (`refused_function`).
    Close,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(transaction: u16, unit: u8, pdu: &[u8]) -> Vec<u8> {
        let mut f = transaction.to_be_bytes().to_vec();
        f.extend_from_slice(&[0, 0]);
        f.extend_from_slice(&((pdu.len() + 1) as u16).to_be_bytes());
        f.push(unit);
        f.extend_from_slice(pdu);
        f
    }

    #[test]
    fn frames_are_split_however_the_bytes_arrive() {
        let a = frame(1, 1, &[3, 0, 0, 0, 4]);
        let b = frame(2, 9, &[6, 0, 5, 0, 42]);
        let stream: Vec<u8> = a.iter().chain(&b).copied().collect();
        for cut in 0..stream.len() {
            let mut f = Framer::default();
            let mut got = Vec::new();
            for part in [&stream[..cut], &stream[cut..]] {
                f.push(part);
                while let Some(fr) = f.next_frame(true).unwrap() {
                    got.push(fr);
                }
            }
            assert_eq!(got, [a.clone(), b.clone()], "cut at {cut}");
            assert_eq!(f.pending(), 0);
        }
        assert_eq!(
            Header::of(&b),
            Header {
                transaction: 2,
                unit: 9,
                function: 6
            }
        );
    }

    #[test]
    fn what_is_not_modbus_is_malformed() {
        let mut bad = frame(1, 1, &[3, 0, 0, 0, 1]);
        bad[3] = 1;
        let mut f = Framer::default();
        f.push(&bad);
        assert_eq!(f.next_frame(true), Err(Malformed::Protocol(1)));
        for (len, pdu) in [(1u16, vec![]), (255, vec![3; 254])] {
            let mut fr = frame(1, 1, &pdu);
            fr[4..6].copy_from_slice(&len.to_be_bytes());
            let mut f = Framer::default();
            f.push(&fr);
            assert_eq!(f.next_frame(true), Err(Malformed::Length(len)));
        }
        for function in [0, 0x83] {
            let mut f = Framer::default();
            f.push(&frame(1, 1, &[function]));
            assert_eq!(f.next_frame(true), Err(Malformed::Function(function)));
        }
        // An answer may carry the exception bit.
        let mut f = Framer::default();
        f.push(&frame(1, 1, &[0x83, 2]));
        assert!(f.next_frame(false).unwrap().is_some());
    }

    #[test]
    fn the_exception_echoes_the_request() {
        let h = Header {
            transaction: 0x1234,
            unit: 7,
            function: 6,
        };
        assert_eq!(
            exception(&h, ILLEGAL_FUNCTION),
            [0x12, 0x34, 0, 0, 0, 3, 7, 0x86, 1]
        );
    }

    #[test]
    fn allowed_sets_read_names_codes_and_read_only() {
        let a = Allowed::parse(&[
            FunctionName::Name("read-only".into()),
            FunctionName::Code(23),
        ])
        .unwrap();
        assert!(a.allows(3) && a.allows(23) && !a.allows(6) && !a.allows(0x83));
        let w = Allowed::parse(&[FunctionName::Name("write-single-register".into())]).unwrap();
        assert!(w.allows(6) && !w.allows(3));
        assert!(Allowed::parse(&[]).is_err());
        assert!(Allowed::parse(&[FunctionName::Code(0)]).is_err());
        assert!(Allowed::parse(&[FunctionName::Code(128)]).is_err());
        assert!(
            Allowed::parse(&[FunctionName::Name("erase-plc".into())])
                .unwrap_err()
                .contains("not a Modbus function")
        );
    }
}
