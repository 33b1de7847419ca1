//! Where another server is (RFC 6120 §3.2, XEP-0368): `federation.hosts_tls` and
//! `federation.hosts` when they name the domain; otherwise the DNS SRV records
//! `_xmpps-server._tcp` (TLS from the first byte) then `_xmpp-server._tcp` (STARTTLS), in order
//! of priority; without any, the domain's own addresses on port 5269. A record whose target is
//! "." says the service is not offered there.
//!
//! The system's resolver does the lookups (glibc's `res_query` reads /etc/resolv.conf as every
//! other program on the machine does), off the event loop: it blocks.

use crate::config::FederationConfig;
use std::net::{SocketAddr, ToSocketAddrs};

/// An address to try, and whether TLS starts with the first byte there.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Candidate {
    pub addr: SocketAddr,
    pub direct_tls: bool,
}

/// Candidates from the config alone, if it names the domain.
pub fn configured(config: &FederationConfig, domain: &str) -> Option<Vec<Candidate>> {
    let tls = config.hosts_tls.get(domain).map(|a| (a, true));
    let plain = config.hosts.get(domain).map(|a| (a, false));
    let list: Vec<Candidate> = tls
        .into_iter()
        .chain(plain)
        .filter_map(|(a, direct_tls)| {
            // Checked when the config was loaded.
            a.parse().ok().map(|addr| Candidate { addr, direct_tls })
        })
        .collect();
    (!list.is_empty()).then_some(list)
}

/// Every address to try for `domain`, best first; blocks (run it with `smol::unblock`).
pub fn lookup(domain: &str) -> Vec<Candidate> {
    let mut targets: Vec<(String, u16, bool)> = Vec::new();
    let mut any_srv = false;
    for (service, direct_tls) in [("_xmpps-server._tcp", true), ("_xmpp-server._tcp", false)] {
        let name = format!("{service}.{domain}");
        if let Some(records) = srv(&name) {
            any_srv = true;
            for r in records {
                if r.target != "." && !r.target.is_empty() {
                    targets.push((r.target, r.port, direct_tls));
                }
            }
        }
    }
    if !any_srv {
        targets.push((domain.to_owned(), 5269, false));
    }
    let mut out = Vec::new();
    for (host, port, direct_tls) in targets {
        if let Ok(addrs) = (host.as_str(), port).to_socket_addrs() {
            out.extend(addrs.map(|addr| Candidate { addr, direct_tls }));
        }
    }
    out.dedup();
    out
}

/// One SRV record (RFC 2782).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Srv {
    pub priority: u16,
    pub weight: u16,
    pub port: u16,
    pub target: String,
}

unsafe extern "C" {
    /// glibc (in libc itself since 2.34) and musl: a DNS query through the system's resolver.
    fn res_query(
        dname: *const libc::c_char,
        class: libc::c_int,
        typ: libc::c_int,
        answer: *mut u8,
        anslen: libc::c_int,
    ) -> libc::c_int;
}

const CLASS_IN: libc::c_int = 1;
const TYPE_SRV: u16 = 33;

/// The SRV records of `name` by priority (then weight, heaviest first), or None if it has none.
pub fn srv(name: &str) -> Option<Vec<Srv>> {
    let cname = std::ffi::CString::new(name).ok()?;
    let mut buf = vec![0u8; 4096];
    // SAFETY: `cname` is a NUL-terminated string and `buf` a writable buffer of the length
    // passed; res_query writes at most that many bytes and returns how many it wrote.
    let n = unsafe {
        res_query(
            cname.as_ptr(),
            CLASS_IN,
            libc::c_int::from(TYPE_SRV),
            buf.as_mut_ptr(),
            buf.len() as libc::c_int,
        )
    };
    let n = usize::try_from(n).ok()?.min(buf.len());
    let mut records = parse_srv(&buf[..n])?;
    records.sort_by(|a, b| a.priority.cmp(&b.priority).then(b.weight.cmp(&a.weight)));
    (!records.is_empty()).then_some(records)
}

/// The SRV records of a DNS answer (RFC 1035 §4.1); None if it is malformed.
pub fn parse_srv(msg: &[u8]) -> Option<Vec<Srv>> {
    let u16_at = |i: usize| Some(u16::from_be_bytes([*msg.get(i)?, *msg.get(i + 1)?]));
    let questions = u16_at(4)?;
    let answers = u16_at(6)?;
    let mut at = 12;
    for _ in 0..questions {
        at = skip_name(msg, at)? + 4;
    }
    let mut out = Vec::new();
    for _ in 0..answers {
        at = skip_name(msg, at)?;
        let typ = u16_at(at)?;
        let len = usize::from(u16_at(at + 8)?);
        let data = at + 10;
        if typ == TYPE_SRV && len >= 7 {
            out.push(Srv {
                priority: u16_at(data)?,
                weight: u16_at(data + 2)?,
                port: u16_at(data + 4)?,
                target: read_name(msg, data + 6)?,
            });
        }
        at = data + len;
    }
    Some(out)
}

/// The offset after the (possibly compressed) name at `at`.
fn skip_name(msg: &[u8], mut at: usize) -> Option<usize> {
    loop {
        let len = *msg.get(at)?;
        match len {
            0 => return Some(at + 1),
            l if l & 0xC0 == 0xC0 => return Some(at + 2),
            l => at += 1 + usize::from(l),
        }
    }
}

/// The name at `at`, following compression pointers (a bounded number: a loop is malformed).
fn read_name(msg: &[u8], mut at: usize) -> Option<String> {
    let mut labels: Vec<String> = Vec::new();
    for _ in 0..128 {
        let len = *msg.get(at)?;
        match len {
            0 => {
                return Some(match labels.is_empty() {
                    true => ".".into(),
                    false => labels.join("."),
                });
            }
            l if l & 0xC0 == 0xC0 => {
                at = usize::from(l & 0x3F) << 8 | usize::from(*msg.get(at + 1)?);
            }
            l => {
                let label = msg.get(at + 1..at + 1 + usize::from(l))?;
                labels.push(String::from_utf8_lossy(label).to_ascii_lowercase());
                at += 1 + usize::from(l);
            }
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A DNS answer as a server sends it: the question, then two SRV records, the second's
    /// target compressed into a pointer to the first's.
    #[test]
    fn srv_answers_are_read() {
        let mut m = vec![0x12, 0x34, 0x81, 0x80, 0, 1, 0, 2, 0, 0, 0, 0];
        let qname_at = m.len();
        for l in ["_xmpp-server", "_tcp", "example", "org"] {
            m.push(l.len() as u8);
            m.extend_from_slice(l.as_bytes());
        }
        m.push(0);
        m.extend_from_slice(&[0, 33, 0, 1]);
        let target = |m: &mut Vec<u8>, prio: u16, port: u16, name: &[u8]| {
            m.extend_from_slice(&[0xC0, qname_at as u8, 0, 33, 0, 1, 0, 0, 1, 0]);
            m.extend_from_slice(&((6 + name.len()) as u16).to_be_bytes());
            m.extend_from_slice(&prio.to_be_bytes());
            m.extend_from_slice(&5u16.to_be_bytes());
            m.extend_from_slice(&port.to_be_bytes());
            m.extend_from_slice(name);
        };
        let first_target_at = m.len() + 12 + 6;
        target(&mut m, 10, 5269, b"\x04xmpp\x07example\x03org\x00");
        let pointer = [0xC0, first_target_at as u8];
        target(&mut m, 5, 5270, &pointer);
        let got = parse_srv(&m).unwrap();
        assert_eq!(
            got,
            vec![
                Srv {
                    priority: 10,
                    weight: 5,
                    port: 5269,
                    target: "xmpp.example.org".into()
                },
                Srv {
                    priority: 5,
                    weight: 5,
                    port: 5270,
                    target: "xmpp.example.org".into()
                },
            ]
        );
        // Truncated anywhere, it is refused rather than misread.
        for cut in 0..m.len() {
            let _ = parse_srv(&m[..cut]);
        }
        // A pointer loop ends.
        let mut looped = m.clone();
        let at = looped.len() - 2;
        looped[at + 1] = at as u8;
        assert_eq!(read_name(&looped, at), None);
    }

    #[test]
    fn the_config_names_servers() {
        let mut config = FederationConfig::default();
        config
            .hosts
            .insert("b.example".into(), "127.0.0.3:5269".into());
        config
            .hosts_tls
            .insert("b.example".into(), "127.0.0.3:5270".into());
        let got = configured(&config, "b.example").unwrap();
        assert_eq!(got.len(), 2);
        assert!(got[0].direct_tls, "direct TLS first");
        assert_eq!(configured(&config, "c.example"), None);
    }
}
