"""Local Sphinx extension: the "Open in Colab" badge of a notebook stays out of the web book.

Each chapter notebook carries the badge under its title (written by
``python -m adcourse.notebooks headers`` from ``_config.yml``), for readers who meet the notebook
on GitHub or in Jupyter. In the book, the launch button (rocket) at the top of every chapter opens
the same Colab address, and the badge's picture would be fetched from Google's servers, which a
book read offline cannot reach. So the badge is removed from the pages, and nothing else.
"""

from __future__ import annotations

from docutils import nodes
from sphinx.application import Sphinx
from sphinx.transforms import SphinxTransform

COLAB_NOTEBOOK_PREFIX = "https://colab.research.google.com/github/"


class RemoveColabBadge(SphinxTransform):
    """Drop each link to a notebook on Colab whose only content is an image (the badge)."""

    default_priority = 500

    def apply(self, **kwargs) -> None:
        for link in list(self.document.findall(nodes.reference)):
            if not str(link.get("refuri", "")).startswith(COLAB_NOTEBOOK_PREFIX):
                continue
            if len(link.children) != 1 or not isinstance(link.children[0], nodes.image):
                continue
            paragraph = link.parent
            paragraph.remove(link)
            if isinstance(paragraph, nodes.paragraph) and not paragraph.astext().strip():
                paragraph.parent.remove(paragraph)


def setup(app: Sphinx) -> dict:
    app.add_transform(RemoveColabBadge)
    return {"parallel_read_safe": True, "parallel_write_safe": True}
