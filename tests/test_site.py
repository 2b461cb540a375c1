"""The static site (``make docs``): executed notebooks and the README rendered with nbconvert, an index
linking the six notebooks. A fast test renders small stand-in notebooks; the browser test opens the real
site, built from the executed copies the notebook smoke tests leave in ``test-artifacts/executed`` (the
missing ones are executed here), in chromium."""

from __future__ import annotations

import base64
import os
from pathlib import Path

import nbformat
import pytest
from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook, new_output

from dogo.errors import DogoError
from dogo.notebooks import list_notebooks, run_notebooks
from dogo.site import build_site

from .helpers import REPO

# A 1x1 PNG, the smallest image output.
PNG = base64.b64encode(bytes.fromhex(
    "89504e470d0a1a0a0000000d4948445200000001000000010806000000"
    "1f15c4890000000d49444154789c6360000002000154a24f5d0000000049454e44ae426082"
)).decode()
ARTIFACTS = Path(os.environ.get("DOGO_ARTIFACTS") or REPO / "test-artifacts")
CHROMIUM = Path(os.environ.get("DOGO_CHROMIUM", "/usr/bin/chromium"))
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync"]


def _stand_ins(folder: Path, executed: Path, count: int = 6) -> None:
    folder.mkdir()
    executed.mkdir()
    for i in range(1, count + 1):
        image = new_output("display_data", data={"image/png": PNG, "text/plain": "<Figure>"})
        cell = new_code_cell("plot()", outputs=[image])
        nb = new_notebook(cells=[new_markdown_cell(f"# {i:02d} · Title {i}\n\ntext"), cell])
        nbformat.write(nb, folder / f"{i:02d}_part_{i}.ipynb")
        nbformat.write(nb, executed / f"{i:02d}_part_{i}.ipynb")


def test_site_links_every_notebook_and_the_readme(tmp_path):
    _stand_ins(tmp_path / "nb", tmp_path / "executed")
    readme = tmp_path / "README.md"
    readme.write_text("# The kit\n\n![result](figures/r.png)\n\nThe study: [STUDY.md](STUDY.md).\n")
    study = tmp_path / "STUDY.md"
    study.write_text("# The study\n\n![grid](figures/g.png)\n")
    (tmp_path / "figures").mkdir()
    for image in ("r.png", "g.png", "unused.png"):
        (tmp_path / "figures" / image).write_bytes(base64.b64decode(PNG))
    index = build_site(tmp_path / "executed", tmp_path / "site", readme, tmp_path / "nb", study)
    text = index.read_text()
    assert text.count('<li class="notebook">') == 6 and 'href="03_part_3.html">03 · Title 3</a>' in text
    assert 'href="readme.html">README</a>' in text and 'href="study.html">The study, grid by grid</a>' in text
    assert 'href="study.html"' in (tmp_path / "site" / "readme.html").read_text()  # the link follows the page
    assert "The study" in (tmp_path / "site" / "study.html").read_text()
    assert sorted(p.name for p in (tmp_path / "site" / "figures").iterdir()) == ["g.png", "r.png"]
    page = (tmp_path / "site" / "03_part_3.html").read_text()
    assert f"data:image/png;base64,{PNG}" in page  # the output image is embedded
    assert "The kit" in (tmp_path / "site" / "readme.html").read_text()
    assert (tmp_path / "site" / "figures" / "r.png").is_file()


def test_missing_executed_copies_are_named(tmp_path):
    _stand_ins(tmp_path / "nb", tmp_path / "executed")
    (tmp_path / "executed" / "05_part_5.ipynb").unlink()
    with pytest.raises(DogoError, match="no executed copy of 05_part_5.ipynb"):
        build_site(tmp_path / "executed", tmp_path / "site", REPO / "README.md", tmp_path / "nb")


@pytest.mark.browser
@pytest.mark.slow
def test_site_in_chromium(tmp_path):
    if not CHROMIUM.exists():
        pytest.fail(f"{CHROMIUM} is missing") if os.environ.get("CI") else pytest.skip(f"{CHROMIUM} is missing")
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        pytest.fail("playwright is missing") if os.environ.get("CI") else pytest.skip("playwright is missing")
    executed = ARTIFACTS / "executed"
    missing = [p.stem for p in list_notebooks() if not (executed / p.name).is_file()]
    if missing:  # not left by the notebook tests of this session: execute them now
        run_notebooks(missing, smoke=True, output_dir=executed, timeout=600,
                      parameters={"OUTPUT_DIR": str(tmp_path / "runs"), "FIGURES_DIR": str(tmp_path / "figures")})
    site = ARTIFACTS / "site"
    index = build_site(executed, site)
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1300, "height": 1000})
            page.goto(index.as_uri())
            links = page.locator("#notebooks li.notebook a")
            assert links.count() == 6
            assert [h.split(".")[0][:2] for h in links.evaluate_all("els => els.map(e => e.getAttribute('href'))")] == \
                [f"{i:02d}" for i in range(1, 7)]
            links.nth(1).click()  # notebook 02
            page.wait_for_load_state("load")
            assert "SimCLR" in page.title() or "SimCLR" in page.locator("h1").first.inner_text()
            images = page.locator(".jp-OutputArea-output img")
            assert images.count() > 0
            loaded = images.evaluate_all("els => els.filter(e => e.complete && e.naturalWidth > 0).length")
            assert loaded > 0, "no output image rendered"
            page.screenshot(path=str(ARTIFACTS / "site_notebook_02.png"))
            page.goto((site / "readme.html").as_uri())
            assert "Distill on the Go" in page.locator("body").inner_text()
            page.locator("a[href='study.html']").first.click()  # the README's link to the study
            page.wait_for_load_state("load")
            assert "grid by grid" in page.locator("h1").first.inner_text()
            figures = page.locator("img[src^='figures/']")
            assert figures.count() > 0
            assert figures.evaluate_all("els => els.every(e => e.complete && e.naturalWidth > 0)"), \
                "a study figure did not load"
        finally:
            browser.close()
