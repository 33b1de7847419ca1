//! SASL exchanges (`stream::sasl`): every mechanism, with and without channel binding data,
//! over a sequence of client messages.
//!
//! Input: the first byte picks the mechanism (`MECHANISMS`, by its low three bits modulo 5)
//! and, by bits 3 and 4, whether the transport has tls-exporter and tls-server-end-point data;
//! the rest is the client's messages
//! (already base64-decoded, as the stream hands them over), separated by 0xFF, a byte UTF-8
//! never uses.
//!
//! One account, `user` with the password `pencil`, salted as in the test vector of its hash
//! (RFC 5802 for SHA-1, RFC 7677 for SHA-256), and the server nonce made the vector's too after
//! the first message, so that the RFCs' exchanges succeed as seeds and mutations of them reach
//! every check of the final message. A final message ending in `,p=*` gets the right proof
//! filled in, so that the checks after it are reached with any channel binding.
//!
//! Besides not panicking: no one but `user` ever authenticates.

#![no_main]

use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use hearth::storage::accounts::Credentials;
use hearth::stream::sasl::{Bindings, Hash, Sasl, ScramState, Step};
use hmac::{Hmac, Mac};
use libfuzzer_sys::fuzz_target;
use sha1::Sha1;
use sha2::{Digest, Sha256};
use std::sync::OnceLock;

const MECHANISMS: [&str; 5] = [
    "PLAIN",
    "SCRAM-SHA-1",
    "SCRAM-SHA-256",
    "SCRAM-SHA-1-PLUS",
    "SCRAM-SHA-256-PLUS",
];
const CB: [u8; 32] = [7; 32];
const END_POINT: [u8; 32] = [9; 32];
const PASSWORD: &str = "pencil";

struct Vector {
    salt: &'static str,
    server_nonce: &'static str,
}

const RFC5802: Vector = Vector {
    salt: "QSXCR+Q6sek8bf92",
    server_nonce: "3rfcNHYJY1ZVvWVs7j",
};
const RFC7677: Vector = Vector {
    salt: "W22ZaJ0SNY7soEsUEjb6gQ==",
    server_nonce: "%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0",
};

/// The account's credentials and the client key, per vector; PBKDF2 runs once per process.
struct Account {
    creds: Credentials,
    client_key: Vec<u8>,
}

fn account(hash: Hash) -> &'static Account {
    static SHA1: OnceLock<Account> = OnceLock::new();
    static SHA256: OnceLock<Account> = OnceLock::new();
    let (cell, v) = match hash {
        Hash::Sha1 => (&SHA1, &RFC5802),
        Hash::Sha256 => (&SHA256, &RFC7677),
    };
    cell.get_or_init(|| {
        let salt = B64.decode(v.salt).expect("the vector's salt is base64");
        let (s1, k1) = Hash::Sha1.keys(PASSWORD.as_bytes(), &salt, 4096);
        let (s256, k256) = Hash::Sha256.keys(PASSWORD.as_bytes(), &salt, 4096);
        let client_key = match hash {
            Hash::Sha1 => {
                let salted = pbkdf2::pbkdf2_hmac_array::<Sha1, 20>(b"pencil", &salt, 4096);
                hmac::<Hmac<Sha1>>(&salted, b"Client Key")
            }
            Hash::Sha256 => {
                let salted = pbkdf2::pbkdf2_hmac_array::<Sha256, 32>(b"pencil", &salt, 4096);
                hmac::<Hmac<Sha256>>(&salted, b"Client Key")
            }
        };
        Account {
            creds: Credentials {
                iterations: 4096,
                salt: v.salt.to_owned(),
                sha1_stored_key: B64.encode(s1),
                sha1_server_key: B64.encode(k1),
                sha256_stored_key: B64.encode(s256),
                sha256_server_key: B64.encode(k256),
            },
            client_key,
        }
    })
}

fn hmac<M: Mac + hmac::digest::KeyInit>(key: &[u8], data: &[u8]) -> Vec<u8> {
    let mut m = <M as hmac::digest::KeyInit>::new_from_slice(key).expect("any key length");
    m.update(data);
    m.finalize().into_bytes().to_vec()
}

/// Replaces the random server nonce with the vector's, in the state the server keeps.
fn fix_nonce(sasl: &mut Sasl, v: &Vector) {
    if let Sasl::Scram {
        state:
            ScramState::SentFirst {
                nonce,
                auth_message,
                ..
            },
        ..
    } = sasl
    {
        let cnonce_len = nonce.len() - 24; // 18 random bytes in base64
        let fixed = format!("{}{}", &nonce[..cnonce_len], v.server_nonce);
        let at = auth_message
            .rfind(&format!(",r={nonce},"))
            .expect("the server-first message is in the auth message");
        auth_message.replace_range(at + 3..at + 3 + nonce.len(), &fixed);
        *nonce = fixed;
    }
}

/// The client's proof for `final_without_proof`, computed as a client knowing the password would.
fn proof(sasl: &Sasl, hash: Hash, final_without_proof: &str) -> Option<String> {
    let Sasl::Scram {
        state: ScramState::SentFirst { auth_message, .. },
        ..
    } = sasl
    else {
        return None;
    };
    let client_key = &account(hash).client_key;
    let msg = format!("{auth_message},{final_without_proof}");
    let sig = match hash {
        Hash::Sha1 => hmac::<Hmac<Sha1>>(&Sha1::digest(client_key), msg.as_bytes()),
        Hash::Sha256 => hmac::<Hmac<Sha256>>(&Sha256::digest(client_key), msg.as_bytes()),
    };
    let p: Vec<u8> = client_key.iter().zip(&sig).map(|(a, b)| a ^ b).collect();
    Some(B64.encode(p))
}

fuzz_target!(|data: &[u8]| {
    let Some((&first, rest)) = data.split_first() else {
        return;
    };
    let mechanism = MECHANISMS[usize::from(first & 7) % MECHANISMS.len()];
    let cb = Bindings {
        exporter: (first & 8 != 0).then(|| CB.to_vec()),
        endpoint: (first & 16 != 0).then(|| END_POINT.to_vec()),
    };
    let hash = if mechanism.contains("SHA-1") {
        Hash::Sha1
    } else {
        Hash::Sha256
    };
    let vector = match hash {
        Hash::Sha1 => &RFC5802,
        Hash::Sha256 => &RFC7677,
    };
    let creds = &account(hash).creds;
    let lookup = |u: &str| (u == "user").then(|| creds.clone());
    let Some(mut sasl) = Sasl::start(mechanism, cb, "localhost") else {
        return;
    };
    for msg in rest.split(|&b| b == 0xFF).take(4) {
        let mut msg = msg.to_vec();
        if let Some(without) = msg.strip_suffix(b",p=*")
            && let Ok(without) = std::str::from_utf8(without)
            && let Some(p) = proof(&sasl, hash, without)
        {
            msg = format!("{without},p={p}").into_bytes();
        }
        match sasl.step(&msg, &lookup) {
            Step::Challenge(_) => fix_nonce(&mut sasl, vector),
            Step::Success { user, .. } => {
                assert_eq!(user, "user");
                return;
            }
            Step::Failure(..) => return,
        }
    }
});
