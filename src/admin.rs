//! Account administration, the same whether the server runs or not. redb lets one process open
//! the store, so while the server runs, `hearth user ...` talks to it over a Unix socket in the
//! data directory (mode 0600: whoever can use it can already read the store); otherwise the
//! command opens the store itself.
//!
//! Protocol: one request line, `add|passwd LOCALPART CREDENTIALS-BASE64`, `remove LOCALPART` or
//! `list`; the answer is `ok` followed by result lines, or one `error MESSAGE` line. Password
//! hashing happens in the command, so the server never sees a password.
//!
//! On a running server, `remove` and `passwd` end every connection logged in as the account,
//! bound or not: a stolen password stops working the moment it is changed.

use crate::config::Config;
use crate::error::Error;
use crate::server::Server;
use crate::stanza::{StreamCondition, StreamError};
use crate::storage::accounts::{self, Credentials};
use crate::storage::{Store, Write};
use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use smol::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use smol::{Async, LocalExecutor};
use std::io::{BufRead, Write as _};
use std::os::unix::net::{UnixListener, UnixStream};
use std::rc::Rc;

#[derive(Debug, PartialEq, Eq)]
pub enum Request {
    Add(String, Credentials),
    Passwd(String, Credentials),
    Remove(String),
    List,
}

impl Request {
    pub fn encode(&self) -> String {
        let creds = |c: &Credentials| B64.encode(c.encode());
        match self {
            Request::Add(u, c) => format!("add {u} {}", creds(c)),
            Request::Passwd(u, c) => format!("passwd {u} {}", creds(c)),
            Request::Remove(u) => format!("remove {u}"),
            Request::List => "list".into(),
        }
    }

    pub fn decode(line: &str) -> Option<Request> {
        let mut it = line.split(' ');
        let creds = |s: Option<&str>| {
            let bytes = B64.decode(s?).ok()?;
            Credentials::decode(std::str::from_utf8(&bytes).ok()?)
        };
        let req = match (it.next()?, it.next()) {
            ("add", Some(u)) => Request::Add(u.to_owned(), creds(it.next())?),
            ("passwd", Some(u)) => Request::Passwd(u.to_owned(), creds(it.next())?),
            ("remove", Some(u)) => Request::Remove(u.to_owned()),
            ("list", None) => Request::List,
            _ => return None,
        };
        it.next().is_none().then_some(req)
    }
}

/// Checks a request against the store: the writes to make, or why not.
fn plan(store: &Store, req: &Request) -> Result<Vec<Write>, String> {
    let exists = |u: &str| store.user_exists(u).map_err(|e| e.to_string());
    match req {
        Request::Add(u, c) => {
            if exists(u)? {
                return Err(format!(
                    "the account {u} exists already; use `user passwd` to change its password"
                ));
            }
            Ok(vec![accounts::put(u, c)])
        }
        Request::Passwd(u, c) => {
            if !exists(u)? {
                return Err(format!(
                    "there is no account {u}; use `user add` to create it"
                ));
            }
            Ok(vec![accounts::put(u, c)])
        }
        Request::Remove(u) => {
            if !exists(u)? {
                return Err(format!("there is no account {u}"));
            }
            Ok(vec![accounts::delete(u)])
        }
        Request::List => Ok(Vec::new()),
    }
}

fn list(store: &Store, domain: &str) -> Result<Vec<String>, String> {
    let users = store.users().map_err(|e| e.to_string())?;
    Ok(users.into_iter().map(|u| format!("{u}@{domain}")).collect())
}

/// Runs a request, through the running server if there is one. Returns the output lines.
pub fn execute(config: &Config, req: &Request) -> Result<Vec<String>, Error> {
    // Another `hearth user` command holds the store for a few milliseconds, and a server that
    // is starting opens its admin socket a moment after the store: try again for a while.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        if let Ok(stream) = UnixStream::connect(config.admin_socket()) {
            return remote(stream, req);
        }
        match direct(config, req) {
            Err(Error::InUse(_)) if std::time::Instant::now() < deadline => {
                std::thread::sleep(std::time::Duration::from_millis(20));
            }
            result => return result,
        }
    }
}

/// Runs a request on the store itself, when no server is running.
fn direct(config: &Config, req: &Request) -> Result<Vec<String>, Error> {
    config.private_data_dir()?;
    let store = Store::open_with_cache(
        &config.store_path(),
        config.store_cache_bytes(),
        crate::modules::schema(),
    )?;
    let writes = plan(&store, req).map_err(Error::Config)?;
    store.commit_blocking(writes)?;
    match req {
        Request::List => list(&store, &config.server.domain).map_err(Error::Storage),
        _ => Ok(Vec::new()),
    }
}

fn remote(mut stream: UnixStream, req: &Request) -> Result<Vec<String>, Error> {
    let io = |e: std::io::Error| Error::Io(format!("talking to the running server failed: {e}"));
    writeln!(stream, "{}", req.encode()).map_err(io)?;
    let mut lines = std::io::BufReader::new(stream).lines();
    match lines.next().transpose().map_err(io)? {
        Some(l) if l == "ok" => lines.collect::<Result<_, _>>().map_err(io),
        Some(l) => Err(Error::Config(
            l.strip_prefix("error ").unwrap_or(&l).to_owned(),
        )),
        None => Err(Error::Io(
            "the running server closed the admin connection".into(),
        )),
    }
}

pub fn bind(config: &Config) -> Result<Option<Async<UnixListener>>, Error> {
    use std::os::unix::fs::PermissionsExt;
    let path = config.admin_socket();
    // A socket left by a server that did not stop cleanly; the store lock proves none runs.
    let _ = std::fs::remove_file(&path);
    let l =
        UnixListener::bind(&path).map_err(|e| Error::io("create the admin socket", &path, &e))?;
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600))
        .map_err(|e| Error::io("restrict the admin socket", &path, &e))?;
    let l = Async::new(l).map_err(|e| Error::io("use the admin socket", &path, &e))?;
    Ok(Some(l))
}

pub fn remove(config: &Config) {
    let _ = std::fs::remove_file(config.admin_socket());
}

pub async fn serve(server: Rc<Server>, ex: Rc<LocalExecutor<'static>>, l: Async<UnixListener>) {
    while let Ok((stream, _)) = l.accept().await {
        ex.spawn(handle(server.clone(), stream)).detach();
    }
}

async fn handle(server: Rc<Server>, stream: Async<UnixStream>) {
    let mut reader = BufReader::new(&stream).take(64 * 1024);
    let mut line = String::new();
    if reader.read_line(&mut line).await.is_err() {
        return;
    }
    let answer = match Request::decode(line.trim_end()) {
        Some(req) => match run(&server, &req).await {
            Ok(lines) => std::iter::once("ok".to_string())
                .chain(lines)
                .collect::<Vec<_>>()
                .join("\n"),
            Err(e) => format!("error {e}"),
        },
        None => "error the request was not understood".into(),
    };
    let mut w = &stream;
    let _ = w.write_all(format!("{answer}\n").as_bytes()).await;
}

async fn run(server: &Rc<Server>, req: &Request) -> Result<Vec<String>, String> {
    let writes = plan(&server.store, req)?;
    server
        .store
        .commit(writes)
        .await
        .map_err(|e| e.to_string())?;
    match req {
        Request::List => list(&server.store, &server.config.server.domain),
        Request::Remove(u) => {
            server.account_removed(u);
            server.close_account(
                u,
                &StreamError::with_text(StreamCondition::NotAuthorized, "the account was removed"),
            );
            log::info!("removed the account {u}");
            Ok(Vec::new())
        }
        Request::Add(u, _) => {
            server.account_added(u);
            log::info!("added the account {u}");
            Ok(Vec::new())
        }
        Request::Passwd(u, _) => {
            server.account_added(u);
            // Whoever knew the old password is logged out with everyone else; logins still
            // in their exchange fail, as SCRAM checks the keys again at the end.
            server.close_account(
                u,
                &StreamError::with_text(StreamCondition::NotAuthorized, "the password was changed"),
            );
            log::info!("set the password of {u}");
            Ok(Vec::new())
        }
    }
}

/// Reads a password: one line from stdin, or twice from the terminal without echo.
pub fn read_password(from_stdin: bool) -> Result<String, Error> {
    if from_stdin {
        let mut line = String::new();
        std::io::stdin()
            .lock()
            .read_line(&mut line)
            .map_err(|e| Error::Io(format!("cannot read the password from stdin: {e}")))?;
        return Ok(line.trim_end_matches(['\n', '\r']).to_owned());
    }
    let first = rpassword::prompt_password("Password: ").map_err(|e| {
        Error::Config(format!(
            "cannot read the password ({e}); use --password-stdin"
        ))
    })?;
    let again = rpassword::prompt_password("Again: ").map_err(|e| {
        Error::Config(format!(
            "cannot read the password ({e}); use --password-stdin"
        ))
    })?;
    if first != again {
        return Err(Error::Config("the two passwords differ; try again".into()));
    }
    Ok(first)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_round_trip() {
        let c = crate::stream::sasl::derive_credentials("pw", 4096).unwrap();
        for r in [
            Request::Add("a".into(), c.clone()),
            Request::Passwd("a".into(), c),
            Request::Remove("a".into()),
            Request::List,
        ] {
            assert_eq!(Request::decode(&r.encode()), Some(r));
        }
        assert_eq!(Request::decode("add a"), None);
        assert_eq!(Request::decode("list x"), None);
    }
}
