#!/usr/bin/env python3
"""A Hanmadi client in Python, written from docs/PROTOCOL.md and the HTTP API
alone: signs up, logs in, chats over WebSocket with the JSON subprotocol,
goes offline, reconnects and syncs.

Driven by gateway/tests/python_client.rs, which plays the other user with
the Rust client. Usage: chat_client.py BASE_URL PEER_USER_ID

Lines on stdout tell the driver where this side is (READY, SENT, OFFLINE,
OK); the driver answers on stdin (GO) once it has sent what this side must
find when it syncs. Needs python3-websocket (websocket-client).
"""

import base64
import json
import secrets
import sys
import urllib.error
import urllib.request

import websocket  # websocket-client

TIMEOUT = 10


def say(line):
    print(line, flush=True)


def http(base, method, path, body=None, token=None):
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(base + path, data=data, method=method)
    req.add_header("Content-Type", "application/json")
    if token:
        req.add_header("Authorization", "Bearer " + token)
    try:
        with urllib.request.urlopen(req, timeout=TIMEOUT) as resp:
            text = resp.read()
            return resp.status, (json.loads(text) if text else None)
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read() or b"null")


class Socket:
    """One WebSocket connection speaking JSON frames."""

    def __init__(self, base, token, device):
        url = base.replace("http://", "ws://", 1) + "/ws"
        self.ws = websocket.create_connection(
            url, subprotocols=["hanmadi.v1.json"], timeout=TIMEOUT
        )
        assert self.ws.getsubprotocol() == "hanmadi.v1.json", self.ws.getsubprotocol()
        self.next_req = 1
        self.cursor = ""  # the last inbox cursor seen, base64
        self.pending = []  # frames read while waiting for an answer
        welcome = self.request({"hello": {"token": token, "device_id": device}})
        assert "welcome" in welcome, welcome
        self.user_id = welcome["welcome"]["user_id"]

    def send_frame(self, frame):
        req_id = self.next_req
        self.next_req += 1
        frame = dict(frame, req_id=str(req_id))
        self.ws.send(json.dumps(frame))
        return str(req_id)

    def recv(self):
        frame = json.loads(self.ws.recv())
        if "deliver" in frame:
            self.cursor = frame["deliver"]["cursor"]
        return frame

    def request(self, frame):
        """Sends a request and returns its answer; deliveries met on the way
        are kept in self.pending."""
        req_id = self.send_frame(frame)
        while True:
            reply = self.recv()
            if reply.get("req_id", "0") == req_id:
                return reply
            self.pending.append(reply)

    def next_delivery(self):
        while True:
            frame = self.pending.pop(0) if self.pending else self.recv()
            if "deliver" in frame:
                return frame["deliver"]
            assert "error" not in frame, frame

    def close(self):
        self.ws.close()


def main():
    base, peer = sys.argv[1], sys.argv[2]
    username = "py_" + secrets.token_hex(4)
    password = secrets.token_urlsafe(12)

    status, user = http(base, "POST", "/v1/users", {"username": username, "password": password})
    assert status == 201, (status, user)
    status, again = http(base, "POST", "/v1/users", {"username": username, "password": password})
    assert status == 409 and again["error"]["code"] == 3208, (status, again)
    status, session = http(base, "POST", "/v1/sessions", {"username": username, "password": password})
    assert status == 200, (status, session)
    token = session["token"]
    assert session["user_id"] == user["user_id"]
    status, me = http(base, "GET", "/v1/users/me", token=token)
    assert status == 200 and me["username"] == username, (status, me)
    say("READY " + user["user_id"])

    sock = Socket(base, token, "python")
    assert sock.user_id == user["user_id"]
    client_msg_id = base64.b64encode(b"py-" + secrets.token_bytes(8)).decode()
    body = {"client_msg_id": client_msg_id, "user_id": peer, "body": "hello from python"}
    ack = sock.request({"send": body})
    assert "send_ack" in ack, ack
    message_id = ack["send_ack"]["message_id"]
    # The same client_msg_id again: the first message's ack, nothing new.
    again = sock.request({"send": body})
    assert again["send_ack"]["message_id"] == message_id, again
    say("SENT")

    # Our own message comes back to this device first, then the answer.
    while True:
        d = sock.next_delivery()
        m = d["message"]
        if m.get("sender") == peer:
            break
        assert m["message_id"] == message_id, m
    assert m["body"] == "hello from rust", m
    cursor = sock.cursor
    sock.close()
    say("OFFLINE")

    assert sys.stdin.readline().strip() == "GO"
    sock = Socket(base, token, "python")
    batch = sock.request({"sync": {"after": cursor, "limit": 100}})
    assert "sync_batch" in batch, batch
    bodies = [d["message"]["body"] for d in batch["sync_batch"].get("messages", [])]
    assert bodies == ["offline 0", "offline 1", "offline 2"], bodies
    assert not batch["sync_batch"].get("has_more", False)
    sock.close()

    # The same conversation over HTTP: newest first, all five messages.
    status, page = http(base, "GET", "/v1/direct/%s/messages?limit=10" % peer, token=token)
    assert status == 200, (status, page)
    got = [m["body"] for m in page["messages"]]
    assert got == ["offline 2", "offline 1", "offline 0", "hello from rust", "hello from python"], got
    say("OK")


if __name__ == "__main__":
    main()
