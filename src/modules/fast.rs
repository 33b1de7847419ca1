//! XEP-0484 Fast Authentication Streamlining Tokens, v0.1, with the HT-SHA-256 mechanisms of
//! draft-schmaus-kitten-sasl-ht: a client that logged in with its password over SASL2 gets a
//! token, and later authenticates with it in one message and no key derivation: what lets a
//! phone come back in one round trip after the stream header.
//!
//! - Mechanisms: HT-SHA-256-NONE always, HT-SHA-256-EXPR (tls-exporter, RFC 9266) and
//!   HT-SHA-256-ENDP (tls-server-end-point, RFC 5929) where the TLS session gives them (see
//!   `Conn::bindings`). A token works with the mechanism it was asked for only (§3.4): a
//!   token for a channel-binding mechanism cannot be downgraded to NONE.
//! - One pair of slots per client installation (its SASL2 `<user-agent id=''/>`), as §6 lays
//!   out: a new token waits in `new` while the one in `current` keeps working, so that a token
//!   lost with a dropped connection does not log the phone out; using the new one retires the
//!   old. A token is rotated (a new one issued) once it is `rotate_after_secs` old, and dies
//!   `token_ttl_secs` after it was issued. An account has tokens for at most
//!   `max_clients_per_account` installations; the one used longest ago makes room.
//! - Nothing in the store is a token: a slot keeps a random id, and the token is an HMAC of it
//!   under the server's secret (`data_dir/secret`), so a copy of the store alone logs nobody in.
//!   HT needs the server to compute an HMAC keyed by the token itself, so a one-way hash of the
//!   token (as for passwords) cannot be checked against.
//! - A slot notes a fingerprint of the credentials it was issued under: once the password
//!   changes (by XEP-0077, `hearth user passwd`, with the server running or not), every token
//!   of the account fails with `credentials-expired`. Deleting the account deletes the table's
//!   rows with it.
//! - Replays: with EXPR the proof is bound to one TLS session; a client that sends the §3.3
//!   `count` must send a higher one each time. TLS 0-RTT is not accepted at all.
//! - `<fast invalidate='true'/>` (§3.5) removes the installation's tokens after the login.

use super::{Cx, Entry, Mechanism, Module, Profile, Sasl2Login, SaslOffer, SaslStart};
use crate::jid;
use crate::storage::shapes::Map;
use crate::stream::sasl::{self, FailureCondition as F, Step};
use crate::xml::{Element, ns};
use base64::Engine;
use base64::engine::general_purpose::{STANDARD as B64, URL_SAFE_NO_PAD as B64URL};
use hmac::{Hmac, Mac};
use redb::TableDefinition;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// (localpart, user-agent id) → the installation's token slots (TOML of [`Slots`]).
pub static USER_CLIENT_TO_TOKENS: Map<&str> = Map(TableDefinition::new("fast_tokens"));

pub const ENTRY: Entry = Entry {
    tables: &[&USER_CLIENT_TO_TOKENS],
    new: |config| {
        let c = &config.modules.fast;
        c.enabled.then(|| {
            Box::new(Fast {
                domain: config.server.domain.clone(),
                ttl: c.token_ttl_secs,
                rotate_after: c.rotate_after_secs,
                max_clients: c.max_clients_per_account,
            }) as Box<dyn Module>
        })
    },
};

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    pub enabled: bool,
    /// How long a token works after it was issued.
    pub token_ttl_secs: u64,
    /// A token this old is replaced by a new one at its next use.
    pub rotate_after_secs: u64,
    /// Client installations with tokens per account.
    pub max_clients_per_account: usize,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            enabled: true,
            token_ttl_secs: 14 * 86_400,
            rotate_after_secs: 86_400,
            max_clients_per_account: 16,
        }
    }
}

/// The mechanisms, most binding first, for each pair (tls-exporter, tls-server-end-point).
fn mechanisms(exporter: bool, endpoint: bool) -> &'static [&'static str] {
    match (exporter, endpoint) {
        (true, true) => &[EXPR, ENDP, NONE],
        (true, false) => &[EXPR, NONE],
        (false, true) => &[ENDP, NONE],
        (false, false) => &[NONE],
    }
}

const EXPR: &str = "HT-SHA-256-EXPR";
const ENDP: &str = "HT-SHA-256-ENDP";
const NONE: &str = "HT-SHA-256-NONE";

/// One token of an installation.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
struct Slot {
    /// Random, base64: the token is derived from it (see [`token`]).
    id: String,
    mechanism: String,
    /// Seconds since the epoch.
    issued: u64,
    expires: u64,
    /// [`fingerprint`] of the credentials when it was issued.
    credentials: String,
    /// The highest XEP-0484 `count` used with it (0: none yet).
    #[serde(default)]
    count: u64,
}

/// XEP-0484 §6's two slots.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
struct Slots {
    current: Option<Slot>,
    new: Option<Slot>,
}

impl Slots {
    fn decode(s: &str) -> Option<Slots> {
        toml::from_str(s).ok()
    }

    fn encode(&self) -> String {
        // A struct of strings and integers always serialises.
        toml::to_string(self).expect("token slots serialise")
    }

    /// When it was last given or used, for eviction: the latest issue time.
    fn last_issued(&self) -> u64 {
        [&self.current, &self.new]
            .into_iter()
            .flatten()
            .map(|s| s.issued)
            .max()
            .unwrap_or(0)
    }
}

/// The token of a slot: only the server's secret turns the stored id into it.
fn token(user: &str, client: &str, slot: &Slot) -> String {
    B64URL.encode(sasl::server_hmac(
        "fast token",
        &[user.as_bytes(), client.as_bytes(), slot.id.as_bytes()],
    ))
}

/// What ties a token to the password it was issued under: a new password has a new salt.
fn fingerprint(c: &crate::storage::accounts::Credentials) -> String {
    let mut h = Sha256::new();
    h.update(c.salt.as_bytes());
    h.update([0]);
    h.update(c.sha256_stored_key.as_bytes());
    B64.encode(&h.finalize()[..12])
}

fn hmac(key: &[u8], parts: &[&[u8]]) -> Vec<u8> {
    // HMAC takes keys of any length.
    let mut m = Hmac::<Sha256>::new_from_slice(key).expect("any key length");
    for p in parts {
        m.update(p);
    }
    m.finalize().into_bytes().to_vec()
}

fn secs(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

#[derive(Clone)]
pub struct Fast {
    domain: String,
    ttl: u64,
    rotate_after: u64,
    max_clients: usize,
}

/// Which slot a token matched.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Which {
    Current,
    New,
}

/// One HT-SHA-256 authentication.
struct Ht {
    mechanism: &'static str,
    cb: Vec<u8>,
    client: Option<String>,
    /// XEP-0484 §3.3's replay counter, if the client sent one.
    count: Option<u64>,
    invalidate: bool,
    /// The module's settings.
    fast: Fast,
    /// After success: the slots as read, and the one that matched.
    matched: Option<(Slots, Which)>,
}

impl Mechanism for Ht {
    fn step(&mut self, cx: &Cx, input: &[u8]) -> Step {
        if self.matched.is_some() {
            return Step::Failure(F::MalformedRequest, None);
        }
        let Some(nul) = input.iter().position(|&b| b == 0) else {
            return Step::Failure(F::MalformedRequest, None);
        };
        let (authcid, proof) = (&input[..nul], &input[nul + 1..]);
        let Ok(authcid) = std::str::from_utf8(authcid) else {
            return Step::Failure(F::MalformedRequest, None);
        };
        // A bare JID of this server or its localpart.
        let name = match authcid.split_once('@') {
            Some((local, domain)) if domain == self.fast.domain => local,
            Some(_) => return Step::Failure(F::NotAuthorized, None),
            None => authcid,
        };
        let Ok(user) = jid::localpart(name) else {
            return Step::Failure(F::NotAuthorized, None);
        };
        let Some(client) = self.client.as_deref() else {
            // Tokens belong to an installation, which the client did not name.
            return Step::Failure(F::NotAuthorized, Some(user));
        };
        let store = cx.store();
        let slots = USER_CLIENT_TO_TOKENS
            .get(store, &user, client)
            .ok()
            .flatten()
            .and_then(|s| Slots::decode(&s));
        let credentials = store.credentials(&user).ok().flatten();
        let (Some(slots), Some(credentials)) = (slots, credentials) else {
            return Step::Failure(F::NotAuthorized, Some(user));
        };
        let now = secs(cx.now());
        let fp = fingerprint(&credentials);
        let candidates = [(Which::New, &slots.new), (Which::Current, &slots.current)];
        for (which, slot) in candidates {
            let Some(slot) = slot else { continue };
            let key = token(&user, client, slot);
            let expected = hmac(key.as_bytes(), &[b"Initiator", &self.cb]);
            if !sasl::constant_time_eq(&expected, proof) {
                continue;
            }
            if slot.mechanism != self.mechanism {
                // §3.4: a token does not work with another mechanism than its own.
                return Step::Failure(F::NotAuthorized, Some(user));
            }
            if slot.expires <= now || slot.credentials != fp {
                return Step::Failure(F::CredentialsExpired, Some(user));
            }
            if self.count.is_some_and(|c| c <= slot.count) {
                log::info!("{user}: a FAST count that was used before; refused as a replay");
                return Step::Failure(F::NotAuthorized, Some(user));
            }
            let data = hmac(key.as_bytes(), &[b"Responder", &self.cb]);
            self.matched = Some((slots.clone(), which));
            return Step::Success { user, data };
        }
        Step::Failure(F::NotAuthorized, Some(user))
    }

    fn succeeded(&mut self, cx: &mut Cx, login: &Sasl2Login, success: &mut Element) {
        let (Some((mut slots, which)), Some(client)) = (self.matched.take(), self.client.clone())
        else {
            return;
        };
        let before = slots.clone();
        let used = match which {
            Which::New => {
                // §3.4: using the new token retires the older one.
                slots.current = slots.new.take();
                slots.current.as_mut()
            }
            Which::Current => slots.current.as_mut(),
        };
        let Some(used) = used else { return };
        if let Some(c) = self.count {
            used.count = c;
        }
        let now = secs(cx.now());
        let due = now.saturating_sub(used.issued) >= self.fast.rotate_after;
        let mechanism = used.mechanism.clone();
        let user = login.user;
        if self.invalidate {
            // §3.5: a client logging out; it gets a token only if it asks in the same breath.
            slots = Slots::default();
        }
        let asked = requested(login);
        let issue = match (asked, self.invalidate) {
            (Some(m), _) => Some(m),
            (None, false) if due => Some(mechanism),
            (None, _) => None,
        };
        match issue {
            Some(m) => self.fast.issue(cx, user, &client, &m, slots, success),
            None if slots == Slots::default() => {
                cx.write(USER_CLIENT_TO_TOKENS.delete(user, &client));
            }
            None if slots != before => {
                cx.write(USER_CLIENT_TO_TOKENS.put(user, &client, slots.encode()));
            }
            None => {}
        }
    }
}

/// The mechanism of a `<request-token/>` in the login, if it asked for one.
fn requested(login: &Sasl2Login) -> Option<String> {
    let m = login
        .request
        .child("request-token", ns::FAST)?
        .attr("mechanism")?;
    mechanisms(login.fast.exporter, login.fast.endpoint)
        .iter()
        .find(|&&x| x == m)
        .map(|m| (*m).to_owned())
}

impl Fast {
    /// Puts a new token for `mechanism` in `slots`' new slot, writes the slots, and adds the
    /// `<token/>` to `success` (which is only sent once the write is durable).
    fn issue(
        &self,
        cx: &mut Cx,
        user: &str,
        client: &str,
        mechanism: &str,
        mut slots: Slots,
        success: &mut Element,
    ) {
        let Ok(Some(credentials)) = cx.store().credentials(user) else {
            return;
        };
        let now = cx.now();
        let expires = now + Duration::from_secs(self.ttl);
        let slot = Slot {
            id: B64.encode(sasl::random_bytes::<16>()),
            mechanism: mechanism.to_owned(),
            issued: secs(now),
            expires: secs(expires),
            credentials: fingerprint(&credentials),
            count: 0,
        };
        let token = token(user, client, &slot);
        // A token that was never used is dropped for the new one (§3.4).
        slots.new = Some(slot);
        self.make_room(cx, user, client);
        cx.write(USER_CLIENT_TO_TOKENS.put(user, client, slots.encode()));
        success.push(
            Element::new("token", ns::FAST)
                .with_attr(
                    "expiry",
                    humantime::format_rfc3339_seconds(expires).to_string(),
                )
                .with_attr("token", token),
        );
    }

    /// Before a token is issued to `client`: the installations of `user` whose tokens all
    /// expired or outlived the password go, and if `client` is new and the account has all
    /// the installations it may have, the one given a token longest ago goes too.
    fn make_room(&self, cx: &mut Cx, user: &str, client: &str) {
        let Ok(rows) = USER_CLIENT_TO_TOKENS.all(cx.store(), user) else {
            return;
        };
        let fp = cx
            .store()
            .credentials(user)
            .ok()
            .flatten()
            .map(|c| fingerprint(&c));
        let now = secs(cx.now());
        let mut live = Vec::new();
        for (key, value) in rows {
            let alive = Slots::decode(&value).filter(|s| {
                [&s.current, &s.new]
                    .into_iter()
                    .flatten()
                    .any(|t| t.expires > now && Some(&t.credentials) == fp.as_ref())
            });
            match alive {
                Some(s) => live.push((key, s.last_issued())),
                None if key != client => cx.write(USER_CLIENT_TO_TOKENS.delete(user, &key)),
                None => {}
            }
        }
        if live.iter().any(|(k, _)| k == client) {
            return;
        }
        live.sort_by_key(|(_, issued)| *issued);
        let excess = (live.len() + 1).saturating_sub(self.max_clients);
        for (key, _) in live.into_iter().take(excess) {
            log::info!("{user}: dropping the FAST tokens of a client to make room for another");
            cx.write(USER_CLIENT_TO_TOKENS.delete(user, &key));
        }
    }
}

impl Module for Fast {
    fn name(&self) -> &'static str {
        "fast"
    }

    fn sasl_mechanisms(&self, offer: &SaslOffer) -> &'static [&'static str] {
        match offer.profile {
            Profile::Fast => mechanisms(offer.exporter, offer.endpoint),
            Profile::Sasl | Profile::Sasl2 => &[],
        }
    }

    fn sasl_start(&self, start: &SaslStart) -> Option<Box<dyn Mechanism>> {
        let b = start.bindings;
        let offered = mechanisms(b.exporter.is_some(), b.endpoint.is_some());
        let mechanism = *offered.iter().find(|&&m| m == start.mechanism)?;
        let cb = match mechanism {
            EXPR => b.exporter.clone()?,
            ENDP => b.endpoint.clone()?,
            _ => Vec::new(),
        };
        let request = start.request?;
        let fast = request.child("fast", ns::FAST);
        Some(Box::new(Ht {
            mechanism,
            cb,
            client: request
                .child("user-agent", ns::SASL2)
                .and_then(|u| u.attr("id"))
                .map(str::to_owned),
            count: fast.and_then(|f| f.attr("count")?.parse().ok()),
            invalidate: fast.is_some_and(|f| matches!(f.attr("invalidate"), Some("true" | "1"))),
            fast: self.clone(),
            matched: None,
        }))
    }

    /// A password login that asks for a token gets one.
    fn sasl2_success(&self, cx: &mut Cx, login: &Sasl2Login, success: &mut Element) {
        if self.sasl_mechanisms(&login.fast).contains(&login.mechanism) {
            // The token mechanism itself saw to its tokens (`Ht::succeeded`).
            return;
        }
        let (Some(mechanism), Some(client)) = (requested(login), login.user_agent) else {
            return;
        };
        let slots = USER_CLIENT_TO_TOKENS
            .get(cx.store(), login.user, client)
            .ok()
            .flatten()
            .and_then(|s| Slots::decode(&s))
            .unwrap_or_default();
        self.issue(cx, login.user, client, &mechanism, slots, success);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;
    use crate::modules::ChannelBindings;
    use crate::modules::testing::{TestRouter, parse};

    const DAY: Duration = Duration::from_secs(86_400);
    const OFFER: SaslOffer = SaslOffer {
        profile: Profile::Fast,
        exporter: false,
        endpoint: false,
    };

    fn router(max_clients: usize) -> TestRouter {
        let mut config = Config::default();
        config.modules.fast.max_clients_per_account = max_clients;
        TestRouter::with_config(config, &["alice"])
    }

    fn request(mechanism: &str, ua: &str, extra: &str) -> Element {
        parse(&format!(
            "<authenticate xmlns='urn:xmpp:sasl:2' mechanism='{mechanism}'>\
             <user-agent id='{ua}'/>{extra}</authenticate>"
        ))
    }

    fn token_in(success: &Element) -> Option<String> {
        Some(success.child("token", ns::FAST)?.attr("token")?.to_owned())
    }

    /// A password login of `ua` asking for a NONE token; returns it.
    fn password_login(t: &TestRouter, ua: &str) -> String {
        let req = request(
            "SCRAM-SHA-256",
            ua,
            "<request-token xmlns='urn:xmpp:fast:0' mechanism='HT-SHA-256-NONE'/>",
        );
        let mut success = Element::new("success", ns::SASL2);
        t.step(|cx| {
            let login = Sasl2Login {
                user: "alice",
                mechanism: "SCRAM-SHA-256",
                user_agent: Some(ua),
                request: &req,
                fast: OFFER,
            };
            for m in cx.modules() {
                m.sasl2_success(cx, &login, &mut success);
            }
        });
        token_in(&success).expect("a token")
    }

    /// A login of `ua` with `token`: what its success carries, or the failure.
    fn token_login(t: &TestRouter, ua: &str, token: &str) -> Result<Element, F> {
        let req = request(NONE, ua, "<fast xmlns='urn:xmpp:fast:0'/>");
        let bindings = ChannelBindings::default();
        let start = SaslStart {
            mechanism: NONE,
            profile: Profile::Fast,
            bindings: &bindings,
            request: Some(&req),
        };
        let mut m = t.module::<Fast>().sasl_start(&start).expect("offered");
        let mut input = b"alice\0".to_vec();
        input.extend(hmac(token.as_bytes(), &[b"Initiator"]));
        let step = m.step(&Cx::new(&t.router), &input);
        match step {
            Step::Success { data, .. } => {
                assert_eq!(data, hmac(token.as_bytes(), &[b"Responder"]));
            }
            Step::Failure(f, _) => return Err(f),
            Step::Challenge(_) => panic!("HT has no challenge"),
        }
        let mut success = Element::new("success", ns::SASL2);
        t.step(|cx| {
            let login = Sasl2Login {
                user: "alice",
                mechanism: NONE,
                user_agent: Some(ua),
                request: &req,
                fast: OFFER,
            };
            m.succeeded(cx, &login, &mut success);
        });
        Ok(success)
    }

    #[test]
    fn tokens_rotate_once_old_enough_and_expire() {
        let t = router(16);
        let first = password_login(&t, "phone");
        let s = token_login(&t, "phone", &first).unwrap();
        assert_eq!(token_in(&s), None, "a young token is not rotated");
        // A day later its next use brings a new one, which retires it once used.
        t.skip(DAY);
        let s = token_login(&t, "phone", &first).unwrap();
        let second = token_in(&s).expect("rotated");
        token_login(&t, "phone", &second).unwrap();
        assert_eq!(token_login(&t, "phone", &first), Err(F::NotAuthorized));
        // A phone that lost the new token (its connection dropped) logs in with the old one
        // and is given another; the lost one is no good any more.
        t.skip(DAY);
        let third = token_in(&token_login(&t, "phone", &second).unwrap()).expect("rotated");
        let fourth = token_in(&token_login(&t, "phone", &second).unwrap()).expect("again");
        assert_eq!(token_login(&t, "phone", &third), Err(F::NotAuthorized));
        token_login(&t, "phone", &fourth).unwrap();
        let second = fourth;
        // Fourteen days after it was issued a token is dead.
        t.skip(14 * DAY - Duration::from_secs(1));
        token_in(&token_login(&t, "phone", &second).unwrap()).expect("rotated again");
        t.skip(Duration::from_secs(1));
        assert_eq!(
            token_login(&t, "phone", &second),
            Err(F::CredentialsExpired)
        );
    }

    #[test]
    fn an_account_keeps_tokens_for_a_bounded_number_of_installations() {
        let t = router(2);
        let a = password_login(&t, "a");
        t.skip(Duration::from_secs(1));
        let b = password_login(&t, "b");
        t.skip(Duration::from_secs(1));
        // A third installation pushes out the one given a token longest ago.
        let c = password_login(&t, "c");
        assert_eq!(token_login(&t, "a", &a), Err(F::NotAuthorized));
        token_login(&t, "b", &b).unwrap();
        token_login(&t, "c", &c).unwrap();
        assert_eq!(
            USER_CLIENT_TO_TOKENS
                .all(&t.router.store, "alice")
                .unwrap()
                .len(),
            2
        );
        // A new token for a known installation takes no room.
        password_login(&t, "b");
        token_login(&t, "c", &c).unwrap();
    }

    #[test]
    fn slots_round_trip_through_the_store_format() {
        let slot = Slot {
            id: "aWQ=".into(),
            mechanism: EXPR.into(),
            issued: 1,
            expires: 2,
            credentials: "fp".into(),
            count: 3,
        };
        let slots = Slots {
            current: Some(slot.clone()),
            new: None,
        };
        assert_eq!(Slots::decode(&slots.encode()), Some(slots));
        assert_eq!(Slots::decode("not toml ["), None);
    }
}
