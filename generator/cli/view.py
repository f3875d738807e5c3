"""`synthgen view RUN [RUN2]`: a local web page to browse a run folder, or compare two."""
from __future__ import annotations

import sys
import time

import click


@click.command("view")
@click.argument("run_dir", metavar="RUN", type=click.Path(file_okay=False, exists=True))
@click.argument("run2", metavar="[RUN2]", required=False, type=click.Path(file_okay=False, exists=True))
@click.option("--port", type=int, default=8765, show_default=True, help="Port on 127.0.0.1; 0 picks a free one.")
@click.option("--no-browser", is_flag=True, help="Do not open a browser; only print the address.")
@click.option("--embedder", type=click.Choice(["static", "minilm", "hash"]), default="static", show_default=True,
              help="Embeddings for nearest neighbours, clusters and the compare scores.")
def view(run_dir, run2, port, no_browser, embedder):
    """Browse RUN's records (prompts, completions, lineage, filters, search, nearest neighbours,
    clusters, rounds) in a local web page; with RUN2, compare the two runs record by record."""
    from generator.view.app import View
    from generator.view.data import RunError
    from generator.view.server import address, serve

    t0 = time.perf_counter()
    try:
        state = View(run_dir, run2, embedder=embedder)
    except RunError as exc:
        click.echo(f"error: {exc} ; pass a run folder written by `synthgen run`", err=True)
        sys.exit(2)
    try:
        srv = serve(state, port)
    except OSError as exc:
        click.echo(f"error: 127.0.0.1:{port}: {exc.strerror} ; pass another --port (0 picks a free one)", err=True)
        sys.exit(2)
    url = address(srv)
    n = state.a.df.height + (state.b.df.height if state.b else 0)
    click.echo(f"synthgen view: {url}  ({n} records, ready in {time.perf_counter() - t0:.1f} s; Ctrl-C stops)",
               err=False)
    sys.stdout.flush()
    if not no_browser:
        import webbrowser

        webbrowser.open(url)
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        srv.shutdown()
