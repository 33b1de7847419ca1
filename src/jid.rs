//! JIDs per RFC 7622: localpart by the PRECIS UsernameCaseMapped profile, domainpart by IDNA
//! (lower-cased, trailing dot dropped), resourcepart by the OpaqueString profile.
//!
//! Pure-ASCII parts, which is nearly every JID on the wire, take a fast path that applies the
//! same rules without the PRECIS tables.

use precis_profiles::precis_core::profile::PrecisFastInvocation;
use precis_profiles::{OpaqueString, UsernameCaseMapped};
use std::fmt;

#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Jid {
    local: Option<String>,
    domain: String,
    resource: Option<String>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct JidError(&'static str);

impl fmt::Display for JidError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.0)
    }
}

const MAX_PART: usize = 1023;

impl Jid {
    pub fn parse(s: &str) -> Result<Jid, JidError> {
        let (rest, resource) = match s.split_once('/') {
            Some((r, res)) => (r, Some(res)),
            None => (s, None),
        };
        let (local, domain) = match rest.split_once('@') {
            Some((l, d)) => (Some(l), d),
            None => (None, rest),
        };
        Ok(Jid {
            local: local.map(localpart).transpose()?,
            domain: domainpart(domain)?,
            resource: resource.map(resourcepart).transpose()?,
        })
    }

    /// A bare JID `local@domain` from parts already known to be valid.
    pub fn bare_from(local: &str, domain: &str) -> Jid {
        Jid {
            local: Some(local.to_owned()),
            domain: domain.to_owned(),
            resource: None,
        }
    }

    /// The domain alone, as a JID.
    pub fn domain_jid(&self) -> Jid {
        Jid {
            local: None,
            domain: self.domain.clone(),
            resource: None,
        }
    }

    pub fn local(&self) -> Option<&str> {
        self.local.as_deref()
    }

    pub fn domain(&self) -> &str {
        &self.domain
    }

    pub fn resource(&self) -> Option<&str> {
        self.resource.as_deref()
    }

    pub fn is_bare(&self) -> bool {
        self.resource.is_none()
    }

    pub fn bare(&self) -> Jid {
        Jid {
            local: self.local.clone(),
            domain: self.domain.clone(),
            resource: None,
        }
    }

    pub fn with_resource(&self, resource: &str) -> Result<Jid, JidError> {
        Ok(Jid {
            local: self.local.clone(),
            domain: self.domain.clone(),
            resource: Some(resourcepart(resource)?),
        })
    }
}

impl fmt::Display for Jid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if let Some(l) = &self.local {
            write!(f, "{l}@")?;
        }
        f.write_str(&self.domain)?;
        if let Some(r) = &self.resource {
            write!(f, "/{r}")?;
        }
        Ok(())
    }
}

impl std::str::FromStr for Jid {
    type Err = JidError;
    fn from_str(s: &str) -> Result<Jid, JidError> {
        Jid::parse(s)
    }
}

/// A PRECIS profile's output for `s`, if that output is itself valid and unchanged by the
/// profile. Enforcement is not idempotent for every string: NFC may compose what the class
/// check saw as allowed parts into a code point it refuses (`=` and U+0338 become `≠`). Such a
/// part would be stored and sent in a form that no longer parses, so it is refused.
fn settled(s: &str, enforce: impl Fn(&str) -> Option<String>) -> Option<String> {
    let out = enforce(s)?;
    (enforce(&out)? == out).then_some(out)
}

/// RFC 7622 §3.3.1: these may not appear in a localpart even though PRECIS allows them.
const LOCAL_FORBIDDEN: &[char] = &['"', '&', '\'', '/', ':', '<', '>', '@'];

pub fn localpart(s: &str) -> Result<String, JidError> {
    let out = if s.bytes().all(|b| b.is_ascii_graphic()) {
        s.to_ascii_lowercase()
    } else {
        settled(s, |s| UsernameCaseMapped::enforce(s).ok().map(Into::into)).ok_or(JidError(
            "the localpart has characters a JID may not contain",
        ))?
    };
    if out.is_empty() || out.len() > MAX_PART {
        return Err(JidError("the localpart must be 1 to 1023 bytes long"));
    }
    if out.contains(LOCAL_FORBIDDEN) {
        return Err(JidError(
            "the localpart has characters a JID may not contain",
        ));
    }
    Ok(out)
}

fn domainpart(s: &str) -> Result<String, JidError> {
    let s = s.strip_suffix('.').unwrap_or(s);
    let ldh = |s: &str| {
        s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.')
    };
    let out = if s.starts_with('[') && s.ends_with(']') {
        s[1..s.len() - 1]
            .parse::<std::net::Ipv6Addr>()
            .map_err(|_| JidError("the domainpart is not a valid IPv6 literal"))?;
        s.to_owned()
    } else if s.is_ascii() {
        if !ldh(s) {
            return Err(JidError("the domainpart is not a valid domain name"));
        }
        s.to_ascii_lowercase()
    } else {
        // UTS #46 lets through ASCII that no host name may contain (controls, quotes, `_`),
        // also when a fullwidth letter beside it maps to ASCII: the A-label form must be
        // letters, digits and hyphens, as a pure-ASCII domainpart must.
        let ascii = idna::domain_to_ascii(s)
            .ok()
            .filter(|a| ldh(a))
            .ok_or(JidError("the domainpart is not a valid domain name"))?;
        let (unicode, res) = idna::domain_to_unicode(&ascii);
        // An A-label in the input may decode to a label that is not valid input itself (one
        // that starts with `xn--` again): the form kept must lead back to the same A-labels.
        if res.is_err() || idna::domain_to_ascii(&unicode).ok() != Some(ascii) {
            return Err(JidError("the domainpart is not a valid domain name"));
        }
        unicode
    };
    if out.is_empty() || out.len() > MAX_PART || out.split('.').any(str::is_empty) {
        return Err(JidError("the domainpart must be a non-empty domain name"));
    }
    Ok(out)
}

pub fn resourcepart(s: &str) -> Result<String, JidError> {
    let out = if s.bytes().all(|b| (0x20..0x7f).contains(&b)) {
        s.to_owned()
    } else {
        settled(s, |s| OpaqueString::enforce(s).ok().map(Into::into)).ok_or(JidError(
            "the resourcepart has characters a JID may not contain",
        ))?
    };
    if out.is_empty() || out.len() > MAX_PART {
        return Err(JidError("the resourcepart must be 1 to 1023 bytes long"));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_normalises() {
        let j = Jid::parse("Juliet@Example.COM./Balcony Room").unwrap();
        assert_eq!(j.local(), Some("juliet"));
        assert_eq!(j.domain(), "example.com");
        assert_eq!(j.resource(), Some("Balcony Room"));
        assert_eq!(j.to_string(), "juliet@example.com/Balcony Room");
        assert_eq!(j.bare().to_string(), "juliet@example.com");
        // The resource may contain '@' and '/'.
        let j = Jid::parse("a@b/c@d/e").unwrap();
        assert_eq!(j.resource(), Some("c@d/e"));
        assert_eq!(Jid::parse("localhost").unwrap().local(), None);
        assert_eq!(Jid::parse("[::1]").unwrap().domain(), "[::1]");
    }

    #[test]
    fn unicode_parts() {
        let j = Jid::parse("ÇAFÉ@Exämple.com/ⅸ").unwrap();
        assert_eq!(j.local(), Some("çafé"));
        assert_eq!(j.domain(), "exämple.com");
        assert_eq!(j.resource(), Some("ⅸ"));
    }

    #[test]
    fn rejects_malformed() {
        for bad in [
            "",
            "@localhost",
            "a@",
            "a@localhost/",
            "a b@localhost",
            "a\"b@localhost",
            "a@local host",
            "a@.localhost",
            "a@[zz]",
            "a@localhost/\u{7}",
            "a\u{200b}@localhost",
        ] {
            assert!(Jid::parse(bad).is_err(), "{bad:?} accepted");
        }
        assert!(Jid::parse(&format!("{}@localhost", "a".repeat(1024))).is_err());
    }

    /// Found by the `jid` fuzz target: a fullwidth letter sent the domainpart through IDNA,
    /// which kept the control characters and NULs after it, and the JID's own text was then
    /// refused.
    #[test]
    fn non_ascii_domain_with_ascii_junk() {
        for bad in [
            "\u{ff21}@\u{ff42}\u{f}\0\0\0\0\0\0\0",
            "a@\u{ff42}_x.example",
            "a@\u{ff42}'x.example",
            "a@\u{e9}\u{7f}.example",
        ] {
            assert!(Jid::parse(bad).is_err(), "{bad:?} accepted");
        }
        let j = Jid::parse("\u{ff21}@\u{ff42}.example").unwrap();
        assert_eq!(j.to_string(), "a@b.example");
    }

    /// Found by the `jid` fuzz target: PRECIS enforcement composed `=` and U+0338 into `≠`,
    /// which the profile refuses, so the JID's own text did not parse again; the same for a
    /// domainpart through IDNA.
    #[test]
    fn parts_that_enforcement_does_not_settle_are_refused() {
        for bad in [
            "a=\u{338}@localhost",
            "\u{e8}=\u{338}@localhost",
            "amlxn-%m\u{338}\u{32e}\u{338}\u{32e}\u{311}P.e-mx=\u{338}\u{32e}\u{311}P.e-mx@ample",
        ] {
            assert!(Jid::parse(bad).is_err(), "{bad:?} accepted");
        }
        // And a domainpart whose A-label decodes to a label that is not valid input.
        assert!(Jid::parse("\u{3bd}\u{331}@xn--xn--mlxn-dmen.\u{391}").is_err());
        let j = Jid::parse("\u{c7}af\u{e9}@localhost/=\u{338}").unwrap();
        assert_eq!(Jid::parse(&j.to_string()), Ok(j));
    }
}
