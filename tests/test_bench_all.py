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
    assert line.startswith("- Method vs Host (flat): ")  # no style field: from before the styles, flat
    # 95 % intervals by hand: CAM differences 10, 10, -2: sd 6.93, t(0.975, 2) = 4.303, half-width
    # 4.303 * 6.93 / sqrt(3) = 17.2; segmentation 0.01, 1, 3: sd 1.52, half-width 3.78.
    assert ("CAM ahead on 2, behind on 1 of 3 seeds (mean +6.0, -2.0 to +10.0; 95 % interval -11.2 to +23.2): "
            "no measurable difference") in line
    assert ("segmentation ahead on 2, behind on 0 of 3 seeds (mean +1.3, +0.0 to +3.0; 95 % interval -2.4 to +5.1): "
            "no measurable difference") in line
    assert "CNN" not in line


def test_a_gain_is_claimed_only_where_the_interval_excludes_zero():
    def record(style, method_cams):
        return {"name": "amr", "style": style, "columns": [["cam", "CAM"]], "labels": {"host": "Host", "method": "M"},
                "rows": {"host": [{"cam": 50.0}] * len(method_cams), "method": [{"cam": v} for v in method_cams]}}

    lines = bench_all.paired_verdicts([record("photo", [52.0, 53.0, 52.5, 51.5, 52.0]),   # all ahead, tight
                                       record("clutter", [47.0, 48.0, 47.5, 46.5, 48.0]),  # all behind, tight
                                       record("flat", [60.0])]).splitlines()             # one seed
    assert lines[0].startswith("- M vs Host (photo): ") and lines[0].endswith(": gain.")
    assert lines[1].startswith("- M vs Host (clutter): ") and lines[1].endswith(": worse.")
    assert lines[2].endswith("(mean +10.0, +10.0 to +10.0): one seed: no interval.")


def test_render_reads_one_result_file_per_style(tmp_path):
    import json

    def write(name, style):
        record = {"bench": "bench_amr", "title": "t", "columns": [["cam", "CAM"]], "labels": {"a": "A", "b": "B"},
                  "rows": {"a": [{"cam": 1.0}, {"cam": 2.0}], "b": [{"cam": 3.0}, {"cam": 4.0}]}}
        if style:
            record["style"] = style
        (tmp_path / name).write_text(json.dumps(record))

    write("amr.json", None)  # from before the styles: superseded by amr@flat.json
    write("amr@flat.json", "flat")
    write("amr@photo.json", "photo")
    page = bench_all.render(str(tmp_path))
    rows = [line for line in page.splitlines() if line.startswith("| AMR")]
    assert [row.split(" | ")[1] for row in rows] == ["flat", "flat", "photo", "photo"]
    assert page.count("- B vs A (") == 2


def test_lost_classes_are_those_the_cams_found_and_the_last_stage_dropped():
    import quality_common

    classes = {
        "cam": {"background": 80.0, "car": 61.2, "bus": 31.0, "boat": 12.0, "train": 45.0},
        "pseudo": {"background": 85.0, "car": 4.5, "bus": 30.0, "boat": 2.0, "train": 40.0},
        # car never predicted: no IoU at all, counted as 0; bus right at the bar is kept; boat
        # was never found, so it is not "lost".
        "seg": {"background": 88.0, "bus": 20.0, "boat": 1.0, "train": 19.9},
    }
    assert quality_common.lost_classes(classes) == [("car", 61.2, "seg", 0.0), ("train", 45.0, "seg", 19.9)]
    # Without a segmentation stage (the IRN benches), pseudo-labels are the last stage.
    assert quality_common.lost_classes({key: classes[key] for key in ("cam", "pseudo")}) == [("car", 61.2, "pseudo", 4.5)]


def test_lost_class_lines_name_each_run_and_skip_single_stage_arms():
    found = {"cam": {"car": 60.0}, "seg": {"car": 50.0}}
    lost = {"cam": {"car": 60.0}, "seg": {"car": 5.0}}
    record = {"name": "toco_doei", "style": "photo", "labels": {"host": "Host", "cnn": "CNN"},
              "rows": {"host": [{"classes": found}, {"classes": lost}], "cnn": [{"cam": 40.0, "classes": {"cam": {"car": 70.0}}}]}}
    text = bench_all.lost_class_lines([record])
    assert text == "- Host (photo): run 2: car (CAM 60.0, segmentation 5.0)."
    record["rows"]["host"] = [{"classes": found}] * 3
    assert bench_all.lost_class_lines([record]) == "- Host (photo): kept every class its CAMs found, on all 3 runs."
