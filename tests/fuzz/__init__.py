"""A fuzz harness for every reader: hostile and broken input must be refused, never crash or hang.

`seeds` builds small valid files (the synthetic Caffe writer, our own writers, h5py, and the
shared corpus when present); `mutate` describes and applies byte-level and structure-aware
mutations as JSON-able dicts, so every input can be replayed; `runner` runs each input in a
forked child of a fresh driver process under an address-space limit and a wall-clock timeout
and sorts the outcome into refused / accepted / crashed / hung / blowup.

Run it with ``python benchmarks/fuzz.py --inputs 2000 --jobs 2``; replay one input with
``python -m tests.fuzz.runner --replay '<json>'``.
"""
