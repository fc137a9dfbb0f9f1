"""bench_all's seed-by-seed verdicts: counted from the per-seed figures, not from the means."""

import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "bench"))

import bench_all


def test_verdicts_count_each_seed_against_the_baseline_of_the_same_seed():
    record = {
        "name": "toco_doei",
        "columns": [["cam", "CAM"], ["seg", "segmentation"]],
        "labels": {"host": "Host", "method": "Method", "cnn": "CNN"},
        "rows": {
            # The method's mean CAM is higher, yet it is behind on seed 2; its segmentation ties
            # seed 0 and is ahead on seeds 1 and 2.
            "host": [{"cam": 50.0, "seg": 40.0}, {"cam": 50.0, "seg": 40.0}, {"cam": 60.0, "seg": 40.0}],
            "method": [{"cam": 60.0, "seg": 40.01}, {"cam": 60.0, "seg": 41.0}, {"cam": 58.0, "seg": 43.0}],
            "cnn": [{"cam": 10.0}, {"cam": 10.0}, {"cam": 10.0}],
        },
    }
    line = bench_all.paired_verdicts([record])
    assert line.startswith("- Method vs Host: ")
    assert "CAM ahead on 2, behind on 1 of 3 seeds (mean +6.0, -2.0 to +10.0)" in line
    assert "segmentation ahead on 2, behind on 0 of 3 seeds (mean +1.3, +0.0 to +3.0)" in line
    assert "CNN" not in line
