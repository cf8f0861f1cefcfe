// A grpod client in Node.js with no dependencies (Node 18+: the built-in fetch).
//
//   GRPOD_API_URL=http://127.0.0.1:8080 GRPOD_PUBLISH_TOKEN=grpod_... GRPOD_READ_TOKEN=grpod_... \
//     node examples/node/grpod_example.mjs [DOMAIN]
//
// It publishes a trace and its reward over HTTP, then reads the domain's library and revalidates it
// with its ETag (a 304 while nothing changed). It prints one JSON line of what it saw, and exits 1
// on anything unexpected.
import { randomUUID } from "node:crypto";

const api = (process.env.GRPOD_API_URL ?? "http://127.0.0.1:8080").replace(/\/$/, "");
const publishToken = process.env.GRPOD_PUBLISH_TOKEN;
const readToken = process.env.GRPOD_READ_TOKEN ?? publishToken;
const domain = process.argv[2] ?? "support";

function fail(message) {
  console.error(`grpod example: ${message}`);
  process.exit(1);
}

if (!publishToken) fail("set GRPOD_PUBLISH_TOKEN (grpod token create NAME --domain D --scope publish)");

async function call(path, { token, method = "GET", body, headers = {} } = {}) {
  const response = await fetch(`${api}${path}`, {
    method,
    headers: { Authorization: `Bearer ${token}`, "Content-Type": "application/json", ...headers },
    body: body === undefined ? undefined : JSON.stringify(body),
  });
  const text = await response.text();
  return { status: response.status, etag: response.headers.get("etag"), body: text ? JSON.parse(text) : null };
}

const traceId = `node-${randomUUID()}`;
const now = new Date().toISOString();
const events = [
  {
    type: "trace",
    schema_version: 1,
    trace_id: traceId,
    domain,
    query: "How do I rotate my API key?",
    trajectory: [
      { role: "user", content: "How do I rotate my API key?" },
      { role: "assistant", content: "Open Settings > API keys and press Rotate." },
    ],
    answer: "Open Settings > API keys and press Rotate.",
    created_at: now,
  },
  { type: "reward", schema_version: 1, trace_id: traceId, value: 1.0, source: "node-example", created_at: now },
];

const published = await call("/v1/events", { token: publishToken, method: "POST", body: events });
if (published.status !== 200 || published.body.accepted !== 2) fail(`publishing: ${JSON.stringify(published)}`);

const first = await call(`/v1/libraries/${encodeURIComponent(domain)}`, { token: readToken });
if (first.status !== 200 || !first.etag) fail(`reading the library: ${JSON.stringify(first)}`);
const again = await call(`/v1/libraries/${encodeURIComponent(domain)}`, {
  token: readToken,
  headers: { "If-None-Match": first.etag },
});
if (again.status !== 304) fail(`revalidating with the ETag gave ${again.status}, not 304`);

console.log(
  JSON.stringify({
    trace_id: traceId,
    accepted: published.body.accepted,
    version: first.body.version,
    experiences: first.body.experiences.length,
    etag: first.etag,
    revalidated: again.status,
  }),
);
