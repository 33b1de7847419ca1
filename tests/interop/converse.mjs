// Converse.js (pinned in package-lock.json) in Debian's Chromium, driven with playwright-core
// as a person would use it: the page a family member opens, served here from 127.0.0.1 with
// Converse's own files, connecting to hearth's WebSocket endpoint over TLS.
//
//   converse_login   two people log in, each in a browser of their own, and show online
//   converse_chat    one opens a chat and types a message, the other's page shows it; the
//                    answer comes back the same way
//   converse_upload  one attaches a picture (XEP-0363: a slot from hearth, a PUT from the page,
//                    which is another origin, so CORS, over HTTPS); the other's page shows it
//                    as an image, and fetches it back byte for byte
//
// Usage: node converse.mjs --ws URL --a JID --b JID (passwords in INTEROP_PASSWORD_CVA and
// INTEROP_PASSWORD_CVB). CHROMIUM names the browser (default /usr/bin/chromium). Prints one
// "PASS name" / "FAIL name: reason" line per scenario, then "converse: N passed, M failed".
import { chromium } from "playwright-core";
import { createServer } from "node:http";
import { readFile } from "node:fs/promises";
import { dirname, extname, join, normalize } from "node:path";
import { fileURLToPath } from "node:url";

const WAIT = 30_000;
const here = dirname(fileURLToPath(import.meta.url));
const dist = join(here, "node_modules", "converse.js", "dist");

const args = Object.fromEntries(
  process.argv.slice(2).reduce((acc, v, i, all) => (i % 2 ? acc : [...acc, [v.replace(/^--/, ""), all[i + 1]]]), []),
);
for (const k of ["ws", "a", "b"]) {
  if (!args[k]) {
    console.error(`converse.mjs: --${k} is missing`);
    process.exit(2);
  }
}
const passwords = { [args.a]: process.env.INTEROP_PASSWORD_CVA, [args.b]: process.env.INTEROP_PASSWORD_CVB };

// The page: Converse in full screen, logging in at once; a small plugin hands the test its
// API, to open a chat with a JID the way the contact list would.
const page = `<!doctype html><html><head><meta charset="utf-8">
<link rel="stylesheet" href="/dist/converse.min.css">
<script type="module" src="/dist/converse.min.js"></script></head>
<body><script type="module">
const p = new URLSearchParams(location.search);
converse.plugins.add("interop", { initialize() { window.interop = this._converse.api; } });
converse.initialize({
  whitelisted_plugins: ["interop"],
  websocket_url: ${JSON.stringify(args.ws)},
  discover_connection_methods: false,
  auto_login: true, jid: p.get("jid"), password: p.get("password"),
  view_mode: "fullscreen", assets_path: "/dist/", loglevel: "debug",
});
</script></body></html>`;

const types = { ".js": "text/javascript", ".css": "text/css", ".json": "application/json", ".wasm": "application/wasm", ".svg": "image/svg+xml", ".woff2": "font/woff2", ".png": "image/png" };
const web = createServer(async (req, res) => {
  const path = new URL(req.url, "http://x").pathname;
  if (path === "/") {
    res.writeHead(200, { "content-type": "text/html" }).end(page);
    return;
  }
  const rel = normalize(path.replace(/^\/dist\//, ""));
  if (!path.startsWith("/dist/") || rel.startsWith("..")) {
    res.writeHead(404).end();
    return;
  }
  try {
    const body = await readFile(join(dist, rel));
    res.writeHead(200, { "content-type": types[extname(rel)] ?? "application/octet-stream" }).end(body);
  } catch {
    res.writeHead(404).end();
  }
});
await new Promise((ok) => web.listen(0, "127.0.0.1", ok));
const origin = `http://127.0.0.1:${web.address().port}`;

// hearth's certificate is self-signed for the test: the browser is told to take it.
const browser = await chromium.launch({
  executablePath: process.env.CHROMIUM || "/usr/bin/chromium",
  args: [
    "--no-sandbox", "--disable-gpu", "--ignore-certificate-errors", "--disable-quic",
    "--no-first-run", "--disable-background-networking", "--disable-component-update", "--disable-sync",
  ],
});

const people = {};
async function open(jid) {
  const context = await browser.newContext();
  const tab = await context.newPage();
  tab.log = [];
  tab.on("console", (m) => tab.log.push(m.text()));
  tab.on("pageerror", (e) => tab.log.push(`page error: ${e.message}`));
  const q = new URLSearchParams({ jid, password: passwords[jid] });
  await tab.goto(`${origin}/?${q}`);
  await tab.getByText("I am online").waitFor({ timeout: WAIT });
  return tab;
}

// One message in `tab`'s open chat, typed and sent with Enter.
async function say(tab, text) {
  const box = tab.locator("textarea.chat-textarea");
  await box.fill(text);
  await box.press("Enter");
}

const results = [];
async function scenario(name, fn) {
  try {
    await fn();
    console.log(`PASS ${name}`);
    results.push(true);
  } catch (e) {
    console.log(`FAIL ${name}: ${String(e.message ?? e).split("\n")[0]}`);
    for (const [jid, tab] of Object.entries(people)) {
      const last = tab.log.filter((l) => !l.startsWith("%c")).slice(-8);
      console.error(`converse.mjs: ${jid}'s last log lines:\n  ${last.join("\n  ")}`);
    }
    results.push(false);
  }
}

const png = Buffer.from(
  "89504e470d0a1a0a0000000d4948445200000001000000010806000000" +
    "1f15c4890000000d49444154789c6360000002000154a24f5d0000000049454e44ae426082",
  "hex",
);

await scenario("converse_login", async () => {
  people[args.a] = await open(args.a);
  people[args.b] = await open(args.b);
});
if (results.every(Boolean)) {
  const a = people[args.a];
  const b = people[args.b];
  await scenario("converse_chat", async () => {
    await a.evaluate((jid) => window.interop.chats.open(jid), args.b);
    await b.evaluate((jid) => window.interop.chats.open(jid), args.a);
    await say(a, "hello from the browser");
    await b.locator(".chat-msg__text", { hasText: "hello from the browser" }).waitFor({ timeout: WAIT });
    await say(b, "and back again");
    await a.locator(".chat-msg__text", { hasText: "and back again" }).waitFor({ timeout: WAIT });
  });
  await scenario("converse_upload", async () => {
    await a.locator("input[type=file]").first().setInputFiles({ name: "photo.png", mimeType: "image/png", buffer: png });
    const img = b.locator("img.chat-image");
    await img.first().waitFor({ timeout: WAIT });
    const src = await img.first().getAttribute("src");
    if (!/^https:\/\/localhost(:\d+)?\/upload\/[0-9a-f]+\/photo\.png$/.test(src)) {
      throw new Error(`the image's address is ${src}`);
    }
    const got = await b.evaluate(async (url) => {
      const r = await fetch(url);
      return { status: r.status, type: r.headers.get("content-type"), hex: [...new Uint8Array(await r.arrayBuffer())].map((x) => x.toString(16).padStart(2, "0")).join("") };
    }, src);
    if (got.status !== 200 || got.type !== "image/png" || got.hex !== png.toString("hex")) {
      throw new Error(`fetching it back gave ${got.status} ${got.type}, ${got.hex.length / 2} bytes`);
    }
  });
}

await browser.close();
web.close();
const passed = results.filter(Boolean).length;
const failed = 3 - passed;
console.log(`converse: ${passed} passed, ${failed} failed`);
process.exit(failed ? 1 : 0);
