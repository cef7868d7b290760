"""`ganray studio OUT`: a local web page to look at a finished `ganray generate` output.

    output.py   the output's shard index (row counts and row-group metadata, held in memory) and
                lazy reads of only the columns and row groups a page needs
    columns.py  which columns are shown and filtered, and reading both shard layouts as plain values
    query.py    filters from the query string and the matching rows, shard by shard
    app.py      the FastAPI app: the page, its JSON API, the output's own files, errors
    server.py   binding the socket and serving until interrupted
    static/     the page (package data: no CDN)
"""
