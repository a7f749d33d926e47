"""Where the seconds of one run went, from its record (runs/<stamp>-<verb>/: timings.json and
events.jsonl with each event's wall-clock time): the stages before the engine, each step's
start and end from the engine's start, one host's changes (--host, e.g. the added worker), and
verify's checks (side by side, each with its own seconds).

    python bench/timeline.py RUN_DIR [--host NAME]
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path


def timeline(run: Path, host: str | None = None) -> list[str]:
    tm = json.loads((run / "timings.json").read_text()) if (run / "timings.json").exists() else {}
    events = [json.loads(x) for x in (run / "events.jsonl").read_text().splitlines() if x.strip()]
    out = ["before the engine: " + ", ".join(f"{k} {v:.2f} s" for k, v in tm.items()
                                            if not k.startswith("phase ") and k not in ("verify", "total"))]
    if not events:
        return out
    t0 = events[0]["t"]
    starts: dict[str, float] = {}
    for e in events:
        at = e["t"] - t0
        kind = e.get("event")
        if kind == "phase-start":
            starts[e["phase"]] = at
        elif kind == "phase-done":
            s = starts.get(e["phase"], at - e.get("seconds", 0))
            out.append(f"{s:7.2f} -> {at:7.2f}  step {e['phase']} ({e.get('seconds', at - s):.2f} s)")
        elif host and e.get("host") == host and kind in ("change", "gate", "hook"):
            what = e.get("target") or e.get("what") or e.get("hook") or ""
            out.append(f"{at:7.2f}            {host}: {kind} {e.get('kind', '')} {what}".rstrip())
    checks = [e for e in events if e.get("event") == "check"]
    if checks:
        end = max(e["t"] for e in checks) - t0
        start = end - tm.get("verify", max(e["seconds"] for e in checks))
        out.append(f"{start:7.2f} -> {end:7.2f}  verify ({tm.get('verify', 0):.2f} s), checks side by side: "
                   + ", ".join(f"{e['name']} {e['seconds']:.1f}" for e in
                               sorted(checks, key=lambda e: -e["seconds"])))
    if "total" in tm:
        out.append(f"total {tm['total']:.2f} s")
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("run", type=Path, help="a run's directory: .kdeploy/<cluster>/runs/<stamp>-<verb>")
    ap.add_argument("--host", help="also list this host's changes, gates and hooks")
    a = ap.parse_args()
    print("\n".join(timeline(a.run, a.host)))


if __name__ == "__main__":
    main()
