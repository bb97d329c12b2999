"""Replay the deliberate breaks of tests/BREAKS.md: each one applied, its tests run, and caught or missed.

    .venv/bin/python tests/replay_breaks.py                 # every break (the notebook ones take minutes)
    .venv/bin/python tests/replay_breaks.py labels-flipped  # the named ones
    .venv/bin/python tests/replay_breaks.py --fast          # only the breaks whose tests start no kernel
    .venv/bin/python tests/replay_breaks.py --list          # the list, and whether each find text is still there

Each break is a find/replace on one file, made in a temporary copy of the checkout (its tracked and untracked,
not ignored, files), never in the checkout itself. The break's tests run there first unbroken (they must pass),
then with the break (they must fail), and the file is restored before the next break. The exit status is 1
when a break was missed, its find text is gone, or its tests fail without it.
"""

import argparse
import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]
BREAKS_FILE = REPO / "tests" / "BREAKS.md"


def read_breaks(path=BREAKS_FILE):
    """The breaks: the YAML block of BREAKS.md, a list of {id, break, file, find, replace, tests, notebook?}."""
    blocks = re.findall(r"^```yaml\n(.*?)^```", Path(path).read_text(encoding="utf-8"), flags=re.M | re.S)
    if len(blocks) != 1:
        raise ValueError(f"{path} must hold exactly one ```yaml block, not {len(blocks)}")
    breaks = yaml.safe_load(blocks[0])
    ids = [b["id"] for b in breaks]
    if len(set(ids)) != len(ids):
        raise ValueError(f"break ids used twice: {sorted({i for i in ids if ids.count(i) > 1})}")
    for b in breaks:
        missing = {"id", "break", "file", "find", "replace", "tests"} - set(b)
        if missing:
            raise ValueError(f"break {b.get('id')} lacks {sorted(missing)}")
    return breaks


def pairs(b):
    """The break's (find, replace) pairs: one, or lists of the same length, made at once (they may swap lines)."""
    finds, replaces = b["find"], b["replace"]
    if isinstance(finds, str):
        return [(finds, replaces)]
    return list(zip(finds, replaces, strict=True))


def occurrences(b, text=None):
    """How often the break's rarest find text occurs (1 where the break still applies)."""
    text = Path(REPO, b["file"]).read_text(encoding="utf-8") if text is None else text
    return min(text.count(find) for find, _ in pairs(b))


def broken(b, text):
    for i, (find, _) in enumerate(pairs(b)):
        text = text.replace(find, f"\0BREAK{i}\0")
    for i, (_, replace) in enumerate(pairs(b)):
        text = text.replace(f"\0BREAK{i}\0", replace)
    return text


def copy_checkout(destination):
    """The checkout's tracked and untracked (not ignored) files, copied under destination."""
    names = subprocess.run(["git", "ls-files", "-co", "--exclude-standard", "-z"], cwd=REPO, check=True,
                           capture_output=True, text=True).stdout.split("\0")
    for name in filter(None, names):
        source = REPO / name
        if source.is_file():
            (destination / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, destination / name)


def run_tests(root, tests, fast):
    command = [sys.executable, "-m", "pytest", "-x", "-q", "-p", "no:cacheprovider", *tests]
    if fast:
        command += ["-m", "not notebook"]
    env = dict(os.environ, JUPYTER_PREFER_ENV_PATH="1", OMP_WAIT_POLICY=os.environ.get("OMP_WAIT_POLICY", "PASSIVE"))
    done = subprocess.run(command, cwd=root, env=env, capture_output=True, text=True)
    return done.returncode, (done.stdout + done.stderr).strip().splitlines()[-3:]


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("ids", nargs="*", help="the breaks to replay (default: all)")
    parser.add_argument("--fast", action="store_true", help="only breaks whose tests start no kernel")
    parser.add_argument("--list", action="store_true", help="list the breaks and check their find texts")
    args = parser.parse_args(argv)
    breaks = read_breaks()
    unknown = set(args.ids) - {b["id"] for b in breaks}
    if unknown:
        parser.error(f"no such break: {', '.join(sorted(unknown))}")
    chosen = [b for b in breaks if (not args.ids or b["id"] in args.ids) and not (args.fast and b.get("notebook"))]
    if args.list:
        for b in chosen:
            print(f"{b['id']:<32} {b['file']:<34} find text found {occurrences(b)} time(s)  {' '.join(b['tests'])}")
        return int(any(Path(REPO, b["file"]).read_text(encoding="utf-8").count(find) != 1
                       for b in chosen for find, _ in pairs(b)))
    results = []
    with tempfile.TemporaryDirectory(prefix="breaks-") as folder:
        root = Path(folder)
        copy_checkout(root)
        for b in chosen:
            path = root / b["file"]
            original = path.read_text(encoding="utf-8")
            if any(original.count(find) != 1 for find, _ in pairs(b)):
                results.append((b["id"], f"STALE: a find text occurs {occurrences(b, original)} times, not once"))
                print(f"{b['id']}: {results[-1][1]}", flush=True)
                continue
            status, tail = run_tests(root, b["tests"], args.fast)
            if status != 0:
                results.append((b["id"], "ERROR: its tests fail without the break: " + " | ".join(tail)))
            else:
                path.write_text(broken(b, original), encoding="utf-8")
                try:
                    status, tail = run_tests(root, b["tests"], args.fast)
                finally:
                    path.write_text(original, encoding="utf-8")
                outcome = {0: "MISSED", 1: "caught"}.get(status, f"ERROR (pytest exit {status})")
                results.append((b["id"], outcome + ("" if status == 1 else ": " + " | ".join(tail))))
            print(f"{b['id']}: {results[-1][1]}", flush=True)
    caught = sum(outcome == "caught" for _, outcome in results)
    print(f"{caught} of {len(results)} breaks caught")
    return int(caught != len(results))


if __name__ == "__main__":
    sys.exit(main())
