"""Issue 14, item 1: the flood probes against a real `vectorsvc serve` on a loopback port.

1. 200 wrong-password sign-ins for one account, 16 at a time: status counts, how many
   password checks ran (every 401 is one argon2 verify), the burst's wall time, and how
   long /health and an API-key request took meanwhile (sampled one after another).
2. 300 requests with made-up API keys, 16 at a time: status counts.
3. (--spread) the same sign-in flood, but each attempt for another email and from another
   address (through a trusted proxy): no per-address or per-account limit applies, so
   what is left is the bound on password hashing.
4. (--rotate N) N made-up keys from N different addresses through a trusted proxy
   (VECTORSVC_TRUSTED_PROXIES=127.0.0.1, VECTORSVC_AUTH_LIMITER_MAX_KEYS=5000): the
   server's resident memory before and after.

    PYTHONPATH=$PWD .venv/bin/python scripts/probe_floods.py [--spread] [--rotate 20000]

Run it against older code with that code first on PYTHONPATH (the service subprocess
inherits it). Prints a table and writes scripts/results/probe_floods.json.
"""

from __future__ import annotations

import argparse
import subprocess
import threading
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
from _common import VENV_BIN, cli_env, median, prepare, print_table, serve, write_results

EMAIL = "probe@example.com"
PASSWORD = "Correct-Horse-Battery-9271"


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def outcome(r: httpx.Response) -> str:
    code = r.json().get("error", {}).get("code", "") if r.status_code >= 400 else ""
    retry = " +Retry-After" if "retry-after" in r.headers else ""
    return f"{r.status_code} {code}{retry}".strip()


_local = threading.local()


def client_of(url: str) -> httpx.Client:
    """One client per thread (a new client per request costs more than the request)."""
    if getattr(_local, "client", None) is None:
        _local.client = httpx.Client(base_url=url, timeout=120)
    client: httpx.Client = _local.client
    return client


def sign_in_flood(
    url: str, key: str, total: int, concurrency: int, *, spread: bool = False
) -> dict[str, Any]:
    done = threading.Event()
    health_ms: list[float] = []
    api_ms: list[float] = []

    def sample() -> None:
        with httpx.Client(base_url=url, timeout=120) as client:
            while not done.is_set():
                started = time.perf_counter()
                assert client.get("/health").status_code == 200
                health_ms.append((time.perf_counter() - started) * 1000)
                started = time.perf_counter()
                r = client.get("/api/billing/wallet", headers={"X-API-Key": key})
                assert r.status_code == 200, r.text
                api_ms.append((time.perf_counter() - started) * 1000)
                time.sleep(0.05)

    def one(i: int) -> str:
        if spread:
            body = {"email": f"user{i}@example.com", "password": "not the password"}
            headers = {"X-Forwarded-For": f"10.{i >> 16 & 255}.{i >> 8 & 255}.{i & 255}"}
        else:
            body, headers = {"email": EMAIL, "password": "not the password"}, {}
        return outcome(client_of(url).post("/api/auth/sign-in", json=body, headers=headers))

    sampler = threading.Thread(target=sample)
    sampler.start()
    started = time.perf_counter()
    with ThreadPoolExecutor(concurrency) as pool:
        outcomes = Counter(pool.map(one, range(total)))
    wall_s = time.perf_counter() - started
    done.set()
    sampler.join()
    return {
        "outcomes": dict(outcomes),
        "password_checks": sum(n for o, n in outcomes.items() if o.startswith("401")),
        "wall_s": round(wall_s, 2),
        "health_ms_median": round(median(health_ms), 1),
        "health_ms_max": round(max(health_ms), 1),
        "api_key_ms_median": round(median(api_ms), 1),
        "api_key_ms_max": round(max(api_ms), 1),
        "samples": len(health_ms),
    }


def made_up_keys(url: str, total: int, concurrency: int) -> dict[str, Any]:
    def one(i: int) -> str:
        headers = {"X-API-Key": f"vsk_{i:016x}_madeup"}
        return outcome(client_of(url).get("/api/billing/wallet", headers=headers))

    with ThreadPoolExecutor(concurrency) as pool:
        return {"outcomes": dict(Counter(pool.map(one, range(total))))}


def rotating_addresses(url: str, pid: int, total: int) -> dict[str, Any]:
    before = rss_mb(pid)
    outcomes: Counter[str] = Counter()
    with httpx.Client(base_url=url, timeout=120) as client:
        for i in range(total):
            headers = {
                "X-API-Key": "vsk_nope",
                "X-Forwarded-For": f"10.{i >> 16 & 255}.{i >> 8 & 255}.{i & 255}",
            }
            outcomes[outcome(client.get("/api/billing/wallet", headers=headers))] += 1
    return {"outcomes": dict(outcomes), "rss_mb_before": before, "rss_mb_after": rss_mb(pid)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--data-dir", type=Path, default=Path("/tmp/probe-floods"))
    parser.add_argument("--sign-ins", type=int, default=200)
    parser.add_argument("--keys", type=int, default=300)
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--spread", action="store_true")
    parser.add_argument("--rotate", type=int, default=0)
    parser.add_argument("--out", type=Path, default=Path("scripts/results/probe_floods.json"))
    args = parser.parse_args()
    subprocess.run(["rm", "-rf", str(args.data_dir)], check=True)
    bench = prepare(args.data_dir / "data", workspace="probe")
    subprocess.run(
        [str(VENV_BIN / "vectorsvc"), "users", "create", "--email", EMAIL, "--workspace"]
        + ["probe", "--password-stdin"],
        env=cli_env(bench.data_dir),
        input=PASSWORD,
        text=True,
        check=True,
        capture_output=True,
    )
    results: dict[str, Any] = {}
    with serve(bench, log_path=args.data_dir / "service.log") as running:
        results["sign_in_flood"] = sign_in_flood(
            running.url, running.key, args.sign_ins, args.concurrency
        )
        results["made_up_keys"] = made_up_keys(running.url, args.keys, args.concurrency)
    env = {"VECTORSVC_TRUSTED_PROXIES": "127.0.0.1", "VECTORSVC_AUTH_LIMITER_MAX_KEYS": "5000"}
    if args.spread or args.rotate:
        with serve(bench, env, log_path=args.data_dir / "service.log") as running:
            if args.spread:
                results["spread_sign_in_flood"] = sign_in_flood(
                    running.url, running.key, args.sign_ins, args.concurrency, spread=True
                )
            if args.rotate:
                results["rotating_addresses"] = rotating_addresses(
                    running.url, running.process.pid, args.rotate
                )
    rows = [
        (f"{probe}: {name}", str(value))
        for probe, r in results.items()
        for name, value in r.items()
    ]
    print_table("flood probes", rows)
    write_results(args.out, results)


if __name__ == "__main__":
    main()
