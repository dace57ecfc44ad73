#!/usr/bin/env python3
"""The web client (GET /) and the operator view (GET /admin) in real headless
Chromium, driven with Selenium. Driven by gateway/tests/web_client.rs, which
runs the hanmadi binary.

Usage: browser_test.py HTTP_BASE HTTPS_BASE SCREENSHOT_DIR ADMIN_TOKEN

Protocol with the driver: this script prints KILL when the node is to be
killed with SIGKILL (the driver answers KILLED), RESTART when it is to be
started again on the same ports (the driver answers UP), and DONE at the
end. Other lines are progress. Exits non-zero on any failed check.

Needs python3-selenium, chromium and chromium-driver (Debian), found at
HANMADI_CHROMIUM and HANMADI_CHROMEDRIVER.
"""

import base64
import json
import os
import secrets
import shutil
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor

from selenium import webdriver
from selenium.common.exceptions import StaleElementReferenceException, TimeoutException
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.common.keys import Keys
from selenium.webdriver.support.ui import WebDriverWait

HTTP, HTTPS, SHOTS, ADMIN_TOKEN = sys.argv[1:5]
CHROMIUM = os.environ.get("HANMADI_CHROMIUM", "/usr/bin/chromium")
CHROMEDRIVER = os.environ.get("HANMADI_CHROMEDRIVER", "/usr/bin/chromedriver")
WAIT = 20  # seconds any one expected change may take
PASSWORD = "correct horse battery"


def say(line):
    print(line, flush=True)


def driver_line(expect):
    """Blocks until the driver answers `expect` on stdin."""
    line = sys.stdin.readline().strip()
    assert line == expect, f"expected {expect!r} from the driver, got {line!r}"


# --- the HTTP API, for the user who sends without a browser ---------------


def http(method, path, body=None, token=None, base=HTTP):
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(base + path, data=data, method=method)
    req.add_header("Content-Type", "application/json")
    if token:
        req.add_header("Authorization", "Bearer " + token)
    try:
        with urllib.request.urlopen(req, timeout=5) as resp:
            text = resp.read()
            return resp.status, (json.loads(text) if text else None)
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read() or b"null")


def api_user(username):
    status, user = http("POST", "/v1/users", {"username": username, "password": PASSWORD})
    assert status == 201, (status, user)
    status, session = http("POST", "/v1/sessions", {"username": username, "password": PASSWORD})
    assert status == 200, (status, session)
    return session["token"], session["user_id"]


def log_in(username):
    status, session = http("POST", "/v1/sessions", {"username": username, "password": PASSWORD})
    assert status == 200, (status, session)
    return session["token"], session["user_id"]


def send_over_api(token, peer, body, client_msg_id, refused=None):
    """Sends until the node acknowledges; a retry keeps the client_msg_id,
    so the message is stored once however many attempts fail. Sets the
    event `refused` when an attempt finds the node down."""
    deadline = time.monotonic() + 60
    while True:
        try:
            status, ack = http(
                "POST", f"/v1/direct/{peer}/messages",
                {"client_msg_id": client_msg_id, "body": body}, token,
            )
            if status == 200:
                return ack
        except OSError:
            if refused is not None:
                refused.set()  # the node is down: try again
        assert time.monotonic() < deadline, f"no ack for {body!r} within 60 s"
        time.sleep(0.05)


# --- browsers ------------------------------------------------------------------


class Page:
    """One user's browser: its own Chromium, profile and local storage."""

    def __init__(self, name, base):
        self.name = name
        self.base = base
        self.profile = tempfile.mkdtemp(prefix=f"hanmadi-{name}-")
        options = webdriver.ChromeOptions()
        options.binary_location = CHROMIUM
        for arg in (
            "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
            "--no-first-run", "--disable-background-networking",
            "--disable-component-update", "--disable-sync",
            "--disable-dev-shm-usage", f"--user-data-dir={self.profile}",
            "--window-size=1280,800", "--lang=en-US",
        ):
            options.add_argument(arg)
        options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
        # The HTTPS listener has a self-signed certificate.
        options.set_capability("acceptInsecureCerts", True)
        self.d = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
        self.viewport(1280, 800)

    def quit(self):
        try:
            self.d.quit()
        finally:
            shutil.rmtree(self.profile, ignore_errors=True)

    def viewport(self, width, height):
        self.d.execute_cdp_cmd("Emulation.setDeviceMetricsOverride", {
            "width": width, "height": height, "deviceScaleFactor": 1,
            "mobile": width < 600,
        })

    def wait(self, what, condition, timeout=WAIT):
        try:
            return WebDriverWait(self.d, timeout, poll_frequency=0.05).until(
                lambda _: condition())
        except TimeoutException:
            self.shot(f"failed-{self.name}")
            raise AssertionError(f"{self.name}: timed out waiting for {what}") from None

    def js(self, script, *args):
        return self.d.execute_script(script, *args)

    def el(self, element_id):
        return self.d.find_element(By.ID, element_id)

    def shot(self, name):
        path = os.path.join(SHOTS, f"{name}.png")
        self.d.save_screenshot(path)
        return path

    def console_errors(self, allowed=()):
        """Console messages at error level since the last call, except
        those containing one of `allowed`."""
        errors = []
        for entry in self.d.get_log("browser"):
            if entry["level"] != "SEVERE":
                continue
            if any(a in entry["message"] for a in allowed):
                continue
            errors.append(entry["message"])
        return errors

    # --- the chat page ---

    def open_app(self):
        self.d.get(self.base + "/")

    def sign_up(self, username):
        self.open_app()
        self.wait("the log-in form", lambda: self.el("auth-username").is_displayed())
        self.el("auth-username").send_keys(username)
        self.el("auth-password").send_keys(PASSWORD)
        self.el("sign-up").click()
        self.wait_state("live")

    def state(self):
        return self.el("status").get_attribute("data-state")

    def wait_state(self, state, timeout=WAIT):
        self.wait(f"connection state {state}", lambda: self.state() == state, timeout)

    def conversations(self):
        """The list as shown: [(name, unread)], top first."""
        return self.js("""
            return [...document.querySelectorAll('#conversations .conv')].map(b => [
              b.querySelector('.conv-name').textContent,
              Number((b.querySelector('.unread') || {dataset: {count: 0}}).dataset.count)]);
        """)

    def unread(self, name):
        for n, u in self.conversations():
            if n == name:
                return u
        return None

    def open_conversation(self, name):
        self.wait(f"conversation {name!r} listed", lambda: self.unread(name) is not None)
        xpath = (f"//button[contains(@class,'conv')]"
                 f"[.//span[@class='conv-name' and text()={xpath_text(name)}]]")
        self.wait(f"a click on {name!r}", lambda: self.click_fresh(By.XPATH, xpath))
        self.wait(f"{name!r} open", lambda: self.el("conversation-name").text == name
                  and self.el("history-state").text != "Loading earlier messages…")

    def click_fresh(self, by, selector):
        """Clicks an element of a list the page redraws as messages arrive:
        False if it was replaced between finding and clicking."""
        try:
            self.d.find_element(by, selector).click()
            return True
        except StaleElementReferenceException:
            return False

    def messages(self):
        """The open conversation's messages as shown, oldest first."""
        return self.js("""
            return [...document.querySelectorAll('#messages .msg')].map(li => ({
              id: li.dataset.id || null, state: li.dataset.state,
              system: li.classList.contains('system'), mine: li.classList.contains('mine'),
              body: li.querySelector('.body').textContent,
              time: (li.querySelector('time') || {textContent: ''}).textContent}));
        """)

    def texts(self):
        return [m["body"] for m in self.messages() if not m["system"]]

    def type_and_enter(self, text):
        """Types into the message box and presses Enter. ChromeDriver types
        only the Basic Multilingual Plane, so emoji go in as the value, the
        way an input method would leave them."""
        box = self.el("composer")
        self.js("arguments[0].value = arguments[1];"
                "arguments[0].dispatchEvent(new Event('input'));", box, text)
        box.send_keys(Keys.ENTER)

    def send(self, text):
        self.type_and_enter(text)
        self.wait(f"{text!r} acknowledged", lambda: any(
            m["body"] == text and m["state"] == "sent" and m["id"] for m in self.messages()))

    def dialog(self, button, field, value):
        self.el(button).click()
        self.wait("the dialog", lambda: self.el(field).is_displayed())
        self.el(field).send_keys(value)


def xpath_text(s):
    if "'" not in s:
        return f"'{s}'"
    return "concat('" + "', \"'\", '".join(s.split("'")) + "')"


def wait_texts(page, expected, what):
    page.wait(what, lambda: page.texts() == expected)


# --- the checks ------------------------------------------------------------------


def main():
    os.makedirs(SHOTS, exist_ok=True)
    pages = []
    try:
        run(pages)
    finally:
        for p in pages:
            p.quit()
    say("DONE")


def run(pages):
    # Three browsers, started side by side: starting is the slow part.
    with ThreadPoolExecutor(3) as pool:
        started = [pool.submit(Page, name, base) for name, base in
                   (("alice", HTTP), ("bob", HTTP), ("carol", HTTPS))]
        errors = []
        for future in started:
            try:
                pages.append(future.result())
            except Exception as e:  # every started browser is still quit
                errors.append(e)
        if errors:
            raise errors[0]
    alice, bob, carol = pages

    # The log-in page, as a newcomer sees it.
    alice.open_app()
    alice.wait("the log-in form", lambda: alice.el("auth-username").is_displayed())
    # Keyboard: the form starts focused and Tab walks it in reading order.
    order = [alice.js("return document.activeElement.id")]
    for _ in range(3):
        alice.d.switch_to.active_element.send_keys(Keys.TAB)
        order.append(alice.js("return document.activeElement.id"))
    assert order == ["auth-username", "auth-password", "log-in", "sign-up"], order
    alice.shot("login-1280x800")
    alice.viewport(360, 740)
    alice.shot("login-360x740")
    alice.viewport(1280, 800)

    for page in (alice, bob, carol):
        page.sign_up(page.name)
    assert carol.js("return location.protocol") == "https:"
    assert carol.el("status").get_attribute("data-transport") == "wss"
    assert alice.el("status").get_attribute("data-transport") == "ws"
    say("signed up alice and bob over HTTP, carol over HTTPS")

    # --- direct chat, live both ways, Korean and emoji ---
    alice.dialog("new-direct", "direct-username", "bob")
    alice.el("direct-username").send_keys(Keys.ENTER)
    alice.wait("the chat with bob", lambda: alice.el("conversation-name").text == "bob")
    hello = "안녕하세요, 밥! 👋🏽 🇰🇷"
    alice.type_and_enter(hello)
    alice.wait("the message shown", lambda: alice.texts() == [hello])
    alice.wait("the send acknowledged", lambda: alice.messages()[-1]["state"] == "sent")
    assert alice.messages()[-1]["time"], "an acknowledged message shows its server time"

    bob.wait("alice's chat with one unread", lambda: bob.unread("alice") == 1)
    bob.open_conversation("alice")
    wait_texts(bob, [hello], "alice's greeting on bob's page")
    bob.wait("unread back to zero", lambda: bob.unread("alice") == 0)
    reply = "반가워요 앨리스 🎉 👩‍💻"
    bob.send(reply)
    wait_texts(alice, [hello, reply], "bob's reply on alice's page, live")
    say("direct chat: both ways live, Korean and emoji round-trip")

    # --- a group of three: every message once, in order ---
    alice.dialog("new-group", "group-name", "팀 한마디 🚀")
    alice.el("group-members").send_keys("bob, carol")
    alice.el("group-members").send_keys(Keys.ENTER)
    group = "팀 한마디 🚀"
    alice.wait("the group open", lambda: alice.el("conversation-name").text == group)
    carol.wait("the new group unread", lambda: carol.unread(group) == 1)
    carol.open_conversation(group)
    carol.wait("carol read the group", lambda: carol.unread(group) == 0)
    bob.open_conversation(group)
    expected = []
    for i in range(3):
        for page in (alice, bob):
            text = f"{page.name} {i}: 좋아요 👍"
            page.send(text)
            expected.append(text)
            wait_texts(carol, expected, f"{text!r} on carol's page")
    for page in (alice, bob, carol):
        wait_texts(page, expected, "the group's messages")
    say("group: carol saw each of 6 messages once, in order")
    carol.shot("group-1280x800")

    # --- unread counts while the conversation is closed ---
    carol.el("composer").send_keys(Keys.ESCAPE)
    carol.wait("the group closed", lambda: carol.el("placeholder").is_displayed())
    for n in range(1, 4):
        text = f"unread {n} 🔔"
        alice.send(text)
        expected.append(text)
        carol.wait(f"unread count {n}", lambda n=n: carol.unread(group) == n)
    assert carol.conversations()[0][0] == group, "newest activity first"
    carol.shot("unread-1280x800")
    # Open it from the keyboard: focus the list entry, press Enter.
    carol.d.find_element(By.CSS_SELECTOR, "#conversations .conv").send_keys(Keys.ENTER)
    carol.wait("the group open again", lambda: carol.el("conversation-name").text == group)
    carol.wait("unread back to zero", lambda: carol.unread(group) == 0)
    wait_texts(carol, expected, "every group message once")
    # The read mark is the server's: a reload still shows zero.
    carol.open_app()
    carol.wait_state("live")
    carol.wait("the list after a reload", lambda: carol.unread(group) == 0)
    say("unread: 1, 2, 3 while closed; 0 once opened, and after a reload")

    # --- members: add, remove, leave ---
    api_user("dave")
    alice.el("group-info").click()
    alice.wait("the members dialog", lambda: alice.el("add-member").is_displayed())
    alice.wait("three members", lambda: len(alice.d.find_elements(By.CSS_SELECTOR, "#members li")) == 3)
    alice.el("add-member").send_keys("dave", Keys.ENTER)
    alice.wait("four members", lambda: len(alice.d.find_elements(By.CSS_SELECTOR, "#members li")) == 4)
    alice.d.find_element(By.CSS_SELECTOR, "#members button[aria-label='Remove dave']").click()
    alice.wait("three members again",
               lambda: len(alice.d.find_elements(By.CSS_SELECTOR, "#members li")) == 3)
    alice.shot("members-1280x800")
    alice.d.find_element(By.CSS_SELECTOR, "#members-dialog .cancel").click()
    carol.open_conversation(group)
    carol.wait("dave added and removed", lambda: [m["body"] for m in carol.messages() if m["system"]][-2:]
               == ["alice added dave", "alice removed dave"])
    carol.el("group-info").click()
    carol.wait("the members dialog", lambda: carol.el("leave-group").is_displayed())
    carol.el("leave-group").click()
    carol.wait("the group gone from carol's list", lambda: carol.unread(group) is None)
    alice.wait("carol left", lambda: any(
        m["system"] and m["body"] == "carol left" for m in alice.messages()))
    say("members: added and removed dave; carol left")

    # --- history pages back as the reader scrolls up ---
    carol_token, carol_id = log_in("carol")
    bob_token, bob_id = log_in("bob")
    older = [f"history {i:03} 📜" for i in range(120)]
    for text in older:
        send_over_api(bob_token, carol_id, text, "h-" + secrets.token_hex(8))
    carol.open_conversation("bob")
    carol.wait("the newest page", lambda: carol.texts()[-1:] == older[-1:])
    assert len(carol.texts()) < len(older), "the whole history came at once"
    while carol.el("history-state").text != "Start of the conversation":
        shown = len(carol.texts())
        carol.js("document.getElementById('scroller').scrollTop = 0;")
        carol.wait("an older page", lambda: len(carol.texts()) > shown
                   or carol.el("history-state").text == "Start of the conversation")
    assert carol.texts() == older, "history paged back: every message once, in order"
    # Only the session token is secret, and it is the only thing stored
    # besides the device id and the inbox position.
    stored = carol.js("return Object.fromEntries(Object.entries(localStorage));")
    assert sorted(stored) == sorted(["hanmadi.session", "hanmadi.device",
                                     f"hanmadi.position.{carol_id}"]), stored
    assert sorted(json.loads(stored["hanmadi.session"])) == ["token", "user_id", "username"]
    assert PASSWORD not in json.dumps(stored)
    say(f"history: {len(older)} messages paged back on scroll, once each, in order")

    # --- screenshots of the chat ---
    alice.open_conversation("bob")
    alice.shot("chat-1280x800")
    alice.viewport(360, 740)
    alice.shot("chat-360x740")
    alice.el("back").click()
    alice.wait("the list on a narrow screen", lambda: alice.el("conversations").is_displayed())
    alice.shot("list-360x740")
    alice.open_conversation("bob")
    alice.viewport(1280, 800)

    for page in pages:
        errors = page.console_errors()
        assert not errors, f"{page.name}'s console: {errors}"
    say("no console errors")

    # --- kill -9 and a restart on the same ports while the page is open ---
    _, alice_id = log_in("alice")
    before = [f"before the crash {i}" for i in range(3)]
    for text in before:
        send_over_api(bob_token, alice_id, text, "b-" + secrets.token_hex(8))
    wait_texts(alice, [hello, reply] + before, "bob's messages before the crash")

    say("KILL")
    driver_line("KILLED")
    alice.wait_state("reconnecting")
    alice.shot("reconnecting-1280x800")
    offline = "written while offline ✈️"
    alice.type_and_enter(offline)
    alice.wait("the offline message pending", lambda: alice.messages()[-1]["state"] == "pending")

    during = [f"during the outage {i} 🔁" for i in range(8)]
    refused = threading.Event()
    failures = []

    def keep_sending():
        try:
            for text in during:
                client_msg_id = "o-" + secrets.token_hex(8)
                send_over_api(bob_token, alice_id, text, client_msg_id, refused)
        except BaseException as e:  # reported by the main thread
            failures.append(e)
            refused.set()

    sender = threading.Thread(target=keep_sending)
    sender.start()
    assert refused.wait(WAIT), "bob's first send while the node is down was refused"
    say("RESTART")
    driver_line("UP")
    up = time.monotonic()
    alice.wait_state("live", timeout=30)
    back_after = time.monotonic() - up
    sender.join(90)
    assert not sender.is_alive() and not failures, failures
    alice.wait("the offline message acknowledged", lambda: any(
        m["body"] == offline and m["state"] == "sent" for m in alice.messages()))
    alice.wait("every message after the restart",
               lambda: set(during) <= set(alice.texts()))
    # What the page shows is the conversation as the server stored it:
    # each message once, in commit order.
    _, page = http("GET", f"/v1/direct/{alice_id}/messages?limit=100", token=bob_token)
    stored = [m["body"] for m in reversed(page["messages"])]
    assert stored.count(offline) == 1 and all(stored.count(t) == 1 for t in during), stored
    assert [t for t in stored if t in during] == during, stored
    wait_texts(alice, stored, "the page equal to the stored conversation")
    shown = alice.messages()
    assert len({m["id"] for m in shown}) == len(shown), "no message shown twice"
    assert all(m["state"] == "sent" for m in shown), shown
    # While the node was down, the browser itself logs each refused
    # connection; nothing else may appear.
    for p in pages:
        errors = p.console_errors(allowed=("net::ERR_CONNECTION_REFUSED",))
        assert not errors, f"{p.name}'s console across the restart: {errors}"
    say(f"kill -9: the page was live again {back_after:.2f} s after the node; "
        f"{len(stored)} messages shown once each, in order")

    # --- the operator view ---
    alice.d.get(HTTP + "/admin")
    alice.wait("the token form", lambda: alice.el("admin-token").is_displayed())
    # A user's token is not the admin token: refused, nothing shown.
    alice.el("admin-token").send_keys(bob_token, Keys.ENTER)
    alice.wait("the refusal", lambda: "not the node's admin token" in alice.el("admin-error").text)
    assert not alice.el("dashboard").is_displayed()
    # The browser logs the 403 itself; nothing else may appear.
    errors = alice.console_errors(allowed=("/v1/admin/token - Failed to load resource: "
                                           "the server responded with a status of 403",))
    assert not errors, f"alice's console after the refused token: {errors}"
    alice.el("admin-token").clear()
    alice.el("admin-token").send_keys(ADMIN_TOKEN, Keys.ENTER)
    alice.wait("the dashboard", lambda: alice.el("dashboard").is_displayed())
    # Traffic while the charts fill: bob writes until six samples are drawn.
    charted = threading.Event()

    def traffic():
        i = 0
        while not charted.is_set():
            send_over_api(bob_token, alice_id, f"load {i}", "l-" + secrets.token_hex(8))
            i += 1

    load = threading.Thread(target=traffic)
    load.start()
    try:
        alice.wait("six samples charted", lambda: int(
            alice.el("dashboard").get_attribute("data-samples") or 0) >= 6)
    finally:
        charted.set()
        load.join(10)
    alice.wait("this node in discovery", lambda: "this node" in alice.el("nodes").text)
    alice.wait("live connections counted (bob's ws and carol's wss)", lambda: alice.js("""
        const c = t => Number(document.querySelector(`#connections-legend [data-transport=${t}]`)
          ?.textContent.split(' ')[1] || 0);
        return c('ws') >= 1 && c('wss') >= 1;"""))
    alice.wait("a message rate", lambda: alice.el("rate-now").text.endswith("/s"))
    alice.wait("a commit latency", lambda: alice.el("latency-now").text.endswith("ms")
               or alice.el("latency-now").text == "idle")
    alice.wait("the process's memory", lambda: alice.el("memory-now").text.endswith("MiB"))
    alice.shot("admin-1280x800")
    alice.viewport(360, 740)
    alice.shot("admin-360x740")
    alice.viewport(1280, 800)
    for page in pages:
        errors = page.console_errors()
        assert not errors, f"{page.name}'s console: {errors}"
    say("admin: a user's token refused; with the admin token, nodes, connections by "
        "transport, messages/s, commit latency, memory")


if __name__ == "__main__":
    main()
