"""Notebook 04_correct_letter_heads.ipynb runs headless with its test parameters (``notebook_run.SMOKE``)."""
import json

from notebook_run import execute


def test_correct_letter_notebook_executes(tmp_path):
    """The quick setting made smaller (SMOKE): held-out accuracy per slot, the rank curve with its
    floors, three random head sets per ablation, every headline estimate inside its interval."""
    execute("04_correct_letter_heads.ipynb", tmp_path)
    out = tmp_path / "reports" / "notebooks" / "04_correct_letter_heads"
    for name in ("slots.png", "effects.png", "ablation.png", "rank.png", "mutations.png", "key_space.png"):
        assert (out / name).stat().st_size > 1000, name
    numbers = json.loads((out / "numbers.json").read_text())
    assert numbers["scores"]["accuracy"] > 0.25 and "64" in numbers["rank_curve"]
    assert {"0", "knocked out (zero)"} <= set(numbers["rank_curve"]["joint"])
    assert len(numbers["ablation"]["zero"]["random"]["uniform"]["accuracy"]) == 3
    assert set(numbers["scores"]["accuracy_by_slot"]) == {"0", "1", "2", "3"}
    for row in numbers["headline"]:
        assert row["ci"] is None or row["ci"][0] <= row["ours"] <= row["ci"][1], row["name"]
