#!/usr/bin/env python3
"""Runs Tandem's end-to-end suite against the real binary.

    python3 tests/e2e/run.py                 # everything
    python3 tests/e2e/run.py test_mail       # one file (module name)
    python3 tests/e2e/run.py -k idle         # tests whose name contains "idle"

Binary: $TANDEM_BIN, default target/debug/tandem under the repo root (build it first with
`cargo build -p tandem`). Prints unittest's usual output, then one final line
`e2e: N passed, M failed, K skipped`; exits non-zero when anything failed.
"""

from __future__ import annotations

import argparse
import signal
import sys
import time
import unittest
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import harness  # noqa: E402


class CountingResult(unittest.TextTestResult):
    """Counts per test (a test with failing subtests is one failure), and counts class or
    module set-up errors as failures."""

    def __init__(self, *a, **kw):
        super().__init__(*a, **kw)
        self.started: list[str] = []
        self.failed_ids: set[str] = set()
        self.skipped_ids: set[str] = set()

    def startTest(self, test):
        self.started.append(test.id())
        super().startTest(test)

    def _note_failure(self, test):
        tc = getattr(test, "test_case", None)  # a failing subTest
        self.failed_ids.add((tc or test).id())

    def addFailure(self, test, err):
        self._note_failure(test)
        super().addFailure(test, err)

    def addError(self, test, err):
        self._note_failure(test)
        super().addError(test, err)

    def addSubTest(self, test, subtest, err):
        if err is not None:
            self.failed_ids.add(test.id())
        super().addSubTest(test, subtest, err)

    def addUnexpectedSuccess(self, test):
        self.failed_ids.add(test.id())
        super().addUnexpectedSuccess(test)

    def addSkip(self, test, reason):
        self.skipped_ids.add(test.id())
        super().addSkip(test, reason)


def main() -> int:
    # SIGTERM/SIGHUP (a CI timeout) act like Ctrl-C: unittest stops (it swallows
    # SystemExit but not KeyboardInterrupt) and atexit kills the servers.
    def interrupt(signum, _frame):
        raise KeyboardInterrupt(f"signal {signum}")

    for sig in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, interrupt)
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("modules", nargs="*", help="test modules to run (default: all test_*.py)")
    ap.add_argument("-k", dest="patterns", action="append", help="only tests whose name contains this")
    ap.add_argument("-q", dest="quiet", action="store_true", help="less output")
    args = ap.parse_args()

    why = harness.check_binary()
    if why:
        print(f"e2e: {why}", file=sys.stderr)
        print("e2e: 0 passed, 1 failed, 0 skipped")
        return 1

    loader = unittest.TestLoader()
    if args.patterns:
        loader.testNamePatterns = [f"*{p}*" for p in args.patterns]
    if args.modules:
        names = [m.removesuffix(".py").split("/")[-1] for m in args.modules]
        suite = loader.loadTestsFromNames(names)
    else:
        suite = loader.discover(start_dir=str(HERE), pattern="test_*.py", top_level_dir=str(HERE))

    runner = unittest.TextTestRunner(
        verbosity=1 if args.quiet else 2,
        resultclass=CountingResult,
        stream=sys.stdout,
    )
    t0 = time.monotonic()
    try:
        result: CountingResult = runner.run(suite)
    except KeyboardInterrupt as e:
        harness._kill_leftovers()
        print(f"\ne2e: interrupted ({e or 'Ctrl-C'})")
        print("e2e: 0 passed, 1 failed, 0 skipped")
        return 130
    sys.stdout.flush()
    # Set-up errors of a class or module show up as failures with no started test.
    failed = len(result.failed_ids)
    skipped = len(result.skipped_ids - result.failed_ids)
    passed = len([t for t in set(result.started) if t not in result.failed_ids and t not in result.skipped_ids])
    print(f"(binary {harness.tandem_bin()}, {time.monotonic() - t0:.1f}s)")
    print(f"e2e: {passed} passed, {failed} failed, {skipped} skipped")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
