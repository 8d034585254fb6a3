"""Datasets: COCO JSON in memory, robust image decoding, format converters, the training loader.

The canonical format is COCO JSON with ``file_name`` relative to the JSON file's folder and
continuous ``[x, y, w, h]`` boxes; see :mod:`frcnn_cli.data.annotations`.
"""
