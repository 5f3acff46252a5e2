"""The run's progress line: counts, elapsed time and the estimate, live on a terminal, periodic elsewhere."""

from __future__ import annotations

import io

from harness.frontends.progress import Progress, duration


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_durations_read_as_a_person_writes_them():
    assert [duration(s) for s in (0.4, 42, 187, 3725)] == ["0s", "42s", "3m07s", "1h02m"]


def test_the_estimate_is_the_mean_time_per_case_times_the_cases_left():
    clock, stream = Clock(), io.StringIO()
    progress = Progress(4, stream, clock, live=False)
    clock.now += 30
    progress.done = 1
    assert progress.line() == "progress: 1/4 cases, 30s elapsed, about 1m30s left"
    progress.done = 4
    assert progress.line() == "progress: 4/4 cases, 30s elapsed"


def test_off_a_terminal_a_line_every_interval_and_at_the_end():
    clock, stream = Clock(), io.StringIO()
    progress = Progress(5, stream, clock, every_s=30, live=False)
    progress.start()
    for step in (10, 10, 15, 1, 1):  # the third case crosses 30 s since the start
        clock.now += step
        progress.advance()
    assert stream.getvalue().splitlines() == [
        "progress: 3/5 cases, 35s elapsed, about 23s left",
        "progress: 5/5 cases, 37s elapsed",
    ]


def test_on_a_terminal_one_line_rewritten_in_place_and_cleared_for_other_output():
    clock, stream = Clock(), io.StringIO()
    progress = Progress(2, stream, clock, live=True)
    progress.start()
    clock.now += 4
    progress.before_output()
    stream.write("passed   cases/a.yaml\n")  # a case line takes the live line's place
    progress.advance()
    progress.finish()
    assert stream.getvalue() == (
        "progress: 0/2 cases, 0s elapsed\r\033[Kpassed   cases/a.yaml\nprogress: 1/2 cases, 4s elapsed, about 4s left\r\033[K"
    )
