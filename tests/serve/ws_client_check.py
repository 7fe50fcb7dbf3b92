#!/usr/bin/python3
"""Client side of tests/serve/test_serve_ws.c: talks rv.v1 and HTTP to two
running servers and checks every answer against an exact brute force computed
here from the same vectors.

usage: ws_client_check.py PHASE L1_PORT L2_PORT DATA_FILE

  L1_PORT  a server with the L1 cache and no Redis
  L2_PORT  a server with L1 off and the Redis L2 cache
  PHASE    main | after | noredis | redisback (see test_serve_ws.c)

DATA_FILE lines: "dim D", "query f1 .. fD", "v REGION ID f1 .. fD".
Exits 0 when every check passed; otherwise prints what differed and exits 1.
"""
import json
import socket
import sys
import time
import urllib.error
import urllib.request

import numpy as np
import websocket

COLLECTION = "fashion"


class CheckFailed(Exception):
    pass


def check(cond, what, got=None, want=None):
    if not cond:
        raise CheckFailed(f"{what}: got {got!r}, want {want!r}")


def load(path):
    dim, query, regions = None, None, {}
    with open(path) as f:
        for line in f:
            p = line.split()
            if not p:
                continue
            if p[0] == "dim":
                dim = int(p[1])
            elif p[0] == "query":
                query = np.array([float(x) for x in p[1:]], dtype=np.float32)
            elif p[0] == "v":
                ids, rows = regions.setdefault(p[1], ([], []))
                ids.append(p[2])
                rows.append([float(x) for x in p[3:]])
    data = {r: (ids, np.array(rows, dtype=np.float32)) for r, (ids, rows) in regions.items()}
    for ids, x in data.values():
        check(x.shape[1] == dim, "data file dim", x.shape[1], dim)
    return dim, query, data


def brute(data, region, q, k):
    """The exact l2 top-k as rv_flat ranks it: squared distance in double,
    rounded to float, ties by id bytes."""
    ids, x = data[region]
    d = ((x.astype(np.float64) - q.astype(np.float64)) ** 2).sum(axis=1).astype(np.float32)
    order = sorted(range(len(ids)), key=lambda i: (float(d[i]), ids[i].encode()))
    return [(ids[i], float(d[i])) for i in order[:k]]


def expected_metadata(vid):
    """Mirrors the metadata test_serve_ws.c stores for id "vNNN"."""
    if not vid.startswith("v"):
        return "absent"
    i = int(vid[1:])
    if i % 3 == 0:
        return {"i": i, "tag": f"t{i}"}
    if i % 3 == 1:
        return "not json"
    return "absent"


class Client:
    def __init__(self, port):
        self.ws = websocket.create_connection(
            f"ws://127.0.0.1:{port}/", subprotocols=["rv.v1"], timeout=20)
        check(self.ws.getsubprotocol() == "rv.v1", "negotiated subprotocol",
              self.ws.getsubprotocol(), "rv.v1")

    def send(self, msg):
        self.ws.send(msg if isinstance(msg, str) else json.dumps(msg))

    def recv(self):
        text = self.ws.recv()
        check(isinstance(text, str), "reply frame type", type(text), str)
        return json.loads(text)

    def req(self, msg):
        self.send(msg)
        return self.recv()

    def close(self):
        self.ws.close()


def search_msg(qid, q, k=None, region=None, **extra):
    m = {"type": "search", "id": qid, "collection": COLLECTION, "vector": [float(v) for v in q]}
    if k is not None:
        m["k"] = k
    if region is not None:
        m["region"] = region
    m.update(extra)
    return m


def check_results(reply, qid, data, region, q, k, what):
    check(reply.get("type") == "results", f"{what}: reply type", reply, "results")
    check(reply.get("id") == qid, f"{what}: id echo", reply.get("id"), qid)
    for field in ("took_us", "as_of"):
        check(isinstance(reply.get(field), int) and reply[field] >= 0, f"{what}: {field}", reply.get(field), ">= 0")
    check(isinstance(reply.get("cached"), bool), f"{what}: cached", reply.get("cached"), "a bool")
    want = brute(data, region, q, k)
    hits = reply["hits"]
    got_ids = [h["id"] for h in hits]
    check(got_ids == [w[0] for w in want], f"{what}: ids", got_ids, [w[0] for w in want])
    for h, (wid, wd) in zip(hits, want):
        check(abs(h["score"] - wd) <= 1e-5 * max(1.0, abs(wd)), f"{what}: score of {wid}", h["score"], wd)
        meta = expected_metadata(wid)
        if meta == "absent":
            check("metadata" not in h, f"{what}: metadata of {wid}", h.get("metadata"), "absent")
        else:
            check(h.get("metadata") == meta, f"{what}: metadata of {wid}", h.get("metadata"), meta)
    return reply


def http(port, path):
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=10) as r:
            return r.status, r.headers.get("Content-Type"), json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, e.headers.get("Content-Type"), json.loads(e.read())


def stats(port):
    status, ctype, body = http(port, "/api/stats")
    check(status == 200, "/api/stats status", status, 200)
    return body["collections"][COLLECTION]


def expect_error(c, msg, code, qid, what):
    r = c.req(msg)
    check(r.get("type") == "error", f"{what}: type", r, "error")
    check(r.get("code") == code, f"{what}: code", r.get("code"), code)
    check(r.get("id") == qid, f"{what}: id", r.get("id"), qid)
    check(isinstance(r.get("message"), str) and r["message"], f"{what}: message", r.get("message"), "text")


def recv_close_code(ws):
    """Reads frames until the server's close frame; returns its status code,
    or "reset" if the connection ended without one, or None on a timeout."""
    deadline = time.time() + 20
    while time.time() < deadline:
        try:
            op, frame = ws.recv_data_frame(control_frame=True)
        except (websocket.WebSocketConnectionClosedException, ConnectionResetError):
            return "reset"
        except websocket.WebSocketTimeoutException:
            return None
        if op == websocket.ABNF.OPCODE_CLOSE:
            return int.from_bytes(frame.data[:2], "big") if len(frame.data) >= 2 else None
    return None


def phase_main(p1, p2, data, dim, query):
    rng = np.random.default_rng(7)
    gen_local = stats(p1)["local"]["generation"]

    c = Client(p1)
    # ping / pong
    now = time.time() * 1000
    r = c.req({"type": "ping", "id": "p1"})
    check(r.get("type") == "pong" and r.get("id") == "p1", "pong", r, "pong p1")
    check(abs(r["timestamp"] - now) < 60000, "pong timestamp (ms since epoch)", r["timestamp"], now)

    # searches against the exact brute force, default region = first replica
    queries = [rng.uniform(-1, 1, dim).astype(np.float32) for _ in range(20)]
    for i, q in enumerate(queries):
        r = check_results(c.req(search_msg(f"q{i}", q, k=10, region="local")), f"q{i}", data, "local", q, 10,
                          f"search q{i}")
        check(r["cached"] is False, f"q{i} first time cached", r["cached"], False)
        check(r["as_of"] == gen_local, f"q{i} as_of", r["as_of"], gen_local)
    q = queries[0]
    check_results(c.req(search_msg("dflt", q * 0.5)), "dflt", data, "local", q * 0.5, 10, "default k and region")
    check_results(c.req(search_msg("k1", q, k=1)), "k1", data, "local", q, 1, "k=1")
    r = check_results(c.req(search_msg("kall", q, k=1000)), "kall", data, "local", q, 1000, "k=1000")
    check(len(r["hits"]) == len(data["local"][0]), "k=1000 returns every vector", len(r["hits"]),
          len(data["local"][0]))
    r = check_results(c.req(search_msg("eu", q, k=100, region="eu")), "eu", data, "eu", q, 100, "region eu")
    check(len(r["hits"]) == len(data["eu"][0]), "eu hit count", len(r["hits"]), len(data["eu"][0]))
    check_results(c.req(search_msg("ef", q, k=5, ef=32)), "ef", data, "local", q, 5, "with ef")
    r = c.req(search_msg(12345, q, k=3))
    check(r.get("id") == 12345, "numeric id echo", r.get("id"), 12345)

    # L1: an identical search is served from the cache with the same hits
    first = c.req(search_msg("c1", query, k=10))
    again = check_results(c.req(search_msg("c2", query, k=10)), "c2", data, "local", query, 10, "repeat")
    check(first["cached"] is False and again["cached"] is True, "L1 repeat cached",
          (first["cached"], again["cached"]), (False, True))
    check(again["hits"] == first["hits"], "cached hits equal", again["hits"], first["hits"])
    r = c.req(search_msg("c3", query, k=11))
    check(r["cached"] is False, "a different k is a different key", r["cached"], False)

    # errors: each gets an error reply and the connection stays open
    expect_error(c, "{not json", "bad_request", None, "invalid JSON")
    expect_error(c, {"type": "subscribe", "id": "s"}, "unsupported", "s", "unknown type")
    expect_error(c, {"type": "ping"}, "bad_request", None, "missing id")
    expect_error(c, search_msg("u1", q) | {"collection": "nope"}, "unknown_collection", "u1", "unknown collection")
    expect_error(c, search_msg("u2", q, region="mars"), "unknown_region", "u2", "unknown region")
    expect_error(c, search_msg("u3", q[:5]), "wrong_dim", "u3", "wrong dim")
    expect_error(c, search_msg("u4", q, k=0), "bad_request", "u4", "k=0")
    expect_error(c, search_msg("u5", q, k=1001), "bad_request", "u5", "k=1001")
    expect_error(c, {"type": "search", "id": "u6", "collection": COLLECTION, "vector": ["a"] * dim},
                 "bad_request", "u6", "non-numeric vector")
    c.ws.send_binary(b"\x00\x01\x02\x03")
    r = c.recv()
    check(r.get("type") == "error" and r.get("code") == "unsupported" and r.get("id") is None,
          "binary frame", r, "unsupported error")
    check_results(c.req(search_msg("after-errors", q, k=4)), "after-errors", data, "local", q, 4,
                  "search after errors")

    # a message in three fragments is reassembled
    text = json.dumps(search_msg("frag", q, k=6))
    a, b = len(text) // 3, 2 * len(text) // 3
    c.ws.send_frame(websocket.ABNF.create_frame(text[:a], websocket.ABNF.OPCODE_TEXT, fin=0))
    c.ws.send_frame(websocket.ABNF.create_frame(text[a:b], websocket.ABNF.OPCODE_CONT, fin=0))
    c.ws.send_frame(websocket.ABNF.create_frame(text[b:], websocket.ABNF.OPCODE_CONT, fin=1))
    check_results(c.recv(), "frag", data, "local", q, 6, "fragmented message")

    # many searches in flight at once: every reply arrives, each matching its query
    pipelined = {f"pipe{i}": rng.uniform(-1, 1, dim).astype(np.float32) for i in range(60)}
    for qid, pq in pipelined.items():
        c.send(search_msg(qid, pq, k=8))
    seen = set()
    for _ in pipelined:
        r = c.recv()
        check(r.get("id") in pipelined and r["id"] not in seen, "pipelined reply id", r.get("id"), "new pipe id")
        seen.add(r["id"])
        check_results(r, r["id"], data, "local", pipelined[r["id"]], 8, f"pipelined {r['id']}")
    c.close()

    # a client that leaves with searches in flight does not disturb the server
    c = Client(p1)
    for i in range(30):
        c.send(search_msg(f"gone{i}", queries[i % len(queries)], k=50))
    c.close()

    # a message over 4 MiB closes the connection with 1009
    c = Client(p1)
    big = '{"type":"ping","id":"big","pad":"' + "x" * (5 << 20) + '"}'
    try:
        c.ws.send(big)
    except (BrokenPipeError, ConnectionResetError, websocket.WebSocketException, socket.error):
        pass
    code = recv_close_code(c.ws)
    check(code == 1009, "close code for a message over 4 MiB", code, 1009)
    try:
        c.ws.close()
    except Exception:
        pass

    c = Client(p1)
    r = c.req({"type": "ping", "id": "still-up"})
    check(r.get("type") == "pong", "server alive after the big message", r, "pong")
    c.close()

    # A client that sends but does not read: its outgoing queue overflows
    # (1024 replies / 16 MiB) and the server closes it with 1008. Without the
    # bound all 2500 replies would arrive and the connection would stay open.
    # The close frame can be lost to a TCP reset (the client's own unread
    # requests are still in the server's socket), so a reset also counts.
    ws = websocket.create_connection(f"ws://127.0.0.1:{p1}/", subprotocols=["rv.v1"], timeout=10,
                                     sockopt=((socket.SOL_SOCKET, socket.SO_RCVBUF, 4096),))
    msg = json.dumps(search_msg("slow", query, k=1000))  # every vector: ~25 KB per reply
    code = None
    try:
        for _ in range(2500):
            ws.send(msg)
    except (ConnectionResetError, BrokenPipeError, websocket.WebSocketConnectionClosedException):
        code = "reset"  # the server already cut it off
    if code is None:
        time.sleep(1)
        code = recv_close_code(ws)
    check(code in (1008, "reset"), "close for a client that does not read", code, "1008 or a reset")
    try:
        ws.close()
    except Exception:
        pass
    c = Client(p1)
    r = c.req({"type": "ping", "id": "still-up-2"})
    check(r.get("type") == "pong", "server alive after the slow client", r, "pong")
    c.close()

    # L2 only (L1 off): the repeat comes from Redis
    c = Client(p2)
    first = check_results(c.req(search_msg("l2a", query, k=10)), "l2a", data, "local", query, 10, "L2 first")
    again = check_results(c.req(search_msg("l2b", query, k=10)), "l2b", data, "local", query, 10, "L2 repeat")
    check((first["cached"], again["cached"]) == (False, True), "L2 repeat cached",
          (first["cached"], again["cached"]), (False, True))
    c.close()

    # HTTP on the same port
    status, ctype, body = http(p1, "/health")
    check((status, body) == (200, {"status": "ok"}), "/health", (status, body), (200, {"status": "ok"}))
    check(ctype and ctype.startswith("application/json"), "/health content type", ctype, "application/json")
    st = stats(p1)
    for region, (ids, _) in data.items():
        s = st.get(region)
        check(s is not None and s["count"] == len(ids), f"/api/stats {region} count", s, len(ids))
        check(s["applied"] >= len(ids) and s["generation"] >= 1 and "lag" in s, f"/api/stats {region}", s,
              "applied/generation/lag")
    status, ctype, body = http(p1, "/nope")
    check(status == 404 and isinstance(body, dict), "unknown path", (status, body), 404)
    check(ctype and ctype.startswith("application/json"), "404 content type", ctype, "application/json")


def phase_after(p1, p2, data, dim, query):
    """The test added a vector equal to the query: both caches must miss
    (a new generation) and the new hits must include it first."""
    gen = stats(p1)["local"]["generation"]
    for port, name in ((p1, "L1"), (p2, "L2")):
        c = Client(port)
        r = check_results(c.req(search_msg("n1", query, k=10)), "n1", data, "local", query, 10, f"{name} after")
        check(r["cached"] is False, f"{name}: cached after the index changed", r["cached"], False)
        check(r["hits"][0]["id"] == "zz_new", f"{name}: new top hit", r["hits"][0]["id"], "zz_new")
        check(r["as_of"] == gen, f"{name}: as_of", r["as_of"], gen)
        r = c.req(search_msg("n2", query, k=10))
        check(r["cached"] is True and r["hits"][0]["id"] == "zz_new", f"{name}: repeat after", r, "cached zz_new")
        c.close()


def phase_noredis(p1, p2, data, dim, query):
    """Redis is down: the L2 server still answers, uncached."""
    c = Client(p2)
    q = query * 0.25
    for i in range(3):
        r = check_results(c.req(search_msg(f"nr{i}", q, k=7)), f"nr{i}", data, "local", q, 7, "without redis")
        check(r["cached"] is False, "cached without redis and L1", r["cached"], False)
    c.close()


def phase_redisback(p1, p2, data, dim, query):
    """Redis is back: within a few seconds the L2 server caches again."""
    c = Client(p2)
    q = query * 0.75
    deadline = time.time() + 8
    while True:
        c.req(search_msg("rb1", q, k=7))
        r = check_results(c.req(search_msg("rb2", q, k=7)), "rb2", data, "local", q, 7, "redis back")
        if r["cached"]:
            break
        check(time.time() < deadline, "L2 cache resumes after redis returns", r["cached"], True)
        time.sleep(0.3)
    c.close()


def main():
    phase, p1, p2, path = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
    dim, query, data = load(path)
    phases = {"main": phase_main, "after": phase_after, "noredis": phase_noredis, "redisback": phase_redisback}
    try:
        phases[phase](p1, p2, data, dim, query)
    except CheckFailed as e:
        print(f"ws_client_check {phase}: FAILED: {e}", file=sys.stderr)
        return 1
    print(f"ws_client_check {phase}: ok")
    return 0


if __name__ == "__main__":
    sys.exit(main())
