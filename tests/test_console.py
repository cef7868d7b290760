"""The console: one progress line per long job, and what `--verbose` changes."""
from __future__ import annotations

import io

from ganray.console import ProgressLine


class FakeTTY(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_progress_line_in_a_log_prints_whole_lines_and_no_duplicate_at_the_end():
    out = io.StringIO()
    line = ProgressLine("generate:", 4, "shards", stream=out, interval_s=3600)
    line.update(1, extra="a")          # the first update is always drawn
    line.update(2, extra="b")          # inside the interval: not drawn
    line.update(4, extra="c", force=True)
    line.close()                       # the final state is already out: not again
    lines = out.getvalue().splitlines()
    assert len(lines) == 2 and "\r" not in out.getvalue()
    assert lines[0].startswith("generate: 1/4 shards") and lines[0].endswith("a")
    assert lines[1].startswith("generate: 4/4 shards") and "c" in lines[1] and "done in" in lines[1]


def test_progress_line_on_a_terminal_redraws_one_line_in_place():
    out = FakeTTY()
    line = ProgressLine("train demo:", 100, "steps", stream=out, redraw_s=0)
    for step in (10, 20, 30):
        line.update(step, extra=f"loss {step}")
    line.message("[ganray] a message on its own line")
    line.update(100)
    line.close()
    text = out.getvalue()
    assert text.count("\n") == 2  # the message, and the end of the live line
    last = text.rsplit("\r", 1)[-1]
    assert last.startswith("train demo: 100/100 steps") and last.endswith("\n")
    assert "ETA" in text and "steps/s" in text


def test_rate_and_eta_count_only_work_since_the_first_update():
    out = io.StringIO()
    line = ProgressLine("generate:", 10, "shards", stream=out, interval_s=0)
    line.update(8)  # a resumed job: 8 shards were done before this run
    assert "ETA" not in line.text() and "/s" not in line.text()
