//! XEP-0363 HTTP File Upload, v1.1: a slot service at `upload.DOMAIN` (listed in the server's
//! disco#items, with `max-file-size` in its disco#info form) and the PUT and GET of the files
//! on the HTTPS listener.
//!
//! A slot request is checked for a file name (no path, no control characters), a size within
//! `max_file_bytes` (else `file-too-large` with the limit), a well-formed content type, the
//! user's outstanding slots (`max_slots`) and quota (`quota_bytes`, counting stored files and
//! outstanding slots). A slot is `/upload/ID/NAME` under the public URL, where ID is 128 random
//! bits: it is the only thing the server reads from a URL (a file's name on disk is its ID), so
//! no field of a request reaches a path. The PUT must start within `slot_timeout_secs`, carry
//! exactly the requested length (and the requested type, if one was given); the body goes to
//! `ID.part` (mode 0600) through the blocking thread pool in 64 KiB steps, is synced, renamed
//! and then recorded in the store, so a crash leaves at most a file the next start removes.
//!
//! GET serves the file with its type and length, `nosniff`, a Content-Security-Policy that
//! allows nothing (no script, no style, no frame, sandboxed), and as an attachment unless its
//! type is one a browser only displays (images, audio, video, plain text). Files older than
//! `expire_days` are deleted by a timer, at most a bounded number per turn; so are the files of
//! a removed account.

use super::{Body, status};
use crate::config::PRIVATE_FILE;
use crate::jid::Jid;
use crate::modules::{Cx, DiscoInfo, Entry, IqRequest, IqRoute, Module, Target, To};
use crate::router::Dest;
use crate::server::Server;
use crate::stanza::{Condition, StanzaError};
use crate::storage::shapes::Map;
use crate::xml::{Element, ns};
use bytes::Bytes;
use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper::header::{self, HeaderValue};
use hyper::{Method, Request, Response, StatusCode};
use percent_encoding::{AsciiSet, NON_ALPHANUMERIC, utf8_percent_encode};
use redb::{ReadableTable, TableDefinition};
use serde::Deserialize;
use smol::io::AsyncWriteExt;
use std::cell::RefCell;
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::rc::Rc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

pub const NS: &str = "urn:xmpp:http:upload:0";
/// Where slots live on the HTTPS listener.
pub const PREFIX: &str = "/upload/";

/// (owner, ID) → "SIZE CREATED CONTENT-TYPE NAME" (CREATED in seconds since the epoch).
pub static UPLOADS: Map<&str> = Map(TableDefinition::new("uploads"));

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    pub enabled: bool,
    /// The service's domain; empty means `upload.` and the server's domain.
    pub domain: String,
    pub max_file_bytes: u64,
    /// What one account may have stored (and promised by outstanding slots) at once.
    pub quota_bytes: u64,
    /// Slots one account may have asked for and not used yet.
    pub max_slots: usize,
    /// A slot's upload must start within this.
    pub slot_timeout_secs: u64,
    /// Files are deleted this many days after their upload; 0 keeps them.
    pub expire_days: u64,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            enabled: true,
            domain: String::new(),
            max_file_bytes: 100 << 20,
            quota_bytes: 2 << 30,
            max_slots: 10,
            slot_timeout_secs: 300,
            expire_days: 30,
        }
    }
}

impl Config {
    pub fn domain(&self, server: &str) -> String {
        match self.domain.is_empty() {
            true => format!("upload.{server}"),
            false => self.domain.clone(),
        }
    }

    pub fn validate(&self, server: &str) -> Result<(), String> {
        if !self.enabled || self.domain.is_empty() {
            return Ok(());
        }
        let ok = Jid::parse(&self.domain)
            .ok()
            .filter(|j| j.local().is_none() && j.is_bare() && j.to_string() == self.domain);
        match ok {
            Some(_) if self.domain != server => Ok(()),
            _ => Err(format!(
                "modules.upload.domain {:?} is not a domain name of its own; set it to a name \
                 such as \"upload.{server}\"",
                self.domain
            )),
        }
    }
}

pub const ENTRY: Entry = Entry {
    tables: &[&UPLOADS],
    new: |config| {
        let c = &config.modules.upload;
        // Without the web endpoint there is nowhere to upload to.
        (c.enabled && config.modules.http.enabled).then(|| {
            let domain = &config.server.domain;
            Box::new(Upload {
                domain: c.domain(domain),
                dir: config.server.data_dir.join("uploads"),
                config: c.clone(),
                slots: RefCell::default(),
                files: RefCell::default(),
            }) as Box<dyn Module>
        })
    },
};

pub struct Upload {
    domain: String,
    dir: PathBuf,
    config: Config,
    slots: RefCell<HashMap<String, Slot>>,
    files: RefCell<HashMap<String, Stored>>,
}

#[derive(Clone, Debug)]
struct Slot {
    user: String,
    size: u64,
    content_type: Option<String>,
    name: String,
    expires: Instant,
    /// A PUT is under way.
    busy: bool,
}

#[derive(Clone, Debug, PartialEq)]
struct Stored {
    user: String,
    size: u64,
    created: u64,
    content_type: String,
    name: String,
}

impl Stored {
    fn encode(&self) -> String {
        format!(
            "{} {} {} {}",
            self.size, self.created, self.content_type, self.name
        )
    }

    fn decode(user: &str, s: &str) -> Option<Stored> {
        let mut parts = s.splitn(4, ' ');
        Some(Stored {
            user: user.to_owned(),
            size: parts.next()?.parse().ok()?,
            created: parts.next()?.parse().ok()?,
            content_type: parts.next()?.to_owned(),
            name: parts.next()?.to_owned(),
        })
    }
}

/// Files deleted per timer turn: unlinking is a blocking call on the event loop.
const DELETE_PER_TURN: usize = 50;
const SWEEP_EVERY: Duration = Duration::from_secs(3600);

/// Everything but unreserved characters (RFC 3986 §2.3) is percent-encoded.
const SEGMENT: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'.')
    .remove(b'_')
    .remove(b'~');

/// A file name as a client may give it: a name, not a path; no control characters.
fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 255
        && name != "."
        && name != ".."
        && !name
            .chars()
            .any(|c| c.is_control() || c == '/' || c == '\\')
}

/// The `type/subtype` of a content type (parameters dropped), lower-cased, if it is one.
fn media_type(value: &str) -> Option<String> {
    let essence = value.split(';').next()?.trim().to_ascii_lowercase();
    let tchar = |c: char| c.is_ascii_alphanumeric() || "!#$%&'*+-.^_`|~".contains(c);
    let (t, s) = essence.split_once('/')?;
    let ok = !t.is_empty() && !s.is_empty() && essence.len() <= 127;
    (ok && t.chars().all(tchar) && s.chars().all(tchar)).then_some(essence)
}

/// Types a browser only displays: everything else is served as an attachment.
fn inline(content_type: &str) -> bool {
    let (t, sub) = content_type.split_once('/').unwrap_or_default();
    matches!(t, "audio" | "video")
        || (t == "image" && matches!(sub, "png" | "jpeg" | "gif" | "webp" | "avif" | "heic"))
        || content_type == "text/plain"
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn is_id(s: &str) -> bool {
    s.len() == 32
        && s.bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

fn unix(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

impl Upload {
    fn path(&self, id: &str) -> PathBuf {
        self.dir.join(id)
    }

    fn part_path(&self, id: &str) -> PathBuf {
        self.dir.join(format!("{id}.part"))
    }

    fn forget_expired_slots(&self) {
        let now = Instant::now();
        self.slots
            .borrow_mut()
            .retain(|_, s| s.busy || s.expires > now);
    }

    /// Bytes `user` has stored and promised, and how many slots it holds.
    fn usage(&self, user: &str) -> (u64, usize) {
        let stored: u64 = self
            .files
            .borrow()
            .values()
            .filter(|f| f.user == user)
            .map(|f| f.size)
            .sum();
        let slots = self.slots.borrow();
        let mine = slots.values().filter(|s| s.user == user);
        let (promised, n) = mine.fold((0u64, 0), |(b, n), s| (b + s.size, n + 1));
        (stored + promised, n)
    }

    fn request(&self, cx: &Cx, from: &Jid, req: &Element) -> Result<Element, StanzaError> {
        let user = match cx.destination(from) {
            Dest::Account(u) | Dest::Session(u) if cx.account_exists(u) => u,
            _ => {
                return Err(StanzaError::with_text(
                    Condition::Forbidden,
                    "only accounts of this server may upload",
                ));
            }
        };
        let name = req.attr("filename").unwrap_or_default();
        if !valid_name(name) {
            return Err(StanzaError::bad_request(
                "the filename must be a file's name, without a path or control characters",
            ));
        }
        let size: u64 = match req.attr("size").and_then(|s| s.parse().ok()) {
            Some(s) if s > 0 => s,
            _ => {
                return Err(StanzaError::bad_request(
                    "the size must be a positive number",
                ));
            }
        };
        let content_type = match req.attr("content-type") {
            None => None,
            Some(t) => Some(
                media_type(t)
                    .ok_or_else(|| StanzaError::bad_request("the content-type is not valid"))?,
            ),
        };
        let max = self.config.max_file_bytes;
        if size > max {
            let too_large = Element::new("file-too-large", NS)
                .with_child(Element::new("max-file-size", NS).with_text(max.to_string()));
            return Err(StanzaError::with_text(
                Condition::NotAcceptable,
                format!("File too large. The maximum file size is {max} bytes"),
            )
            .with_app(too_large));
        }
        self.forget_expired_slots();
        let (used, slots) = self.usage(user);
        if slots >= self.config.max_slots {
            let soonest = self
                .slots
                .borrow()
                .values()
                .filter(|s| s.user == user)
                .map(|s| s.expires)
                .min()
                .unwrap_or_else(Instant::now);
            let wait = soonest.saturating_duration_since(Instant::now());
            let stamp = humantime::format_rfc3339_seconds(cx.now() + wait).to_string();
            return Err(StanzaError::with_text(
                Condition::ResourceConstraint,
                "too many uploads under way; finish one first",
            )
            .with_app(Element::new("retry", NS).with_attr("stamp", stamp)));
        }
        if used.saturating_add(size) > self.config.quota_bytes {
            return Err(StanzaError::with_text(
                Condition::ResourceConstraint,
                format!(
                    "Quota reached: {} of {} bytes are used",
                    used, self.config.quota_bytes
                ),
            ));
        }
        let id = hex(&crate::stream::sasl::random_bytes::<16>());
        let Some(http) = cx.module::<super::Http>() else {
            return Err(StanzaError::service_unavailable());
        };
        let url = format!(
            "{}{PREFIX}{id}/{}",
            http.public_url(),
            utf8_percent_encode(name, SEGMENT)
        );
        log::info!("{user}@{} may upload {size} bytes as {id}", cx.domain());
        self.slots.borrow_mut().insert(
            id,
            Slot {
                user: user.to_owned(),
                size,
                content_type,
                name: name.to_owned(),
                expires: Instant::now() + Duration::from_secs(self.config.slot_timeout_secs),
                busy: false,
            },
        );
        Ok(Element::new("slot", NS)
            .with_child(Element::new("put", NS).with_attr("url", url.as_str()))
            .with_child(Element::new("get", NS).with_attr("url", url)))
    }

    /// Reads what the store lists, and makes the directory agree with it: files without a
    /// record (an upload a crash interrupted) go, records without a file are dropped.
    fn load(&self, cx: &mut Cx) -> Result<(), crate::error::Error> {
        let txn = cx.store().read()?;
        let table = txn.open_table(UPLOADS.0)?;
        let mut files = HashMap::new();
        for row in table.iter()? {
            let (k, v) = row?;
            let (user, id) = k.value();
            match Stored::decode(user, v.value()) {
                Some(s) => {
                    files.insert(id.to_owned(), s);
                }
                None => log::warn!("unreadable upload record {user}/{id}; ignoring it"),
            }
        }
        drop(table);
        drop(txn);
        make_dir(&self.dir)?;
        let mut present = std::collections::HashSet::new();
        let entries = std::fs::read_dir(&self.dir)
            .map_err(|e| crate::error::Error::io("read", &self.dir, &e))?;
        for e in entries.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            if files.contains_key(&name) {
                present.insert(name);
            } else if e.file_type().is_ok_and(|t| t.is_file()) {
                log::info!(
                    "removing {}, which no upload record lists",
                    e.path().display()
                );
                let _ = std::fs::remove_file(e.path());
            }
        }
        files.retain(|id, s| {
            let keep = present.contains(id);
            if !keep {
                log::warn!("the file of upload {id} is missing; forgetting it");
                cx.write(UPLOADS.delete(&s.user, id));
            }
            keep
        });
        log::info!("{} uploaded files", files.len());
        *self.files.borrow_mut() = files;
        Ok(())
    }

    /// Deletes files past their time, a bounded number per turn; true if more are due.
    fn expire(&self, cx: &mut Cx) -> bool {
        self.forget_expired_slots();
        if self.config.expire_days == 0 {
            return false;
        }
        let max_age = self.config.expire_days.saturating_mul(86_400);
        let now = unix(cx.now());
        let due: Vec<(String, String)> = self
            .files
            .borrow()
            .iter()
            .filter(|(_, f)| now.saturating_sub(f.created) >= max_age)
            .map(|(id, f)| (id.clone(), f.user.clone()))
            .take(DELETE_PER_TURN + 1)
            .collect();
        let more = due.len() > DELETE_PER_TURN;
        for (id, user) in due.into_iter().take(DELETE_PER_TURN) {
            log::info!("upload {id} of {user} expired; deleting it");
            cx.write(UPLOADS.delete(&user, &id));
            self.files.borrow_mut().remove(&id);
            let _ = std::fs::remove_file(self.path(&id));
        }
        more
    }
}

fn make_dir(dir: &Path) -> Result<(), crate::error::Error> {
    use std::os::unix::fs::DirBuilderExt;
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(crate::config::PRIVATE_DIR)
        .create(dir)
        .map_err(|e| crate::error::Error::io("create the upload directory", dir, &e))
}

impl Module for Upload {
    fn name(&self) -> &'static str {
        "upload"
    }

    fn service_domain(&self) -> Option<&str> {
        Some(&self.domain)
    }

    fn disco(&self, _cx: &Cx, target: &Target, info: &mut DiscoInfo) {
        match target {
            Target::Server => info
                .items
                .push((self.domain.clone(), Some("HTTP File Upload"))),
            Target::Service(d) if *d == self.domain => {
                info.identities
                    .push(("store", "file", Some("HTTP File Upload")));
                info.features.push(NS);
                let field = |var: &str, typ: Option<&str>, value: String| {
                    let mut f = Element::new("field", ns::DATA_FORMS).with_attr("var", var);
                    if let Some(t) = typ {
                        f.set_attr("type", t);
                    }
                    f.with_child(Element::new("value", ns::DATA_FORMS).with_text(value))
                };
                info.forms.push(
                    Element::new("x", ns::DATA_FORMS)
                        .with_attr("type", "result")
                        .with_child(field("FORM_TYPE", Some("hidden"), NS.into()))
                        .with_child(field(
                            "max-file-size",
                            None,
                            self.config.max_file_bytes.to_string(),
                        )),
                );
            }
            _ => {}
        }
    }

    fn iq_routes(&self) -> &'static [IqRoute] {
        const { &[IqRoute::new(NS, To::SERVICES)] }
    }

    fn handle_iq(&self, cx: &mut Cx, iq: &IqRequest) -> Result<Option<Element>, StanzaError> {
        if iq.set || iq.payload.name != "request" {
            return Err(StanzaError::bad_request("ask for a slot with an iq get"));
        }
        self.request(cx, iq.from, iq.payload).map(Some)
    }

    fn start(&self, cx: &mut Cx) {
        if let Err(e) = self.load(cx) {
            log::error!("uploads: {e}");
        }
        cx.set_timer("upload", Duration::from_secs(1), 0);
    }

    fn timer(&self, cx: &mut Cx, _token: u64) {
        let next = match self.expire(cx) {
            true => Duration::from_secs(1),
            false => SWEEP_EVERY,
        };
        cx.set_timer("upload", next, 0);
    }

    fn account_removed(&self, user: &str) {
        // The records went with the account; the files follow.
        self.slots.borrow_mut().retain(|_, s| s.user != user);
        let ids: Vec<String> = self
            .files
            .borrow()
            .iter()
            .filter(|(_, f)| f.user == user)
            .map(|(id, _)| id.clone())
            .collect();
        for id in ids {
            self.files.borrow_mut().remove(&id);
            let _ = std::fs::remove_file(self.path(&id));
        }
    }
}

// ---------------------------------------------------------------------------------------------
// HTTP

fn module(server: &Server) -> Option<&Upload> {
    Cx::new(server).module::<Upload>()
}

/// Headers every answer of the upload paths carries: browsers' scripts of any origin may
/// upload and download (a web client on another host), nothing served may run.
fn guarded(mut r: Response<Body>) -> Response<Body> {
    let h = r.headers_mut();
    h.insert(
        header::ACCESS_CONTROL_ALLOW_ORIGIN,
        HeaderValue::from_static("*"),
    );
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static("default-src 'none'; frame-ancestors 'none'; sandbox"),
    );
    r
}

pub(super) async fn handle(server: &Rc<Server>, req: Request<Incoming>) -> Response<Body> {
    let Some(upload) = module(server) else {
        return status(StatusCode::NOT_FOUND);
    };
    // Only the ID is read from the path; the name after it is the client's to keep.
    let rest = &req.uri().path()[PREFIX.len()..];
    let Some((id, _name)) = rest.split_once('/').filter(|(id, _)| is_id(id)) else {
        return guarded(status(StatusCode::NOT_FOUND));
    };
    let id = id.to_owned();
    let r = match *req.method() {
        Method::PUT => put(server, upload, id, req).await,
        Method::GET | Method::HEAD => get(upload, &id, req.method() == Method::HEAD).await,
        Method::OPTIONS => {
            let mut r = status(StatusCode::NO_CONTENT);
            let h = r.headers_mut();
            h.insert(
                header::ACCESS_CONTROL_ALLOW_METHODS,
                HeaderValue::from_static("GET, HEAD, PUT, OPTIONS"),
            );
            h.insert(
                header::ACCESS_CONTROL_ALLOW_HEADERS,
                HeaderValue::from_static("Content-Type"),
            );
            h.insert(
                header::ACCESS_CONTROL_MAX_AGE,
                HeaderValue::from_static("86400"),
            );
            r
        }
        _ => {
            let mut r = status(StatusCode::METHOD_NOT_ALLOWED);
            r.headers_mut().insert(
                header::ALLOW,
                HeaderValue::from_static("GET, HEAD, PUT, OPTIONS"),
            );
            r
        }
    };
    guarded(r)
}

async fn get(upload: &Upload, id: &str, head: bool) -> Response<Body> {
    let Some(stored) = upload.files.borrow().get(id).cloned() else {
        return status(StatusCode::NOT_FOUND);
    };
    let path = upload.path(id);
    let file = match smol::unblock(move || std::fs::File::open(path)).await {
        Ok(f) => f,
        Err(e) => {
            log::warn!("upload {id} cannot be read: {e}");
            return status(StatusCode::NOT_FOUND);
        }
    };
    let mut r = Response::new(match head {
        true => Body::Empty,
        false => Body::file(file, stored.size),
    });
    let h = r.headers_mut();
    let value = |s: &str| HeaderValue::from_str(s).unwrap_or(HeaderValue::from_static(""));
    h.insert(header::CONTENT_TYPE, value(&stored.content_type));
    h.insert(header::CONTENT_LENGTH, stored.size.into());
    let disposition = match inline(&stored.content_type) {
        true => "inline",
        false => "attachment",
    };
    let name = utf8_percent_encode(&stored.name, SEGMENT);
    h.insert(
        header::CONTENT_DISPOSITION,
        value(&format!("{disposition}; filename*=UTF-8''{name}")),
    );
    h.insert(
        header::CACHE_CONTROL,
        HeaderValue::from_static("public, max-age=31536000, immutable"),
    );
    r
}

/// An upload under way: its partial file goes and its slot may be used again unless it
/// completes, however it ends (an error, a dropped connection, a closing server).
struct Partial {
    server: Rc<Server>,
    id: String,
    path: PathBuf,
    done: bool,
}

impl Drop for Partial {
    fn drop(&mut self) {
        if self.done {
            return;
        }
        // One unlink of a file this upload made; rare enough to do here.
        let _ = std::fs::remove_file(&self.path);
        if let Some(upload) = module(&self.server)
            && let Some(slot) = upload.slots.borrow_mut().get_mut(&self.id)
        {
            slot.busy = false;
        }
    }
}

fn refuse(code: StatusCode, why: &str) -> Response<Body> {
    let mut r = Response::new(Body::bytes(Bytes::from(format!("{why}\n"))));
    *r.status_mut() = code;
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    r
}

async fn put(
    server: &Rc<Server>,
    upload: &Upload,
    id: String,
    req: Request<Incoming>,
) -> Response<Body> {
    let slot = {
        let mut slots = upload.slots.borrow_mut();
        match slots.get_mut(&id) {
            Some(s) if s.busy => {
                return refuse(StatusCode::CONFLICT, "an upload to this slot is under way");
            }
            Some(s) if s.expires > Instant::now() => {
                s.busy = true;
                s.clone()
            }
            _ => return refuse(StatusCode::FORBIDDEN, "no such upload slot, or it expired"),
        }
    };
    let mut partial = Partial {
        server: server.clone(),
        path: upload.part_path(&id),
        id: id.clone(),
        done: false,
    };
    let headers = req.headers();
    let length = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    match length {
        None => return refuse(StatusCode::LENGTH_REQUIRED, "a Content-Length is required"),
        Some(n) if n > slot.size => {
            return refuse(
                StatusCode::PAYLOAD_TOO_LARGE,
                "the body is larger than the slot",
            );
        }
        Some(n) if n != slot.size => {
            return refuse(
                StatusCode::BAD_REQUEST,
                "the Content-Length is not the slot's size",
            );
        }
        Some(_) => {}
    }
    let given = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .map(media_type);
    let content_type = match (&slot.content_type, given) {
        (_, Some(None)) => {
            return refuse(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "the Content-Type is not valid",
            );
        }
        (Some(want), Some(Some(got))) if *want != got => {
            return refuse(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "the Content-Type is not the slot's",
            );
        }
        (Some(want), _) => want.clone(),
        (None, Some(Some(got))) => got,
        (None, None) => "application/octet-stream".into(),
    };
    let path = partial.path.clone();
    let created = smol::unblock(move || {
        use std::os::unix::fs::OpenOptionsExt;
        std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(PRIVATE_FILE)
            .open(path)
    })
    .await;
    let file = match created {
        Ok(f) => f,
        Err(e) => {
            log::error!("cannot store upload {id}: {e}");
            return refuse(
                StatusCode::INTERNAL_SERVER_ERROR,
                "the file cannot be stored",
            );
        }
    };
    let mut file = smol::Unblock::with_capacity(super::CHUNK, file);
    let mut body = req.into_body();
    let mut written = 0u64;
    while let Some(frame) = body.frame().await {
        let Ok(frame) = frame else {
            // The client went away mid-body; nobody reads an answer.
            return refuse(StatusCode::BAD_REQUEST, "the body ended early");
        };
        let Ok(data) = frame.into_data() else {
            continue;
        };
        written += data.len() as u64;
        if written > slot.size {
            return refuse(
                StatusCode::PAYLOAD_TOO_LARGE,
                "the body is larger than the slot",
            );
        }
        if let Err(e) = file.write_all(&data).await {
            log::error!("cannot store upload {id}: {e}");
            return refuse(
                StatusCode::INSUFFICIENT_STORAGE,
                "the file cannot be stored",
            );
        }
    }
    if written != slot.size {
        return refuse(StatusCode::BAD_REQUEST, "the body is shorter than the slot");
    }
    if let Err(e) = file.flush().await {
        log::error!("cannot store upload {id}: {e}");
        return refuse(
            StatusCode::INSUFFICIENT_STORAGE,
            "the file cannot be stored",
        );
    }
    let file = file.into_inner().await;
    let (from, to) = (partial.path.clone(), upload.path(&id));
    let kept = smol::unblock(move || {
        file.sync_all()?;
        std::fs::rename(from, to)
    })
    .await;
    if let Err(e) = kept {
        log::error!("cannot store upload {id}: {e}");
        return refuse(
            StatusCode::INSUFFICIENT_STORAGE,
            "the file cannot be stored",
        );
    }
    // From here on the file is the final one: on failure it goes as the partial one would.
    partial.path = upload.path(&id);
    if !server.account_exists(&slot.user) {
        return refuse(StatusCode::FORBIDDEN, "the account was removed");
    }
    let stored = Stored {
        user: slot.user.clone(),
        size: slot.size,
        created: unix(server.now()),
        content_type,
        name: slot.name.clone(),
    };
    let record = UPLOADS.put(&slot.user, &id, stored.encode());
    if let Err(e) = server.store.commit(vec![record]).await {
        log::error!("cannot record upload {id}: {e}");
        return refuse(
            StatusCode::INTERNAL_SERVER_ERROR,
            "the file cannot be stored",
        );
    }
    upload.slots.borrow_mut().remove(&id);
    upload.files.borrow_mut().insert(id.clone(), stored);
    partial.done = true;
    log::info!("{} uploaded {written} bytes as {id}", slot.user);
    status(StatusCode::CREATED)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_names_not_paths() {
        for ok in ["photo.jpg", "très cool.jpg", "..hidden", "a..b", "x"] {
            assert!(valid_name(ok), "{ok}");
        }
        for bad in [
            "",
            ".",
            "..",
            "../x",
            "a/b",
            "/etc/passwd",
            "a\\b",
            "a\0b",
            "a\nb",
            "\u{7f}",
        ] {
            assert!(!valid_name(bad), "{bad:?}");
        }
        assert!(!valid_name(&"a".repeat(256)));
    }

    #[test]
    fn content_types() {
        assert_eq!(media_type("image/JPEG").as_deref(), Some("image/jpeg"));
        assert_eq!(
            media_type("text/plain; charset=utf-8").as_deref(),
            Some("text/plain")
        );
        for bad in [
            "",
            "image",
            "/png",
            "image/",
            "a b/c",
            "text/html\r\nX: y",
            "a/b/c",
        ] {
            assert_eq!(media_type(bad), None, "{bad:?}");
        }
        assert!(inline("image/png") && inline("video/mp4") && inline("text/plain"));
        for active in [
            "text/html",
            "image/svg+xml",
            "application/xml",
            "text/javascript",
        ] {
            assert!(!inline(active), "{active}");
        }
    }

    #[test]
    fn records_read_back() {
        let s = Stored {
            user: "alice".into(),
            size: 5,
            created: 1_700_000_000,
            content_type: "image/png".into(),
            name: "a b c.png".into(),
        };
        assert_eq!(Stored::decode("alice", &s.encode()), Some(s));
        assert_eq!(Stored::decode("alice", "x 1 a/b n"), None);
    }

    #[test]
    fn files_expire_in_bounded_turns_and_go_with_their_account() {
        let t = crate::modules::testing::TestRouter::new();
        let dir = tempfile::tempdir().unwrap();
        let upload = Upload {
            domain: "upload.localhost".into(),
            dir: dir.path().to_owned(),
            config: Config {
                expire_days: 1,
                ..Config::default()
            },
            slots: RefCell::default(),
            files: RefCell::default(),
        };
        let created = unix(t.router.now());
        let n = DELETE_PER_TURN + 3;
        for i in 0..n {
            let id = hex(&[i as u8; 16]);
            std::fs::write(upload.path(&id), b"x").unwrap();
            let user = if i == 0 { "bob" } else { "alice" };
            let stored = Stored {
                user: user.into(),
                size: 1,
                created,
                content_type: "text/plain".into(),
                name: "x".into(),
            };
            upload.files.borrow_mut().insert(id, stored);
        }
        let files_on_disk = || std::fs::read_dir(dir.path()).unwrap().count();
        // Not yet a day old: nothing goes.
        assert!(!upload.expire(&mut Cx::new(&t.router)));
        assert_eq!(files_on_disk(), n);
        upload.account_removed("bob");
        assert_eq!(files_on_disk(), n - 1);
        t.skip(Duration::from_secs(86_400));
        let mut cx = Cx::new(&t.router);
        assert!(upload.expire(&mut cx), "more are due after one turn");
        assert_eq!(cx.effects.writes.len(), DELETE_PER_TURN);
        assert_eq!(files_on_disk(), n - 1 - DELETE_PER_TURN);
        assert!(!upload.expire(&mut Cx::new(&t.router)));
        assert_eq!(files_on_disk(), 0);
        assert!(upload.files.borrow().is_empty());
    }

    #[test]
    fn ids_are_checked_before_any_path_is_made() {
        assert!(is_id(&hex(&[0xab; 16])));
        for bad in [
            "..",
            "../../etc/passwd",
            "%2e%2e",
            &"A".repeat(32),
            &"0".repeat(31),
        ] {
            assert!(!is_id(bad), "{bad}");
        }
    }
}
