#!/usr/bin/env bash
# Refreshes conformance/gamma/ (the Gateway API mesh conformance data) from a
# checkout of kubernetes-sigs/gateway-api:
#
#   scripts/refresh-conformance.sh /path/to/gateway-api [COMMIT]
#
# Copied verbatim from the checkout at COMMIT (default HEAD), read with
# `git show` so the work tree's state does not matter:
#   conformance/mesh/manifests.yaml           -> base-manifests.yaml
#   conformance/tests/mesh/<test>.yaml        -> mesh/<ShortName>.yaml (for
#                                                every test expectations.json lists)
#   conformance/tests/<file>.yaml             -> gateway-reference/<file>.yaml
#   LICENSE                                   -> LICENSE
# and the commit is recorded in UPSTREAM.
#
# expectations.json is not generated: upstream keeps its expectations in Go
# (conformance/tests/mesh/*.go). The script compares the mesh tests upstream
# has (their ShortName and Manifests) with the ones expectations.json lists
# and exits 1 naming every test added, removed or given other manifests, so
# that expectations.json is updated by hand from the Go source in the same
# change.
set -euo pipefail

usage() { echo "usage: $0 GATEWAY_API_CHECKOUT [COMMIT]" >&2; exit 2; }
[ $# -ge 1 ] && [ $# -le 2 ] || usage
upstream=$1
commit=${2:-HEAD}
here="$(cd "$(dirname "$0")/.." && pwd)/conformance/gamma"
git -C "$upstream" rev-parse --verify -q "$commit^{commit}" >/dev/null \
  || { echo "$upstream: no commit $commit (is it a gateway-api git checkout?)" >&2; exit 2; }
sha=$(git -C "$upstream" rev-parse "$commit^{commit}")
date=$(git -C "$upstream" show -s --format=%cs "$sha")
# Releases are tagged on release branches: name the newest release tag of the
# repository (from the commit's view, where the checkout has the tags).
tag=$(git -C "$upstream" tag --list 'v*' --sort=-creatordate --merged "$sha" | head -n 1)
newest=$(git -C "$upstream" for-each-ref --sort=-creatordate --count=1 --format='%(refname:short)' 'refs/tags/v*')
tag="${newest:-none} (newest release tag; ${tag:-none} is the newest one it descends from)"

show() { git -C "$upstream" show "$sha:$1"; }
copy() { # upstream path, destination under conformance/gamma
  local tmp
  tmp=$(mktemp)
  if ! show "$1" >"$tmp" 2>/dev/null; then
    rm -f "$tmp"
    echo "upstream $sha has no $1" >&2
    return 1
  fi
  mv "$tmp" "$here/$2"
}

copy conformance/mesh/manifests.yaml base-manifests.yaml
copy LICENSE LICENSE
for f in "$here"/gateway-reference/*.yaml; do
  name=$(basename "$f")
  copy "conformance/tests/$name" "gateway-reference/$name"
done

# Each listed test's manifests, by ShortName (MeshBasic has none).
python3 - "$here/expectations.json" >"$here/.tests.tsv" <<'PY'
import json, sys
for t in json.load(open(sys.argv[1]))["tests"]:
    print(t["shortName"], t["caseFile"], " ".join(t["manifests"]), sep="\t")
PY
while IFS=$'\t' read -r short case manifests; do
  if [ -z "$manifests" ]; then
    continue
  fi
  # One manifest file per mesh test upstream; more would need concatenating.
  [ "$(wc -w <<<"$manifests")" -eq 1 ] || { echo "$short: more than one manifest: $manifests" >&2; exit 1; }
  copy "conformance/$manifests" "$case"
done <"$here/.tests.tsv"

# Upstream's mesh tests (ShortName and Manifests from the Go source).
listed=$(cut -f1,3 "$here/.tests.tsv" | sort)
rm -f "$here/.tests.tsv"
upstream_tests=$(
  for go in $(git -C "$upstream" ls-tree --name-only "$sha" conformance/tests/mesh/ | grep '\.go$'); do
    show "$go" | awk '
      /ShortName:/ { match($0, /"[^"]*"/); short = substr($0, RSTART + 1, RLENGTH - 2) }
      /Manifests:/ {
        m = $0; out = ""
        while (match(m, /"[^"]*"/)) { out = out (out ? " " : "") substr(m, RSTART + 1, RLENGTH - 2); m = substr(m, RSTART + RLENGTH) }
        if (short != "") { print short "\t" out; short = "" }
      }'
  done | sort
)
cat >"$here/UPSTREAM" <<EOF
kubernetes-sigs/gateway-api $sha ($date); $tag
Licence: Apache-2.0 (LICENSE). Refreshed by scripts/refresh-conformance.sh.
EOF
if [ "$listed" != "$upstream_tests" ]; then
  echo "expectations.json and upstream's mesh tests differ (< listed here, > upstream):" >&2
  diff <(echo "$listed") <(echo "$upstream_tests") | grep '^[<>]' >&2 || true
  echo "update expectations.json from conformance/tests/mesh/*.go at $sha" >&2
  exit 1
fi
echo "conformance/gamma refreshed from $sha ($date); $(wc -l <<<"$listed") mesh tests match expectations.json"
