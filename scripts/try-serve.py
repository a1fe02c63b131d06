#!/usr/bin/env python3
"""`dcloud-fs serve` tried as a new user would (issue 15's "done when"), end to end.

A new HOME with the default local store, `dcloud-fs serve` on a free port of
127.0.0.1, and headless Chromium driven through WebDriver (chromedriver):

1. the page opens; a 50 MiB file and a short video are uploaded through its file
   input, with the browser's upload throttled (DevTools network conditions) so that
   the progress bars are seen moving; then a folder of 100 small files through its
   folder input;
2. both come back byte-exact: the 50 MiB file through the page's Download link, into
   the browser's download folder, and each of the 100 through the page's links
   (fetched and hashed in the browser);
3. the video plays in the browser after a seek to 2/3 of its length, and the server's
   log shows the 206 answers to the player's Range requests;
4. `/dav/` is mounted with `rclone mount` of a webdav remote: `diff -r` of the folder
   against the mount, then a second folder copied in through it and read back with
   `dcloud-fs get -r` and `diff -r` again (davfs2 1.6.1 fails every readdir with
   EINVAL on kernel 6.18, against any server);
5. screenshots of the page (during and after the uploads) and of the playing video
   are kept in the output folder.

Needs chromium, chromium-driver, rclone and fuse3 (for the WebDAV mount) and ffmpeg
(for the video); without the last two, those steps are skipped, saying so. Only the
standard library.

    scripts/try-serve.py [--bin target/release/dcloud-fs] [--out DIR]
"""

import argparse
import base64
import hashlib
import json
import os
import random
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

BIG_MIB = 50
SMALL_FILES = 100


def log(text):
    print(f"[{time.strftime('%H:%M:%S')}] {text}", flush=True)


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def http(method, url, body=None, timeout=120):
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(url, data=data, method=method)
    if data is not None:
        request.add_header("Content-Type", "application/json")
    try:
        with urllib.request.urlopen(request, timeout=timeout) as answer:
            return json.loads(answer.read() or b"null")
    except urllib.error.HTTPError as e:
        detail = e.read().decode(errors="replace")[:500]
        raise RuntimeError(f"{method} {url}: {e.code}: {detail}") from None


def wait_until(what, check, timeout=120, every=0.2):
    deadline = time.time() + timeout
    while True:
        got = check()
        if got:
            return got
        if time.time() > deadline:
            sys.exit(f"FAILED: {what} (waited {timeout} s)")
        time.sleep(every)


def sha256(path):
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for piece in iter(lambda: f.read(1 << 20), b""):
            digest.update(piece)
    return digest.hexdigest()


class Browser:
    """A headless Chromium session through chromedriver's WebDriver API."""

    def __init__(self, downloads):
        port = free_port()
        self.driver = subprocess.Popen(
            ["chromedriver", f"--port={port}"],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        self.base = f"http://127.0.0.1:{port}"
        wait_until("chromedriver answers", self._up, timeout=20)
        made = http(
            "POST",
            f"{self.base}/session",
            {
                "capabilities": {
                    "alwaysMatch": {
                        "browserName": "chrome",
                        "goog:chromeOptions": {
                            "binary": "/usr/bin/chromium",
                            "args": [
                                "--headless=new",
                                "--no-sandbox",
                                "--disable-gpu",
                                "--disable-dev-shm-usage",
                                "--window-size=1100,800",
                                "--autoplay-policy=no-user-gesture-required",
                            ],
                            "prefs": {
                                "download.default_directory": str(downloads),
                                "download.prompt_for_download": False,
                            },
                        },
                    }
                }
            },
        )
        self.session = made["value"]["sessionId"]
        self.call("POST", "/timeouts", {"script": 120_000})

    def _up(self):
        try:
            http("GET", f"{self.base}/status", timeout=2)
            return True
        except OSError:
            return False

    def call(self, method, path, body=None):
        url = f"{self.base}/session/{self.session}{path}"
        if method == "POST" and body is None:
            body = {}
        return http(method, url, body)["value"]

    def go(self, url):
        self.call("POST", "/url", {"url": url})

    def script(self, source, asynchronous=False):
        kind = "async" if asynchronous else "sync"
        return self.call("POST", f"/execute/{kind}", {"script": source, "args": []})

    def element(self, css):
        try:
            found = self.call("POST", "/element", {"using": "css selector", "value": css})
        except RuntimeError:
            return None
        return next(iter(found.values()))

    def send_path(self, css, path):
        self.call("POST", f"/element/{self.element(css)}/value", {"text": str(path)})

    def screenshot(self, out):
        out.write_bytes(base64.b64decode(self.call("GET", "/screenshot")))
        log(f"screenshot: {out}")

    def throttle_upload(self, bytes_per_second):
        conditions = {"offline": False, "latency": 0, "download_throughput": -1}
        conditions["upload_throughput"] = bytes_per_second
        self.call("POST", "/chromium/network_conditions", {"network_conditions": conditions})

    def quit(self):
        try:
            self.call("DELETE", "")
        finally:
            self.driver.kill()


def upload_states(browser):
    return browser.script(
        "return Array.from(document.querySelectorAll('#upload-list li')).map(li => "
        "[li.querySelector('.file-name').textContent, li.querySelector('.state').textContent, "
        "li.querySelector('progress').value, li.querySelector('progress').max]);"
    )


def watch_uploads(browser, count, timeout, midway_shot=None):
    """Polls the upload list until `count` uploads are stored; returns, per file, the
    progress values seen on the way. With `midway_shot`, takes a screenshot there the
    first time an upload is between 30 and 70 %."""
    seen = {}
    deadline = time.time() + timeout
    while True:
        states = upload_states(browser)
        for name, state, value, top in states:
            percent = round(100 * value / max(top, 1))
            seen.setdefault(name, set()).add(percent)
            if midway_shot and 30 <= percent <= 70:
                browser.screenshot(midway_shot)
                midway_shot = None
            if state.startswith("failed"):
                sys.exit(f"FAILED: the upload of {name}: {state}")
        done = [s for s in states if s[1] == "stored"]
        if len(done) >= count:
            return seen
        if time.time() > deadline:
            sys.exit(f"FAILED: {len(done)} of {count} uploads stored after {timeout} s")
        time.sleep(0.1)


def make_video(path):
    if not shutil.which("ffmpeg"):
        log("SKIPPED the video: no ffmpeg (Debian package ffmpeg)")
        return False
    subprocess.run(
        ["ffmpeg", "-loglevel", "error", "-f", "lavfi",
         "-i", "testsrc2=duration=60:size=640x360:rate=25",
         "-vf", "noise=alls=30:allf=t", "-c:v", "libvpx", "-deadline", "realtime",
         "-b:v", "4M", "-minrate", "4M", "-maxrate", "4M", "-g", "25", str(path)],
        check=True,
    )
    return True


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bin", default="target/release/dcloud-fs")
    parser.add_argument("--out", default=None, help="where screenshots go (default: the work folder)")
    args = parser.parse_args()
    binary = Path(args.bin).resolve()

    work = Path(tempfile.mkdtemp(prefix="try-serve-"))
    out = Path(args.out).resolve() if args.out else work
    out.mkdir(parents=True, exist_ok=True)
    home = work / "home"
    home.mkdir()
    env = {"HOME": str(home), "PATH": f"{binary.parent}:/usr/bin:/bin:/usr/sbin:/sbin"}

    def cli(*words, **kwargs):
        return subprocess.run([str(binary), *words], env=env, check=True, **kwargs)

    log(f"work folder {work}")
    cli("keygen", stdout=subprocess.DEVNULL)
    cli("mkdir", "-p", "trial")

    # What will be uploaded.
    rng = random.Random(15)
    files = work / "files"
    files.mkdir()
    big = files / "big.bin"
    big.write_bytes(os.urandom(BIG_MIB << 20))
    folder = work / "snaps"
    folder.mkdir()
    for i in range(SMALL_FILES):
        (folder / f"snap-{i:03}.jpg").write_bytes(os.urandom(rng.randint(1, 200 * 1024)))
    video = files / "clip.webm"
    has_video = make_video(video)

    port = free_port()
    address = f"127.0.0.1:{port}"
    serve_log = open(work / "serve.log", "w")
    serve = subprocess.Popen(
        [str(binary), "-v", "serve", "--listen", address],
        env=env, stderr=serve_log, stdout=serve_log,
    )
    mount = work / "dav"
    browser = None
    try:
        def page_up():
            try:
                http("GET", f"http://{address}/files/?json", timeout=2)
                return True
            except OSError:
                return False

        wait_until("serve answers", page_up, timeout=30)
        downloads = work / "downloads"
        downloads.mkdir()
        browser = Browser(downloads)
        browser.go(f"http://{address}/files/trial/")
        title = browser.call("GET", "/title")
        log(f"page open: {title!r}")

        # 1. The big file (and the video), throttled so progress shows.
        browser.throttle_upload(20 << 20)
        picked = [big] + ([video] if has_video else [])
        started = time.time()
        browser.send_path("#pick-files", "\n".join(map(str, picked)))
        seen = watch_uploads(browser, len(picked), timeout=300,
                             midway_shot=out / "trial-progress.png")
        log(f"{BIG_MIB} MiB uploaded through the page in {time.time() - started:.1f} s "
            f"(browser upload throttled to 20 MiB/s); progress values seen for big.bin: "
            f"{sorted(seen['big.bin'])}")
        moving = [v for v in seen["big.bin"] if 0 < v < 100]
        if len(moving) < 3:
            sys.exit(f"FAILED: the progress bar did not move: {sorted(seen['big.bin'])}")
        browser.screenshot(out / "trial-uploads.png")
        browser.call("DELETE", "/chromium/network_conditions")

        # The folder of 100.
        browser.go(f"http://{address}/files/trial/")
        started = time.time()
        browser.send_path("#pick-folder", folder)
        seen = watch_uploads(browser, SMALL_FILES, timeout=300)
        log(f"folder of {SMALL_FILES} uploaded through the page in {time.time() - started:.1f} s, "
            f"each with its own bar ({len(seen)} bars)")
        browser.screenshot(out / "trial-folder.png")

        # 2. Back, byte-exact: the big file by the page's Download link.
        browser.go(f"http://{address}/files/trial/")
        link = browser.element("a.action[href='/files/trial/big.bin?download']")
        if not link:
            sys.exit("FAILED: no Download link for big.bin on the page")
        started = time.time()
        browser.call("POST", f"/element/{link}/click")
        got = downloads / "big.bin"
        wait_until("the download of big.bin ends",
                   lambda: got.exists() and not list(downloads.glob("*.crdownload")), timeout=300)
        if sha256(got) != sha256(big):
            sys.exit("FAILED: big.bin came back different")
        log(f"big.bin downloaded by the browser in {time.time() - started:.1f} s: byte-exact")
        browser.go(f"http://{address}/files/trial/snaps/")
        digests = browser.script(
            "const done = arguments[arguments.length - 1];"
            "const links = Array.from(document.querySelectorAll('a.file'));"
            "Promise.all(links.map(a => fetch(a.href).then(r => r.arrayBuffer())"
            "  .then(b => crypto.subtle.digest('SHA-256', b))"
            "  .then(h => [a.textContent, Array.from(new Uint8Array(h))"
            "    .map(x => x.toString(16).padStart(2, '0')).join('')])))"
            ".then(done).catch(e => done('failed: ' + e));",
            asynchronous=True,
        )
        want = {p.name: sha256(p) for p in folder.iterdir()}
        if dict(digests) != want:
            sys.exit(f"FAILED: the folder came back different ({len(digests)} files listed)")
        log(f"the {SMALL_FILES} files fetched back through the page's links: byte-exact")

        # 3. The video, played after a seek.
        if has_video:
            before = (work / "serve.log").read_text().count("GET /files/trial/clip.webm 206")
            # In a <video> on the page: the file's own URL opens as a sandboxed
            # document (`CSP: sandbox`), where WebDriver can't run a script.
            browser.go(f"http://{address}/files/trial/")
            played = browser.script(
                "const done = arguments[arguments.length - 1];"
                "const v = document.createElement('video');"
                "v.controls = true; v.muted = true; v.width = 640;"
                "v.src = '/files/trial/clip.webm';"
                "document.querySelector('main').prepend(v);"
                "const go = () => { v.currentTime = v.duration * 2 / 3;"
                "  v.addEventListener('seeked', () => { v.play().catch(e => done('play: ' + e));"
                "    const from = v.currentTime;"
                "    v.addEventListener('timeupdate', function t() {"
                "      if (v.currentTime > from + 1) { v.removeEventListener('timeupdate', t);"
                "        done({from, now: v.currentTime, duration: v.duration,"
                "              ready: v.readyState}); } }); }, {once: true}); };"
                "if (v.readyState >= 1) go(); else v.addEventListener('loadedmetadata', go, {once: true});"
                "v.addEventListener('error', () => done('video error ' + (v.error && v.error.code)));"
                "setTimeout(() => done('stuck: ' + JSON.stringify({ready: v.readyState,"
                "  network: v.networkState, time: v.currentTime, duration: v.duration,"
                "  paused: v.paused, seeking: v.seeking})), 60000);",
                asynchronous=True,
            )
            if not isinstance(played, dict):
                sys.exit(f"FAILED: the video did not play after a seek: {played}")
            ranges = (work / "serve.log").read_text().count("GET /files/trial/clip.webm 206") - before
            log(f"video: seeked to {played['from']:.1f} s of {played['duration']:.1f} s and played on "
                f"to {played['now']:.1f} s; the server answered {ranges} Range requests with 206")
            if ranges < 1:
                sys.exit("FAILED: the player made no Range request")
            browser.screenshot(out / "trial-video.png")

        # 4. WebDAV through a mount of it: rclone's webdav backend. (davfs2 1.6.1
        # fails every readdir with EINVAL on this kernel, 6.18, whatever the server:
        # `rclone serve webdav` of a plain folder gives the same.)
        if not shutil.which("rclone") or not shutil.which("fusermount3"):
            log("SKIPPED the WebDAV mount: needs rclone and fuse3")
        else:
            mount.mkdir()
            rclone_conf = work / "rclone.conf"
            rclone_conf.write_text(f"[dcloud]\ntype = webdav\nurl = http://{address}/dav/\nvendor = other\n")
            mounted = subprocess.Popen(
                ["rclone", "--config", str(rclone_conf), "mount", "dcloud:", str(mount),
                 # No cache: each close ends once its PUT is answered, so the unmount
                 # leaves nothing behind.
                 "--vfs-cache-mode", "off", "--dir-cache-time", "1s"],
                stdout=serve_log, stderr=serve_log,
            )
            wait_until("the rclone mount is up", lambda: os.path.ismount(mount), timeout=30)
            diff = subprocess.run(["diff", "-r", str(folder), str(mount / "trial" / "snaps")])
            if diff.returncode != 0:
                sys.exit("FAILED: diff -r of the folder against the WebDAV mount")
            log("rclone mount of /dav/: diff -r of the folder uploaded by the page: no difference")
            more = work / "more"
            more.mkdir()
            for i in range(SMALL_FILES):
                (more / f"note-{i:03}.txt").write_bytes(os.urandom(rng.randint(1, 100 * 1024)))
            started = time.time()
            subprocess.run(["cp", "-r", str(more), str(mount / "trial" / "more")], check=True)
            subprocess.run(["fusermount3", "-u", str(mount)], check=True)
            mounted.wait(timeout=60)
            log(f"rclone mount: cp -r of {SMALL_FILES} files and unmount (which waits for "
                f"their upload) in {time.time() - started:.1f} s")
            back = work / "more-back"
            wait_until(
                "the files written through WebDAV are in the channel",
                lambda: subprocess.run(
                    [str(binary), "-q", "get", "-r", "trial/more", str(back)], env=env,
                    stderr=subprocess.DEVNULL).returncode == 0
                and len(list(back.iterdir())) == SMALL_FILES
                or shutil.rmtree(back, ignore_errors=True),
                timeout=60, every=1,
            )
            if subprocess.run(["diff", "-r", str(more), str(back)]).returncode != 0:
                sys.exit("FAILED: diff -r of what was written through WebDAV against get -r")
            log("WebDAV -> channel -> get -r: diff -r shows no difference")
        log("ALL PASSED")
    finally:
        if browser:
            browser.quit()
        if mount.is_dir() and os.path.ismount(mount):
            subprocess.run(["fusermount3", "-u", str(mount)])
        serve.terminate()
        serve.wait(timeout=30)
        serve_log.close()


if __name__ == "__main__":
    main()
