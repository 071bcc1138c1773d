#!/usr/bin/env bash
# Checks in a real headless browser that the harness NetBox is served styled: logs in as the
# harness admin, and
#   (a) the page's stylesheets under /static/ answer 200 with text/css,
#   (b) the virtual machine list's HTML references NetBox's stylesheet,
#   (c) Chromium (Debian `chromium`, installed here when missing) renders the virtual machine
#       list at 1280x900 with that stylesheet applied; the screenshot is not blank/unstyled.
# The screenshot is kept: ${PNBO_ARTIFACT_DIR:-/tmp/pnbo-artifacts}/netbox-vm-list.png.
#
#   netbox-screenshot.sh        (needs `harness.sh up`; reads $PNBO_HARNESS_DIR/env unless
#                                NETBOX_URL, NETBOX_ADMIN_USER, NETBOX_ADMIN_PASSWORD are set)
#
# The chromium command line cannot carry a session cookie, so browser/cdp_screenshot.py
# drives Chromium over the DevTools protocol (standard library only) with the cookie that
# curl got from NetBox's login form.
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
ARTIFACTS="${PNBO_ARTIFACT_DIR:-/tmp/pnbo-artifacts}"
OUT="$ARTIFACTS/netbox-vm-list.png"
PAGE="/virtualization/virtual-machines/"
CHROMIUM="${CHROMIUM:-/usr/bin/chromium}"

log() { printf '[netbox-screenshot] %s\n' "$*" >&2; }
fail() { printf '[netbox-screenshot] FAIL: %s\n' "$*" >&2; exit 1; }

if [ -z "${NETBOX_URL:-}" ]; then
  envfile="${PNBO_HARNESS_DIR:-/tmp/pnbo-harness}/env"
  [ -f "$envfile" ] || fail "no $envfile: start the harness first (scripts/harness/harness.sh up)"
  # shellcheck disable=SC1090
  . "$envfile"
fi
: "${NETBOX_ADMIN_USER:=admin}"
[ -n "${NETBOX_ADMIN_PASSWORD:-}" ] || fail "NETBOX_ADMIN_PASSWORD is not set"
URL="${NETBOX_URL%/}"

if [ ! -x "$CHROMIUM" ]; then
  log "installing chromium"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null
fi

t0=$(date +%s)
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
jar="$work/cookies"

# Log in with the form, as a browser would: the CSRF cookie and token from GET, then POST.
curl -m 60 -fsS -c "$jar" -b "$jar" -o "$work/login.html" "$URL/login/"
csrf="$(sed -n 's/.*name="csrfmiddlewaretoken" value="\([^"]*\)".*/\1/p' "$work/login.html" | head -1)"
[ -n "$csrf" ] || fail "no CSRF token in $URL/login/"
code="$(curl -m 60 -sS -c "$jar" -b "$jar" -o /dev/null -w '%{http_code}' -H "Referer: $URL/login/" \
  --data-urlencode "csrfmiddlewaretoken=$csrf" --data-urlencode "username=$NETBOX_ADMIN_USER" \
  --data-urlencode "password=$NETBOX_ADMIN_PASSWORD" --data-urlencode "next=$PAGE" "$URL/login/")"
[ "$code" = 302 ] && grep -q 'sessionid' "$jar" || fail "login as $NETBOX_ADMIN_USER failed (HTTP $code)"

# (b) the page references NetBox's stylesheet under /static/.
code="$(curl -m 60 -sS -c "$jar" -b "$jar" -o "$work/page.html" -w '%{http_code}' "$URL$PAGE")"
[ "$code" = 200 ] || fail "$PAGE answered $code"
grep -q '<title>.*Virtual Machines' "$work/page.html" || fail "$PAGE is not the virtual machine list (not logged in?)"
mapfile -t sheets < <(python3 - "$work/page.html" <<'PY'
import html.parser, sys
class Links(html.parser.HTMLParser):
    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if tag == "link" and a.get("rel") == "stylesheet" and (a.get("href") or "").startswith("/static/"):
            print(a["href"])
Links().feed(open(sys.argv[1], encoding="utf-8").read())
PY
)
printf '%s\n' "${sheets[@]}" | grep -q '^/static/netbox\.css' ||
  fail "$PAGE does not reference /static/netbox.css (stylesheets: ${sheets[*]:-none})"

# (a) each of them is served as CSS.
for s in "${sheets[@]}"; do
  read -r code ctype < <(curl -m 60 -sS -o /dev/null -w '%{http_code} %{content_type}\n' "$URL$s")
  [ "$code" = 200 ] && [[ "$ctype" == text/css* ]] || fail "$s answered $code ($ctype)"
  log "ok: $s 200 $ctype"
done

# (c) the browser renders the page styled.
mkdir -p "$ARTIFACTS"
rm -f "$OUT"
python3 "$HERE/browser/cdp_screenshot.py" --chromium "$CHROMIUM" --url "$URL$PAGE" \
  --cookie-jar "$jar" --out "$OUT" --width 1280 --height 900 >"$work/report.json" ||
  { cat "$work/report.json" >&2; fail "browser check (screenshot: $OUT)"; }
python3 - "$work/report.json" <<'PY' >&2
import json, sys
r = json.load(open(sys.argv[1]))
p = r["png"]
print("[netbox-screenshot] ok: %s rendered, %d stylesheets, body %s, %d colours, %.0f%% white, %.1f%% coloured"
      % (r["title"], len(r["stylesheets"]), r["bodyBackground"], p["colours"], 100 * p["white_share"],
         100 * p["coloured_share"]))
PY
log "passed in $(( $(date +%s) - t0 )) s"
echo "$OUT"
