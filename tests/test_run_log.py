"""Live reporting of a training run: plain lines in a log file, a bar on a terminal, TensorBoard events."""

from __future__ import annotations

import io

import pytest
from tb_events import read_events, read_tensorboard

from jinject.run_log import RunLog, _renders_a_bar, format_line


class FakeTerminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def records(steps: range) -> list[dict]:
    return [{"step": s, "loss": 1.0 / s, "task": 0.5, "kl": 0.01, "align": 0.2, "answer_acc": 0.75,
             "align_per_layer": [0.1, 0.1], "time": 0.5} for s in steps]


def test_log_file_gets_one_plain_line_per_interval():
    stream = io.StringIO()  # not a TTY, like a nohup/tmux log file
    log = RunLog(total=10, initial=0, log_every=4, stream=stream)
    for chunk in (range(1, 4), range(4, 5), range(5, 9), range(9, 11)):  # fetches at uneven steps (checkpoints)
        for _ in chunk:
            log.step()
        log.write(records(chunk))
    log.close()
    text = stream.getvalue()
    assert "\r" not in text
    lines = text.splitlines()
    assert [ln.split(" | ")[0] for ln in lines] == ["train step 4/10", "train step 8/10", "train step 10/10"]
    assert lines[0] == ("train step 4/10 | loss 0.25 | task 0.5 | kl 0.01 | align 0.2 | answer_acc 0.75 | "
                        "0.5 s/step | ETA 3s")


def test_terminal_gets_a_progress_bar_and_no_lines():
    stream = FakeTerminal()
    log = RunLog(total=10, initial=0, log_every=2, stream=stream)
    for s in range(1, 11):
        log.step()
        log.write(records(range(s, s + 1)))
    log.close()
    text = stream.getvalue()
    assert "\r" in text and "10/10" in text and "train step" not in text


def test_progress_off_prints_nothing():
    stream = io.StringIO()
    log = RunLog(total=4, initial=0, log_every=1, progress=False, stream=stream)
    log.write(records(range(1, 5)))
    log.close()
    assert stream.getvalue() == ""


def test_notebook_output_counts_as_a_live_display():
    class OutStream(io.StringIO):  # the class ipykernel puts in sys.stderr of a Jupyter/Colab kernel
        pass

    OutStream.__module__ = "ipykernel.iostream"
    assert _renders_a_bar(OutStream()) and _renders_a_bar(FakeTerminal()) and not _renders_a_bar(io.StringIO())


def test_eta_and_duration_format():
    rec = {"step": 20, "loss": 2.0}
    assert format_line(rec, 300, 0.5) == "train step 20/300 | loss 2 | 0.5 s/step | ETA 2m 20s"
    assert format_line(rec, 20_000, 2.0).endswith("ETA 11h 06m")  # 19980 steps x 2 s


def test_tensorboard_events_hold_the_records_and_a_resume_hides_the_redone_steps(tmp_path):
    first = RunLog(total=8, initial=0, log_every=1, progress=False, tensorboard=tmp_path)
    first.write(records(range(1, 7)))  # a run that dies at step 6; its last checkpoint was step 4
    first.close()
    again = [{**r, "loss": 10.0 + r["step"], "align_per_layer": [0.3, 0.4]} for r in records(range(5, 9))]
    second = RunLog(total=8, initial=4, log_every=1, progress=False, tensorboard=tmp_path)
    second.write(again)
    second.close()
    loss_steps = sorted(e.step for e in read_events(tmp_path) if any(v.tag == "loss" for v in e.summary.value))
    assert loss_steps == [1, 2, 3, 4, 5, 5, 6, 6, 7, 8]  # both attempts' files are kept ...
    assert [e.step for e in read_events(tmp_path) if e.HasField("session_log")] == [1, 5]  # ... the second hides 5+
    got = read_tensorboard(tmp_path)
    assert got["loss"] == pytest.approx({1: 1.0, 2: 0.5, 3: 1 / 3, 4: 0.25, 5: 15.0, 6: 16.0, 7: 17.0, 8: 18.0})
    assert got["align/layer_1"] == pytest.approx({1: 0.1, 2: 0.1, 3: 0.1, 4: 0.1, 5: 0.4, 6: 0.4, 7: 0.4, 8: 0.4})
    assert set(got) == {"loss", "task", "kl", "align", "answer_acc", "align/layer_0", "align/layer_1", "time"}
