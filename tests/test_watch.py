"""Watching a folder: only complete files are read, faults are reported once, and a restart resumes."""

import json
import os
import shutil
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from ghostmap.errors import GhostmapError
from ghostmap.prediction import predict
from ghostmap.series import load_series
from ghostmap.watch import Watcher, WatchOptions


class Clock:
    def __init__(self):
        self.now = 1000.0

    def __call__(self):
        return self.now


def make_watcher(series, folder, out, clock, events, **options):
    opts = WatchOptions(settle=5.0, incomplete_after=60.0, **options)
    return Watcher(folder, series["model"], out, opts, report=lambda e, text: events.append((e, text)), clock=clock)


def write_partial_npy(path, data, fraction):
    """What an acquisition writing straight into its final name leaves part-way: a full header, part of the data."""
    np.save(path, data)
    with open(path, "r+b") as f:
        f.truncate(int(os.path.getsize(path) * fraction))


def test_a_file_is_read_only_after_it_settles(series, tmp_path):
    folder, clock, events = tmp_path / "in", Clock(), []
    folder.mkdir()
    watcher = make_watcher(series, folder, tmp_path / "out", clock, events)
    shutil.copy(series["paths"][0], folder / "a.npy")
    assert watcher.poll_once() == 0  # just appeared
    clock.now += 3
    assert watcher.poll_once() == 0  # not settled yet
    clock.now += 3
    assert watcher.poll_once() == 1
    np.testing.assert_array_equal(watcher.writer.results[0].labels, predict(series["scans"][0], series["model"]).labels)
    assert watcher.poll_once() == 0  # nothing new
    assert [e for e, _ in events] == ["start", "done"]


def test_a_half_written_file_waits_then_is_classified_when_complete(series, tmp_path):
    folder, clock, events = tmp_path / "in", Clock(), []
    folder.mkdir()
    watcher = make_watcher(series, folder, tmp_path / "out", clock, events)
    write_partial_npy(folder / "b.npy", series["scans"][1], 0.5)
    clock.now += 10
    watcher.poll_once()
    clock.now += 10
    assert watcher.poll_once() == 0
    assert [e for e, _ in events] == ["waiting"]  # said once, not on every poll
    assert not (tmp_path / "out" / "step_0000").exists()
    np.save(folder / "b.npy", series["scans"][1])  # the writer finishes
    clock.now += 1
    assert watcher.poll_once() == 0  # changed: settle again
    clock.now += 6
    assert watcher.poll_once() == 1
    np.testing.assert_array_equal(watcher.writer.results[0].labels, predict(series["scans"][1], series["model"]).labels)


def test_a_file_that_stays_incomplete_is_skipped_with_one_message(series, tmp_path):
    folder, clock, events = tmp_path / "in", Clock(), []
    folder.mkdir()
    watcher = make_watcher(series, folder, tmp_path / "out", clock, events)
    write_partial_npy(folder / "stuck.npy", series["scans"][0], 0.3)
    shutil.copy(series["paths"][2], folder / "good.npy")
    watcher.poll_once()
    clock.now += 10
    assert watcher.poll_once() == 1  # the good file goes ahead; the stuck one waits
    clock.now += 61
    watcher.poll_once()
    rejected = [text for e, text in events if e == "rejected"]
    assert len(rejected) == 1 and "stuck.npy" in rejected[0] and "incomplete" in rejected[0]
    assert "\n" not in rejected[0]
    clock.now += 100
    watcher.poll_once()
    assert len([e for e, _ in events if e == "rejected"]) == 1
    # a restarted watcher remembers the rejection and does not report it again
    events2 = []
    again = make_watcher(series, folder, tmp_path / "out", clock, events2)
    clock.now += 100
    again.poll_once()
    assert not [e for e, _ in events2 if e == "rejected"] and len(again.writer) == 1


def test_a_scan_with_another_detector_is_rejected_and_the_watch_goes_on(series, tmp_path):
    folder, clock, events = tmp_path / "in", Clock(), []
    folder.mkdir()
    watcher = make_watcher(series, folder, tmp_path / "out", clock, events)
    np.save(folder / "a_odd.npy", np.zeros((12, 48, 16, 16), np.uint16))
    shutil.copy(series["paths"][0], folder / "b.npy")
    watcher.poll_once()
    clock.now += 10
    assert watcher.poll_once() == 1
    rejected = [text for e, text in events if e == "rejected"]
    assert len(rejected) == 1 and "a_odd.npy" in rejected[0] and "16 x 16" in rejected[0]
    manifest = json.loads((tmp_path / "out" / "series.json").read_text())
    assert len(manifest["steps"]) == 1 and list(manifest["rejected"]) == [str((folder / "a_odd.npy").resolve())]


def test_a_restarted_watcher_resumes_the_series(series, tmp_path):
    folder, clock, out = tmp_path / "in", Clock(), tmp_path / "out"
    folder.mkdir()
    for t in range(2):
        shutil.copy(series["paths"][t], folder / f"scan_{t}.npy")
    first = make_watcher(series, folder, out, clock, [])
    first.poll_once()
    clock.now += 10
    assert first.poll_once() == 2
    stamp = (out / "step_0000" / "predictions.npz").stat().st_mtime_ns
    shutil.copy(series["paths"][2], folder / "scan_2.npy")
    events = []
    second = make_watcher(series, folder, out, clock, events)
    assert len(second.writer) == 2
    second.poll_once()
    clock.now += 10
    assert second.poll_once() == 1
    assert (out / "step_0000" / "predictions.npz").stat().st_mtime_ns == stamp  # not redone
    arrays = load_series(out)
    assert arrays["labels"].shape[0] == 3 and arrays["sources"][2].endswith("scan_2.npy")
    assert [e for e, _ in events] == ["start", "done"]


def test_the_output_folder_cannot_be_the_watched_folder(series, tmp_path):
    with pytest.raises(GhostmapError, match="must not be the watched folder"):
        Watcher(tmp_path, series["model"], tmp_path, WatchOptions())


def test_cli_watch_survives_being_stopped_and_restarted(series, tmp_path):
    folder, out = tmp_path / "acq", tmp_path / "series"
    folder.mkdir()
    command = [sys.executable, "-m", "ghostmap.cli", "watch", str(folder), "--model", str(series["model_dir"]),
               "--out", str(out), "--settle", "0.5", "--poll", "0.2"]
    watcher = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        for t in range(2):  # the acquisition writes under a temporary name, then renames
            shutil.copy(series["paths"][t], folder / f".scan_{t}.npy.part")
            os.replace(folder / f".scan_{t}.npy.part", folder / f"scan_{t}.npy")
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            manifest = out / "series.json"
            if manifest.exists() and len(json.loads(manifest.read_text())["steps"]) == 2:
                break
            time.sleep(0.2)
        else:
            pytest.fail("the watcher did not classify two scans in time")
        watcher.send_signal(signal.SIGTERM)
        stdout, stderr = watcher.communicate(timeout=60)
    finally:
        if watcher.poll() is None:
            watcher.kill()
    assert watcher.returncode == 0, stderr
    assert "stopped; 2 steps" in stderr and "Traceback" not in stderr
    stamp = (out / "step_0001" / "predictions.npz").stat().st_mtime_ns
    shutil.copy(series["paths"][2], folder / "scan_2.npy")
    run = subprocess.run(command + ["--stop-after", "1"], capture_output=True, text=True, timeout=180)
    assert run.returncode == 0, run.stderr
    assert "1 step already" not in run.stderr and "2 steps already" in run.stderr
    arrays = load_series(out)
    assert arrays["labels"].shape[0] == 3
    assert (out / "step_0001" / "predictions.npz").stat().st_mtime_ns == stamp
    assert not [p for p in out.rglob(".*") if p.name.startswith(".")]  # no temporary files left behind
    # each scan is classified as 'ghostmap predict' classifies it alone
    single = subprocess.run([sys.executable, "-m", "ghostmap.cli", "predict", str(series["paths"][2]), "--model",
                             str(series["model_dir"]), "--out", str(tmp_path / "one")], capture_output=True, text=True)
    assert single.returncode == 0, single.stderr
    with np.load(out / "step_0002" / "predictions.npz") as step, np.load(tmp_path / "one" / "predictions.npz") as one:
        assert np.array_equal(step["probabilities"], one["probabilities"])


def test_a_folder_of_gms_insitu_sessions_gives_one_step_per_time_slice(series, tmp_path):
    sys.path.insert(0, os.path.dirname(__file__))
    from test_io_gatan import write_dm5

    folder, out, clock, events = tmp_path / "in", tmp_path / "out", Clock(), []
    folder.mkdir()
    scans = np.stack(series["scans"][:3])
    write_dm5(folder / "InSitu_1.dm5", scans[:2], cuts=[scans[0].nbytes // 2])
    raw = folder / "InSitu_2.raw"
    write_dm5(folder / "InSitu_2.dm5", scans[2:3])
    full = raw.read_bytes()
    raw.write_bytes(full[: len(full) // 2])  # the second session's slice is still being written
    watcher = make_watcher(series, folder, out, clock, events)
    assert watcher.poll_once() == 0
    clock.now += 6
    assert watcher.poll_once() == 2  # both slices of the first session; the second is not readable yet
    assert any(e == "waiting" and "InSitu_2.dm5" in text for e, text in events)
    raw.write_bytes(full)
    clock.now += 6
    watcher.poll_once()  # InSitu_2.dm5 itself did not change: its slice is a new step, settling now
    clock.now += 6
    assert watcher.poll_once() == 1 and not watcher.pending
    sources = [str(e["source"]) for e in watcher.writer.entries]
    assert [s.rsplit("/", 1)[1] for s in sources] == ["InSitu_1.dm5[0]", "InSitu_1.dm5[1]", "InSitu_2.dm5[0]"]
    for t in range(3):
        np.testing.assert_array_equal(watcher.writer.results[t].labels, predict(scans[t], series["model"]).labels)
