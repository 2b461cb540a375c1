"""A small static site to read the notebooks without running anything: the executed notebooks, the
README and the study (STUDY.md) as HTML (nbconvert), with an index page linking them.

    python -m dogo.site                        # site/ from notebooks/executed (smoke-executes missing ones)
    python -m dogo.site --executed DIR --site site --no-execute

``make docs`` runs the first form. The executed copies come from papermill (``dogo notebooks --smoke``
writes them to ``notebooks/executed``); the test suite's smoke runs leave theirs in
``test-artifacts/executed``, which CI passes with ``--executed`` so that the site costs no extra run.
Images in outputs are embedded in the pages (data URIs), so the folder can be copied anywhere.
"""

from __future__ import annotations

import argparse
import html
import shutil
import sys
from pathlib import Path

from .errors import DogoError
from .notebooks import NOTEBOOKS_DIR, list_notebooks

REPO = Path(__file__).resolve().parent.parent
README = REPO / "README.md"
STUDY = REPO / "STUDY.md"


def _title(nb) -> str:
    """The notebook's first Markdown heading, without the leading #'s."""
    for cell in nb.cells:
        if cell.cell_type == "markdown":
            for line in cell.source.splitlines():
                if line.startswith("#"):
                    return line.lstrip("#").strip()
    return ""


def _exporter():
    from nbconvert import HTMLExporter

    exporter = HTMLExporter(template_name="lab")
    exporter.exclude_input_prompt = False
    return exporter


# The Markdown documents of the site: file name -> (page, title). Links between them point to the pages.
DOCUMENTS = {"README.md": ("readme.html", "README"), "STUDY.md": ("study.html", "The study, grid by grid")}


def _page_of(document: Path) -> tuple[str, str]:
    """The page name and title of a Markdown document."""
    return DOCUMENTS.get(document.name, (document.with_suffix(".html").name.lower(), document.stem))


def render_markdown(document: str | Path, site: Path) -> Path:
    """A Markdown document (README.md, STUDY.md) as its page in ``site`` (one Markdown cell through
    nbconvert); links to the other documents point to their pages, and the figures it shows are copied
    next to it, so the relative links keep working."""
    import nbformat
    from nbformat.v4 import new_markdown_cell, new_notebook

    document = Path(document)
    page, title = _page_of(document)
    text = document.read_text()
    for other, (other_page, _) in DOCUMENTS.items():
        text = text.replace(f"]({other})", f"]({other_page})")
    nb = new_notebook(cells=[new_markdown_cell(text)])
    nb.metadata["title"] = f"dogo: {title}"
    body, _ = _exporter().from_notebook_node(nbformat.from_dict(nb))
    out = site / page
    out.write_text(body)
    figures = document.parent / "figures"
    if figures.is_dir():
        for image in figures.glob("*.png"):
            if f"figures/{image.name}" in text:
                (site / "figures").mkdir(exist_ok=True)
                shutil.copyfile(image, site / "figures" / image.name)
    return out


def build_site(executed_dir: str | Path, site_dir: str | Path = REPO / "site", readme: str | Path = README,
               notebooks_dir: str | Path = NOTEBOOKS_DIR, study: str | Path | None = STUDY) -> Path:
    """Render every numbered notebook of ``notebooks_dir``, as executed in ``executed_dir``, the README and
    the study (``study``; None: no study page) into ``site_dir`` with an ``index.html``; returns the
    index's path.

    A notebook without an executed copy raises ``DogoError`` naming it (a site with a page missing, or a
    page without outputs, would look complete and is not).
    """
    import nbformat

    executed_dir, site = Path(executed_dir), Path(site_dir)
    names = [p.name for p in list_notebooks(notebooks_dir)]
    missing = [name for name in names if not (executed_dir / name).is_file()]
    if missing:
        raise DogoError(f"no executed copy of {', '.join(missing)} in {executed_dir}; run "
                        f"`dogo notebooks --smoke --output-dir {executed_dir}` first (or python -m dogo.site without "
                        "--no-execute)")
    if site.exists():
        shutil.rmtree(site)
    site.mkdir(parents=True)
    exporter = _exporter()
    entries = []
    for name in names:
        nb = nbformat.read(executed_dir / name, as_version=4)
        body, _ = exporter.from_notebook_node(nb)
        page = Path(name).with_suffix(".html").name
        (site / page).write_text(body)
        entries.append((page, name, _title(nb)))
    documents = [Path(readme)] + ([Path(study)] if study is not None else [])
    links = []
    for document in documents:
        render_markdown(document, site)
        page, title = _page_of(document)
        links.append(f'<a href="{html.escape(page)}">{html.escape(title)}</a>')
    items = "\n".join(f'    <li class="notebook"><a href="{html.escape(page)}">{html.escape(title or name)}</a>'
                      f' <code>{html.escape(name)}</code></li>' for page, name, title in entries)
    index = site / "index.html"
    index.write_text(f"""<!DOCTYPE html>
<html lang="en">
<head><meta charset="utf-8"><title>dogo: Distill on the Go, notebooks</title>
<style>body {{ font-family: sans-serif; max-width: 50em; margin: 2em auto; line-height: 1.5; }}</style></head>
<body>
  <h1>dogo: Distill on the Go</h1>
  <p>The kit's notebooks, executed at reduced settings (SMOKE) so that they can be read without running
  anything; the numbers in them come from short runs and mean little. Run them yourself for real results.</p>
  <p>{" · ".join(links)}</p>
  <ol id="notebooks">
{items}
  </ol>
</body>
</html>
""")
    return index


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m dogo.site", description=__doc__.splitlines()[0])
    parser.add_argument("--executed", default=str(REPO / "notebooks" / "executed"),
                        help="folder of executed notebooks (default: notebooks/executed)")
    parser.add_argument("--site", default=str(REPO / "site"), help="output folder (default: site/)")
    parser.add_argument("--no-execute", action="store_true",
                        help="fail on missing executed copies instead of smoke-executing them")
    args = parser.parse_args(argv)
    executed = Path(args.executed)
    if not args.no_execute:
        from .notebooks import run_notebooks

        missing = [p.name for p in list_notebooks() if not (executed / p.name).is_file()]
        if missing:
            run_notebooks([Path(m).stem for m in missing], smoke=True, output_dir=executed)
    try:
        index = build_site(executed, args.site)
    except DogoError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(f"site: {index}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
