#!/usr/bin/env python3
"""Screenshot of a logged-in NetBox page in headless Chromium, standard library only.

The chromium command line cannot set cookies, so this drives Chromium over the DevTools
protocol on a pipe (--remote-debugging-pipe: JSON messages ending in NUL, commands on fd 3,
answers and events on fd 4): set the session cookies from a curl cookie jar, open the
page, wait for its load event and fonts, report what the page loaded, and save the PNG.
Then it decodes the PNG and fails when it looks blank or unstyled.

  cdp_screenshot.py --chromium /usr/bin/chromium --url URL --cookie-jar FILE --out PNG

Prints one JSON line with what it saw; exit 0 when the checks pass, 1 when one fails,
2 when the browser could not be driven.
"""
import argparse
import base64
import collections
import fcntl
import http.cookiejar
import json
import os
import select
import shutil
import struct
import subprocess
import sys
import tempfile
import time
import urllib.parse
import zlib


class Browser:
    """A Chromium process and its DevTools pipe."""

    def __init__(self, chromium, width, height, deadline):
        self.deadline = deadline
        self.profile = tempfile.mkdtemp(prefix="pnbo-chromium-")
        to_browser_r, to_browser_w = os.pipe()
        from_browser_r, from_browser_w = os.pipe()
        # Move the child's ends above 10 so the dup2 onto 3 and 4 cannot clobber each other.
        child_in = fcntl.fcntl(to_browser_r, fcntl.F_DUPFD, 10)
        child_out = fcntl.fcntl(from_browser_w, fcntl.F_DUPFD, 10)
        os.close(to_browser_r)
        os.close(from_browser_w)

        def wire_fds():
            os.dup2(child_in, 3)
            os.dup2(child_out, 4)

        args = [
            chromium, "--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
            "--remote-debugging-pipe", "--user-data-dir=" + self.profile,
            "--window-size=%d,%d" % (width, height), "--hide-scrollbars",
            "--no-first-run", "--no-default-browser-check", "--disable-extensions",
            "--disable-background-networking", "--disable-component-update",
            "--disable-sync", "--mute-audio", "--password-store=basic", "about:blank",
        ]
        self.log = open(os.path.join(self.profile, "chromium.log"), "w+b")
        self.proc = subprocess.Popen(args, stdin=subprocess.DEVNULL, stdout=self.log, stderr=self.log,
                                     pass_fds=(3, 4), preexec_fn=wire_fds)
        os.close(child_in)
        os.close(child_out)
        self.wfd = to_browser_w
        self.rfd = from_browser_r
        self.buf = b""
        self.next_id = 0
        self.events = collections.deque()

    def _read_message(self):
        while b"\0" not in self.buf:
            left = self.deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError("no answer from chromium in time")
            ready, _, _ = select.select([self.rfd], [], [], left)
            if not ready:
                continue
            chunk = os.read(self.rfd, 1 << 20)
            if not chunk:
                raise RuntimeError("chromium closed the DevTools pipe (exit %s)" % self.proc.poll())
            self.buf += chunk
        raw, self.buf = self.buf.split(b"\0", 1)
        return json.loads(raw)

    def send(self, method, params=None, session=None):
        self.next_id += 1
        msg = {"id": self.next_id, "method": method, "params": params or {}}
        if session:
            msg["sessionId"] = session
        data = json.dumps(msg).encode() + b"\0"
        while data:
            data = data[os.write(self.wfd, data):]
        while True:
            reply = self._read_message()
            if reply.get("id") == self.next_id:
                if "error" in reply:
                    raise RuntimeError("%s: %s" % (method, reply["error"]))
                return reply.get("result", {})
            if "method" in reply:
                self.events.append(reply)

    def wait_event(self, method, session):
        while True:
            while self.events:
                ev = self.events.popleft()
                if ev["method"] == method and ev.get("sessionId") == session:
                    return ev.get("params", {})
            self.events.append(self._read_message())

    def close(self):
        try:
            self.send("Browser.close")
        except Exception:
            pass
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        os.close(self.wfd)
        os.close(self.rfd)
        self.log.seek(0)
        tail = self.log.read()[-2000:]
        self.log.close()
        shutil.rmtree(self.profile, ignore_errors=True)
        return tail


def cookies_from_jar(path, base_url):
    jar = http.cookiejar.MozillaCookieJar(path)
    jar.load(ignore_discard=True, ignore_expires=True)
    # Leaves out Django's one-shot messages ("Logged in as admin."): curl keeps the cookie
    # after the page showed them, and the browser would show them again over the page.
    return [{"name": c.name, "value": c.value, "url": base_url, "path": c.path or "/"}
            for c in jar if c.name != "messages"]


def read_png(path):
    """Decodes an 8-bit RGB/RGBA PNG (what Chromium writes) into (width, height, channels, rows)."""
    with open(path, "rb") as f:
        data = f.read()
    if data[:8] != b"\x89PNG\r\n\x1a\n":
        raise ValueError("not a PNG")
    pos, idat = 8, []
    width = height = depth = ctype = interlace = None
    while pos < len(data):
        length, kind = struct.unpack(">I4s", data[pos:pos + 8])
        body = data[pos + 8:pos + 8 + length]
        pos += 12 + length
        if kind == b"IHDR":
            width, height, depth, ctype, _, _, interlace = struct.unpack(">IIBBBBB", body)
        elif kind == b"IDAT":
            idat.append(body)
        elif kind == b"IEND":
            break
    channels = {2: 3, 6: 4}.get(ctype)
    if depth != 8 or channels is None or interlace:
        raise ValueError("unsupported PNG (depth %s, colour type %s, interlace %s)" % (depth, ctype, interlace))
    raw = zlib.decompress(b"".join(idat))
    stride = width * channels
    rows, prev = [], bytearray(stride)
    for y in range(height):
        start = y * (stride + 1)
        ftype, line = raw[start], bytearray(raw[start + 1:start + 1 + stride])
        if ftype == 1:
            for i in range(channels, stride):
                line[i] = (line[i] + line[i - channels]) & 0xFF
        elif ftype == 2:
            line = bytearray((a + b) & 0xFF for a, b in zip(line, prev))
        elif ftype == 3:
            for i in range(stride):
                left = line[i - channels] if i >= channels else 0
                line[i] = (line[i] + ((left + prev[i]) >> 1)) & 0xFF
        elif ftype == 4:
            for i in range(stride):
                a = line[i - channels] if i >= channels else 0
                b = prev[i]
                c = prev[i - channels] if i >= channels else 0
                p = a + b - c
                pa, pb, pc = abs(p - a), abs(p - b), abs(p - c)
                pred = a if pa <= pb and pa <= pc else (b if pb <= pc else c)
                line[i] = (line[i] + pred) & 0xFF
        elif ftype != 0:
            raise ValueError("bad PNG filter %d" % ftype)
        rows.append(line)
        prev = line
    return width, height, channels, rows


def png_stats(path):
    """Colour statistics of a screenshot, from every second pixel of every second row."""
    width, height, channels, rows = read_png(path)
    counts = collections.Counter()
    for line in rows[::2]:
        for x in range(0, width, 2):
            i = x * channels
            counts[(line[i], line[i + 1], line[i + 2])] += 1
    total = sum(counts.values())
    colours = len(counts)
    white = counts.get((255, 255, 255), 0) / total
    # Share of saturated pixels (brand colours, badges, buttons); black-on-white text has none.
    coloured = sum(n for (r, g, b), n in counts.items() if max(r, g, b) - min(r, g, b) > 40) / total
    return {"width": width, "height": height, "colours": colours,
            "white_share": round(white, 4), "coloured_share": round(coloured, 4)}


PAGE_REPORT = """
document.fonts.ready.then(() => JSON.stringify({
  href: location.href,
  title: document.title,
  stylesheets: Array.from(document.styleSheets).map(s => {
    let rules = -1;
    try { rules = s.cssRules.length; } catch (e) {}
    return {href: s.href, rules: rules};
  }),
  bodyBackground: getComputedStyle(document.body).backgroundColor,
  bodyFont: getComputedStyle(document.body).fontFamily,
}))
"""


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--chromium", default="/usr/bin/chromium")
    ap.add_argument("--url", required=True, help="page to open (absolute)")
    ap.add_argument("--cookie-jar", required=True, help="curl cookie jar with the session")
    ap.add_argument("--out", required=True)
    ap.add_argument("--width", type=int, default=1280)
    ap.add_argument("--height", type=int, default=900)
    ap.add_argument("--timeout", type=float, default=90)
    ap.add_argument("--block-css", action="store_true", help="calibration: load no stylesheet")
    opts = ap.parse_args()

    parts = urllib.parse.urlsplit(opts.url)
    base = "%s://%s/" % (parts.scheme, parts.netloc)
    browser = Browser(opts.chromium, opts.width, opts.height, time.monotonic() + opts.timeout)
    try:
        target = browser.send("Target.createTarget", {"url": "about:blank"})["targetId"]
        session = browser.send("Target.attachToTarget", {"targetId": target, "flatten": True})["sessionId"]
        browser.send("Page.enable", session=session)
        browser.send("Network.enable", session=session)
        browser.send("Emulation.setDeviceMetricsOverride",
                     {"width": opts.width, "height": opts.height, "deviceScaleFactor": 1, "mobile": False},
                     session=session)
        if opts.block_css:
            browser.send("Network.setBlockedURLs", {"urls": ["*.css*"]}, session=session)
        browser.send("Network.setCookies", {"cookies": cookies_from_jar(opts.cookie_jar, base)}, session=session)
        nav = browser.send("Page.navigate", {"url": opts.url}, session=session)
        if nav.get("errorText"):
            raise RuntimeError("navigation failed: %s" % nav["errorText"])
        browser.wait_event("Page.loadEventFired", session)
        report = browser.send("Runtime.evaluate", {"expression": PAGE_REPORT, "awaitPromise": True,
                                                   "returnByValue": True}, session=session)
        page = json.loads(report["result"]["value"])
        shot = browser.send("Page.captureScreenshot", {"format": "png"}, session=session)
        os.makedirs(os.path.dirname(os.path.abspath(opts.out)), exist_ok=True)
        with open(opts.out, "wb") as f:
            f.write(base64.b64decode(shot["data"]))
    except Exception as e:
        tail = browser.close()
        sys.stderr.write("cdp_screenshot: %s\n--- chromium output (tail) ---\n%s\n" % (e, tail.decode(errors="replace")))
        return 2
    browser.close()

    stats = png_stats(opts.out)
    page["png"] = stats
    print(json.dumps(page))
    problems = []
    if urllib.parse.urlsplit(page["href"]).path != parts.path:
        problems.append("the browser ended on %s, not %s (login or static-media failure page?)" % (page["href"], parts.path))
    static_sheets = [s for s in page["stylesheets"] if s["href"] and "/static/" in s["href"]]
    if not any(s["rules"] > 100 for s in static_sheets):
        problems.append("no stylesheet from /static/ with rules was applied: %s" % page["stylesheets"])
    if (stats["width"], stats["height"]) != (opts.width, opts.height):
        problems.append("screenshot is %dx%d, not %dx%d" % (stats["width"], stats["height"], opts.width, opts.height))
    if stats["colours"] < 50:
        problems.append("screenshot has only %d colours: blank?" % stats["colours"])
    if stats["white_share"] > 0.9:
        problems.append("screenshot is %.0f%% pure white: unstyled?" % (100 * stats["white_share"]))
    if stats["coloured_share"] < 0.005:
        problems.append("screenshot has almost no coloured pixels (%.2f%%): unstyled?" % (100 * stats["coloured_share"]))
    for p in problems:
        sys.stderr.write("cdp_screenshot: FAIL: %s\n" % p)
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
