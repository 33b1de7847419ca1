//! hearth's command line: serve, check the config, manage accounts.

use argh::FromArgs;
use hearth::config::{self, Config};
use hearth::error::Error;
use hearth::{admin, jid, modules, router, server, storage, stream, tls};
use std::path::PathBuf;

#[derive(FromArgs)]
/// hearth: a small XMPP server. Without a subcommand it serves.
struct Args {
    /// the config file (default: config.toml)
    #[argh(option, default = "PathBuf::from(\"config.toml\")")]
    config: PathBuf,
    #[argh(subcommand)]
    cmd: Option<Cmd>,
}

#[derive(FromArgs)]
#[argh(subcommand)]
enum Cmd {
    Serve(Serve),
    User(User),
    Check(Check),
}

#[derive(FromArgs)]
/// Run the server (the default).
#[argh(subcommand, name = "serve")]
struct Serve {}

#[derive(FromArgs)]
/// Check the config and the certificate and show what the server would listen on.
#[argh(subcommand, name = "check")]
struct Check {}

#[derive(FromArgs)]
/// Manage accounts; works whether the server runs or not.
#[argh(subcommand, name = "user")]
struct User {
    #[argh(subcommand)]
    op: UserOp,
}

#[derive(FromArgs)]
#[argh(subcommand)]
enum UserOp {
    Add(UserAdd),
    Passwd(UserPasswd),
    Remove(UserRemove),
    List(UserList),
}

#[derive(FromArgs)]
/// Create an account.
#[argh(subcommand, name = "add")]
struct UserAdd {
    /// the account's address, such as alice@example.org
    #[argh(positional)]
    jid: String,
    /// read the password from one line of standard input instead of asking
    #[argh(switch)]
    password_stdin: bool,
}

#[derive(FromArgs)]
/// Change an account's password.
#[argh(subcommand, name = "passwd")]
struct UserPasswd {
    /// the account's address
    #[argh(positional)]
    jid: String,
    /// read the password from one line of standard input instead of asking
    #[argh(switch)]
    password_stdin: bool,
}

#[derive(FromArgs)]
/// Delete an account with its roster and offline messages.
#[argh(subcommand, name = "remove")]
struct UserRemove {
    /// the account's address
    #[argh(positional)]
    jid: String,
}

#[derive(FromArgs)]
/// List the accounts.
#[argh(subcommand, name = "list")]
struct UserList {}

fn main() {
    let args: Args = argh::from_env();
    let result = Config::load(&args.config).and_then(|cfg| {
        init_logging(&cfg);
        match args.cmd {
            None | Some(Cmd::Serve(_)) => server::serve(cfg),
            Some(Cmd::Check(_)) => check(&cfg),
            Some(Cmd::User(u)) => user(&cfg, u.op),
        }
    });
    if let Err(e) = result {
        eprintln!("hearth: {e}");
        std::process::exit(match e {
            Error::Config(_) => 2,
            _ => 1,
        });
    }
}

fn init_logging(cfg: &Config) {
    // Validated with the config.
    let level = config::log_level(&cfg.server.log_level).unwrap_or(log::LevelFilter::Info);
    env_logger::Builder::new()
        .filter_level(level)
        .format_target(false)
        .target(env_logger::Target::Stderr)
        .init();
}

/// The localpart of `jid` if it names an account of this server.
fn account(cfg: &Config, jid: &str) -> Result<String, Error> {
    let domain = &cfg.server.domain;
    match jid::Jid::parse(jid) {
        Ok(j) => match router::account_of(domain, &j) {
            Some(user) => Ok(user.to_owned()),
            None => Err(Error::Config(format!(
                "{jid} is not an account address of this server; write it as name@{domain}"
            ))),
        },
        Err(e) => Err(Error::Config(format!("{jid} is not a valid address: {e}"))),
    }
}

fn credentials(cfg: &Config, stdin: bool) -> Result<storage::accounts::Credentials, Error> {
    let password = admin::read_password(stdin)?;
    stream::sasl::derive_credentials(&password, cfg.auth.scram_iterations)
        .map_err(|e| Error::Config(format!("{e}; choose another password")))
}

fn user(cfg: &Config, op: UserOp) -> Result<(), Error> {
    let req = match op {
        UserOp::Add(a) => {
            admin::Request::Add(account(cfg, &a.jid)?, credentials(cfg, a.password_stdin)?)
        }
        UserOp::Passwd(p) => {
            admin::Request::Passwd(account(cfg, &p.jid)?, credentials(cfg, p.password_stdin)?)
        }
        UserOp::Remove(r) => admin::Request::Remove(account(cfg, &r.jid)?),
        UserOp::List(_) => admin::Request::List,
    };
    for line in admin::execute(cfg, &req)? {
        println!("{line}");
    }
    Ok(())
}

fn check(cfg: &Config) -> Result<(), Error> {
    println!("domain {}", cfg.server.domain);
    println!("data {}", cfg.server.data_dir.display());
    match &cfg.tls.cert {
        Some(_) => {
            let (certs, _, path) = tls::load_parts(cfg)?;
            println!(
                "certificate {} sha256 {}",
                path.display(),
                tls::fingerprint(&certs[0])
            );
        }
        None => println!(
            "certificate self-signed, kept in {}",
            cfg.server.data_dir.join("cert.pem").display()
        ),
    }
    for l in server::listeners(cfg, &modules::all(cfg)) {
        for a in &l.addrs {
            println!("would listen {} {a} ({})", l.name, l.description);
        }
    }
    federation(cfg);
    println!("config ok");
    Ok(())
}

/// What `check` says of federation: whether it is on, which push services are talked to, the
/// DNS records other servers will find, and whether the server-to-server addresses are taken.
fn federation(cfg: &Config) {
    let f = &cfg.federation;
    match (f.enabled, f.push_services.is_empty()) {
        (true, _) => println!("federation on: talks to every other server"),
        (false, true) => println!("federation off: talks to no other server"),
        (false, false) => println!("federation off: talks only to the push services"),
    }
    match f.push_services.is_empty() {
        true => println!("push services: none (phones that sleep get no notifications)"),
        false => println!("push services: {}", f.push_services.join(", ")),
    }
    if !f.listens() {
        return;
    }
    match stream::s2s::tls::Tls::load(cfg) {
        Ok(t) => println!(
            "certificate authorities trusted for other servers: {}",
            t.authorities
        ),
        Err(e) => println!("certificates for other servers: {e}"),
    }
    let domain = &cfg.server.domain;
    for (service, kind) in [
        ("_xmpps-server._tcp", "direct TLS"),
        ("_xmpp-server._tcp", "STARTTLS"),
    ] {
        match stream::s2s::resolve::srv(&format!("{service}.{domain}")) {
            Some(records) => {
                for r in records {
                    println!("dns {service}.{domain} -> {}:{} ({kind})", r.target, r.port);
                }
            }
            None => println!("dns {service}.{domain}: no record"),
        }
    }
    for (a, direct) in f
        .listen
        .iter()
        .map(|a| (a, false))
        .chain(f.listen_tls.iter().map(|a| (a, true)))
    {
        let Ok(addr) = a.parse::<std::net::SocketAddr>() else {
            continue;
        };
        println!("s2s {addr}: {}", probe(addr, direct, domain));
    }
}

/// Whether something answers at `addr` (the server itself, normally), or it could be bound.
fn probe(addr: std::net::SocketAddr, direct_tls: bool, domain: &str) -> String {
    use std::io::{Read, Write};
    use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, TcpListener, TcpStream};
    let target = match addr.ip() {
        IpAddr::V4(ip) if ip.is_unspecified() => {
            SocketAddr::new(Ipv4Addr::LOCALHOST.into(), addr.port())
        }
        IpAddr::V6(ip) if ip.is_unspecified() => {
            SocketAddr::new(Ipv6Addr::LOCALHOST.into(), addr.port())
        }
        _ => addr,
    };
    let wait = std::time::Duration::from_secs(2);
    match TcpStream::connect_timeout(&target, wait) {
        Ok(mut s) if !direct_tls => {
            let _ = s.set_read_timeout(Some(wait));
            let header = format!(
                "<?xml version='1.0'?><stream:stream xmlns='jabber:server' \
                 xmlns:stream='http://etherx.jabber.org/streams' to='{domain}' version='1.0'>"
            );
            let _ = s.write_all(header.as_bytes());
            let mut buf = [0u8; 1024];
            let n = s.read(&mut buf).unwrap_or(0);
            let reply = String::from_utf8_lossy(&buf[..n]);
            match (reply.contains("<stream:stream"), reply.contains("starttls")) {
                (true, true) => "reachable: an XMPP server answers, and offers STARTTLS".into(),
                (true, false) => "reachable: an XMPP server answers, but offers no STARTTLS".into(),
                (false, _) => "taken by something that does not speak XMPP".into(),
            }
        }
        Ok(_) => "reachable: something accepts connections (direct TLS)".into(),
        Err(_) => match TcpListener::bind(addr) {
            Ok(_) => "free: nothing answers yet; the server will listen there".into(),
            Err(e) => format!("cannot be bound ({e}); check the address and the port's owner"),
        },
    }
}
