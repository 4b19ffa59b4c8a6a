"""Putting untrusted text — run ids, ``config.json`` strings, file paths, error messages — into
the page, where it must show as the text it is and never become markup or script.

Run folders and data files come from other people, so every string read from them goes into
an HTML pane through :func:`html_text` and into a Markdown pane (Alert is one) through
:func:`markdown_text`: Markdown passes raw HTML through and gives ``*``, ``_``, ``[`` … a
meaning. Bokeh needs nothing extra: tooltip ``@field`` values (without ``{safe}``), axis
factors, Select options and ``HTMLLabelSet`` texts are all set as text by BokehJS, and
the leaderboard table escapes every cell with :func:`html_text`.
"""

from __future__ import annotations

import html

#: Every ASCII punctuation character: the HTML-special ones as entities (Markdown shows an
#: entity as its character), the rest backslash-escaped (CommonMark shows them literally).
_MARKDOWN = str.maketrans({
    **{c: "\\" + c for c in "!#$%()*+,-./:;=?@[\\]^_`{|}~"},
    "&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#x27;",
})


def html_text(value: object) -> str:
    """``value`` as HTML text (element content or a quoted attribute value)."""
    return html.escape(str(value), quote=True)


def markdown_text(value: object) -> str:
    """``value`` as Markdown text: shown literally, line breaks kept, no markup, no links."""
    lines = []
    for line in str(value).split("\n"):
        body = line.lstrip(" ")  # leading spaces would make an indented code block
        lines.append("&#32;" * (len(line) - len(body)) + body.translate(_MARKDOWN))
    return "  \n".join(lines)


class Message:
    """An alert line whose text is always shown as plain text (the views' status and error
    messages quote run ids, file names and library errors)."""

    def __init__(self, css_class: str):
        import panel as pn

        self.text = ""
        self.pane = pn.pane.Alert("", alert_type="info", visible=False, css_classes=[css_class])

    def say(self, text: str, kind: str = "info") -> None:
        """Show ``text`` (hide the line when it is empty) as an info/warning/danger alert."""
        self.text = text
        self.pane.object = markdown_text(text)
        self.pane.alert_type = kind
        self.pane.visible = bool(text)
