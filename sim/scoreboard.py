"""Scoreboard shared by the benches: compares DUT transactions with the model's, counts, reports."""

import json
import os
from pathlib import Path

__all__ = ["Scoreboard", "REPORT_ENV"]

# The runner tells each bench where to write its JSON report through this variable.
REPORT_ENV = "FGMP_BENCH_REPORT"


class Scoreboard:
    def __init__(self, name, *, keep=8):
        self.name = name
        self.checked = 0
        self.mismatches = []
        self._keep = keep
        self._mismatch_count = 0

    def compare(self, stimulus, got, expected):
        self.checked += 1
        if got != expected:
            self._mismatch_count += 1
            if len(self.mismatches) < self._keep:
                self.mismatches.append({"stimulus": stimulus, "got": got, "expected": expected})

    @property
    def mismatch_count(self):
        return self._mismatch_count

    def report(self, **extra):
        return {"bench": self.name, "checked": self.checked, "mismatches": self._mismatch_count,
                "first_mismatches": self.mismatches, **extra}

    def write_report(self, **extra):
        """Append this scoreboard's report to the run's JSON list (one entry per cocotb test)."""
        path = os.environ.get(REPORT_ENV)
        if path:
            path = Path(path)
            reports = json.loads(path.read_text()) if path.exists() else []
            reports.append(self.report(**extra))
            path.write_text(json.dumps(reports, indent=2, default=str))

    def assert_clean(self):
        assert self.checked > 0, f"{self.name}: the scoreboard checked nothing"
        assert self._mismatch_count == 0, (
            f"{self.name}: {self._mismatch_count} of {self.checked} mismatches, first: {self.mismatches}"
        )
