"""robust-transfer demo --quick: the whole story end to end, its report in a real browser, and resuming."""

import base64
import csv
import json
import os
import re
import shutil

import pytest

from cli.main import main


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    out = tmp_path_factory.mktemp("demo") / "demo"
    assert main(["demo", "--quick", "--out", str(out), "--device", "cpu", "--no-progress"]) == 0
    return out


def _csv(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def test_the_demo_writes_the_report_from_the_commands_own_files(demo):
    results = json.loads((demo / "results.json").read_text())
    assert results["tables"]["table5"] == _csv(demo / "summary" / "table5.csv")
    assert results["tables"]["paired"] == _csv(demo / "summary" / "paired.csv")
    assert {r["source"] for r in results["tables"]["table5"]} == {"mnist5k-natural", "mnist5k-l2"}
    study = json.loads((demo / "influence" / "study.json").read_text())
    assert results["influence"]["study"]["differences"] == study["differences"]
    assert len(study["seeds"]) == 2 and study["settings"][0].startswith("rcond=paper")
    for source, val in results["influence"]["validation"].items():
        assert val == {k: json.loads((demo / "validate" / source / "validate.json").read_text())[k]
                       for k in ("refit", "settings")}  # fmt: skip
    assert results["features"]["featviz"] == _csv(demo / "featviz" / "featviz.csv")
    assert results["commands"][0].startswith("robust-transfer demo --out")
    assert any(c.startswith("robust-transfer sweep ") for c in results["commands"])
    assert any(c.startswith("robust-transfer influence-study ") for c in results["commands"])
    assert results["readings"] and any("minus" in line for line in results["readings"])
    # the methods stage: EK-FAC over the trainable block beside the head, each with its LDS from the same retrainings
    methods = results["methods"]
    ekfac = json.loads((demo / "methods" / "ekfac" / "study.json").read_text())
    assert methods["studies"]["ekfac"]["differences"] == ekfac["differences"] and ekfac["config"]["method"] == "ekfac"
    lds = json.loads((demo / "methods" / "lds" / "validate.json").read_text())["lds"]
    assert methods["lds"]["scores"] == lds["scores"] and {r["method"] for r in lds["scores"]} >= {"ekfac"}
    assert sum("Which attribution to believe" in line for line in results["readings"]) == len(lds["scores"])
    summary = (demo / "summary.md").read_text()  # the Markdown summary has the methods table too
    label = methods["labels"]["ekfac"]  # the quick demo's EK-FAC samples its Fisher's labels, and says so
    assert label.startswith("EK-FAC (MC Fisher") and ekfac["config"]["options"]["fisher"] == "mc"
    assert summary.count(f"| {label} |") == len(ekfac["settings"]) and "LDS [95% CI]" in summary
    # each head row's agreement with the head's exact cut-off (1 at that cut-off itself); none for the block's in the
    # quick demo (its exact GGN is not computed there) or for an ensemble
    head_rows = [r for r in lds["scores"] if r["params"] == "head"]
    assert head_rows and all(r["agreement"]["k"] == 10 for r in head_rows)
    assert [r["agreement"]["top_k_overlap"] for r in head_rows if "exact" in r["setting"]] == [1.0]
    assert all(r["agreement"] is None for r in lds["scores"] if r["params"] != "head")
    assert "top-10 overlap with the exact result" in summary and "not computed in the quick demo" in summary
    # the ground truth's repeats and ceiling, and the best single-model attribution ensembled over 2 models, scored on
    # the same retrainings
    assert lds["repeats"] == 2 and "ceiling" in lds["reliability"]
    ens = methods["ensembled"]
    best = max((r for r in lds["scores"] if r["ensemble"] == 1), key=lambda r: r["lds"])
    assert ens["models"] == 2 and ens["setting"] == best["setting"]
    assert [r["ensemble"] for r in lds["scores"]].count(2) == 1
    assert "ensemble of 2" in summary and "Validated attribution" in summary and "ceiling" in summary
    # which attribution is validated is named, with its setting and LDS, in the summary and the readings
    name = "head (closed form)" if ens["method"] == "head" else methods["labels"][ens["method"]]
    scored = next(r for r in lds["scores"] if r["ensemble"] == 2)
    said = f"{name}, ensemble of 2, {ens['setting']} (LDS {scored['lds']:+.3f} "
    assert f"Validated attribution: {said}" in summary
    assert any(line.startswith(f"Which attribution is validated: {said}") for line in results["readings"])
    page = (demo / "report.html").read_text()
    # self-contained: every figure the stages list is embedded, nothing is fetched
    figures = [p for stage in ("tables", "influence", "methods", "features") for p in results[stage]["figures"]]
    assert len(figures) >= 10
    embedded = re.findall(r'src="data:image/png;base64,([^"]+)"', page)
    assert len(embedded) == len(figures)
    assert {base64.b64decode(e)[:8] for e in embedded} == {b"\x89PNG\r\n\x1a\n"}
    assert not re.search(r"(src|href)=[\"']?(https?:)?//", page)
    for line in results["readings"]:
        assert line.replace("'", "&#x27;").replace(">", "&gt;") in page
    # the tables keep their CSVs' column order (the stage records are JSON with sorted keys), the interval merged
    # into one cell shown within 0-100% (the CSV keeps the raw t bounds)
    with open(demo / "summary" / "table5.csv", newline="") as f:
        rows = list(csv.reader(f))
    header = [c for c in rows[0] if c not in ("mean", "ci_low", "ci_high")] + ["accuracy % mean [95% CI]"]
    assert "<thead><tr>" + "".join(f"<th>{c}</th>" for c in header) + "</tr></thead>" in page
    table = page.split("Transfer accuracy")[1].split("</table>")[0]
    shown = re.findall(r"<td>(-?[0-9.]+) \[(-?[0-9.]+), (-?[0-9.]+)\]</td>", table)
    assert all(0 <= float(lo) <= float(m) <= float(hi) <= 100 for m, lo, hi in shown)
    # the quick demo has 2 seeds per cell: no t interval is shown over so few, and the page says why
    assert len(re.findall(r"<td>[0-9.]+ \(2 seeds: too few for an interval\)</td>", table)) == len(rows) - 1
    cut_offs = summary.split("| influence cut-off")[1].split("\n\n")[0]
    assert "(2 seeds: too few for an interval)" in cut_offs and "[" not in cut_offs.split("|---|---|")[1]


def test_a_rerun_keeps_finished_stages_and_redoes_the_missing_one(demo):
    kept = {p.name: p.stat().st_mtime_ns for p in (demo / "stages").glob("*.json")}
    summary = (demo / "summary.md").read_text()
    assert set(kept) == {"transfer.json", "tables.json", "influence.json", "methods.json", "features.json"}
    (demo / "stages" / "features.json").unlink()  # as if killed during the features stage
    shutil.rmtree(demo / "featviz")
    assert main(["demo", "--quick", "--out", str(demo), "--device", "cpu", "--no-progress"]) == 0
    now = {p.name: p.stat().st_mtime_ns for p in (demo / "stages").glob("*.json")}
    assert {k: now[k] for k in kept if k != "features.json"} == {k: v for k, v in kept.items() if k != "features.json"}
    assert (demo / "featviz" / "featviz.png").exists() and "features.json" in now
    # the kept stages, read back from their records (JSON with sorted keys), give the same summary
    assert (demo / "summary.md").read_text() == summary
    # the total counts every stage, each from the invocation that ran it, not the last invocation's alone
    seconds = json.loads((demo / "results.json").read_text())["seconds"]
    assert seconds["total"] == pytest.approx(sum(v for k, v in seconds.items() if k not in ("total", "report")))
    assert seconds["total"] > seconds["features"] + seconds["transfer"]


def _browser():
    """A headless Chromium through Selenium, or a skip where the machine lacks one (CI requires it)."""
    required = os.environ.get("REQUIRE_BROWSER") == "1"
    try:
        from selenium import webdriver
        from selenium.webdriver.chrome.service import Service
    except ImportError:
        if required:
            raise
        pytest.skip("selenium is not installed")
    binary, driver = shutil.which("chromium"), shutil.which("chromedriver")
    if not (binary and driver):
        if required:
            pytest.fail("REQUIRE_BROWSER=1 but chromium or chromedriver is missing")
        pytest.skip("chromium and chromedriver are not installed (apt-get install chromium chromium-driver)")
    opts = webdriver.ChromeOptions()
    opts.binary_location = binary
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--window-size=1200,900"):
        opts.add_argument(arg)
    opts.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    return webdriver.Chrome(service=Service(driver), options=opts)


def test_the_report_renders_in_a_real_browser(demo):
    browser = _browser()
    try:
        browser.get((demo / "report.html").resolve().as_uri())
        images = browser.execute_script(
            "return Array.from(document.images).map(i => [i.alt, i.complete, i.naturalWidth]);"
        )
        assert len(images) >= 10
        assert all(complete and width > 0 for _, complete, width in images), images
        rows = browser.execute_script(
            "return Array.from(document.querySelectorAll('table')).map(t => t.querySelectorAll('tbody tr').length);"
        )
        assert rows and min(rows) > 0
        errors = [e for e in browser.get_log("browser") if e["level"] == "SEVERE"]
        assert errors == []
        height = browser.execute_script("return document.body.scrollHeight;")
        browser.set_window_size(1200, min(height, 16000))
        assert browser.save_screenshot(str(demo / "report.png"))
        assert (demo / "report.png").stat().st_size > 10_000
    finally:
        browser.quit()


def test_the_demo_refuses_a_directory_holding_a_users_file(tmp_path, capsys):
    out = tmp_path / "mine"
    out.mkdir()
    (out / "thesis.txt").write_text("precious")
    assert main(["demo", "--quick", "--out", str(out), "--device", "cpu", "--no-progress"]) == 2
    assert "holds files that are not robust-transfer's demo (thesis.txt)" in capsys.readouterr().err
    assert sorted(p.name for p in out.iterdir()) == ["thesis.txt"]


def test_a_failed_stage_is_reported_with_its_cause_and_not_recorded_as_done(tmp_path, capsys):
    from study.demo.stages import DEMO_FILES
    from transfer.files import OutputDir, name_patterns

    out = tmp_path / "demo"
    with OutputDir(out, "demo", name_patterns(*DEMO_FILES)):
        (out / "sweep").mkdir()
        (out / "sweep" / "notes.txt").write_text("in the sweep's way")
    assert main(["demo", "--quick", "--out", str(out), "--device", "cpu", "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert "demo stage transfer" in err and "holds files that are not robust-transfer's sweep (notes.txt)" in err
    assert not (out / "stages" / "transfer.json").exists()
