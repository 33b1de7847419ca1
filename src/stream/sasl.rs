//! SASL for client streams (RFC 6120 §6): SCRAM-SHA-1 and SCRAM-SHA-256 (RFC 5802, RFC 7677),
//! their -PLUS variants with `tls-exporter` channel binding (RFC 9266), and PLAIN (RFC 4616).
//!
//! The server keeps only salt, iteration count, StoredKey and ServerKey. An unknown user is
//! walked through the same exchange with made-up values so that the answer does not reveal
//! which accounts exist.

use crate::jid;
use crate::storage::accounts::Credentials;
use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use hmac::{Hmac, Mac};
use sha1::Sha1;
use sha2::{Digest, Sha256};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Hash {
    Sha1,
    Sha256,
}

impl Hash {
    fn hmac(self, key: &[u8], data: &[u8]) -> Vec<u8> {
        // HMAC accepts keys of any length, so new_from_slice cannot fail.
        match self {
            Hash::Sha1 => {
                let mut m = Hmac::<Sha1>::new_from_slice(key).expect("any key length");
                m.update(data);
                m.finalize().into_bytes().to_vec()
            }
            Hash::Sha256 => {
                let mut m = Hmac::<Sha256>::new_from_slice(key).expect("any key length");
                m.update(data);
                m.finalize().into_bytes().to_vec()
            }
        }
    }

    fn digest(self, data: &[u8]) -> Vec<u8> {
        match self {
            Hash::Sha1 => Sha1::digest(data).to_vec(),
            Hash::Sha256 => Sha256::digest(data).to_vec(),
        }
    }

    fn salted_password(self, password: &[u8], salt: &[u8], iterations: u32) -> Vec<u8> {
        match self {
            Hash::Sha1 => {
                pbkdf2::pbkdf2_hmac_array::<Sha1, 20>(password, salt, iterations).to_vec()
            }
            Hash::Sha256 => {
                pbkdf2::pbkdf2_hmac_array::<Sha256, 32>(password, salt, iterations).to_vec()
            }
        }
    }

    /// (StoredKey, ServerKey) for a password (RFC 5802 §3).
    pub fn keys(self, password: &[u8], salt: &[u8], iterations: u32) -> (Vec<u8>, Vec<u8>) {
        let salted = self.salted_password(password, salt, iterations);
        let client_key = self.hmac(&salted, b"Client Key");
        let server_key = self.hmac(&salted, b"Server Key");
        (self.digest(&client_key), server_key)
    }
}

pub fn random_bytes<const N: usize>() -> [u8; N] {
    let mut b = [0u8; N];
    // The OS random source failing leaves no safe way to authenticate anyone.
    getrandom::fill(&mut b).expect("the operating system's random source works");
    b
}

/// PRECIS OpaqueString (RFC 8265 §4.2), which RFC 7677 and RFC 6120 ask passwords to go through.
pub fn prepare_password(password: &str) -> Result<String, &'static str> {
    use precis_profiles::OpaqueString;
    use precis_profiles::precis_core::profile::PrecisFastInvocation;
    OpaqueString::enforce(password)
        .map(|p| p.into_owned())
        .map_err(|_| "the password is empty or has characters that are not allowed")
}

/// Credentials for a new password, for both hashes, with a fresh salt.
pub fn derive_credentials(password: &str, iterations: u32) -> Result<Credentials, &'static str> {
    let password = prepare_password(password)?;
    let salt = random_bytes::<16>();
    let (s1, k1) = Hash::Sha1.keys(password.as_bytes(), &salt, iterations);
    let (s256, k256) = Hash::Sha256.keys(password.as_bytes(), &salt, iterations);
    Ok(Credentials {
        iterations,
        salt: B64.encode(salt),
        sha1_stored_key: B64.encode(s1),
        sha1_server_key: B64.encode(k1),
        sha256_stored_key: B64.encode(s256),
        sha256_server_key: B64.encode(k256),
    })
}

/// RFC 6120 §6.5 failure conditions that hearth sends.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FailureCondition {
    Aborted,
    EncryptionRequired,
    IncorrectEncoding,
    InvalidAuthzid,
    InvalidMechanism,
    MalformedRequest,
    NotAuthorized,
    TemporaryAuthFailure,
}

impl FailureCondition {
    pub fn as_str(self) -> &'static str {
        match self {
            FailureCondition::Aborted => "aborted",
            FailureCondition::EncryptionRequired => "encryption-required",
            FailureCondition::IncorrectEncoding => "incorrect-encoding",
            FailureCondition::InvalidAuthzid => "invalid-authzid",
            FailureCondition::InvalidMechanism => "invalid-mechanism",
            FailureCondition::MalformedRequest => "malformed-request",
            FailureCondition::NotAuthorized => "not-authorized",
            FailureCondition::TemporaryAuthFailure => "temporary-auth-failure",
        }
    }
}

#[derive(Debug, PartialEq, Eq)]
pub enum Step {
    Challenge(Vec<u8>),
    /// Authenticated as this normalised localpart; `data` goes into `<success/>`.
    Success {
        user: String,
        data: Vec<u8>,
    },
    /// `user` is the account that was tried, when known, for throttling.
    Failure(FailureCondition, Option<String>),
}

/// The mechanisms offered: -PLUS only when the TLS layer can give channel binding data.
pub fn mechanisms(channel_binding: bool) -> &'static [&'static str] {
    if channel_binding {
        &[
            "SCRAM-SHA-256-PLUS",
            "SCRAM-SHA-256",
            "SCRAM-SHA-1-PLUS",
            "SCRAM-SHA-1",
            "PLAIN",
        ]
    } else {
        &["SCRAM-SHA-256", "SCRAM-SHA-1", "PLAIN"]
    }
}

pub enum Sasl {
    Plain {
        domain: String,
    },
    Scram {
        hash: Hash,
        plus: bool,
        /// The tls-exporter value, when the transport has one.
        cb: Option<Vec<u8>>,
        domain: String,
        state: ScramState,
    },
}

pub enum ScramState {
    Start,
    SentFirst {
        user: Option<String>,
        gs2_header: String,
        nonce: String,
        auth_message: String,
        stored_key: Vec<u8>,
        server_key: Vec<u8>,
    },
    Done,
}

impl Sasl {
    /// Starts the named mechanism; `cb` is the tls-exporter channel binding data.
    pub fn start(mechanism: &str, cb: Option<Vec<u8>>, domain: &str) -> Option<Sasl> {
        let (hash, plus) = match mechanism {
            "PLAIN" => {
                return Some(Sasl::Plain {
                    domain: domain.to_owned(),
                });
            }
            "SCRAM-SHA-1" => (Hash::Sha1, false),
            "SCRAM-SHA-256" => (Hash::Sha256, false),
            "SCRAM-SHA-1-PLUS" if cb.is_some() => (Hash::Sha1, true),
            "SCRAM-SHA-256-PLUS" if cb.is_some() => (Hash::Sha256, true),
            _ => return None,
        };
        Some(Sasl::Scram {
            hash,
            plus,
            cb,
            domain: domain.to_owned(),
            state: ScramState::Start,
        })
    }

    /// Feeds one client message (already base64-decoded).
    pub fn step(&mut self, input: &[u8], lookup: &dyn Fn(&str) -> Option<Credentials>) -> Step {
        match self {
            Sasl::Plain { domain } => plain(input, domain, lookup),
            Sasl::Scram {
                hash,
                plus,
                cb,
                domain,
                state,
            } => {
                let current = std::mem::replace(state, ScramState::Done);
                match current {
                    ScramState::Start => {
                        match scram_first(*hash, *plus, cb.is_some(), domain, input, lookup) {
                            Ok((challenge, next)) => {
                                *state = next;
                                Step::Challenge(challenge)
                            }
                            Err(f) => Step::Failure(f, None),
                        }
                    }
                    ScramState::SentFirst {
                        user,
                        gs2_header,
                        nonce,
                        auth_message,
                        stored_key,
                        server_key,
                    } => {
                        let mut cb_input = gs2_header.into_bytes();
                        if *plus {
                            cb_input.extend_from_slice(cb.as_deref().unwrap_or_default());
                        }
                        scram_final(
                            *hash,
                            input,
                            &cb_input,
                            &nonce,
                            auth_message,
                            &stored_key,
                            &server_key,
                            user,
                        )
                    }
                    ScramState::Done => Step::Failure(FailureCondition::MalformedRequest, None),
                }
            }
        }
    }
}

/// An authorization identity may only name the authenticated account itself.
fn check_authzid(authzid: &str, user: &str, domain: &str) -> bool {
    authzid.is_empty()
        || jid::Jid::parse(authzid).is_ok_and(|j| j == jid::Jid::bare_from(user, domain))
}

fn plain(input: &[u8], domain: &str, lookup: &dyn Fn(&str) -> Option<Credentials>) -> Step {
    let Ok(text) = std::str::from_utf8(input) else {
        return Step::Failure(FailureCondition::MalformedRequest, None);
    };
    let mut parts = text.split('\0');
    let (Some(authzid), Some(authcid), Some(password), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Step::Failure(FailureCondition::MalformedRequest, None);
    };
    let Ok(user) = jid::localpart(authcid) else {
        return Step::Failure(FailureCondition::NotAuthorized, None);
    };
    if !check_authzid(authzid, &user, domain) {
        return Step::Failure(FailureCondition::InvalidAuthzid, Some(user));
    }
    let (Some(creds), Ok(password)) = (lookup(&user), prepare_password(password)) else {
        return Step::Failure(FailureCondition::NotAuthorized, Some(user));
    };
    let (Ok(salt), Ok(expected)) = (
        B64.decode(&creds.salt),
        B64.decode(&creds.sha256_stored_key),
    ) else {
        return Step::Failure(FailureCondition::NotAuthorized, Some(user));
    };
    let (stored, _) = Hash::Sha256.keys(password.as_bytes(), &salt, creds.iterations);
    if constant_time_eq(&stored, &expected) {
        Step::Success {
            user,
            data: Vec::new(),
        }
    } else {
        Step::Failure(FailureCondition::NotAuthorized, Some(user))
    }
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// Decodes a SCRAM `saslname` (RFC 5802 §5.1: `=2C` is `,` and `=3D` is `=`).
fn saslname(s: &str) -> Option<String> {
    let mut out = String::with_capacity(s.len());
    let mut rest = s;
    while let Some(i) = rest.find('=') {
        out.push_str(&rest[..i]);
        match rest.get(i + 1..i + 3) {
            Some("2C") => out.push(','),
            Some("3D") => out.push('='),
            _ => return None,
        }
        rest = &rest[i + 3..];
    }
    out.push_str(rest);
    Some(out)
}

fn scram_first(
    hash: Hash,
    plus: bool,
    server_has_cb: bool,
    domain: &str,
    input: &[u8],
    lookup: &dyn Fn(&str) -> Option<Credentials>,
) -> Result<(Vec<u8>, ScramState), FailureCondition> {
    let text = std::str::from_utf8(input).map_err(|_| FailureCondition::MalformedRequest)?;
    // gs2-header: cb-flag "," [authzid] ","
    let mut it = text.splitn(3, ',');
    let (Some(flag), Some(authz), Some(bare)) = (it.next(), it.next(), it.next()) else {
        return Err(FailureCondition::MalformedRequest);
    };
    match (flag, plus) {
        ("p=tls-exporter", true) => {}
        // RFC 5802 §6: "y" means the client thinks we cannot bind; we can, so this is a
        // downgrade and must fail.
        ("y", false) if server_has_cb => return Err(FailureCondition::NotAuthorized),
        ("n" | "y", false) => {}
        _ => return Err(FailureCondition::MalformedRequest),
    }
    let authzid = match authz {
        "" => String::new(),
        a => saslname(
            a.strip_prefix("a=")
                .ok_or(FailureCondition::MalformedRequest)?,
        )
        .ok_or(FailureCondition::MalformedRequest)?,
    };
    let gs2_header = format!("{flag},{authz},");
    let mut attrs = bare.split(',');
    let (Some(n), Some(r)) = (attrs.next(), attrs.next()) else {
        return Err(FailureCondition::MalformedRequest);
    };
    if n.starts_with("m=") {
        return Err(FailureCondition::MalformedRequest);
    }
    let name = n
        .strip_prefix("n=")
        .and_then(saslname)
        .ok_or(FailureCondition::MalformedRequest)?;
    let cnonce = r
        .strip_prefix("r=")
        .ok_or(FailureCondition::MalformedRequest)?;
    if cnonce.is_empty() || !cnonce.bytes().all(|b| b.is_ascii_graphic() && b != b',') {
        return Err(FailureCondition::MalformedRequest);
    }
    let user = jid::localpart(&name).ok();
    if let Some(u) = &user
        && !check_authzid(&authzid, u, domain)
    {
        return Err(FailureCondition::InvalidAuthzid);
    }
    let creds = user.as_deref().and_then(lookup);
    let (salt, iterations, stored_key, server_key) = match creds.as_ref().and_then(|c| {
        let (stored, server) = match hash {
            Hash::Sha1 => (&c.sha1_stored_key, &c.sha1_server_key),
            Hash::Sha256 => (&c.sha256_stored_key, &c.sha256_server_key),
        };
        Some((
            B64.decode(&c.salt).ok()?,
            c.iterations,
            B64.decode(stored).ok()?,
            B64.decode(server).ok()?,
        ))
    }) {
        Some(v) => v,
        // No such account: carry on with keys nobody can match.
        None => (
            random_bytes::<16>().to_vec(),
            4096,
            random_bytes::<32>().to_vec(),
            vec![],
        ),
    };
    let nonce = format!("{cnonce}{}", B64.encode(random_bytes::<18>()));
    let server_first = format!("r={nonce},s={},i={iterations}", B64.encode(&salt));
    let auth_message = format!("{bare},{server_first}");
    Ok((
        server_first.into_bytes(),
        ScramState::SentFirst {
            user: if creds.is_some() { user } else { None },
            gs2_header,
            nonce,
            auth_message,
            stored_key,
            server_key,
        },
    ))
}

#[allow(clippy::too_many_arguments)]
fn scram_final(
    hash: Hash,
    input: &[u8],
    cb_input: &[u8],
    nonce: &str,
    mut auth_message: String,
    stored_key: &[u8],
    server_key: &[u8],
    user: Option<String>,
) -> Step {
    let Ok(text) = std::str::from_utf8(input) else {
        return Step::Failure(FailureCondition::MalformedRequest, user);
    };
    let Some((without_proof, proof)) = text.rsplit_once(",p=") else {
        return Step::Failure(FailureCondition::MalformedRequest, user);
    };
    let mut attrs = without_proof.split(',');
    let (Some(c), Some(r)) = (attrs.next(), attrs.next()) else {
        return Step::Failure(FailureCondition::MalformedRequest, user);
    };
    let Some(Ok(c)) = c.strip_prefix("c=").map(|c| B64.decode(c)) else {
        return Step::Failure(FailureCondition::MalformedRequest, user);
    };
    if r.strip_prefix("r=") != Some(nonce) {
        return Step::Failure(FailureCondition::MalformedRequest, user);
    }
    let Ok(proof) = B64.decode(proof) else {
        return Step::Failure(FailureCondition::IncorrectEncoding, user);
    };
    if !constant_time_eq(&c, cb_input) {
        return Step::Failure(FailureCondition::NotAuthorized, user);
    }
    auth_message.push(',');
    auth_message.push_str(without_proof);
    let signature = hash.hmac(stored_key, auth_message.as_bytes());
    if proof.len() != signature.len() {
        return Step::Failure(FailureCondition::NotAuthorized, user);
    }
    let client_key: Vec<u8> = proof.iter().zip(&signature).map(|(a, b)| a ^ b).collect();
    let ok = constant_time_eq(&hash.digest(&client_key), stored_key);
    match user {
        Some(user) if ok => {
            let v = hash.hmac(server_key, auth_message.as_bytes());
            Step::Success {
                user,
                data: format!("v={}", B64.encode(v)).into_bytes(),
            }
        }
        user => Step::Failure(FailureCondition::NotAuthorized, user),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn creds_with_salt(hash: Hash, password: &str, salt_b64: &str) -> Credentials {
        let salt = B64.decode(salt_b64).unwrap();
        let (stored, server) = hash.keys(password.as_bytes(), &salt, 4096);
        let (s1, k1, s256, k256) = match hash {
            Hash::Sha1 => (stored, server, vec![], vec![]),
            Hash::Sha256 => (vec![], vec![], stored, server),
        };
        Credentials {
            iterations: 4096,
            salt: salt_b64.into(),
            sha1_stored_key: B64.encode(s1),
            sha1_server_key: B64.encode(k1),
            sha256_stored_key: B64.encode(s256),
            sha256_server_key: B64.encode(k256),
        }
    }

    /// Runs the RFC's exchange with the RFC's server nonce substituted into our challenge.
    fn rfc_vector(
        hash: Hash,
        mech: &str,
        salt: &str,
        cnonce: &str,
        snonce: &str,
        proof: &str,
        verifier: &str,
    ) {
        let creds = creds_with_salt(hash, "pencil", salt);
        let lookup = |u: &str| (u == "user").then(|| creds.clone());
        let mut sasl = Sasl::start(mech, None, "localhost").unwrap();
        let first = format!("n,,n=user,r={cnonce}");
        let Step::Challenge(ch) = sasl.step(first.as_bytes(), &lookup) else {
            panic!()
        };
        let ch = String::from_utf8(ch).unwrap();
        assert!(ch.starts_with(&format!("r={cnonce}")));
        assert!(ch.ends_with(&format!(",s={salt},i=4096")));
        // Replace our random nonce with the RFC's so that its proof applies.
        let nonce = format!("{cnonce}{snonce}");
        if let Sasl::Scram {
            state:
                ScramState::SentFirst {
                    nonce: n,
                    auth_message,
                    ..
                },
            ..
        } = &mut sasl
        {
            *n = nonce.clone();
            *auth_message = format!("n=user,r={cnonce},r={nonce},s={salt},i=4096");
        }
        let fin = format!("c=biws,r={nonce},p={proof}");
        assert_eq!(
            sasl.step(fin.as_bytes(), &lookup),
            Step::Success {
                user: "user".into(),
                data: format!("v={verifier}").into_bytes()
            }
        );
    }

    #[test]
    fn rfc5802_sha1_vector() {
        rfc_vector(
            Hash::Sha1,
            "SCRAM-SHA-1",
            "QSXCR+Q6sek8bf92",
            "fyko+d2lbbFgONRv9qkxdawL",
            "3rfcNHYJY1ZVvWVs7j",
            "v0X8v3Bz2T0CJGbJQyF0X+HI4Ts=",
            "rmF9pqV8S7suAoZWja4dJRkFsKQ=",
        );
    }

    #[test]
    fn rfc7677_sha256_vector() {
        rfc_vector(
            Hash::Sha256,
            "SCRAM-SHA-256",
            "W22ZaJ0SNY7soEsUEjb6gQ==",
            "rOprNGfwEbeRWgbNEkqO",
            "%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0",
            "dHzbZapWIk4jUhN+Ute9ytag9zjfMHgsqmmiz7AndVQ=",
            "6rriTRBi23WpRR/wtup+mMhUZUn/dB5nLTJRsjl95G4=",
        );
    }

    #[test]
    fn wrong_proof_and_unknown_user_fail_alike() {
        let creds = derive_credentials("secret", 4096).unwrap();
        let lookup = |u: &str| (u == "alice").then(|| creds.clone());
        for user in ["alice", "nobody"] {
            let mut sasl = Sasl::start("SCRAM-SHA-256", None, "localhost").unwrap();
            let Step::Challenge(ch) = sasl.step(format!("n,,n={user},r=abc").as_bytes(), &lookup)
            else {
                panic!()
            };
            let ch = String::from_utf8(ch).unwrap();
            let nonce = ch.split(',').next().unwrap().strip_prefix("r=").unwrap();
            let fin = format!("c=biws,r={nonce},p={}", B64.encode([0u8; 32]));
            assert!(matches!(
                sasl.step(fin.as_bytes(), &lookup),
                Step::Failure(FailureCondition::NotAuthorized, _)
            ));
        }
    }

    #[test]
    fn plain_and_downgrade() {
        let creds = derive_credentials("pässword", 4096).unwrap();
        let lookup = |u: &str| (u == "alice").then(|| creds.clone());
        let mut ok = Sasl::start("PLAIN", None, "localhost").unwrap();
        assert!(matches!(
            ok.step("\0Alice\0pässword".as_bytes(), &lookup),
            Step::Success { .. }
        ));
        let mut bad = Sasl::start("PLAIN", None, "localhost").unwrap();
        assert!(matches!(
            bad.step(b"\0alice\0nope", &lookup),
            Step::Failure(FailureCondition::NotAuthorized, _)
        ));
        let mut other = Sasl::start("PLAIN", None, "localhost").unwrap();
        assert!(matches!(
            other.step("bob@localhost\0alice\0pässword".as_bytes(), &lookup),
            Step::Failure(FailureCondition::InvalidAuthzid, _)
        ));
        // "y" while the server offers -PLUS is a downgrade.
        let mut y = Sasl::start("SCRAM-SHA-1", Some(vec![1; 32]), "localhost").unwrap();
        assert!(matches!(
            y.step(b"y,,n=alice,r=abc", &lookup),
            Step::Failure(FailureCondition::NotAuthorized, _)
        ));
        assert!(Sasl::start("SCRAM-SHA-1-PLUS", None, "localhost").is_none());
        assert_eq!(saslname("a=2Cb=3Dc").as_deref(), Some("a,b=c"));
        assert_eq!(saslname("a=2"), None);
    }
}
