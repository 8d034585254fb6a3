"""The one loop from images to detections, which ``eval``, ``predict``, ``propose`` and tiled
prediction all run: images decoded at their own size (:mod:`.images`), handed to
``model.detect`` whole, on their tiles (:mod:`.tiled`) or on external proposals, and the
answers brought back in each file's pixels (:mod:`.loop`).

``evaluation`` (scores, drawings) and ``proposals`` (proposal files) both build on it; it
imports ``data`` and the shared ground, and the model only as the object it is handed.
"""
