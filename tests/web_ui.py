"""Drives whisperd's web page (GET /) in headless Chromium, as a person would.

usage: python web_ui.py --base-url http://127.0.0.1:PORT --audio jfk.wav --out DIR [--api-key KEY]

Checks, in order (a screenshot of each step goes to DIR):
  1. the page loads with nothing fetched from anywhere but the server; with --api-key, a
     transcription without the key is refused with a message pointing at the key field, the key
     typed into the field survives a reload (it is kept in the browser);
  2. jfk.wav uploaded through the file input and transcribed (word timestamps on) shows
     "ask not what your country can do for you" within 90 s, streamed, with segment times and
     word spans; clicking a word seeks the player there and highlights it;
  3. the .srt download lands in DIR/downloads with numbered cues and "-->" times and the words;
     .vtt, .txt and .json too;
  4. the page has no horizontal overflow at phone width (390x844, screenshot of the transcript);
  5. a recording from Chromium's fake microphone (fed the same audio) of about 12 s, stopped,
     is transcribed and contains "country".
Exit status 0 and "web ui ok" on success; otherwise "web ui FAILED: reason" and exit status 1.

Chromium runs with --headless=new --no-sandbox, /usr/bin/chromedriver (never Selenium Manager),
and every connection to a host other than 127.0.0.1 refused (host resolver and proxy rules).
Needs: selenium (pip), chromium + chromedriver, sox only if the audio is not 16-bit PCM WAV.
"""
import argparse
import base64
import json
import os
import re
import shutil
import subprocess
import sys
import time
import traceback
import urllib.parse
import wave

os.environ.setdefault("SE_OFFLINE", "true")  # never let Selenium Manager reach the network

from selenium import webdriver  # noqa: E402
from selenium.common.exceptions import WebDriverException  # noqa: E402
from selenium.webdriver.chrome.service import Service  # noqa: E402
from selenium.webdriver.common.action_chains import ActionChains  # noqa: E402
from selenium.webdriver.common.by import By  # noqa: E402
from selenium.webdriver.support.ui import Select  # noqa: E402

PHRASE = "ask not what your country can do for you"
CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"
DESKTOP = (1200, 1000)
PHONE = (390, 844)


class Failure(Exception):
    pass


def norm(text):
    """Lower case, punctuation dropped, whitespace collapsed."""
    return " ".join(re.sub(r"[^\w\s]", " ", text.lower()).split())


def log(msg):
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


class Page:
    def __init__(self, driver, base, out):
        self.d = driver
        self.base = base
        self.out = out
        self.shots = []

    def el(self, elem_id):
        return self.d.find_element(By.ID, elem_id)

    def text(self, elem_id):
        return self.d.execute_script(
            "const e = document.getElementById(arguments[0]); return e ? e.textContent : '';", elem_id)

    def transcript(self):
        """The transcript's words (segment texts only, not their times)."""
        return self.d.execute_script(
            "return [...document.querySelectorAll('#transcript .seg-text')].map(e => e.textContent).join(' ');")

    def state(self):
        """What the page says right now, for failure messages."""
        return (f"status={self.text('status')!r} error={self.text('error').strip()!r} "
                f"transcript={self.text('transcript').strip()[:300]!r}")

    def wait(self, cond, timeout, what, poll=0.2):
        end = time.monotonic() + timeout
        last = None
        while time.monotonic() < end:
            try:
                v = cond()
                if v:
                    return v
            except WebDriverException as e:
                last = e
            time.sleep(poll)
        raise Failure(f"timed out after {timeout} s waiting for {what}; page: {self.state()}"
                      + (f"; last error: {last.msg}" if last else ""))

    def wait_transcript(self, source, timeout, what):
        """Until the page shows the finished transcript of `source` (a name, or a prefix ending
        in '-'); a failure the page reports ends the wait at once."""
        def done():
            err = self.text("error").strip()
            if err and self.el("error").is_displayed():
                raise Failure(f"the page reports an error while waiting for {what}: {err!r}")
            got = self.el("transcript").get_attribute("data-source") or ""
            return got == source or (source.endswith("-") and got.startswith(source))
        self.wait(done, timeout, what)

    def shot(self, name, full=False):
        path = os.path.join(self.out, name)
        if full:
            # the whole page, not only the viewport
            data = self.d.execute_cdp_cmd("Page.captureScreenshot",
                                          {"format": "png", "captureBeyondViewport": True})["data"]
            with open(path, "wb") as f:
                f.write(base64.b64decode(data))
        else:
            self.d.save_screenshot(path)
        self.shots.append(path)
        return path

    def click(self, elem_id):
        e = self.el(elem_id)
        self.d.execute_script("arguments[0].scrollIntoView({block: 'center'});", e)
        e.click()

    def resize(self, w, h):
        # in headless mode the window is the viewport; fix it up if the browser adds chrome
        self.d.set_window_size(w, h)
        iw, ih = self.d.execute_script("return [window.innerWidth, window.innerHeight];")
        if (iw, ih) != (w, h):
            self.d.set_window_size(w + (w - iw), h + (h - ih))


def wav_is_pcm16(path):
    try:
        with wave.open(path) as w:
            return w.getsampwidth() == 2 and w.getcomptype() == "NONE"
    except (wave.Error, EOFError, OSError):
        return False


def fake_mic_file(audio, out):
    """A 16-bit PCM WAV for --use-file-for-fake-audio-capture (Chromium's fake capture reads
    any rate of PCM WAV and resamples; anything else is converted with sox)."""
    if wav_is_pcm16(audio):
        return os.path.abspath(audio)
    sox = shutil.which("sox")
    if not sox:
        raise Failure(f"{audio} is not a 16-bit PCM WAV and sox is not installed to convert it")
    dst = os.path.join(out, "fake-mic.wav")
    subprocess.run([sox, audio, "-b", "16", "-e", "signed-integer", "-c", "1", "-r", "48000", dst],
                   check=True)
    return dst


def start_browser(base, out, downloads, mic_file):
    opts = webdriver.ChromeOptions()
    opts.binary_location = CHROMIUM
    host = urllib.parse.urlsplit(base).hostname
    for a in [
        "--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
        f"--window-size={DESKTOP[0]},{DESKTOP[1]}", "--hide-scrollbars",
        "--force-color-profile=srgb", "--force-prefers-reduced-motion",
        "--lang=en-US",
        # the microphone: accept the permission prompt, and read this file instead of a device
        "--use-fake-ui-for-media-stream", "--use-fake-device-for-media-stream",
        f"--use-file-for-fake-audio-capture={mic_file}%noloop",
        "--autoplay-policy=no-user-gesture-required",
        # nothing leaves 127.0.0.1: no name resolves to anything else, anything not loopback
        # goes to a proxy that does not exist; and Chromium's own background traffic is off
        f"--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE {host}",
        "--proxy-server=http://127.0.0.1:9",  # loopback itself is never proxied
        "--no-first-run", "--no-default-browser-check", "--disable-background-networking",
        "--disable-component-update", "--disable-sync", "--disable-default-apps",
        "--disable-extensions", "--disable-domain-reliability", "--metrics-recording-only",
        "--disable-client-side-phishing-detection", "--disable-breakpad",
        "--disable-features=Translate,OptimizationHints,MediaRouter,DialMediaRouteProvider,"
        "AutofillServerCommunication,CertificateTransparencyComponentUpdater",
    ]:
        opts.add_argument(a)
    opts.add_experimental_option("prefs", {
        "download.default_directory": downloads,
        "download.prompt_for_download": False,
        "download.directory_upgrade": True,
        "safebrowsing.enabled": False,
        "profile.default_content_setting_values.automatic_downloads": 1,
    })
    opts.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    service = Service(CHROMEDRIVER, log_output=os.path.join(out, "chromedriver.log"))
    driver = webdriver.Chrome(service=service, options=opts)
    driver.set_page_load_timeout(30)
    # headless Chromium drops downloads unless told where they go
    for cmd in ("Browser.setDownloadBehavior", "Page.setDownloadBehavior"):
        try:
            driver.execute_cdp_cmd(cmd, {"behavior": "allow", "downloadPath": downloads})
            break
        except WebDriverException:
            continue
    return driver


def wait_download(page, downloads, ext, before, timeout=20):
    def done():
        for name in os.listdir(downloads):
            if name.endswith("." + ext) and name not in before:
                return os.path.join(downloads, name)
        return None
    path = page.wait(done, timeout, f"a .{ext} file in {downloads}")
    time.sleep(0.2)
    with open(path, encoding="utf-8") as f:
        return path, f.read()


def check_subtitles(body, ext):
    sep = "," if ext == "srt" else "."
    time_re = re.compile(rf"^\d\d:\d\d:\d\d{re.escape(sep)}\d{{3}} --> \d\d:\d\d:\d\d{re.escape(sep)}\d{{3}}$")
    lines = body.splitlines()
    if ext == "vtt" and (not lines or lines[0] != "WEBVTT"):
        raise Failure(f".vtt does not start with WEBVTT: {body[:80]!r}")
    if "-->" not in body:
        raise Failure(f".{ext} has no '-->': {body[:200]!r}")
    stamps = [l for l in lines if "-->" in l]
    bad = [l for l in stamps if not time_re.match(l)]
    if bad:
        raise Failure(f".{ext} cue times malformed: {bad[:3]}")
    if ext == "srt":
        blocks = [b for b in body.strip().split("\n\n") if b.strip()]
        for i, b in enumerate(blocks, 1):
            if b.splitlines()[0] != str(i):
                raise Failure(f".srt cue {i} is not numbered {i}: {b[:80]!r}")
    if PHRASE not in norm(body):
        raise Failure(f".{ext} lacks the words {PHRASE!r}: {body[:300]!r}")


def run(args):
    out = os.path.abspath(args.out)
    os.makedirs(out, exist_ok=True)
    downloads = os.path.join(out, "downloads")
    shutil.rmtree(downloads, ignore_errors=True)
    os.makedirs(downloads)
    base = args.base_url.rstrip("/")
    host = urllib.parse.urlsplit(base).hostname
    if host not in ("127.0.0.1", "localhost"):
        raise Failure(f"--base-url must be on 127.0.0.1 (this test connects nowhere else), not {host}")
    audio = os.path.abspath(args.audio)
    if not os.path.isfile(audio):
        raise Failure(f"no audio file {audio}")
    mic = fake_mic_file(audio, out)
    t0 = time.monotonic()
    driver = start_browser(base, out, downloads, mic)
    page = Page(driver, base, out)
    try:
        steps(page, args, base, audio, downloads)
    except BaseException:
        try:
            page.shot("failure.png", full=True)
            log(f"page at failure: {page.state()}")
        except Exception:  # noqa: BLE001 - best effort
            pass
        raise
    finally:
        try:
            logs = driver.get_log("browser")
            with open(os.path.join(out, "browser-console.log"), "w") as f:
                for e in logs:
                    f.write(f"{e.get('level')} {e.get('message')}\n")
            # uncaught exceptions, and anything the page's Content-Security-Policy blocked
            uncaught = [e["message"] for e in logs
                        if "Uncaught" in e.get("message", "")
                        or "Content Security Policy" in e.get("message", "")]
        except Exception:  # noqa: BLE001 - best effort
            uncaught = []
        driver.quit()
    if uncaught:
        raise Failure(f"JavaScript errors on the page: {uncaught[:3]}")
    log(f"all steps passed in {time.monotonic() - t0:.1f} s; screenshots: "
        + ", ".join(os.path.basename(s) for s in page.shots))


def steps(page, args, base, audio, downloads):
    d = page.d

    # ---- 1. load ----
    log(f"loading {base}/")
    d.get(base + "/")
    page.resize(*DESKTOP)
    page.wait(lambda: d.execute_script("return document.readyState") == "complete"
              and page.el("transcribe-btn"), 15, "the page to load")
    title = d.title
    if "whisperd" not in title:
        raise Failure(f"unexpected page title {title!r}")
    # nothing from off the server: every resource is this origin (or data:/blob:)
    origin = d.execute_script("return location.origin")
    foreign = d.execute_script(
        "return performance.getEntriesByType('resource').map(e => e.name)"
        ".filter(u => !u.startsWith(location.origin) && !/^(data|blob):/.test(u));")
    if foreign:
        raise Failure(f"the page fetched from outside {origin}: {foreign}")
    sheets = d.execute_script("return document.styleSheets.length")
    if not sheets or not d.execute_script("return getComputedStyle(document.querySelector('.card')).borderRadius !== '0px'"):
        raise Failure("/ui/style.css did not apply")
    page.wait(lambda: "whisperd" in page.text("server-info"), 10, "the footer")
    page.shot("01-loaded.png")

    file_input = page.el("file-input")
    if args.api_key:
        # without the key: refused, and the page points at the key field
        d.execute_script("localStorage.removeItem('whisperd.apiKey');")
        page.el("api-key").clear()
        file_input.send_keys(audio)
        page.click("transcribe-btn")
        page.wait(lambda: page.el("error").is_displayed() or page.el("transcript").get_attribute("data-source"),
                  30, "the 401 message")
        if not page.el("error").is_displayed():
            raise Failure("--api-key was given but the server transcribed a request without the key")
        msg = page.text("error")
        if "401" not in msg or "API key" not in msg:
            raise Failure(f"a request without the key should say 401 and point at the API key field: {msg!r}")
        if page.el("api-key").get_attribute("aria-invalid") != "true":
            raise Failure("the API key field is not marked invalid after a 401")
        page.shot("01b-needs-key.png")
        log(f"without the key: {msg.strip()!r}")
        page.el("api-key").send_keys(args.api_key)
        d.refresh()
        page.wait(lambda: page.el("transcribe-btn"), 15, "the page to reload")
        kept = page.el("api-key").get_attribute("value")
        if kept != args.api_key:
            raise Failure(f"the API key was not kept across a reload (field holds {kept!r})")
        file_input = page.el("file-input")

    # ---- 1b. several models: the picker, and the language choices follow the model ----
    if args.model:
        page.wait(lambda: page.el("model-field").is_displayed(), 10, "the model picker")
        picker = Select(page.el("model"))
        names = [o.get_attribute("value") for o in picker.options]
        if args.model not in names or len(names) < 2:
            raise Failure(f"the model picker offers {names}, expected {args.model} among several")
        if not page.el("language").get_attribute("disabled"):
            raise Failure("the default (English-only) model leaves the language choice open")
        picker.select_by_value(args.model)
        page.wait(lambda: not page.el("language").get_attribute("disabled"), 5,
                  f"the language choice to open for {args.model}")
        log(f"model picker: {names}; chose {args.model}")

    # ---- 2. upload and transcribe (word timestamps on) ----
    wts = page.el("word-ts")
    if not wts.is_selected():
        wts.click()
    file_input.send_keys(audio)
    page.wait(lambda: page.el("transcribe-btn").is_enabled(), 10, "the Transcribe button to enable")
    t = time.monotonic()
    page.click("transcribe-btn")
    log("transcribing the upload…")
    page.wait_transcript(os.path.basename(audio), 90, "the transcript of the upload")
    if PHRASE not in norm(page.transcript()):
        raise Failure(f"the transcript lacks {PHRASE!r}: {page.transcript()!r}")
    took = time.monotonic() - t
    status = page.text("status")
    log(f"transcript after {took:.1f} s: {page.text('status')!r}")
    if "streamed" not in status:
        raise Failure(f"the transcript did not come by streaming: status {status!r}")
    times = d.execute_script("return [...document.querySelectorAll('#transcript .seg-time')].map(e => e.textContent)")
    if not times or not all(re.fullmatch(r"\d+:\d\d\.\d – \d+:\d\d\.\d", x) for x in times):
        raise Failure(f"segment times not shown as expected: {times}")
    log(f"segment times: {times}")
    words = d.find_elements(By.CSS_SELECTOR, "#transcript .w")
    if len(words) < 10:
        raise Failure(f"word timestamps were asked for but only {len(words)} word spans are shown")
    page.shot("02-transcript.png")

    # click a word: the player seeks there, and the word and its segment light up
    target = next((w for w in words if norm(w.text) == "country"), words[len(words) // 2])
    start = float(target.get_attribute("data-start"))
    d.execute_script("arguments[0].scrollIntoView({block: 'center'});", target)
    target.click()
    page.wait(lambda: d.execute_script("return document.getElementById('player').currentTime") >= start - 0.05,
              5, f"the player to seek to {start}")
    d.execute_script("document.getElementById('player').pause();")
    d.execute_script("document.getElementById('player').currentTime = arguments[0];", start + 0.01)
    page.wait(lambda: "active" in (target.get_attribute("class") or ""), 5, "the clicked word to be highlighted")
    if not d.find_elements(By.CSS_SELECTOR, "#transcript .seg.active"):
        raise Failure("no segment is highlighted at the clicked word's time")
    ActionChains(d).move_to_element(page.el("result-h")).perform()  # no hover underline
    page.shot("03-seek-highlight.png")
    page.shot("desktop-transcript.png", full=True)
    log(f"clicked {target.text!r}: player at {start:.2f} s, word highlighted")

    # ---- 3. downloads ----
    fmt = Select(page.el("format"))
    for ext in ("srt", "vtt", "txt", "json"):
        before = set(os.listdir(downloads))
        fmt.select_by_value(ext)
        page.click("download-btn")
        path, body = wait_download(page, downloads, ext, before)
        if ext in ("srt", "vtt"):
            check_subtitles(body, ext)
        elif ext == "txt":
            if PHRASE not in norm(body):
                raise Failure(f".txt lacks the words: {body[:200]!r}")
        else:
            j = json.loads(body)
            if PHRASE not in norm(j.get("text", "")) or not j.get("segments"):
                raise Failure(f".json is not the verbose transcript: {body[:200]!r}")
        log(f"downloaded {os.path.basename(path)} ({len(body)} bytes)"
            + (":\n" + body.strip() if ext == "srt" else ""))
    page.shot("04-downloaded.png")

    # ---- 4. phone width ----
    page.resize(*PHONE)
    time.sleep(0.3)
    sw, iw = d.execute_script("return [document.documentElement.scrollWidth, window.innerWidth]")
    if sw > iw + 1:
        raise Failure(f"the page is wider than a {iw}-px phone screen ({sw} px)")
    d.execute_script("document.getElementById('result-h').scrollIntoView({block: 'start'});")
    page.shot("phone-transcript.png")
    page.shot("phone-full.png", full=True)
    page.resize(*DESKTOP)
    d.execute_script("window.scrollTo(0, 0)")

    # ---- 5. record from the (fake) microphone ----
    if args.model:
        # back to the default model: the recording goes to the other one
        Select(page.el("model")).select_by_index(0)
    if not page.el("record-btn").is_enabled():
        raise Failure(f"the Record button is disabled: {page.text('mic-hint')!r}")
    page.click("record-btn")
    page.wait(lambda: page.el("stop-btn").is_enabled(), 15, "recording to start (Stop enabled)")
    log("recording 12 s from the fake microphone…")
    time.sleep(6)
    page.shot("05-recording.png")
    time.sleep(6)
    page.click("stop-btn")
    page.wait(lambda: "Recording:" in page.text("source-info"), 15, "the recording to become the audio")
    t = time.monotonic()
    page.wait_transcript("recording-", 90, "the recording's transcript")
    if "country" not in norm(page.transcript()):
        raise Failure(f"the recording's transcript lacks 'country': {page.transcript()!r}")
    rec_s = d.execute_script("return document.getElementById('player').duration")
    log(f"recording ({rec_s:.1f} s) transcribed after {time.monotonic() - t:.1f} s: "
        f"{page.transcript().strip()[:200]!r}")
    if not (8 <= rec_s <= 20):
        raise Failure(f"the recording is {rec_s} s long, expected about 12")
    page.shot("06-recording-transcript.png")


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--base-url", required=True)
    ap.add_argument("--audio", required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--api-key")
    ap.add_argument("--model", help="with several models on the server: pick this one in the page for the upload")
    args = ap.parse_args()
    t0 = time.monotonic()
    try:
        run(args)
    except Failure as e:
        print(f"web ui FAILED: {e}", flush=True)
        sys.exit(1)
    except Exception as e:  # noqa: BLE001 - any other failure is a failure too
        traceback.print_exc()
        print(f"web ui FAILED: {type(e).__name__}: {e}", flush=True)
        sys.exit(1)
    print(f"web ui ok ({time.monotonic() - t0:.1f} s)", flush=True)


if __name__ == "__main__":
    main()
