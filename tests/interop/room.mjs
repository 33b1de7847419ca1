// A browser-style member of a family room for the interop suite: xmpp.js (@xmpp/client, pinned
// in package-lock.json) logs in over WebSocket (finding the endpoint through XEP-0156 host-meta
// when INTEROP_WS_SERVICE is a domain), enters the room INTEROP_ROOM as INTEROP_NICK, downloads
// the first photo another occupant posts there (the XEP-0066 out-of-band URL of the message,
// as Conversations sends it) with fetch over HTTPS, says INTEROP_REPLY in the room, and leaves
// when a line "leave" arrives on standard input.
//
// It reports on standard output, one JSON object a line, each with an "event":
//   online      {jid, uri}: the session is up (uri: the WebSocket endpoint in use)
//   occupant    {nick, jid, type}: someone else's presence in the room (jid: the real JID the
//               room shows, null if none)
//   joined      {nick, codes}: its own presence in the room, with its status codes
//   groupchat   {from, body, oob, delayed}: a message to the room
//   downloaded  {url, status, type, bytes, sha256}: the photo as fetched
//   sent        {id}: the reply went out
//   left        {codes}: its own unavailable presence from the room
//   error       {what}: something went wrong; the process then exits 1
// interop.py drives it (the family_room scenario). Node 20 needs --experimental-websocket.
import { createHash } from "node:crypto";
import { createInterface } from "node:readline";
import { client, xml } from "@xmpp/client";

const MUC = "http://jabber.org/protocol/muc";
const MUC_USER = "http://jabber.org/protocol/muc#user";
const OOB = "jabber:x:oob";
const DELAY = "urn:xmpp:delay";

const env = (name) => {
  const v = process.env[name];
  if (!v) {
    console.error(`room.mjs: ${name} is not set`);
    process.exit(2);
  }
  return v;
};

const room = env("INTEROP_ROOM");
const nick = env("INTEROP_NICK");
const reply = env("INTEROP_REPLY");
const me = `${room}/${nick}`;
const report = (event, fields = {}) => console.log(JSON.stringify({ event, ...fields }));

const xmpp = client({
  service: env("INTEROP_WS_SERVICE"),
  domain: env("INTEROP_DOMAIN"),
  username: env("INTEROP_WS_USER"),
  password: env("INTEROP_WS_PASSWORD"),
  resource: "browser",
});

const fail = (what) => {
  report("error", { what: String(what) });
  process.exit(1);
};

const timer = setTimeout(() => fail("not done within 60 s"), 60_000);

xmpp.on("error", (err) => {
  console.error(`room.mjs: ${err}`);
});

let downloading = false;

async function download(url) {
  const res = await fetch(url);
  const bytes = Buffer.from(await res.arrayBuffer());
  report("downloaded", {
    url,
    status: res.status,
    type: res.headers.get("content-type"),
    bytes: bytes.length,
    sha256: createHash("sha256").update(bytes).digest("hex"),
  });
  const id = `reply-${Date.now()}`;
  await xmpp.send(xml("message", { to: room, type: "groupchat", id }, xml("body", {}, reply)));
  report("sent", { id });
}

xmpp.on("stanza", (stanza) => {
  const from = stanza.attrs.from ?? "";
  if (from !== room && !from.startsWith(`${room}/`)) return;
  if (stanza.is("presence")) {
    if (stanza.attrs.type === "error") {
      fail(`the room refused: ${stanza.toString()}`);
    }
    const x = stanza.getChild("x", MUC_USER);
    const codes = (x?.getChildren("status") ?? []).map((s) => Number(s.attrs.code));
    if (codes.includes(110)) {
      if (stanza.attrs.type === "unavailable") {
        report("left", { codes });
        clearTimeout(timer);
        xmpp.stop().finally(() => process.exit(0));
      } else {
        report("joined", { nick: from.slice(room.length + 1), codes });
      }
      return;
    }
    report("occupant", {
      nick: from.slice(room.length + 1),
      jid: x?.getChild("item")?.attrs.jid ?? null,
      type: stanza.attrs.type ?? "available",
    });
    return;
  }
  if (!stanza.is("message")) return;
  if (stanza.attrs.type === "error") {
    fail(`the room bounced a message: ${stanza.toString()}`);
  }
  const body = stanza.getChildText("body");
  if (stanza.attrs.type !== "groupchat" || body === null) return;
  const oob = stanza.getChild("x", OOB)?.getChildText("url") ?? null;
  const delayed = stanza.getChild("delay", DELAY) !== undefined;
  report("groupchat", { from, body, oob, delayed });
  if (oob !== null && from !== me && !delayed && !downloading) {
    downloading = true;
    download(oob).catch((err) => fail(`cannot download ${oob}: ${err}`));
  }
});

xmpp.on("online", async (address) => {
  report("online", { jid: address.toString(), uri: xmpp.socket?.url ?? "not-a-websocket" });
  await xmpp.send(xml("presence"));
  // A browser client that shows the room from now on asks for no history.
  await xmpp.send(
    xml("presence", { to: me }, xml("x", { xmlns: MUC }, xml("history", { maxstanzas: "0" }))),
  );
});

createInterface({ input: process.stdin }).on("line", (line) => {
  if (line.trim() === "leave") {
    xmpp.send(xml("presence", { to: me, type: "unavailable" })).catch(fail);
  }
});

xmpp.start().catch((err) => fail(`cannot connect: ${err}`));
