//! Subject names and subject alternative names, validated before they are
//! written into a certificate.

use std::net::IpAddr;

use der::asn1::{Any, Ia5String, PrintableStringRef, Utf8StringRef};
use der::{Decode, Encode};
use serde::{Deserialize, Serialize};
use x509_cert::attr::AttributeTypeAndValue;
use x509_cert::ext::pkix::name::GeneralName;
use x509_cert::name::{Name, RdnSequence, RelativeDistinguishedName};

use super::{X509Error, oids};

/// Upper bound of CN, O and OU (X.520 `ub-common-name` and friends).
const MAX_ATTRIBUTE_CHARS: usize = 64;
/// Upper bound of a URI SAN.
const MAX_URI_LEN: usize = 2048;

/// A subject distinguished name: common name plus optional organisation,
/// unit and country.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SubjectName {
    /// `CN`.
    pub common_name: String,
    /// `O`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub organization: Option<String>,
    /// `OU`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub organizational_unit: Option<String>,
    /// `C`, two capital letters.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub country: Option<String>,
}

impl SubjectName {
    /// A name with only a common name.
    pub fn cn(common_name: impl Into<String>) -> Self {
        Self {
            common_name: common_name.into(),
            organization: None,
            organizational_unit: None,
            country: None,
        }
    }

    /// The same name with an organisation.
    pub fn with_organization(mut self, o: impl Into<String>) -> Self {
        self.organization = Some(o.into());
        self
    }

    /// Encodes the name (C, O, OU, CN, most significant first), checking
    /// every attribute.
    pub fn to_name(&self) -> Result<Name, X509Error> {
        let mut rdns = RdnSequence::default();
        if let Some(c) = &self.country {
            if c.len() != 2 || !c.bytes().all(|b| b.is_ascii_uppercase()) {
                return Err(X509Error::InvalidName(format!(
                    "country `{}` must be two capital letters (ISO 3166)",
                    c.escape_debug()
                )));
            }
            let value = Any::encode_from(&PrintableStringRef::new(c)?)?;
            rdns.push(rdn(oids::COUNTRY, value)?);
        }
        for (oid, label, value) in [
            (
                oids::ORGANIZATION,
                "organization",
                self.organization.as_deref(),
            ),
            (
                oids::ORGANIZATIONAL_UNIT,
                "organizational unit",
                self.organizational_unit.as_deref(),
            ),
            (
                oids::COMMON_NAME,
                "common name",
                Some(self.common_name.as_str()),
            ),
        ] {
            if let Some(v) = value {
                check_text(label, v)?;
                rdns.push(rdn(oid, Any::encode_from(&Utf8StringRef::new(v)?)?)?);
            }
        }
        Ok(Name::from_der(&rdns.to_der()?)?)
    }
}

fn rdn(
    oid: der::asn1::ObjectIdentifier,
    value: Any,
) -> Result<RelativeDistinguishedName, X509Error> {
    Ok(RelativeDistinguishedName::try_from(vec![
        AttributeTypeAndValue { oid, value },
    ])?)
}

/// Checks a directory-string attribute: 1 to 64 characters, no control or
/// bidirectional-override characters (they disguise what a name says).
fn check_text(label: &str, v: &str) -> Result<(), X509Error> {
    let chars = v.chars().count();
    if chars == 0 || chars > MAX_ATTRIBUTE_CHARS {
        return Err(X509Error::InvalidName(format!(
            "{label} must be 1 to {MAX_ATTRIBUTE_CHARS} characters (got {chars})"
        )));
    }
    if let Some(bad) = v.chars().find(|c| is_disallowed(*c)) {
        return Err(X509Error::InvalidName(format!(
            "{label} contains the control character U+{:04X}",
            bad as u32
        )));
    }
    Ok(())
}

fn is_disallowed(c: char) -> bool {
    c.is_control()
        || matches!(c, '\u{200E}' | '\u{200F}' | '\u{202A}'..='\u{202E}' | '\u{2066}'..='\u{2069}')
}

/// Percent-encodes everything but unreserved characters and `:/@` for a
/// URN's specific part.
pub fn urn_encode(s: &str) -> String {
    use percent_encoding::{AsciiSet, NON_ALPHANUMERIC, utf8_percent_encode};
    const KEEP: &AsciiSet = &NON_ALPHANUMERIC
        .remove(b'-')
        .remove(b'.')
        .remove(b'_')
        .remove(b'~')
        .remove(b':')
        .remove(b'/')
        .remove(b'@');
    utf8_percent_encode(s, KEEP).to_string()
}

/// The URI SAN naming a resource in the certificates of its sessions.
pub fn resource_uri(resource: &str) -> String {
    format!("urn:lockstep:resource:{}", urn_encode(resource))
}

/// A subject alternative name.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase", tag = "type", content = "value")]
pub enum San {
    /// `dNSName`: an LDH host name (no wildcards).
    Dns(String),
    /// `uniformResourceIdentifier`, e.g. `spiffe://corp/ci` or
    /// `urn:lockstep:session:…`.
    Uri(String),
    /// `rfc822Name`: an e-mail address.
    Email(String),
    /// `iPAddress`.
    Ip(IpAddr),
}

impl San {
    /// Encodes the SAN, checking its syntax.
    pub fn to_general_name(&self) -> Result<GeneralName, X509Error> {
        Ok(match self {
            San::Dns(d) => {
                check_dns(d)?;
                GeneralName::DnsName(Ia5String::new(d)?)
            }
            San::Uri(u) => {
                check_uri(u)?;
                GeneralName::UniformResourceIdentifier(Ia5String::new(u)?)
            }
            San::Email(e) => {
                let (local, domain) = e.split_once('@').ok_or_else(|| {
                    X509Error::InvalidName(format!("e-mail SAN `{}` has no @", e.escape_debug()))
                })?;
                if local.is_empty()
                    || local.len() > 64
                    || domain.contains('@')
                    || !local.bytes().all(|b| b.is_ascii_graphic())
                {
                    return Err(X509Error::InvalidName(format!(
                        "e-mail SAN `{}` is not a plain ASCII address",
                        e.escape_debug()
                    )));
                }
                check_dns(domain)?;
                GeneralName::Rfc822Name(Ia5String::new(e)?)
            }
            San::Ip(ip) => GeneralName::from(*ip),
        })
    }
}

/// An LDH host name: labels of letters, digits and hyphens, 1 to 63 each,
/// 253 in all.
fn check_dns(d: &str) -> Result<(), X509Error> {
    let bad = || X509Error::InvalidName(format!("`{}` is not a valid DNS name", d.escape_debug()));
    if d.is_empty() || d.len() > 253 {
        return Err(bad());
    }
    for label in d.split('.') {
        if label.is_empty()
            || label.len() > 63
            || label.starts_with('-')
            || label.ends_with('-')
            || !label
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-')
        {
            return Err(bad());
        }
    }
    Ok(())
}

/// An absolute URI in printable ASCII: `scheme:rest`.
fn check_uri(u: &str) -> Result<(), X509Error> {
    let bad = |why: &str| X509Error::InvalidName(format!("URI SAN `{}` {why}", u.escape_debug()));
    if u.len() > MAX_URI_LEN {
        return Err(bad("is too long"));
    }
    if !u.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(bad(
            "must be printable ASCII without spaces (percent-encode the rest)",
        ));
    }
    let (scheme, rest) = u.split_once(':').ok_or_else(|| bad("has no scheme"))?;
    let mut s = scheme.bytes();
    let scheme_ok = s.next().is_some_and(|b| b.is_ascii_alphabetic())
        && s.all(|b| b.is_ascii_alphanumeric() || matches!(b, b'+' | b'-' | b'.'));
    if !scheme_ok || rest.is_empty() {
        return Err(bad("is not an absolute URI"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_encode_most_significant_first() {
        let name = SubjectName {
            common_name: "db:payroll".into(),
            organization: Some("lockstep".into()),
            organizational_unit: Some("sessions".into()),
            country: Some("DE".into()),
        }
        .to_name()
        .unwrap();
        assert_eq!(
            name.to_string(),
            "CN=db:payroll,OU=sessions,O=lockstep,C=DE"
        );
    }

    #[test]
    fn bad_names_are_refused_with_the_reason() {
        for (name, why) in [
            (SubjectName::cn(""), "1 to 64"),
            (SubjectName::cn("x".repeat(65)), "1 to 64"),
            (SubjectName::cn("a\nb"), "control"),
            (SubjectName::cn("evil\u{202E}gpj.exe"), "control"),
            (
                SubjectName {
                    country: Some("Germany".into()),
                    ..SubjectName::cn("x")
                },
                "two capital",
            ),
        ] {
            let err = name.to_name().unwrap_err();
            assert_eq!(err.code(), "invalid_name");
            assert!(err.to_string().contains(why), "{err}");
        }
        // Unicode is fine.
        SubjectName::cn("Zürich ✓").to_name().unwrap();
    }

    #[test]
    fn sans_are_checked() {
        for ok in [
            San::Dns("api.example.com".into()),
            San::Uri("spiffe://corp/ci/release".into()),
            San::Uri("urn:lockstep:session:0f3a".into()),
            San::Email("ci@example.com".into()),
            San::Ip("127.0.0.1".parse().unwrap()),
            San::Ip("::1".parse().unwrap()),
        ] {
            ok.to_general_name().unwrap();
        }
        for bad in [
            San::Dns("".into()),
            San::Dns("*.example.com".into()),
            San::Dns("-a.example".into()),
            San::Dns("a..b".into()),
            San::Dns("ex ample.com".into()),
            San::Uri("no-scheme".into()),
            San::Uri("https://a b".into()),
            San::Uri("https://ü.example".into()),
            San::Uri(format!("https://{}", "a".repeat(3000))),
            San::Email("nobody".into()),
            San::Email("a@b@c".into()),
        ] {
            assert_eq!(
                bad.to_general_name().unwrap_err().code(),
                "invalid_name",
                "{bad:?}"
            );
        }
    }
}
