"""MkDocs hook: the reference pages' bodies are generated from the code at build time
(rayops.reference), so a config key or a command option cannot be documented wrong."""

from __future__ import annotations

from rayops.reference import cli_reference, config_reference

MARK = "<!-- generated -->"
PAGES = {"reference/config.md": config_reference, "reference/cli.md": cli_reference}


def on_page_markdown(markdown: str, page, config, files) -> str:
    make = PAGES.get(page.file.src_uri)
    if make is None:
        return markdown
    assert MARK in markdown, f"{page.file.src_uri} lost its {MARK} line"
    return markdown.replace(MARK, make())
