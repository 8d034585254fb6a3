"""Region proposals as a product of their own: an RPN's for a whole dataset (``frcnn propose``,
the propose steps of the 4-step schedule), Selective Search's (what Fast R-CNN used), the one
proposal-file format with its one reader and writer, the proposals a detector tests on when
they are not its own RPN's, and recall.

``engine`` (training) and ``evaluation`` (scoring) both use this package; it imports neither.
"""
