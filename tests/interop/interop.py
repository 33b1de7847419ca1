#!/usr/bin/env python3
"""Interop test: a real XMPP client library (slixmpp) against a running hearth.

Started by tests/interop/run, which starts the server, creates the accounts and passes
the ports, the certificate and the passwords. Every wait is for an event, bounded by a
timeout; nothing sleeps and hopes. Prints one `PASS name` / `FAIL name: reason` line per
scenario and ends with `N passed, M failed`; the exit code is 1 if any scenario failed.

The scenarios run in order and share two clients, so a failure early on (login, say)
usually makes the later ones fail too: read the first FAIL first. a uses slixmpp's own
plugins for stream management (XEP-0198, enabled with resumption at login), client state
indication (XEP-0352), the archive (XEP-0313 with XEP-0059 paging) and stanza-ids
(XEP-0359); a second resource of a (a2) uses carbons (XEP-0280); a third account c only
sends one message, for the archive's 'with' filter, and later reads another account's open
PEP node as a stranger. Two more accounts, d and e, have two OMEMO devices each
(slixmpp-omemo, XEP-0384 in both versions): their keys live in hearth's PEP (XEP-0163), their
device lists reach each other by PEP notifications filtered by entity caps (XEP-0115), and
they exchange encrypted messages live, as carbons and through the archive. a and b chat in a
room with slixmpp's XEP-0045 plugin, with the room's archive and self-ping. a and a2 also use slixmpp's blocking
plugin (XEP-0191), and a's disco#info on its own bare JID finds the archive (XEP-0313 §6.4,
as Dino and Conversations look for it). The blocking scenario runs after every scenario that
reads a's archive and leaves nothing blocked.

Accounts f, g and h try the profile features: f publishes a XEP-0084 avatar with slixmpp's
plugin, its contact g gets the metadata notification, fetches the image by id and sees it in
f's vCard (XEP-0054, XEP-0398) and as the photo hash in f's presence (XEP-0153); g sets a
vCard avatar with the XEP-0153 plugin and f sees its hash and photo. f's bookmarks go both
ways between XEP-0402 (PEP) and a second resource using XEP-0048 in private storage
(XEP-0049), and stay f's. h changes its password (XEP-0077): its other session ends, the old
password no longer logs in, the new one does; then h removes its account and f, its contact,
sees it go. The server's STUN/TURN service (XEP-0215) gives TURN credentials that verify with
the shared secret the run script configured.

The family room puts three kinds of client in one members-only, non-anonymous room at once:
mum's phone (slixmpp over direct TLS with stream management, as Conversations connects), dad's
desktop (slixmpp over STARTTLS) and kid's browser (xmpp.js over WebSocket, room.mjs). The phone
uploads a photo (XEP-0363) and posts its URL with XEP-0066 oob; the desktop and the browser
download it byte for byte, and the browser's answer reaches both.
"""

import argparse
import asyncio
import base64
import datetime
import hashlib
import hmac
import io
import json
import logging
import os
import signal
import ssl
import sys
import traceback
import urllib.request
import uuid

import slixmpp
from omemo.storage import Just, Nothing, Storage
from slixmpp.exceptions import IqError, IqTimeout, PresenceError
from slixmpp.plugins import register_plugin
from slixmpp_omemo import XEP_0384, TrustLevel
from slixmpp.xmlstream import ET, ElementBase
from slixmpp.xmlstream.handler import Callback
from slixmpp.xmlstream.matcher import MatchXPath

NS_CLIENT = "jabber:client"
NS_ROSTER = "jabber:iq:roster"
NS_DELAY = "urn:xmpp:delay"
NS_DISCO_INFO = "http://jabber.org/protocol/disco#info"
NS_PING = "urn:xmpp:ping"
NS_SM = "urn:xmpp:sm:3"
NS_CARBONS = "urn:xmpp:carbons:2"
NS_FORWARD = "urn:xmpp:forward:0"
NS_MAM = "urn:xmpp:mam:2"
NS_SID = "urn:xmpp:sid:0"
NS_CHATSTATES = "http://jabber.org/protocol/chatstates"
NS_BLOCKING = "urn:xmpp:blocking"
NS_BLOCKING_ERRORS = "urn:xmpp:blocking:errors"
NS_PUBSUB = "http://jabber.org/protocol/pubsub"
NS_AVATAR_DATA = "urn:xmpp:avatar:data"
NS_AVATAR_METADATA = "urn:xmpp:avatar:metadata"
NS_VCARD_UPDATE = "vcard-temp:x:update"
NS_BOOKMARKS = "urn:xmpp:bookmarks:1"
NS_PUBSUB_EVENT = "http://jabber.org/protocol/pubsub#event"
NS_EXTDISCO = "urn:xmpp:extdisco:2"
NS_OLDMEMO = "eu.siacs.conversations.axolotl"
NS_TWOMEMO = "urn:xmpp:omemo:2"

WAIT = 10.0  # seconds for any one expected event
SCENARIO_TIMEOUT = 60.0  # seconds for a whole scenario
# OMEMO makes keys for five device sessions (100 pre-keys each, in both versions).
SLOW_SCENARIOS = {"omemo": 180.0}
MECH = "SCRAM-SHA-256"


class MemoryStorage(Storage):
    """OMEMO keys and sessions of one device, in memory: a device that reconnects is handed the
    same object, as a client keeps its keys on disk."""

    def __init__(self):
        super().__init__()
        self.data = {}

    async def _load(self, key):
        return Just(self.data[key]) if key in self.data else Nothing()

    async def _store(self, key, value):
        self.data[key] = value

    async def _delete(self, key):
        self.data.pop(key, None)


class OmemoPlugin(XEP_0384):
    """slixmpp-omemo with in-memory storage and blind trust before verification (BTBV), as
    Conversations and Dino trust a contact's devices by default."""

    @property
    def storage(self):
        return self.xmpp.omemo_storage

    @property
    def _btbv_enabled(self):
        return True

    async def _devices_blindly_trusted(self, blindly_trusted, identifier):
        pass

    async def _prompt_manual_trust(self, manually_trusted, identifier):
        session = await self.get_session_manager()
        for device in manually_trusted:
            await session.set_trust(device.bare_jid, device.identity_key, TrustLevel.TRUSTED.value)


register_plugin(OmemoPlugin)


class InteropNotes(ElementBase):
    """An element kept in private storage (XEP-0049) by the private_storage scenario."""

    namespace = "urn:example:interop-notes"
    name = "notes"
    plugin_attrib = "interop_notes"
    interfaces = {"text"}
    sub_interfaces = interfaces


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
        # Everything ever received, in arrival order, claimed or not: for checks of order and
        # of exactly-once delivery ("since this point, exactly these arrived").
        self.history = []
        self._changed = asyncio.Event()

    def put(self, kind, stanza):
        self.items.append((kind, stanza))
        self.history.append((kind, stanza))
        self._changed.set()

    def drop(self, kind):
        """Forgets the unclaimed stanzas of `kind`; returns them."""
        gone = self.peek(kind)
        self.items = [(k, st) for k, st in self.items if k != kind]
        return gone

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

    def __init__(self, name, jid, password, resource, args, mode, plugins=(), omemo=None):
        self.name = name
        self.mode = mode  # "starttls" or "direct"
        self.args = args
        self.inbox = Inbox()
        self.presence_sent = False
        self.messages_before_presence = []
        self.session_starts = 0
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
        for plugin in ("xep_0030", "xep_0199", "xep_0203", *plugins):
            x.register_plugin(plugin)
        if omemo is not None:
            # OMEMO (XEP-0384) with its device lists and bundles in PEP; initialised at bind.
            x.omemo_storage = omemo
            x.register_plugin("xep_0384", module=sys.modules[__name__])
            x.add_event_handler("omemo_initialized", lambda _: self.inbox.put("omemo_ready", True))
            for event in ("twomemo_device_list_publish", "oldmemo_device_list_publish"):
                x.add_event_handler(event, lambda m: self.inbox.put("device_list", m))
        x.register_handler(
            Callback(f"{name} messages", MatchXPath(f"{{{NS_CLIENT}}}message"), self._on_message)
        )
        x.add_event_handler("presence", lambda p: self.inbox.put("presence", p))
        x.add_event_handler("roster_update", self._on_roster)
        x.add_event_handler("stream_error", lambda e: self.inbox.put("stream_error", e))
        x.add_event_handler("disconnected", lambda reason: self.inbox.put("disconnected", reason))
        x.add_event_handler("session_start", self._on_session_start)
        if "xep_0198" in plugins:
            # Stream management as slixmpp's plugin negotiates it; the server's <r/> and <a/>
            # are also recorded (the plugin answers and processes them itself).
            x.add_event_handler("sm_enabled", lambda st: self.inbox.put("sm", ("enabled", st)))
            x.add_event_handler("session_resumed", lambda st: self.inbox.put("sm", ("resumed", st)))
            x.add_event_handler("sm_failed", lambda st: self.inbox.put("sm", ("failed", st)))
            x.register_handler(Callback(f"{name} sm r", MatchXPath(f"{{{NS_SM}}}r"),
                                        lambda st: self.inbox.put("sm_r", st)))
            x.register_handler(Callback(f"{name} sm a", MatchXPath(f"{{{NS_SM}}}a"),
                                        lambda st: self.inbox.put("sm_a", st)))
        if "xep_0191" in plugins:
            # Block list pushes (XEP-0191 3.3-3.5), answered as RFC 6120 8.2.3 requires of any
            # iq set (slixmpp's plugin only raises the event).
            x.add_event_handler("blocked", lambda iq: self._on_block_push("blocked", iq))
            x.add_event_handler("unblocked", lambda iq: self._on_block_push("unblocked", iq))
        if "xep_0280" in plugins:
            x.add_event_handler("carbon_sent", lambda m: self.inbox.put("carbon_sent", m))
            x.add_event_handler("carbon_received", lambda m: self.inbox.put("carbon_received", m))

    def _on_session_start(self, _):
        self.session_starts += 1

    def _on_message(self, msg):
        if not self.presence_sent:
            self.messages_before_presence.append(msg)
        # Archive results and carbon copies are kept apart from ordinary messages.
        if msg.xml.find(f"{{{NS_MAM}}}result") is not None:
            kind = "mam"
        elif any(msg.xml.find(f"{{{NS_CARBONS}}}{k}") is not None for k in ("sent", "received")):
            kind = "carbon"
        else:
            kind = "message"
        self.inbox.put(kind, msg)

    def _on_block_push(self, kind, iq):
        self.inbox.put(kind, iq)
        iq.reply().send()

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


def forwarded_body(inner):
    """The body of a forwarded message as slixmpp's plugins unwrap it (None without a message)."""
    return inner["body"] if isinstance(inner, slixmpp.Message) else None


async def muc_service(client, domain):
    """The room service, found as clients find it: in the server's disco#items, saying it is
    a MUC service in its disco#info."""
    disco = client.x.plugin["xep_0030"]
    items = await disco.get_items(jid=domain, timeout=WAIT)
    services = [str(i[0]) for i in items["disco_items"]["items"]]
    service = f"muc.{domain}"
    check(service in services, f"the server's disco items {services} lack {service}")
    info = await disco.get_info(jid=service, timeout=WAIT)
    check("http://jabber.org/protocol/muc" in info["disco_info"]["features"],
          f"{service} does not say it is a MUC service: {short(info)}")
    return service


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
        self.a2 = None  # a second resource of a (carbons)
        self.c = None  # a third account (the MAM 'with' filter)
        self.a_jid = f"a@{args.domain}"
        self.b_jid = f"b@{args.domain}"
        self.c_jid = f"c@{args.domain}"
        # Two more accounts, each with two OMEMO devices.
        self.d_jid = f"d@{args.domain}"
        self.e_jid = f"e@{args.domain}"
        # Profiles (avatars, vCards, bookmarks) and account self-service.
        self.f_jid = f"f@{args.domain}"
        self.g_jid = f"g@{args.domain}"
        self.h_jid = f"h@{args.domain}"
        self.f1 = None
        self.g1 = None
        self.h1 = None
        self.notes = []
        # Every client made, replaced or disconnected ones too: slixmpp's tasks of a closed
        # stream may still be finishing, and must not be garbage-collected while pending.
        self.made = []
        # Every archivable message a sent or received, in the order the server handled them:
        # (direction "out" or "in" seen from a, the other party's bare JID, body). The mam
        # scenario expects exactly these in a's archive.
        self.a_exchanged = []
        # Messages a received live, by body: their XEP-0359 stanza-ids are checked against
        # the archive ids.
        self.a_received = {}

    # Plugins beyond disco, ping and delay: a uses stream management (with resumption), client
    # state indication and the archive; a2 carbons; a and a2 blocking; b sends chat states; a
    # and b chat in a room (XEP-0045).
    # Stanza-ids are read with XEP-0359's plugin.
    PLUGINS = {
        "a": ("xep_0198", "xep_0352", "xep_0313", "xep_0359", "xep_0191", "xep_0045"),
        "a2": ("xep_0280", "xep_0359", "xep_0191"),
        "b": ("xep_0085", "xep_0359", "xep_0045"),
        "c": ("xep_0359",),
    }

    def client(self, name, mode):
        account = name.rstrip("0123456789")
        jid = {"a": self.a_jid, "b": self.b_jid, "c": self.c_jid}[account]
        password = {"a": self.args.password_a, "b": self.args.password_b, "c": self.args.password_c}[account]
        c = Client(name, jid, password, f"interop-{name}", self.args, mode, self.PLUGINS[name])
        self.made.append(c)
        return c

    def omemo_client(self, name, storage):
        """Device `name` (d1, d2, e1, e2) of account d or e, with OMEMO keeping its keys in
        `storage`, carbons (XEP-0280) and the archive (XEP-0313)."""
        account = name.rstrip("0123456789")
        jid = {"d": self.d_jid, "e": self.e_jid}[account]
        password = {"d": self.args.password_d, "e": self.args.password_e}[account]
        c = Client(name, jid, password, f"interop-{name}", self.args, "direct",
                   ("xep_0280", "xep_0313", "xep_0359"), omemo=storage)
        self.made.append(c)
        return c

    def profile_client(self, name, plugins, password=None, mode="direct"):
        """Resource `name` (f1, f2, g1, h1, ...) of account f, g or h with `plugins`."""
        account = name.rstrip("0123456789")
        jid = {"f": self.f_jid, "g": self.g_jid, "h": self.h_jid}[account]
        if password is None:
            password = {"f": self.args.password_f, "g": self.args.password_g,
                        "h": self.args.password_h}[account]
        c = Client(name, jid, password, f"interop-{name}", self.args, mode, plugins)
        self.made.append(c)
        return c

    async def profile_up(self, name, plugins, interests=()):
        """Logs in, fetches the roster, asks for PEP notifications of `interests` (XEP-0163
        +notify in its caps) and sends initial presence."""
        c = self.profile_client(name, plugins)
        await c.login()
        await c.roster()
        for ns in interests:
            c.x.plugin["xep_0030"].add_feature(f"{ns}+notify")
        if interests:
            # Before the presence that carries the caps hash, not in the background.
            await c.x.plugin["xep_0115"].update_caps(broadcast=False)
        c.send_initial_presence()
        await c.inbox.expect("presence", presence_from(c.jid.full, "available", full=True),
                             f"{name}: own initial presence")
        return c

    async def befriend(self, c1, c2):
        """A mutual presence subscription between the accounts of two online clients."""
        j1, j2 = c1.jid.bare, c2.jid.bare
        c1.x.send_presence(pto=j2, ptype="subscribe")
        await c2.inbox.expect("presence", presence_from(j1, "subscribe"), f"{c2.name}: subscribe")
        c2.x.send_presence(pto=j1, ptype="subscribed")
        c2.x.send_presence(pto=j1, ptype="subscribe")
        await c1.inbox.expect("presence", presence_from(j2, "subscribe"), f"{c1.name}: subscribe")
        c1.x.send_presence(pto=j2, ptype="subscribed")
        await c1.inbox.expect("push", push_for(j2, subscription="both"), f"{c1.name}: both")
        await c2.inbox.expect("push", push_for(j1, subscription="both"), f"{c2.name}: both")
        await c1.inbox.expect("presence", presence_from(c2.jid.full, "available", full=True),
                              f"{c1.name}: {c2.name}'s presence")
        await c2.inbox.expect("presence", presence_from(c1.jid.full, "available", full=True),
                              f"{c2.name}: {c1.name}'s presence")

    async def avatars(self):
        """XEP-0084 with slixmpp's plugin: f publishes data then metadata; g, subscribed and
        asking for metadata notifications, gets the new id, fetches the image by item id, and
        (XEP-0398) finds it as the PHOTO of f's vCard (XEP-0054) and as the photo hash in f's
        next presence (XEP-0153)."""
        self.f1 = f = await self.profile_up("f1", ("xep_0084", "xep_0054"))
        self.g1 = g = await self.profile_up("g1", ("xep_0084", "xep_0054", "xep_0153"))
        g.x.add_event_handler("avatar_metadata_publish", lambda m: g.inbox.put("avatar_meta", m))
        await self.befriend(f, g)
        image = os.urandom(3000)
        avatar_id = hashlib.sha1(image).hexdigest()
        await f.x.plugin["xep_0084"].publish_avatar(image, timeout=WAIT)
        await f.x.plugin["xep_0084"].publish_avatar_metadata(
            [{"id": avatar_id, "type": "image/png", "bytes": len(image)}], timeout=WAIT)

        def announces(m):
            items = m.xml.find(f"{{{NS_PUBSUB_EVENT}}}event/{{{NS_PUBSUB_EVENT}}}items")
            return (m["from"].bare == self.f_jid and items is not None
                    and any(i.get("id") == avatar_id for i in items))

        await g.inbox.expect("avatar_meta", announces, "g: f's avatar metadata notification")
        res = await g.x.plugin["xep_0084"].retrieve_avatar(slixmpp.JID(self.f_jid), avatar_id,
                                                            timeout=WAIT)
        data = res.xml.find(f".//{{{NS_AVATAR_DATA}}}data")
        check(data is not None and base64.b64decode(data.text) == image,
              f"g: the fetched avatar is not the image f published: {short(res)}")
        vcard = await g.x.plugin["xep_0054"].get_vcard(slixmpp.JID(self.f_jid), cached=False,
                                                       timeout=WAIT)
        binval = vcard.xml.find(".//{vcard-temp}PHOTO/{vcard-temp}BINVAL")
        check(binval is not None and base64.b64decode(binval.text) == image,
              f"g: f's vCard does not show the PEP avatar: {short(vcard)}")
        f.x.send_presence(pstatus="with an avatar")

        def hashed(p):
            photo = p.xml.find(f"{{{NS_VCARD_UPDATE}}}x/{{{NS_VCARD_UPDATE}}}photo")
            return (p["from"].full == f.jid.full and p["status"] == "with an avatar"
                    and photo is not None and photo.text == avatar_id)

        await g.inbox.expect("presence", hashed, "g: f's presence with the avatar's hash")
        self.notes.append(f"avatar {avatar_id[:12]}: notified, fetched by id, in the vCard and presence")

    async def vcard(self):
        """XEP-0054 and XEP-0153 with slixmpp's plugins: g publishes a vCard, then sets an
        avatar with the XEP-0153 plugin (vCard PHOTO, then presence); f reads the vCard with its
        photo and sees the photo's hash in g's presence."""
        f, g = self.f1, self.g1
        check(f is not None and g is not None, "the avatars scenario did not leave f and g online")
        vcard = g.x.plugin["xep_0054"].make_vcard()
        vcard["FN"] = "Gee Interop"
        vcard["NICKNAME"] = "gee"
        await g.x.plugin["xep_0054"].publish_vcard(vcard, timeout=WAIT)
        image = os.urandom(800)
        await g.x.plugin["xep_0153"].set_avatar(avatar=image, mtype="image/png", timeout=WAIT)

        def hashed(p):
            photo = p.xml.find(f"{{{NS_VCARD_UPDATE}}}x/{{{NS_VCARD_UPDATE}}}photo")
            return (p["from"].bare == self.g_jid and photo is not None
                    and photo.text == hashlib.sha1(image).hexdigest())

        await f.inbox.expect("presence", hashed, "f: g's presence with its photo's hash")
        got = await f.x.plugin["xep_0054"].get_vcard(slixmpp.JID(self.g_jid), cached=False,
                                                     timeout=WAIT)
        check(got["vcard_temp"]["FN"] == "Gee Interop", f"f reads g's vCard as {short(got)}")
        binval = got.xml.find(".//{vcard-temp}PHOTO/{vcard-temp}BINVAL")
        check(binval is not None and base64.b64decode(binval.text) == image,
              f"f: g's vCard photo is not the image g set: {short(got)}")

    async def bookmarks(self):
        """XEP-0402 bookmarks published by f1 with XEP-0060 publish-options reach f2, a second
        resource asking for them (+notify); f2 reads them through slixmpp's XEP-0048 plugin from
        private storage (XEP-0049), adds one there, and f1 reads both from PEP; g may not."""
        f1, g = self.f1, self.g1
        check(f1 is not None and g is not None, "the avatars scenario did not leave f and g online")
        f2 = await self.profile_up("f2", ("xep_0048", "xep_0049", "xep_0060", "xep_0163"),
                                   interests=(NS_BOOKMARKS,))
        room = "family@muc.example.org"
        conference = ET.fromstring(
            f"<conference xmlns='{NS_BOOKMARKS}' name='Family' autojoin='true'><nick>eff</nick></conference>")
        options = f1.x.plugin["xep_0004"].make_form(ftype="submit")
        for var, value in (("FORM_TYPE", "http://jabber.org/protocol/pubsub#publish-options"),
                           ("pubsub#persist_items", "true"), ("pubsub#max_items", "max"),
                           ("pubsub#send_last_published_item", "never"),
                           ("pubsub#access_model", "whitelist")):
            options.add_field(var=var, value=value, ftype="hidden" if var == "FORM_TYPE" else None)
        await f1.x.plugin["xep_0060"].publish(slixmpp.JID(self.f_jid), NS_BOOKMARKS, id=room,
                                              payload=conference, options=options, timeout=WAIT)

        def bookmark_event(rid):
            def pred(m):
                items = m.xml.find(f"{{{NS_PUBSUB_EVENT}}}event/{{{NS_PUBSUB_EVENT}}}items")
                return (items is not None and items.get("node") == NS_BOOKMARKS
                        and any(i.get("id") == rid for i in items))
            return pred

        await f2.inbox.expect("message", bookmark_event(room), "f2: the new bookmark's notification")
        res = await f2.x.plugin["xep_0048"].get_bookmarks(method="xep_0049", timeout=WAIT)
        confs = {slixmpp.JID(c["jid"]).bare: c for c in res["private"]["bookmarks"]["conferences"]}
        check(room in confs and confs[room]["name"] == "Family" and confs[room]["nick"] == "eff",
              f"f2 reads the private storage bookmarks as {short(res)}")
        legacy = f2.x.plugin["xep_0048"].stanza.Bookmarks()
        legacy.add_conference(room, "eff", name="Family", autojoin=True)
        legacy.add_conference("club@muc.example.org", "effie", name="Club", autojoin=False)
        await f2.x.plugin["xep_0048"].set_bookmarks(legacy, method="xep_0049", timeout=WAIT)
        await f2.inbox.expect("message", bookmark_event("club@muc.example.org"),
                              "f2: the notification of the bookmark it added as XEP-0048")
        res = await f1.x.plugin["xep_0060"].get_items(slixmpp.JID(self.f_jid), NS_BOOKMARKS,
                                                      timeout=WAIT)
        ids = sorted(i["id"] for i in res["pubsub"]["items"])
        check(ids == ["club@muc.example.org", room], f"f1 reads the XEP-0402 bookmarks {ids}")
        try:
            await g.x.plugin["xep_0060"].get_items(slixmpp.JID(self.f_jid), NS_BOOKMARKS,
                                                   timeout=WAIT)
            raise Fail("g read f's bookmarks")
        except IqError as e:
            check(e.condition == "not-allowed", f"g reading f's bookmarks: {short(e.iq)}")
        await f2.disconnect()

    async def private_storage(self):
        """XEP-0049 through slixmpp's plugin: f stores an element of its own and reads it back;
        g, storing nothing, reads nothing under that name."""
        f, g = self.f1, self.g1
        check(f is not None and g is not None, "the avatars scenario did not leave f and g online")
        for c in (f, g):
            c.x.register_plugin("xep_0049")
            c.x.plugin["xep_0049"].register(InteropNotes)
        notes = InteropNotes()
        notes["text"] = f"g plays the cello {uuid.uuid4()}"
        await f.x.plugin["xep_0049"].store(notes, timeout=WAIT)
        res = await f.x.plugin["xep_0049"].retrieve("interop_notes", timeout=WAIT)
        check(res["private"]["interop_notes"]["text"] == notes["text"],
              f"f reads back {short(res)}")
        res = await g.x.plugin["xep_0049"].retrieve("interop_notes", timeout=WAIT)
        check(not res["private"]["interop_notes"]["text"], f"g reads f's notes: {short(res)}")

    async def password_change(self):
        """XEP-0077 with slixmpp's plugin: h1 changes the password; h2, another session, is
        ended with not-authorized; the old password is refused and the new one logs in."""
        h1 = await self.profile_up("h1", ("xep_0077",))
        h2 = await self.profile_up("h2", ())
        new_password = f"ph-new-{uuid.uuid4()}"
        res = await h1.x.plugin["xep_0077"].change_password(new_password, jid=self.args.domain,
                                                            timeout=WAIT)
        check(res["type"] == "result", f"change_password answered {short(res)}")
        err = await h2.inbox.expect("stream_error", lambda e: True, "h2: a stream error")
        check(err["condition"] == "not-authorized", f"h2 ended with {short(err)}")
        await send_message_barrier(h1)
        old = self.profile_client("h3", ())
        try:
            await old.login()
            raise Fail("the old password still logs in")
        except Fail as e:
            check("authentication failed" in str(e), f"the old password: {e}")
        old.abort()
        self.args.password_h = new_password
        h4 = await self.profile_up("h4", ("xep_0077",))
        await h4.disconnect()
        self.h1 = h1

    async def account_removal(self):
        """XEP-0077 <remove/> with slixmpp's plugin: h, a contact of f, removes its account;
        its session ends, f sees it go offline and the subscriptions end, and h logs in no
        more."""
        f, h = self.f1, self.h1
        check(f is not None and h is not None, "f or h is not online")
        await self.befriend(f, h)
        res = await h.x.plugin["xep_0077"].cancel_registration(jid=self.args.domain, timeout=WAIT)
        check(res["type"] == "result", f"cancel_registration answered {short(res)}")
        err = await h.inbox.expect("stream_error", lambda e: True, "h: a stream error")
        check(err["condition"] == "not-authorized", f"h ended with {short(err)}")
        await f.inbox.expect("presence", presence_from(h.jid.full, "unavailable", full=True),
                             "f: h's unavailable presence")
        await f.inbox.expect("presence", presence_from(self.h_jid, "unsubscribed"),
                             "f: unsubscribed from h")
        await f.inbox.expect("push", push_for(self.h_jid, subscription="none"),
                             "f: h's roster item with subscription none")
        gone = self.profile_client("h5", ())
        try:
            await gone.login()
            raise Fail("the removed account still logs in")
        except Fail as e:
            check("authentication failed" in str(e), f"the removed account: {e}")
        gone.abort()

    async def external_services(self):
        """XEP-0215: the server lists the STUN/TURN server the run script configured; the TURN
        credentials are <expiry>:<user> and base64(HMAC-SHA1(secret, username)), as coturn's
        use-auth-secret checks them, and they expire in the future."""
        f = self.f1
        check(f is not None, "f is not online")
        iq = f.x.Iq()
        iq["type"] = "get"
        iq["to"] = self.args.domain
        iq.append(ET.fromstring(f"<services xmlns='{NS_EXTDISCO}'/>"))
        res = await iq.send(timeout=WAIT)
        services = res.xml.findall(f"{{{NS_EXTDISCO}}}services/{{{NS_EXTDISCO}}}service")
        turn = [s for s in services if s.get("type") == "turn"]
        check(turn and any(s.get("type") == "stun" for s in services),
              f"no STUN and TURN services in {short(res)}")
        now = datetime.datetime.now(datetime.timezone.utc).timestamp()
        for s in turn:
            username, password = s.get("username"), s.get("password")
            expiry, _, user = username.partition(":")
            want = base64.b64encode(hmac.new(self.args.turn_secret.encode(), username.encode(),
                                             hashlib.sha1).digest()).decode()
            check(password == want, f"TURN password {password!r} is not HMAC-SHA1 of {username!r}")
            check(user == "f" and int(expiry) > now, f"TURN username {username!r}")
        self.notes.append(f"{len(services)} services; TURN credentials verify with the secret")

    async def upload(self):
        """XEP-0363 with slixmpp's own plugin: it finds the service in the server's disco#items,
        reads max-file-size, asks for a slot and PUTs the file over HTTPS (aiohttp); the GET URL
        then serves the same bytes with the type, nosniff and a locked-down CSP."""
        g = self.profile_client("g3", ("xep_0363",))
        await g.login()
        data = os.urandom(300_000)
        plugin = g.x.plugin["xep_0363"]
        url = await plugin.upload_file("family photo.jpg", size=len(data), content_type="image/jpeg",
                                       input_file=io.BytesIO(data), timeout=WAIT)
        check(plugin.upload_service == f"upload.{self.args.domain}",
              f"the upload service found is {plugin.upload_service}")
        check(plugin.max_file_size == 104857600, f"max-file-size read as {plugin.max_file_size}")
        check(url.startswith(f"https://{self.args.domain}") and url.endswith("/family%20photo.jpg"),
              f"GET URL {url}")

        def fetch():
            ctx = ssl.create_default_context(cafile=self.args.ca)
            with urllib.request.urlopen(url, context=ctx, timeout=WAIT) as r:
                return r.read(), r.headers

        body, headers = await asyncio.get_running_loop().run_in_executor(None, fetch)
        check(body == data, f"the download has {len(body)} bytes, not the {len(data)} uploaded")
        check(headers["Content-Type"] == "image/jpeg", f"Content-Type {headers['Content-Type']}")
        check(headers["X-Content-Type-Options"] == "nosniff", "no nosniff")
        check("default-src 'none'" in (headers["Content-Security-Policy"] or ""), "no CSP")
        await g.disconnect()
        self.notes.append(f"{len(data)} bytes up with slixmpp's plugin and back byte for byte: {url}")

    async def websocket(self):
        """XMPP over WebSocket with xmpp.js (@xmpp/client in Node): it finds the endpoint through
        host-meta (XEP-0156) when the server listens on 443, logs in as f over RFC 7395 framing,
        says hello to a slixmpp client on TCP, and answers its ping."""
        g = self.profile_client("g4", ())
        await g.login()
        g.send_initial_presence()
        await g.inbox.expect("presence", presence_from(g.jid.full, "available", full=True),
                             "g4: own initial presence")
        env = dict(os.environ,
                   INTEROP_WS_SERVICE=self.args.ws_service, INTEROP_DOMAIN=self.args.domain,
                   INTEROP_WS_USER="f", INTEROP_WS_PASSWORD=self.args.password_f,
                   INTEROP_PEER=g.jid.full, NODE_EXTRA_CA_CERTS=self.args.ca)
        proc = await asyncio.create_subprocess_exec(
            "node", "--experimental-websocket", "--no-warnings", "websocket.mjs",
            cwd=self.args.node_dir, env=env,
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
        try:
            line = (await asyncio.wait_for(proc.stdout.readline(), WAIT * 2)).decode().strip()
            check(line.startswith("online "), f"xmpp.js did not come online: {line!r}; "
                  f"{(await proc.stderr.read()).decode()[-500:] if not line else ''}")
            _, jid, uri = (line.split(" ") + [""])[:3]
            check(jid.startswith(f"{self.f_jid}/"), f"xmpp.js bound {jid}")
            check(uri.startswith("wss://") and uri.endswith("/xmpp-websocket"),
                  f"xmpp.js connected to {uri!r}, not the WebSocket endpoint")
            hello = await g.inbox.expect("message", lambda m: m["body"] == "hello from xmpp.js",
                                         "g4: the hello from xmpp.js")
            check(hello["from"].full == jid, f"hello from {hello['from']}")
            token = uuid.uuid4().hex
            g.x.send_message(mto=jid, mbody=f"ping {token}", mtype="chat")
            await g.inbox.expect("message", lambda m: m["body"] == f"pong {token}",
                                 "g4: the pong from xmpp.js")
            rest = (await asyncio.wait_for(proc.stdout.read(), WAIT)).decode()
            check("done" in rest, f"xmpp.js said {rest!r}")
            code = await asyncio.wait_for(proc.wait(), WAIT)
            check(code == 0, f"xmpp.js exited {code}")
        finally:
            if proc.returncode is None:
                proc.kill()
                await proc.wait()
        await g.disconnect()
        how = "through host-meta" if "://" not in self.args.ws_service else "given the URL"
        self.notes.append(f"xmpp.js over {uri} ({how}) chatted with slixmpp over TCP")

    async def family_room(self):
        """Issue 10's family room, with three kinds of client in it at once: a phone (slixmpp
        over direct TLS with stream management, as Conversations connects), a desktop (slixmpp
        over STARTTLS) and a browser (xmpp.js over WebSocket, room.mjs). The desktop finds the
        room service in the server's disco items, creates a persistent, members-only,
        non-anonymous room and makes the phone's and the browser's accounts its members; a
        stranger is refused. All three enter and see each other's real JIDs. The phone uploads
        a photo with slixmpp's XEP-0363 plugin and posts its GET URL as Conversations does (the
        body and an XEP-0066 oob url); the desktop and the browser each get it from the phone's
        occupant JID and download the same bytes over HTTPS; the browser answers in the room and
        both slixmpp clients get its message. Then all three leave and each departure reaches
        those still in."""
        d = self.args.domain
        mum_jid, dad_jid, kid_jid = (f"{u}@{d}" for u in ("mum", "dad", "kid"))
        phone = Client("phone", mum_jid, self.args.password_mum, "phone", self.args, "direct",
                       ("xep_0198", "xep_0045", "xep_0066", "xep_0363", "xep_0359"))
        desktop = Client("desktop", dad_jid, self.args.password_dad, "desktop", self.args,
                         "starttls", ("xep_0045", "xep_0066", "xep_0359"))
        stranger = Client("stranger", self.c_jid, self.args.password_c, "interop-c-room",
                          self.args, "direct", ("xep_0045",))
        self.made += [phone, desktop, stranger]
        proc = None
        try:
            await asyncio.gather(phone.login(), desktop.login())
            _, enabled = await phone.inbox.expect("sm", lambda e: e[0] in ("enabled", "failed"),
                                                  "phone: an answer to <enable resume='true'/>")
            check(enabled.name == "enabled" and enabled.xml.get("resume") in ("true", "1"),
                  f"phone: stream management with resumption not enabled: {short(enabled)}")
            security = [phone.describe_security(), desktop.describe_security()]
            for c in (phone, desktop):
                await c.roster()
                c.send_initial_presence()
                await c.inbox.expect("presence", presence_from(c.jid.full, "available", full=True),
                                     f"{c.name}: own initial presence")

            disco = desktop.x.plugin["xep_0030"]
            service = await muc_service(desktop, d)
            room = slixmpp.JID(f"family-{uuid.uuid4().hex[:8]}@{service}")
            muc_dad, muc_mum = desktop.x.plugin["xep_0045"], phone.x.plugin["xep_0045"]
            # The room's presences as they arrive: slixmpp's plugin hides them from the
            # "presence" event, and forgets a room (its own unavailable presence too) when left.
            for c in (desktop, phone):
                c.x.register_handler(Callback(
                    f"{c.name} room presence", MatchXPath(f"{{{NS_CLIENT}}}presence"),
                    lambda p, c=c: p["from"].bare == str(room) and c.inbox.put("room", p)))

            pres, _subject, _occupants, _history = await muc_dad.join_muc_wait(room, "Dad",
                                                                               timeout=WAIT)
            codes = pres["muc"]["status_codes"]
            check({110, 201} <= set(codes), f"desktop: a new room's self-presence has codes {codes}")
            form = await muc_dad.get_room_config(room, timeout=WAIT)
            form.set_values({
                "muc#roomconfig_roomname": "Family",
                "muc#roomconfig_persistentroom": True,
                "muc#roomconfig_membersonly": True,
                "muc#roomconfig_whois": "anyone",
            })
            await muc_dad.set_room_config(room, form, timeout=WAIT)
            info = await disco.get_info(jid=room, timeout=WAIT)
            features = info["disco_info"]["features"]
            for f in ("muc_persistent", "muc_membersonly", "muc_nonanonymous"):
                check(f in features, f"the room's disco#info lacks {f}: {sorted(features)}")
            await muc_dad.send_affiliation_list(room, [(mum_jid, "member"), (kid_jid, "member")],
                                                timeout=WAIT)
            members = await muc_dad.get_affiliation_list(room, "member", timeout=WAIT)
            check(sorted(str(j) for j in members) == sorted([mum_jid, kid_jid]),
                  f"desktop: the room's members are {[str(j) for j in members]}")

            await stranger.login()
            try:
                await stranger.x.plugin["xep_0045"].join_muc_wait(room, "Stranger", timeout=WAIT)
                raise Fail("a stranger entered the members-only room")
            except PresenceError as e:
                check(e.condition == "registration-required",
                      f"stranger: refused with {short(e.presence)}, not registration-required")
            await stranger.disconnect()

            def occupant(c, nick, ptype, real=None):
                """c gets the room's presence of `nick` of type `ptype` (showing `real`)."""
                def pred(p):
                    return (p["from"].bare == str(room) and p["from"].resource == nick
                            and p["type"] == ptype
                            and (real is None or p["muc"]["jid"].bare == real))
                return c.inbox.expect("room", pred, f"{c.name}: {nick}'s {ptype} presence in the room")

            pres, _subject, occupants, _history = await muc_mum.join_muc_wait(room, "Mum",
                                                                              timeout=WAIT)
            codes = pres["muc"]["status_codes"]
            check({100, 110} <= set(codes), f"phone: a non-anonymous room's self-presence has codes {codes}")
            seen = {p["muc"]["nick"]: p["muc"]["jid"].full for p in occupants}
            check(seen.get("Dad") == desktop.jid.full,
                  f"phone: the occupants as the room shows them: {seen}")
            await occupant(desktop, "Mum", "available", mum_jid)

            # The browser.
            reply = f"lovely photo {uuid.uuid4()}"
            env = dict(os.environ,
                       INTEROP_WS_SERVICE=self.args.ws_service, INTEROP_DOMAIN=d,
                       INTEROP_WS_USER="kid", INTEROP_WS_PASSWORD=self.args.password_kid,
                       INTEROP_ROOM=str(room), INTEROP_NICK="Kid", INTEROP_REPLY=reply,
                       NODE_EXTRA_CA_CERTS=self.args.ca)
            proc = await asyncio.create_subprocess_exec(
                "node", "--experimental-websocket", "--no-warnings", "room.mjs",
                cwd=self.args.node_dir, env=env, stdin=asyncio.subprocess.PIPE,
                stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
            browser_events = []  # everything room.mjs reported, in order
            unclaimed = []

            async def browser(kind, what, timeout=WAIT):
                """Takes the first event of `kind` from room.mjs that no check has taken yet."""
                async def read():
                    while True:
                        for i, event in enumerate(unclaimed):
                            if event["event"] == kind:
                                return unclaimed.pop(i)
                        line = await proc.stdout.readline()
                        if not line:
                            err = (await proc.stderr.read()).decode()[-500:]
                            raise Fail(f"browser: ended before {what}; events "
                                       f"{[e['event'] for e in browser_events]}; stderr {err!r}")
                        event = json.loads(line)
                        if event["event"] == "error":
                            raise Fail(f"browser: {event['what']}")
                        browser_events.append(event)
                        unclaimed.append(event)
                try:
                    return await asyncio.wait_for(read(), timeout)
                except asyncio.TimeoutError:
                    raise Fail(f"browser: no {what} within {timeout:.0f}s")

            online = await browser("online", "session", WAIT * 2)
            check(online["jid"].startswith(f"{kid_jid}/"), f"browser: bound {online['jid']}")
            check(online["uri"].startswith("wss://") and online["uri"].endswith("/xmpp-websocket"),
                  f"browser: connected to {online['uri']!r}, not the WebSocket endpoint")
            joined = await browser("joined", "entry to the room")
            check({100, 110} <= set(joined["codes"]) and joined["nick"] == "Kid",
                  f"browser: its own presence in the room {joined}")
            others = {e["nick"]: e["jid"] for e in browser_events if e["event"] == "occupant"}
            check(others == {"Dad": desktop.jid.full, "Mum": phone.jid.full},
                  f"browser: the occupants as the room shows them: {others}")
            for c in (desktop, phone):
                await occupant(c, "Kid", "available", kid_jid)
            roster = sorted(muc_dad.get_roster(room))
            check(roster == ["Dad", "Kid", "Mum"], f"desktop: the room's occupants {roster}")

            # The phone shares a photo.
            photo = os.urandom(6000)
            digest = hashlib.sha256(photo).hexdigest()
            url = await phone.x.plugin["xep_0363"].upload_file(
                "IMG_0042.jpg", size=len(photo), content_type="image/jpeg",
                input_file=io.BytesIO(photo), timeout=WAIT)
            check(url.startswith(f"https://{d}"), f"phone: GET URL {url}")
            post = phone.x.make_message(mto=room, mbody=url, mtype="groupchat")
            post["oob"]["url"] = url
            post.send()

            def the_photo(m):
                return m["type"] == "groupchat" and m["oob"]["url"] == url

            def fetch():
                ctx = ssl.create_default_context(cafile=self.args.ca)
                with urllib.request.urlopen(url, context=ctx, timeout=WAIT) as r:
                    return r.read(), r.headers["Content-Type"]

            for c in (desktop, phone):
                m = await c.inbox.expect("message", the_photo, f"{c.name}: the photo in the room")
                check(m["from"].full == f"{room}/Mum" and body_of(m) == url,
                      f"{c.name}: the photo's message {short(m)}")
                check(delay_of(m) is None, f"{c.name}: the live photo carries a delay: {short(m)}")
            body, ctype = await asyncio.get_running_loop().run_in_executor(None, fetch)
            check(hashlib.sha256(body).hexdigest() == digest and ctype == "image/jpeg",
                  f"desktop: downloaded {len(body)} bytes of {ctype}, not the {len(photo)} uploaded")

            got = await browser("groupchat", "photo message")
            check(got == {"event": "groupchat", "from": f"{room}/Mum", "body": url, "oob": url,
                          "delayed": False}, f"browser: the photo's message {got}")
            down = await browser("downloaded", "download")
            check(down["status"] == 200 and down["type"] == "image/jpeg",
                  f"browser: the download answered {down}")
            check(down["sha256"] == digest and down["bytes"] == len(photo),
                  f"browser: downloaded {down['bytes']} bytes with SHA-256 {down['sha256']}, "
                  f"uploaded {len(photo)} with {digest}")
            await browser("sent", "reply")
            for c in (desktop, phone):
                m = await c.inbox.expect(
                    "message", lambda m: m["type"] == "groupchat" and body_of(m) == reply,
                    f"{c.name}: the browser's message in the room")
                check(m["from"].full == f"{room}/Kid", f"{c.name}: the browser's message from {m['from']}")
            got = await browser("groupchat", "its own message reflected")
            check(got["from"] == f"{room}/Kid" and got["body"] == reply,
                  f"browser: its own message came back as {got}")

            # Everyone leaves, the browser first.
            proc.stdin.write(b"leave\n")
            await proc.stdin.drain()
            left = await browser("left", "leaving")
            check(110 in left["codes"], f"browser: its unavailable self-presence {left}")
            code = await asyncio.wait_for(proc.wait(), WAIT)
            check(code == 0, f"browser: exited {code}")
            for c in (desktop, phone):
                await occupant(c, "Kid", "unavailable")
            muc_mum.leave_muc(room, "Mum")
            await occupant(phone, "Mum", "unavailable")
            await occupant(desktop, "Mum", "unavailable")
            muc_dad.leave_muc(room, "Dad")
            await occupant(desktop, "Dad", "unavailable")
            for c in (phone, desktop):
                await c.disconnect()
        finally:
            if proc is not None and proc.returncode is None:
                proc.kill()
                await proc.wait()
            for c in (phone, desktop, stranger):
                if c.x.is_connected():
                    c.abort()
        self.notes += security
        self.notes.append(f"room {room}: members-only, non-anonymous; a {len(photo)}-byte photo "
                          f"from the phone downloaded byte for byte by the desktop and by xmpp.js "
                          f"over {online['uri']}; the browser's answer reached both")

    def a_sent(self, to, body):
        self.a_exchanged.append(("out", str(to), body))

    def a_got(self, frm, msg):
        self.a_exchanged.append(("in", str(frm), body_of(msg)))
        self.a_received[body_of(msg)] = msg

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
        self.a_sent(self.b_jid, body)
        msg = await b.inbox.expect("message", lambda m: body_of(m) == body, "b: chat message from a")
        check(msg["type"] == "chat", f"type {msg['type']!r}, expected chat")
        check(msg["from"].full == a.jid.full, f"from {msg['from']}, expected {a.jid.full}")
        check(delay_of(msg) is None, f"a live message carries a delay: {short(msg)}")
        reply = f"hi a {uuid.uuid4()}"
        b.x.send_message(mto=self.a_jid, mbody=reply, mtype="chat")
        msg = await a.inbox.expect("message", lambda m: body_of(m) == reply, "a: reply from b")
        self.a_got(self.b_jid, msg)
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
            self.a_sent(self.b_jid, body)
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

    async def account_disco(self):
        """disco#info through slixmpp's xep_0030: a's own bare JID is a registered account that
        hosts the archive (urn:xmpp:mam:2, XEP-0313 6.4: where Dino and Conversations look for
        it); to b, a's account shows only what it is; the server lists urn:xmpp:blocking."""
        a, b = self.a, self.b
        disco = a.x.plugin["xep_0030"]

        def identities_and_features(res, who):
            check(res["type"] == "result", f"{who}: disco#info answered {short(res)}")
            info = res["disco_info"]
            return ({(i[0], i[1]) for i in info["identities"]}, set(info["features"]))

        res = await disco.get_info(jid=self.a_jid, timeout=WAIT)
        check(res["from"].full == self.a_jid, f"a's account answered from {res['from']}")
        ids, features = identities_and_features(res, "a's own account")
        check(("account", "registered") in ids, f"a's account: identities {sorted(ids)}, no account/registered")
        for f in (NS_MAM, NS_MAM + "#extended", NS_SID, NS_DISCO_INFO):
            check(f in features, f"a's account does not list {f}: {sorted(features)}")
        ids, features = identities_and_features(
            await b.x.plugin["xep_0030"].get_info(jid=self.a_jid, timeout=WAIT), "a's account to b")
        check(("account", "registered") in ids, f"a's account to b: identities {sorted(ids)}")
        check(NS_MAM not in features, f"a's account shows b its archive: {sorted(features)}")
        _, features = identities_and_features(
            await disco.get_info(jid=self.args.domain, timeout=WAIT), "the server")
        check(NS_BLOCKING in features, f"the server does not list {NS_BLOCKING}: {sorted(features)}")
        self.notes.append(f"a's account lists {NS_MAM}; the server lists {NS_BLOCKING}")

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

    async def stream_management(self):
        """XEP-0198 through slixmpp's plugin: a enabled stream management with resumption at
        login; messages flow both ways; the server asks for acknowledgements (<r/>), which
        slixmpp answers, and counts a's stanzas exactly. Then a stops reading, b sends two
        messages to a's full JID (the server writes them into a socket nobody reads), a's link
        drops without a stream close (the TCP connection is aborted) and b sends two more; a
        reconnects and resumes the same session, and gets all four exactly once, in order: the
        first two resent as unacknowledged, the last two kept while the session was detached."""
        a, b = self.a, self.b
        x = a.x
        sm = x.plugin["xep_0198"]
        _, enabled = await a.inbox.expect("sm", lambda e: e[0] in ("enabled", "failed"),
                                          "a: an answer to <enable resume='true'/>")
        check(enabled.name == "enabled", f"a: stream management not enabled: {short(enabled)}")
        check(enabled.xml.get("resume") in ("true", "1"),
              f"a: <enabled/> does not allow resumption: {short(enabled)}")
        sm_id = enabled.xml.get("id")
        check(bool(sm_id), f"a: <enabled resume='true'/> without an id: {short(enabled)}")
        check("stream_management" in x.features and sm.enabled_in and sm.enabled_out,
              f"a: slixmpp's xep_0198 is not enabled (features {sorted(x.features)}, "
              f"in {sm.enabled_in}, out {sm.enabled_out})")
        check(sm.sm_id == sm_id, f"a: slixmpp's sm_id {sm.sm_id!r}, the server's id {sm_id!r}")
        check(not a.inbox.peek("message"),
              f"a: unclaimed messages before the exchange: {[short(m) for m in a.inbox.peek('message')]}")
        a.inbox.drop("sm_r")

        # Both ways: two from a, six from b (more than the server's ack_every, 5).
        tag = uuid.uuid4()
        out = [f"sm a->b {i} {tag}" for i in (1, 2)]
        for body in out:
            x.send_message(mto=b.jid.full, mbody=body, mtype="chat")
            self.a_sent(self.b_jid, body)
        for body in out:
            await b.inbox.expect("message", lambda m, body=body: body_of(m) == body, f"b: {body!r}")
        back = [f"sm b->a {i} {tag}" for i in range(1, 7)]
        mark = len(a.inbox.history)
        for body in back:
            b.x.send_message(mto=a.jid.full, mbody=body, mtype="chat")
        for body in back:
            m = await a.inbox.expect("message", lambda m, body=body: body_of(m) == body, f"a: {body!r}")
            self.a_got(self.b_jid, m)
        arrived = [body_of(st) for k, st in a.inbox.history[mark:] if k == "message"]
        check(arrived == back, f"a: messages from b arrived as {arrived}, sent {back}")
        await a.inbox.expect("sm_r", lambda r: True, "a: an <r/> from the server after 6 stanzas")
        # slixmpp answered it with <a h='...'/>; the server took that answer (no stream error,
        # and a round trip after it works).
        await send_message_barrier(a)
        # The server counts every stanza a sent since <enable/>: ask it.
        seq = sm.seq
        sm.request_ack()
        await a.inbox.expect("sm_a", lambda st: st.xml.get("h") == str(seq),
                             f"a: <a h='{seq}'/> (every stanza a sent counted)")
        check(not sm.unacked_queue, f"a: {len(sm.unacked_queue)} stanzas still unacknowledged")

        # a stops reading: what the server sends now reaches a's socket but never slixmpp.
        full = a.jid.full
        starts = a.session_starts
        handled = sm.handled
        mark = len(a.inbox.history)
        check(x.transport is not None, "a: no transport")
        x.transport.pause_reading()
        unread = [f"never read {i} {tag}" for i in (1, 2)]
        for body in unread:
            b.x.send_message(mto=full, mbody=body, mtype="chat")
        await send_message_barrier(b)  # the server has routed both to a's session
        # The link drops: no </stream:stream>, no TLS close_notify, just the TCP connection gone.
        x.transport.abort()
        await a.inbox.expect("disconnected", lambda r: True, "a: the aborted connection noticed by slixmpp")
        check(sm.handled == handled, f"a: slixmpp handled {sm.handled - handled} stanzas while not reading")
        check(sm.sm_id == sm_id, f"a: slixmpp forgot the resumption id ({sm.sm_id!r})")
        away = [f"while away {i} {tag}" for i in (1, 2)]
        for body in away:
            b.x.send_message(mto=full, mbody=body, mtype="chat")
        await send_message_barrier(b)  # the server has handled both
        dropped = unread + away

        x.connect(self.args.host, self.args.c2s_port)
        _, answer = await a.inbox.expect("sm", lambda e: e[0] in ("resumed", "failed", "enabled"),
                                         "a: an answer to <resume/>")
        check(answer.name == "resumed", f"a: the session was not resumed: {short(answer)}")
        check(answer.xml.get("previd") == sm_id,
              f"a: <resumed previd={answer.xml.get('previd')!r}/>, expected {sm_id!r}")
        check(answer.xml.get("h") == str(seq),
              f"a: <resumed h={answer.xml.get('h')!r}/>, but a had sent {seq} stanzas, all acknowledged")
        check(sm.handled >= handled, "a: slixmpp's handled counter went back")
        for body in dropped:
            m = await a.inbox.expect("message", lambda m, body=body: body_of(m) == body,
                                     f"a: {body!r}, sent while the link was down")
            check(m["from"].full == b.jid.full, f"a: {body!r} from {m['from']}, expected {b.jid.full}")
            self.a_got(self.b_jid, m)
        check(a.session_starts == starts, "a: a new session started instead of the old one resuming")
        check(x.boundjid.full == full, f"a: bound to {x.boundjid.full} after resuming, was {full}")
        check(not sm.unacked_queue, f"a: {len(sm.unacked_queue)} stanzas of a resent after resuming")
        # Exactly once: after a new message from b, nothing else has arrived since the drop.
        marker = f"after resume {tag}"
        b.x.send_message(mto=full, mbody=marker, mtype="chat")
        m = await a.inbox.expect("message", lambda m: body_of(m) == marker, "a: a message after resuming")
        self.a_got(self.b_jid, m)
        arrived = [body_of(st) for k, st in a.inbox.history[mark:] if k == "message"]
        check(arrived == dropped + [marker],
              f"a: since the drop received {arrived}, expected {dropped + [marker]} (each once, in order)")
        await send_message_barrier(a)
        self.notes.append(f"a: resumed {sm_id} (server h={seq}, client h={handled}), "
                          f"{len(dropped)} missed messages delivered once")

    async def carbons(self):
        """XEP-0280: a second resource of a (a2) enables carbons; a message a sends to b comes
        to a2 as a <sent/> copy, and one b sends to a's full JID as a <received/> copy. a, which
        did not enable carbons, gets no copies; a2 gets only the copy, not the message."""
        a, b = self.a, self.b
        self.a2 = a2 = self.client("a2", "direct")
        await a2.login()
        res = await a2.x.plugin["xep_0280"].enable(timeout=WAIT)
        check(res["type"] == "result", f"a2: enabling carbons answered {short(res)}")
        a2.send_initial_presence()
        await a2.inbox.expect("presence", presence_from(a2.jid.full, "available", full=True),
                              "a2: own initial presence reflected back")
        mark_a = len(a.inbox.history)

        sent = f"carbon sent {uuid.uuid4()}"
        a.x.send_message(mto=self.b_jid, mbody=sent, mtype="chat")
        self.a_sent(self.b_jid, sent)
        await b.inbox.expect("message", lambda m: body_of(m) == sent, "b: the message from a")
        c = await a2.inbox.expect("carbon_sent", lambda m: forwarded_body(m["carbon_sent"]) == sent,
                                  "a2: a <sent/> carbon of a's message")
        check(c["from"].full == self.a_jid, f"a2: carbon from {c['from']}, expected {self.a_jid}")
        inner = c["carbon_sent"]
        check(inner["from"].full == a.jid.full, f"a2: sent carbon's message from {inner['from']}, expected {a.jid.full}")
        check(inner["to"].bare == self.b_jid, f"a2: sent carbon's message to {inner['to']}, expected {self.b_jid}")

        received = f"carbon received {uuid.uuid4()}"
        b.x.send_message(mto=a.jid.full, mbody=received, mtype="chat")
        m = await a.inbox.expect("message", lambda m: body_of(m) == received, "a: the message from b")
        self.a_got(self.b_jid, m)
        c = await a2.inbox.expect("carbon_received", lambda m: forwarded_body(m["carbon_received"]) == received,
                                  "a2: a <received/> carbon of b's message")
        check(c["from"].full == self.a_jid, f"a2: carbon from {c['from']}, expected {self.a_jid}")
        inner = c["carbon_received"]
        check(inner["from"].full == b.jid.full, f"a2: received carbon's message from {inner['from']}, expected {b.jid.full}")
        check(inner["to"].full == a.jid.full, f"a2: received carbon's message to {inner['to']}, expected {a.jid.full}")
        # Whatever else the server made of these two messages for a and a2 was queued before
        # b's message reached a (and before a2's next iq result): none of it may be a copy
        # for a, or the plain message for a2.
        await send_message_barrier(a2)
        for_a = [short(st) for k, st in a.inbox.history[mark_a:] if k == "carbon"]
        check(not for_a, f"a (carbons not enabled) got carbons: {for_a}")
        plain = [short(m) for m in a2.inbox.peek("message") if body_of(m) in (sent, received)]
        check(not plain, f"a2 got the message itself besides the carbon: {plain}")
        check(not a2.inbox.peek("carbon_sent") and not a2.inbox.peek("carbon_received"),
              f"a2: extra carbons: {[short(m) for m in a2.inbox.peek('carbon_sent') + a2.inbox.peek('carbon_received')]}")
        a2_full = a2.jid.full
        await a2.disconnect()
        self.a2 = None
        await a.inbox.expect("presence", presence_from(a2_full, "unavailable", full=True),
                             "a: a2's unavailable presence")

    async def _mam_pages(self, what, **query):
        """All of a's archive matching `query`, through slixmpp's RSM iterator with pages of 2:
        [(result id, delay stamp, forwarded message)]. Checks page sizes and 'complete'."""
        mam = self.a.x.plugin["xep_0313"]
        pages = []

        async def collect():
            async for page in mam.retrieve(iterator=True, rsm={"max": 2}, **query):
                fin = page.xml.find(f"{{{NS_MAM}}}fin")
                check(fin is not None, f"{what}: a result page without <fin/>: {short(page)}")
                pages.append((list(page["mam_fin"]["results"]), fin.get("complete") in ("true", "1")))

        await asyncio.wait_for(collect(), SCENARIO_TIMEOUT / 3)
        sizes = [len(r) for r, _ in pages]
        check(all(n == 2 for n in sizes[:-1]) and (not sizes or 1 <= sizes[-1] <= 2),
              f"{what}: page sizes {sizes}, asked for pages of 2")
        early = [i for i, (_, complete) in enumerate(pages[:-1]) if complete]
        check(not early, f"{what}: pages {early} of {len(pages)} say complete='true' but more followed")
        items = []
        for results, _ in pages:
            for r in results:
                res = r["mam_result"]
                check(r["from"].full in ("", self.a_jid),
                      f"{what}: a result from {r['from']}, not from a's own account: {short(r)}")
                fwd = r.xml.find(f"{{{NS_MAM}}}result/{{{NS_FORWARD}}}forwarded")
                check(fwd is not None, f"{what}: a result without <forwarded/>: {short(r)}")
                delay = fwd.find(f"{{{NS_DELAY}}}delay")
                check(delay is not None and delay.get("stamp"), f"{what}: a result without a delay stamp: {short(r)}")
                inner = res["forwarded"]["stanza"]
                check(isinstance(inner, slixmpp.Message), f"{what}: a result without a message: {short(r)}")
                items.append((res["id"], delay.get("stamp"), inner))
        # After the last item there is nothing more, and the server says so.
        last = items[-1][0] if items else None
        rsm = {"max": 2, **({"after": last} if last else {})}
        res = await mam.retrieve(rsm=rsm, timeout=WAIT, **query)
        rest = list(res["mam"]["results"])
        fin = res.xml.find(f"{{{NS_MAM}}}fin")
        check(not rest, f"{what}: after the last item the archive still has {[short(m) for m in rest]}")
        check(fin is not None and fin.get("complete") in ("true", "1"),
              f"{what}: the query after the last item lacks complete='true': {short(res)}")
        return items

    async def mam(self):
        """XEP-0313 with XEP-0059 paging through slixmpp's plugin: a third account c sends a a
        message; then a's archive, read in pages of 2, holds every message a exchanged with b
        and c in this run, once each and in order, each with an archive id that equals the
        XEP-0359 stanza-id a got on the live copy; with=b lists only b's, with=c only c's."""
        a = self.a
        self.c = c = self.client("c", "direct")
        await c.login()
        body = f"from c {uuid.uuid4()}"
        c.x.send_message(mto=a.jid.full, mbody=body, mtype="chat")
        m = await a.inbox.expect("message", lambda m: body_of(m) == body, "a: the message from c")
        self.a_got(self.c_jid, m)
        await c.disconnect()
        self.c = None

        def describe(items):
            return [(("out" if inner["from"].bare == self.a_jid else "in"),
                     (inner["to"] if inner["from"].bare == self.a_jid else inner["from"]).bare,
                     inner["body"]) for _, _, inner in items]

        expected = self.a_exchanged
        everything = await self._mam_pages("the whole archive")
        got = describe(everything)
        if got != expected:
            missing = [e for e in expected if e not in got]
            extra = [g for g in got if g not in expected]
            raise Fail(f"a's archive ({len(got)} items) differs from the {len(expected)} messages exchanged: "
                       f"missing {missing}, unexpected {extra}, order {got}")
        ids = [i for i, _, _ in everything]
        check(all(ids) and len(set(ids)) == len(ids), f"archive ids missing or repeated: {ids}")
        stamps = [datetime.datetime.fromisoformat(s.replace("Z", "+00:00")) for _, s, _ in everything]
        check(stamps == sorted(stamps), f"archive delay stamps out of order: {[s for _, s, _ in everything]}")
        now = datetime.datetime.now(datetime.timezone.utc)
        check(all(datetime.timedelta(seconds=-5) <= now - s <= datetime.timedelta(minutes=10) for s in stamps),
              f"archive delay stamps not about now: {[s for _, s, _ in everything]}")
        for (archive_id, _, inner), (direction, _, body) in zip(everything, expected):
            check(inner["type"] == "chat", f"archived {body!r} has type {inner['type']!r}, expected chat")
            if direction != "in":
                continue
            live = self.a_received[body]
            sids = [(e.get("by"), e.get("id")) for e in live.xml.findall(f"{{{NS_SID}}}stanza-id")]
            check(sids == [(self.a_jid, archive_id)],
                  f"live copy of {body!r} has stanza-ids {sids}, expected [({self.a_jid!r}, {archive_id!r})] "
                  f"(one, by a's account, with the archive id)")
            check(live["stanza_id"]["id"] == archive_id, f"slixmpp reads stanza-id {live['stanza_id']['id']!r}")

        for peer in (self.b_jid, self.c_jid):
            items = await self._mam_pages(f"with={peer}", with_jid=slixmpp.JID(peer))
            want = [e for e in expected if e[1] == peer]
            got = describe(items)
            check(got == want, f"with={peer}: {len(got)} items {got}, expected {len(want)} {want}")
            check([i for i, _, _ in items] == [i for (i, _, _), e in zip(everything, expected) if e[1] == peer],
                  f"with={peer}: archive ids differ from the unfiltered query")
        self.notes.append(f"a's archive: {len(everything)} messages "
                          f"({sum(e[1] == self.b_jid for e in expected)} with b, 1 with c)")

    async def csi(self):
        """XEP-0352 through slixmpp's plugin: a says it is inactive; b sends a presence update
        (away), a chat state (composing), another presence update (xa) and then a message with
        a body, all to a's full JID. a gets the composing first, then only the latest presence
        (hearth keeps one per sender while a client is inactive: the 'away' never arriving
        shows the stanzas were held), then the message that flushed them."""
        a, b = self.a, self.b
        check(a.x.plugin["xep_0352"].enabled, "a: the server did not offer urn:xmpp:csi:0")
        check(not a.inbox.peek("message"),
              f"a: unclaimed messages before the test: {[short(m) for m in a.inbox.peek('message')]}")
        a.x.plugin["xep_0352"].send_inactive()
        await send_message_barrier(a)  # the server has taken <inactive/>
        mark = len(a.inbox.history)
        b_full = b.jid.full
        b.x.send_presence(pto=a.jid.full, pshow="away")
        composing = b.x.make_message(mto=a.jid.full, mtype="chat")
        composing["chat_state"] = "composing"
        composing.send()
        b.x.send_presence(pto=a.jid.full, pshow="xa")
        body = f"wake up {uuid.uuid4()}"
        b.x.send_message(mto=a.jid.full, mbody=body, mtype="chat")
        await a.inbox.expect("message", lambda m: body_of(m) == body, "a: the message with a body")

        def describe(kind, st):
            if kind == "presence":
                return f"presence {st.xml.get('type', 'available')} {st['show'] or '-'}"
            states = [e.tag.split("}")[1] for e in st.xml if e.tag.startswith(f"{{{NS_CHATSTATES}}}")]
            return f"message body={body_of(st) == body} states={states}"

        arrived = [describe(k, st) for k, st in a.inbox.history[mark:]
                   if k in ("message", "presence") and st["from"].full == b_full]
        want = ["message body=False states=['composing']", "presence available xa", "message body=True states=[]"]
        check(arrived == want, f"a (inactive) received from b: {arrived}, expected {want}")
        a.inbox.drop("message")
        a.inbox.drop("presence")
        a.x.plugin["xep_0352"].send_active()
        await send_message_barrier(a)

    async def blocking(self):
        """XEP-0191 through slixmpp's xep_0191: a and a second resource a2 read the (empty) block
        list; a blocks b, and both get the push. b's message to a comes back as
        service-unavailable and his ping to a's resource fails the same way; a's message to b
        comes back as not-acceptable with <blocked/>; neither reaches the other. a2 unblocks b
        (both get the push) and messages flow again both ways. Last a blocks two more JIDs and
        unblocks all with an empty <unblock/>: the list is empty again, as the scenarios after
        this one need."""
        a, b = self.a, self.b
        self.a2 = a2 = self.client("a2", "direct")
        await a2.login()
        block_a, block_a2 = a.x.plugin["xep_0191"], a2.x.plugin["xep_0191"]
        for c, plugin in ((a, block_a), (a2, block_a2)):
            jids = await plugin.get_blocked_jids(timeout=WAIT)
            check(jids == set(), f"{c.name}: the block list is {jids}, expected it empty")

        def push(kind, jids):
            want = sorted(jids)

            def pred(iq):
                got = sorted(str(i["jid"]) for i in iq["block" if kind == "blocked" else "unblock"]["items"])
                return got == want
            return pred

        async def pushed(kind, jids, what):
            for c in (a, a2):
                iq = await c.inbox.expect(kind, push(kind, jids), f"{c.name}: the {what} push")
                check(iq["to"].full == c.jid.full, f"{c.name}: a push to {iq['to']}")
                check(iq["from"].full in ("", self.a_jid), f"{c.name}: a push from {iq['from']}")

        res = await block_a.block(slixmpp.JID(self.b_jid), timeout=WAIT)
        check(res["type"] == "result", f"a: block answered {short(res)}")
        await pushed("blocked", [self.b_jid], "block")
        jids = await block_a2.get_blocked_jids(timeout=WAIT)
        check(jids == {slixmpp.JID(self.b_jid)}, f"a2: the block list is {jids}, expected b")

        # b writes to a: an error, and nothing for a.
        tag = uuid.uuid4()
        mark_a, mark_a2 = len(a.inbox.history), len(a2.inbox.history)
        bounced = f"blocked b->a {tag}"
        m = b.x.make_message(mto=self.a_jid, mbody=bounced, mtype="chat")
        m["id"] = f"bounce-{tag}"
        m.send()
        err = await b.inbox.expect("message", lambda m: m["type"] == "error" and m["id"] == f"bounce-{tag}",
                                   "b: an error for the message to a, who blocked him")
        check(err["error"]["condition"] == "service-unavailable",
              f"b: error {err['error']['condition']!r}, expected service-unavailable: {short(err)}")
        check(err["from"].full == self.a_jid, f"b: the error came from {err['from']}, expected {self.a_jid}")
        try:
            await b.x.plugin["xep_0199"].send_ping(a.jid.full, timeout=WAIT)
            raise Fail("b: a ping to a's resource was answered while a blocks b")
        except IqError as e:
            check(e.iq["error"]["condition"] == "service-unavailable",
                  f"b: ping to a failed with {e.iq['error']['condition']!r}, expected service-unavailable")

        # a writes to b: not-acceptable with <blocked/>, and nothing for b.
        mark_b = len(b.inbox.history)
        refused = f"blocked a->b {tag}"
        m = a.x.make_message(mto=self.b_jid, mbody=refused, mtype="chat")
        m["id"] = f"refused-{tag}"
        m.send()
        err = await a.inbox.expect("message", lambda m: m["type"] == "error" and m["id"] == f"refused-{tag}",
                                   "a: an error for the message to b, whom a blocked")
        check(err["error"]["condition"] == "not-acceptable",
              f"a: error {err['error']['condition']!r}, expected not-acceptable: {short(err)}")
        check(err.xml.find(f"{{{NS_CLIENT}}}error/{{{NS_BLOCKING_ERRORS}}}blocked") is not None,
              f"a: the error lacks <blocked xmlns='{NS_BLOCKING_ERRORS}'/>: {short(err)}")
        # Round trips after both messages: whatever the server made of them has arrived.
        for c in (b, a, a2):
            await send_message_barrier(c)
        leaked = [short(st) for c, mark in ((a, mark_a), (a2, mark_a2)) for k, st in c.inbox.history[mark:]
                  if k == "message" and body_of(st) == bounced]
        leaked += [short(st) for k, st in b.inbox.history[mark_b:] if k == "message" and body_of(st) == refused]
        check(not leaked, f"blocked messages were delivered: {leaked}")

        # a2 unblocks b: both resources are told, and messages flow again.
        res = await block_a2.unblock(slixmpp.JID(self.b_jid), timeout=WAIT)
        check(res["type"] == "result", f"a2: unblock answered {short(res)}")
        await pushed("unblocked", [self.b_jid], "unblock")
        back = f"unblocked b->a {tag}"
        b.x.send_message(mto=self.a_jid, mbody=back, mtype="chat")
        m = await a.inbox.expect("message", lambda m: body_of(m) == back, "a: b's message after the unblock")
        self.a_got(self.b_jid, m)
        out = f"unblocked a->b {tag}"
        a.x.send_message(mto=self.b_jid, mbody=out, mtype="chat")
        self.a_sent(self.b_jid, out)
        await b.inbox.expect("message", lambda m: body_of(m) == out, "b: a's message after the unblock")

        # Unblock all: slixmpp's unblock() needs JIDs, so the empty <unblock/> is built here.
        more = [self.c_jid, "spam.example"]
        res = await block_a.block([slixmpp.JID(j) for j in more], timeout=WAIT)
        check(res["type"] == "result", f"a: block answered {short(res)}")
        await pushed("blocked", more, "second block")
        iq = a.x.make_iq_set()
        iq.enable("unblock")
        res = await iq.send(timeout=WAIT)
        check(res["type"] == "result", f"a: unblock-all answered {short(res)}")
        await pushed("unblocked", [], "unblock-all")
        for c, plugin in ((a, block_a), (a2, block_a2)):
            jids = await plugin.get_blocked_jids(timeout=WAIT)
            check(jids == set(), f"{c.name}: the block list after unblock-all is {jids}")
        await a2.disconnect()
        self.a2 = None
        self.notes.append("a blocked b (service-unavailable to b, not-acceptable+blocked to a), "
                          "pushes to a and a2, then unblocked one and all")

    async def omemo(self):
        """XEP-0384 OMEMO through slixmpp-omemo, both the eu.siacs.conversations.axolotl and
        urn:xmpp:omemo:2 versions, all of it kept in hearth's PEP: accounts d and e (mutually
        subscribed) have two devices each. Every device publishes its device lists and bundles
        (publish-options with open access, omemo:2 bundles with max_items=max, one item per
        device) and learns the others' devices from PEP notifications alone, which hearth sends
        because each client's caps ask for the device list nodes (+notify). d1 encrypts a message
        to e: e1 and e2 decrypt it, and d2 decrypts the carbon of it; e2 answers and d1, d2 and
        e1 decrypt that. Then e2 goes offline, d1 sends another, e1 decrypts it live, and e2,
        back with the same keys, decrypts it from the archive. A stranger (c) reads d's open
        bundles but not its presence-only nodes."""
        store = {n: MemoryStorage() for n in ("d1", "d2", "e1", "e2")}
        devices = {}

        async def up(name):
            c = self.omemo_client(name, store[name])
            await c.login()
            await c.roster()  # as clients do: it gets roster pushes from now on
            await c.inbox.expect("omemo_ready", lambda _: True,
                                 f"{name}: OMEMO initialised (device list and bundles published)")
            c.send_initial_presence()
            await c.inbox.expect("presence", presence_from(c.jid.full, "available", full=True),
                                 f"{name}: own initial presence")
            session = await c.x.plugin["xep_0384"].get_session_manager()
            own, _ = await session.get_own_device_information()
            devices[name] = own.device_id
            return c

        async def knows(c, bare, names):
            """Waits until `c` knows the devices `names` of `bare` as active in both versions."""
            want = {devices[n] for n in names}
            session = await c.x.plugin["xep_0384"].get_session_manager()
            loop = asyncio.get_running_loop()
            deadline = loop.time() + WAIT
            while True:
                infos = await session.get_device_information(bare)
                active = {i.device_id for i in infos
                          if dict(i.active).get(NS_OLDMEMO) and dict(i.active).get(NS_TWOMEMO)}
                if want <= active:
                    return
                if loop.time() > deadline:
                    raise Fail(f"{c.name}: knows {sorted(active)} of {bare}'s devices, "
                               f"not {sorted(want)} ({', '.join(names)}), from PEP notifications")
                await asyncio.sleep(0.05)

        def encrypted(m):
            return m.xml.find(f"{{{NS_OLDMEMO}}}encrypted") is not None

        async def send(c, to, body):
            plugin = c.x.plugin["xep_0384"]
            msg = c.x.make_message(mto=slixmpp.JID(to), mbody=body, mtype="chat")
            enc, errors = await plugin.encrypt_message(msg, slixmpp.JID(to))
            check(enc is not None and encrypted(enc), f"{c.name}: nothing encrypted: {short(enc)}")
            check(not errors, f"{c.name}: encryption errors: {errors}")
            check(body not in str(enc), f"{c.name}: the plaintext is in the stanza: {short(enc)}")
            enc.send()
            return enc["id"]

        async def decrypts(c, m, body, what):
            try:
                plain, device = await c.x.plugin["xep_0384"].decrypt_message(m)
            except Exception as e:
                raise Fail(f"{c.name}: cannot decrypt {what}: {type(e).__name__}: {e}")
            check(plain["body"] == body, f"{c.name}: {what} decrypts to {plain['body']!r}, not {body!r}")
            return device

        async def receives(c, sender, body, msg_id, what):
            m = await c.inbox.expect("message", lambda m: encrypted(m) and m["id"] == msg_id,
                                     f"{c.name}: {what}")
            check(m["from"].bare == sender, f"{c.name}: {what} from {m['from']}")
            await decrypts(c, m, body, what)

        async def carbon(c, body, msg_id, what):
            w = await c.inbox.expect("carbon_sent", lambda w: w["carbon_sent"]["id"] == msg_id,
                                     f"{c.name}: the carbon of {what}")
            await decrypts(c, w["carbon_sent"], body, f"the carbon of {what}")

        d1 = await up("d1")
        e1 = await up("e1")
        # Mutual presence subscription: each side's PEP then serves the other's device lists.
        d1.x.send_presence(pto=self.e_jid, ptype="subscribe")
        await e1.inbox.expect("presence", presence_from(self.d_jid, "subscribe"), "e1: subscribe from d")
        e1.x.send_presence(pto=self.d_jid, ptype="subscribed")
        e1.x.send_presence(pto=self.d_jid, ptype="subscribe")
        await d1.inbox.expect("presence", presence_from(self.e_jid, "subscribe"), "d1: subscribe from e")
        d1.x.send_presence(pto=self.e_jid, ptype="subscribed")
        await d1.inbox.expect("push", push_for(self.e_jid, subscription="both"), "d1: e with subscription both")
        await e1.inbox.expect("push", push_for(self.d_jid, subscription="both"), "e1: d with subscription both")
        await knows(d1, self.e_jid, ["e1"])
        await knows(e1, self.d_jid, ["d1"])
        d2 = await up("d2")
        e2 = await up("e2")
        for c, peer, names in ((d1, self.e_jid, ["e1", "e2"]), (d2, self.e_jid, ["e1", "e2"]),
                               (e1, self.d_jid, ["d1", "d2"]), (e2, self.d_jid, ["d1", "d2"]),
                               (d1, self.d_jid, ["d2"]), (e1, self.e_jid, ["e2"])):
            await knows(c, peer, names)
        for c in (d1, d2, e1, e2):
            await c.x.plugin["xep_0280"].enable(timeout=WAIT)

        # The omemo:2 bundles node: one item per device, open to anyone, and presence-only
        # nodes closed to a stranger.
        self.c = c = self.client("c", "direct")
        c.x.register_plugin("xep_0060")
        await c.login()
        pubsub = c.x.plugin["xep_0060"]
        res = await pubsub.get_items(slixmpp.JID(self.d_jid), "urn:xmpp:omemo:2:bundles", timeout=WAIT)
        ids = sorted(item["id"] for item in res["pubsub"]["items"])
        check(ids == sorted(str(devices[n]) for n in ("d1", "d2")),
              f"d's omemo:2 bundles as a stranger reads them: {ids}")
        try:
            await pubsub.get_items(slixmpp.JID(self.d_jid), "urn:example:private", timeout=WAIT)
            raise Fail("c read a node that does not exist")
        except IqError as e:
            check(e.condition == "item-not-found", f"c: {short(e.iq)}")
        await c.disconnect()
        self.c = None

        body = f"omemo d->e {uuid.uuid4()}"
        mid = await send(d1, self.e_jid, body)
        await receives(e1, self.d_jid, body, mid, "d1's message")
        await receives(e2, self.d_jid, body, mid, "d1's message")
        await carbon(d2, body, mid, "d1's message")
        reply = f"omemo e->d {uuid.uuid4()}"
        mid = await send(e2, self.d_jid, reply)
        await receives(d1, self.e_jid, reply, mid, "e2's reply")
        await receives(d2, self.e_jid, reply, mid, "e2's reply")
        await carbon(e1, reply, mid, "e2's reply")

        # e2 goes away; what d1 sends meanwhile e2 decrypts from the archive.
        e2_full = e2.jid.full
        await e2.disconnect()
        await d1.inbox.expect("presence", presence_from(e2_full, "unavailable", full=True),
                              "d1: e2's unavailable presence")
        later = f"omemo while e2 is away {uuid.uuid4()}"
        mid = await send(d1, self.e_jid, later)
        await receives(e1, self.d_jid, later, mid, "the message sent while e2 was away")
        e2 = await up("e2")
        res = await e2.x.plugin["xep_0313"].retrieve(with_jid=slixmpp.JID(self.d_jid), timeout=WAIT)
        found = [r["mam_result"]["forwarded"]["stanza"] for r in res["mam"]["results"]]
        found = [m for m in found if isinstance(m, slixmpp.Message) and m["id"] == mid]
        check(len(found) == 1, f"e2: the archive holds {len(found)} copies of the message sent while away")
        await decrypts(e2, found[0], later, "the archived message")
        for c in (d1, d2, e1, e2):
            await c.disconnect()
        self.notes.append(f"devices d1 {devices['d1']}, d2 {devices['d2']}, e1 {devices['e1']}, "
                          f"e2 {devices['e2']}: both OMEMO versions published; messages, carbons "
                          f"and an archived message decrypted")

    async def muc(self):
        """slixmpp's XEP-0045 plugin: a finds the room service in the server's disco items,
        creates a room (status 201) and configures it through the form it is given (persistent,
        non-anonymous); b enters with a history request and gets what a said before, a sees b
        arrive, both talk (the room's stanza-ids on each message), a sends b a private message,
        b's self-ping (XEP-0410) is answered while b is in and refused once b left, a reads the
        room's archive (XEP-0313), and b's leaving reaches a."""
        a, b = self.a, self.b
        disco = a.x.plugin["xep_0030"]
        service = await muc_service(a, self.args.domain)
        room = slixmpp.JID(f"interop-{uuid.uuid4().hex[:8]}@{service}")
        muc_a, muc_b = a.x.plugin["xep_0045"], b.x.plugin["xep_0045"]
        pres, _subject, _occupants, _history = await muc_a.join_muc_wait(room, "Alice", timeout=WAIT)
        codes = pres["muc"]["status_codes"]
        check({110, 201} <= set(codes), f"a: a new room's self-presence has codes {codes}")
        form = await muc_a.get_room_config(room, timeout=WAIT)
        fields = form.get_fields()
        for var in ("muc#roomconfig_persistentroom", "muc#roomconfig_whois", "muc#roomconfig_membersonly"):
            check(var in fields, f"a: the configuration form lacks {var}: {short(form)}")
        form.set_values({
            "muc#roomconfig_roomname": "Interop",
            "muc#roomconfig_persistentroom": True,
            "muc#roomconfig_whois": "anyone",
        })
        await muc_a.set_room_config(room, form, timeout=WAIT)
        info = await disco.get_info(jid=room, timeout=WAIT)
        features = info["disco_info"]["features"]
        for f in ("muc_persistent", "muc_nonanonymous", "muc_open", NS_MAM):
            check(f in features, f"the room's disco#info lacks {f}: {sorted(features)}")

        before = f"before b {uuid.uuid4()}"
        a.x.send_message(mto=room, mbody=before, mtype="groupchat")
        await a.inbox.expect("message", lambda m: m["type"] == "groupchat" and body_of(m) == before,
                             "a: its own message reflected by the room")
        b_in = asyncio.Event()
        a.x.add_event_handler(f"muc::{room}::got_online",
                              lambda p: p["muc"]["nick"] == "Bob" and b_in.set())
        b_out = asyncio.Event()
        a.x.add_event_handler(f"muc::{room}::got_offline",
                              lambda p: p["muc"]["nick"] == "Bob" and b_out.set())
        pres, _subject, occupants, history = await muc_b.join_muc_wait(room, "Bob", maxstanzas=10,
                                                                        timeout=WAIT)
        codes = pres["muc"]["status_codes"]
        check({100, 110} <= set(codes), f"b: a non-anonymous room's self-presence has codes {codes}")
        # The plugin counts b itself among the occupants, after the others.
        nicks = [p["muc"]["nick"] for p in occupants]
        check(nicks == ["Alice", "Bob"], f"b: occupants {nicks}")
        check([body_of(m) for m in history] == [before], f"b: history {[short(m) for m in history]}")
        await asyncio.wait_for(b_in.wait(), WAIT)
        check("Bob" in muc_a.get_roster(room), f"a: the room's roster {muc_a.get_roster(room)}")

        said = f"hello room {uuid.uuid4()}"
        b.x.send_message(mto=room, mbody=said, mtype="groupchat")
        for c in (a, b):
            m = await c.inbox.expect("message", lambda m: m["type"] == "groupchat" and body_of(m) == said,
                                     f"{c.name}: b's message in the room")
            check(m["from"].resource == "Bob", f"{c.name}: b's message from {m['from']}")
            sid = m.xml.find(f"{{{NS_SID}}}stanza-id")
            check(sid is not None and sid.get("by") == str(room),
                  f"{c.name}: no stanza-id by the room on {short(m)}")
        private = f"just for you {uuid.uuid4()}"
        a.x.send_message(mto=slixmpp.JID(f"{room}/Bob"), mbody=private, mtype="chat")
        m = await b.inbox.expect("message", lambda m: body_of(m) == private, "b: a's private message")
        check(m["from"].full == f"{room}/Alice" and m["type"] == "chat", f"b: the private message {short(m)}")

        async def self_ping():
            iq = b.x.Iq()
            iq["type"] = "get"
            iq["to"] = f"{room}/Bob"
            iq.enable("ping")
            return await iq.send(timeout=WAIT)

        res = await self_ping()
        check(res["type"] == "result", f"b: self-ping in the room answered {short(res)}")

        res = await a.x.plugin["xep_0313"].retrieve(jid=room, timeout=WAIT)
        archived = [r["mam_result"]["forwarded"]["stanza"] for r in res["mam"]["results"]]
        check([body_of(m) for m in archived] == [before, said],
              f"a: the room's archive holds {[short(m) for m in archived]}")

        muc_b.leave_muc(room, "Bob")
        await asyncio.wait_for(b_out.wait(), WAIT)
        try:
            res = await self_ping()
            raise Fail(f"b: self-ping after leaving answered {short(res)}")
        except IqError as e:
            check(e.condition == "not-acceptable", f"b: self-ping after leaving: {short(e.iq)}")
        await muc_a.destroy(room, timeout=WAIT)
        for c in (a, b):
            c.inbox.drop("message")
            c.inbox.drop("presence")
        self.notes.append(f"room {room}: created, configured by form, history, messages with "
                          f"stanza-ids, a private message, self-ping, its archive, leaving")

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
        for c in (self.a2, self.c, self.a, self.b, self.f1, self.g1):
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
        ("account_disco", run.account_disco),
        ("roster_remove", run.roster_remove),
        ("roster_remove_contact", run.roster_remove_contact),
        ("stream_management", run.stream_management),
        ("carbons", run.carbons),
        ("mam", run.mam),
        ("csi", run.csi),
        ("blocking", run.blocking),
        ("omemo", run.omemo),
        ("muc", run.muc),
        ("avatars", run.avatars),
        ("vcard", run.vcard),
        ("bookmarks", run.bookmarks),
        ("private_storage", run.private_storage),
        ("external_services", run.external_services),
        ("upload", run.upload),
        ("websocket", run.websocket),
        ("family_room", run.family_room),
        ("password_change", run.password_change),
        ("account_removal", run.account_removal),
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
            await asyncio.wait_for(fn(), SLOW_SCENARIOS.get(name, SCENARIO_TIMEOUT))
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
    p.add_argument("--ws-service", required=True,
                   help="what xmpp.js is given as its service: the domain (host-meta) or a wss:// URL")
    p.add_argument("--node-dir", required=True,
                   help="where websocket.mjs, room.mjs and their node_modules are")
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
    args.password_c = os.environ["INTEROP_PASSWORD_C"]
    args.password_d = os.environ["INTEROP_PASSWORD_D"]
    args.password_e = os.environ["INTEROP_PASSWORD_E"]
    args.password_f = os.environ["INTEROP_PASSWORD_F"]
    args.password_g = os.environ["INTEROP_PASSWORD_G"]
    args.password_h = os.environ["INTEROP_PASSWORD_H"]
    args.password_mum = os.environ["INTEROP_PASSWORD_MUM"]
    args.password_dad = os.environ["INTEROP_PASSWORD_DAD"]
    args.password_kid = os.environ["INTEROP_PASSWORD_KID"]
    args.turn_secret = os.environ["INTEROP_TURN_SECRET"]
    return args


if __name__ == "__main__":
    args = parse_args()
    if args.log:
        logging.basicConfig(filename=args.log, level=logging.DEBUG,
                            format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    else:
        logging.basicConfig(level=logging.CRITICAL)
    sys.exit(asyncio.run(main(args)))
