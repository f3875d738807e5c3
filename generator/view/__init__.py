"""`synthgen view`: browse a run folder (records, lineage, redundancy, rounds) or compare two runs.

    data.py        the run in one polars frame; filters, full-text search and paging
    redundancy.py  embeddings, nearest neighbours, k-means clusters, compare scores
    app.py         the JSON API's answers
    server.py      http.server on 127.0.0.1
    page.html      the single page (DOM built with textContent: user text is never parsed as HTML)
    command.py     the click command
"""
