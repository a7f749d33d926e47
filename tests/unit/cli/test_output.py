"""kdeploy.cli.output: what an operator sees while kdeploy runs."""


def test_live_table_shows_what_each_host_is_doing():
    """The live table of `kdeploy up`: per host and phase a count, and a `now` column with the
    host's current action (upload, gate), cleared when its phases are done."""
    from rich.console import Console

    from kdeploy.cli.output import LiveProgress

    lp = LiveProgress(["w1", "w2"])
    for e in ({"event": "phase-start", "phase": "runtime", "hosts": ["w1", "w2"]},
              {"event": "change", "host": "w1", "phase": "runtime", "kind": "binary",
               "target": "/usr/local/bin/containerd", "action": "create"},
              {"event": "gate", "host": "w2", "phase": "runtime", "what": "containerd answers"}):
        lp(e)

    def text():
        c = Console(record=True, width=250)
        c.print(lp._table())
        return {ln.split()[1]: ln for ln in c.export_text().splitlines() if ln.split()[1:2] in (["w1"], ["w2"])}
    rows = text()
    assert "create containerd" in rows["w1"] and "waiting: containerd answers" in rows["w2"]
    lp({"event": "phase-done", "phase": "runtime", "seconds": 3.0, "failed": {}})
    rows = text()
    assert "containerd" not in rows["w1"] and "waiting" not in rows["w2"] and "✓ 1" in rows["w1"]
