"""The catalogue's entries: one module per kata, named like the kata (``w01_numpy.py``).

Each module holds only entries (``@mistake``, ``@variant`` and ``@mutant`` from
``checks.harness.catalogue``, which explains them). Entries use the reference's public API only.
"""
