"""
bench/run.py's bookkeeping, on made-up measurements (no process is run):
each row's median [min-max] of value, baseline and per-repeat ratio, met or
missed against its target, skipped with a reason, failed when it produced
no number (the --quick check), and the real VM's rows read from the file
vmtest/run writes.
"""

import json
import os

from twisted.trial.unittest import TestCase

from bench import run


def _row(id):
    return next(r for r in run.ROWS if r.id == id)


class EvaluateTests(TestCase):
    def test_ratioPerRepeat(self):
        """
        The ratio is taken per repeat (value / its interleaved baseline),
        then summarised; a ratio target is judged on the median ratio.
        """
        group = {"repeats": [{"api_p50_ms": 2.0, "spawn_p50_ms": 1.0},
                             {"api_p50_ms": 3.0, "spawn_p50_ms": 2.5},
                             {"api_p50_ms": 1.2, "spawn_p50_ms": 1.0}]}
        r = run.evaluate(_row("exec-api-spawn"), group)
        self.assertEqual(r["ratios"], [2.0, 1.2, 1.2])
        self.assertEqual(r["ratio"], {"median": 1.2, "min": 1.2, "max": 2.0, "n": 3})
        self.assertEqual(r["value"]["median"], 2.0)
        self.assertEqual(r["baseline"]["median"], 1.0)
        self.assertEqual(r["status"], "met")  # 1.2 <= 1.3
        self.assertEqual(run.spread(r["ratio"]), "1.20 [1.20–2.00]")

    def test_missedAndAtLeast(self):
        group = {"repeats": [{"api_rate": 500.0, "qga_rate": 600.0}]}
        self.assertEqual(run.evaluate(_row("rate-qga"), group)["status"], "missed")
        group = {"repeats": [{"api_rate": 900.0, "qga_rate": 600.0}]}
        self.assertEqual(run.evaluate(_row("rate-qga"), group)["status"], "met")

    def test_valueTarget(self):
        """
        A target on the value (CPU seconds, MiB, %) is judged on the median
        value, whatever its informative baseline.
        """
        group = {"repeats": [{"qemu_g2h_agent_cpu": 0.2, "qemu_g2h_raw_guest_cpu": 0.01}]}
        r = run.evaluate(_row("agent-cpu-g2h"), group)
        self.assertEqual(r["status"], "met")
        self.assertAlmostEqual(r["score"], 0.8)
        group = {"repeats": [{"idle_rss_mib": 41.0}]}
        self.assertEqual(run.evaluate(_row("idle-rss"), group)["status"], "missed")

    def test_skippedWithReason(self):
        """
        A baseline its group could not have (qemu-ga missing) skips the rows
        that need it, with the reason; the others go on.
        """
        group = {"repeats": [{"api_p50_ms": 1.2, "spawn_p50_ms": 1.0}],
                 "skipped": {"qga": "qemu-guest-agent could not be installed (x)"}}
        r = run.evaluate(_row("exec-api-qga"), group)
        self.assertEqual((r["status"], r["why"]), ("skipped", "qemu-guest-agent could not be installed (x)"))
        self.assertEqual(run.evaluate(_row("rate-qga"), group)["status"], "skipped")
        self.assertEqual(run.evaluate(_row("exec-api-spawn"), group)["status"], "met")

    def test_failedWithoutNumber(self):
        """
        A row with no number (its group crashed or measured nothing) is
        failed, which makes the run exit non-zero.
        """
        self.assertEqual(run.evaluate(_row("exec-daemon"), {"error": "boom"})["status"], "failed")
        self.assertEqual(run.evaluate(_row("exec-daemon"), None)["status"], "failed")
        r = run.evaluate(_row("exec-daemon"), {"repeats": [{"spawn_p50_ms": 1.0}]})
        self.assertEqual((r["status"], r["why"]), ("failed", "no number produced"))
        r = run.evaluate(_row("fwd-h2g"), {"repeats": [{}], "failed": {"fwd_h2g": "FAILED: timeout"}})
        self.assertEqual((r["status"], r["why"]), ("failed", "FAILED: timeout"))

    def test_everyRowHasATarget(self):
        for row in run.ROWS:
            self.assertIn(row.target[0], ("ratio<=", "ratio>=", "ratio<", "value<=", "info"), row.id)
            self.assertTrue(row.targetText, row.id)
            self.assertIn(row.group, run.GROUPS, row.id)
        self.assertEqual(len({r.id for r in run.ROWS}), len(run.ROWS))


class RealVMTests(TestCase):
    def _file(self, entries):
        path = self.mktemp()
        with open(path, "w") as f:
            json.dump(entries, f)
        return path

    def test_rowsFromFile(self):
        """
        Each distinct "row" of the file is a row (target >= 25% of raw);
        its entries are its repeats; the file's own ratio is used.
        """
        path = self._file([
            {"row": "one stream guest->host", "prokshy": 10.0, "baseline": 400.0, "unit": "MB/s", "ratio": 0.025},
            {"row": "one stream host->guest", "prokshy": 60.0, "baseline": 200.0, "unit": "MB/s", "ratio": 0.3},
            {"row": "one stream guest->host", "prokshy": 12.0, "baseline": 400.0, "unit": "MB/s", "ratio": 0.03},
        ])
        rows, group = run.realvmRows(path)
        self.assertEqual([r.title for r in rows], ["real QEMU virtio-serial: one stream guest->host",
                                                   "real QEMU virtio-serial: one stream host->guest"])
        g2h, h2g = (run.evaluate(r, group) for r in rows)
        self.assertEqual(g2h["ratio"]["n"], 2)
        self.assertAlmostEqual(g2h["ratio"]["median"], 0.0275)
        self.assertEqual(g2h["status"], "missed")
        self.assertEqual(h2g["status"], "met")
        self.assertEqual(h2g["unit"], "MB/s")

    def test_noFile(self):
        """
        Without a file, or with one that cannot be read, the real VM rows
        are skipped and say why.
        """
        for path, why in ((None, "no --realvm-results file"),
                          (os.path.join(self.mktemp(), "absent.json"), "cannot read"),
                          (self._file([]), "has no rows")):
            rows, group = run.realvmRows(path)
            self.assertEqual(rows, [])
            placeholder = _row("realvm-g2h")
            r = run.evaluate(placeholder, group)
            self.assertEqual(r["status"], "skipped")
            self.assertIn(why, r["why"])


class TableTests(TestCase):
    def test_tableAndMarkdown(self):
        results = [
            run.evaluate(_row("exec-api-spawn"), {"repeats": [{"api_p50_ms": 2.0, "spawn_p50_ms": 1.0}]}),
            run.evaluate(_row("exec-api-qga"), {"repeats": [], "skipped": {"qga": "no qemu-ga"}}),
        ]
        text = run.table(results)
        self.assertIn("2.00 ms", text)
        self.assertIn("MISSED", text)
        self.assertIn("skipped: no qemu-ga", text)
        md = run.markdownTable(results)
        self.assertIn("| exec p50, API straight to the simulator, vs spawn | 2.00 ms |", md)
