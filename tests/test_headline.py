"""The headline contract of the reports: every miss against a paper says where it comes from."""
import pytest

from interp.errors import InterpError
from interp.reports.headline import check_headline, headline_table, inside, miss_from

ROW = {"name": "faithfulness", "ours": 0.6, "ci": [0.4, 0.9], "n": 24, "paper": "0.87", "why": "test"}


def test_a_miss_is_the_sample_size_exactly_when_the_interval_cannot_tell():
    assert miss_from("partly", "model", inside([0.4, 0.9], 0.87)) == "sample size"
    assert miss_from("partly", "model", inside([0.4, 0.8], 0.87)) == "model"
    assert miss_from("not", "deviation: four prompts", inside(None, 0.87)) == "deviation: four prompts"
    assert miss_from("reproduced", "model", False) is None and miss_from(None, "model", True) is None
    assert inside([0.0, 1.0], 0.0) and inside([0.0, 1.0], 1.0) and not inside([0.0, 1.0], 1.01)


@pytest.mark.parametrize("verdict, miss, ok", [
    ("partly", "sample size", True), ("not", "model", True), ("not", "deviation: END only", True),
    ("partly", None, False), ("not", "deviation: ", False), ("not", "the model", False),
    ("reproduced", None, True), (None, None, True), ("reproduced", "model", False), (None, "sample size", False),
])
def test_check_headline_holds_every_row_to_the_contract(verdict, miss, ok):
    num = {"headline": [dict(ROW, verdict=verdict, miss=miss)]}
    if ok:
        check_headline("test", num)
    else:
        with pytest.raises(InterpError, match="faithfulness"):
            check_headline("test", num)


def test_a_row_without_miss_is_refused():
    with pytest.raises(InterpError, match=r"lacks \['miss'\]"):
        check_headline("test", {"headline": [dict(ROW, verdict=None)]})


def test_the_table_shows_where_a_miss_comes_from():
    page = headline_table([dict(ROW, verdict="partly", miss="sample size"),
                           dict(ROW, name="no interval", ci=None, verdict=None, miss=None)])
    assert "a miss from" in page and "sample size" in page
    assert "0.6 [0.4, 0.9]" in page and "(no interval: see why)" in page


def test_the_index_renders_the_same_rows_with_its_own_columns(tmp_path):
    """One renderer: the index's summary table is the reports' headline table with the analysis
    (a link) before and the model and setting after."""
    import json

    from interp.reports.runner import write_index

    (tmp_path / "ioi").mkdir()
    (tmp_path / "ioi" / "report.html").write_text("<h1>x</h1>")
    rows = [dict(ROW, verdict="partly", miss="sample size"), dict(ROW, name="big", ours=1234.5, ci=None, verdict=None, miss=None)]
    (tmp_path / "ioi" / "numbers.json").write_text(json.dumps({"meta": {"model_key": "m", "setting": "quick"},
                                                               "headline": rows}))
    page = write_index(tmp_path, {"ioi": tmp_path / "ioi" / "report.html"}).read_text()
    summary = page[page.index('<table id="summary">'):page.index("</table>")]
    own = headline_table(rows)
    for cell in ("0.6 [0.4, 0.9]", "1,234 (no interval: see why)", '<td class="verdict partly">partly</td>',
                 '<td class="miss">sample size</td>'):
        assert cell in summary and cell in own, cell
    assert summary.count('<a href="ioi/report.html">ioi</a>') == 2 and summary.count("<td>m, quick</td>") == 2
    assert "<th>analysis</th><th>quantity</th>" in summary and "<th>model, setting</th>" in summary
