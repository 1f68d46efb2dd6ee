"""Draw docs/images/hops.svg: what each hand-off shows of a request's id, without als and with it.

    python docs/images/hops.py            # rewrite docs/images/hops.svg
    python docs/images/hops.py --stdout   # print it instead (tests/test_docs.py compares)

Standard library only, and deterministic: the same table gives the same bytes.
"""

from __future__ import annotations

import sys
from pathlib import Path
from xml.sax.saxutils import escape

# What a log line in the callee shows, inside request "req-7f3a": (hand-off, plain, with als).
# Each cell is (kind, text); the kinds are the legend's.
ROWS = [
    ("await, asyncio tasks, trio nurseries", ("kept", "req-7f3a"), ("kept", "req-7f3a")),
    ("asyncio.to_thread", ("kept", "req-7f3a"), ("kept", "req-7f3a")),
    ("ThreadPoolExecutor.submit / map", ("lost", "None"), ("kept", "req-7f3a")),
    ("loop.run_in_executor", ("lost", "None"), ("kept", "req-7f3a")),
    (
        "  ... both, with thread_inherit_context",
        ("wrong", "req-0001 (the first request's)"),
        ("kept", "req-7f3a"),
    ),
    ("threading.Thread, Timer (flag off)", ("lost", "None"), ("kept", "req-7f3a")),
    (
        "Future.add_done_callback",
        ("wrong", "the completing thread's"),
        ("kept", "req-7f3a (als's executors)"),
    ),
    ("process pool, forked worker", ("wrong", "its forker's, for life"), ("kept", "req-7f3a (carry=True)")),
    ("process pool (spawn), Celery, a queue", ("lost", "None"), ("kept", "req-7f3a (carry=True)")),
]
COLOURS = {"kept": ("#d8f0dc", "#1e6b34"), "lost": ("#fbe0e0", "#9b1c1c"), "wrong": ("#fdebc8", "#8a4b00")}
LEGEND = [("kept", "kept: the request's own id"), ("lost", "lost: no id"), ("wrong", "wrong: another's id")]
TITLE = 'What a log line after each hand-off shows, inside request "req-7f3a"'
FONT = 'font-family="DejaVu Sans, Verdana, sans-serif" font-size="13"'
WIDTH, ROW, TOP, LEFT, CELL, GAP = 860, 30, 64, 290, 270, 10


def text(x: float, y: float, content: str, **attributes: str) -> str:
    extra = "".join(f' {name.replace("_", "-")}="{value}"' for name, value in attributes.items())
    return f'<text x="{x}" y="{y}"{extra}>{escape(content)}</text>'


def cell(x: float, y: float, kind: str, content: str) -> list[str]:
    fill, ink = COLOURS[kind]
    return [
        f'<rect x="{x}" y="{y}" width="{CELL}" height="{ROW - 6}" rx="5" fill="{fill}" stroke="{ink}"/>',
        text(x + 10, y + 17, content, fill=ink),
    ]


def draw() -> str:
    height = TOP + ROW * len(ROWS) + 50
    plain_x, als_x = LEFT, LEFT + CELL + GAP
    size = f'width="{WIDTH}" height="{height}"'
    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" {size} viewBox="0 0 {WIDTH} {height}" {FONT}>',
        f'<rect {size} fill="#ffffff"/>',
        text(12, 22, TITLE, font_weight="bold"),
        text(12, TOP - 12, "hand-off", font_weight="bold"),
        text(plain_x, TOP - 12, "plain standard library", font_weight="bold"),
        text(als_x, TOP - 12, "with als", font_weight="bold"),
    ]
    for index, (hand_off, plain, kept) in enumerate(ROWS):
        y = TOP + index * ROW
        parts.append(text(12, y + 17, hand_off))
        parts += cell(plain_x, y, *plain)
        parts += cell(als_x, y, *kept)
    legend_y = TOP + ROW * len(ROWS) + 20
    for index, (kind, label) in enumerate(LEGEND):
        fill, ink = COLOURS[kind]
        x = 12 + index * 230
        parts.append(f'<rect x="{x}" y="{legend_y}" width="14" height="14" fill="{fill}" stroke="{ink}"/>')
        parts.append(text(x + 20, legend_y + 12, label))
    parts.append("</svg>")
    return "\n".join(parts) + "\n"


if __name__ == "__main__":
    svg = draw()
    if sys.argv[1:] == ["--stdout"]:
        sys.stdout.write(svg)
    else:
        (Path(__file__).parent / "hops.svg").write_text(svg, encoding="utf-8")
