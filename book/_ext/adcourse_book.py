"""Local Sphinx extension for the adcourse book (loaded through ``_config.yml``).

Two jobs, both about exercise solutions:

* ``ADCOURSE_HIDE_SOLUTIONS=1`` in the environment turns on sphinx-exercise's ``hide_solutions``,
  so one ``_config.yml`` builds both the full book and the book without solutions::

      ADCOURSE_HIDE_SOLUTIONS=1 jupyter-book build . -W -n --keep-going --path-output _build/nosolutions

* Code cells tagged ``solution`` (the code between ``# BEGIN SOLUTION`` and ``# END SOLUTION``)
  are folded behind a "Show solution" toggle in the full book, and removed from the page when
  solutions are hidden.

And one repair: with jupyter-book 1.0.4 on Sphinx 7.4, inline scripts added by extensions
(sphinx-thebe's ``const THEBE_JS_URL = ...``, sphinx-togglebutton's selector) appear two or
three times in every page, and the repeated ``const`` is a JavaScript SyntaxError in the
browser console. Each page's script and style lists are de-duplicated, keeping the order.
"""

from __future__ import annotations

import os

from docutils import nodes
from sphinx.application import Sphinx
from sphinx.config import Config
from sphinx.transforms import SphinxTransform

ENV_VAR = "ADCOURSE_HIDE_SOLUTIONS"
SOLUTION_TAG_CLASS = "tag_solution"


def _env_says_hide() -> bool:
    return os.environ.get(ENV_VAR, "").strip().lower() in {"1", "true", "yes", "on"}


def _apply_env_switch(app: Sphinx, config: Config) -> None:
    if _env_says_hide():
        # "env" rebuild value: Sphinx notices the change and re-reads every page.
        config.hide_solutions = True


class SolutionCodeCells(SphinxTransform):
    """Fold (or, with hidden solutions, drop) notebook code cells tagged ``solution``."""

    default_priority = 500

    def apply(self, **kwargs) -> None:
        hide = bool(self.config.hide_solutions)
        for node in list(self.document.findall(nodes.container)):
            if node.get("nb_element") != "cell_code":
                continue
            if SOLUTION_TAG_CLASS not in node.get("classes", []):
                continue
            if hide:
                node.parent.remove(node)
            else:
                node["hide_mode"] = "all"
                node["prompt_show"] = "Show solution"
                node["prompt_hide"] = "Hide solution"


def _asset_key(item):
    """Identity of a script/style entry; ``None`` and ``""`` both mean an inline body."""
    attributes = getattr(item, "attributes", None)
    if attributes is None:
        return ("other", str(item))
    return (
        str(getattr(item, "filename", None) or ""),
        getattr(item, "priority", None),
        tuple(sorted((str(k), str(v)) for k, v in attributes.items())),
    )


def _dedupe(items: list) -> list:
    seen, unique = set(), []
    for item in items:
        key = _asset_key(item)
        if key not in seen:
            seen.add(key)
            unique.append(item)
    return unique


def _dedupe_assets(app: Sphinx, pagename: str, templatename: str, context: dict, doctree) -> None:
    for key in ("script_files", "css_files"):
        if isinstance(context.get(key), list):
            context[key] = _dedupe(context[key])


def setup(app: Sphinx) -> dict:
    app.connect("config-inited", _apply_env_switch, priority=900)
    app.connect("html-page-context", _dedupe_assets, priority=1000)
    app.add_transform(SolutionCodeCells)
    return {"version": "0.1", "parallel_read_safe": True, "parallel_write_safe": True}
