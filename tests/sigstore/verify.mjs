#!/usr/bin/env node
// Independent Sigstore bundle verifier for lockstep's integration tests.
//
//   node verify.mjs --bundle B --artifact A --trusted-root T [--identity SAN] [--issuer ISSUER]
//
// Verifies a Sigstore bundle (v0.3, messageSignature over the artifact bytes)
// with @sigstore/verify -- code lockstep did not write -- against a custom
// trusted_root.json. lockstep's signatures are not logged anywhere, so:
//   tlogThreshold 0       no Rekor (transparency log) entry is required;
//   ctlogThreshold 0      no SCT (certificate transparency) is required;
//   timestampThreshold 1  one RFC 3161 timestamp is required: its genTime is
//                         the time at which the leaf chain, the TSA chain and
//                         the trusted root's validFor windows are checked (not
//                         "now"), so a short-lived leaf still verifies later.
// (`timestampThreshold` is the option's current name; `tsaThreshold` is its
// deprecated alias. A bundle with no tlog entries has only TSA timestamps.)
// --identity is matched EXACTLY against the leaf's SAN (URI or email);
// --issuer exactly against the Fulcio issuer extension (OID 1.3.6.1.4.1.57264.1.8,
// falling back to legacy .1.1).
//
// Prints one line of JSON to stdout:
//   {"ok":true,"identity":{...},"timestamps":[...],...}       exit 0
//   {"ok":false,"code":"<error code>","message":"..."}         exit 1
//   (exit 2 with code "USAGE" for bad arguments)
import { readFileSync } from 'node:fs';
import { parseArgs } from 'node:util';
import { bundleFromJSON } from '@sigstore/bundle';
import { TrustedRoot } from '@sigstore/protobuf-specs';
import { Verifier, toSignedEntity, toTrustMaterial } from '@sigstore/verify';

const USAGE =
  'usage: node verify.mjs --bundle B --artifact A --trusted-root T [--identity SAN] [--issuer ISSUER]';
const readJSON = (path) => JSON.parse(readFileSync(path, 'utf8'));
// @sigstore/verify treats the SAN policy as an (unanchored) regex; make it exact.
const exactly = (s) => `^${s.replace(/[.*+?^${}()|[\]\\/]/g, '\\$&')}$`;

function verify(args) {
  const bundle = bundleFromJSON(readJSON(args.bundle));
  const trust = toTrustMaterial(TrustedRoot.fromJSON(readJSON(args['trusted-root'])));
  const entity = toSignedEntity(bundle, readFileSync(args.artifact));
  const verifier = new Verifier(trust, {
    tlogThreshold: 0,
    ctlogThreshold: 0,
    timestampThreshold: 1,
  });
  const policy = {};
  if (args.identity !== undefined) policy.subjectAlternativeName = exactly(args.identity);
  if (args.issuer !== undefined) policy.extensions = { issuer: args.issuer };
  const signer = verifier.verify(entity, policy); // throws on any failure

  return {
    ok: true,
    mediaType: bundle.mediaType,
    identity: {
      subjectAlternativeName: signer.identity?.subjectAlternativeName ?? null,
      issuer: signer.identity?.extensions?.issuer ?? null,
    },
    timestamps: entity.timestamps.map((t) =>
      t.$case === 'timestamp-authority'
        ? { type: t.$case, genTime: t.timestamp.signingTime.toISOString() }
        : { type: t.$case, integratedTime: t.tlogEntry.integratedTime },
    ),
    tlogEntries: entity.tlogEntries.length,
  };
}

function main() {
  let args;
  try {
    ({ values: args } = parseArgs({
      options: {
        bundle: { type: 'string' },
        artifact: { type: 'string' },
        'trusted-root': { type: 'string' },
        identity: { type: 'string' },
        issuer: { type: 'string' },
      },
    }));
    if (!args.bundle || !args.artifact || !args['trusted-root']) throw new Error("missing --bundle, --artifact or --trusted-root");
  } catch (err) {
    console.log(JSON.stringify({ ok: false, code: 'USAGE', message: `${err.message}\n${USAGE}` }));
    process.exitCode = 2;
    return;
  }
  try {
    console.log(JSON.stringify(verify(args)));
  } catch (err) {
    // VerificationError / PolicyError carry .code (e.g. TIMESTAMP_ERROR,
    // CERTIFICATE_ERROR, SIGNATURE_ERROR, UNTRUSTED_SIGNER_ERROR); the bundle's
    // ValidationError has no code, only .fields (reported as INVALID_BUNDLE);
    // anything else (bad JSON, unreadable file, ASN.1 parse error) gives its
    // .code or name.
    const code = err.code ?? (err.fields ? 'INVALID_BUNDLE' : err.name ?? 'ERROR');
    const out = { ok: false, code, message: String(err.message) };
    if (err.fields) out.fields = err.fields;
    if (err.cause?.message) out.cause = String(err.cause.message);
    console.log(JSON.stringify(out));
    process.exitCode = 1;
  }
}

main();
