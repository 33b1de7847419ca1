// A browser-style client for the interop suite: xmpp.js (@xmpp/client, pinned in
// package-lock.json) logs in over WebSocket, finding the endpoint through XEP-0156 host-meta
// when INTEROP_WS_SERVICE is a domain, says hello to INTEROP_PEER and answers one ping.
//
// It reports on standard output, one line each: "online JID URI" once the session is up
// (URI: the endpoint of the WebSocket in use), "got BODY" for each message, "done" when it answered.
// interop.py drives it (the websocket scenario). Node 20 needs --experimental-websocket.
import { client, xml } from "@xmpp/client";

const env = (name) => {
  const v = process.env[name];
  if (!v) {
    console.error(`websocket.mjs: ${name} is not set`);
    process.exit(2);
  }
  return v;
};

const peer = env("INTEROP_PEER");
const xmpp = client({
  service: env("INTEROP_WS_SERVICE"),
  domain: env("INTEROP_DOMAIN"),
  username: env("INTEROP_WS_USER"),
  password: env("INTEROP_WS_PASSWORD"),
  resource: "xmppjs",
});

xmpp.on("error", (err) => {
  console.error(`websocket.mjs: ${err}`);
});

const timer = setTimeout(() => {
  console.error("websocket.mjs: no ping within 60 s");
  process.exit(1);
}, 60_000);

xmpp.on("stanza", async (stanza) => {
  if (!stanza.is("message")) return;
  const body = stanza.getChildText("body");
  if (body === null) return;
  console.log(`got ${body}`);
  if (body.startsWith("ping ")) {
    await xmpp.send(
      xml(
        "message",
        { to: stanza.attrs.from, type: "chat", id: `pong-${stanza.attrs.id}` },
        xml("body", {}, `pong ${body.slice(5)}`),
      ),
    );
    console.log("done");
    clearTimeout(timer);
    await xmpp.stop();
    process.exit(0);
  }
});

xmpp.on("online", async (address) => {
  // The endpoint of the socket in use (resolution may have tried others first).
  console.log(`online ${address} ${xmpp.socket?.url ?? "not-a-websocket"}`);
  await xmpp.send(xml("presence"));
  await xmpp.send(
    xml("message", { to: peer, type: "chat", id: "hello-1" }, xml("body", {}, "hello from xmpp.js")),
  );
});

xmpp.start().catch((err) => {
  console.error(`websocket.mjs: cannot connect: ${err}`);
  process.exit(1);
});
