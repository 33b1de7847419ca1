//! The configuration file (TOML). Every option has a default in code; unknown keys are errors,
//! so a typo is reported instead of silently ignored. The bundled `config.toml` lists them all.

use crate::error::Error;
use serde::Deserialize;
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

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
pub struct TlsConfig {
    /// PEM certificate chain; without it a self-signed certificate is made in the data dir.
    pub cert: Option<PathBuf>,
    /// PEM private key matching `cert`.
    pub key: Option<PathBuf>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LimitsConfig {
    pub max_stanza_bytes: usize,
    pub max_depth: usize,
    pub max_attributes: usize,
    /// Stanzas waiting for one connection; a client that falls this far behind is disconnected.
    pub queue_len: usize,
    pub max_connections: usize,
    /// Connections from one IPv4 address or one IPv6 /64.
    pub max_connections_per_ip: usize,
    /// Seconds a new connection has, from its first byte, to authenticate and bind.
    pub login_timeout_secs: u64,
}

impl Default for LimitsConfig {
    fn default() -> Self {
        LimitsConfig {
            max_stanza_bytes: 262_144,
            max_depth: 32,
            max_attributes: 64,
            queue_len: 1024,
            max_connections: 10_000,
            max_connections_per_ip: 1_000,
            login_timeout_secs: 60,
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
}

impl Default for AuthConfig {
    fn default() -> Self {
        AuthConfig {
            attempts_per_stream: 3,
            max_failures: 10,
            max_failures_per_source: 30,
            throttle_window_secs: 300,
            scram_iterations: 4096,
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
}

impl Default for StreamManagementConfig {
    fn default() -> Self {
        StreamManagementConfig {
            resume_timeout_secs: 300,
            ack_every: 5,
            ack_delay_secs: 5,
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

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
pub struct ModulesConfig {
    pub version: crate::modules::version::Config,
    pub offline: crate::modules::offline::Config,
    pub mam: crate::modules::mam::Config,
    pub blocking: crate::modules::blocking::Config,
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
        for p in [&mut cfg.tls.cert, &mut cfg.tls.key].into_iter().flatten() {
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
        if self.limits.max_stanza_bytes < 10_000 {
            return Err("limits.max_stanza_bytes must be at least 10000 (RFC 6120 §13.12)".into());
        }
        if self.modules.offline.max_per_user >= self.limits.queue_len {
            return Err(format!(
                "modules.offline.max_per_user ({}) must be smaller than limits.queue_len ({}): \
                 a client gets all its offline messages at once, through that queue",
                self.modules.offline.max_per_user, self.limits.queue_len
            ));
        }
        if self.stream_management.ack_every == 0 || self.csi.max_held == 0 {
            return Err("stream_management.ack_every and csi.max_held must be positive".into());
        }
        if self.limits.queue_len == 0 || self.limits.max_depth < 4 {
            return Err("limits.queue_len must be positive and limits.max_depth at least 4".into());
        }
        if self.auth.scram_iterations < 4096 {
            return Err("auth.scram_iterations must be at least 4096 (RFC 7677)".into());
        }
        let mam = &self.modules.mam;
        if mam.max_page == 0 || mam.default_page == 0 || mam.default_page > mam.max_page {
            return Err(
                "modules.mam.default_page and max_page must be positive, with default_page \
                 no larger than max_page"
                    .into(),
            );
        }
        if log_level(&self.server.log_level).is_none() {
            return Err(format!(
                "server.log_level {:?} is not one of error, warn, info, debug, trace",
                self.server.log_level
            ));
        }
        Ok(())
    }

    pub fn store_path(&self) -> PathBuf {
        self.server.data_dir.join("hearth.redb")
    }

    pub fn store_cache_bytes(&self) -> usize {
        self.server.store_cache_mib.saturating_mul(1 << 20)
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
    }
}
