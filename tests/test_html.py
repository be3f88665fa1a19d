"""The HTML report without a model: every case, metric and answer on the page, flips highlighted, nothing
external, untrusted text escaped, well-formed SVG heatmaps, baseline deltas, and `factedit report`."""

from __future__ import annotations

import copy
import re
import xml.etree.ElementTree as ET
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

from pytest_factedit.metrics.spec import COLUMNS, METRIC_BY_NAME, METRICS
from pytest_factedit.report.files import RunWriter
from pytest_factedit.report.heatmap import heatmap_svg
from pytest_factedit.report.html import html_report, write_html
from pytest_factedit.report.records import summary_record

from .test_report import record as base_record

HOSTILE = "<script>alert(1)</script>"
LAYERS = 6
TOKENS = ["<bos>", "The", "▁Eiffel", "▁Tower", "▁is", "▁in"]


def _site(position: int, values: list[float]) -> list[list[float | None]]:
    """effects[site][layer][position]: one scored position per layer, like the real trace's key cells."""
    return [[values[layer] if p == position else None for p in range(len(TOKENS))] for layer in range(LAYERS)]


def localization() -> dict[str, Any]:
    """Shaped like a real `trace` record (reports/latest): MLP at the subject's last token, attention at the last."""
    grid = {
        "prompt": "The Eiffel Tower is in",
        "tokens": TOKENS,
        "subject_positions": [2, 3],
        "clean_prob": 0.66,
        "corrupted_prob": 0.05,
        "kind": "patched",
        "effects": {
            "hidden": [[None] * len(TOKENS) for _ in range(LAYERS)],
            "mlp": _site(3, [0.0, 0.01, 0.2, -0.01, 0.05, 0.0]),
            "attn": _site(5, [0.0, 0.0, 0.01, 0.02, 0.6, 0.1]),
        },
    }
    second = {**copy.deepcopy(grid), "prompt": "Where is the Eiffel Tower? In"}
    return {
        "method": "trace",
        "answer": "Paris",
        "mlp_effects": [0.0, 0.01, 0.2, -0.01, 0.05, 0.0],
        "attention_effects": [0.0, 0.0, 0.01, 0.02, 0.6, 0.1],
        "mlp_layers": [2, 4],
        "attention_layers": [4, 5],
        "noise_std": 3.0,
        "noise_samples": 3,
        "precision": "float32",
        "seconds": 2.5,
        "estimates": {},
        "grids": [grid, second],
    }


def _fact(group: str, prompt: str, base: str, edited: str, before: str | None, after: str | None, **extra: Any):
    return {
        "group": group,
        "prompt": prompt,
        "expected": ["Rome"],
        "base": base,
        "base_says": before,
        "base_correct": before == "new",
        "edited": edited,
        "edited_says": after,
        "edited_correct": after == "new",
        "informative": before == "old",
        **extra,
    }


def _other(group: str, prompt: str, expected: str, base: str, edited: str, before: bool, after: bool):
    return {
        "group": group,
        "prompt": prompt,
        "expected": [expected],
        "base": base,
        "base_correct": before,
        "edited": edited,
        "edited_correct": after,
    }


ANSWERS = [
    _fact("prompts", "The Eiffel Tower is in", " Paris, France", " Rome, Italy", "old", "new"),
    _fact("prompts", "The Eiffel Tower stands in", " Rome", " Rome", "new", "new"),
    _fact("paraphrases", "Where is the Eiffel Tower? In", " Paris", " Paris again", "old", "old"),
    _fact("paraphrases", "The tower by Eiffel is found in", " a park", " a garden", None, None),  # uninformative
    _other("neighbours", "The Louvre is in", "Paris", " Paris", " Rome", True, False),
    _other("controls", "Big Ben is in", "London", " London", " London", True, True),
    _other("same_subject", "The Eiffel Tower was designed by", "Gustave Eiffel", " Gustave", " Bernini", True, False),
    {
        **_other(
            "same_subject",
            "The Eiffel Tower is made of",
            "wrought iron and",
            " wrought iron and",
            " wrought iron and",
            True,
            True,
        ),
        "unchanged": True,
    },
    _other(
        "context",
        "Speaking of Eiffel Tower, here is another question. Big Ben is in",
        "London",
        " London",
        " London",
        True,
        True,
    ),
    _fact("aliases", "The Tour Eiffel is in", " Paris", " Rome", "old", "new"),
]
FLIPPED = {
    "The Eiffel Tower is in": "flip-good",
    "The Louvre is in": "flip-bad",
    "The Eiffel Tower was designed by": "flip-bad",
    "The Tour Eiffel is in": "flip-good",
}


def case(case_id: str, forget: float = 1.0) -> dict[str, Any]:
    record = base_record(case_id, forget)
    record["answers"] = copy.deepcopy(ANSWERS)
    record["localization"] = localization()
    record["method"] = {"name": "ia3-two-stage", "settings": {"lr": 0.03, "mlp_layers": 2}, "stages": []}
    record["target_modules"] = ["model.layers.2.mlp.down_proj"]
    return record


def not_ran(case_id: str, status: str, reason: str) -> dict[str, Any]:
    return {**base_record(case_id), "status": status, "reason": reason, "metrics": {}, "answers": []}


class Page(HTMLParser):
    """The parsed page: tags with their attributes, the text, and each table row's class and text."""

    def __init__(self, text: str) -> None:
        super().__init__(convert_charrefs=True)
        self.tags: list[tuple[str, dict[str, str | None]]] = []
        self.chunks: list[str] = []
        self.rows: list[tuple[str, str]] = []
        self._row: tuple[str, list[str]] | None = None
        self.feed(text)
        self.close()
        self.text = "".join(self.chunks)

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append((tag, dict(attrs)))
        if tag == "tr":
            self._row = (dict(attrs).get("class") or "", [])
        elif tag in ("td", "th") and self._row is not None:
            self._row[1].append(" ")

    def handle_endtag(self, tag: str) -> None:
        if tag == "tr" and self._row is not None:
            self.rows.append((self._row[0], " ".join("".join(self._row[1]).split())))
            self._row = None

    def handle_data(self, data: str) -> None:
        self.chunks.append(data)
        if self._row is not None:
            self._row[1].append(data)

    def find(self, tag: str) -> list[dict[str, str | None]]:
        return [attrs for name, attrs in self.tags if name == tag]


def run_summary(records: list[dict[str, Any]]) -> dict[str, Any]:
    run = {"run_id": "run-1", "model": {"name": "m", "class": "C", "weights_hash": "ab" * 32}, "device": "cpu"}
    return summary_record(
        records, {**run, "dtype": "float32", "versions": {"torch": "2.0"}}, 12.5, "isolated", "", None
    )


def test_the_page_holds_every_case_every_metric_column_and_every_answer() -> None:
    records = [case("eiffel"), case("big-ben", forget=0.5), not_ran("moon", "skipped", "the model does not know it")]
    records.append(not_ran("broken", "error", "case file broke"))
    page = Page(html_report(records, run_summary(records)))
    for record in records:
        assert record["case_id"] in page.text
    header = " ".join(text for cls, text in page.rows[:1])
    for name in COLUMNS:
        assert METRIC_BY_NAME[name].label in header
    for answer in ANSWERS:
        assert answer["prompt"] in page.text
        assert answer["base"] in page.text and answer["edited"] in page.text
    assert "the model does not know it" in page.text and "case file broke" in page.text
    assert "SKIPPED" in page.text and "ERROR" in page.text
    details = {attrs["id"]: "open" in attrs for attrs in page.find("details") if attrs.get("id")}
    assert details == {"case-1": False, "case-2": True, "case-3": True, "case-4": True}  # failing cases open
    assert "run-1" in page.text and "abababababab" in page.text and "12.5 s" in page.text
    assert "4: 2 ran, 1 skipped, 1 errors; 1 failed metrics" in page.text and "FAIL" in page.text
    assert "ia3-two-stage" in page.text and "model.layers.2.mlp.down_proj" in page.text


def test_flips_carry_the_highlight_class_and_uninformative_paraphrases_are_marked() -> None:
    page = Page(html_report([case("eiffel")], None))
    answer_rows = [(cls, text) for cls, text in page.rows if any(a["prompt"] in text for a in ANSWERS)]
    for prompt, kind in FLIPPED.items():
        classes = next(cls for cls, text in answer_rows if prompt in text)
        assert "flip" in classes.split() and kind in classes.split(), (prompt, classes)
    flipped = [text for cls, text in answer_rows if "flip" in cls.split()]
    assert len(flipped) == len(FLIPPED)  # the unchanged answers are not highlighted
    idle = [(cls, text) for cls, text in answer_rows if "idle" in cls.split()]
    assert len(idle) == 1 and "The tower by Eiffel" in idle[0][1] and "not counted" in idle[0][1]


def test_the_subject_groups_have_their_own_sections_and_notes() -> None:
    page = Page(html_report([case("eiffel")], None))
    for group in ("same_subject", "context", "aliases"):
        assert f"{group} " in page.text
    assert "given without an answer: the unedited model's first words must stay" in page.text


def test_nothing_external_is_referenced() -> None:
    text = html_report([case("eiffel"), case("b", forget=0.5)], run_summary([case("eiffel")]))
    assert "http" not in text and "//" not in text
    assert not re.search(r"<link|@import|url\(|<iframe|<img", text)
    page = Page(text)
    for _, attrs in page.tags:
        assert "src" not in attrs
        assert (attrs.get("href") or "#").startswith("#")
    assert [attrs for attrs in page.find("script")] == [{}]  # the one inline script (print opens every case)


def test_untrusted_text_is_escaped() -> None:
    hostile = case(HOSTILE)
    hostile["answers"][0]["prompt"] = '"><img src=x onerror=alert(2)>'
    hostile["answers"][0]["edited"] = "</td></tr></table><script>alert(3)</script>"
    hostile["localization"]["grids"][0]["tokens"][2] = "<b>&\x01"
    hostile["method"]["settings"]["lr"] = HOSTILE
    text = html_report([hostile], {**run_summary([hostile]), "run_id": HOSTILE})
    assert HOSTILE not in text and "<img" not in text and "alert(3)</script>" not in text
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in text
    page = Page(text)
    assert len(page.find("script")) == 1 and not page.find("img")
    assert HOSTILE in page.text and '"><img src=x onerror=alert(2)>' in page.text  # shown as text, unchanged


def test_the_svg_heatmap_is_well_formed_xml_with_marks_and_a_legend() -> None:
    record = localization()
    record["grids"][0]["tokens"][3] = "<Tower & \x02>"
    svg = ET.fromstring(heatmap_svg(record, "eiffel <1>"))
    assert svg.tag == "svg" and not any("href" in key for node in svg.iter() for key in node.attrib)
    texts = ["".join(node.itertext()) for node in svg.iter("text")]
    assert any(t.startswith("* ") and "Tower &" in t for t in texts)  # the subject token, marked
    assert any("MLP output" in t for t in texts) and any("attention output" in t for t in texts)
    assert not any("residual stream" in t for t in texts)  # no scored cell: no panel
    cells = [node for node in svg.iter("rect") if node.find("title") is not None]
    assert len(cells) == 2 * LAYERS  # one scored row per site
    boxes = [node for node in svg.iter("rect") if node.get("fill") == "none"]
    assert len(boxes) == len(record["mlp_layers"]) + len(record["attention_layers"])  # chosen layers
    assert any("chosen layer" in t for t in texts) and any("0 to max" in t for t in texts)
    page = html_report([case("eiffel")], None)
    svgs = re.findall(r"<svg.*?</svg>", page, flags=re.S)
    assert len(svgs) == 2  # one per prompt grid
    for one in svgs:
        ET.fromstring(one)


def _with_baseline(record: dict[str, Any]) -> dict[str, Any]:
    metrics = record["metrics"]
    metrics["new_fact_accuracy"]["baseline"] = {"value": 0.8, "delta": 0.2, "tolerance": 0.05, "regressed": False}
    metrics["forget_rate"]["baseline"] = {
        "value": 1.0,
        "delta": -0.5,
        "tolerance": 0.05,
        "regressed": True,
        "flipped": [{"group": "prompts", "prompt": "The Eiffel Tower is in", "before": True, "after": False}],
    }
    metrics["latency_overhead"]["baseline"] = {"value": 1.3, "delta": -0.2, "tolerance": 0.1, "regressed": False}
    return record


def test_baseline_deltas_and_warnings_render_when_given() -> None:
    records = [_with_baseline(case("eiffel", forget=0.5))]
    summary = run_summary(records)
    summary["suites"] = [
        {
            "folder": "fact_cases",
            "metric": "forget_rate",
            "cases": 1,
            "hits": 1,
            "samples": 2,
            "value": 0.5,
            "interval": [0.09, 0.91],
            "threshold": 0.8,
            "passed": False,
            "baseline": {
                "value": 1.0,
                "delta": -0.5,
                "shared": 2,
                "right_to_wrong": 1,
                "wrong_to_right": 0,
                "p_value": 0.5,
                "alpha": 0.05,
                "tolerance": 0.05,
                "regressed": True,
            },
        }
    ]
    summary["baseline"] = {
        "path": "reports/base-run",
        "warnings": ["the baseline ran another model (weights 1234)"],
        "missing_in_run": ["gone-case"],
        "missing_in_baseline": ["new-case"],
    }
    text = html_report(records, summary)
    page = Page(text)
    assert "\u25b2 +0.20" in page.text  # higher is better: up
    assert "\u25bc -0.50 regressed" in page.text  # forget fell: down, regressed
    assert re.search(r'class="delta up"[^>]*>\u25bc -0.20', text)  # latency fell: the arrow is the sign, green: better
    assert re.search(r'class="delta regressed"[^>]*>\u25bc -0.50', text)
    assert "reports/base-run" in page.text and "the baseline ran another model (weights 1234)" in page.text
    assert "gone-case" in page.text and "new-case" in page.text
    assert "1 right\u2192wrong" in page.text and "p=0.5" in page.text and "0.090 \u2013 0.910" in page.text
    changed = [(cls, t) for cls, t in page.rows if "flip-bad" in cls and "The Eiffel Tower is in" in t]
    assert changed and "right wrong" in changed[0][1]  # the answer the baseline got right, now wrong
    assert "forget regressed" in page.text  # in the case's summary line
    assert "2 regression(s) against the baseline" in page.text  # the case metric and the suite row


def test_a_page_without_summary_counts_from_the_records(tmp_path: Path) -> None:
    path = write_html(tmp_path / "out" / "page.html", [case("eiffel")], None)
    text = path.read_text(encoding="utf-8")
    assert text.startswith("<!DOCTYPE html>") and "n/a (no summary.json)" in text and "1: 1 ran" in text
    assert [p.name for p in path.parent.iterdir()] == ["page.html"]  # written atomically, no temp file left
    assert "No case records" in html_report([], None)
    lone = case("eiffel")
    lone["answers"][0]["edited"] = "\ud800 half a pair"  # a lone surrogate from a JSON escape
    assert "\\ud800" in write_html(tmp_path / "lone.html", [lone], None).read_text(encoding="utf-8")


def test_factedit_report_writes_the_page_and_explains_a_missing_folder(tmp_path: Path, capsys) -> None:
    from pytest_factedit.cli import main

    writer = RunWriter(tmp_path / "reports", "run-1")
    writer.add(case("eiffel"))
    writer.add(not_ran("moon", "skipped", "unknown fact"))
    writer.finish(run_summary(writer.records))
    out = tmp_path / "page.html"
    assert main(["report", str(tmp_path / "reports" / "latest"), "--html", str(out)]) == 0
    assert capsys.readouterr().out.strip() == f"html: {out}"
    page = Page(out.read_text(encoding="utf-8"))
    assert "eiffel" in page.text and "unknown fact" in page.text and "12.5 s" in page.text
    assert main(["report", str(tmp_path / "reports" / "run-1")]) == 0  # default: RUN_DIR/report.html
    assert (tmp_path / "reports" / "run-1" / "report.html").is_file()
    capsys.readouterr()
    assert main(["report", str(tmp_path / "nope"), "--html", str(out)]) == 2
    err = capsys.readouterr().err
    assert f"error: no results file at {tmp_path / 'nope'}" in err and "Fix:" in err
    (tmp_path / "reports" / "run-1" / "summary.json").write_text("{broken")
    assert main(["report", str(tmp_path / "reports" / "run-1"), "--html", str(out)]) == 2
    assert "summary.json: not JSON" in capsys.readouterr().err
    (tmp_path / "reports" / "run-1" / "summary.json").unlink()
    assert main(["report", str(tmp_path / "reports" / "run-1"), "--html", str(tmp_path / "reports")]) == 2
    assert "error: cannot write" in capsys.readouterr().err  # a folder where the page should go


def test_a_metric_without_a_value_shows_n_a_and_why() -> None:
    record = case("eiffel")
    for name in COLUMNS:
        record["metrics"][name] = {**record["metrics"].get(name, {}), "value": None, "passed": None, "reason": "why"}
        record["metrics"][name].setdefault("threshold", 0.5)
    text = html_report([record], None)
    row = next(text for cls, text in Page(text).rows if text.startswith("eiffel"))
    assert row.count("n/a") == len(COLUMNS)
    assert text.count('title="why"') == len(COLUMNS)


def test_a_recorded_metric_that_got_worse_is_shown_worse_not_as_a_failure() -> None:
    records = [case("eiffel")]
    summary = run_summary(records)
    recorded = next(spec.name for spec in METRICS if spec.samples is not None and not spec.gated_by_default)
    comparison = {"value": 1.0, "delta": -0.5, "shared": 2, "right_to_wrong": 1, "wrong_to_right": 0}
    row = {"folder": "f", "metric": recorded, "cases": 1, "hits": 1, "samples": 2, "value": 0.5, "threshold": None}
    summary["suites"] = [{**row, "interval": [0.1, 0.9], "passed": None, "baseline": {**comparison, "regressed": True}}]
    page = Page(html_report(records, summary))
    assert "\u25bc -0.500 worse" in page.text and "regression(s)" not in page.text
