// Follows lockstep's event stream with the `eventsource` package, a
// WHATWG-compliant EventSource: it reconnects by itself when the
// connection drops, sending Last-Event-ID. Prints one JSON line per
// message ({type, lastEventId, data}) and one {type: "reconnecting"} per
// connection error.
//
//   LOCKSTEP_TOKEN=... NODE_EXTRA_CA_CERTS=root.pem node follow.mjs URL
import { EventSource } from "eventsource";

const KINDS = [
  "requested", "approved", "denied", "opened", "minted", "voided", "closed",
  "refused", "refusals_counted", "service_started", "service_stopped",
  "key_initialised", "issuing_ca_certified", "stream_error",
];

const token = process.env.LOCKSTEP_TOKEN;
const source = new EventSource(process.argv[2], {
  fetch: (input, init) => {
    const headers = new Headers(init?.headers);
    headers.set("Authorization", `Bearer ${token}`);
    return fetch(input, { ...init, headers });
  },
});
for (const kind of KINDS) {
  source.addEventListener(kind, (e) => {
    console.log(JSON.stringify({ type: e.type, lastEventId: e.lastEventId, data: JSON.parse(e.data) }));
  });
}
source.onerror = () => console.log(JSON.stringify({ type: "reconnecting" }));
