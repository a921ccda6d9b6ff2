"""Sphinx configuration of the refbilevel documentation.

Build::

    python -m sphinx -W -b html docs docs/_build/html -D plot_gallery=0

The build and the built pages work offline: the MathJax renderer comes from the
``sphinx-mathjax-offline`` package (an install requirement of the ``docs`` extra), which
copies MathJax into ``_static/mathjax`` of the output, and no page loads a script or a
stylesheet from the network (``tests/test_docs.py`` builds the pages and checks this).
"""

from __future__ import annotations

import importlib.util
import os
import re
import sys

sys.path.insert(0, os.path.abspath(".."))

import refbilevel  # noqa: E402

project = "refbilevel"
author = "The refbilevel developers"
copyright = "2026, The refbilevel developers"
version = release = refbilevel.__version__

extensions = [
    "sphinx.ext.autodoc",
    "sphinx.ext.autosummary",
    "sphinx.ext.mathjax",
    # MathJax bundled with the build (no CDN): sets ``mathjax_path`` to the local copy.
    "sphinx-mathjax-offline",
    "numpydoc",
]

# Optional extensions: used when installed, skipped otherwise (the build stays offline).
if importlib.util.find_spec("matplotlib") is not None:
    extensions.append("matplotlib.sphinxext.plot_directive")
if importlib.util.find_spec("sphinx_gallery") is not None and os.path.isdir(
        os.path.join(os.path.dirname(__file__), "..", "examples")):
    extensions.append("sphinx_gallery.gen_gallery")
    sphinx_gallery_conf = {
        "examples_dirs": "../examples",
        "gallery_dirs": "auto_examples",
        "ignore_pattern": r"_test\.py",
        "doc_module": "refbilevel",
        "backreferences_dir": "modules/generated",
    }


templates_path: list[str] = []
exclude_patterns = ["_build", "Thumbs.db", ".DS_Store", "auto_examples/*.ipynb"]
source_suffix = {".rst": "restructuredtext"}
root_doc = "index"
default_role = "math"

# -- autodoc / numpydoc ------------------------------------------------------------------
autodoc_default_options = {"members": True, "show-inheritance": True}
autodoc_member_order = "bysource"
autodoc_typehints = "none"
autosummary_generate = False
numpydoc_show_class_members = False
numpydoc_class_members_toctree = False
numpydoc_xref_param_type = False
# numpydoc turns each docstring's ``References`` into citations; a reference list that the
# text does not cite with ``[1]_`` is intended (a bibliography), not an error.
suppress_warnings = ["ref.citation"]

# -- math --------------------------------------------------------------------------------
# MathJax 3 is served from the built pages themselves (``sphinx-mathjax-offline`` above sets
# ``mathjax_path`` to ``_static/mathjax/tex-chtml.js``); the configuration below is MathJax 3's.
mathjax3_config = {
    "tex": {
        "macros": {
            "R": r"\mathbb{R}",
            "argmin": r"\operatorname*{arg\,min}",
            "argmax": r"\operatorname*{arg\,max}",
            "Proj": r"\operatorname{Proj}",
        }
    }
}

# -- HTML --------------------------------------------------------------------------------
if importlib.util.find_spec("pydata_sphinx_theme") is not None:
    html_theme = "pydata_sphinx_theme"
    html_theme_options = {"show_toc_level": 2, "navigation_with_keys": False}
else:
    html_theme = "alabaster"
    html_theme_options = {"description": "Reference first-order bilevel optimisation"}
html_title = f"refbilevel {release}"
html_static_path: list[str] = []


_AUTOMODULE = re.compile(r"^\.\. automodule:: (refbilevel[\w.]*)[^\n]*\n((?:[ \t]+:[^\n]*\n)*)",
                         re.MULTILINE)


def _absent_modules_as_notes(app, docname, source):
    """Replace ``automodule`` of a module whose file does not exist yet by a short note.

    A module that exists but fails to import still produces autodoc's warning.
    """
    def replace(match):
        name = match.group(1)
        try:
            found = importlib.util.find_spec(name) is not None
        except ModuleNotFoundError:
            found = False
        if found:
            return match.group(0)
        return f".. note:: ``{name}`` is not part of this build.\n"

    source[0] = _AUTOMODULE.sub(replace, source[0])


def _cli_help_directive():
    """``.. refbilevel-help:: [COMMAND]``: the text ``refbilevel [COMMAND] --help`` prints.

    Generated from the argparse definitions at build time, so the page cannot drift from
    the command line; wrapped at 88 columns whatever the terminal of the build.
    """
    import argparse

    from docutils import nodes
    from docutils.parsers.rst import Directive

    class RefbilevelHelp(Directive):
        optional_arguments = 1

        def run(self):
            from refbilevel.cli import build_parser

            old = os.environ.get("COLUMNS")
            os.environ["COLUMNS"] = "90"
            try:
                parser = build_parser()
                if self.arguments:
                    sub = next(a for a in parser._actions
                               if isinstance(a, argparse._SubParsersAction))
                    parser = sub.choices[self.arguments[0]]
                text = parser.format_help().rstrip()
            finally:
                if old is None:
                    os.environ.pop("COLUMNS", None)
                else:
                    os.environ["COLUMNS"] = old
            block = nodes.literal_block(text, text)
            block["language"] = "text"
            return [block]

    return RefbilevelHelp


def setup(app):
    """Accept ``-D plot_gallery=0`` without sphinx-gallery; tolerate modules not yet written;
    render the command line's help texts."""
    if "sphinx_gallery.gen_gallery" not in extensions:
        app.add_config_value("plot_gallery", "True", "html")
    app.connect("source-read", _absent_modules_as_notes)
    app.add_directive("refbilevel-help", _cli_help_directive())
