"""The fenced code blocks of the README and of ``docs/**/*.md``, run as written.

A block is named by its first line and its document's line number. Running one compiles the
block's own text with its document's line numbers (a traceback points into the page); the only
change ever made to it is the server address: ``127.0.0.1:6379``, ``localhost:6379`` and
``valkey:6379`` become the test server's, which runs on a free port.
"""

from __future__ import annotations

import ast
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
FENCE = re.compile(r"^( *)```(\w*)\s*$")
README_ADDRESS = re.compile(r"\b(?:127\.0\.0\.1|localhost|valkey):6379\b")


def at_address(text: str, address: str) -> str:
    """``text`` with the README's server address replaced by ``host:port``."""
    return README_ADDRESS.sub(address, text)


def documents() -> list[Path]:
    """The README and every ``docs/**/*.md``: where examples live."""
    return [ROOT / "README.md", *sorted((ROOT / "docs").glob("**/*.md"))]


@dataclass(frozen=True)
class Block:
    document: Path
    line: int  #: the document's line number of the block's first line of code
    language: str
    text: str

    @property
    def first_line(self) -> str:
        return next((line.strip() for line in self.text.splitlines() if line.strip()), "")

    @property
    def name(self) -> str:
        return f"{self.document.relative_to(ROOT)}:{self.line} {self.first_line!r}"

    def at(self, address: str) -> str:
        """The block's text at the test server's ``host:port``."""
        return at_address(self.text, address)

    def statements(self, address: str = "") -> list[ast.stmt]:
        """The block's top-level statements, numbered as in its document."""
        tree = ast.parse(self.at(address) if address else self.text, filename=str(self.document))
        ast.increment_lineno(tree, self.line - 1)
        return tree.body


def blocks() -> Iterator[Block]:
    """Every fenced block of every document, indented ones (in list items) included."""
    for document in documents():
        lines = document.read_text().splitlines()
        number = 0
        while number < len(lines):
            opening = FENCE.match(lines[number])
            number += 1
            if not opening:
                continue
            indent, language, body = len(opening.group(1)), opening.group(2), []
            while number < len(lines) and not FENCE.match(lines[number]):
                body.append(lines[number][indent:])
                number += 1
            number += 1  # the closing fence
            yield Block(document, number - len(body), language, "\n".join(body) + "\n")


def is_definition(statement: ast.stmt) -> bool:
    """What a module defines when imported: imports, functions, classes and ``app.conf``
    settings; the rest (calls, loops, ``with``) is what a caller does."""
    if isinstance(statement, ast.Import | ast.ImportFrom | ast.FunctionDef | ast.ClassDef):
        return True
    targets = statement.targets if isinstance(statement, ast.Assign) else []
    return bool(targets) and all(ast.unparse(target).startswith("app.conf.") for target in targets)


def defines_for_the_app(block: Block) -> bool:
    """A Python block a worker must import: it defines tasks or configures the app."""
    if block.language != "python":
        return False
    return "@app.task" in block.text or any(is_definition(s) and isinstance(s, ast.Assign) for s in block.statements())


def run(statements: list[ast.stmt], namespace: dict[str, Any], document: Path) -> dict[int, Any]:
    """Run statements in ``namespace`` as a module would; answers the value of each bare
    expression (``outcome.effect``) by its line, as an interactive session shows them."""
    values: dict[int, Any] = {}
    for statement in statements:
        if isinstance(statement, ast.Expr):
            expression = ast.Expression(statement.value)
            values[statement.lineno] = eval(compile(expression, str(document), "eval"), namespace)
        else:
            exec(compile(ast.Module([statement], type_ignores=[]), str(document), "exec"), namespace)
    return values
