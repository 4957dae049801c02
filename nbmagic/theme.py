"""Colours that follow the front end's theme: JupyterLab's and VS Code's CSS variables, then ``currentColor``.

Displays use these (in ``style`` attributes, where CSS variables work) instead of fixed dark-on-light colours,
and translucent tints for highlights, so light and dark themes both read well.
"""

from __future__ import annotations

FOREGROUND = "var(--jp-content-font-color1, var(--vscode-editor-foreground, currentColor))"
MUTED = "var(--jp-content-font-color2, var(--vscode-descriptionForeground, currentColor))"
BACKGROUND = "var(--jp-layout-color0, var(--vscode-editor-background, transparent))"
BORDER = "var(--jp-border-color1, var(--vscode-editorWidget-border, rgba(128, 128, 128, 0.5)))"
ACCENT = "var(--jp-brand-color1, var(--vscode-focusBorder, #1e88e5))"
TRACK = "rgba(128, 128, 128, 0.3)"  # a progress bar's empty part, on any background
BEST_ROW = "rgba(67, 160, 71, 0.22)"  # the best trial's row: a tint, so the theme's text stays readable
STEP_BOX = "rgba(30, 136, 229, 0.14)"
METRIC_BOX = "rgba(67, 160, 71, 0.18)"
WARNING = "#d08000"  # mid-tone: readable on light and dark backgrounds
ERROR = "#e53935"
CELL = "padding: 2px 8px; text-align: left"  # table cells: classic Notebook gives them no padding
MONO = "font-family: var(--jp-code-font-family, var(--vscode-editor-font-family, monospace))"
