#!/usr/bin/env python3
"""
Every row of issue 10's target table in one run, each measured side by side
with its baseline (baseline, row, baseline, row, ...), repeated, and shown
as median [min-max] of the value, the baseline and their ratio, with the
row's target and whether it is met.

    python bench/run.py [--quick] [--repeat 3] [--realvm-results FILE]
                        [--out bench/results] [--name NAME] [--groups exec,streams,...]
                        [--no-install] [--no-chart]

    tox -e bench            (the same, with matplotlib for the chart)

The rows are measured in groups, each in a process of its own (its own
reactor, its own simulators, agents, daemons and qemu-ga, all in one
process group that is killed if the group overruns its deadline):

  exec     bench/execs.py: exec p50 and execs/s against a local Twisted
           spawnProcess of the same binary and against qemu-ga;
  streams  bench/streams.py: one stream each way, qemu and bhyve mode,
           against the raw channel; the agent's and the daemon's CPU;
  forward  bench/forward.py: one forwarded TCP stream each way against the
           raw channel;
  loss     bench/streams.py: 1% chunk loss each way against lossless;
  memory   bench/streams.py: the agent's idle RSS, its RSS growth under
           1 GiB of output, its idle CPU;
  files    bench/files.py: file push and pull (sha256, temporary file,
           fsync, rename) against one exec stream each way, same VM;
  realvm   the real QEMU rows, read from the JSON file that
           `bash vmtest/run` writes to $PROKSHY_VMTEST_RESULTS
           (--realvm-results FILE; default that variable), else skipped.

It writes bench/results/NAME.json (every sample, the machine, the commit)
and NAME.png (one chart: each row's ratio against its target).  Exit
status: 0 when every row that is not skipped produced a number (targets
missed or met alike: this is a measurement, not a test), 1 otherwise, 2
on a usage error.  C{--quick} (for CI): small sizes, one repeat; it
checks only that every row produced a number.

See docs/performance.md for what each row means and the latest table.
"""

import argparse
import datetime
import json
import math
import os
import platform
import signal
import statistics
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

RESULTS = os.path.join(ROOT, "bench", "results")

#: Sizes per group: full run, and --quick.
SIZES = {
    "exec": ({"execs": 300, "rateExecs": 1000, "inFlight": 16},
             {"execs": 20, "rateExecs": 64, "inFlight": 16}),
    "streams": ({"mib": 100}, {"mib": 2}),
    "forward": ({"mib": 32, "rawMib": 32}, {"mib": 2, "rawMib": 2}),
    "loss": ({"mib": 16}, {"mib": 1}),
    "memory": ({"outputMib": 1024, "idleSeconds": 10.0}, {"outputMib": 32, "idleSeconds": 1.0}),
    "files": ({"mib": 64}, {"mib": 4}),
}

#: Seconds a group may take at most (full run, --quick), whatever happens.
DEADLINES = {"exec": (300, 120), "streams": (900, 180), "forward": (600, 180), "loss": (600, 180),
             "memory": (600, 120), "files": (600, 120)}

GROUPS = ("exec", "streams", "forward", "loss", "memory", "files", "realvm")


class Row:
    """
    One row of the table.

    @ivar value: the key of the group's per-repeat measurement shown.
    @ivar baseline: the key of its baseline (None: none).
    @ivar target: (kind, limit): C{"ratio<="}, C{"ratio>="}, C{"ratio<"}
        compare the median ratio with C{limit}; C{"value<="} the median
        value; C{"info"} has no fixed number.
    """

    def __init__(self, id, title, group, value, unit, baseline=None, baselineTitle="", target=("info", None),
                 targetText=""):
        self.id, self.title, self.group = id, title, group
        self.value, self.unit, self.baseline, self.baselineTitle = value, unit, baseline, baselineTitle
        self.target, self.targetText = target, targetText


ROWS = [
    Row("exec-api-spawn", "exec p50, API straight to the simulator, vs spawn", "exec", "api_p50_ms", "ms",
        "spawn_p50_ms", "local Twisted spawnProcess", ("ratio<=", 1.3), "<= 1.3x local spawn"),
    Row("exec-api-qga", "exec p50, API straight to the simulator, vs qemu-ga", "exec", "api_p50_ms", "ms",
        "qga_p50_ms", "qemu-ga exec + status", ("ratio<", 1.0), "below qemu-ga"),
    Row("exec-daemon", "exec p50 through the daemon (unix), vs spawn", "exec", "daemon_unix_p50_ms", "ms",
        "spawn_p50_ms", "local Twisted spawnProcess", ("ratio<=", 1.6), "<= 1.6x local spawn"),
    Row("exec-daemon-tcp", "exec p50 through the daemon's TCP listener, vs unix", "exec", "daemon_tcp_p50_ms", "ms",
        "daemon_unix_p50_ms", "the daemon's unix listener", ("ratio<=", 1.1), "within 10% of unix"),
    Row("rate-qga", "execs/s, 16 in flight, guest defaults, vs qemu-ga", "exec", "api_rate", "/s",
        "qga_rate", "qemu-ga, 16 in flight", ("ratio>=", 1.3), ">= 1.3x qemu-ga"),
    Row("rate-spawn", "execs/s, 16 in flight, guest defaults, vs spawn", "exec", "api_rate", "/s",
        "spawn_rate", "local spawn ceiling, 16 in flight", ("ratio>=", 0.8), ">= 80% of local spawn"),
    Row("stream-qemu-g2h", "one stream guest->host, qemu mode", "streams", "qemu_g2h_MBps", "MB/s",
        "qemu_g2h_raw_MBps", "raw channel, same path", ("ratio>=", 0.6), ">= 60% of raw"),
    Row("stream-qemu-h2g", "one stream host->guest, qemu mode", "streams", "qemu_h2g_MBps", "MB/s",
        "qemu_h2g_raw_MBps", "raw channel, same path", ("ratio>=", 0.6), ">= 60% of raw"),
    Row("stream-bhyve-g2h", "one stream guest->host, bhyve mode", "streams", "bhyve_g2h_MBps", "MB/s",
        "bhyve_g2h_raw_MBps", "raw channel, same path", ("ratio>=", 0.6), ">= 60% of raw"),
    Row("stream-bhyve-h2g", "one stream host->guest, bhyve mode", "streams", "bhyve_h2g_MBps", "MB/s",
        "bhyve_h2g_raw_MBps", "raw channel, the agent's 20 KiB tty window", ("info", None),
        "as close as the 23 KB tty queue allows"),
    Row("fwd-h2g", "one forwarded TCP stream host->guest", "forward", "fwd_h2g_MBps", "MB/s",
        "fwd_h2g_raw_MBps", "raw channel (bhyve mode)", ("ratio>=", 0.5), ">= 50% of raw"),
    Row("fwd-g2h", "one forwarded TCP stream guest->host", "forward", "fwd_g2h_MBps", "MB/s",
        "fwd_g2h_raw_MBps", "raw channel (bhyve mode)", ("ratio>=", 0.5), ">= 50% of raw"),
    Row("loss-g2h", "1% chunk loss, guest->host", "loss", "loss_g2h_MBps", "MB/s",
        "lossless_g2h_MBps", "the same without loss", ("ratio>=", 0.3), ">= 30% of lossless"),
    Row("loss-h2g", "1% chunk loss, host->guest", "loss", "loss_h2g_MBps", "MB/s",
        "lossless_h2g_MBps", "the same without loss", ("ratio>=", 0.3), ">= 30% of lossless"),
    Row("agent-cpu-g2h", "guest agent CPU per 100 MB, guest->host", "streams", "qemu_g2h_agent_cpu", "s",
        "qemu_g2h_raw_guest_cpu", "a plain write loop, raw channel", ("value<=", 0.25), "<= 0.25 s"),
    Row("agent-cpu-h2g", "guest agent CPU per 100 MB, host->guest", "streams", "qemu_h2g_agent_cpu", "s",
        "qemu_h2g_raw_guest_cpu", "a plain read loop, raw channel", ("value<=", 0.25), "<= 0.25 s"),
    Row("daemon-cpu-g2h", "daemon CPU per 100 MB relayed, guest->host", "streams", "relay_g2h_daemon_cpu", "s",
        "qemu_g2h_raw_host_cpu", "a plain socket loop, raw channel", ("value<=", 0.25), "<= 0.25 s"),
    Row("daemon-cpu-h2g", "daemon CPU per 100 MB relayed, host->guest", "streams", "relay_h2g_daemon_cpu", "s",
        "qemu_h2g_raw_host_cpu", "a plain socket loop, raw channel", ("value<=", 0.25), "<= 0.25 s"),
    Row("files-push", "file push (--push) vs one exec stream host->guest, qemu mode", "files", "push_MBps",
        "MB/s", "exec_h2g_MBps", "one exec stream into sink, same run", ("ratio>=", 0.8), "within 20% (>= 0.8x)"),
    Row("files-pull", "file pull (--pull) vs one exec stream guest->host, qemu mode", "files", "pull_MBps",
        "MB/s", "exec_g2h_MBps", "one exec stream out of zeros, same run", ("ratio>=", 0.8),
        "within 20% (>= 0.8x)"),
    # The real QEMU rows are added from the file (see realvmRows); these
    # two stand for them when there is none.
    Row("realvm-g2h", "real QEMU virtio-serial, one stream guest->host", "realvm", "prokshy", "MB/s",
        "baseline", "raw channel, same boot", ("ratio>=", 0.25), ">= 25% of raw"),
    Row("realvm-h2g", "real QEMU virtio-serial, one stream host->guest", "realvm", "prokshy", "MB/s",
        "baseline", "raw channel, same boot", ("ratio>=", 0.25), ">= 25% of raw"),
    Row("idle-rss", "guest agent idle RSS", "memory", "idle_rss_mib", "MiB", target=("value<=", 40.0),
        targetText="<= 40 MiB"),
    Row("rss-growth", "guest agent RSS growth under 1 GiB of output", "memory", "rss_growth_mib", "MiB",
        target=("value<=", 16.0), targetText="<= 16 MiB"),
    Row("idle-cpu", "guest agent idle CPU, host connected", "memory", "idle_cpu_pct", "%",
        target=("value<=", 0.5), targetText="<= 0.5%"),
    Row("idle-cpu-alone", "guest agent idle CPU, no host", "memory", "idle_alone_cpu_pct", "%",
        target=("value<=", 0.5), targetText="<= 0.5%"),
]


# The groups' workers (each in a process of its own).

def _say(message):
    print(message, file=sys.stderr, flush=True)


def worker(name, params):
    from bench import _rig

    if name == "exec":
        from bench import execs

        return _rig.runReactor(lambda r: execs.measure(r, log=_say, **params))
    from bench import streams

    if name == "streams":
        return _rig.runReactor(lambda r: streams.measure(r, log=_say, **params))
    if name == "loss":
        return _rig.runReactor(lambda r: streams.measureLoss(r, log=_say, **params))
    if name == "memory":
        return _rig.runReactor(lambda r: streams.measureMemory(r, log=_say, **params))
    if name == "forward":
        return forwardWorker(**params)
    if name == "files":
        from bench import files

        return _rig.runReactor(lambda r: files.measure(r, log=_say, **params))
    raise ValueError("no group %r" % (name,))


def forwardWorker(mib, rawMib, repeat):
    from bench import forward

    args, only = forward.parseArgs(["--mib", str(mib), "--raw-mib", str(rawMib), "--repeat", str(repeat),
                                    "--only", "fwd-h2g,fwd-g2h", "--timeout", "300"])
    m = forward.measureAll(args, only)
    import shutil

    shutil.rmtree(m["work"], ignore_errors=True)
    repeats = []
    failures = {}
    for name, runs in m["results"].items():
        key = name.replace("-", "_")
        for i, v in enumerate(runs):
            while len(repeats) <= i:
                repeats.append({})
            if isinstance(v, dict):
                repeats[i][key + "_MBps"] = v["MBps"]
                repeats[i][key + "_raw_MBps"] = v["raw"]["MBps"]
                repeats[i][key + "_cpu_ms_per_MB"] = v["cpuMsPerMB"]
            else:
                failures[key] = v
    return {"repeats": repeats, "skipped": {}, "failed": failures,
            "info": {"mib": mib, "rawMib": rawMib, "mode": "bhyve"}}


def runGroup(name, params, deadline):
    """
    Run group C{name} in a child process (a session of its own, so that
    everything it starts can be killed together).

    @return: its result dict, or {"error": why}.
    """
    fd, out = tempfile.mkstemp(prefix="bench-%s-" % (name,), suffix=".json")
    os.close(fd)
    cmd = [sys.executable, os.path.abspath(__file__), "--worker", name, "--params", json.dumps(params),
           "--worker-out", out]
    t0 = time.monotonic()
    proc = subprocess.Popen(cmd, cwd=ROOT, start_new_session=True, stdin=subprocess.DEVNULL,
                            env=dict(os.environ, PYTHONPATH=os.pathsep.join(
                                [ROOT] + [p for p in [os.environ.get("PYTHONPATH")] if p])))
    try:
        try:
            rc = proc.wait(deadline)
        except subprocess.TimeoutExpired:
            _killGroup(proc)
            return {"error": "the %s group overran its %d s deadline and was killed" % (name, deadline)}
        except KeyboardInterrupt:
            _killGroup(proc)
            raise
        # Whatever the worker left running in its group goes too.
        _killGroup(proc, grace=2.0)
        try:
            with open(out) as f:
                result = json.load(f)
        except (OSError, ValueError):
            result = {"error": "the %s group exited %s without a result" % (name, rc)}
        result.setdefault("info", {})["seconds"] = time.monotonic() - t0
        return result
    finally:
        os.unlink(out)


def _killGroup(proc, grace=5.0):
    for sig, wait in ((signal.SIGTERM, grace), (signal.SIGKILL, 5.0)):
        try:
            os.killpg(proc.pid, sig)
        except (ProcessLookupError, PermissionError):
            break
        deadline = time.monotonic() + wait
        while time.monotonic() < deadline:
            try:
                os.killpg(proc.pid, 0)
            except (ProcessLookupError, PermissionError):
                break
            time.sleep(0.05)
            proc.poll()
        else:
            continue
        break
    if proc.poll() is None:
        proc.wait()


# The real VM's rows.

def realvmRows(path):
    """
    The real QEMU rows from C{path} (a JSON list of {"row", "prokshy",
    "baseline", "unit", "ratio"}, several entries of one row being its
    repeats).

    @return: (a list of L{Row}, the group's result dict).
    """
    if not path:
        why = ("no --realvm-results file (run `PROKSHY_VMTEST_RESULTS=FILE bash vmtest/run`, "
               "then pass --realvm-results FILE)")
        return [], {"skipped": {"*": why}, "repeats": []}
    try:
        with open(path) as f:
            entries = json.load(f)
        if isinstance(entries, dict):
            entries = entries.get("rows", [])
        if not isinstance(entries, list):
            raise ValueError("not a JSON list")
    except (OSError, ValueError) as e:
        return [], {"skipped": {"*": "cannot read --realvm-results %s: %s" % (path, e)}, "repeats": []}
    rows, repeats, seen = [], [], {}
    for e in entries:
        if not isinstance(e, dict) or "row" not in e:
            continue
        name = str(e["row"])
        key = "realvm:" + name
        i = seen.get(key, 0)
        seen[key] = i + 1
        while len(repeats) <= i:
            repeats.append({})
        for field in ("prokshy", "baseline", "ratio"):
            value = e.get(field)
            if isinstance(value, (int, float)) and not isinstance(value, bool):
                repeats[i]["%s:%s" % (key, field)] = float(value)
        if i == 0:
            target = e.get("target")
            limit = 0.25
            if isinstance(target, (int, float)) and not isinstance(target, bool):
                limit = float(target)
            rows.append(Row(key, "real QEMU virtio-serial: " + name, "realvm", key + ":prokshy",
                            str(e.get("unit", "")), key + ":baseline",
                            str(e.get("baseline_name", "raw channel, same boot")),
                            ("ratio>=", limit), ">= %d%% of raw" % round(100 * limit)))
    if not rows:
        return [], {"skipped": {"*": "--realvm-results %s has no rows" % (path,)}, "repeats": []}
    return rows, {"repeats": repeats, "skipped": {}, "info": {"file": os.path.abspath(path)}}


# Summaries.

def summary(values):
    values = [v for v in values if isinstance(v, (int, float)) and math.isfinite(v)]
    if not values:
        return None
    return {"median": statistics.median(values), "min": min(values), "max": max(values), "n": len(values)}


def evaluate(row, group):
    """
    The row's summary from its group's result.
    """
    out = {"id": row.id, "title": row.title, "unit": row.unit, "baseline_title": row.baselineTitle,
           "target": {"kind": row.target[0], "limit": row.target[1], "text": row.targetText}}
    if group is None or "error" in group:
        out["status"] = "failed"
        out["why"] = (group or {}).get("error", "the group did not run")
        return out
    skipped = group.get("skipped", {})
    why = skipped.get("*") or next((w for k, w in skipped.items() if k in (row.value, row.baseline or "")
                                    or (row.baseline or "").startswith(k + "_")), None)
    if why:
        out["status"] = "skipped"
        out["why"] = why
        return out
    failed = group.get("failed", {})
    key = row.value.rsplit("_", 1)[0]
    if key in failed:
        out["status"] = "failed"
        out["why"] = failed[key]
        return out
    repeats = group.get("repeats", [])
    values = [r.get(row.value) for r in repeats]
    out["values"] = values
    out["value"] = summary(values)
    if row.baseline:
        baselines = [r.get(row.baseline) for r in repeats]
        ratios = []
        for v, b in zip(values, baselines):
            ok = all(isinstance(x, (int, float)) and math.isfinite(x) for x in (v, b))
            ratios.append(v / b if ok and b else None)
        ratioKey = row.value.rsplit(":", 1)[0] + ":ratio" if row.group == "realvm" else None
        if ratioKey and any(r.get(ratioKey) is not None for r in repeats):
            # The file's own ratio (its two figures may be in different units).
            ratios = [r.get(ratioKey) for r in repeats]
        out["baselines"], out["ratios"] = baselines, ratios
        out["baseline"], out["ratio"] = summary(baselines), summary(ratios)
    if out["value"] is None and not (row.baseline and out.get("ratio")):
        out["status"] = "failed"
        out["why"] = "no number produced"
        return out
    kind, limit = row.target
    if kind == "info":
        out["status"] = "info"
    else:
        measured = out["value"]["median"] if kind.startswith("value") else (out.get("ratio") or {}).get("median")
        if measured is None:
            out["status"] = "failed"
            out["why"] = "no ratio produced"
            return out
        met = {"<=": measured <= limit, ">=": measured >= limit, "<": measured < limit}[kind[5:]]
        out["status"] = "met" if met else "missed"
        out["score"] = measured / limit if kind.startswith("value") else measured
    return out


def fmt(x):
    if x is None:
        return "-"
    a = abs(x)
    if a >= 100:
        return "%.0f" % x
    if a >= 10:
        return "%.1f" % x
    if a >= 1:
        return "%.2f" % x
    if a == 0:
        return "0"
    return "%.2g" % x


def spread(s, unit=""):
    if not s:
        return "-"
    text = fmt(s["median"])
    if s["n"] > 1:
        text += " [%s–%s]" % (fmt(s["min"]), fmt(s["max"]))
    return text + (" " + unit if unit else "")


def table(results):
    lines = []
    head = ("row", "value", "baseline", "ratio", "target", "")
    cells = []
    for r in results:
        if r["status"] in ("skipped", "failed"):
            cells.append((r["title"], "%s: %s" % (r["status"], r["why"]), "", "", r["target"]["text"], ""))
            continue
        base = spread(r.get("baseline"), r["unit"]) if r.get("baseline") else "-"
        if r.get("baseline"):
            base += " (%s)" % (r["baseline_title"],)
        ratio = spread(r.get("ratio")) + "x" if r.get("ratio") else "-"
        cells.append((r["title"], spread(r["value"], r["unit"]), base, ratio, r["target"]["text"],
                      {"met": "met", "missed": "MISSED", "info": "(no fixed target)"}[r["status"]]))
    measured = [c for c in cells if c[2] != "" or not c[1].startswith(("skipped", "failed"))]
    widths = [max(len(c[i]) for c in measured + [head]) for i in range(3)]
    widths[0] = min(widths[0], 50)
    for c in [head] + cells:
        if c[2] == "" and c[1].startswith(("skipped", "failed")):
            lines.append("%-*s  %s  [target %s]" % (widths[0], c[0], c[1], c[4]))
        else:
            lines.append("%-*s  %-*s  %-*s  %-24s %-40s %s" % (widths[0], c[0], widths[1], c[1], widths[2],
                                                               c[2], c[3], c[4], c[5]))
    return "\n".join(lines)


def markdownTable(results):
    out = ["| row | prokshy | baseline, same run | ratio | target | |", "|---|---|---|---|---|---|"]
    for r in results:
        if r["status"] in ("skipped", "failed"):
            out.append("| %s | %s: %s | | | %s | |" % (r["title"], r["status"], r["why"], r["target"]["text"]))
            continue
        base = ("%s: %s" % (r["baseline_title"], spread(r.get("baseline"), r["unit"]))
                if r.get("baseline") else "—")
        ratio = spread(r.get("ratio")) + "×" if r.get("ratio") else "—"
        out.append("| %s | %s | %s | %s | %s | %s |" % (
            r["title"], spread(r["value"], r["unit"]), base, ratio, r["target"]["text"],
            {"met": "met", "missed": "**missed**", "info": "no fixed target"}[r["status"]]))
    return "\n".join(out)


# The machine.

def machine():
    info = {"cpus": os.cpu_count(), "python": platform.python_version(), "kernel": platform.release(),
            "platform": platform.platform()}
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    info["cpu_model"] = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    try:
        import twisted

        info["twisted"] = twisted.__version__
    except ImportError:
        pass
    try:
        info["loadavg_start"] = os.getloadavg()
    except OSError:
        pass
    return info


def gitCommit():
    def git(*args):
        try:
            return subprocess.run(["git", "-C", ROOT] + list(args), capture_output=True, text=True,
                                  timeout=10).stdout.strip()
        except (OSError, subprocess.SubprocessError):
            return ""

    commit = git("rev-parse", "HEAD") or None
    dirty = bool(git("status", "--porcelain", "--untracked-files=no", "--", "prokshy"))
    return {"commit": commit, "subject": git("log", "-1", "--format=%s") or None, "prokshy_modified": dirty}


# The chart.

#: The chart's smallest ratio: smaller ones (an idle CPU of 0 %) are drawn there.
FLOOR = 0.01


def chart(results, path, title):
    """
    One PNG: a horizontal bar per row, its ratio (for a target on the value
    itself, the value over the target's limit) with its min-max, a mark at
    its target, green when met, red when missed, grey when skipped or
    without a fixed target.

    @return: None, or why no chart was drawn.
    """
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except Exception as e:  # ImportError, or a broken install
        return "matplotlib is not available (%s: %s); install it (tox -e bench does) for the chart" % (
            type(e).__name__, e)
    rows = list(reversed(results))
    fig, ax = plt.subplots(figsize=(11, 0.42 * len(rows) + 1.6))
    labels, colours = [], {"met": "#2e8b57", "missed": "#c0392b", "info": "#7f8c8d"}
    lo, hi = 0.05, 5.0
    for y, r in enumerate(rows):
        kind, limit = r["target"]["kind"], r["target"]["limit"]
        labels.append(r["title"])
        if r["status"] in ("skipped", "failed"):
            ax.text(lo * 1.1, y, "%s: %s" % (r["status"], r["why"][:70]), va="center", fontsize=7, color="#555")
            continue
        if kind.startswith("value"):
            s, scale, mark = r["value"], limit, 1.0
        else:
            s, scale, mark = r.get("ratio"), 1.0, limit
        if not s:
            continue
        mid, a, b = s["median"] / scale, s["min"] / scale, s["max"] / scale
        mid, a, b = (max(v, FLOOR) for v in (mid, a, b))
        lo, hi = max(FLOOR, min(lo, a / 1.5)), max(hi, b * 1.5)
        ax.barh(y, mid, color=colours.get(r["status"], "#7f8c8d"), height=0.6,
                xerr=[[mid - a], [b - mid]], capsize=2, ecolor="#333")
        if mark:
            ax.plot([mark, mark], [y - 0.4, y + 0.4], color="black", linewidth=2)
        text = "%s%s" % (fmt(s["median"]), "x" if not kind.startswith("value") else " " + r["unit"])
        ax.text(b * 1.08, y, "%s  (target %s)" % (text, r["target"]["text"]), va="center", fontsize=7)
    ax.set_xscale("log")
    ax.set_xlim(lo / 2, hi * 6)
    ax.set_yticks(range(len(rows)))
    ax.set_yticklabels(labels, fontsize=8)
    ax.axvline(1.0, color="#bbb", linewidth=0.8, zorder=0)
    ax.set_xlabel("ratio to the baseline measured in the same run (rows with a target on the value itself: "
                  "value / target; | = target)", fontsize=8)
    ax.set_title(title, fontsize=9)
    from matplotlib.patches import Patch

    ax.legend(handles=[Patch(color=colours["met"], label="met"), Patch(color=colours["missed"], label="missed"),
                       Patch(color=colours["info"], label="no fixed target")], loc="lower right", fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return None


# The run.

def chartTitle(report):
    info, git = report["machine"], report["git"]
    return "prokshy bench %s, commit %s, %d CPUs (%s), %s" % (
        report["timestamp"], (git["commit"] or "?")[:10], info["cpus"], info.get("cpu_model", "?"),
        "--quick" if report["quick"] else "%d repeats" % (report["repeat"],))


def replot(path, markdown=False):
    """
    Print the table of the run saved in C{path} and draw its chart beside
    it (same name, .png).
    """
    with open(path) as f:
        report = json.load(f)
    print(table(report["rows"]))
    if markdown:
        print("\n" + markdownTable(report["rows"]))
    png = os.path.splitext(path)[0] + ".png"
    why = chart(report["rows"], png, chartTitle(report))
    print("chart: %s" % (png if why is None else "skipped: " + why))
    return 0


def parseArgs(argv):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true",
                        help="small sizes and one repeat (CI: checks only that every row produced a number)")
    parser.add_argument("--repeat", type=int, default=None, help="repeats per row (default 3; --quick 1)")
    parser.add_argument("--realvm-results", metavar="FILE", default=os.environ.get("PROKSHY_VMTEST_RESULTS"),
                        help="the real QEMU rows, as bash vmtest/run writes them (default $PROKSHY_VMTEST_RESULTS)")
    parser.add_argument("--out", default=RESULTS, help="directory for the JSON and the PNG (default %(default)s)")
    parser.add_argument("--name", help="base name of the files (default run-DATE-COMMIT[-quick])")
    parser.add_argument("--groups", default=",".join(GROUPS),
                        help="groups to run, comma-separated (default all: %(default)s)")
    parser.add_argument("--no-install", action="store_true", help="do not apt-get install qemu-guest-agent")
    parser.add_argument("--no-chart", action="store_true", help="no PNG")
    parser.add_argument("--replot", metavar="JSON",
                        help="measure nothing: print the table of a saved run and draw its chart (beside it)")
    parser.add_argument("--markdown", action="store_true", help="print the table as Markdown too")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    parser.add_argument("--params", help=argparse.SUPPRESS)
    parser.add_argument("--worker-out", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.repeat is None:
        args.repeat = 1 if args.quick else 3
    if not 1 <= args.repeat <= 50:
        parser.error("--repeat must be 1..50")
    groups = [g for g in args.groups.split(",") if g]
    bad = [g for g in groups if g not in GROUPS]
    if bad or not groups:
        parser.error("unknown groups %s (have %s)" % (", ".join(bad) or "(none)", ", ".join(GROUPS)))
    args.groups = groups
    return args


def main(argv=None):
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.reconfigure(errors="backslashreplace")
        except AttributeError:
            pass
    args = parseArgs(argv)
    if args.worker:
        result = worker(args.worker, json.loads(args.params))
        with open(args.worker_out, "w") as f:
            json.dump(result, f)
        return 0

    if args.replot:
        return replot(args.replot, args.markdown)
    started = time.monotonic()
    stamp = datetime.datetime.now(datetime.timezone.utc)
    git, info = gitCommit(), machine()
    _say("bench/run.py%s: %d repeat(s), groups %s; commit %s%s" % (
        " --quick" if args.quick else "", args.repeat, ",".join(args.groups), (git["commit"] or "?")[:10],
        " (prokshy/ modified)" if git["prokshy_modified"] else ""))
    groups, rows = {}, [r for r in ROWS if r.group != "realvm"]
    for name in args.groups:
        if name == "realvm":
            continue
        params = dict(SIZES[name][1 if args.quick else 0], repeat=args.repeat)
        if name == "exec":
            params["install"] = not args.no_install
        _say("== %s %s" % (name, json.dumps(params)))
        groups[name] = runGroup(name, params, DEADLINES[name][1 if args.quick else 0])
        _say("   %s: %.0f s%s" % (name, groups[name].get("info", {}).get("seconds", 0),
                                  ("; " + groups[name]["error"]) if "error" in groups[name] else ""))
    placeholders = [r for r in ROWS if r.group == "realvm"]
    if "realvm" in args.groups:
        vmRows, groups["realvm"] = realvmRows(args.realvm_results)
        rows += vmRows or placeholders
    # Keep the order: the real VM's rows before the memory rows.
    order = [r.id for r in ROWS]
    rows.sort(key=lambda r: order.index(r.id) if r.id in order else order.index("realvm-h2g") + 0.5)
    results = []
    for row in rows:
        if row.group not in args.groups:
            continue
        results.append(evaluate(row, groups.get(row.group)))

    info["loadavg_end"] = os.getloadavg()
    name = args.name or "run-%s-%s%s" % (stamp.strftime("%Y%m%d-%H%M%S"), (git["commit"] or "nogit")[:10],
                                          "-quick" if args.quick else "")
    os.makedirs(args.out, exist_ok=True)
    jsonPath = os.path.join(args.out, name + ".json")
    pngPath = os.path.join(args.out, name + ".png")
    report = {
        "timestamp": stamp.isoformat(timespec="seconds"), "git": git, "machine": info,
        "command": "python bench/run.py" + (" " + " ".join(argv if argv is not None else sys.argv[1:])).rstrip(),
        "quick": args.quick, "repeat": args.repeat, "seconds": time.monotonic() - started,
        "rows": results, "groups": groups,
    }
    chartNote = "not drawn (--no-chart)" if args.no_chart else chart(results, pngPath, chartTitle(report))
    report["chart"] = None if chartNote else os.path.relpath(pngPath, ROOT)
    if chartNote:
        report["chart_skipped"] = chartNote
    with open(jsonPath, "w") as f:
        json.dump(report, f, indent=1, sort_keys=True)

    print()
    print(table(results))
    print()
    met = sum(r["status"] == "met" for r in results)
    missed = sum(r["status"] == "missed" for r in results)
    skipped = [r for r in results if r["status"] == "skipped"]
    failed = [r for r in results if r["status"] == "failed"]
    print("%d rows: %d met, %d missed, %d without a fixed target, %d skipped, %d failed; %.0f s; "
          "%d CPUs (%s), load %.1f -> %.1f" % (
              len(results), met, missed, sum(r["status"] == "info" for r in results), len(skipped),
              len(failed), report["seconds"], info["cpus"], info.get("cpu_model", "?"),
              info["loadavg_start"][0], info["loadavg_end"][0]))
    print("values and baselines: median [min–max] of %d repeat(s), each baseline measured interleaved with "
          "its row; ratio: value / baseline per repeat" % (args.repeat,))
    if args.markdown:
        print(markdownTable(results) + "\n")
    print("results: %s" % (os.path.relpath(jsonPath),))
    print("chart: %s" % (os.path.relpath(pngPath) if not chartNote else "skipped: " + chartNote))
    if failed:
        print("FAILED rows (no number): %s" % (", ".join(r["id"] for r in failed),))
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
