//! SASL for client streams (RFC 6120 §6): SCRAM-SHA-1 and SCRAM-SHA-256 (RFC 5802, RFC 7677),
//! their -PLUS variants with `tls-exporter` channel binding (RFC 9266), and PLAIN (RFC 4616).
//!
//! The server keeps only salt, iteration count, StoredKey and ServerKey. An unknown user is
//! walked through the same exchange with a decoy: a salt that a server secret and the name
//! determine, the configured iteration count, and for PLAIN the same key derivation, so that
//! neither the answers nor their timing reveal which accounts exist.

use crate::error::Error;
use crate::jid;
use crate::storage::accounts::Credentials;
use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use hmac::{Hmac, Mac};
use sha1::Sha1;
use sha2::{Digest, Sha256};
use std::path::Path;
use std::sync::OnceLock;

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

/// What an unknown user is answered with: the same salt for the same name every time, as a
/// real account has, and the iteration count new passwords get.
pub struct Decoy {
    secret: [u8; SECRET_LEN],
    iterations: u32,
}

impl Decoy {
    pub fn new(secret: [u8; SECRET_LEN], iterations: u32) -> Decoy {
        Decoy { secret, iterations }
    }

    fn derive(&self, label: &[u8], name: &str) -> Vec<u8> {
        let mut data = label.to_vec();
        data.push(0);
        data.extend_from_slice(name.as_bytes());
        Hash::Sha256.hmac(&self.secret, &data)
    }

    /// As long as the salts of real accounts (`derive_credentials`).
    fn salt(&self, name: &str) -> Vec<u8> {
        self.derive(b"salt", name)[..16].to_vec()
    }

    fn stored_key(&self, name: &str) -> Vec<u8> {
        self.derive(b"stored key", name)
    }
}

static DECOY: OnceLock<Decoy> = OnceLock::new();

/// Sets the decoy for unknown users; the server does this at startup, before any connection.
pub fn install_decoy(decoy: Decoy) {
    let _ = DECOY.set(decoy);
}

/// The installed decoy. Without one (unit tests), a secret of this process's own.
fn decoy() -> &'static Decoy {
    DECOY.get_or_init(|| Decoy::new(random_bytes(), 4096))
}

pub const SECRET_LEN: usize = 32;

/// HMAC-SHA-256 under the server's secret of `label` and `parts` (each length-prefixed, so
/// that no two inputs run together): values only this server can make, the same after a
/// restart.
pub fn server_hmac(label: &str, parts: &[&[u8]]) -> Vec<u8> {
    let mut data = label.as_bytes().to_vec();
    data.push(0);
    for p in parts {
        data.extend_from_slice(&u32::try_from(p.len()).unwrap_or(u32::MAX).to_be_bytes());
        data.extend_from_slice(p);
    }
    Hash::Sha256.hmac(&decoy().secret, &data)
}

/// The server's secret for decoys, from the file `secret` in the data directory, made on the
/// first start. It must outlive restarts: a decoy salt that changed would give away that the
/// name is not an account.
pub fn load_secret(data_dir: &Path) -> Result<[u8; SECRET_LEN], Error> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let path = data_dir.join("secret");
    match std::fs::read(&path) {
        Ok(bytes) => {
            return <[u8; SECRET_LEN]>::try_from(bytes.as_slice()).map_err(|_| {
                Error::Io(format!(
                    "{} is not a secret hearth made (those are {SECRET_LEN} bytes); delete it \
                     and hearth makes a new one",
                    path.display()
                ))
            });
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(Error::io("read the secret file", &path, &e)),
    }
    let secret = random_bytes::<SECRET_LEN>();
    // Written whole under another name and then renamed, so that a crash leaves either no
    // secret or a complete one.
    let tmp = data_dir.join("secret.new");
    let _ = std::fs::remove_file(&tmp);
    let write = || -> std::io::Result<()> {
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&tmp)?;
        f.write_all(&secret)?;
        f.sync_all()
    };
    write().map_err(|e| Error::io("write the secret file", &tmp, &e))?;
    std::fs::rename(&tmp, &path).map_err(|e| Error::io("create the secret file", &path, &e))?;
    // The rename itself must reach the disk before anyone is answered with the new secret.
    if let Ok(dir) = std::fs::File::open(data_dir) {
        let _ = dir.sync_all();
    }
    Ok(secret)
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
    CredentialsExpired,
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
            FailureCondition::CredentialsExpired => "credentials-expired",
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
    /// `user` is the name that was tried, when it is a valid localpart, for throttling; it is
    /// given whether or not such an account exists, so that unknown names are throttled alike.
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
        decoy: &'static Decoy,
    },
    Scram {
        hash: Hash,
        plus: bool,
        domain: String,
        decoy: &'static Decoy,
        state: ScramState,
    },
}

/// Channel binding data of a TLS connection, by type: `tls-exporter` (RFC 9266, TLS 1.3) and
/// `tls-server-end-point` (RFC 5929, the hash of the server's certificate), which XEP-0440
/// makes the one every server offers.
#[derive(Clone, Debug, Default)]
pub struct Bindings {
    pub exporter: Option<Vec<u8>>,
    pub endpoint: Option<Vec<u8>>,
}

impl Bindings {
    pub fn any(&self) -> bool {
        self.exporter.is_some() || self.endpoint.is_some()
    }

    /// The data of the type a client names in its gs2 header (`p=TYPE`).
    fn of(&self, kind: &str) -> Option<&[u8]> {
        match kind {
            "tls-exporter" => self.exporter.as_deref(),
            "tls-server-end-point" => self.endpoint.as_deref(),
            _ => None,
        }
    }
}

pub enum ScramState {
    /// Before the client's first message, with the channel bindings the transport has.
    Start(Bindings),
    SentFirst {
        /// The name tried, when it is a valid localpart, whether an account or not.
        user: Option<String>,
        /// `user` is an account and the keys are its own.
        known: bool,
        gs2_header: String,
        /// The channel binding data of the type the client chose (-PLUS only).
        cb_data: Vec<u8>,
        nonce: String,
        auth_message: String,
        stored_key: Vec<u8>,
        server_key: Vec<u8>,
    },
    Done,
}

impl Sasl {
    /// Starts the named mechanism; `cb` is what the transport has for channel binding.
    pub fn start(mechanism: &str, cb: Bindings, domain: &str) -> Option<Sasl> {
        Sasl::start_with(mechanism, cb, domain, decoy())
    }

    fn start_with(
        mechanism: &str,
        cb: Bindings,
        domain: &str,
        decoy: &'static Decoy,
    ) -> Option<Sasl> {
        let (hash, plus) = match mechanism {
            "PLAIN" => {
                return Some(Sasl::Plain {
                    domain: domain.to_owned(),
                    decoy,
                });
            }
            "SCRAM-SHA-1" => (Hash::Sha1, false),
            "SCRAM-SHA-256" => (Hash::Sha256, false),
            "SCRAM-SHA-1-PLUS" if cb.any() => (Hash::Sha1, true),
            "SCRAM-SHA-256-PLUS" if cb.any() => (Hash::Sha256, true),
            _ => return None,
        };
        Some(Sasl::Scram {
            hash,
            plus,
            domain: domain.to_owned(),
            decoy,
            state: ScramState::Start(cb),
        })
    }

    /// Feeds one client message (already base64-decoded).
    pub fn step(&mut self, input: &[u8], lookup: &dyn Fn(&str) -> Option<Credentials>) -> Step {
        match self {
            Sasl::Plain { domain, decoy } => plain(input, domain, decoy, lookup),
            Sasl::Scram {
                hash,
                plus,
                domain,
                decoy,
                state,
            } => {
                let current = std::mem::replace(state, ScramState::Done);
                match current {
                    ScramState::Start(cb) => {
                        match scram_first(*hash, *plus, &cb, domain, decoy, input, lookup) {
                            Ok((challenge, next)) => {
                                *state = next;
                                Step::Challenge(challenge)
                            }
                            Err(f) => Step::Failure(f, None),
                        }
                    }
                    ScramState::SentFirst {
                        user,
                        known,
                        gs2_header,
                        cb_data,
                        nonce,
                        auth_message,
                        stored_key,
                        server_key,
                    } => {
                        let mut cb_input = gs2_header.into_bytes();
                        cb_input.extend_from_slice(&cb_data);
                        let step = scram_final(
                            *hash,
                            input,
                            &cb_input,
                            &nonce,
                            auth_message,
                            &stored_key,
                            &server_key,
                            user,
                        );
                        match step {
                            // The password may have changed, or the account gone, since the
                            // first message: only the current keys log in.
                            Step::Success { user, .. }
                                if !known
                                    || keys_of(lookup(&user).as_ref(), *hash)
                                        .is_none_or(|k| k.stored != stored_key) =>
                            {
                                Step::Failure(FailureCondition::NotAuthorized, Some(user))
                            }
                            step => step,
                        }
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

fn plain(
    input: &[u8],
    domain: &str,
    decoy: &Decoy,
    lookup: &dyn Fn(&str) -> Option<Credentials>,
) -> Step {
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
    let Ok(password) = prepare_password(password) else {
        return Step::Failure(FailureCondition::NotAuthorized, Some(user));
    };
    let real = keys_of(lookup(&user).as_ref(), Hash::Sha256);
    let known = real.is_some();
    // An unknown user costs the same key derivation as a real one.
    let keys = real.unwrap_or_else(|| Keys::decoy(decoy, &user));
    let (stored, _) = Hash::Sha256.keys(password.as_bytes(), &keys.salt, keys.iterations);
    if constant_time_eq(&stored, &keys.stored) & known {
        Step::Success {
            user,
            data: Vec::new(),
        }
    } else {
        Step::Failure(FailureCondition::NotAuthorized, Some(user))
    }
}

/// What one exchange checks against: an account's values for one hash, or a decoy's.
struct Keys {
    salt: Vec<u8>,
    iterations: u32,
    stored: Vec<u8>,
    server: Vec<u8>,
}

impl Keys {
    /// Keys nobody can match, with the salt and iterations an account would have.
    fn decoy(decoy: &Decoy, name: &str) -> Keys {
        Keys {
            salt: decoy.salt(name),
            iterations: decoy.iterations,
            stored: decoy.stored_key(name),
            server: Vec::new(),
        }
    }
}

/// An account's keys for `hash`, if it has usable ones.
fn keys_of(creds: Option<&Credentials>, hash: Hash) -> Option<Keys> {
    let c = creds?;
    let (stored, server) = match hash {
        Hash::Sha1 => (&c.sha1_stored_key, &c.sha1_server_key),
        Hash::Sha256 => (&c.sha256_stored_key, &c.sha256_server_key),
    };
    Some(Keys {
        salt: B64.decode(&c.salt).ok()?,
        iterations: c.iterations,
        stored: B64.decode(stored).ok()?,
        server: B64.decode(server).ok()?,
    })
}

pub fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
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
    cb: &Bindings,
    domain: &str,
    decoy: &Decoy,
    input: &[u8],
    lookup: &dyn Fn(&str) -> Option<Credentials>,
) -> Result<(Vec<u8>, ScramState), FailureCondition> {
    let text = std::str::from_utf8(input).map_err(|_| FailureCondition::MalformedRequest)?;
    // gs2-header: cb-flag "," [authzid] ","
    let mut it = text.splitn(3, ',');
    let (Some(flag), Some(authz), Some(bare)) = (it.next(), it.next(), it.next()) else {
        return Err(FailureCondition::MalformedRequest);
    };
    let cb_data = match (flag.strip_prefix("p="), plus) {
        (Some(kind), true) => cb
            .of(kind)
            .ok_or(FailureCondition::MalformedRequest)?
            .to_vec(),
        // RFC 5802 §6: "y" means the client thinks we cannot bind; we can, so this is a
        // downgrade and must fail.
        (None, false) if flag == "y" && cb.any() => return Err(FailureCondition::NotAuthorized),
        (None, false) if flag == "n" || flag == "y" => Vec::new(),
        _ => return Err(FailureCondition::MalformedRequest),
    };
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
    let real = keys_of(user.as_deref().and_then(lookup).as_ref(), hash);
    let known = real.is_some();
    let keys = real.unwrap_or_else(|| Keys::decoy(decoy, user.as_deref().unwrap_or(&name)));
    let nonce = format!("{cnonce}{}", B64.encode(random_bytes::<18>()));
    let server_first = format!(
        "r={nonce},s={},i={}",
        B64.encode(&keys.salt),
        keys.iterations
    );
    let auth_message = format!("{bare},{server_first}");
    Ok((
        server_first.into_bytes(),
        ScramState::SentFirst {
            user,
            known,
            gs2_header,
            cb_data,
            nonce,
            auth_message,
            stored_key: keys.stored,
            server_key: keys.server,
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
        let mut sasl = Sasl::start(mech, Bindings::default(), "localhost").unwrap();
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
            let mut sasl = Sasl::start("SCRAM-SHA-256", Bindings::default(), "localhost").unwrap();
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

    fn test_decoy(iterations: u32) -> &'static Decoy {
        Box::leak(Box::new(Decoy::new(random_bytes(), iterations)))
    }

    /// The server-first message for `user`, as (salt, iterations).
    fn server_first(
        decoy: &'static Decoy,
        user: &str,
        lookup: &dyn Fn(&str) -> Option<Credentials>,
    ) -> (String, String) {
        let mut sasl =
            Sasl::start_with("SCRAM-SHA-256", Bindings::default(), "localhost", decoy).unwrap();
        let Step::Challenge(ch) = sasl.step(format!("n,,n={user},r=abc").as_bytes(), lookup) else {
            panic!("no challenge for {user}")
        };
        let ch = String::from_utf8(ch).unwrap();
        let attr = |k: &str| {
            ch.split(',')
                .find_map(|a| a.strip_prefix(k))
                .unwrap()
                .to_owned()
        };
        (attr("s="), attr("i="))
    }

    #[test]
    fn an_unknown_user_looks_like_an_account() {
        let creds = derive_credentials("secret", 4096).unwrap();
        let lookup = |u: &str| (u == "alice").then(|| creds.clone());
        let decoy = test_decoy(5000);
        let (salt, iterations) = server_first(decoy, "nobody", &lookup);
        assert_eq!(
            server_first(decoy, "nobody", &lookup),
            (salt.clone(), iterations.clone())
        );
        assert_eq!(iterations, "5000", "the configured iteration count");
        assert_eq!(salt.len(), creds.salt.len(), "as long as a real salt");
        assert_ne!(server_first(decoy, "somebody", &lookup).0, salt);
        // The same name gets the same salt however it is spelled, as an account would.
        assert_eq!(server_first(decoy, "NoBody", &lookup).0, salt);
        // Another server (another secret) answers differently.
        assert_ne!(server_first(test_decoy(5000), "nobody", &lookup).0, salt);
        let (real_salt, real_iterations) = server_first(decoy, "alice", &lookup);
        assert_eq!(
            (real_salt, real_iterations),
            (creds.salt.clone(), "4096".into())
        );
    }

    #[test]
    fn plain_fails_alike_for_unknown_users() {
        let creds = derive_credentials("secret", 4096).unwrap();
        let lookup = |u: &str| (u == "alice").then(|| creds.clone());
        for (user, password) in [("alice", "wrong"), ("nobody", "secret"), ("nobody", "")] {
            let mut sasl =
                Sasl::start_with("PLAIN", Bindings::default(), "localhost", test_decoy(4096))
                    .unwrap();
            let input = format!("\0{user}\0{password}");
            assert_eq!(
                sasl.step(input.as_bytes(), &lookup),
                Step::Failure(FailureCondition::NotAuthorized, Some(user.into())),
                "{user}"
            );
        }
    }

    /// The client's final message of a SCRAM-SHA-256 exchange with `password`, without channel
    /// binding.
    fn client_final(first_bare: &str, challenge: &[u8], password: &str) -> String {
        client_final_bound(first_bare, challenge, password, b"n,,")
    }

    /// The same, its `c=` carrying `cbind_input` (the gs2 header, then any binding data).
    fn client_final_bound(
        first_bare: &str,
        challenge: &[u8],
        password: &str,
        cbind_input: &[u8],
    ) -> String {
        let server_first = std::str::from_utf8(challenge).unwrap();
        let attr = |k: &str| {
            server_first
                .split(',')
                .find_map(|a| a.strip_prefix(k))
                .unwrap()
        };
        let salt = B64.decode(attr("s=")).unwrap();
        let iterations: u32 = attr("i=").parse().unwrap();
        let without_proof = format!("c={},r={}", B64.encode(cbind_input), attr("r="));
        let auth_message = format!("{first_bare},{server_first},{without_proof}");
        let h = Hash::Sha256;
        let salted = h.salted_password(password.as_bytes(), &salt, iterations);
        let client_key = h.hmac(&salted, b"Client Key");
        let signature = h.hmac(&h.digest(&client_key), auth_message.as_bytes());
        let proof: Vec<u8> = client_key
            .iter()
            .zip(&signature)
            .map(|(a, b)| a ^ b)
            .collect();
        format!("{without_proof},p={}", B64.encode(proof))
    }

    #[test]
    fn a_password_change_or_removal_mid_exchange_fails_the_login() {
        let old = derive_credentials("old", 4096).unwrap();
        let new = derive_credentials("new", 4096).unwrap();
        for after in [Some(new), None] {
            let current = std::cell::RefCell::new(Some(old.clone()));
            let lookup = |u: &str| current.borrow().clone().filter(|_| u == "alice");
            let mut sasl = Sasl::start("SCRAM-SHA-256", Bindings::default(), "localhost").unwrap();
            let first_bare = "n=alice,r=abc";
            let Step::Challenge(ch) = sasl.step(format!("n,,{first_bare}").as_bytes(), &lookup)
            else {
                panic!()
            };
            *current.borrow_mut() = after.clone();
            let fin = client_final(first_bare, &ch, "old");
            assert_eq!(
                sasl.step(fin.as_bytes(), &lookup),
                Step::Failure(FailureCondition::NotAuthorized, Some("alice".into()))
            );
        }
        // Unchanged, the same exchange succeeds.
        let lookup = |u: &str| (u == "alice").then(|| old.clone());
        let mut sasl = Sasl::start("SCRAM-SHA-256", Bindings::default(), "localhost").unwrap();
        let Step::Challenge(ch) = sasl.step(b"n,,n=alice,r=abc", &lookup) else {
            panic!()
        };
        let fin = client_final("n=alice,r=abc", &ch, "old");
        assert!(matches!(
            sasl.step(fin.as_bytes(), &lookup),
            Step::Success { .. }
        ));
    }

    #[test]
    fn the_secret_is_made_once_private_and_kept() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let first = load_secret(dir.path()).unwrap();
        let path = dir.path().join("secret");
        let mode = std::fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        assert_eq!(load_secret(dir.path()).unwrap(), first);
        assert!(!dir.path().join("secret.new").exists());
        std::fs::write(&path, b"short").unwrap();
        let e = load_secret(dir.path()).unwrap_err().to_string();
        assert!(e.contains("delete it"), "{e}");
        assert_eq!(e.lines().count(), 1);
    }

    #[test]
    fn plain_and_downgrade() {
        let creds = derive_credentials("pässword", 4096).unwrap();
        let lookup = |u: &str| (u == "alice").then(|| creds.clone());
        let mut ok = Sasl::start("PLAIN", Bindings::default(), "localhost").unwrap();
        assert!(matches!(
            ok.step("\0Alice\0pässword".as_bytes(), &lookup),
            Step::Success { .. }
        ));
        let mut bad = Sasl::start("PLAIN", Bindings::default(), "localhost").unwrap();
        assert!(matches!(
            bad.step(b"\0alice\0nope", &lookup),
            Step::Failure(FailureCondition::NotAuthorized, _)
        ));
        let mut other = Sasl::start("PLAIN", Bindings::default(), "localhost").unwrap();
        assert!(matches!(
            other.step("bob@localhost\0alice\0pässword".as_bytes(), &lookup),
            Step::Failure(FailureCondition::InvalidAuthzid, _)
        ));
        // "y" while the server offers -PLUS is a downgrade.
        let cb = Bindings {
            exporter: Some(vec![1; 32]),
            endpoint: None,
        };
        let mut y = Sasl::start("SCRAM-SHA-1", cb, "localhost").unwrap();
        assert!(matches!(
            y.step(b"y,,n=alice,r=abc", &lookup),
            Step::Failure(FailureCondition::NotAuthorized, _)
        ));
        assert!(Sasl::start("SCRAM-SHA-1-PLUS", Bindings::default(), "localhost").is_none());
        assert_eq!(saslname("a=2Cb=3Dc").as_deref(), Some("a,b=c"));
        assert_eq!(saslname("a=2"), None);
    }

    /// SCRAM-SHA-256-PLUS binds to the type the client names: tls-exporter or
    /// tls-server-end-point, each with its own data; a type the connection lacks, or data of
    /// another type, fails.
    #[test]
    fn plus_binds_to_the_type_the_client_names() {
        let creds = derive_credentials("pw", 4096).unwrap();
        let lookup = |u: &str| (u == "alice").then(|| creds.clone());
        let both = Bindings {
            exporter: Some(vec![1; 32]),
            endpoint: Some(vec![2; 32]),
        };
        let run = |cb: &Bindings, header: &str, data: &[u8]| {
            let mut sasl = Sasl::start("SCRAM-SHA-256-PLUS", cb.clone(), "localhost").unwrap();
            let first_bare = "n=alice,r=abc";
            let step = sasl.step(format!("{header}{first_bare}").as_bytes(), &lookup);
            let Step::Challenge(ch) = step else {
                return step;
            };
            let mut cbind = header.as_bytes().to_vec();
            cbind.extend_from_slice(data);
            let fin = client_final_bound(first_bare, &ch, "pw", &cbind);
            sasl.step(fin.as_bytes(), &lookup)
        };
        for (header, data) in [
            ("p=tls-exporter,,", [1u8; 32]),
            ("p=tls-server-end-point,,", [2; 32]),
        ] {
            assert!(
                matches!(run(&both, header, &data), Step::Success { .. }),
                "{header}"
            );
        }
        assert!(matches!(
            run(&both, "p=tls-server-end-point,,", &[1; 32]),
            Step::Failure(FailureCondition::NotAuthorized, _)
        ));
        let exporter_only = Bindings {
            endpoint: None,
            ..both.clone()
        };
        for header in ["p=tls-server-end-point,,", "p=tls-unique,,"] {
            assert!(matches!(
                run(&exporter_only, header, &[2; 32]),
                Step::Failure(FailureCondition::MalformedRequest, _)
            ));
        }
    }
}
