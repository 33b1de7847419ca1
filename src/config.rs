//! The configuration file (TOML). Every option has a default in code; unknown keys are errors,
//! so a typo is reported instead of silently ignored. The bundled `config.toml` lists them all.

use crate::error::Error;
use serde::Deserialize;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    pub server: ServerConfig,
    pub listen: ListenConfig,
    pub tls: TlsConfig,
    pub limits: LimitsConfig,
    pub auth: AuthConfig,
    pub keepalive: KeepaliveConfig,
    pub stream_management: StreamManagementConfig,
    pub csi: CsiConfig,
    pub federation: FederationConfig,
    pub modules: ModulesConfig,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ServerConfig {
    /// The XMPP domain: the part after `@` in every account's address.
    pub domain: String,
    /// Where the store, the generated certificate and the admin socket live; relative paths
    /// are taken from the config file's directory.
    pub data_dir: PathBuf,
    /// error, warn, info, debug or trace.
    pub log_level: String,
    /// MiB of the store's page cache; more makes large archives faster to query.
    pub store_cache_mib: usize,
}

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            domain: "localhost".into(),
            data_dir: "data".into(),
            log_level: "info".into(),
            store_cache_mib: 32,
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ListenConfig {
    /// Client connections with STARTTLS (RFC 6120), usually port 5222.
    pub c2s: Vec<String>,
    /// Client connections with TLS from the first byte (XEP-0368), usually port 5223.
    pub c2s_tls: Vec<String>,
}

impl Default for ListenConfig {
    fn default() -> Self {
        ListenConfig {
            c2s: vec!["0.0.0.0:5222".into(), "[::]:5222".into()],
            c2s_tls: vec!["0.0.0.0:5223".into(), "[::]:5223".into()],
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TlsConfig {
    /// PEM certificate chain; without it a self-signed certificate is made in the data dir.
    pub cert: Option<PathBuf>,
    /// PEM private key matching `cert`.
    pub key: Option<PathBuf>,
    /// TLS 1.3 session tickets sent after each handshake, with which a client that comes back
    /// resumes its TLS session (no certificate, no signature); 0 turns resumption off.
    pub session_tickets: usize,
}

impl Default for TlsConfig {
    fn default() -> Self {
        TlsConfig {
            cert: None,
            key: None,
            session_tickets: 1,
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LimitsConfig {
    pub max_stanza_bytes: usize,
    pub max_depth: usize,
    pub max_attributes: usize,
    /// Stanzas waiting for one connection; a client that falls this far behind is disconnected.
    pub queue_len: usize,
    /// The same in bytes.
    pub queue_bytes: usize,
    pub max_connections: usize,
    /// Connections from one IPv4 address or one IPv6 /64.
    pub max_connections_per_ip: usize,
    /// Seconds a new connection has, from its first byte, to authenticate and bind.
    pub login_timeout_secs: u64,
    /// A connection whose client does not take what is written to it within this many seconds
    /// is closed.
    pub write_timeout_secs: u64,
    /// Resources one account may have bound at once.
    pub max_resources: usize,
    /// Addresses one session may have sent directed presence to (RFC 6121 §4.6), such as the
    /// chat rooms it is in.
    pub max_directed_presence: usize,
    /// What a logged-in client may send, per second, after a burst of `burst_secs` worth: the
    /// server reads no more from it until it is back within the rate.
    pub bytes_per_sec: u32,
    pub stanzas_per_sec: u32,
    /// The same before the client has logged in.
    pub login_bytes_per_sec: u32,
    pub login_stanzas_per_sec: u32,
    pub burst_secs: u32,
}

impl Default for LimitsConfig {
    fn default() -> Self {
        LimitsConfig {
            max_stanza_bytes: 262_144,
            max_depth: 32,
            max_attributes: 64,
            queue_len: 1024,
            queue_bytes: 8 << 20,
            max_connections: 10_000,
            max_connections_per_ip: 1_000,
            login_timeout_secs: 60,
            write_timeout_secs: 60,
            max_resources: 32,
            max_directed_presence: 1000,
            bytes_per_sec: 256 << 10,
            stanzas_per_sec: 200,
            login_bytes_per_sec: 16 << 10,
            login_stanzas_per_sec: 20,
            burst_secs: 5,
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AuthConfig {
    /// Failed logins per stream before the stream is closed.
    pub attempts_per_stream: u32,
    /// Failed logins for one account from one source (an IPv4 address or an IPv6 /64) within
    /// `throttle_window_secs`, after which that source's attempts at that account are refused
    /// until the window passes. 0 turns this off.
    pub max_failures: u32,
    /// Failed logins from one source, whatever the accounts, within the window, after which
    /// that source's attempts are refused until the window passes. 0 turns this off.
    pub max_failures_per_source: u32,
    pub throttle_window_secs: u64,
    /// PBKDF2 iterations for newly set passwords (RFC 7677 asks for at least 4096).
    pub scram_iterations: u32,
    /// XEP-0388: longest `<user-agent id=''/>` a client may name its installation with (a
    /// UUID is 36 bytes).
    pub max_user_agent_id_bytes: usize,
    /// XEP-0386: longest `<tag/>`, which becomes the start of the resource.
    pub max_bind_tag_bytes: usize,
}

impl Default for AuthConfig {
    fn default() -> Self {
        AuthConfig {
            attempts_per_stream: 3,
            max_failures: 10,
            max_failures_per_source: 30,
            throttle_window_secs: 300,
            scram_iterations: 4096,
            max_user_agent_id_bytes: 64,
            max_bind_tag_bytes: 64,
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct KeepaliveConfig {
    /// A client silent this long is pinged (XEP-0199).
    pub ping_after_secs: u64,
    /// A pinged client that then stays silent this long is disconnected.
    pub ping_timeout_secs: u64,
}

impl Default for KeepaliveConfig {
    fn default() -> Self {
        KeepaliveConfig {
            ping_after_secs: 300,
            ping_timeout_secs: 120,
        }
    }
}

/// XEP-0198 stream management.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct StreamManagementConfig {
    /// How long a session whose connection dropped waits to be resumed; its messages are
    /// kept for it meanwhile, then go to offline storage.
    pub resume_timeout_secs: u64,
    /// The server asks for an acknowledgement after this many stanzas...
    pub ack_every: usize,
    /// ...or this long after an unacknowledged stanza, whichever comes first.
    pub ack_delay_secs: u64,
    /// Stanzas sent to a client before it acknowledges them (with `limits.queue_bytes` of
    /// them); what comes meanwhile waits within its queue's limits.
    pub max_unacked: usize,
}

impl Default for StreamManagementConfig {
    fn default() -> Self {
        StreamManagementConfig {
            resume_timeout_secs: 300,
            ack_every: 5,
            ack_delay_secs: 5,
            max_unacked: 1000,
        }
    }
}

/// XEP-0352 client state indication.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct CsiConfig {
    /// Stanzas held for an inactive client before they are all sent anyway.
    pub max_held: usize,
}

impl Default for CsiConfig {
    fn default() -> Self {
        CsiConfig { max_held: 100 }
    }
}

/// Server-to-server connections (RFC 6120): with other XMPP servers, and with the push
/// services of phone apps (XEP-0357).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct FederationConfig {
    /// Talk to every other server. Off, the server talks only to `push_services`.
    pub enabled: bool,
    /// Domains always talked to, even with federation off: the push services of the apps the
    /// family uses (for Conversations, p2.siacs.eu).
    pub push_services: Vec<String>,
    /// Connections from other servers with STARTTLS, usually port 5269...
    pub listen: Vec<String>,
    /// ...and with TLS from the first byte (XEP-0368), usually port 5270.
    pub listen_tls: Vec<String>,
    /// Only servers whose certificate a known authority signed for their domain: no dialback
    /// (XEP-0220) for the others.
    pub require_valid_certificates: bool,
    /// PEM files of certificate authorities trusted besides the system's.
    pub ca_files: Vec<PathBuf>,
    /// Fixed addresses of servers, instead of DNS: domain → "IP:port", with STARTTLS...
    pub hosts: BTreeMap<String, String>,
    /// ...and with TLS from the first byte.
    pub hosts_tls: BTreeMap<String, String>,
    /// Connections from other servers, in total and from one IPv4 address or IPv6 /64.
    pub max_connections: usize,
    pub max_connections_per_ip: usize,
    /// Other servers connected to at once.
    pub max_outgoing: usize,
    /// Bytes of stanzas waiting for one server while the connection to it is made, or until
    /// it acknowledges them (XEP-0198).
    pub queue_bytes: usize,
    /// Seconds to connect to a server, secure the connection and be accepted by it.
    pub connect_timeout_secs: u64,
    /// A connection that carried nothing for this long is closed.
    pub idle_timeout_secs: u64,
    /// Domains one incoming connection may ask to be verified at once (dialback)...
    pub max_pending_dialback: usize,
    /// ...and in all.
    pub max_domains_per_connection: usize,
    /// What one incoming connection may send per second, after a burst of
    /// `limits.burst_secs` worth.
    pub bytes_per_sec: u32,
    pub stanzas_per_sec: u32,
}

impl Default for FederationConfig {
    fn default() -> Self {
        FederationConfig {
            enabled: false,
            push_services: Vec::new(),
            listen: vec!["0.0.0.0:5269".into(), "[::]:5269".into()],
            listen_tls: Vec::new(),
            require_valid_certificates: false,
            ca_files: Vec::new(),
            hosts: BTreeMap::new(),
            hosts_tls: BTreeMap::new(),
            max_connections: 1000,
            max_connections_per_ip: 20,
            max_outgoing: 1000,
            queue_bytes: 1 << 20,
            connect_timeout_secs: 30,
            idle_timeout_secs: 600,
            max_pending_dialback: 8,
            max_domains_per_connection: 100,
            bytes_per_sec: 1 << 20,
            stanzas_per_sec: 1000,
        }
    }
}

impl FederationConfig {
    /// Whether stanzas may go to and come from `domain`.
    pub fn allows(&self, domain: &str) -> bool {
        self.enabled || self.push_services.iter().any(|d| d == domain)
    }

    /// Whether the server takes connections from other servers at all: the push services
    /// answer over connections of their own.
    pub fn listens(&self) -> bool {
        self.enabled || !self.push_services.is_empty()
    }

    fn validate(&self) -> Result<(), String> {
        for a in self.listen.iter().chain(&self.listen_tls) {
            a.parse::<std::net::SocketAddr>().map_err(|_| {
                format!(
                    "federation listen address {a:?} is not an IP:port pair such as \"0.0.0.0:5269\""
                )
            })?;
        }
        let domain = |d: &str, what: &str| {
            crate::jid::Jid::parse(d)
                .ok()
                .filter(|j| j.local().is_none() && j.is_bare() && j.to_string() == d)
                .map(|_| ())
                .ok_or_else(|| {
                    format!("{what} {d:?} is not a domain name in normalised form; write it as clients would")
                })
        };
        for d in &self.push_services {
            domain(d, "federation.push_services entry")?;
        }
        for (d, a) in self.hosts.iter().chain(&self.hosts_tls) {
            domain(d, "federation.hosts entry")?;
            a.parse::<std::net::SocketAddr>().map_err(|_| {
                format!("federation.hosts address {a:?} of {d} is not an IP:port pair such as \"192.0.2.1:5269\"")
            })?;
        }
        if self.listens() && self.listen.is_empty() && self.listen_tls.is_empty() {
            return Err(
                "federation.listen and federation.listen_tls are both empty; other servers \
                 (and push services) could not answer"
                    .into(),
            );
        }
        Ok(())
    }
}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
pub struct ModulesConfig {
    pub version: crate::modules::version::Config,
    pub roster: crate::modules::roster::Config,
    pub offline: crate::modules::offline::Config,
    pub mam: crate::modules::mam::Config,
    pub blocking: crate::modules::blocking::Config,
    pub caps: crate::modules::caps::Config,
    pub pep: crate::modules::pep::Config,
    pub vcard: crate::modules::vcard::Config,
    pub private: crate::modules::private::Config,
    pub register: crate::modules::register::Config,
    pub external_services: crate::modules::extdisco::Config,
    pub muc: crate::modules::muc::Config,
    pub push: crate::modules::push::Config,
    pub fast: crate::modules::fast::Config,
    pub http: crate::modules::http::Config,
    pub upload: crate::modules::http::upload::Config,
}

impl Config {
    pub fn load(path: &Path) -> Result<Config, Error> {
        let text = std::fs::read_to_string(path).map_err(|e| {
            Error::Config(format!(
                "cannot read the config file {}: {e}; pass --config with the right path",
                path.display()
            ))
        })?;
        let mut cfg =
            Config::parse(&text).map_err(|e| Error::Config(format!("{}: {e}", path.display())))?;
        if cfg.server.data_dir.is_relative() {
            let base = path.parent().unwrap_or(Path::new("."));
            cfg.server.data_dir = base.join(&cfg.server.data_dir);
        }
        let tls = [&mut cfg.tls.cert, &mut cfg.tls.key].into_iter().flatten();
        for p in tls.chain(cfg.federation.ca_files.iter_mut()) {
            if p.is_relative() {
                *p = path.parent().unwrap_or(Path::new(".")).join(&*p);
            }
        }
        Ok(cfg)
    }

    pub fn parse(text: &str) -> Result<Config, String> {
        let cfg: Config = toml::from_str(text).map_err(|e| {
            // toml's own rendering spans several lines; an operator gets one sentence.
            let line = e
                .span()
                .map(|s| text[..s.start.min(text.len())].matches('\n').count() + 1);
            let at = line.map(|l| format!(" at line {l}")).unwrap_or_default();
            format!(
                "the config is not valid{at}: {}; fix it and start again",
                e.message().trim()
            )
        })?;
        cfg.validate()?;
        Ok(cfg)
    }

    fn validate(&self) -> Result<(), String> {
        let domain = crate::jid::Jid::parse(&self.server.domain)
            .ok()
            .filter(|j| j.local().is_none() && j.is_bare())
            .ok_or_else(|| {
                format!(
                    "server.domain {:?} is not a domain name; set it to the name clients connect to",
                    self.server.domain
                )
            })?;
        // The normalised form of the name, as every JID at it will be written.
        if domain.to_string() != self.server.domain {
            return Err(format!(
                "server.domain must be written in normalised form: {:?}",
                domain.domain()
            ));
        }
        for a in self.listen.c2s.iter().chain(&self.listen.c2s_tls) {
            a.parse::<std::net::SocketAddr>().map_err(|_| {
                format!("listen address {a:?} is not an IP:port pair such as \"0.0.0.0:5222\"")
            })?;
        }
        if self.listen.c2s.is_empty() && self.listen.c2s_tls.is_empty() {
            return Err(
                "listen.c2s and listen.c2s_tls are both empty; nobody could connect".into(),
            );
        }
        if self.tls.cert.is_some() != self.tls.key.is_some() {
            return Err("tls.cert and tls.key must be set together".into());
        }
        self.check_ranges()?;
        self.check_bounds()?;
        if self.modules.offline.max_per_user >= self.limits.queue_len {
            return Err(format!(
                "modules.offline.max_per_user ({}) must be smaller than limits.queue_len ({}): \
                 a client gets all its offline messages at once, through that queue",
                self.modules.offline.max_per_user, self.limits.queue_len
            ));
        }
        let mam = &self.modules.mam;
        if mam.max_page >= self.limits.queue_len {
            return Err(format!(
                "modules.mam.max_page ({}) must be smaller than limits.queue_len ({}): a page \
                 of archive results goes to the client at once, through that queue",
                mam.max_page, self.limits.queue_len
            ));
        }
        if mam.default_page > mam.max_page {
            return Err(format!(
                "modules.mam.default_page ({}) must be no larger than modules.mam.max_page ({})",
                mam.default_page, mam.max_page
            ));
        }
        self.modules.external_services.validate()?;
        let muc = &self.modules.muc;
        if muc.enabled {
            let d = muc.domain_for(&self.server.domain);
            let ok = crate::jid::Jid::parse(&d)
                .is_ok_and(|j| j.local().is_none() && j.is_bare() && j.to_string() == d);
            if !ok {
                return Err(format!(
                    "modules.muc.domain {d:?} is not a domain name in normalised form; set it to \
                     the name the room service is reached at, such as \"muc.example.org\""
                ));
            }
            if d == self.server.domain {
                return Err(
                    "modules.muc.domain must differ from server.domain; use a subdomain such \
                     as \"muc.example.org\""
                        .into(),
                );
            }
            for a in &muc.admins {
                let bare =
                    crate::jid::Jid::parse(a).is_ok_and(|j| j.local().is_some() && j.is_bare());
                if !bare {
                    return Err(format!(
                        "modules.muc.admins has {a:?}, which is not an account's address such \
                         as \"alice@example.org\""
                    ));
                }
            }
        }
        self.federation.validate()?;
        self.modules.http.validate()?;
        self.modules.upload.validate(&self.server.domain)?;
        if log_level(&self.server.log_level).is_none() {
            return Err(format!(
                "server.log_level {:?} is not one of error, warn, info, debug, trace",
                self.server.log_level
            ));
        }
        Ok(())
    }

    /// Every number in the config within bounds that keep the server alive on a small device:
    /// durations that `Instant` arithmetic cannot overflow, sizes a Pi can hold, counts that
    /// mean something.
    fn check_ranges(&self) -> Result<(), String> {
        for (option, value, least, most, unit) in self.ranges() {
            if !(least..=most).contains(&value) {
                return Err(format!(
                    "{option} = {value} is out of range; set it between {least} and {most} \
                     ({unit})"
                ));
            }
        }
        Ok(())
    }

    /// What a client can make the server hold, where one option bounds another.
    fn check_bounds(&self) -> Result<(), String> {
        let l = &self.limits;
        if l.queue_bytes < l.max_stanza_bytes {
            return Err(format!(
                "limits.queue_bytes ({}) must be at least limits.max_stanza_bytes ({})",
                l.queue_bytes, l.max_stanza_bytes
            ));
        }
        if self.federation.queue_bytes < l.max_stanza_bytes {
            return Err(format!(
                "federation.queue_bytes ({}) must be at least limits.max_stanza_bytes ({})",
                self.federation.queue_bytes, l.max_stanza_bytes
            ));
        }
        let fast = &self.modules.fast;
        if fast.rotate_after_secs >= fast.token_ttl_secs {
            return Err(format!(
                "modules.fast.rotate_after_secs ({}) must be smaller than \
                 modules.fast.token_ttl_secs ({}), or tokens would expire before they rotate",
                fast.rotate_after_secs, fast.token_ttl_secs
            ));
        }
        let offline = &self.modules.offline;
        if offline.max_bytes_per_user >= l.queue_bytes {
            return Err(format!(
                "modules.offline.max_bytes_per_user ({}) must be smaller than limits.queue_bytes \
                 ({}): a client gets all its offline messages at once, through that queue",
                offline.max_bytes_per_user, l.queue_bytes
            ));
        }
        if offline.max_bytes_per_user < l.max_stanza_bytes {
            return Err(format!(
                "modules.offline.max_bytes_per_user ({}) must be at least \
                 limits.max_stanza_bytes ({}), or the largest message could never be kept",
                offline.max_bytes_per_user, l.max_stanza_bytes
            ));
        }
        Ok(())
    }

    /// Each numeric option with its bounds. An option added to the config belongs here (a
    /// test checks that every number in the bundled config.toml is listed).
    #[rustfmt::skip]
    fn ranges(&self) -> Vec<Range> {
        const HOUR: u64 = 3600;
        const DAY: u64 = 24 * HOUR;
        let (s, l, a) = (&self.server, &self.limits, &self.auth);
        let (k, sm, m) = (&self.keepalive, &self.stream_management, &self.modules);
        let f = &self.federation;
        vec![
            ("server.store_cache_mib", n(s.store_cache_mib), 1, 1024, "MiB of memory"),
            ("tls.session_tickets", n(self.tls.session_tickets), 0, 8,
                "tickets per handshake; 0 turns TLS session resumption off"),
            ("limits.max_stanza_bytes", n(l.max_stanza_bytes), 10_000, 16 << 20,
                "bytes; RFC 6120 §13.12 asks for at least 10000"),
            ("limits.max_depth", n(l.max_depth), 4, 256, "levels of nesting"),
            ("limits.max_attributes", n(l.max_attributes), 16, 1024,
                "attributes; a stream header alone has up to 7"),
            ("limits.queue_len", n(l.queue_len), 1, 100_000, "stanzas"),
            ("limits.max_connections", n(l.max_connections), 1, 1_000_000, "connections"),
            ("limits.max_connections_per_ip", n(l.max_connections_per_ip), 1, 1_000_000,
                "connections"),
            ("limits.login_timeout_secs", l.login_timeout_secs, 1, HOUR, "seconds"),
            ("limits.queue_bytes", n(l.queue_bytes), 10_000, 1 << 30, "bytes"),
            ("limits.write_timeout_secs", l.write_timeout_secs, 1, HOUR, "seconds"),
            ("limits.max_resources", n(l.max_resources), 1, 10_000, "resources per account"),
            ("limits.max_directed_presence", n(l.max_directed_presence), 1, 1_000_000,
                "addresses per session"),
            ("limits.bytes_per_sec", n(l.bytes_per_sec), 1024, 1 << 30, "bytes a second"),
            ("limits.stanzas_per_sec", n(l.stanzas_per_sec), 1, 1 << 30, "stanzas a second"),
            ("limits.login_bytes_per_sec", n(l.login_bytes_per_sec), 1024, 1 << 30,
                "bytes a second"),
            ("limits.login_stanzas_per_sec", n(l.login_stanzas_per_sec), 1, 1 << 30,
                "stanzas a second"),
            ("limits.burst_secs", n(l.burst_secs), 1, HOUR, "seconds of the rate"),
            ("auth.attempts_per_stream", n(a.attempts_per_stream), 1, 10_000, "attempts"),
            ("auth.max_failures", n(a.max_failures), 0, 1_000_000, "failures; 0 turns it off"),
            ("auth.max_failures_per_source", n(a.max_failures_per_source), 0, 1_000_000, "failures; 0 turns it off"),
            ("auth.throttle_window_secs", a.throttle_window_secs, 1, 7 * DAY, "seconds"),
            ("auth.scram_iterations", n(a.scram_iterations), 4096, 100_000,
                "RFC 7677 asks for at least 4096; checking a PLAIN login at more stalls every \
                 connection"),
            ("auth.max_user_agent_id_bytes", n(a.max_user_agent_id_bytes), 36, 1024, "bytes"),
            ("auth.max_bind_tag_bytes", n(a.max_bind_tag_bytes), 1, 512,
                "bytes; the resource has room for 1023"),
            ("keepalive.ping_after_secs", k.ping_after_secs, 1, DAY, "seconds"),
            ("keepalive.ping_timeout_secs", k.ping_timeout_secs, 1, DAY, "seconds"),
            ("stream_management.resume_timeout_secs", sm.resume_timeout_secs, 1, DAY, "seconds"),
            ("stream_management.ack_every", n(sm.ack_every), 1, 1_000_000, "stanzas"),
            ("stream_management.ack_delay_secs", sm.ack_delay_secs, 1, HOUR, "seconds"),
            ("stream_management.max_unacked", n(sm.max_unacked), 1, 1_000_000, "stanzas"),
            ("csi.max_held", n(self.csi.max_held), 1, 100_000, "stanzas"),
            ("federation.max_connections", n(f.max_connections), 1, 1_000_000, "connections"),
            ("federation.max_connections_per_ip", n(f.max_connections_per_ip), 1, 1_000_000,
                "connections"),
            ("federation.max_outgoing", n(f.max_outgoing), 1, 100_000, "servers"),
            ("federation.queue_bytes", n(f.queue_bytes), 10_000, 1 << 30, "bytes"),
            ("federation.connect_timeout_secs", f.connect_timeout_secs, 1, HOUR, "seconds"),
            ("federation.idle_timeout_secs", f.idle_timeout_secs, 1, DAY, "seconds"),
            ("federation.max_pending_dialback", n(f.max_pending_dialback), 1, 1000, "domains"),
            ("federation.max_domains_per_connection", n(f.max_domains_per_connection), 1,
                100_000, "domains"),
            ("federation.bytes_per_sec", n(f.bytes_per_sec), 1024, 1 << 30, "bytes a second"),
            ("federation.stanzas_per_sec", n(f.stanzas_per_sec), 1, 1 << 30, "stanzas a second"),
            ("modules.roster.max_items", n(m.roster.max_items), 1, 100_000, "items"),
            ("modules.offline.max_per_user", n(m.offline.max_per_user), 0, 100_000, "messages"),
            ("modules.offline.max_bytes_per_user", n(m.offline.max_bytes_per_user), 10_000,
                1 << 30, "bytes"),
            ("modules.mam.retention_days", n(m.mam.retention_days), 0, 36_500,
                "days; 0 keeps messages forever"),
            ("modules.mam.default_page", n(m.mam.default_page), 1, 10_000, "results"),
            ("modules.mam.max_page", n(m.mam.max_page), 1, 10_000, "results"),
            ("modules.mam.max_bytes_per_user", m.mam.max_bytes_per_user, 10_000, 1 << 40,
                "bytes"),
            ("modules.blocking.max_items", n(m.blocking.max_items), 1, 10_000, "addresses"),
            ("modules.caps.max_cached", n(m.caps.max_cached), 0, 100_000,
                "entries; 0 caches nothing"),
            ("modules.caps.query_timeout_secs", m.caps.query_timeout_secs, 1, HOUR, "seconds"),
            ("modules.caps.max_info_bytes", n(m.caps.max_info_bytes), 1024, 1 << 20, "bytes"),
            ("modules.pep.max_item_bytes", n(m.pep.max_item_bytes), 1024, 16 << 20, "bytes"),
            ("modules.pep.max_items", n(m.pep.max_items), 1, 10_000, "items"),
            ("modules.pep.max_nodes", n(m.pep.max_nodes), 1, 10_000, "nodes"),
            ("modules.pep.max_account_bytes", n(m.pep.max_account_bytes), 1024, 1 << 30,
                "bytes"),
            ("modules.pep.cache_bytes", n(m.pep.cache_bytes), 0, 1 << 30, "bytes; 0 caches nothing"),
            ("modules.vcard.max_bytes", n(m.vcard.max_bytes), 1024, 16 << 20, "bytes"),
            ("modules.private.max_item_bytes", n(m.private.max_item_bytes), 1024, 16 << 20,
                "bytes"),
            ("modules.private.max_items", n(m.private.max_items), 1, 10_000, "elements"),
            ("modules.external_services.port", m.external_services.port, 1, 65_535, "port"),
            ("modules.external_services.credentials_ttl_secs",
                m.external_services.credentials_ttl_secs, 60, 7 * DAY, "seconds"),
            ("modules.push.max_per_account", n(m.push.max_per_account), 1, 1000,
                "registrations"),
            ("modules.push.max_form_bytes", n(m.push.max_form_bytes), 256, 1 << 20, "bytes"),
            ("modules.push.min_interval_secs", m.push.min_interval_secs, 0, DAY, "seconds"),
            ("modules.push.resume_timeout_secs", m.push.resume_timeout_secs, 1, 30 * DAY,
                "seconds"),
            ("modules.push.timeout_secs", m.push.timeout_secs, 1, HOUR, "seconds"),
            ("modules.register.password_interval_secs", m.register.password_interval_secs, 1, DAY,
                "seconds; each change costs two key derivations"),
            ("modules.fast.token_ttl_secs", m.fast.token_ttl_secs, HOUR, 365 * DAY, "seconds"),
            ("modules.fast.rotate_after_secs", m.fast.rotate_after_secs, 60, 365 * DAY,
                "seconds"),
            ("modules.fast.max_clients_per_account", n(m.fast.max_clients_per_account), 1, 1000,
                "client installations"),
            ("modules.muc.max_rooms", n(m.muc.max_rooms), 1, 100_000, "rooms"),
            ("modules.muc.max_owned_per_user", n(m.muc.max_owned_per_user), 1, 10_000, "rooms"),
            ("modules.muc.max_joined_per_user", n(m.muc.max_joined_per_user), 1, 10_000, "rooms"),
            ("modules.muc.max_occupants", n(m.muc.max_occupants), 2, 10_000, "occupants"),
            ("modules.muc.max_affiliations", n(m.muc.max_affiliations), 1, 100_000, "addresses"),
            ("modules.muc.max_history", n(m.muc.max_history), 0, 1000, "messages"),
            ("modules.muc.max_history_bytes", n(m.muc.max_history_bytes), 0, 16 << 20, "bytes"),
            ("modules.muc.max_archive_bytes_per_room", m.muc.max_archive_bytes_per_room, 10_000,
                1 << 40, "bytes"),
            ("modules.muc.max_nick_bytes", n(m.muc.max_nick_bytes), 1, 1023,
                "bytes; a nickname is a JID resourcepart"),
            ("modules.muc.max_subject_bytes", n(m.muc.max_subject_bytes), 0, 65_536, "bytes"),
            ("modules.muc.max_password_bytes", n(m.muc.max_password_bytes), 1, 1024, "bytes"),
            ("modules.muc.max_name_bytes", n(m.muc.max_name_bytes), 1, 65_536, "bytes"),
            ("modules.muc.max_presence_bytes", n(m.muc.max_presence_bytes), 512, 1 << 20,
                "bytes"),
            ("modules.muc.messages_per_minute", n(m.muc.messages_per_minute), 1, 100_000,
                "messages"),
            ("modules.http.max_connections", n(m.http.max_connections), 1, 1_000_000,
                "connections"),
            ("modules.http.max_connections_per_ip", n(m.http.max_connections_per_ip), 1,
                1_000_000, "connections"),
            ("modules.http.max_header_bytes", n(m.http.max_header_bytes), 8192, 1 << 20,
                "bytes; the HTTP implementation needs at least 8192"),
            ("modules.http.header_timeout_secs", m.http.header_timeout_secs, 1, HOUR, "seconds"),
            ("modules.http.idle_timeout_secs", m.http.idle_timeout_secs, 1, DAY, "seconds"),
            ("modules.upload.max_file_bytes", m.upload.max_file_bytes, 1, 1 << 40, "bytes"),
            ("modules.upload.quota_bytes", m.upload.quota_bytes, 1, 1 << 44, "bytes"),
            ("modules.upload.max_slots", n(m.upload.max_slots), 1, 10_000, "slots"),
            ("modules.upload.slot_timeout_secs", m.upload.slot_timeout_secs, 1, DAY, "seconds"),
            ("modules.upload.expire_days", m.upload.expire_days, 0, 36_500,
                "days; 0 keeps files forever"),
        ]
    }

    pub fn store_path(&self) -> PathBuf {
        self.server.data_dir.join("hearth.redb")
    }

    pub fn store_cache_bytes(&self) -> usize {
        self.server.store_cache_mib.saturating_mul(1 << 20)
    }

    /// Creates the data directory, or tightens the one there: it holds the SCRAM keys and the
    /// TLS key, so it is 0700 and every file in it 0600, whatever the umask. Looser modes (from
    /// a copy, a restore, an older hearth) are tightened with one warning line rather than
    /// refused: a family must not be locked out of its server by a file mode.
    pub fn private_data_dir(&self) -> Result<(), Error> {
        use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
        let dir = &self.server.data_dir;
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(PRIVATE_DIR)
            .create(dir)
            .map_err(|e| Error::io("create the data directory", dir, &e))?;
        let mut paths = vec![dir.clone()];
        let entries = std::fs::read_dir(dir).map_err(|e| Error::io("read", dir, &e))?;
        // Files only, and not through symbolic links: what a link points to is not ours.
        paths.extend(entries.flatten().filter_map(|e| {
            let file = e.file_type().ok()?.is_file();
            file.then(|| e.path())
        }));
        let mut changed = Vec::new();
        for path in paths {
            let Ok(mode) = std::fs::metadata(&path).map(|m| m.permissions().mode()) else {
                continue;
            };
            if mode & 0o077 == 0 {
                continue;
            }
            let tight = mode & 0o700;
            match std::fs::set_permissions(&path, std::fs::Permissions::from_mode(tight)) {
                Ok(()) => changed.push(format!(
                    "{} from {:o} to {:o}",
                    path.display(),
                    mode & 0o7777,
                    tight
                )),
                Err(e) => log::warn!(
                    "{} is open to other users (mode {:o}) and cannot be tightened ({e}); \
                     run `chmod go= {}` as its owner",
                    path.display(),
                    mode & 0o7777,
                    path.display()
                ),
            }
        }
        if !changed.is_empty() {
            log::warn!(
                "the data directory holds password keys, so its modes were tightened: {}",
                changed.join(", ")
            );
        }
        Ok(())
    }

    pub fn admin_socket(&self) -> PathBuf {
        self.server.data_dir.join("admin.sock")
    }

    pub fn xml_limits(&self) -> crate::xml::reader::Limits {
        crate::xml::reader::Limits {
            max_stanza_bytes: self.limits.max_stanza_bytes,
            max_depth: self.limits.max_depth,
            max_attrs: self.limits.max_attributes,
        }
    }
}

/// Modes of the data directory and of the files in it.
pub const PRIVATE_DIR: u32 = 0o700;
pub const PRIVATE_FILE: u32 = 0o600;

/// A numeric option: its path, its value, the least and the most it may be, and its unit (with
/// the reason for a bound that is not obvious).
type Range = (&'static str, u64, u64, u64, &'static str);

/// A config number as u64, for range checks (no config number is wider).
fn n(v: impl TryInto<u64>) -> u64 {
    v.try_into().unwrap_or(u64::MAX)
}

pub fn log_level(s: &str) -> Option<log::LevelFilter> {
    s.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bundled_config_parses() {
        let text = include_str!("../config.toml");
        let cfg = Config::parse(text).unwrap();
        assert_eq!(cfg.server.domain, "localhost");
    }

    #[test]
    fn errors_are_sentences() {
        let e = Config::parse("[server]\ndomian = 'x'").unwrap_err();
        assert!(e.contains("domian"), "{e}");
        let e = Config::parse("[server]\ndomain = 'a b'").unwrap_err();
        assert!(e.contains("not a domain name"), "{e}");
        let e = Config::parse("[listen]\nc2s = ['localhost']").unwrap_err();
        assert!(e.contains("IP:port"), "{e}");
        let e = Config::parse("[modules.offline]\nmax_per_user = 5000").unwrap_err();
        assert!(e.contains("limits.queue_len"), "{e}");
        let e = Config::parse("[limits]\nqueue_bytes = 100000").unwrap_err();
        assert!(e.contains("limits.max_stanza_bytes"), "{e}");
        let e = Config::parse("[limits]\nqueue_bytes = 1000000").unwrap_err();
        assert!(e.contains("modules.offline.max_bytes_per_user"), "{e}");
        let e = Config::parse("[modules.muc]\ndomain = 'localhost'").unwrap_err();
        assert!(e.contains("must differ from server.domain"), "{e}");
        let e = Config::parse("[modules.muc]\ndomain = 'Rooms.Example'").unwrap_err();
        assert!(e.contains("normalised form"), "{e}");
        let e = Config::parse("[modules.muc]\nadmins = ['example.org']").unwrap_err();
        assert!(e.contains("not an account's address"), "{e}");
        let e = Config::parse("[modules.muc]\ncreate = 'everybody'").unwrap_err();
        assert!(e.contains("expected `anyone` or `admins`"), "{e}");
        let c = Config::parse("[modules.muc]\nenabled = false\ndomain = 'localhost'").unwrap();
        assert!(!c.modules.muc.enabled);
        assert_eq!(
            Config::default().modules.muc.domain_for("example.org"),
            "muc.example.org"
        );
    }

    /// `option = value` as TOML: `a.b.c = v` becomes `[a.b]` and `c = v`.
    fn setting(option: &str, value: u64) -> String {
        let (table, key) = option.rsplit_once('.').unwrap();
        format!("[{table}]\n{key} = {value}\n")
    }

    #[test]
    fn every_bound_is_enforced() {
        let ranges = Config::default().ranges();
        for (option, _, least, most, _) in ranges {
            let mut outside = vec![most + 1];
            if least > 0 {
                outside.push(least - 1);
            }
            for value in outside {
                let e = Config::parse(&setting(option, value)).unwrap_err();
                assert!(
                    e.contains(&format!("{option} = {value} is out of range")),
                    "{option} = {value}: {e}"
                );
                assert!(e.contains(&format!("between {least} and {most}")), "{e}");
                assert_eq!(e.lines().count(), 1, "{e}");
            }
            // The bounds themselves pass the range check (other checks relate options to
            // each other and are tested on their own).
            for value in [least, most] {
                let cfg: Config = toml::from_str(&setting(option, value)).unwrap();
                assert_eq!(cfg.check_ranges(), Ok(()), "{option} = {value}");
            }
        }
    }

    #[test]
    fn every_number_in_the_bundled_config_has_a_range() {
        let listed: Vec<&str> = Config::default().ranges().iter().map(|r| r.0).collect();
        let mut table = String::new();
        let mut found = 0;
        for line in include_str!("../config.toml").lines() {
            let line = line.trim_start_matches(['#', ' ']);
            if let Some(t) = line.strip_prefix('[').and_then(|l| l.strip_suffix(']')) {
                table = t.to_owned();
            } else if let Some((key, value)) = line.split_once(" = ")
                && value.trim().parse::<u64>().is_ok()
            {
                let option = format!("{table}.{key}");
                assert!(listed.contains(&option.as_str()), "{option} has no range");
                found += 1;
            }
        }
        assert_eq!(found, listed.len(), "every listed option is in config.toml");
    }

    #[test]
    fn huge_durations_are_refused_not_overflowed() {
        for value in [u64::MAX, i64::MAX as u64, 10 * 365 * 86_400] {
            let e = Config::parse(&format!("[keepalive]\nping_after_secs = {value}")).unwrap_err();
            assert!(
                e.contains(&format!(
                    "keepalive.ping_after_secs = {value} is out of range"
                )),
                "{e}"
            );
        }
    }

    #[test]
    fn an_archive_page_fits_the_client_queue() {
        let e = Config::parse("[modules.mam]\nmax_page = 1024").unwrap_err();
        assert!(e.contains("limits.queue_len"), "{e}");
        let e = Config::parse("[modules.mam]\ndefault_page = 300").unwrap_err();
        assert!(e.contains("no larger than modules.mam.max_page"), "{e}");
        Config::parse("[modules.mam]\nmax_page = 1000\n[limits]\nqueue_len = 1001").unwrap();
    }
}
