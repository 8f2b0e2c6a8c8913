#!/usr/bin/env python3
"""Checks against the running Compose stack (started by .ci/compose-checks), as an operator and a
client see it: only through the ports it publishes on 127.0.0.1 (8080 the nginx load balancer,
8081 replica a, 8082 replica b) and the docker/docker-compose commands. Exits non-zero on the
first failed check. COMPOSE is the Compose command line; MEASURE=1 adds the figures of docs/deployment.md."""
import datetime
import json
import os
import re
import shlex
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
import uuid

COMPOSE = shlex.split(os.environ["COMPOSE"])
MEASURE = os.environ.get("MEASURE") == "1"
LB, A, B = "http://127.0.0.1:8080", "http://127.0.0.1:8081", "http://127.0.0.1:8082"
# docs/sessions.md "Revocation guarantee": no pod accepts a revoked token longer than SESSION_CACHE_TTL
# (default 5 s, which docker-compose.yml keeps) after the logout returned.
CACHE_TTL = 5.0
PASSWORD = "correct horse battery staple"


def log(msg):
    print(f"compose-checks: {msg}", flush=True)


def fail(msg):
    log(f"FAILED: {msg}")
    sys.exit(1)


def request(method, url, body=None, token=None, headers=None, timeout=15):
    """(status, parsed body); connection errors raise OSError."""
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(url, data=data, method=method)
    if data is not None:
        req.add_header("content-type", "application/json")
    if token:
        req.add_header("authorization", f"Bearer {token}")
    for k, v in (headers or {}).items():
        req.add_header(k, v)
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            status, raw = r.status, r.read()
    except urllib.error.HTTPError as e:
        status, raw = e.code, e.read()
    try:
        return status, json.loads(raw) if raw else None
    except ValueError:
        return status, raw.decode(errors="replace")


def expect(what, got, want, body=None):
    if got != want:
        fail(f"{what}: got {got}, want {want} {body if body is not None else ''}")


def poll(what, check, deadline, every=0.05):
    """Polls check() until truthy within deadline seconds; returns (value, seconds taken)."""
    start = time.monotonic()
    last = None
    while True:
        try:
            value = check()
        except OSError as e:  # connection refused or reset while a container (re)starts
            value, last = None, e
        if value:
            return value, time.monotonic() - start
        if time.monotonic() - start > deadline:
            fail(f"{what}: not within {deadline} s (last error: {last})")
        time.sleep(every)


def compose(*args, capture=False):
    r = subprocess.run(COMPOSE + list(args), check=True, text=True,
                       stdout=subprocess.PIPE if capture else None)
    return r.stdout


def container(service):
    cid = compose("ps", "-q", service, capture=True).strip()
    if not cid:
        fail(f"no container for {service}")
    return cid


def inspect(service):
    out = subprocess.run(["docker", "inspect", container(service)], check=True, text=True,
                         stdout=subprocess.PIPE).stdout
    return json.loads(out)[0]


def docker_time(stamp):
    """Docker's RFC 3339 nanosecond stamp as epoch seconds."""
    m = re.match(r"(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d)(?:\.(\d+))?Z$", stamp)
    if not m:
        fail(f"unexpected docker time {stamp!r}")
    base = datetime.datetime.fromisoformat(m.group(1)).replace(tzinfo=datetime.timezone.utc)
    return base.timestamp() + float("0." + (m.group(2) or "0"))


def ready(url):
    return request("GET", url + "/ready", timeout=5)[0] == 200


def wait_ready(*urls, deadline=120):
    for url in urls:
        poll(f"{url}/ready answers 200", lambda: ready(url), deadline, every=0.2)


def new_account(base=LB, headers=None):
    email = f"ci-{uuid.uuid4().hex[:12]}@example.com"
    status, body = request("POST", base + "/register", {"email": email, "password": PASSWORD},
                           headers=headers)
    expect("register", status, 201, body)
    return email


def login(email, base=LB, headers=None):
    status, body = request("POST", base + "/login", {"email": email, "password": PASSWORD},
                           headers=headers)
    expect("login", status, 200, body)
    return body["access_token"]


def session_status(base, token):
    return request("GET", base + "/session", token=token)[0]


def check_flow_through_the_balancer():
    email = new_account()
    token = login(email)
    for base in (LB, A, B):
        expect(f"GET /session on {base}", session_status(base, token), 200)
    status, body = request("POST", LB + "/logout", token=token)
    expect("POST /logout through the balancer", status, 204, body)
    for base in (A, B, LB):
        poll(f"{base} refuses the logged-out token within {CACHE_TTL} s",
             lambda: session_status(base, token) == 401, CACHE_TTL, every=0.01)
    log("register, log in, log out through the balancer; the token is refused by a, b and the balancer")


def check_cross_replica_logout():
    token = login(new_account(A), base=A)
    expect("the session on b (cached there)", session_status(B, token), 200)
    status, body = request("POST", A + "/logout", token=token)
    expect("POST /logout on a", status, 204, body)
    expect("a refuses the token at once", session_status(A, token), 401)
    _, took = poll(f"b refuses the token within SESSION_CACHE_TTL ({CACHE_TTL} s)",
                   lambda: session_status(B, token) == 401, CACHE_TTL, every=0.005)
    log(f"logout on a refused by b after {took * 1000:.0f} ms (bound {CACHE_TTL:.0f} s)")


def check_sigterm_restart_under_load():
    """Replica a stops on SIGTERM (exit 0) and starts again while a client loops over token checks
    through the balancer: every check answers 200. Returns a's start-to-ready seconds."""
    token = login(new_account())
    results, stop = [], threading.Event()

    def loop():
        while not stop.is_set():
            try:
                results.append(session_status(LB, token))
            except OSError as e:
                results.append(repr(e))

    client = threading.Thread(target=loop)
    client.start()
    try:
        time.sleep(1)
        before = inspect("sessiond-a")["State"]["StartedAt"]
        compose("stop", "-t", "35", "sessiond-a")  # SIGTERM; SIGKILL only after 35 s
        state = inspect("sessiond-a")["State"]
        if state["ExitCode"] != 0:
            fail(f"sessiond-a exited {state['ExitCode']} on SIGTERM")
        during = len(results)
        compose("start", "sessiond-a")
        poll("a ready again", lambda: ready(A), 60, every=0.02)
        ready_at = time.time()
        state = inspect("sessiond-a")["State"]
        if state["StartedAt"] == before:
            fail("sessiond-a was not restarted")
        time.sleep(2)
    finally:
        stop.set()
        client.join()
    failed = [r for r in results if r != 200]
    if failed:
        fail(f"{len(failed)} of {len(results)} token checks failed during the restart: {failed[:5]}")
    if during < 10:
        fail(f"only {during} token checks ran before a stopped")
    start_to_ready = ready_at - docker_time(state["StartedAt"])
    log(f"a stopped on SIGTERM (exit 0) and restarted under {len(results)} token checks through "
        f"the balancer: none failed; container start to ready {start_to_ready:.2f} s")
    return start_to_ready


def check_non_root_read_only():
    for service in ("sessiond-a", "sessiond-b"):
        info = inspect(service)
        pid = info["State"]["Pid"]
        with open(f"/proc/{pid}/status") as f:
            status = dict(line.rstrip("\n").split(":\t", 1) for line in f if ":\t" in line)
        uids = status["Uid"].split()
        if "0" in uids or not info["HostConfig"]["ReadonlyRootfs"]:
            fail(f"{service}: uids {uids}, read-only root {info['HostConfig']['ReadonlyRootfs']}")
        if int(status["CapEff"], 16) != 0 or status.get("NoNewPrivs") != "1":
            fail(f"{service}: capabilities {status['CapEff']}, no_new_privs {status.get('NoNewPrivs')}")
        with open(f"/proc/{pid}/mountinfo") as f:
            root = [line.split() for line in f if line.split()[4] == "/"]
        if not root or "ro" not in root[0][5].split(","):
            fail(f"{service}: / is not mounted read-only: {root}")
    log("sessiond-a and -b run as uid 65532 (not root), root file system read-only, no capabilities, no_new_privs")


def check_ready_follows_the_database():
    compose("stop", "postgres")
    for base in (A, B):
        def unready(base=base):
            status, body = request("GET", base + "/ready", timeout=10)
            return status == 503 and body["checks"]["database"] == "unavailable"
        poll(f"{base}/ready 503 with the database stopped", unready, 30, every=0.2)
    expect("/ready through the balancer", request("GET", LB + "/ready", timeout=10)[0], 503)
    compose("start", "postgres")
    wait_ready(A, B, deadline=60)
    login(new_account())
    log("/ready is 503 (database unavailable) on both replicas while postgres is stopped, 200 after")


def check_down_up_keeps_users_and_sessions():
    email = new_account()
    token = login(email)
    time.sleep(1.5)  # Redis writes its AOF every second (appendfsync everysec)
    compose("down")
    compose("up", "-d")
    wait_ready(LB, A, B)
    expect("the session after down and up", session_status(LB, token), 200)
    login(email)
    log("docker-compose down then up -d: the account (postgres-data) and the session (redis-data AOF) are kept")


def check_schema_behind_then_migrated():
    """sessiond started before the migration step: 503 naming the pending migrations, then, once
    `up -d` has run the migration, ready without a restart."""
    compose("down", "-v")
    compose("up", "-d", "postgres", "redis")
    for service in ("postgres", "redis"):
        poll(f"{service} healthy",
             lambda s=service: inspect(s)["State"].get("Health", {}).get("Status") == "healthy",
             60, every=0.5)
    compose("up", "-d", "--no-deps", "sessiond-a")

    def answered():
        status, body = request("GET", A + "/ready", timeout=5)
        return (status, body)
    status, body = poll("a answers /ready", answered, 60, every=0.1)[0]
    expect("/ready before the migration", status, 503, body)
    if body["checks"]["schema"] != "behind" or not body.get("pending_migrations"):
        fail(f"/ready does not name the pending migrations: {body}")
    logs = compose("logs", "--no-color", "sessiond-a", capture=True)
    if "schema is behind" not in logs:
        fail("sessiond-a did not log the pending migrations at start")
    started = inspect("sessiond-a")["State"]["StartedAt"]
    compose("up", "-d")
    wait_ready(A, LB, deadline=120)
    if inspect("sessiond-a")["State"]["StartedAt"] != started:
        fail("sessiond-a was restarted to become ready")
    login(new_account())
    log(f"a started before the migration: 503 naming {body['pending_migrations']}, logged; "
        "ready after `up -d` ran the migration, same container, no restart")


def memory_mib():
    names = {s: inspect(s)["Name"].lstrip("/") for s in ("sessiond-a", "sessiond-b")}
    out = subprocess.run(["docker", "stats", "--no-stream", "--format", "{{.Name}} {{.MemUsage}}",
                         *names.values()], check=True, text=True, stdout=subprocess.PIPE).stdout
    units = {"B": 1 / 2**20, "KiB": 1 / 1024, "MiB": 1, "GiB": 1024}
    result = {}
    for line in out.splitlines():
        name, usage = line.split(" ", 1)
        m = re.match(r"([\d.]+)(\w+)", usage)
        result[name] = float(m.group(1)) * units[m.group(2)]
    return [result[names[s]] for s in ("sessiond-a", "sessiond-b")]


def measure(start_to_ready):
    image = json.loads(subprocess.run(["docker", "image", "inspect", "sessiond:local"], check=True,
                                      text=True, stdout=subprocess.PIPE).stdout)[0]
    log(f"figure: image sessiond:local {image['Size'] / 1e6:.1f} MB")
    log(f"figure: container start to ready {start_to_ready:.2f} s")
    time.sleep(5)
    idle = memory_mib()
    log(f"figure: memory at idle a {idle[0]:.1f} MiB, b {idle[1]:.1f} MiB")
    # Login throttling is per client address and per account: the client names itself with a
    # different X-Forwarded-For per request (nginx is a trusted proxy and appends the address it
    # saw), and the logins are spread over enough accounts to stay under 10 a minute each.
    logins, accounts, workers = 10_000, 1_000, 4
    counter = iter(range(10**9))
    lock = threading.Lock()

    def xff():
        with lock:
            n = next(counter)
        return {"x-forwarded-for": f"198.18.{n // 250 % 250}.{n % 250 + 1}"}

    emails = []

    def register(k):
        for _ in range(k):
            emails.append(new_account(headers=xff()))

    start = time.monotonic()
    threads = [threading.Thread(target=register, args=(accounts // workers,)) for _ in range(workers)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if len(emails) != accounts:
        fail(f"registered {len(emails)} of {accounts} accounts")
    errors = []

    def work(offset):
        try:
            for i in range(offset, logins, workers):
                h = xff()
                token = login(emails[i % accounts], headers=h)
                if session_status(LB, token) != 200:
                    errors.append(i)
        except SystemExit as e:
            errors.append(str(e))

    threads = [threading.Thread(target=work, args=(w,)) for w in range(workers)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if errors:
        fail(f"{len(errors)} of the {logins} logins and token checks failed")
    took = time.monotonic() - start
    after = memory_mib()
    log(f"figure: {accounts} registrations, {logins} logins and {logins} token checks through the "
        f"balancer in {took:.0f} s; memory after a {after[0]:.1f} MiB, b {after[1]:.1f} MiB")


def main():
    wait_ready(LB, A, B)
    log("the quick start's stack is up: the balancer and both replicas are ready")
    check_flow_through_the_balancer()
    check_cross_replica_logout()
    start_to_ready = check_sigterm_restart_under_load()
    check_non_root_read_only()
    if MEASURE:
        measure(start_to_ready)
    check_ready_follows_the_database()
    check_down_up_keeps_users_and_sessions()
    check_schema_behind_then_migrated()
    log("all stack checks passed")


if __name__ == "__main__":
    main()
