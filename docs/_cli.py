"""One reStructuredText page per ``ghostmap`` command, generated from the Typer app.

Typer now carries its own copy of click, which sphinx-click does not recognise, so the pages
are written here from the commands' parameters: usage, description, arguments and options.
"""

from __future__ import annotations

import re

import typer.main

from ghostmap.cli import app

GROUP = typer.main.get_command(app)
COMMANDS = sorted(GROUP.commands)


def _text(text: str | None) -> str:
    """Plain help text as reStructuredText: markup characters escaped, whitespace joined."""
    text = " ".join((text or "").split())
    return re.sub(r"([\\`*|_])", r"\\\1", text)


def page(name: str) -> str:
    """The page for ``ghostmap NAME``: usage, description, arguments and options with their defaults."""
    command = GROUP.commands[name]
    ctx = command.context_class(command, info_name=f"ghostmap {name}")
    title = f"ghostmap {name}"
    params = [p for p in command.get_params(ctx) if not p.hidden]
    arguments = [(p.metavar or p.name.upper()) + ("..." if p.nargs != 1 else "") for p in params
                 if p.param_type_name == "argument"]
    lines = [title, "=" * len(title), "", ".. code-block:: text", "",
             f"   ghostmap {name} [OPTIONS] {' '.join(arguments)}".rstrip(), "", _text(command.help), ""]
    for heading, kind in (("Arguments", True), ("Options", False)):
        records = [p.get_help_record(ctx) for p in params if (p.param_type_name == "argument") == kind]
        records = [r for r in records if r]
        if records:
            lines += [heading, "-" * len(heading), ""]
            for names, help_text in records:
                lines += [f"``{names}``", f"   {_text(help_text) or '(see above)'}", ""]
    return "\n".join(lines)
