"""The exported page renders in a real browser with networking disabled.

Uses Debian's ``chromium`` (``make setup`` installs it when missing; nothing is
installed at test time).  Select with ``pytest -m browser``; skipped with a reason
when no chromium binary is on PATH, except under CI (``CI`` set), where that fails.  The screenshot is kept as a test artefact in
``results/test-artifacts/browser_trace.png``.  The flow-graph page of a step graph is checked too:
one SVG path per edge, and a click on an edge (a tiny script appended to the page dispatches it
before ``--dump-dom``) shows that edge's heads and its token heatmap
(``results/test-artifacts/browser_flow.png``).
"""

from __future__ import annotations

import html as htmllib
import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

import ftlens
from ftlens import render
from ftlens.examples import NEEDLE_PROMPT, NEEDLE_TARGET

pytestmark = pytest.mark.browser

ARTIFACTS = Path(__file__).resolve().parent.parent / "results" / "test-artifacts"
CHROMIUM = next((shutil.which(n) for n in ("chromium", "chromium-browser") if shutil.which(n)), None)


def chromium(page: Path, profile: Path, *extra: str) -> subprocess.CompletedProcess:
    """Headless chromium on ``file://page`` with every network route blocked."""
    cmd = [
        CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars", "--disable-dev-shm-usage",
        "--disable-background-networking", "--disable-component-update", "--disable-sync",
        "--disable-default-apps", "--disable-extensions", "--no-first-run", "--no-default-browser-check",
        "--metrics-recording-only", f"--user-data-dir={profile}",
        "--proxy-server=127.0.0.1:9", "--proxy-bypass-list=<-loopback>",
        "--host-resolver-rules=MAP * ~NOTFOUND",
        "--virtual-time-budget=10000", "--window-size=1200,2600", *extra, page.as_uri(),
    ]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=180)


def _rendered_tokens(dom: str) -> dict[str, list[list[str]]]:
    """Per CircuitsVis container (by id): token texts of each rendered ``.colored-tokens`` block."""
    body = re.sub(r"<script\b.*?</script>", "", dom, flags=re.S)  # only what React built counts
    out: dict[str, list[list[str]]] = {}
    pieces = re.split(r'(?=<div id="ft(?:cv|grid)-[0-9a-f]+(?:-out)?")', body)
    for piece in pieces:
        m = re.match(r'<div id="(ft(?:cv|grid)-[0-9a-f]+(?:-out)?)"', piece)
        if not m:
            continue
        blocks = piece.split('class="colored-tokens"')[1:]
        out[m.group(1)] = [
            [htmllib.unescape(t).replace("\xa0", " ")
             for t in re.findall(r'<span style="display: inline-block;[^"]*">(.*?)</span>', b, flags=re.S)]
            for b in blocks
        ]
    return out


def test_exported_page_renders_offline_in_headless_chromium(tiny_llama, tmp_path):
    if CHROMIUM is None:
        if os.environ.get("CI"):  # CI's setup step must have installed it: a skip would hide that
            pytest.fail("Debian chromium is not installed; `make setup` should have installed it")
        pytest.skip("Debian chromium not installed (make setup installs it)")
    tr = ftlens.trace(tiny_llama, NEEDLE_PROMPT, NEEDLE_TARGET, hops=2)
    page = render.write_html(tr, tmp_path / "trace.html")
    source = page.read_text(encoding="utf-8")
    assert "unpkg.com" not in source

    dom = chromium(page, tmp_path / "profile-dom", "--dump-dom")
    assert dom.returncode == 0, dom.stderr[-2000:]
    rendered = _rendered_tokens(dom.stdout)

    expected = [t.replace("\n", "↵") if t.strip() == "" or "\n" in t else t for t in tr.tokens]
    heatmap_ids = re.findall(r'<div id="(ftcv-[0-9a-f]+)" class="ft-cv" data-component="ColoredTokens"', source)
    assert heatmap_ids, "no heatmap containers in the page"
    heatmap = [tok for i in heatmap_ids for block in rendered.get(i, []) for tok in block]
    assert heatmap == expected, "the token heatmap did not render every token (React did not run?)"

    multi_ids = re.findall(r'<div id="(ftcv-[0-9a-f]+)" class="ft-cv" data-component="ColoredTokensMulti"', source)
    assert len(multi_ids) == 2  # per-hop channels and top-k head channels
    a = tr.prompt_positions[0]
    for i in multi_ids:
        assert rendered.get(i) and rendered[i][0][: 5] == expected[a : a + 5]

    grid_out = [k for k in rendered if k.endswith("-out")]
    assert grid_out and rendered[grid_out[0]], "selecting a head in the grid did not render its heatmap"
    assert rendered[grid_out[0]][0] == expected[a : tr.inputs_end]
    selected = re.findall(r'<td data-l="(\d+)" data-h="(\d+)"[^>]*class="ft-sel"', dom.stdout)
    top = tr.top_heads(1)[0]
    assert selected == [(str(top.layer), str(top.head))], "the grid must open on the top-heads table's first head"

    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    shot = ARTIFACTS / "browser_trace.png"
    shot.unlink(missing_ok=True)
    res = chromium(page, tmp_path / "profile-shot", f"--screenshot={shot}")
    assert res.returncode == 0 and shot.exists(), res.stderr[-2000:]
    data = shot.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 20_000


def test_flow_graph_page_draws_one_path_per_edge_and_a_click_shows_the_edges_heads(tiny_llama, tmp_path):
    if CHROMIUM is None:
        if os.environ.get("CI"):
            pytest.fail("Debian chromium is not installed; `make setup` should have installed it")
        pytest.skip("Debian chromium not installed (make setup installs it)")
    import json

    from ftlens.stepgraph import step_graph

    g = step_graph(tiny_llama, NEEDLE_PROMPT, NEEDLE_TARGET)
    page = render.write_flow_html(g, tmp_path / "flow.html")
    source = page.read_text(encoding="utf-8")
    assert "unpkg.com" not in source
    data = json.loads(re.search(r"var D=(\{.*?\});\n", source).group(1))
    edges = data["edges"]
    assert len(edges) >= 3
    # click the lightest drawn edge (the page opens on the heaviest) with a tiny script at the end of the body
    k = min(range(len(edges)), key=lambda i: edges[i]["flow"])
    clicker = (
        "<script>document.querySelector('path.ft-edge[data-k=\"%d\"]')"
        ".dispatchEvent(new MouseEvent('click', {bubbles: true}));</script>" % k
    )
    clicked = tmp_path / "flow_click.html"
    clicked.write_text(source.replace("\n</body>", clicker + "\n</body>"), encoding="utf-8")

    for path, want in ((page, max(range(len(edges)), key=lambda i: edges[i]["flow"])), (clicked, k)):
        dom = chromium(path, tmp_path / f"profile-{path.stem}", "--dump-dom")
        assert dom.returncode == 0, dom.stderr[-2000:]
        body = re.sub(r"<script\b.*?</script>", "", dom.stdout, flags=re.S)
        svg = re.search(r'<svg[^>]*class="ft-flow-graph".*?</svg>', body, flags=re.S)
        assert svg, "the flow graph's SVG was not drawn"
        paths = re.findall(r'<path [^>]*class="ft-edge[^"]*"[^>]*data-k="(\d+)"', svg.group(0))
        assert sorted(int(p) for p in paths) == list(range(len(edges))), "one path per edge"
        assert len(re.findall(r"<path\b", svg.group(0))) == len(edges)
        selected = re.findall(r'<path [^>]*class="ft-edge ft-sel"[^>]*data-k="(\d+)"', svg.group(0))
        assert selected == [str(want)]
        e = edges[want]
        info = re.search(r'<div class="ft-flow-info" data-edge="(\d+),(\d+)">(.*?)</table>', body, flags=re.S)
        assert info and (int(info.group(1)), int(info.group(2))) == (e["x"], e["y"])
        shown = re.findall(r"<td>L(\d+)H(\d+)</td>", info.group(3))
        top = g.top_edge_heads(e["x"], e["y"], 5)
        assert shown == [(str(h.layer), str(h.head)) for h in top], "the edge's heads are not shown"
        # and its traced node's token heatmap rendered (React ran): tokens up to the node's end
        heat = body[body.index('class="ft-flow-heat"'):]
        toks = [htmllib.unescape(t).replace("\xa0", " ")
                for t in re.findall(r'<span style="display: inline-block;[^"]*">(.*?)</span>', heat, flags=re.S)]
        assert toks == data["tokens"][: g.nodes[e["x"]].end - data["first"]]
        assert re.search(r'<tr class="ft-route-row"', body), "the routes table is missing"

    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    shot = ARTIFACTS / "browser_flow.png"
    shot.unlink(missing_ok=True)
    res = chromium(page, tmp_path / "profile-flow-shot", f"--screenshot={shot}")
    assert res.returncode == 0 and shot.exists() and shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
