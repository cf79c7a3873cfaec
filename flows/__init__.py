"""Prefect flows: they only wire the steps of `towerbridge.steps` together, retry and report.

    train     prepare the data and train the towers -> model directory
    index     embed all items into a new Milvus version (IVF_PQ) behind the alias
    evaluate  query Milvus per user, hit rate at k beside exact search and popularity
    pipeline  the three in a row
    rebuild   the nightly rebuild: train, build, validate, swap, retention

Each takes one options object from ``towerbridge.options`` (checked there, once), beside the
paths an earlier flow handed it, and returns a typed record from ``towerbridge.results``.
"""
