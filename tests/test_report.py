"""The HTML report: its sections, its size, and that it renders in headless Chromium with the network off."""

from __future__ import annotations

import html
import os
import re
import shutil
import time
from pathlib import Path

import pytest

import tl_submodels as tls

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
CHROMEDRIVER = shutil.which("chromedriver")
SECTIONS = ["card", "scores", "submodels", "usage", "trace", "attention", "graph", "about"]


@pytest.fixture(scope="module")
def induction_report(tmp_path_factory):
    model = tls.zoo.load("induction-2l")
    task = tls.zoo.task("induction-2l", "induction", n=32)
    rep = tls.report(model, [task], card="induction-2l")
    return rep, rep.save(tmp_path_factory.mktemp("report") / "induction-2l.html")


@pytest.fixture(scope="module")
def multitask_report(tmp_path_factory):
    name = "multitask-3l"
    model = tls.zoo.load(name)
    tasks = [tls.zoo.task(name, t, n=32) for t in tls.zoo.info(name)["tasks"] if t != "backdoor"]
    rep = tls.report(model, tasks, card=name)
    return rep, rep.save(tmp_path_factory.mktemp("report") / f"{name}.html")


def test_report_has_every_section_offline_and_small(induction_report, multitask_report):
    for rep, path in (induction_report, multitask_report):
        text = path.read_text(encoding="utf-8")
        assert [k for k, _, _ in rep.sections] == SECTIONS
        for key in SECTIONS:
            assert f"data-section='{key}'" in text
        assert path.stat().st_size < 15e6
        # nothing is fetched: no script, module import or stylesheet from anywhere but this file (the inlined
        # bundles mention URLs in strings, so look for the loading constructs)
        for loader in ("<script src", 'from "http', "<link", "@import"):
            assert loader not in text, loader
        assert text.count("CircuitsVis.render(") >= 2  # usage tokens + at least one attention view


def test_the_default_report_of_several_tasks_shows_specific_parts(multitask_report):
    """Issue 19: one circuit per task held MLP0-MLP2 whole on multitask-3l, so every part's ablation took
    0.86-0.92 of another task's accuracy; the default is now factorize's specific parts, said on the page."""
    rep, _ = multitask_report
    assert rep.title == "tl_submodels report: multitask-3l on induction, successor, addition, majority"
    section = dict((k, body) for k, _, body in rep.sections)["submodels"]
    assert "tls.factorize" in section and "Read them together" in section
    table = section[section.index("<table") : section.index("</table>")]
    header = re.findall(r"<th>(.*?)</th>", table)
    rows = [re.findall(r"<td>(.*?)</td>", row) for row in re.findall(r"<tr>(.*?)</tr>", table, re.S)]
    rows = [r for r in rows if r]
    elsewhere = [float(r[header.index("largest drop elsewhere")]) for r in rows]
    assert len(rows) >= 4 and max(elsewhere) <= 0.2, list(zip([r[0] for r in rows], elsewhere, strict=True))
    assert not any("MLP" in r[header.index("components")] for r in rows)  # heads and neurons, no whole layers


@pytest.fixture(scope="module")
def induction_decomposition():
    model = tls.zoo.load("induction-2l")
    return model, tls.decompose(model, tls.zoo.corpus("induction-2l", n=16), method="ablation", k=1)


def _offline(text: str) -> None:
    # nothing is fetched: no script, module import or stylesheet from anywhere but this file (the inlined
    # bundles mention URLs in strings, so look for the loading constructs)
    for loader in ("<script src", 'from "http', "<link", "@import"):
        assert loader not in text, loader


def test_report_shows_a_decomposition_alone_and_beside_tasks(induction_decomposition, tmp_path):
    model, dec = induction_decomposition
    rep = tls.report(model, [], decomposition=dec.rename({"part-0": "induction"}), card="induction-2l")
    assert [k for k, _, _ in rep.sections] == ["card", "decomposition", "about"]
    text = rep.save(tmp_path / "parts.html").read_text(encoding="utf-8")
    _offline(text)
    section = dict((k, body) for k, _, body in rep.sections)["decomposition"]
    assert "data-section='decomposition'" in text and section in text
    ev = dec.evaluations[0]
    assert "<h3>induction</h3>" in section and html.escape(dec.labels[0]) in section
    for ctx in dec.top_contexts(0, 5):
        assert f"<code>{html.escape(str(ctx))}</code>" in section
    assert section.count("<li><code>") == 5
    # the evaluation numbers as the table prints them, the core, and the legend of values outside [0, 1]
    for value in (ev.faithfulness, ev.core_necessity, ev.necessity_elsewhere, ev.loss_increase, ev.accuracy_drop):
        assert f"<td>{value:.3f}</td>" in section, value
    assert f"<td>{len(dec.parts[0])}</td>" in section
    assert " ".join(str(c) for c in dec.cores[0]) in section
    assert "above 1 the part alone does better" in section and "negative where ablating" in section
    assert section.count('class="plotly-graph-div"') == 1  # the usage heat map

    task = tls.zoo.task("induction-2l", "induction", n=8)
    # beside tasks, and its parts as the sub-models evaluated on them (a Decomposition is no Factorization)
    both = tls.report(model, [task], parts=dec, decomposition=dec)
    assert [k for k, _, _ in both.sections] == ["card", "decomposition", *SECTIONS[1:]]
    assert f"<td>{ev.loss_increase:.3f}</td>" in both.html
    assert "<td>part-0</td>" in dict((k, body) for k, _, body in both.sections)["submodels"]


def test_report_traces_its_prompt_and_shows_the_traces_given(induction_report, induction_decomposition):
    rep, _ = induction_report
    section = dict((k, body) for k, _, body in rep.sections)["trace"]
    assert section.count('class="plotly-graph-div"') == 1 and "instead" in section and "nats" in section
    # the report's own trace: the first clean prompt (32 tokens, n_ctx 40), 8 generated tokens
    assert section.count("<tr") == 9  # a header and 8 steps

    model, dec = induction_decomposition
    ref = tls.zoo.corpus("induction-2l", n=16)
    prompt = ref[0, :20]
    tr = tls.trace(model, prompt, dec.parts, max_new_tokens=4, reference=ref)
    rerun = tr.rerun(ablate=[dec.parts[0].name])
    alone = tls.report(model, [], decomposition=dec, traces=[tr, rerun])
    assert [k for k, _, _ in alone.sections] == ["card", "decomposition", "trace", "about"]
    section = dict((k, body) for k, _, body in alone.sections)["trace"]
    assert section.count('class="plotly-graph-div"') == 2
    assert html.escape(tr.text) in section and html.escape(rerun.text) in section
    at = rerun.departs_at()
    assert ("the same decision" if at is None else f"departs from the original at step {at}") in section


@pytest.mark.ill_typed
def test_report_refuses_what_is_not_a_trace(induction_decomposition):
    """Run without the run-time type checker: report's own message."""
    model, dec = induction_decomposition
    tr = tls.trace(model, [0, 5, 6, 7], dec.parts, max_new_tokens=1, ablation="zero")
    with pytest.raises(tls.TLSubmodelsError, match="traces= takes Trace objects"):
        tls.report(model, [], decomposition=dec, traces=[tr.to_dict()])  # type: ignore[list-item]


def test_report_refuses_a_wrong_decomposition(induction_decomposition):
    model, dec = induction_decomposition
    with pytest.raises(tls.TLSubmodelsError, match="no tasks were given"):
        tls.report(model, [], decomposition=dec, parts=dec.parts)
    other = tls.zoo.load("multitask-3l")
    with pytest.raises(tls.TLSubmodelsError, match="computed on a model of shape"):
        tls.report(other, [], decomposition=dec)


@pytest.mark.ill_typed
def test_report_refuses_a_list_as_a_decomposition(induction_decomposition):
    """Run without the run-time type checker (``make test`` runs ill_typed tests apart): report's own message."""
    model, dec = induction_decomposition
    task = tls.zoo.task("induction-2l", "induction", n=8)
    with pytest.raises(
        tls.TLSubmodelsError, match=r"takes a Decomposition from tls.decompose\(model, corpus\); got list"
    ):
        tls.report(model, [task], decomposition=dec.parts)  # type: ignore[arg-type]


def test_report_refuses_bad_input():
    model = tls.zoo.load("induction-2l")
    task = tls.zoo.task("induction-2l", "induction", n=8)
    with pytest.raises(tls.TLSubmodelsError, match="'mean' or 'zero'"):
        tls.report(model, [task], ablation="resample")  # type: ignore[arg-type]
    with pytest.raises(tls.TLSubmodelsError, match="no tasks given"):
        tls.report(model, [])
    with pytest.raises(tls.TLSubmodelsError, match="MLP"):
        tls.report(model, [task], parts=[tls.SubModel(components=["MLP0"], name="m")])


def _browser():
    if not (CHROMIUM and CHROMEDRIVER):
        pytest.skip(
            "Chromium/ChromeDriver not found: install Debian's chromium and chromium-driver "
            "(`make browser` does it where apt-get works) to run the report browser test"
        )
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    opts = webdriver.ChromeOptions()
    opts.binary_location = CHROMIUM
    for arg in (
        "--headless=new",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-dev-shm-usage",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--no-first-run",
        "--window-size=1280,2000",
        # network off: every host resolves to nothing and every request goes to a dead proxy
        "--host-resolver-rules=MAP * ~NOTFOUND",
        "--proxy-server=http://127.0.0.1:9",
    ):
        opts.add_argument(arg)
    opts.set_capability("goog:loggingPrefs", {"browser": "ALL", "performance": "ALL"})
    driver = webdriver.Chrome(service=Service(executable_path=CHROMEDRIVER), options=opts)
    driver.execute_cdp_cmd("Network.enable", {})
    driver.execute_cdp_cmd(
        "Network.emulateNetworkConditions",
        {"offline": True, "latency": 0, "downloadThroughput": 0, "uploadThroughput": 0},
    )
    return driver


@pytest.mark.parametrize("which", ["induction_report", "multitask_report"])
def test_report_renders_in_headless_chromium_with_network_off(which, request, tmp_path):
    rep, path = request.getfixturevalue(which)
    driver = _browser()
    try:
        driver.get(path.resolve().as_uri())
        n_plots = sum(block.count('class="plotly-graph-div"') for _, _, block in rep.sections)
        n_views = sum(block.count("CircuitsVis.render(") for _, _, block in rep.sections)
        deadline = time.time() + 60
        while time.time() < deadline:
            drawn = driver.execute_script(
                "return [document.querySelectorAll('.plotly-graph-div .main-svg').length > 0 ?"
                " Array.from(document.querySelectorAll('.plotly-graph-div'))"
                ".filter(d => d.querySelector('.main-svg')).length : 0,"
                " Array.from(document.querySelectorAll('div[id^=circuits-vis-]'))"
                ".filter(d => d.childElementCount > 0).length]"
            )
            if drawn == [n_plots, n_views]:
                break
            time.sleep(0.5)
        assert n_plots >= 5 and n_views >= 2
        assert drawn == [n_plots, n_views], f"rendered [plots, circuitsvis views] {drawn} of {[n_plots, n_views]}"
        for key in SECTIONS:
            assert driver.find_elements("css selector", f"section[data-section='{key}'] h2")
        errors = [e for e in driver.get_log("browser") if e["level"] in ("SEVERE", "ERROR")]
        assert not errors, f"console errors: {errors}"
        requests = [
            e["message"] for e in driver.get_log("performance") if '"Network.requestWillBeSent"' in e["message"]
        ]
        remote = [m for m in requests if '"url":"http' in m]
        assert not remote, f"the report tried the network: {remote[:2]}"
        shot = tmp_path / f"{path.stem}.png"
        driver.save_screenshot(str(shot))
        assert shot.stat().st_size > 10_000
        if which == "multitask_report" and os.environ.get("TLS_UPDATE_SCREENSHOT"):
            dest = Path(__file__).resolve().parents[1] / "docs" / "report.png"
            dest.parent.mkdir(exist_ok=True)
            shutil.copy(shot, dest)
    finally:
        driver.quit()
