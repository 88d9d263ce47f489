"""Bad pixels from a scan's mean and maximum patterns."""

import subprocess
import sys

from test_preprocessing import disks_pattern

from ghostmap.detector import find_bad_pixels


def test_find_bad_pixels_flags_defects_not_disks():
    mean = disks_pattern()
    mean[10, 40] = 900.0  # hot pixel
    mean[:, 23] = 0.0  # dead column
    maximum = mean * 3
    bad = set(find_bad_pixels(mean, maximum))
    assert (10, 40) in bad
    assert {(r, 23) for r in range(64)} <= bad
    assert len(bad) == 1 + 64  # no disk pixel flagged


def test_importing_it_does_not_import_torch():
    code = "import sys, ghostmap.detector; print('torch' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip() == "False"
