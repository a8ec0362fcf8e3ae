"""Print one of the README's two commands: `demo` or `test`.

The README has exactly two shell blocks meant to be pasted: the first (under
"Set up and run the demo") runs the demo, the second (under "Test") runs the
tests.  CI runs the test command from here, so the README stays true.
"""
import os
import re
import sys

SECTIONS = {"demo": "## Set up and run the demo", "test": "## Test"}


def command(readme, which):
    text = open(readme, encoding="utf-8").read()
    start = text.index(SECTIONS[which] + "\n")
    end = text.find("\n## ", start + 1)
    section = text[start:end if end != -1 else len(text)]
    blocks = re.findall(r"```sh\n(.*?)\n```", section, re.S)
    if len(blocks) != 1 or "\n" in blocks[0].strip():
        raise SystemExit("README: section %r must hold exactly one one-line sh block" % (SECTIONS[which],))
    return blocks[0].strip()


if __name__ == "__main__":
    here = os.path.dirname(os.path.abspath(__file__))
    print(command(os.path.join(here, "..", "README.md"), sys.argv[1]))
