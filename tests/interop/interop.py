#!/usr/bin/env python3
"""Interop test: a real XMPP client library (slixmpp) against a running hearth.

Started by tests/interop/run, which starts the server, creates the accounts and passes
the ports, the certificate and the passwords. Every wait is for an event, bounded by a
timeout; nothing sleeps and hopes. Prints one `PASS name` / `FAIL name: reason` line per
scenario and ends with `N passed, M failed`; the exit code is 1 if any scenario failed.

The scenarios run in order and share two clients, so a failure early on (login, say)
usually makes the later ones fail too: read the first FAIL first.
"""

import argparse
import asyncio
import datetime
import logging
import os
import signal
import ssl
import sys
import traceback
import uuid

import slixmpp
from slixmpp.exceptions import IqError, IqTimeout
from slixmpp.xmlstream.handler import Callback
from slixmpp.xmlstream.matcher import MatchXPath

NS_CLIENT = "jabber:client"
NS_ROSTER = "jabber:iq:roster"
NS_DELAY = "urn:xmpp:delay"
NS_DISCO_INFO = "http://jabber.org/protocol/disco#info"
NS_PING = "urn:xmpp:ping"

WAIT = 10.0  # seconds for any one expected event
SCENARIO_TIMEOUT = 60.0  # seconds for a whole scenario
MECH = "SCRAM-SHA-256"


class Fail(Exception):
    """A check failed; the message says what was expected and what happened."""


def check(cond, msg):
    if not cond:
        raise Fail(msg)


def short(stanza):
    text = str(stanza)
    return text if len(text) <= 400 else text[:400] + "..."


class Inbox:
    """Stanzas a client received and no check has taken yet, in arrival order."""

    def __init__(self):
        self.items = []
        self._changed = asyncio.Event()

    def put(self, kind, stanza):
        self.items.append((kind, stanza))
        self._changed.set()

    def peek(self, kind):
        return [st for k, st in self.items if k == kind]

    async def expect(self, kind, pred, what, timeout=WAIT):
        """Takes the first stanza of `kind` matching `pred`, waiting up to `timeout`."""

        async def scan():
            while True:
                for i, (k, st) in enumerate(self.items):
                    if k == kind and pred(st):
                        del self.items[i]
                        return st
                self._changed.clear()
                await self._changed.wait()

        try:
            return await asyncio.wait_for(scan(), timeout)
        except asyncio.TimeoutError:
            seen = self.peek(kind)
            detail = "; ".join(short(s) for s in seen[-5:]) or "nothing"
            raise Fail(f"no {what} within {timeout:.0f}s (unclaimed {kind} stanzas: {detail})")


class Client:
    """One slixmpp connection with everything it receives recorded in an Inbox."""

    def __init__(self, name, jid, password, resource, args, mode):
        self.name = name
        self.mode = mode  # "starttls" or "direct"
        self.args = args
        self.inbox = Inbox()
        self.presence_sent = False
        self.messages_before_presence = []
        x = slixmpp.ClientXMPP(f"{jid}/{resource}", password, sasl_mech=MECH)
        self.x = x
        # Trust exactly the server's self-signed certificate, with host name checking.
        ctx = ssl.create_default_context(cafile=args.ca)
        ctx.check_hostname = True
        ctx.verify_mode = ssl.CERT_REQUIRED
        x.ssl_context = ctx
        x.enable_plaintext = False
        x.enable_starttls = mode == "starttls"
        x.enable_direct_tls = mode == "direct"
        # Subscriptions are answered by the test itself, explicitly.
        x.auto_authorize = None
        x.auto_subscribe = False
        x.whitespace_keepalive = False
        for plugin in ("xep_0030", "xep_0199", "xep_0203"):
            x.register_plugin(plugin)
        x.register_handler(
            Callback(f"{name} messages", MatchXPath(f"{{{NS_CLIENT}}}message"), self._on_message)
        )
        x.add_event_handler("presence", lambda p: self.inbox.put("presence", p))
        x.add_event_handler("roster_update", self._on_roster)
        x.add_event_handler("stream_error", lambda e: self.inbox.put("stream_error", e))
        x.add_event_handler("disconnected", lambda reason: self.inbox.put("disconnected", reason))

    def _on_message(self, msg):
        if not self.presence_sent:
            self.messages_before_presence.append(msg)
        self.inbox.put("message", msg)

    def _on_roster(self, iq):
        if iq["type"] == "set":
            self.inbox.put("push", iq)

    @property
    def jid(self):
        return self.x.boundjid

    async def login(self):
        loop = asyncio.get_running_loop()
        session = loop.create_future()

        def settle(result=None, exc=None):
            if not session.done():
                if exc is not None:
                    session.set_exception(exc)
                else:
                    session.set_result(result)

        x = self.x
        x.add_event_handler("session_start", lambda _: settle(True))
        x.add_event_handler("failed_all_auth", lambda _: settle(exc=Fail("authentication failed")))
        x.add_event_handler("no_auth", lambda _: settle(exc=Fail(f"server offered no usable mechanism (wanted {MECH})")))
        x.add_event_handler("connection_failed", lambda e: settle(exc=Fail(f"connection failed: {e}")))
        x.add_event_handler("ssl_invalid_chain", lambda e: settle(exc=Fail(f"TLS certificate rejected: {e}")))
        x.add_event_handler("stream_error", lambda e: settle(exc=Fail(f"stream error: {short(e)}")))
        x.add_event_handler("disconnected", lambda _: settle(exc=Fail("disconnected before the session started")))
        port = self.args.c2s_port if self.mode == "starttls" else self.args.tls_port
        x.connect(self.args.host, port)
        try:
            await asyncio.wait_for(session, WAIT)
        except asyncio.TimeoutError:
            raise Fail(f"{self.name}: no session within {WAIT:.0f}s")
        except Fail as e:
            raise Fail(f"{self.name}: {e}")

    def describe_security(self):
        """Checks how the stream was secured and authenticated; returns a summary."""
        x = self.x
        sock = x.socket
        check(isinstance(sock, (ssl.SSLObject, ssl.SSLSocket)), f"{self.name}: the stream is not TLS-protected")
        started = "starttls" in x.features
        if self.mode == "starttls":
            check(started, f"{self.name}: expected STARTTLS on the c2s port but TLS was not negotiated by STARTTLS")
        else:
            check(not started, f"{self.name}: expected direct TLS but the stream used STARTTLS")
        mechs = x.plugin["feature_mechanisms"]
        used = mechs.mech.name if mechs.mech is not None else None
        check(used == MECH, f"{self.name}: authenticated with {used}, expected {MECH}")
        offered = ",".join(sorted(mechs.mech_list))
        return f"{self.name}: {'STARTTLS' if started else 'direct TLS'} {sock.version()} {used} (offered {offered})"

    async def roster(self):
        iq = self.x.Iq()
        iq["type"] = "get"
        iq.enable("roster")
        res = await iq.send(timeout=WAIT)
        return roster_items(res)

    def send_initial_presence(self):
        self.presence_sent = True
        self.x.send_presence()

    async def disconnect(self):
        await asyncio.wait_for(self.x.disconnect(wait=WAIT / 2), WAIT)

    def abort(self):
        try:
            self.x.cancel_connection_attempt()
            self.x.abort()
        except Exception:  # best effort at the end
            pass


def roster_items(iq):
    """{bare jid: {subscription, ask, name, groups}} from a roster result or push, read from the XML."""
    query = iq.xml.find(f"{{{NS_ROSTER}}}query")
    check(query is not None, f"no roster query in {short(iq)}")
    items = {}
    for item in query.findall(f"{{{NS_ROSTER}}}item"):
        items[item.get("jid")] = {
            "subscription": item.get("subscription", "none"),
            "ask": item.get("ask"),
            "name": item.get("name"),
            "groups": sorted(g.text or "" for g in item.findall(f"{{{NS_ROSTER}}}group")),
        }
    return items


def push_for(jid, **want):
    """Matches a roster push for `jid` whose item has all the attributes in `want`."""
    jid = str(jid)

    def pred(iq):
        try:
            items = roster_items(iq)
        except Fail:
            return False
        item = items.get(jid)
        return item is not None and all(item.get(k) == v for k, v in want.items())

    return pred


def presence_from(jid, ptype, full=False):
    jid = str(jid)

    def pred(p):
        frm = p["from"].full if full else p["from"].bare
        return frm == jid and p["type"] == ptype

    return pred


def delay_of(msg):
    return msg.xml.find(f"{{{NS_DELAY}}}delay")


def body_of(msg):
    return msg["body"]


async def send_message_barrier(client):
    """Round trip to the server: stanzas the client sent before it have been handled."""
    iq = client.x.Iq()
    iq["type"] = "get"
    iq["to"] = client.args.domain
    iq.enable("ping")
    await iq.send(timeout=WAIT)


class Run:
    def __init__(self, args):
        self.args = args
        self.a = None
        self.b = None
        self.a_jid = f"a@{args.domain}"
        self.b_jid = f"b@{args.domain}"
        self.notes = []

    def client(self, name, mode):
        jid = self.a_jid if name == "a" else self.b_jid
        password = self.args.password_a if name == "a" else self.args.password_b
        return Client(name, jid, password, f"interop-{name}", self.args, mode)

    async def login(self):
        """a over STARTTLS, b over direct TLS (XEP-0368), both with SCRAM-SHA-256."""
        self.a = self.client("a", "starttls")
        self.b = self.client("b", "direct")
        await asyncio.gather(self.a.login(), self.b.login())
        self.notes.append(self.a.describe_security())
        self.notes.append(self.b.describe_security())
        for c in (self.a, self.b):
            items = await c.roster()
            check(items == {}, f"{c.name}: a new account's roster is not empty: {items}")
            c.send_initial_presence()
            # Own presence is reflected back to the sending resource (RFC 6121 4.2.2).
            await c.inbox.expect("presence", presence_from(c.jid.full, "available", full=True),
                                 f"{c.name}: own initial presence reflected back")

    async def roster_set(self):
        """a adds b with a name and a group; the push and a fresh roster get show it."""
        a = self.a
        iq = a.x.Iq()
        iq["type"] = "set"
        iq["roster"]["items"] = {self.b_jid: {"name": "Bee", "groups": ["Family"]}}
        res = await iq.send(timeout=WAIT)
        check(res["type"] == "result", f"roster set answered {short(res)}")
        push = await a.inbox.expect("push", push_for(self.b_jid, name="Bee"), "roster push for b")
        item = roster_items(push)[self.b_jid]
        check(item["groups"] == ["Family"], f"push has groups {item['groups']}, expected ['Family']")
        check(item["subscription"] == "none", f"push has subscription {item['subscription']}, expected none")
        items = await a.roster()
        check(self.b_jid in items, f"b missing from a's roster: {items}")
        got = items[self.b_jid]
        check((got["name"], got["groups"], got["subscription"]) == ("Bee", ["Family"], "none"),
              f"a's roster item for b is {got}, expected name Bee, group Family, subscription none")

    async def subscription(self):
        """a subscribes to b, b approves, b subscribes back, a approves: both end 'both'."""
        a, b = self.a, self.b
        # a -> b
        a.x.send_presence(pto=self.b_jid, ptype="subscribe")
        await a.inbox.expect("push", push_for(self.b_jid, subscription="none", ask="subscribe"),
                             "a: roster push for b with ask=subscribe")
        await b.inbox.expect("presence", presence_from(self.a_jid, "subscribe"), "b: subscribe from a")
        b.x.send_presence(pto=self.a_jid, ptype="subscribed")
        await b.inbox.expect("push", push_for(self.a_jid, subscription="from"),
                             "b: roster push for a with subscription=from")
        await a.inbox.expect("presence", presence_from(self.b_jid, "subscribed"), "a: subscribed from b")
        await a.inbox.expect("push", push_for(self.b_jid, subscription="to"),
                             "a: roster push for b with subscription=to")
        # b's current presence goes to a once a's subscription is approved (RFC 6121 3.1.5/3.1.6).
        await a.inbox.expect("presence", presence_from(b.jid.full, "available", full=True),
                             "a: b's available presence")
        # b -> a
        b.x.send_presence(pto=self.a_jid, ptype="subscribe")
        await b.inbox.expect("push", push_for(self.a_jid, subscription="from", ask="subscribe"),
                             "b: roster push for a with ask=subscribe")
        await a.inbox.expect("presence", presence_from(self.b_jid, "subscribe"), "a: subscribe from b")
        a.x.send_presence(pto=self.b_jid, ptype="subscribed")
        await a.inbox.expect("push", push_for(self.b_jid, subscription="both"),
                             "a: roster push for b with subscription=both")
        await b.inbox.expect("presence", presence_from(self.a_jid, "subscribed"), "b: subscribed from a")
        await b.inbox.expect("push", push_for(self.a_jid, subscription="both"),
                             "b: roster push for a with subscription=both")
        await b.inbox.expect("presence", presence_from(a.jid.full, "available", full=True),
                             "b: a's available presence")
        ra, rb = await a.roster(), await b.roster()
        check(ra.get(self.b_jid, {}).get("subscription") == "both", f"a's roster: {ra}")
        check(rb.get(self.a_jid, {}).get("subscription") == "both", f"b's roster: {rb}")
        check(ra[self.b_jid]["ask"] is None and rb[self.a_jid]["ask"] is None,
              f"ask still pending: a {ra}, b {rb}")
        check((ra[self.b_jid]["name"], ra[self.b_jid]["groups"]) == ("Bee", ["Family"]),
              f"a's item for b lost its name or group: {ra[self.b_jid]}")

    async def message_online(self):
        """a -> b chat message, and b's reply; both arrive live, without a delay element."""
        a, b = self.a, self.b
        body = f"hello b {uuid.uuid4()}"
        a.x.send_message(mto=b.jid.full, mbody=body, mtype="chat")
        msg = await b.inbox.expect("message", lambda m: body_of(m) == body, "b: chat message from a")
        check(msg["type"] == "chat", f"type {msg['type']!r}, expected chat")
        check(msg["from"].full == a.jid.full, f"from {msg['from']}, expected {a.jid.full}")
        check(delay_of(msg) is None, f"a live message carries a delay: {short(msg)}")
        reply = f"hi a {uuid.uuid4()}"
        b.x.send_message(mto=self.a_jid, mbody=reply, mtype="chat")
        msg = await a.inbox.expect("message", lambda m: body_of(m) == reply, "a: reply from b")
        check(msg["type"] == "chat", f"reply type {msg['type']!r}, expected chat")
        check(msg["from"].full == b.jid.full, f"reply from {msg['from']}, expected {b.jid.full}")

    async def message_offline(self):
        """b goes offline; a sends two messages; b comes back and gets both, delayed, in order."""
        a, b = self.a, self.b
        b_full = b.jid.full
        await b.disconnect()
        await a.inbox.expect("presence", presence_from(b_full, "unavailable", full=True),
                             "a: b's unavailable presence")
        bodies = [f"offline {i} {uuid.uuid4()}" for i in (1, 2)]
        for body in bodies:
            a.x.send_message(mto=self.b_jid, mbody=body, mtype="chat")
        await send_message_barrier(a)  # the server has handled both messages

        self.b = b = self.client("b", "direct")
        await b.login()
        # Like any client: fetch the roster (which makes this resource an interested one,
        # RFC 6121 2.1.6, so it gets roster pushes later), then send initial presence.
        items = await b.roster()
        check(items.get(self.a_jid, {}).get("subscription") == "both",
              f"b's roster after reconnecting: {items}, expected a with subscription both")
        check(not b.inbox.peek("message"),
              f"messages arrived before initial presence: {[short(m) for m in b.inbox.peek('message')]}")
        b.send_initial_presence()
        got = []
        for i in range(len(bodies)):
            got.append(await b.inbox.expect("message", lambda m: body_of(m) in bodies,
                                            f"b: offline message {i + 1} of {len(bodies)}"))
        check([body_of(m) for m in got] == bodies,
              f"offline messages out of order: {[body_of(m) for m in got]}, sent {bodies}")
        for m in got:
            d = delay_of(m)
            check(d is not None, f"offline message without a XEP-0203 delay: {short(m)}")
            stamp = d.get("stamp")
            check(stamp is not None, f"delay without a stamp: {short(m)}")
            try:
                when = datetime.datetime.fromisoformat(stamp.replace("Z", "+00:00"))
            except ValueError:
                raise Fail(f"delay stamp {stamp!r} is not an XEP-0082 date-time")
            check(when.tzinfo is not None, f"delay stamp {stamp!r} has no time zone")
            age = datetime.datetime.now(datetime.timezone.utc) - when
            check(datetime.timedelta(seconds=-5) <= age <= datetime.timedelta(minutes=5),
                  f"delay stamp {stamp!r} is not about now")
            check(m["from"].bare == self.a_jid, f"offline message from {m['from']}, expected {self.a_jid}")
            check(m["type"] == "chat", f"offline message type {m['type']!r}, expected chat")
        check(not b.messages_before_presence, "messages arrived before initial presence")
        extra = [short(m) for m in b.inbox.peek("message")]
        check(not extra, f"unexpected extra messages: {extra}")

    async def disco_ping(self):
        """disco#info on the server lists urn:xmpp:ping, and pinging the server works."""
        a = self.a
        iq = a.x.Iq()
        iq["type"] = "get"
        iq["to"] = self.args.domain
        iq.enable("disco_info")
        res = await iq.send(timeout=WAIT)
        query = res.xml.find(f"{{{NS_DISCO_INFO}}}query")
        check(query is not None, f"no disco#info query in {short(res)}")
        features = {f.get("var") for f in query.findall(f"{{{NS_DISCO_INFO}}}feature")}
        check(NS_PING in features, f"disco#info features lack {NS_PING}: {sorted(features)}")
        check(NS_DISCO_INFO in features, f"disco#info features lack {NS_DISCO_INFO}: {sorted(features)}")
        identities = [(i.get("category"), i.get("type")) for i in query.findall(f"{{{NS_DISCO_INFO}}}identity")]
        check(("server", "im") in identities, f"no server/im identity: {identities}")
        ping = a.x.Iq()
        ping["type"] = "get"
        ping["to"] = self.args.domain
        ping.enable("ping")
        res = await ping.send(timeout=WAIT)
        check(res["type"] == "result", f"ping answered {short(res)}")
        check(res["from"].full == self.args.domain, f"ping answered from {res['from']}")

    async def roster_remove(self):
        """a removes b: a gets a push with subscription=remove and b is gone from a's roster."""
        a = self.a
        iq = a.x.Iq()
        iq["type"] = "set"
        iq["roster"]["items"] = {self.b_jid: {"subscription": "remove"}}
        res = await iq.send(timeout=WAIT)
        check(res["type"] == "result", f"roster remove answered {short(res)}")
        await a.inbox.expect("push", push_for(self.b_jid, subscription="remove"),
                             "a: roster push for b with subscription=remove")
        items = await a.roster()
        check(self.b_jid not in items, f"b still in a's roster after removal: {items}")

    async def roster_remove_contact(self):
        """The contact side of that removal (RFC 6121 2.5.2): b gets unsubscribe and
        unsubscribed from a, and a push leaving a in b's roster with subscription none."""
        b = self.b
        await b.inbox.expect("presence", presence_from(self.a_jid, "unsubscribe"), "b: unsubscribe from a")
        await b.inbox.expect("presence", presence_from(self.a_jid, "unsubscribed"), "b: unsubscribed from a")
        await b.inbox.expect("push", push_for(self.a_jid, subscription="none"),
                             "b: roster push for a with subscription=none")
        items = await b.roster()
        check(items.get(self.a_jid, {}).get("subscription") == "none",
              f"b's roster after a removed b: {items}, expected a with subscription none")

    async def shutdown_notice(self):
        """SIGTERM to the server: each connected client gets the stream error
        system-shutdown (RFC 6120 4.9.3.20), then the server closes the connection."""
        check(self.args.server_pid, "no --server-pid given")
        with open(self.args.sigterm_marker, "w") as f:
            f.write("sent\n")
        os.kill(self.args.server_pid, signal.SIGTERM)
        for c in (self.a, self.b):
            err = await c.inbox.expect("stream_error", lambda e: True, f"{c.name}: a stream error")
            check(err["condition"] == "system-shutdown",
                  f"{c.name}: stream error {err['condition']!r}, expected system-shutdown: {short(err)}")
            await c.inbox.expect("disconnected", lambda r: True, f"{c.name}: the connection closed by the server")

    async def close(self):
        for c in (self.a, self.b):
            if c is None:
                continue
            try:
                await c.disconnect()
            except Exception:
                c.abort()


async def main(args):
    run = Run(args)
    scenarios = [
        ("login", run.login),
        ("roster_set", run.roster_set),
        ("subscription", run.subscription),
        ("message_online", run.message_online),
        ("message_offline", run.message_offline),
        ("disco_ping", run.disco_ping),
        ("roster_remove", run.roster_remove),
        ("roster_remove_contact", run.roster_remove_contact),
    ]
    if args.server_pid:
        scenarios.append(("shutdown_notice", run.shutdown_notice))
    passed = failed = 0
    logged_in = False
    for name, fn in scenarios:
        if name != "login" and not logged_in:
            failed += 1
            print(f"FAIL {name}: not run, login failed", flush=True)
            continue
        try:
            await asyncio.wait_for(fn(), SCENARIO_TIMEOUT)
        except Fail as e:
            failed += 1
            print(f"FAIL {name}: {e}", flush=True)
        except (IqError, IqTimeout) as e:
            failed += 1
            what = short(e.iq) if isinstance(e, IqError) else "timed out"
            print(f"FAIL {name}: iq failed: {what}", flush=True)
        except asyncio.TimeoutError:
            failed += 1
            print(f"FAIL {name}: scenario timed out after {SCENARIO_TIMEOUT:.0f}s", flush=True)
        except Exception as e:
            failed += 1
            print(f"FAIL {name}: {type(e).__name__}: {e}", flush=True)
            traceback.print_exc(file=sys.stderr)
        else:
            passed += 1
            print(f"PASS {name}", flush=True)
            logged_in = logged_in or name == "login"
        for note in run.notes:
            print(f"  {note}", flush=True)
        run.notes.clear()
    await run.close()
    print(f"{passed} passed, {failed} failed", flush=True)
    return 1 if failed else 0


def parse_args():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--domain", default="localhost")
    p.add_argument("--c2s-port", type=int, required=True, help="the STARTTLS port")
    p.add_argument("--tls-port", type=int, required=True, help="the direct TLS port")
    p.add_argument("--ca", required=True, help="the server's certificate (PEM), trusted as the only CA")
    p.add_argument("--log", help="write slixmpp's debug log to this file")
    p.add_argument("--server-pid", type=int,
                   help="last, send SIGTERM to this server process and check the clients are told")
    p.add_argument("--sigterm-marker",
                   help="file created just before that SIGTERM is sent (so the caller does not send another)")
    args = p.parse_args()
    if args.server_pid and not args.sigterm_marker:
        p.error("--server-pid needs --sigterm-marker")
    args.password_a = os.environ["INTEROP_PASSWORD_A"]
    args.password_b = os.environ["INTEROP_PASSWORD_B"]
    return args


if __name__ == "__main__":
    args = parse_args()
    if args.log:
        logging.basicConfig(filename=args.log, level=logging.DEBUG,
                            format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    else:
        logging.basicConfig(level=logging.CRITICAL)
    sys.exit(asyncio.run(main(args)))
