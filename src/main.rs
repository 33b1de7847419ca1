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
    println!("config ok");
    Ok(())
}
