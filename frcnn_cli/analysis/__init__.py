"""What a dataset holds and what the anchors make of it, before any training: ``frcnn data
stats`` (:mod:`.stats`) and ``frcnn anchors --data`` (:mod:`.coverage`), over one set of objects
and one size rule (:mod:`.objects`).

It imports ``data`` and the model's anchor geometry; nothing imports it but the CLI.
"""
