#!/usr/bin/env python3
"""Federation interop: hearth and Debian's Prosody as each other's remote server.

Started by tests/interop/federation, which runs hearth as hearth.test and Prosody as
prosody.test on loopback addresses, twice over the same data: first with self-signed
certificates (each server accepts the other by dialback, XEP-0220), then restarted with
certificates of a shared test authority that each requires (SASL EXTERNAL, XEP-0178). On
hearth, account hal has two resources, h1 and h2 (h2 with carbons, XEP-0280); on Prosody,
account pat has one, p1. All are slixmpp clients.

Round "dialback": a presence subscription both ways (each then sees the other's presence),
messages both ways with their carbons on h2 and their stanza-ids (XEP-0359), iqs across
(ping and disco#info, to the other server and to a client there), hal's archive (XEP-0313)
with pat holding exactly what was exchanged, and the servers' logs saying they accepted each
other by dialback and that Prosody answered the pings (XEP-0199) that confirm, on a link
without stream management, what hearth wrote before them. What hal exchanged with pat is written to --state for the next round.

Round "certificate": after both restarted, the subscription is still there on both sides and
each server tells its user the other's presence (hearth by probing Prosody), messages cross
again, iqs too, the archive holds both rounds' messages, and the logs say SASL EXTERNAL and
XEP-0198 stream management on both links, each acknowledging the other's stanzas (Prosody's
mod_smacks offers it to authenticated streams only, so not in the dialback round).

Prints one `PASS name` / `FAIL name: reason` line per scenario and `N passed, M failed`.
"""

import argparse
import asyncio
import json
import logging
import os
import re
import sys
import traceback
import types
import uuid

import slixmpp
from slixmpp.exceptions import IqError, IqTimeout

from interop import (NS_DISCO_INFO, NS_MAM, NS_PING, NS_SID, SCENARIO_TIMEOUT, WAIT, Client,
                     Fail, body_of, check, delay_of, forwarded_body, presence_from, push_for,
                     short)


def server_args(host, port, domain, ca):
    """What interop.Client reads of its command line, for one server."""
    return types.SimpleNamespace(host=host, c2s_port=port, tls_port=port, domain=domain, ca=ca)


async def wait_for_log(path, pattern, what, timeout=WAIT):
    """Waits until the log file at `path` has a line matching `pattern`; returns the match.
    A server logs how it accepted another before it hands on what came over that link, so
    once a stanza crossed, the line is there or on its way to the file."""

    async def scan():
        while True:
            try:
                with open(path, encoding="utf-8", errors="replace") as f:
                    m = re.search(pattern, f.read(), re.MULTILINE)
            except FileNotFoundError:
                m = None
            if m:
                return m
            await asyncio.sleep(0.1)

    try:
        return await asyncio.wait_for(scan(), timeout)
    except asyncio.TimeoutError:
        raise Fail(f"{what}: no line matching {pattern!r} in {path} within {timeout:.0f}s")


class Fed:
    def __init__(self, args):
        self.args = args
        self.hal = f"hal@{args.hearth_domain}"
        self.pat = f"pat@{args.prosody_domain}"
        self.h_args = server_args(args.hearth_host, args.hearth_port, args.hearth_domain, args.ca)
        self.p_args = server_args(args.prosody_host, args.prosody_port, args.prosody_domain, args.ca)
        self.h1 = self.h2 = self.p1 = None
        self.made = []
        self.notes = []
        # What hal exchanged with pat, in order: (direction seen from hal, body); earlier
        # rounds' come from --state.
        self.exchanged = []
        if args.round != "dialback":
            with open(args.state, encoding="utf-8") as f:
                self.exchanged = [tuple(e) for e in json.load(f)]
        self.earlier = len(self.exchanged)
        # Messages hal received live, by body, for their stanza-ids.
        self.received = {}

    def client(self, name, plugins=()):
        if name.startswith("h"):
            account, password, args = self.hal, self.args.password_h, self.h_args
        else:
            account, password, args = self.pat, self.args.password_p, self.p_args
        c = Client(name, account, password, f"fed-{name}", args, "starttls", plugins)
        self.made.append(c)
        return c

    async def online(self, c):
        await c.login()
        await c.roster()
        c.send_initial_presence()
        await c.inbox.expect("presence", presence_from(c.jid.full, "available", full=True),
                             f"{c.name}: own initial presence")

    def sent(self, body):
        self.exchanged.append(("out", body))

    def got(self, msg):
        self.exchanged.append(("in", body_of(msg)))
        self.received[body_of(msg)] = msg

    # --- round "dialback" -------------------------------------------------------------------

    async def login(self):
        """hal's two resources on hearth (h2 enables carbons), pat on Prosody, all with
        SCRAM-SHA-256 after STARTTLS."""
        self.h1 = self.client("h1", ("xep_0313", "xep_0359"))
        self.h2 = self.client("h2", ("xep_0280", "xep_0359"))
        self.p1 = self.client("p1", ("xep_0359",))
        await asyncio.gather(self.h1.login(), self.h2.login(), self.p1.login())
        res = await self.h2.x.plugin["xep_0280"].enable(timeout=WAIT)
        check(res["type"] == "result", f"h2: enabling carbons answered {short(res)}")
        for c in (self.h1, self.h2, self.p1):
            await c.roster()
            c.send_initial_presence()
            await c.inbox.expect("presence", presence_from(c.jid.full, "available", full=True),
                                 f"{c.name}: own initial presence")
        await self.h1.inbox.expect("presence", presence_from(self.h2.jid.full, "available", full=True),
                                   "h1: h2's presence")

    async def subscription(self):
        """hal subscribes to pat across the federation, pat approves; pat subscribes to hal,
        hal approves. Both rosters end 'both', and each side sees the other's presence: hal's
        two resources see pat's, pat sees both of hal's."""
        h1, h2, p1 = self.h1, self.h2, self.p1
        h1.x.send_presence(pto=self.pat, ptype="subscribe")
        await h1.inbox.expect("push", push_for(self.pat, subscription="none", ask="subscribe"),
                              "h1: roster push for pat with ask=subscribe")
        await p1.inbox.expect("presence", presence_from(self.hal, "subscribe"),
                              "p1: hal's subscription request, from hearth")
        p1.x.send_presence(pto=self.hal, ptype="subscribed")
        await p1.inbox.expect("push", push_for(self.hal, subscription="from"),
                              "p1: roster push for hal with subscription=from")
        await h1.inbox.expect("presence", presence_from(self.pat, "subscribed"),
                              "h1: pat's approval, from Prosody")
        await h1.inbox.expect("push", push_for(self.pat, subscription="to"),
                              "h1: roster push for pat with subscription=to")
        for c in (h1, h2):
            await c.inbox.expect("presence", presence_from(p1.jid.full, "available", full=True),
                                 f"{c.name}: pat's presence, from Prosody")

        p1.x.send_presence(pto=self.hal, ptype="subscribe")
        await p1.inbox.expect("push", push_for(self.hal, subscription="from", ask="subscribe"),
                              "p1: roster push for hal with ask=subscribe")
        await h1.inbox.expect("presence", presence_from(self.pat, "subscribe"),
                              "h1: pat's subscription request, from Prosody")
        h1.x.send_presence(pto=self.pat, ptype="subscribed")
        await h1.inbox.expect("push", push_for(self.pat, subscription="both"),
                              "h1: roster push for pat with subscription=both")
        await p1.inbox.expect("presence", presence_from(self.hal, "subscribed"),
                              "p1: hal's approval, from hearth")
        await p1.inbox.expect("push", push_for(self.hal, subscription="both"),
                              "p1: roster push for hal with subscription=both")
        for c in (h1, h2):
            await p1.inbox.expect("presence", presence_from(c.jid.full, "available", full=True),
                                  f"p1: {c.name}'s presence, from hearth")
        await self.rosters_both("after subscribing")

    async def rosters_both(self, when):
        rh, rp = await self.h1.roster(), await self.p1.roster()
        check(rh.get(self.pat, {}).get("subscription") == "both" and rh[self.pat]["ask"] is None,
              f"hal's roster {when}: {rh}")
        check(rp.get(self.hal, {}).get("subscription") == "both" and rp[self.hal]["ask"] is None,
              f"pat's roster {when}: {rp}")

    async def messages(self):
        """h1 writes to pat's bare JID: p1 gets it, h2 its <sent/> carbon. p1 answers h1's full
        JID: h1 gets it with a stanza-id by hal's account, h2 its <received/> carbon. p1 writes
        to hal's bare JID: both of hal's resources get it."""
        h1, h2, p1 = self.h1, self.h2, self.p1
        body = f"to prosody {uuid.uuid4()}"
        h1.x.send_message(mto=self.pat, mbody=body, mtype="chat")
        self.sent(body)
        m = await p1.inbox.expect("message", lambda m: body_of(m) == body, "p1: hal's message")
        check(m["from"].full == h1.jid.full and m["type"] == "chat" and delay_of(m) is None,
              f"p1: hal's message arrived as {short(m)}")
        c = await h2.inbox.expect("carbon_sent", lambda m: forwarded_body(m["carbon_sent"]) == body,
                                  "h2: the <sent/> carbon of h1's message to pat")
        inner = c["carbon_sent"]
        check(c["from"].full == self.hal and inner["to"].bare == self.pat
              and inner["from"].full == h1.jid.full, f"h2: the carbon {short(c)}")

        body = f"to hearth {uuid.uuid4()}"
        p1.x.send_message(mto=h1.jid.full, mbody=body, mtype="chat")
        m = await h1.inbox.expect("message", lambda m: body_of(m) == body, "h1: pat's message")
        self.got(m)
        check(m["from"].full == p1.jid.full and m["type"] == "chat",
              f"h1: pat's message arrived as {short(m)}")
        sids = [(e.get("by"), e.get("id")) for e in m.xml.findall(f"{{{NS_SID}}}stanza-id")]
        check(len(sids) == 1 and sids[0][0] == self.hal and sids[0][1],
              f"h1: pat's message has stanza-ids {sids}, expected one by {self.hal}")
        c = await h2.inbox.expect("carbon_received",
                                  lambda m: forwarded_body(m["carbon_received"]) == body,
                                  "h2: the <received/> carbon of pat's message to h1")
        inner = c["carbon_received"]
        check(c["from"].full == self.hal and inner["from"].full == p1.jid.full
              and inner["to"].full == h1.jid.full, f"h2: the carbon {short(c)}")

        body = f"to hal {uuid.uuid4()}"
        p1.x.send_message(mto=self.hal, mbody=body, mtype="chat")
        m = await h1.inbox.expect("message", lambda m: body_of(m) == body, "h1: pat's message to hal")
        self.got(m)
        await h2.inbox.expect("message", lambda m: body_of(m) == body, "h2: pat's message to hal")

    async def iqs(self):
        """Across, both ways: ping and disco#info of the other server; a ping of a client
        there, answered by that client; hearth's account disco#info for pat, its contact."""
        h1, p1 = self.h1, self.p1
        for c, server in ((h1, self.args.prosody_domain), (p1, self.args.hearth_domain)):
            res = await c.x.plugin["xep_0030"].get_info(jid=server, timeout=WAIT)
            check(res["type"] == "result" and res["from"].full == server,
                  f"{c.name}: disco#info of {server} answered {short(res)}")
            ids = {(i[0], i[1]) for i in res["disco_info"]["identities"]}
            check(("server", "im") in ids, f"{c.name}: {server} has identities {sorted(ids)}")
            check(NS_PING in res["disco_info"]["features"],
                  f"{c.name}: {server} does not list {NS_PING}")
            res = await c.x.plugin["xep_0199"].send_ping(server, timeout=WAIT)
            check(res["type"] == "result" and res["from"].full == server,
                  f"{c.name}: ping of {server} answered {short(res)}")
        for c, other in ((h1, p1), (p1, h1)):
            res = await c.x.plugin["xep_0199"].send_ping(other.jid.full, timeout=WAIT)
            check(res["type"] == "result" and res["from"].full == other.jid.full,
                  f"{c.name}: ping of {other.jid.full} answered {short(res)}")
        res = await p1.x.plugin["xep_0030"].get_info(jid=self.hal, timeout=WAIT)
        ids = {(i[0], i[1]) for i in res["disco_info"]["identities"]}
        check(res["from"].full == self.hal and ("account", "registered") in ids,
              f"p1: disco#info of hal's account answered {short(res)}")
        # A resource that is not there: hearth answers for it, through Prosody.
        try:
            res = await p1.x.plugin["xep_0199"].send_ping(f"{self.hal}/nowhere", timeout=WAIT)
            raise Fail(f"p1: ping of a resource that is not there answered {short(res)}")
        except IqError as e:
            check(e.condition == "service-unavailable",
                  f"p1: ping of a resource that is not there: {short(e.iq)}")

    async def archive(self):
        """hal's archive with pat (slixmpp's XEP-0313 plugin, filtered by with=pat) holds every
        message hal and pat exchanged, in every round, once each and in order; the ones hal
        received this round carry the archive id as their stanza-id."""
        res = await self.h1.x.plugin["xep_0313"].retrieve(with_jid=slixmpp.JID(self.pat),
                                                          rsm={"max": 100}, timeout=WAIT)
        results = res["mam"]["results"]
        items = []
        for r in results:
            inner = r["mam_result"]["forwarded"]["stanza"]
            direction = "out" if inner["from"].bare == self.hal else "in"
            peer = (inner["to"] if direction == "out" else inner["from"]).bare
            check(peer == self.pat, f"with={self.pat} lists a message with {peer}: {short(r)}")
            items.append((r["mam_result"]["id"], (direction, body_of(inner))))
        got = [e for _, e in items]
        check(got == self.exchanged,
              f"hal's archive with pat holds {got}, expected {self.exchanged}")
        for archive_id, (direction, body) in items:
            live = self.received.get(body)
            if direction == "in" and live is not None:
                sid = [e.get("id") for e in live.xml.findall(f"{{{NS_SID}}}stanza-id")]
                check(sid == [archive_id], f"live {body!r} has stanza-id {sid}, archived as {archive_id}")
        self.notes.append(f"hal's archive with pat: {len(items)} messages "
                          f"({self.earlier} from the round before)")

    def save(self):
        """What hal and pat exchanged, for the next round's archive check."""
        with open(self.args.state, "w", encoding="utf-8") as f:
            json.dump(self.exchanged, f)

    async def authentication(self):
        """How the servers accepted each other, from their logs: both ways by dialback with
        self-signed certificates; both ways by SASL EXTERNAL with the test authority's."""
        h, p, hd, pd = self.args.hearth_log, self.args.prosody_log, self.args.hearth_domain, \
            self.args.prosody_domain
        if self.args.round == "dialback":
            await wait_for_log(h, rf"{re.escape(pd)} accepted {re.escape(hd)} \(dialback\)",
                               "hearth's link to Prosody")
            await wait_for_log(h, rf"{re.escape(pd)} authenticated from \S+ \(dialback\)",
                               "Prosody's link to hearth")
            await wait_for_log(p, rf"verified dialback key\.\.\. it is valid", "Prosody's key check")
            await wait_for_log(p, rf"connection {re.escape(hd)}->{re.escape(pd)} is now authenticated",
                               "Prosody accepting hearth")
            # No stream management on these links: what hearth wrote is delivered once Prosody
            # answered the ping hearth sent after it (over Prosody's own link).
            await wait_for_log(h, rf"{re.escape(pd)} has read [1-9]\d* stanzas from "
                               rf"{re.escape(hd)} \(ping answered\)", "hearth's link to Prosody")
            self.notes.append("dialback both ways (self-signed certificates), pings confirming "
                              "hearth's writes")
        else:
            await wait_for_log(h, rf"{re.escape(pd)} accepted {re.escape(hd)} \(certificate\)",
                               "hearth's link to Prosody")
            await wait_for_log(h, rf"{re.escape(pd)} authenticated from \S+ \(certificate\)",
                               "Prosody's link to hearth")
            await wait_for_log(p, rf"Accepting SASL EXTERNAL identity from {re.escape(hd)}",
                               "Prosody accepting hearth's certificate")
            await wait_for_log(p, rf"SASL EXTERNAL with {re.escape(hd)} succeeded",
                               "Prosody's SASL EXTERNAL to hearth")
            # XEP-0198 on both links, each acknowledging the other's stanzas: Prosody offers
            # it to authenticated streams only, so after SASL EXTERNAL and not with dialback.
            await wait_for_log(h, rf"{re.escape(pd)} acknowledges what {re.escape(hd)} sends "
                               rf"\(stream management\)", "hearth's link to Prosody")
            await wait_for_log(h, rf"{re.escape(pd)} asks for acknowledgements",
                               "Prosody's link to hearth")
            await wait_for_log(p, r"Received\[s2sin\]: <r ", "Prosody asked for acknowledgements")
            await wait_for_log(p, r"Received\[s2sout\]: <a [^>]*h='[1-9]",
                               "hearth's acknowledgement of Prosody's stanzas")
            self.notes.append("SASL EXTERNAL both ways (certificates of the test authority), "
                              "stream management on both links")

    # --- round "certificate" ----------------------------------------------------------------

    async def relogin(self):
        """After both servers restarted: pat comes online first, then hal. Both rosters still
        say 'both'; hal's resource gets pat's presence (hearth probes Prosody at hal's initial
        presence), and pat gets hal's."""
        self.p1 = p1 = self.client("p1", ("xep_0359",))
        await self.online(p1)
        self.h1 = h1 = self.client("h1", ("xep_0313", "xep_0359"))
        await h1.login()
        await h1.roster()
        h1.send_initial_presence()
        await h1.inbox.expect("presence", presence_from(p1.jid.full, "available", full=True),
                              "h1: pat's presence, the answer to hearth's probe")
        await p1.inbox.expect("presence", presence_from(h1.jid.full, "available", full=True),
                              "p1: h1's presence, from hearth")
        self.h2 = h2 = self.client("h2", ("xep_0280", "xep_0359"))
        await h2.login()
        res = await h2.x.plugin["xep_0280"].enable(timeout=WAIT)
        check(res["type"] == "result", f"h2: enabling carbons answered {short(res)}")
        await h2.roster()
        h2.send_initial_presence()
        await h2.inbox.expect("presence", presence_from(p1.jid.full, "available", full=True),
                              "h2: pat's presence")
        await self.rosters_both("after both servers restarted")

    async def close(self):
        for c in self.made:
            try:
                await c.disconnect()
            except Exception:
                c.abort()


async def main(args):
    fed = Fed(args)
    if args.round == "dialback":
        first = "login"
        scenarios = [("login", fed.login), ("subscription", fed.subscription)]
    else:
        first = "relogin"
        scenarios = [("relogin", fed.relogin)]
    scenarios += [("messages", fed.messages), ("iqs", fed.iqs), ("archive", fed.archive),
                  ("authentication", fed.authentication)]
    passed = failed = 0
    logged_in = False
    for name, fn in scenarios:
        label = f"federation_{args.round}_{name}"
        if name != first and not logged_in:
            failed += 1
            print(f"FAIL {label}: not run, {first} failed", flush=True)
            continue
        try:
            await asyncio.wait_for(fn(), SCENARIO_TIMEOUT)
        except Fail as e:
            failed += 1
            print(f"FAIL {label}: {e}", flush=True)
        except (IqError, IqTimeout) as e:
            failed += 1
            what = short(e.iq) if isinstance(e, IqError) else "timed out"
            print(f"FAIL {label}: iq failed: {what}", flush=True)
        except asyncio.TimeoutError:
            failed += 1
            print(f"FAIL {label}: scenario timed out after {SCENARIO_TIMEOUT:.0f}s", flush=True)
        except Exception as e:
            failed += 1
            print(f"FAIL {label}: {type(e).__name__}: {e}", flush=True)
            traceback.print_exc(file=sys.stderr)
        else:
            passed += 1
            print(f"PASS {label}", flush=True)
            logged_in = logged_in or name == first
        for note in fed.notes:
            print(f"  {note}", flush=True)
        fed.notes.clear()
    await fed.close()
    if args.round == "dialback":
        fed.save()
    print(f"{passed} passed, {failed} failed", flush=True)
    return 1 if failed else 0


def parse_args():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--round", choices=("dialback", "certificate"), required=True)
    p.add_argument("--hearth-host", required=True)
    p.add_argument("--hearth-port", type=int, required=True, help="hearth's STARTTLS port")
    p.add_argument("--hearth-domain", default="hearth.test")
    p.add_argument("--prosody-host", required=True)
    p.add_argument("--prosody-port", type=int, required=True, help="Prosody's STARTTLS port")
    p.add_argument("--prosody-domain", default="prosody.test")
    p.add_argument("--ca", required=True, help="PEM certificates the clients trust")
    p.add_argument("--hearth-log", required=True)
    p.add_argument("--prosody-log", required=True)
    p.add_argument("--state", required=True,
                   help="what the dialback round exchanged, for the certificate round")
    p.add_argument("--log", help="write slixmpp's debug log to this file")
    args = p.parse_args()
    args.password_h = os.environ["FED_PASSWORD_H"]
    args.password_p = os.environ["FED_PASSWORD_P"]
    return args


if __name__ == "__main__":
    args = parse_args()
    if args.log:
        logging.basicConfig(filename=args.log, level=logging.DEBUG,
                            format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    else:
        logging.basicConfig(level=logging.CRITICAL)
    sys.exit(asyncio.run(main(args)))
