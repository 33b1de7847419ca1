// Interop: xmpp.js (@xmpp/client, pinned in package.json) against a running hearth over TCP:
// a full SASL2 login (SCRAM-SHA-1, Bind 2 with stream management enabled inline, a FAST token
// asked for), then a FAST reconnect after the connection drops, which resumes the session inline
// and gets the message sent meanwhile, then a FAST login after a clean stop, which binds a new
// session. Started by tests/interop/run, which gives the ports and passwords and trusts the
// server's certificate through NODE_EXTRA_CA_CERTS. Prints `PASS name` / `FAIL name: reason`
// lines and `N passed, M failed`; every wait has a deadline.

import { client, xml } from "@xmpp/client";

const args = Object.fromEntries(
  process.argv
    .slice(2)
    .join(" ")
    .split("--")
    .filter(Boolean)
    .map((a) => a.trim().split(/\s+/)),
);
const domain = args.domain ?? "localhost";
const host = args.host ?? "localhost";
const tlsPort = args["tls-port"];
const c2sPort = args["c2s-port"];
const passwordA = process.env.INTEROP_PASSWORD_JA;
const passwordB = process.env.INTEROP_PASSWORD_JB;
const WAIT = 15_000;

let passed = 0;
let failed = 0;

function within(ms, what, promise) {
  let timer;
  const timeout = new Promise((_, reject) => {
    timer = setTimeout(() => reject(new Error(`no ${what} within ${ms} ms`)), ms);
  });
  return Promise.race([promise, timeout]).finally(() => clearTimeout(timer));
}

/** Resolves with the first `event` of `emitter` that `test` accepts. */
function next(emitter, event, test = () => true) {
  return new Promise((resolve) => {
    const on = (...a) => {
      if (!test(...a)) return;
      emitter.removeListener(event, on);
      resolve(a[0]);
    };
    emitter.on(event, on);
  });
}

function check(ok, what) {
  if (!ok) throw new Error(what);
}

async function scenario(name, fn) {
  try {
    await within(WAIT * 2, `end of "${name}"`, fn());
    console.log(`PASS ${name}`);
    passed++;
  } catch (err) {
    console.log(`FAIL ${name}: ${err?.message || err?.condition || err}`);
    if (process.env.INTEROP_DEBUG) console.error(err);
    failed++;
  }
}

/** A client that remembers what it sent and the FAST tokens it was given. */
function make(service, username, password, resource) {
  // xmpp.js gives the server 2 s to answer by default: too little for a debug build on a
  // busy machine (or under qemu).
  const c = client({ service, domain, username, password, resource, timeout: WAIT });
  c.sent = [];
  c.tokens = [];
  c.on("send", (el) => c.sent.push(el));
  if (process.env.INTEROP_DEBUG) {
    const t0 = Date.now();
    const say = (what) => console.error(`# ${Date.now() - t0} ${username} ${what}`);
    c.on("send", (el) => say(`>> ${el}`));
    c.on("element", (el) => say(`<< ${el}`));
    c.on("status", (st) => say(`status ${st}`));
  }
  c.on("error", (err) => console.error(`# ${username}: ${err?.message ?? err}`));
  const save = c.fast.saveToken.bind(c.fast);
  c.fast.saveToken = async (t) => {
    c.tokens.push(t);
    await save(t);
  };
  return c;
}

/**
 * Starts `c` and resolves with its JID once it is online. xmpp.js 0.14's `start()` listens for
 * the server's stream header only after its own header is written; on loopback the answer can
 * come first, and `start()` then waits in vain although the client goes online all the same.
 * So this waits for the client's `online` event instead.
 */
function login(c) {
  const online = next(c, "online");
  c.start().catch(() => {});
  return within(WAIT, "login", online);
}

function lastAuthenticate(c) {
  const all = c.sent.filter((el) => el.is("authenticate", "urn:xmpp:sasl:2"));
  return all[all.length - 1];
}

const a = make(`xmpps://${host}:${tlsPort}`, "ja", passwordA, "interop");
const b = make(`xmpp://${host}:${c2sPort}`, "jb", passwordB, "other");

await scenario("xmpp.js SASL2 login with Bind 2, stream management and a FAST token", async () => {
  const jid = await login(a);
  const auth = lastAuthenticate(a);
  check(auth, "xmpp.js did not use SASL2");
  check(auth.attrs.mechanism === "SCRAM-SHA-1", `mechanism ${auth.attrs.mechanism}`);
  check(auth.getChild("bind", "urn:xmpp:bind:0"), "no Bind 2 request");
  check(auth.getChild("request-token", "urn:xmpp:fast:0"), "no token requested");
  check(jid.resource.startsWith("interop/"), `resource ${jid.resource}`);
  check(a.tokens.length === 1, `${a.tokens.length} tokens saved`);
  check(a.tokens[0].mechanism === "HT-SHA-256-NONE", `token for ${a.tokens[0].mechanism}`);
  check(new Date(a.tokens[0].expiry) > new Date(), "the token expired already");
  check(a.streamManagement.enabled && a.streamManagement.id, "stream management not enabled");
});

await scenario("xmpp.js FAST reconnect resumes inline and gets what was queued", async () => {
  await login(b);
  check(lastAuthenticate(b), "jb did not use SASL2 after STARTTLS");
  const full = a.jid.toString();
  const id = a.streamManagement.id;
  const before = a.sent.length;
  const resumed = next(a.streamManagement, "resumed");
  const got = next(a, "stanza", (s) => s.is("message") && s.getChildText("body") === "meanwhile");
  // The network goes away under the client; it reconnects by itself.
  const down = next(a, "disconnect");
  a.socket.socket.destroy();
  await within(WAIT, "disconnect", down);
  await b.send(xml("message", { to: full, type: "chat" }, xml("body", {}, "meanwhile")));
  await within(WAIT, "resumption", resumed);
  await within(WAIT, "the queued message", got);
  const auth = a.sent.slice(before).find((el) => el.is("authenticate", "urn:xmpp:sasl:2"));
  check(auth, "no SASL2 authentication on reconnect");
  check(auth.attrs.mechanism === "HT-SHA-256-NONE", `reconnected with ${auth.attrs.mechanism}`);
  check(auth.getChild("fast", "urn:xmpp:fast:0"), "no <fast/> in the request");
  const resume = auth.getChild("resume", "urn:xmpp:sm:3");
  check(resume && resume.attrs.previd === id, "no inline resumption of the session");
  check(a.jid.toString() === full, `resumed as ${a.jid} instead of ${full}`);
});

await scenario("xmpp.js FAST login after a clean stop binds a new session", async () => {
  await within(WAIT, "stop", a.stop());
  const before = a.sent.length;
  const jid = await login(a);
  const auth = a.sent.slice(before).find((el) => el.is("authenticate", "urn:xmpp:sasl:2"));
  check(auth?.attrs.mechanism === "HT-SHA-256-NONE", `logged in with ${auth?.attrs.mechanism}`);
  check(!auth.getChild("resume", "urn:xmpp:sm:3"), "tried to resume a session that ended");
  check(jid.resource.startsWith("interop/"), `resource ${jid.resource}`);
  // A request on the new session: the stream is usable.
  const ping = xml("iq", { type: "get", to: domain }, xml("ping", "urn:xmpp:ping"));
  const pong = await within(WAIT, "ping", a.iqCaller.request(ping));
  check(pong.attrs.type === "result", `ping answered ${pong}`);
});

for (const c of [a, b]) {
  try {
    c.reconnect.stop();
    await within(WAIT, "stop", c.stop());
  } catch {}
}
console.log(`${passed} passed, ${failed} failed`);
process.exit(failed ? 1 : 0);
