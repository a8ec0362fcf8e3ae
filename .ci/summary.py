"""Rewrite trial's closing summary as 'N passed, N failed'; exit non-zero on failure."""
import re
import sys

text = open(sys.argv[1], errors="replace").read()
rc = int(sys.argv[2])
runs = re.findall(r"^(PASSED|FAILED) \(([^)]*)\)\s*$", text, re.M)
if not runs:
    print("0 passed, 1 failed")
    sys.exit(rc or 1)
passed = failed = skipped = 0
for _, counts in runs:
    c = dict((k, int(v)) for k, v in re.findall(r"(\w+)=(\d+)", counts))
    passed += c.get("successes", 0) + c.get("expectedFailures", 0)
    failed += c.get("failures", 0) + c.get("errors", 0) + c.get("unexpectedSuccesses", 0)
    skipped += c.get("skips", 0)
if skipped:
    # On a line of its own: the last line is exactly "N passed, N failed".
    print("%d skipped (see the log above for why)" % skipped)
print("%d passed, %d failed" % (passed, failed))
sys.exit(rc if rc else (1 if failed else 0))
