#!/usr/bin/env python3
"""The deployment artifacts agree with the server: a renamed variable, subcommand or probe path
fails here instead of silently breaking a deployment.

Reads what the server accepts from the sources:
  - environment variables: the declarations in `VARS` in src/config/mod.rs, the list parsing reads
    (a unit test checks that it reads exactly those);
  - subcommands: the variants of `enum Command` in src/main.rs (clap's kebab-case);
  - HTTP paths: resource("/path", ...) in src/routes/;
  - the default of SHUTDOWN_GRACE_SECONDS.
and checks against it:
  - docker/Dockerfile: ENV names, the ENTRYPOINT is the sessiond binary, CMD a subcommand;
  - docker/docker-compose.yml: the environment of every service built from the Dockerfile,
    and its command;
  - each rendered kustomize overlay (files given on the command line, `name=path`): env names of
    sessiond containers (explicit `env` and the keys of ConfigMaps/Secrets they load with
    envFrom), args, probe paths, Prometheus annotations, preStop + SHUTDOWN_GRACE_SECONDS <=
    terminationGracePeriodSeconds, and that production overlays (eks, eks-cluster) provide DB_URL,
    REDIS_URL (or, for a Redis Cluster, REDIS_CLUSTER_URLS instead) and JWT_SECRET to the server
    and DB_URL, JWT_SECRET to the migration Job.

Usage: check-deployment.py REPO_ROOT overlay=rendered.yaml [overlay=rendered.yaml ...]
"""
import re
import shlex
import sys
from pathlib import Path

import yaml

REQUIRED = {
    "server": {"DB_URL", "REDIS_URL", "JWT_SECRET"},
    "migrate": {"DB_URL", "JWT_SECRET"},
}
PRODUCTION_OVERLAYS = {"eks", "eks-cluster"}

errors: list[str] = []


def fail(msg: str) -> None:
    errors.append(msg)


def declarations(root: Path) -> str:
    """The body of `pub const VARS` in src/config/mod.rs: the one list of the server's variables."""
    src = (root / "src/config/mod.rs").read_text()
    m = re.search(r"pub const VARS: &\[Var\] = &\[(.*?)\n\];", src, re.S)
    if not m:
        sys.exit("check-deployment: `pub const VARS` not found in src/config/mod.rs")
    return m.group(1)


def server_env_names(root: Path) -> set[str]:
    names = set(re.findall(r'Var::(?:new|secret)\(\s*"([A-Z][A-Z0-9_]*)"', declarations(root)))
    if len(names) < 10:
        sys.exit(f"check-deployment: only {len(names)} variables found in src/config/mod.rs: parser out of date?")
    return names


def shutdown_grace_default(root: Path) -> int:
    m = re.search(r'"SHUTDOWN_GRACE_SECONDS"\s*,\s*Value\("(\d+)"\)', declarations(root))
    if not m:
        sys.exit("check-deployment: default of SHUTDOWN_GRACE_SECONDS not found in src/config/mod.rs")
    return int(m.group(1))


def subcommands(root: Path) -> set[str]:
    src = (root / "src/main.rs").read_text()
    m = re.search(r"enum\s+Command\s*\{(.*?)\n\}", src, re.S)
    if not m:
        sys.exit("check-deployment: enum Command not found in src/main.rs")
    body = re.sub(r"//[^\n]*", "", m.group(1))
    variants = re.findall(r"^\s*([A-Z][A-Za-z0-9]*)\s*[,({]", body, re.M)
    return {re.sub(r"(?<!^)([A-Z])", r"-\1", v).lower() for v in variants}


def http_paths(root: Path) -> set[str]:
    paths = set()
    for f in (root / "src/routes").rglob("*.rs"):
        paths.update(re.findall(r'resource\(\s*"(/[^"]*)"', f.read_text()))
    return paths


def check_names(where: str, names, known: set[str]) -> None:
    for n in sorted(set(names)):
        if n not in known:
            fail(f"{where}: {n} is not read by the server (src/config/mod.rs)")


def check_command(where: str, args, commands: set[str]) -> None:
    if not args:
        return
    if args[0] not in commands:
        fail(f"{where}: command {args[0]!r} is not a sessiond subcommand {sorted(commands)}")


# Read by glibc, not by the server: fixes the allocator's mmap threshold so argon2id's 19 MiB
# blocks go back to the system after each hash (docs/deployment.md "Docker Compose quick start", memory).
RUNTIME_ENV = {"MALLOC_MMAP_THRESHOLD_"}


def dockerfile(root: Path, known: set[str], commands: set[str]) -> None:
    text = (root / "docker/Dockerfile").read_text()
    text = re.sub(r"\\\n", " ", text)
    lines = [ln.strip() for ln in text.splitlines() if ln.strip() and not ln.strip().startswith("#")]
    stages = [i for i, ln in enumerate(lines) if ln.upper().startswith("FROM ")]
    final = lines[stages[-1]:]
    env_names = []
    entrypoint = cmd = None
    for ln in final:
        word, _, rest = ln.partition(" ")
        word = word.upper()
        if word == "ENV":
            env_names += [tok.split("=", 1)[0] for tok in shlex.split(rest) if "=" in tok]
        elif word == "ENTRYPOINT":
            entrypoint = yaml.safe_load(rest)
        elif word == "CMD":
            cmd = yaml.safe_load(rest)
    check_names("docker/Dockerfile ENV", env_names, known | RUNTIME_ENV)
    if not (isinstance(entrypoint, list) and entrypoint and entrypoint[0].endswith("/sessiond")):
        fail(f"docker/Dockerfile: ENTRYPOINT must be the sessiond binary in exec form, got {entrypoint!r}")
    if not isinstance(cmd, list):
        fail(f"docker/Dockerfile: CMD must be in exec form, got {cmd!r}")
    else:
        check_command("docker/Dockerfile CMD", cmd, commands)


def compose(root: Path, known: set[str], commands: set[str]) -> None:
    doc = yaml.safe_load((root / "docker/docker-compose.yml").read_text())
    built = 0
    for name, svc in (doc.get("services") or {}).items():
        if "build" not in svc:
            continue
        built += 1
        env = svc.get("environment") or {}
        names = env.keys() if isinstance(env, dict) else [e.split("=", 1)[0] for e in env]
        check_names(f"docker/docker-compose.yml service {name}", names, known)
        command = svc.get("command")
        if isinstance(command, str):
            command = shlex.split(command)
        check_command(f"docker/docker-compose.yml service {name}", command, commands)
        missing = REQUIRED["migrate" if command and command[0] == "migrate" else "server"] - set(names)
        if missing:
            fail(f"docker/docker-compose.yml service {name}: missing {sorted(missing)}")
    if built < 2:
        fail("docker/docker-compose.yml: expected the migration and at least one server built from docker/Dockerfile")


def secret_example(root: Path, known: set[str]) -> None:
    doc = yaml.safe_load((root / "kubernetes/base/secret.example.yaml").read_text())
    keys = list((doc.get("stringData") or {}) | (doc.get("data") or {}))
    check_names("kubernetes/base/secret.example.yaml", keys, known)
    missing = REQUIRED["server"] - set(keys)
    if missing:
        fail(f"kubernetes/base/secret.example.yaml: missing {sorted(missing)}")


def overlay(name: str, path: Path, known: set[str], commands: set[str], paths: set[str], grace_default: int) -> None:
    docs = [d for d in yaml.safe_load_all(path.read_text()) if d]
    by_kind: dict[tuple[str, str], dict] = {(d["kind"], d["metadata"]["name"]): d for d in docs}
    workloads = [d for d in docs if d["kind"] in ("Deployment", "StatefulSet", "Job", "CronJob", "DaemonSet")]
    seen = {"server": False, "migrate": False}
    for w in workloads:
        spec = w["spec"]["template"]["spec"] if w["kind"] != "CronJob" else w["spec"]["jobTemplate"]["spec"]["template"]["spec"]
        for c in spec.get("containers", []):
            image = c.get("image", "")
            if "sessiond" not in image.rsplit("/", 1)[-1]:
                continue
            where = f"{name}: {w['kind']}/{w['metadata']['name']} container {c['name']}"
            names = [e["name"] for e in c.get("env", [])]
            config = {}
            for src in c.get("envFrom", []):
                ref = src.get("configMapRef") or src.get("secretRef")
                kind = "ConfigMap" if "configMapRef" in src else "Secret"
                obj = by_kind.get((kind, ref["name"]))
                if obj is None:
                    continue  # created outside the overlay (e.g. by the operator)
                data = {**(obj.get("data") or {}), **(obj.get("stringData") or {})}
                names += list(data)
                config.update(data)
            check_names(where, names, known)
            args = c.get("args") or []
            check_command(where, args, commands)
            role = "migrate" if args[:1] == ["migrate"] else "server"
            seen[role] = True
            if name in PRODUCTION_OVERLAYS:
                required = REQUIRED[role]
                # A Redis Cluster's seeds stand for REDIS_URL; the server refuses both.
                if "REDIS_CLUSTER_URLS" in names:
                    required = (required - {"REDIS_URL"}) | {"REDIS_CLUSTER_URLS"}
                    if "REDIS_URL" in names:
                        fail(f"{where}: both REDIS_URL and REDIS_CLUSTER_URLS")
                missing = required - set(names)
                if missing:
                    fail(f"{where}: production overlay does not provide {sorted(missing)}")
            if role == "server" and w["kind"] == "Deployment":
                for probe in ("startupProbe", "livenessProbe", "readinessProbe"):
                    p = (c.get(probe) or {}).get("httpGet", {}).get("path")
                    if p is None:
                        fail(f"{where}: no {probe} over HTTP")
                    elif p not in paths:
                        fail(f"{where}: {probe} path {p} is not served (src/routes)")
                ann = w["spec"]["template"]["metadata"].get("annotations", {})
                if ann.get("prometheus.io/path") not in paths:
                    fail(f"{where}: prometheus.io/path {ann.get('prometheus.io/path')!r} is not served")
                scrape_port = str(config.get("METRICS_PORT") or config.get("PORT", "8080"))
                if str(ann.get("prometheus.io/port")) != scrape_port:
                    fail(f"{where}: prometheus.io/port {ann.get('prometheus.io/port')!r} is not the metrics port {scrape_port}")
                declared = {str(p.get("containerPort")) for p in c.get("ports", [])}
                if scrape_port not in declared:
                    fail(f"{where}: the metrics port {scrape_port} is not a containerPort")
                grace = int(config.get("SHUTDOWN_GRACE_SECONDS", grace_default))
                pre = ((c.get("lifecycle") or {}).get("preStop") or {}).get("sleep", {}).get("seconds", 0)
                total = spec.get("terminationGracePeriodSeconds", 30)
                if pre + grace > total:
                    fail(f"{where}: preStop {pre}s + SHUTDOWN_GRACE_SECONDS {grace}s > terminationGracePeriodSeconds {total}s")
                # An HPA owns the count: a Deployment `replicas` beside it is re-applied by every
                # `kubectl apply` and fights the autoscaler, so it must be absent, and the floor is
                # the HPA's minReplicas.
                hpas = [
                    d for d in docs
                    if d["kind"] == "HorizontalPodAutoscaler"
                    and d["spec"]["scaleTargetRef"].get("kind") == "Deployment"
                    and d["spec"]["scaleTargetRef"].get("name") == w["metadata"]["name"]
                ]
                if hpas:
                    if "replicas" in w["spec"]:
                        fail(f"{where}: sets replicas although HorizontalPodAutoscaler/{hpas[0]['metadata']['name']} manages them")
                    if hpas[0]["spec"].get("minReplicas", 1) < 2:
                        fail(f"{where}: HorizontalPodAutoscaler minReplicas below 2")
                elif w["spec"].get("replicas", 1) < 2:
                    fail(f"{where}: fewer than 2 replicas")
    for role, ok in seen.items():
        if not ok:
            fail(f"{name}: no sessiond {role} workload found")


def main() -> None:
    root = Path(sys.argv[1])
    known = server_env_names(root)
    commands = subcommands(root)
    paths = http_paths(root)
    grace = shutdown_grace_default(root)
    dockerfile(root, known, commands)
    compose(root, known, commands)
    secret_example(root, known)
    for arg in sys.argv[2:]:
        name, _, file = arg.partition("=")
        overlay(name, Path(file), known, commands, paths, grace)
    for e in errors:
        print(f"check-deployment: {e}", file=sys.stderr)
    if errors:
        sys.exit(1)
    print(
        f"check-deployment: OK ({len(known)} server variables, subcommands {sorted(commands)}, "
        f"{len(sys.argv) - 2} overlays, Dockerfile, Compose, Secret example)"
    )


if __name__ == "__main__":
    main()
