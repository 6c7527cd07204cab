#!/usr/bin/env python3
"""Checks what can be checked of deploy/ without a Docker engine or a Kubernetes cluster.

  python3 scripts/check_deploy.py                  all checks (.ci/run runs this)
  python3 scripts/check_deploy.py --build          also builds the image's binary (slow) instead of `cargo check`
  python3 scripts/check_deploy.py --fix-checksums  rewrites the checksum/config annotations of deploy/kubernetes/

Needs PyYAML (examples/fastapi-backend/requirements-dev.txt; .ci/run runs this with that venv's
python) and cargo. nginx, systemd-analyze and promtool are used when installed, and said so when not.

What each check proves:
- Dockerfile: the files its build stage COPYs (minus Dockerfile.dockerignore) are copied alone into
  an empty directory and its cargo command runs there, as `cargo check` with the image profile (the
  manifest parses, every file the crate includes is among the copies, the code compiles for that
  profile) or, with --build, as written, and the binary must then have no debug info. Every other
  COPY source exists; the HEALTHCHECK command is run against a real proxy's admin listener.
- compose.yaml: parses; every depends_on, build context, Dockerfile and bind-mounted file exists;
  the proxy's published ports, the image's EXPOSE and HEALTHCHECK, Prometheus' scrape target and the
  upstream/Redis URLs agree with the proxy.toml it mounts; the backend image's files import.
- Kubernetes: every document parses and has apiVersion, kind and a name; every ConfigMap's
  proxy.toml passes `sse-proxy check`; checksum annotations match; ports, probes and Services
  agree with the config; terminationGracePeriodSeconds exceeds preStop plus shutdown_grace; more
  than one replica only on the Redis store.
- Grafana: the dashboard and provisioning files parse; every metric the dashboard and alerts.yml
  query is in README's metrics table and in /metrics of a proxy that has just started (so panels
  show 0, never "no data"); legend labels exist on the metrics queried; after one stream from the
  reference backend through the proxy, the counters the main panels plot have counted it.
- systemd-analyze verify on the unit, nginx -t on nginx.conf with a self-signed certificate,
  promtool on the alert rules and their tests, when those tools are installed.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import posixpath
import re
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import tomllib
import urllib.request
from pathlib import Path

try:
    import yaml
except ImportError:
    sys.exit(
        "error: PyYAML is missing: run with the backend venv's python "
        "(examples/fastapi-backend/.venv/bin/python, after pip install -r requirements-dev.txt)"
    )

ROOT = Path(__file__).resolve().parent.parent
DEPLOY = ROOT / "deploy"
DOCKERFILE = DEPLOY / "docker" / "Dockerfile"
COMPOSE = DEPLOY / "docker" / "compose.yaml"
KUBERNETES = DEPLOY / "kubernetes"
DASHBOARD = DEPLOY / "grafana" / "sse-proxy.json"
CHECKSUM_KEY = "checksum/config"

failures: list[str] = []


def fail(msg: str) -> None:
    failures.append(msg)
    print(f"  FAIL {msg}")


def ok(msg: str) -> None:
    print(f"  ok   {msg}")


def step(msg: str) -> None:
    print(f"\n==> {msg}", flush=True)


def rel(p: Path) -> str:
    try:
        return str(p.relative_to(ROOT))
    except ValueError:
        return str(p)


# ---------------------------------------------------------------- helpers

def seconds(text: str) -> float:
    """A proxy.toml duration ("250ms", "15s", "5m", "1h") or a compose/systemd one ("40s", "45")."""
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h)?\s*", str(text))
    if not m:
        raise ValueError(f"not a duration: {text!r}")
    n = float(m.group(1))
    return n * {"ms": 0.001, "s": 1, "m": 60, "h": 3600, None: 1}[m.group(2)]


def port_of(addr: str) -> int:
    return int(addr.rsplit(":", 1)[1])


def url_host_port(url: str, default_port: int) -> tuple[str, int]:
    m = re.match(r"^[a-z]+://(?:[^@/]*@)?(\[[^\]]+\]|[^:/]+)(?::(\d+))?", url)
    if not m:
        raise ValueError(f"not a URL: {url}")
    return m.group(1), int(m.group(2) or default_port)


def sha256(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def git_files() -> set[str]:
    out = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
                         cwd=ROOT, capture_output=True, check=True).stdout
    return {p for p in out.decode().split("\0") if p}


def in_repo(path: Path, files: set[str]) -> bool:
    """A file or a directory with files in it, known to git (committed or about to be)."""
    r = rel(path)
    if r == ".":
        return bool(files)
    return r in files or any(f.startswith(r.rstrip("/") + "/") for f in files)


# ---------------------------------------------------------------- Dockerfile

def dockerfile_instructions(path: Path) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with continuation lines joined and comments dropped."""
    out, cur = [], ""
    for line in path.read_text().splitlines():
        s = line.strip()
        if not cur and (not s or s.startswith("#")):
            continue
        if cur and s.startswith("#"):
            continue
        if s.endswith("\\"):
            cur += s[:-1] + " "
            continue
        cur += s
        word, _, args = cur.partition(" ")
        out.append((word.upper(), args.strip()))
        cur = ""
    return out


def dockerignore_patterns(path: Path) -> list[tuple[bool, re.Pattern]]:
    pats = []
    if not path.exists():
        return pats
    for line in path.read_text().splitlines():
        s = line.strip()
        if not s or s.startswith("#"):
            continue
        neg = s.startswith("!")
        s = s.lstrip("!").strip("/")
        rx = ""
        i = 0
        while i < len(s):
            if s.startswith("**/", i):
                rx += "(?:.*/)?"
                i += 3
            elif s.startswith("**", i):
                rx += ".*"
                i += 2
            elif s[i] == "*":
                rx += "[^/]*"
                i += 1
            elif s[i] == "?":
                rx += "[^/]"
                i += 1
            else:
                rx += re.escape(s[i])
                i += 1
        pats.append((neg, re.compile(rx + "(?:/.*)?$")))
    return pats


def ignored(relpath: str, pats) -> bool:
    out = False
    for neg, rx in pats:
        if rx.match(relpath):
            out = not neg
    return out


def copy_sources(srcs: list[str], dest: str, workdir: str, into: Path, files: set[str], pats) -> None:
    """COPY srcs dest in the build stage: copies the context's files (those git knows, minus the
    dockerignored ones) to where the build would see them, `into` standing for WORKDIR."""
    dest_abs = posixpath.normpath(dest if dest.startswith("/") else f"{workdir}/{dest}")
    dest_rel = posixpath.relpath(dest_abs, workdir)
    if dest_rel.startswith(".."):
        fail(f"Dockerfile: COPY to {dest}, outside WORKDIR {workdir}: the check cannot place it")
        return
    to_dir = dest.endswith("/") or len(srcs) > 1
    for src in srcs:
        src = src.rstrip("/")
        matched = sorted(f for f in files if (f == src or f.startswith(src + "/"))
                         and (ROOT / f).is_file() and not ignored(f, pats))
        if not matched:
            fail(f"Dockerfile: COPY {src}: nothing in the build context")
            continue
        for f in matched:
            if f == src:
                target = posixpath.join(dest_rel, Path(f).name) if to_dir else dest_rel
            else:
                target = posixpath.join(dest_rel, f[len(src) + 1:])
            t = into / target
            t.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy(ROOT / f, t)  # new mtimes: cargo compiles the copy, it does not reuse a fingerprint


def check_dockerfile(build: bool, target_dir: Path) -> dict:
    step(f"{rel(DOCKERFILE)}: build from exactly what it copies")
    files = git_files()
    pats = dockerignore_patterns(DOCKERFILE.with_name(DOCKERFILE.name + ".dockerignore"))
    info: dict = {"expose": set(), "healthcheck": None}
    stage, workdir, cargo_cmd = 0, "/", None
    tmp = Path(tempfile.mkdtemp(prefix="sse-proxy-image-"))
    try:
        for word, args in dockerfile_instructions(DOCKERFILE):
            if word == "FROM":
                stage += 1
                workdir = "/"
            elif word == "WORKDIR":
                workdir = args
            elif word == "COPY":
                parts = shlex.split(args)
                flags = [p for p in parts if p.startswith("--")]
                paths = [p for p in parts if not p.startswith("--")]
                if any(f.startswith("--from") for f in flags):
                    continue
                srcs, dest = paths[:-1], paths[-1]
                if stage == 1:
                    copy_sources(srcs, dest, workdir, tmp, files, pats)
                else:
                    for s in srcs:
                        if not in_repo(ROOT / s, files) or ignored(s, pats):
                            fail(f"Dockerfile: COPY {s}: not in the build context")
            elif word == "RUN" and "cargo build" in args and stage == 1:
                cmd = args[args.index("cargo build"):].split("&&")[0].strip()
                cargo_cmd = shlex.split(cmd)
            elif word == "EXPOSE":
                info["expose"] |= {int(p.split("/")[0]) for p in args.split()}
            elif word == "HEALTHCHECK":
                m = re.search(r"\bCMD\s+(\[.*\])\s*$", args)
                info["healthcheck"] = json.loads(m.group(1)) if m else None
        if cargo_cmd is None:
            fail("Dockerfile: no `cargo build` in the build stage")
            return info
        copied = sorted(str(p.relative_to(tmp)) for p in tmp.rglob("*") if p.is_file())
        print(f"  copied {len(copied)} files: {', '.join(sorted({c.split('/')[0] for c in copied}))}")
        profile = cargo_cmd[cargo_cmd.index("--profile") + 1] if "--profile" in cargo_cmd else "release"
        cmd = list(cargo_cmd) if build else ["cargo", "check"] + cargo_cmd[2:]
        env = dict(os.environ, CARGO_TARGET_DIR=str(target_dir))
        if subprocess.run(["cargo", "fetch", "--locked", "--offline"], cwd=tmp, env=env,
                          capture_output=True).returncode == 0:
            cmd.append("--offline")
        print(f"  $ {' '.join(cmd)}   (in {tmp}, CARGO_TARGET_DIR={target_dir})", flush=True)
        r = subprocess.run(cmd, cwd=tmp, env=env)
        if r.returncode != 0:
            fail(f"Dockerfile: `{' '.join(cmd)}` fails on the files the Dockerfile copies")
        else:
            ok(f"`{' '.join(cmd)}` passes on exactly the copied files")
        if build and r.returncode == 0:
            binary = target_dir / profile / "sse-proxy"
            sections = elf_sections(binary)
            debug = sorted(s for s in sections if s.startswith(".debug") or s == ".symtab")
            size = binary.stat().st_size / 2**20
            if debug:
                fail(f"Dockerfile: {binary} ({size:.1f} MiB) carries {', '.join(debug)}")
            else:
                ok(f"image binary: {size:.1f} MiB, no debug info or symbol table")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return info


def elf_sections(path: Path) -> set[str]:
    import struct
    data = path.read_bytes()
    if data[:4] != b"\x7fELF" or data[4] != 2:
        return set()
    shoff, = struct.unpack_from("<Q", data, 0x28)
    shentsize, shnum, shstrndx = struct.unpack_from("<HHH", data, 0x3A)
    def header(i):
        return struct.unpack_from("<IIQQQQ", data, shoff + i * shentsize)
    stroff = header(shstrndx)[4]
    names = set()
    for i in range(shnum):
        n = header(i)[0]
        names.add(data[stroff + n:data.index(b"\0", stroff + n)].decode())
    return names


# ---------------------------------------------------------------- the proxy binary

def proxy_binary(given: str | None) -> Path:
    if given:
        return Path(given)
    out = subprocess.run(["cargo", "build", "--bin", "sse-proxy", "--message-format=json-render-diagnostics"],
                         cwd=ROOT, capture_output=True, text=True)
    sys.stderr.write(out.stderr)
    for line in out.stdout.splitlines():
        m = json.loads(line)
        if m.get("reason") == "compiler-artifact" and m.get("executable") and m["target"]["name"] == "sse-proxy":
            return Path(m["executable"])
    sys.exit("error: cargo built no sse-proxy binary")


def proxy_check(binary: Path, toml_text: str, name: str) -> None:
    with tempfile.NamedTemporaryFile("w", suffix=".toml", delete=False) as f:
        f.write(toml_text)
    try:
        r = subprocess.run([str(binary), "check", "--config", f.name], capture_output=True, text=True)
        if r.returncode != 0:
            fail(f"{name}: sse-proxy check: {r.stderr.strip().replace(f.name, name)}")
        else:
            ok(f"{name}: sse-proxy check")
    finally:
        os.unlink(f.name)


class RunningProxy:
    """The proxy on loopback ports picked by the OS, in front of `upstream`."""

    def __init__(self, binary: Path, config: Path, upstream: str = "http://127.0.0.1:9"):
        self.p = subprocess.Popen(
            [str(binary), "--config", str(config), "--listen", "127.0.0.1:0", "--admin-listen", "127.0.0.1:0",
             "--upstream", upstream, "--log-format", "json"],
            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
        line = self.p.stdout.readline() if self.p.stdout else ""
        try:
            self.main, self.admin = json.loads(line)["listening"], json.loads(line)["admin"]
        except (ValueError, KeyError):
            self.stop()
            raise RuntimeError(f"the proxy printed no listening line (got {line!r})")

    def get(self, path: str) -> str:
        with urllib.request.urlopen(f"http://{self.admin}{path}", timeout=10) as r:
            return r.read().decode()

    def stop(self) -> None:
        if self.p.poll() is None:
            self.p.send_signal(signal.SIGTERM)
            try:
                self.p.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.p.kill()
                self.p.wait()


def sample(text: str, name: str, labels: str = "") -> float:
    """The value of one sample (`labels` as written, e.g. 'outcome="completed"'), 0 when absent."""
    want = f"{name}{{{labels}}}" if labels else name
    for line in text.splitlines():
        if line.startswith(want + " "):
            return float(line.split()[-1])
    return 0.0


def one_stream(binary: Path) -> None:
    """The reference backend, the proxy with deploy/proxy.toml in front, one 40-token stream: the
    counters the dashboard's main panels plot must have counted it."""
    python = os.environ.get("SSE_PROXY_PYTHON") or sys.executable
    if subprocess.run([python, "-c", "import fastapi, sse_starlette, uvicorn"], capture_output=True).returncode:
        print(f"  skip one stream: {python} lacks the backend's packages (examples/fastapi-backend/requirements.txt)")
        return
    backend = subprocess.Popen([python, "run.py"], cwd=ROOT / "examples/fastapi-backend",
                               stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    proxy = None
    try:
        line = backend.stdout.readline() if backend.stdout else ""
        upstream = "http://" + json.loads(line)["listening"]
        proxy = RunningProxy(binary, DEPLOY / "proxy.toml", upstream)
        url = f"http://{proxy.main}/api/question/stream?question=dashboard&tokens=40&rate=0"
        with urllib.request.urlopen(url, timeout=30) as r:
            body = r.read().decode()
        if "event: done" not in body:
            fail(f"one stream through the proxy did not end with done: {body[-200:]!r}")
            return
        deadline = time.monotonic() + 10
        while True:
            text = proxy.get("/metrics")
            if sample(text, "sse_proxy_streams_finished_total", 'outcome="completed"') >= 1 or time.monotonic() > deadline:
                break
            time.sleep(0.1)
        expect = [("sse_proxy_streams_started_total", "", 1), ("sse_proxy_streams_finished_total", 'outcome="completed"', 1),
                  ("sse_proxy_tokens_total", "", 40), ("sse_proxy_time_to_first_token_seconds_count", "", 1),
                  ("sse_proxy_stream_duration_seconds_count", "", 1), ("sse_proxy_batch_tokens_count", "", 1)]
        for name, labels, least in expect:
            got = sample(text, name, labels)
            if got < least:
                fail(f"after one 40-token stream {name}{{{labels}}} is {got:g}, expected at least {least}")
        up, down = sample(text, "sse_proxy_upstream_events_total"), sample(text, "sse_proxy_downstream_events_total")
        if not 0 < down < up:
            fail(f"after one stream: upstream events {up:g}, downstream events {down:g}: no batching saving to plot")
        else:
            ok(f"one 40-token stream: counted in the dashboard's counters; {up:g} upstream events became "
               f"{down:g} downstream events (saving {1 - down / up:.0%})")
    except (OSError, ValueError, KeyError, RuntimeError) as e:
        fail(f"one stream through the proxy: {e}")
    finally:
        if proxy:
            proxy.stop()
        backend.terminate()
        backend.wait(timeout=10)


def exposition(text: str) -> dict[str, set[str]]:
    """Sample names in a Prometheus text exposition, with the label names each one carries."""
    out: dict[str, set[str]] = {}
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        m = re.match(r"([a-zA-Z_:][a-zA-Z0-9_:]*)(\{[^}]*\})?\s", line)
        if m:
            labels = set(re.findall(r'([a-zA-Z_][a-zA-Z0-9_]*)="', m.group(2) or ""))
            out.setdefault(m.group(1), set()).update(labels)
    return out


def healthcheck(cmd: list[str] | None, proxy: RunningProxy, admin_port: int) -> None:
    if not cmd:
        fail("Dockerfile: no HEALTHCHECK CMD [...]")
        return
    if f"/{admin_port}" not in " ".join(cmd) or "/healthz" not in " ".join(cmd):
        fail(f"Dockerfile: HEALTHCHECK does not ask :{admin_port}/healthz")
    port = port_of(proxy.admin)
    real = [c.replace(f"/{admin_port}", f"/{port}") for c in cmd]
    if shutil.which(real[0]) is None:
        print(f"  skip HEALTHCHECK run: no {real[0]} here")
        return
    r = subprocess.run(real, capture_output=True, timeout=10)
    if r.returncode != 0:
        fail(f"Dockerfile: HEALTHCHECK fails against a running proxy's admin listener (exit {r.returncode})")
    else:
        ok("Dockerfile: HEALTHCHECK command passes against a running proxy's /healthz")
    bad = [c.replace(f"/{admin_port}", "/1") for c in cmd]
    if subprocess.run(bad, capture_output=True, timeout=10).returncode == 0:
        fail("Dockerfile: HEALTHCHECK passes with nothing listening")


# ---------------------------------------------------------------- compose

def bind_mounts(service: dict) -> list[tuple[str, str]]:
    out = []
    for v in service.get("volumes", []) or []:
        if isinstance(v, dict):
            if v.get("type") == "bind":
                out.append((v["source"], v["target"]))
            continue
        parts = v.split(":")
        if parts[0].startswith((".", "/")):
            out.append((parts[0], parts[1]))
    return out


def container_ports(service: dict) -> set[int]:
    out = set()
    for p in service.get("ports", []) or []:
        if isinstance(p, dict):
            out.add(int(p["target"]))
        else:
            out.add(int(str(p).split("/")[0].rsplit(":", 1)[-1]))
    return out


def check_compose(binary: Path, image: dict, files: set[str]) -> None:
    step(f"{rel(COMPOSE)}: services, mounts and ports")
    base = COMPOSE.parent
    doc = yaml.safe_load(COMPOSE.read_text())
    services = doc.get("services") or {}
    named = set((doc.get("volumes") or {}).keys())
    if not services:
        fail("compose.yaml: no services")
        return
    for name, svc in services.items():
        dep = svc.get("depends_on") or []
        for d in (dep.keys() if isinstance(dep, dict) else dep):
            if d not in services:
                fail(f"compose.yaml: {name} depends_on {d}, which is no service")
            elif isinstance(dep, dict) and dep[d].get("condition") == "service_healthy":
                has = "healthcheck" in services[d] or dockerfile_has_healthcheck(base, services[d])
                if not has:
                    fail(f"compose.yaml: {name} waits for {d} to be healthy, but {d} has no healthcheck")
        if "build" in svc:
            b = svc["build"]
            ctx = (base / (b["context"] if isinstance(b, dict) else b)).resolve()
            df = ctx / (b.get("dockerfile", "Dockerfile") if isinstance(b, dict) else "Dockerfile")
            if not in_repo(ctx, files):
                fail(f"compose.yaml: {name}: build context {rel(ctx)} is not in the repo")
            if not in_repo(df.resolve(), files):
                fail(f"compose.yaml: {name}: {rel(df.resolve())} is not in the repo")
            elif df.resolve() != DOCKERFILE:
                check_plain_dockerfile(df.resolve(), ctx, files)
        elif "image" not in svc:
            fail(f"compose.yaml: {name} has neither build nor image")
        for src, _ in bind_mounts(svc):
            p = (base / src).resolve()
            if not in_repo(p, files):
                fail(f"compose.yaml: {name} mounts {src}, which is not in the repo")
        for v in svc.get("volumes", []) or []:
            if isinstance(v, str) and not v.split(":")[0].startswith((".", "/")) and v.split(":")[0] not in named:
                fail(f"compose.yaml: {name} uses volume {v.split(':')[0]}, not declared under volumes")
    ok(f"compose.yaml: {len(services)} services, depends_on, build contexts and mounts exist")

    proxy_name = next((n for n, s in services.items() if s.get("build", {}).get("dockerfile", "").endswith(
        "deploy/docker/Dockerfile")), None)
    if not proxy_name:
        fail("compose.yaml: no service built from deploy/docker/Dockerfile")
        return
    proxy = services[proxy_name]
    mounts = {dst: (base / src).resolve() for src, dst in bind_mounts(proxy)}
    cmd = proxy.get("command") or []
    cfg_path = cmd[cmd.index("--config") + 1] if "--config" in cmd else "/etc/sse-proxy/proxy.toml"
    if cfg_path not in mounts:
        fail(f"compose.yaml: {proxy_name} reads {cfg_path}, which it does not mount")
        return
    toml_file = mounts[cfg_path]
    text = toml_file.read_text()
    proxy_check(binary, text, rel(toml_file))
    cfg = tomllib.loads(text)
    listen, admin = port_of(cfg["server"]["listen"]), port_of(cfg["server"].get("admin_listen", "127.0.0.1:9090"))
    published = container_ports(proxy)
    if listen not in published:
        fail(f"compose.yaml: {proxy_name} does not publish [server] listen port {listen}")
    if published - {listen, admin}:
        fail(f"compose.yaml: {proxy_name} publishes {sorted(published - {listen, admin})}, which the proxy does not listen on")
    if not {listen, admin} <= image["expose"]:
        fail(f"Dockerfile: EXPOSE {sorted(image['expose'])} lacks {sorted({listen, admin} - image['expose'])}")
    if image["healthcheck"] and f"/{admin}" not in " ".join(image["healthcheck"]):
        fail(f"Dockerfile: HEALTHCHECK does not ask the admin port {admin} of {rel(toml_file)}")
    grace = seconds(cfg["server"].get("shutdown_grace", "30s"))
    if seconds(proxy.get("stop_grace_period", "10s")) <= grace:
        fail(f"compose.yaml: {proxy_name} stop_grace_period must exceed shutdown_grace ({grace:g}s)")
    ok(f"compose.yaml: {proxy_name} publishes {sorted(published)} = [server] listen/admin_listen of "
       f"{rel(toml_file)}; stop_grace_period > shutdown_grace")

    def points_at(url_host: str, url_port: int, what: str) -> None:
        svc = services.get(url_host)
        if svc is None:
            fail(f"{what}: host {url_host} is no compose service")
            return
        ports = container_ports(svc) | {int(str(p).split("/")[0]) for p in svc.get("expose", []) or []}
        image_ports = {6379} if "redis" in str(svc.get("image", "")) else set()
        image_ports |= {9090} if "prometheus" in str(svc.get("image", "")) else set()
        if url_port not in ports | image_ports:
            fail(f"{what}: {url_host}:{url_port}, but {url_host} exposes {sorted(ports | image_ports)}")
        else:
            ok(f"{what}: {url_host}:{url_port} is the compose service {url_host}")

    points_at(*url_host_port(cfg["upstream"]["url"], 80), f"{rel(toml_file)} [upstream] url")
    store = cfg.get("store", {})
    if store.get("kind") == "redis":
        points_at(*url_host_port(store.get("url", "redis://127.0.0.1:6379/0"), 6379), f"{rel(toml_file)} [store] url")
        redis_svc = url_host_port(store["url"], 6379)[0]
        dep = proxy.get("depends_on") or {}
        if redis_svc not in dep:
            fail(f"compose.yaml: {proxy_name} does not depend on {redis_svc}")
    else:
        fail(f"compose.yaml: {rel(toml_file)} is not on the Redis store")

    for name, svc in services.items():
        for src, dst in bind_mounts(svc):
            p = (base / src).resolve()
            if p.name == "prometheus.yml" and p.is_file():
                prom = yaml.safe_load(p.read_text())
                targets = [t for sc in prom.get("scrape_configs", []) for st in sc.get("static_configs", [])
                           for t in st.get("targets", [])]
                for t in targets:
                    points_at(t.rsplit(":", 1)[0], int(t.rsplit(":", 1)[1]), f"{rel(p)} scrape target")
                if f"{proxy_name}:{admin}" not in targets:
                    fail(f"{rel(p)}: does not scrape {proxy_name}:{admin}")
                for rf in prom.get("rule_files", []):
                    want = str(Path(dst).parent / rf)
                    if want not in {d for _, d in bind_mounts(svc)}:
                        fail(f"compose.yaml: {name} loads {rf} but mounts nothing at {want}")
            if p.is_dir() and p.name == "datasources":
                for f in p.glob("*.yml"):
                    for ds in yaml.safe_load(f.read_text()).get("datasources", []):
                        points_at(*url_host_port(ds["url"], 80), f"{rel(f)} {ds['name']}")
            if p.is_dir() and p.name == "dashboards":
                dirs = {d for _, d in bind_mounts(svc)}
                for f in p.glob("*.yml"):
                    for prov in yaml.safe_load(f.read_text()).get("providers", []):
                        path = prov["options"]["path"]
                        if not any(d == path or d.startswith(path.rstrip("/") + "/") for d in dirs):
                            fail(f"{rel(f)}: provider path {path} has nothing mounted in {name}")
                        else:
                            ok(f"{rel(f)}: {name} mounts the dashboard under {path}")


def dockerfile_has_healthcheck(base: Path, svc: dict) -> bool:
    b = svc.get("build")
    if not isinstance(b, dict):
        return False
    df = (base / b["context"] / b.get("dockerfile", "Dockerfile")).resolve()
    return df.is_file() and any(w == "HEALTHCHECK" for w, _ in dockerfile_instructions(df))


def check_plain_dockerfile(df: Path, ctx: Path, files: set[str]) -> None:
    """Another image (the reference backend): its COPY sources exist and, copied alone, import."""
    copied = []
    for word, args in dockerfile_instructions(df):
        if word == "COPY":
            paths = [p for p in shlex.split(args) if not p.startswith("--")]
            for s in paths[:-1]:
                if not in_repo(ctx / s, files):
                    fail(f"{rel(df)}: COPY {s}: not in its context {rel(ctx)}")
                copied.append(ctx / s)
    python = os.environ.get("SSE_PROXY_PYTHON") or str(ROOT / "examples/fastapi-backend/.venv/bin/python")
    app = next((p for p in copied if p.name == "app.py"), None)
    if app is None or not Path(python).exists():
        ok(f"{rel(df)}: COPY sources exist")
        return
    with tempfile.TemporaryDirectory() as tmp:
        for p in copied:
            shutil.copy2(p, tmp)
        r = subprocess.run([python, "-c", "import app"], cwd=tmp, capture_output=True, text=True,
                           env=dict(os.environ, PYTHONDONTWRITEBYTECODE="1"))
        if r.returncode != 0:
            fail(f"{rel(df)}: the copied files do not import: {r.stderr.strip().splitlines()[-1:]}")
        else:
            ok(f"{rel(df)}: COPY sources exist and `import app` works on them alone")


# ---------------------------------------------------------------- Kubernetes

def configmap_toml(doc: dict) -> str | None:
    return (doc.get("data") or {}).get("proxy.toml")


def pod_configmaps(pod: dict) -> set[str]:
    return {v["configMap"]["name"] for v in pod.get("volumes", []) or [] if "configMap" in v}


def prestop_seconds(c: dict) -> float:
    cmd = (((c.get("lifecycle") or {}).get("preStop") or {}).get("exec") or {}).get("command") or []
    if (c.get("lifecycle") or {}).get("preStop", {}).get("sleep"):
        return float(c["lifecycle"]["preStop"]["sleep"]["seconds"])
    return float(cmd[1]) if len(cmd) == 2 and cmd[0] == "sleep" else 0.0


def labels_match(selector: dict, labels: dict) -> bool:
    return all(labels.get(k) == v for k, v in (selector or {}).items())


def fix_checksums(path: Path) -> bool:
    """Rewrites each pod template's checksum/config from the ConfigMap it mounts."""
    text = path.read_text()
    chunks = re.split(r"(?m)^---\s*$", text)
    docs = [yaml.safe_load(c) for c in chunks]
    maps = {d["metadata"]["name"]: configmap_toml(d) for d in docs if d and d.get("kind") == "ConfigMap"}
    changed = False
    for i, d in enumerate(docs):
        if not d or d.get("kind") not in ("Deployment", "StatefulSet", "DaemonSet"):
            continue
        names = [n for n in pod_configmaps(d["spec"]["template"]["spec"]) if maps.get(n)]
        if not names:
            continue
        want = sha256(maps[names[0]])
        new = re.sub(rf'(?m)^(\s*{re.escape(CHECKSUM_KEY)}:\s*)"?[0-9a-f]*"?\s*$', rf'\g<1>"{want}"', chunks[i])
        if new != chunks[i]:
            chunks[i] = new
            changed = True
    if changed:
        path.write_text("---".join(chunks))
    return changed


def check_kubernetes(binary: Path) -> None:
    step("deploy/kubernetes: manifests, configs, checksums, ports and timeouts")
    standalone_seen = False
    for path in sorted(KUBERNETES.glob("*.yaml")):
        name = rel(path)
        try:
            docs = [d for d in yaml.safe_load_all(path.read_text()) if d is not None]
        except yaml.YAMLError as e:
            fail(f"{name}: not YAML: {e}")
            continue
        for d in docs:
            if not all(d.get(k) for k in ("apiVersion", "kind")) or not (d.get("metadata") or {}).get("name"):
                fail(f"{name}: a document without apiVersion, kind or metadata.name")
        ok(f"{name}: {len(docs)} documents parse ({', '.join(d['kind'] for d in docs)})")
        maps = {d["metadata"]["name"]: configmap_toml(d) for d in docs if d["kind"] == "ConfigMap"}
        services = [d for d in docs if d["kind"] == "Service"]
        for cm, text in maps.items():
            if text is None:
                continue
            proxy_check(binary, text, f"{name} ConfigMap {cm}")
            if path.name == "standalone.yaml":
                standalone_seen = True
                if text != (DEPLOY / "proxy.toml").read_text():
                    fail(f"{name}: ConfigMap {cm}'s proxy.toml differs from deploy/proxy.toml")
        for d in docs:
            if d["kind"] != "Deployment":
                continue
            check_workload(name, d, maps, services, docs)
    if not standalone_seen:
        fail("deploy/kubernetes/standalone.yaml: no ConfigMap with proxy.toml")


def check_workload(name: str, d: dict, maps: dict, services: list, docs: list) -> None:
    dn = f"{name} {d['kind']} {d['metadata']['name']}"
    tmpl = d["spec"]["template"]
    pod = tmpl["spec"]
    labels = tmpl["metadata"].get("labels") or {}
    if not labels_match(d["spec"]["selector"]["matchLabels"], labels):
        fail(f"{dn}: selector does not match the pod template's labels")
    for c in pod["containers"]:
        if not (c.get("resources") or {}).get("requests") or not (c.get("resources") or {}).get("limits"):
            fail(f"{dn}: container {c['name']} has no resource requests and limits")
    cms = [n for n in pod_configmaps(pod) if maps.get(n)]
    if not cms:
        return
    text = maps[cms[0]]
    cfg = tomllib.loads(text)
    got = (tmpl["metadata"].get("annotations") or {}).get(CHECKSUM_KEY)
    if got != sha256(text):
        fail(f"{dn}: {CHECKSUM_KEY} is {got!r}, the ConfigMap's proxy.toml has sha256 {sha256(text)} "
             "(python3 scripts/check_deploy.py --fix-checksums)")
    else:
        ok(f"{dn}: {CHECKSUM_KEY} matches ConfigMap {cms[0]}")
    vol = next(v["name"] for v in pod["volumes"] if v.get("configMap", {}).get("name") == cms[0])
    proxies = [c for c in pod["containers"] if any(m["name"] == vol for m in c.get("volumeMounts", []))]
    if len(proxies) != 1:
        fail(f"{dn}: {len(proxies)} containers mount the proxy config, expected 1")
        return
    proxy = proxies[0]
    listen, admin = port_of(cfg["server"]["listen"]), port_of(cfg["server"].get("admin_listen", "127.0.0.1:9090"))
    ports = {p.get("name"): p["containerPort"] for p in proxy.get("ports", [])}
    if ports.get("http") != listen or ports.get("admin") != admin:
        fail(f"{dn}: container ports {ports} do not match listen {listen} / admin_listen {admin}")
    for probe, path in (("livenessProbe", "/healthz"), ("readinessProbe", "/readyz")):
        g = (proxy.get(probe) or {}).get("httpGet") or {}
        if g.get("path") != path or g.get("port") not in ("admin", admin):
            fail(f"{dn}: {probe} must be GET {path} on the admin port")
    grace = seconds(cfg["server"].get("shutdown_grace", "30s"))
    tgps = pod.get("terminationGracePeriodSeconds", 30)
    pre = prestop_seconds(proxy)
    if tgps <= pre + grace:
        fail(f"{dn}: terminationGracePeriodSeconds {tgps} <= preStop {pre:g}s + shutdown_grace {grace:g}s")
    else:
        ok(f"{dn}: terminationGracePeriodSeconds {tgps} > preStop {pre:g}s + shutdown_grace {grace:g}s; "
           f"ports and probes on {listen}/{admin}")
    host, uport = url_host_port(cfg["upstream"]["url"], 80)
    others = [c for c in pod["containers"] if c is not proxy]
    if host in ("127.0.0.1", "localhost", "[::1]"):
        backend = [c for c in others if uport in {p["containerPort"] for p in c.get("ports", [])}]
        if not backend:
            fail(f"{dn}: upstream {host}:{uport}, but no other container of the pod has port {uport}")
        for c in backend:
            if prestop_seconds(c) < pre + grace:
                fail(f"{dn}: the backend's preStop ({prestop_seconds(c):g}s) ends before the proxy's drain "
                     f"({pre:g}s + {grace:g}s)")
            if tgps <= prestop_seconds(c):
                fail(f"{dn}: terminationGracePeriodSeconds {tgps} <= the backend's preStop")
        if backend:
            ok(f"{dn}: sidecar: upstream {host}:{uport} is container {backend[0]['name']}, which outlives the drain")
    mine = [s for s in services if labels_match(s["spec"].get("selector"), labels)]
    for s in mine:
        for p in s["spec"]["ports"]:
            if p.get("targetPort") not in ("http", listen):
                fail(f"{name} Service {s['metadata']['name']}: port {p.get('name')} targets "
                     f"{p.get('targetPort')}, not the proxy's listen port")
    if mine:
        ok(f"{name}: Service(s) {', '.join(s['metadata']['name'] for s in mine)} expose only the proxy's port")
    for pm in (x for x in docs if x["kind"] == "PodMonitor"):
        if labels_match(pm["spec"]["selector"].get("matchLabels"), labels):
            eps = pm["spec"].get("podMetricsEndpoints", [])
            if not eps or any(e.get("port") != "admin" or e.get("path", "/metrics") != "/metrics" for e in eps):
                fail(f"{name} PodMonitor {pm['metadata']['name']}: must scrape port admin, /metrics")
            else:
                ok(f"{name} PodMonitor {pm['metadata']['name']}: scrapes admin /metrics")
    store = cfg.get("store", {})
    if d["spec"].get("replicas", 1) > 1:
        if store.get("kind") != "redis":
            fail(f"{dn}: {d['spec']['replicas']} replicas on the memory store: resumes would miss")
        rhost, rport = url_host_port(store.get("url", ""), 6379)
        svc = next((s for s in services if s["metadata"]["name"] == rhost), None)
        if svc is None or rport not in {p["port"] for p in svc["spec"]["ports"]}:
            fail(f"{dn}: [store] url {rhost}:{rport} is no Service port in {name}")
        else:
            ok(f"{dn}: {d['spec']['replicas']} replicas on Redis at Service {rhost}:{rport}")


# ---------------------------------------------------------------- metrics: dashboard, alerts

def readme_metrics() -> set[str]:
    text = (ROOT / "README.md").read_text()
    section = text.split("\n## Metrics", 1)[1].split("\n## ", 1)[0]
    names = set()
    for line in section.splitlines():
        if line.startswith("| `sse_proxy_"):
            first = line.split("|")[1]
            names |= {re.sub(r"\{.*\}", "", n) for n in re.findall(r"`([^`]+)`", first)}
    return names


def check_metrics(binary: Path, image: dict) -> None:
    step("Grafana dashboard and alert rules: metric names")
    try:
        dash = json.loads(DASHBOARD.read_text())
    except ValueError as e:
        fail(f"{rel(DASHBOARD)}: not JSON: {e}")
        return
    ids = [p["id"] for p in dash.get("panels", [])]
    if len(ids) != len(set(ids)) or not dash.get("uid") or not dash.get("title"):
        fail(f"{rel(DASHBOARD)}: needs a uid, a title and unique panel ids")
    for p in dash["panels"]:
        g = p["gridPos"]
        if g["x"] + g["w"] > 24:
            fail(f"{rel(DASHBOARD)}: panel {p['title']!r} is wider than the grid")
    for f in (DEPLOY / "grafana" / "provisioning").rglob("*.yml"):
        yaml.safe_load(f.read_text())
    exprs = [(p["title"], t) for p in dash["panels"] for t in p.get("targets", [])]
    ok(f"{rel(DASHBOARD)}: {len(dash['panels'])} panels, {len(exprs)} queries")
    alerts = yaml.safe_load((DEPLOY / "alerts.yml").read_text())
    alert_exprs = [(r["alert"], {"expr": r["expr"], "legendFormat": ""})
                   for g in alerts["groups"] for r in g["rules"]]

    proxy = RunningProxy(binary, DEPLOY / "proxy.toml")
    try:
        live = exposition(proxy.get("/metrics"))
        healthcheck(image.get("healthcheck"), proxy, 9090)
    finally:
        proxy.stop()
    documented = readme_metrics()
    used = set()
    for source, items in ((rel(DASHBOARD), exprs), ("deploy/alerts.yml", alert_exprs)):
        for title, t in items:
            names = set(re.findall(r"\bsse_proxy_[a-z0-9_]+", t["expr"]))
            labels: set[str] = {"instance", "job"}
            for n in names:
                used.add(n)
                base = re.sub(r"_(bucket|sum|count)$", "", n)
                if n not in live:
                    fail(f"{source}: {title!r} queries {n}, absent from /metrics of a proxy that has just started")
                if n not in documented and base not in documented:
                    fail(f"{source}: {title!r} queries {n}, not in README's metrics table")
                labels |= live.get(n, set())
            for lab in re.findall(r"\{\{\s*(\w+)\s*\}\}", t.get("legendFormat", "")):
                if lab not in labels:
                    fail(f"{source}: {title!r} legend uses label {lab}, which {sorted(names)} do not carry")
    ok(f"{len(used)} metric names used by the dashboard and alerts: all in README and in /metrics from the start")
    one_stream(binary)


# ---------------------------------------------------------------- systemd, nginx, promtool

def check_systemd(binary: Path) -> None:
    step("deploy/sse-proxy.service: systemd-analyze verify")
    unit = (DEPLOY / "sse-proxy.service").read_text()
    cfg = tomllib.loads((DEPLOY / "proxy.toml").read_text())
    grace = seconds(cfg["server"].get("shutdown_grace", "30s"))
    m = re.search(r"(?m)^TimeoutStopSec=(\S+)", unit)
    if not m or seconds(m.group(1)) <= grace:
        fail(f"sse-proxy.service: TimeoutStopSec must exceed shutdown_grace ({grace:g}s)")
    for key in ("NoNewPrivileges=yes", "ProtectSystem=strict", "ProtectHome=yes", "PrivateTmp=yes",
                "DynamicUser=yes", "CapabilityBoundingSet=\n", "RestrictAddressFamilies=", "MemoryMax="):
        if key not in unit:
            fail(f"sse-proxy.service: no {key.strip()}")
    if shutil.which("systemd-analyze") is None:
        print("  skip systemd-analyze: not installed")
        return
    with tempfile.TemporaryDirectory() as tmp:
        u = Path(tmp) / "sse-proxy.service"
        u.write_text(unit.replace("/usr/local/bin/sse-proxy", str(binary)))
        r = subprocess.run(["systemd-analyze", "verify", str(u)], capture_output=True, text=True)
        out = (r.stdout + r.stderr).strip()
        if r.returncode != 0 or out:
            fail(f"sse-proxy.service: systemd-analyze verify: {out}")
        else:
            ok("sse-proxy.service: systemd-analyze verify, no warnings")


def check_nginx() -> None:
    step("deploy/nginx.conf: nginx -t")
    conf = (DEPLOY / "nginx.conf").read_text()
    cfg = tomllib.loads((DEPLOY / "proxy.toml").read_text())
    heartbeat = seconds(cfg.get("heartbeat", {}).get("interval", "15s"))
    for t in re.findall(r"proxy_read_timeout\s+(\S+);", conf):
        if seconds(t) <= heartbeat:
            fail(f"nginx.conf: proxy_read_timeout {t} is not above the heartbeat ({heartbeat:g}s)")
    upstream = re.search(r"upstream\s+\w+\s*\{[^}]*server\s+(\S+);", conf)
    if not upstream or port_of(upstream.group(1)) != port_of(cfg["server"]["listen"]):
        fail("nginx.conf: the upstream server is not on [server] listen's port")
    for line in conf.splitlines():
        s = line.strip()
        if s and not s.startswith("#") and s not in ("}",) and "#" not in s:
            fail(f"nginx.conf: uncommented line: {s}")
    if "proxy_buffering off;" not in conf or not re.search(r"listen\s+443\s+ssl\s+http2;", conf):
        fail("nginx.conf: needs proxy_buffering off and TLS with HTTP/2 on 443")
    if shutil.which("nginx") is None:
        print("  skip nginx -t: nginx is not installed")
        return
    with tempfile.TemporaryDirectory() as tmp:
        t = Path(tmp)
        r = subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
                            "-subj", "/CN=chat.example", "-keyout", str(t / "key.pem"), "-out", str(t / "cert.pem")],
                           capture_output=True, text=True)
        if r.returncode != 0:
            fail(f"openssl: cannot make a self-signed certificate: {r.stderr.strip()}")
            return
        site = re.sub(r"(?m)^(\s*ssl_certificate\s+)\S+;", rf"\g<1>{t / 'cert.pem'};", conf)
        site = re.sub(r"(?m)^(\s*ssl_certificate_key\s+)\S+;", rf"\g<1>{t / 'key.pem'};", site)
        (t / "site.conf").write_text(site)
        (t / "nginx.conf").write_text(
            f"pid {t}/nginx.pid;\nerror_log {t}/error.log;\nevents {{}}\n"
            f"http {{\n  access_log off;\n  include {t}/site.conf;\n}}\n")
        r = subprocess.run(["nginx", "-t", "-q", "-p", str(t), "-e", str(t / "error.log"), "-c", str(t / "nginx.conf")],
                           capture_output=True, text=True)
        if r.returncode != 0 or r.stderr.strip():
            fail(f"nginx.conf: nginx -t: {r.stderr.strip()}")
        else:
            ok("nginx.conf: nginx -t passes (self-signed certificate)")


def check_promtool() -> None:
    step("Prometheus: promtool")
    if shutil.which("promtool") is None:
        print("  skip promtool: not installed")
        return
    with tempfile.TemporaryDirectory() as tmp:
        shutil.copy2(DEPLOY / "docker" / "prometheus.yml", tmp)
        shutil.copy2(DEPLOY / "alerts.yml", tmp)
        shutil.copy2(DEPLOY / "alerts_test.yml", tmp)
        for cmd in (["promtool", "check", "config", "prometheus.yml"],
                    ["promtool", "check", "rules", "alerts.yml"],
                    ["promtool", "test", "rules", "alerts_test.yml"]):
            r = subprocess.run(cmd, cwd=tmp, capture_output=True, text=True)
            what = " ".join(cmd[1:])
            if r.returncode != 0:
                fail(f"promtool {what} (deploy/docker/prometheus.yml, deploy/alerts*.yml): {(r.stdout + r.stderr).strip()}")
            else:
                ok(f"promtool {what}")


# ---------------------------------------------------------------- main

def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--build", action="store_true", help="build the image binary instead of `cargo check`")
    ap.add_argument("--fix-checksums", action="store_true", help="rewrite the checksum/config annotations")
    ap.add_argument("--proxy-bin", help="the sse-proxy binary to run (default: cargo build --bin sse-proxy)")
    args = ap.parse_args()
    if args.fix_checksums:
        for p in sorted(KUBERNETES.glob("*.yaml")):
            print(f"{rel(p)}: {'updated' if fix_checksums(p) else 'up to date'}")
        return 0
    target_dir = Path(os.environ.get("CARGO_TARGET_DIR") or ROOT / "target")
    image = check_dockerfile(args.build, target_dir)
    binary = proxy_binary(args.proxy_bin or os.environ.get("SSE_PROXY_BIN"))
    step(f"configs: sse-proxy check ({binary})")
    proxy_check(binary, (DEPLOY / "proxy.toml").read_text(), "deploy/proxy.toml")
    check_compose(binary, image, git_files())
    check_kubernetes(binary)
    check_metrics(binary, image)
    check_systemd(binary)
    check_nginx()
    check_promtool()
    print()
    if failures:
        print(f"deploy checks: {len(failures)} failure(s)")
        for f in failures:
            print(f"  - {f}")
        return 1
    print("deploy checks: all passed")
    return 0


if __name__ == "__main__":
    sys.exit(main())
