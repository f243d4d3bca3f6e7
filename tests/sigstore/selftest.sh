#!/usr/bin/env bash
# Self-test for verify.mjs that does not involve lockstep at all.
#
# Builds, with openssl only, a throwaway PKI (P-256 root -> intermediate ->
# code-signing leaf, and a TSA cert under the intermediate), signs an artifact,
# timestamps the SIGNATURE with `openssl ts`, assembles a Sigstore bundle v0.3
# and a trusted_root.json, then checks that verify.mjs accepts what it should
# and refuses what it should. Exits non-zero if any expectation fails.
#
# Needs: openssl (3.x), node + `npm ci` done in this directory, faketime.
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
VERIFY="$HERE/verify.mjs"
[ -d "$HERE/node_modules/@sigstore/verify" ] ||
  { echo "run: npm ci --prefix $HERE --no-audit --no-fund" >&2; exit 2; }
command -v faketime >/dev/null || { echo "faketime is required" >&2; exit 2; }

W="$(mktemp -d)"
trap 'rm -rf "$W"' EXIT
cd "$W"

SAN='https://github.com/acme/app/.github/workflows/release.yml@refs/tags/v1'
ISSUER='https://token.actions.githubusercontent.com'
PAST='-2d'                                       # "earlier" for faketime
START="$(date -u -d '-30 days' +%Y-%m-%dT%H:%M:%SZ)"  # trusted root validFor.start
b64() { base64 -w0 "$1"; }
der() { openssl x509 -in "$1" -outform DER -out "$2"; }

# ---------------------------------------------------------------- PKI
cat > ext.cnf <<EOF
[req]
distinguished_name = dn
[dn]
[root]
basicConstraints = critical, CA:TRUE
keyUsage = critical, keyCertSign, cRLSign
subjectKeyIdentifier = hash
[ca]
basicConstraints = critical, CA:TRUE
keyUsage = critical, keyCertSign, cRLSign
subjectKeyIdentifier = hash
authorityKeyIdentifier = keyid:always
[leaf]
basicConstraints = critical, CA:FALSE
keyUsage = critical, digitalSignature
extendedKeyUsage = codeSigning
subjectKeyIdentifier = hash
authorityKeyIdentifier = keyid:always
subjectAltName = critical, URI:$SAN
# Fulcio issuer (v2): DER-encoded UTF8String
1.3.6.1.4.1.57264.1.8 = ASN1:UTF8String:$ISSUER
[leaf_legacy]
basicConstraints = critical, CA:FALSE
keyUsage = critical, digitalSignature
extendedKeyUsage = codeSigning
subjectKeyIdentifier = hash
authorityKeyIdentifier = keyid:always
subjectAltName = critical, URI:$SAN
# Fulcio issuer (v1, deprecated): the raw string bytes, no DER wrapping
1.3.6.1.4.1.57264.1.1 = DER:$(printf %s "$ISSUER" | od -An -tx1 | tr -d ' \n')
[tsa]
basicConstraints = critical, CA:FALSE
keyUsage = critical, digitalSignature
extendedKeyUsage = critical, timeStamping
subjectKeyIdentifier = hash
authorityKeyIdentifier = keyid:always
EOF

key() { openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out "$1" 2>/dev/null; }
# mkcert NAME SUBJECT ISSUER_NAME EXT DAYS [faketime-offset]
mkcert() {
  local name=$1 subj=$2 ca=$3 ext=$4 days=$5 when=${6:-+0}
  key "$name.key"
  openssl req -new -key "$name.key" -subj "$subj" -out "$name.csr"
  faketime -f "$when" openssl x509 -req -in "$name.csr" -CA "$ca.pem" -CAkey "$ca.key" \
    -CAcreateserial -days "$days" -sha256 -extfile ext.cnf -extensions "$ext" \
    -out "$name.pem" 2>/dev/null
  der "$name.pem" "$name.der"
}
mkroot() {
  key "$1.key"
  faketime -f "${3:-+0}" openssl req -x509 -new -key "$1.key" -subj "$2" -days 3650 -sha256 \
    -config ext.cnf -extensions root -out "$1.pem"
  der "$1.pem" "$1.der"
}

mkroot root '/O=Acme Test/CN=Acme Test Root' -10d
mkcert inter '/O=Acme Test/CN=Acme Test Intermediate' root ca 1825 -10d
# The leaf lives ONE day, starting 2 days ago: it is already expired now.
mkcert leaf '/O=Acme Test/CN=leaf' inter leaf 1 "$PAST"
mkcert leaf1 '/O=Acme Test/CN=leaf legacy' inter leaf_legacy 1 "$PAST"
# The TSA cert lives one year (so under faketime +5y it has expired too).
mkcert tsa '/O=Acme Test/CN=Acme Test TSA' inter tsa 365 -10d
mkroot other '/O=Evil/CN=Unrelated Root'
cat inter.pem root.pem > tsa-chain.pem
cat tsa.pem inter.pem > untrusted.pem

cat > tsa.cnf <<EOF
[tsa]
default_tsa = tsa_config
[tsa_config]
dir = .
serial = $W/tsaserial
signer_cert = $W/tsa.pem
signer_key = $W/tsa.key
certs = $W/tsa-chain.pem
signer_digest = sha256
default_policy = 1.3.6.1.4.1.57264.2
digests = sha256, sha384, sha512
accuracy = secs:1
ordering = no
tsa_name = no
ess_cert_id_chain = no
ess_cert_id_alg = sha256
EOF
echo 01 > tsaserial

printf 'hello from the release pipeline\n' > artifact.txt
printf 'hello from the release pipelinf\n' > changed.txt

# sign LEAF -> LEAF.sig.der (DER ECDSA over SHA-256 of the artifact)
sign() { openssl dgst -sha256 -sign "$1.key" -out "$1.sig.der" artifact.txt; }
# timestamp DATA OUT WHEN [query opts] -> OUT.tsr (TimeStampResp), OUT.tst (token)
timestamp() {
  local data=$1 out=$2 when=$3; shift 3
  openssl ts -query -data "$data" -sha256 "$@" -out "$out.tsq" 2>/dev/null
  faketime -f "$when" openssl ts -reply -config tsa.cnf -queryfile "$out.tsq" \
    -out "$out.tsr" 2>/dev/null
  # sanity: openssl itself accepts the reply against our chain (when it should)
  [ "$out" = ts-late ] || openssl ts -verify -in "$out.tsr" -data "$data" -CAfile root.pem -untrusted untrusted.pem \
    -attime "$(faketime -f "$when" date +%s)" >/dev/null 2>&1 \
    || { echo "openssl ts -verify failed for $out" >&2; exit 3; }
  openssl ts -reply -in "$out.tsr" -token_out -out "$out.tst" 2>/dev/null
}

# bundle OUT LEAF_DER SIG_DER TIMESTAMP_DER_OR_EMPTY
bundle() {
  local ts=''
  [ -n "$4" ] && ts="{\"signedTimestamp\":\"$(b64 "$4")\"}"
  cat > "$1" <<EOF
{
  "mediaType": "application/vnd.dev.sigstore.bundle.v0.3+json",
  "verificationMaterial": {
    "certificate": {"rawBytes": "$(b64 "$2")"},
    "tlogEntries": [],
    "timestampVerificationData": {"rfc3161Timestamps": [$ts]}
  },
  "messageSignature": {
    "messageDigest": {"algorithm": "SHA2_256",
                      "digest": "$(openssl dgst -sha256 -binary artifact.txt | base64 -w0)"},
    "signature": "$(b64 "$3")"
  }
}
EOF
}

# root OUT [tsa validFor end] [CA chain files...]
trusted_root() {
  local out=$1 tsa_end=$2; shift 2
  local chain='' f cas=("$@"); [ ${#cas[@]} -gt 0 ] || cas=(inter.der root.der)
  for f in "${cas[@]}"; do chain+="${chain:+,}{\"rawBytes\":\"$(b64 "$f")\"}"; done
  local end=''; [ -n "$tsa_end" ] && end=", \"end\": \"$tsa_end\""
  cat > "$out" <<EOF
{
  "mediaType": "application/vnd.dev.sigstore.trustedroot+json;version=0.1",
  "tlogs": [],
  "certificateAuthorities": [{
    "subject": {"organization": "Acme Test", "commonName": "Acme Test Intermediate"},
    "uri": "https://ca.example.test",
    "certChain": {"certificates": [$chain]},
    "validFor": {"start": "$START"}
  }],
  "ctlogs": [],
  "timestampAuthorities": [{
    "subject": {"organization": "Acme Test", "commonName": "Acme Test TSA"},
    "uri": "https://tsa.example.test",
    "certChain": {"certificates": [
      {"rawBytes": "$(b64 tsa.der)"}, {"rawBytes": "$(b64 inter.der)"}, {"rawBytes": "$(b64 root.der)"}
    ]},
    "validFor": {"start": "$START"$end}
  }]
}
EOF
}

sign leaf
sign leaf1
timestamp leaf.sig.der ts "$PAST" -cert
timestamp leaf1.sig.der ts1 "$PAST" -cert
timestamp artifact.txt ts-art "$PAST" -cert      # wrong: over the artifact
timestamp leaf.sig.der ts-bare "$PAST" -no_nonce # no certs in token, no nonce
timestamp leaf.sig.der ts-now +0 -cert            # genTime after the leaf expired
timestamp leaf.sig.der ts-late +2y -cert           # genTime after the TSA cert expired
bundle good.json leaf.der leaf.sig.der ts.tsr
bundle ts-now.json leaf.der leaf.sig.der ts-now.tsr
bundle ts-late.json leaf.der leaf.sig.der ts-late.tsr
bundle token.json leaf.der leaf.sig.der ts.tst
bundle legacy.json leaf1.der leaf1.sig.der ts1.tsr
bundle bare.json leaf.der leaf.sig.der ts-bare.tsr
bundle ts-art.json leaf.der leaf.sig.der ts-art.tsr
bundle nots.json leaf.der leaf.sig.der ''
trusted_root trusted_root.json ''
trusted_root tsa-ended.json "$(date -u -d '-5 days' +%Y-%m-%dT%H:%M:%SZ)"
trusted_root other-ca.json '' other.der

# ---------------------------------------------------------------- checks
fails=0; passes=0
# The premises of the expiry tests: the leaf is already expired now, and the
# TSA cert is expired five years from now.
openssl x509 -in leaf.pem -noout -checkend 0 >/dev/null && { echo "leaf not expired?" >&2; exit 3; }
openssl x509 -in tsa.pem -noout -checkend $((5*365*86400)) >/dev/null &&
  { echo "TSA cert valid in 5y?" >&2; exit 3; }
# expect WANT(ok|CODE) DESCRIPTION -- node args...
expect() {
  local want=$1 what=$2; shift 3
  local out rc=0
  out="$("$@" 2>&1)" || rc=$?
  local got
  if [ "$rc" = 0 ] && [[ "$out" == '{"ok":true'* ]]; then got=ok
  else got="$(printf %s "$out" | sed -n 's/.*"code":"\([^"]*\)".*/\1/p')"; got=${got:-rc$rc}; fi
  if [ "$got" = "$want" ] && { [ "$want" = ok ] || [ "$rc" = 1 ]; }; then
    passes=$((passes+1)); echo "PASS  $what -> $got"
  else
    fails=$((fails+1)); echo "FAIL  $what: want $want, got $got (rc=$rc)"
  fi
  echo "      $out" | cut -c1-400
}
V() { node "$VERIFY" --artifact artifact.txt --trusted-root trusted_root.json "$@"; }

expect ok 'good bundle (leaf already expired now)' -- \
  V --bundle good.json --identity "$SAN" --issuer "$ISSUER"
expect ok 'good bundle, no policy' -- V --bundle good.json
expect ok 'token without embedded TSA cert and without nonce' -- V --bundle bare.json
expect ok 'legacy issuer OID .1.1 (raw string)' -- \
  V --bundle legacy.json --identity "$SAN" --issuer "$ISSUER"
expect SIGNATURE_ERROR 'changed artifact' -- \
  node "$VERIFY" --bundle good.json --artifact changed.txt --trusted-root trusted_root.json
expect UNTRUSTED_SIGNER_ERROR 'wrong --identity' -- \
  V --bundle good.json --identity 'https://github.com/acme/evil/.github/workflows/release.yml@refs/tags/v1'
expect UNTRUSTED_SIGNER_ERROR '--identity is exact, not a regex/prefix' -- \
  V --bundle good.json --identity 'https://github.com/acme/app'
expect UNTRUSTED_SIGNER_ERROR 'wrong --issuer' -- \
  V --bundle good.json --issuer 'https://accounts.google.com'
expect ok 'verifier under faketime +5y (leaf and TSA cert both expired)' -- \
  faketime -f +5y node "$VERIFY" --bundle good.json --artifact artifact.txt \
  --trusted-root trusted_root.json --identity "$SAN" --issuer "$ISSUER"
# signedTimestamp must be the whole TimeStampResp: a bare token crashes the
# parser (TypeError from @sigstore/core's RFC3161Timestamp), i.e. it is refused.
expect TypeError 'signedTimestamp = bare TimeStampToken (not TimeStampResp)' -- \
  V --bundle token.json
expect CERTIFICATE_ERROR 'leaf already expired at genTime' -- V --bundle ts-now.json
expect TIMESTAMP_ERROR 'TSA cert already expired at genTime' -- V --bundle ts-late.json
expect TIMESTAMP_ERROR 'no RFC 3161 timestamp' -- V --bundle nots.json
expect TIMESTAMP_ERROR 'timestamp over the artifact, not the signature' -- V --bundle ts-art.json
expect TIMESTAMP_ERROR 'TSA validFor ended before genTime' -- \
  node "$VERIFY" --bundle good.json --artifact artifact.txt --trusted-root tsa-ended.json
expect CERTIFICATE_ERROR 'leaf not under a trusted CA' -- \
  node "$VERIFY" --bundle good.json --artifact artifact.txt --trusted-root other-ca.json

echo "$passes passed, $fails failed"
[ "$fails" = 0 ]
