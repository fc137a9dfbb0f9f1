"""The README's command examples agree with what the commands write."""

import os
import re
import shlex

README = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "README.md")


def _code_lines():
    """Every line inside the README's fenced code blocks, continuation lines joined."""
    with open(README, encoding="utf-8") as handle:
        text = handle.read()
    lines = []
    for block in re.findall(r"```[a-z]*\n(.*?)```", text, flags=re.S):
        lines.extend(block.replace("\\\n", " ").splitlines())
    return lines


def _export_folders(line):
    """For a `wsss export` line: (its --out folder, how many artifacts it writes)."""
    words = shlex.split(line.split("#")[0].split("&&")[0])
    out = words[words.index("--out") + 1]
    formats = max(1, words.count("--format"))
    precisions = max(1, words.count("--precision"))
    return out, formats * precisions


def test_every_served_folder_is_one_an_export_above_writes():
    """`wsss export` puts a single artifact straight into --out and several into
    --out/<format>_<precision>/ (wsss_keras.export.export_model); a README `wsss serve DIR`
    must name a folder an export above it actually writes."""
    written = set()
    served = []
    for line in _code_lines():
        for part in line.split("&&"):
            part = part.strip()
            if part.startswith("wsss export "):
                out, artifacts = _export_folders(part)
                if artifacts == 1:
                    written.add(out)
                else:
                    words = shlex.split(part.split("#")[0])
                    for fmt in [words[i + 1] for i, w in enumerate(words) if w == "--format"]:
                        for precision in [words[i + 1] for i, w in enumerate(words) if w == "--precision"] or ["fp32"]:
                            written.add(f"{out}/{fmt}_{precision}")
            elif part.startswith("wsss serve "):
                served.append(shlex.split(part.split("#")[0])[2])
    assert served, "the README shows no `wsss serve` example"
    missing = [folder for folder in served if folder not in written]
    assert not missing, f"README serves folders no export above writes: {missing} (exports write {sorted(written)})"
