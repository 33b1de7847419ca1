//! Routing of stanzas from bound clients (RFC 6120 §8, RFC 6121 §8), and `apply`, the one
//! place where a stanza's consequences leave memory.
//!
//! Delivery table for a local domain (RFC 6121 §8.5), by addressee and stanza kind:
//!
//! | to                     | message                                  | iq (get/set)            |
//! |------------------------|------------------------------------------|-------------------------|
//! | none / own bare JID    | treated as to own bare JID               | account handlers        |
//! | server domain          | ignored                                  | server handlers         |
//! | bare JID, no account   | service-unavailable (errors dropped)     | service-unavailable     |
//! | bare JID               | chat/normal: highest non-negative        | account handlers for    |
//! |                        | priority resources, else offline;        | that account            |
//! |                        | headline: all non-negative, else dropped;|                         |
//! |                        | groupchat: service-unavailable           |                         |
//! | full JID, connected    | that resource                            | that resource           |
//! | full JID, gone         | chat/normal as to the bare JID; headline | service-unavailable     |
//! |                        | dropped; groupchat: service-unavailable  |                         |
//! | another domain         | remote-server-not-found                  | remote-server-not-found |
//!
//! iq results and errors go to a connected full JID or nowhere. Presence is `presence.rs`.

use crate::error::Error;
use crate::jid::Jid;
use crate::modules::{Cx, Effects, Flow, IqRequest, presence};
use crate::server::Server;
use crate::session::Outbound;
use crate::stanza::{Condition, StanzaError, error_reply, iq_result, stanza_type};
use crate::storage::{Store, Ticket, Write};
use crate::xml::{Element, ns};
use std::rc::Rc;

/// Handles one stanza from the bound session `from`, whose `from` attribute is already stamped.
/// Returns the ticket of writes (the archive) that trail the stanza's delivery: the stanza is
/// durable, and may be acknowledged to its sender, once the ticket resolves.
pub async fn from_client(server: &Rc<Server>, from: &Jid, stanza: Element) -> Option<Ticket> {
    if needs_settled_store(server, from, &stanza)
        && let Err(e) = server.store.barrier().await
    {
        log::error!("waiting for the store: {e}");
    }
    let effects = {
        let mut cx = Cx::new(server);
        let result = match stanza.name.as_str() {
            "message" => message_out(&mut cx, from, stanza.clone()),
            "iq" => iq(&mut cx, from, &stanza),
            _ => presence::from_client(&mut cx, from, stanza.clone()),
        };
        if let Err(e) = result
            && stanza_type(&stanza) != "error"
        {
            cx.send(from.clone(), error_reply(&stanza, &e));
        }
        cx.effects
    };
    match apply_trailing(server, effects).await {
        Ok(ticket) => ticket,
        Err(e) => {
            log::error!("stanza from {from} not processed: {e}");
            if stanza.name == "iq" || stanza.name == "message" {
                let err = StanzaError::new(Condition::InternalServerError);
                deliver(server, from, error_reply(&stanza, &err));
            }
            None
        }
    }
}

/// Stanzas whose handling reads what earlier stanzas wrote without waiting for the disk:
/// initial presence (offline messages stored a moment ago must be delivered now, not at the
/// next login) and iq queries of modules that ask for it (the archive).
fn needs_settled_store(server: &Server, from: &Jid, stanza: &Element) -> bool {
    match stanza.name.as_str() {
        "presence" => {
            stanza.attr("type").is_none()
                && stanza.attr("to").is_none()
                && server
                    .sessions
                    .borrow()
                    .get(from)
                    .is_some_and(|s| !s.available)
        }
        "iq" => stanza.elements().next().is_some_and(|payload| {
            server.modules.iter().any(|m| {
                m.reads_trailing_writes() && m.iq_routes().iter().any(|r| r.ns == payload.ns)
            })
        }),
        _ => false,
    }
}

/// [`apply_trailing`], then waits for the trailing writes too.
pub async fn apply(server: &Rc<Server>, effects: Effects) -> Result<(), Error> {
    if let Some(t) = apply_trailing(server, effects).await? {
        Store::wait(t).await?;
    }
    Ok(())
}

/// Makes the writes durable, then queues the stanzas. Whatever the server promises on the
/// strength of a write (a roster result, "stored for later") is only sent once that write has
/// been committed. Writes that only trail the stanzas (the archive) are submitted without
/// waiting: their ticket is returned. No `RefCell` borrow is held across the await.
pub async fn apply_trailing(
    server: &Rc<Server>,
    effects: Effects,
) -> Result<Option<Ticket>, Error> {
    let Effects {
        mut writes,
        trailing,
        sends,
        closes,
    } = effects;
    let mut ticket = None;
    if writes.is_empty() && !trailing.is_empty() {
        ticket = Some(server.store.submit(trailing)?);
    } else {
        writes.extend(trailing);
    }
    if !writes.is_empty() {
        let staged: Vec<(String, String, u64)> = writes
            .iter()
            .filter_map(|w| match w {
                Write::RosterPut {
                    user, contact, ver, ..
                }
                | Write::RosterDelete { user, contact, ver } => {
                    Some((user.clone(), contact.clone(), *ver))
                }
                _ => None,
            })
            .collect();
        let result = server.store.commit(writes).await;
        for (user, contact, ver) in staged {
            server.unstage_roster(&user, &contact, ver);
        }
        result?;
    }
    for (to, el) in sends {
        deliver(server, &to, el);
    }
    for (conn, err) in closes {
        server.close_conn(conn, err);
    }
    Ok(ticket)
}

/// Queues a stanza for a session. A session whose queue is full is disconnected: it cannot keep
/// up, and its unread stanzas go the way of any dropped connection's.
pub fn deliver(server: &Server, to: &Jid, el: Element) {
    let tx = server.sessions.borrow().get(to).map(|s| s.tx.clone());
    match tx {
        Some(tx) => {
            if tx.len() >= server.config.limits.queue_len
                || tx.try_send(Outbound::Stanza(Box::new(el))).is_err()
            {
                log::warn!("{to} is not reading; disconnecting it");
                tx.close();
            }
        }
        None => log::debug!("dropping a stanza for {to}, which is gone"),
    }
}

fn parse_to(stanza: &Element) -> Result<Option<Jid>, StanzaError> {
    stanza
        .attr("to")
        .map(|t| Jid::parse(t).map_err(|_| StanzaError::new(Condition::JidMalformed)))
        .transpose()
}

/// A message from a local session: the modules' outbound hooks, then routing.
fn message_out(cx: &mut Cx, from: &Jid, mut msg: Element) -> Result<(), StanzaError> {
    let modules = &cx.server.modules;
    for m in modules.iter() {
        if m.message_out(cx, from, &mut msg)? == Flow::Handled {
            return Ok(());
        }
    }
    message(cx, from, msg)
}

fn message(cx: &mut Cx, from: &Jid, mut msg: Element) -> Result<(), StanzaError> {
    let to = parse_to(&msg)?.unwrap_or_else(|| from.bare());
    if to.domain() != cx.domain() {
        return Err(StanzaError::new(Condition::RemoteServerNotFound));
    }
    let Some(user) = to.local() else {
        return Ok(());
    };
    let kind = stanza_type(&msg).to_owned();
    if !cx.server.account_exists(user) {
        return Err(StanzaError::service_unavailable());
    }
    let full_target = !to.is_bare() && cx.server.sessions.borrow().get(&to).is_some();
    let targets = match kind.as_str() {
        _ if full_target => vec![to.clone()],
        "error" => return Ok(()),
        "groupchat" => return Err(StanzaError::service_unavailable()),
        "headline" if !to.is_bare() => return Ok(()),
        "headline" => cx
            .server
            .sessions
            .borrow()
            .available(user)
            .filter(|s| s.priority >= 0)
            .map(|s| s.jid.clone())
            .collect(),
        _ => cx.server.sessions.borrow().message_targets(user),
    };
    let modules = &cx.server.modules;
    for m in modules.iter() {
        if m.message_in(cx, user, &mut msg, &targets)? == Flow::Handled {
            return Ok(());
        }
    }
    if let Some((last, rest)) = targets.split_last() {
        for t in rest {
            cx.send(t.clone(), msg.clone());
        }
        cx.send(last.clone(), msg);
    }
    Ok(())
}

fn iq(cx: &mut Cx, from: &Jid, iq: &Element) -> Result<(), StanzaError> {
    let kind = stanza_type(iq);
    let request = matches!(kind, "get" | "set");
    if !request && kind != "result" && kind != "error" {
        return Err(StanzaError::bad_request(
            "iq type must be get, set, result or error",
        ));
    }
    if iq.attr("id").is_none() {
        return match request {
            true => Err(StanzaError::bad_request("iq without id")),
            false => Ok(()),
        };
    }
    let to = parse_to(iq)?.unwrap_or_else(|| from.bare());
    if to.domain() != cx.domain() {
        return Err(StanzaError::new(Condition::RemoteServerNotFound));
    }
    if !to.is_bare() {
        if to.local().is_some() && cx.server.sessions.borrow().get(&to).is_some() {
            cx.send(to, iq.clone());
            return Ok(());
        }
        return match request {
            true => Err(StanzaError::service_unavailable()),
            false => Ok(()),
        };
    }
    if !request {
        return Ok(());
    }
    let mut children = iq.elements();
    let (Some(payload), None) = (children.next(), children.next()) else {
        return Err(StanzaError::bad_request(
            "an iq get or set has exactly one child",
        ));
    };
    let own = to.local() == from.local();
    if let Some(l) = to.local()
        && !own
        && !cx.server.account_exists(l)
    {
        return Err(StanzaError::service_unavailable());
    }
    let server = cx.server;
    let module = server.modules.iter().find(|m| {
        m.iq_routes().iter().any(|r| {
            r.ns == payload.ns
                && match to.local() {
                    None => r.server,
                    Some(_) if own => r.account,
                    Some(_) => r.others,
                }
        })
    });
    let Some(module) = module else {
        return Err(StanzaError::service_unavailable());
    };
    let req = IqRequest {
        from,
        to: &to,
        set: kind == "set",
        payload,
    };
    let answer = module.handle_iq(cx, &req)?;
    let mut reply = iq_result(iq, answer);
    if iq.attr("to").is_none() {
        reply.remove_attr("from");
    }
    cx.send(from.clone(), reply);
    Ok(())
}

/// Messages left in a closed session's queue: chat and normal ones are routed again as if sent
/// to the bare JID, so they reach another resource or offline storage instead of vanishing.
pub async fn reroute_unsent(server: &Rc<Server>, owner: &Jid, stanzas: Vec<Element>) {
    let effects = {
        let mut cx = Cx::new(server);
        for mut msg in stanzas {
            if msg.name != "message" || !matches!(stanza_type(&msg), "chat" | "normal") {
                continue;
            }
            msg.set_attr("to", owner.bare().to_string());
            let sender = msg.attr("from").and_then(|f| Jid::parse(f).ok());
            let bounce = msg.clone();
            if let (Err(e), Some(sender)) = (message(&mut cx, owner, msg), sender) {
                cx.send(sender, error_reply(&bounce, &e));
            }
        }
        cx.effects
    };
    if let Err(e) = apply(server, effects).await {
        log::error!("could not keep the unsent messages of {owner}: {e}");
    }
}

/// Whether `el` is an iq carrying `payload_name` in `payload_ns` (c2s answers bind and session itself).
pub fn is_iq_for(el: &Element, payload_name: &str, payload_ns: &str) -> bool {
    el.is("iq", ns::CLIENT) && el.elements().any(|c| c.is(payload_name, payload_ns))
}
