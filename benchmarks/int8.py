"""INT8 and fp32 exports on a CPU: accuracy on the demo model, speed on the VGG16 network.

    python benchmarks/int8.py --checkpoint demo/run/model.pt --data demo/data/val.json
    python benchmarks/int8.py --checkpoint demo/run/model.pt --data demo/data/val.json \\
        --sensitivity                                 # also: which layers to keep in fp32
    python benchmarks/int8.py --smoke --checkpoint M.pt --data VAL.json   # seconds: proves it runs

1. Accuracy (with ``--checkpoint`` and ``--data``): VOC07 mAP on ``--data`` of the checkpoint,
   its fp32 ONNX file and its INT8 file (``frcnn export --int8``, calibrated on
   ``--calib-images`` images of ``--calibrate``, by default the ``train.json`` beside
   ``--data``), each file run by onnxruntime (and OpenVINO, when the ``openvino`` package is
   installed), and how far the INT8 file's detections are from the checkpoint's (the export
   check's numbers, on every image). ``--sensitivity`` adds one INT8 file per choice of the
   layers kept in fp32 (nothing, the RPN's 1x1 convs, the class and box layers, both, both
   and fc6/fc7, ...): the measurement behind ``export.int8.KEEP_FP32``.
2. Speed: the VGG16 network (``voc07-vgg16-joint``, 21 classes, random weights, seed 0, as
   ``speed_vs_torchvision.py`` builds it) on one 375x500 image: torchvision's fp32
   FasterRCNN, frcnn fp32, frcnn under bf16 autocast, the fp32 ONNX file and the INT8 file
   (onnxruntime; OpenVINO too when installed), interleaved in one process, median of
   ``--runs``, at each of ``--threads``. The INT8 file is calibrated on synthetic shapes
   pictures and written with the check off (``--no-check``: random weights give near-tied
   scores that no comparison can judge); its detections are not the point, its time is.
3. Where the INT8 file's time goes: onnxruntime's profiler, each node charged to the part of
   the detector it was exported from (preprocess, backbone convs, RPN and proposals, RoI
   pooling, fc6/fc7, class scores with boxes and NMS), and the slowest nodes.

The CPU's instruction sets (avx2, avx512f, avx512_vnni, avx512_bf16, amx) head the output:
INT8 convolutions are fast with VNNI (or AMX), bf16 is native only with AVX-512 BF16 or AMX.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import statistics
import sys
import tempfile
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from speed_vs_torchvision import cpu_flags, timed  # noqa: E402 (the sibling script's helpers)

from frcnn_cli import load_model  # noqa: E402
from frcnn_cli.data.annotations import load_annotations  # noqa: E402
from frcnn_cli.evaluation.inference import evaluate_model  # noqa: E402
from frcnn_cli.export import export_bytes, int8, verify  # noqa: E402
from frcnn_cli.export.benchmark import benchmark_image, models_to_time  # noqa: E402
from frcnn_cli.inference.exported import ExportedDetector, load_exported_model  # noqa: E402

SENSITIVITY = ((), ("rpn_predict",), ("head_predict",), ("rpn_predict", "head_predict"),
               ("rpn_predict", "head_predict", "head"), ("rpn_predict", "head_predict", "rpn"),
               ("backbone", "rpn", "head"))


def table(title: str, columns: list[str], rows: list[list]) -> None:
    """A markdown table (pasted into the README as it is)."""
    print(f"\n{title}\n")
    print("| " + " | ".join(columns) + " |")
    print("|" + "|".join(" --- " for _ in columns) + "|")
    for row in rows:
        print("| " + " | ".join(f"{v:.4f}" if isinstance(v, float) else str(v)
                                for v in row) + " |")


# --------------------------------------------------------------------------- OpenVINO


class OpenVinoEngine:
    """OpenVINO's CPU plugin on an ONNX file, with the engine interface ExportedDetector
    drives (frcnn_cli/inference/exported.py), so that evaluate_model runs it. Not offered by the
    toolkit: its Resize does not antialias as torch's does (see that module's doc)."""

    name = "openvino"

    def __init__(self, path: Path, threads: int) -> None:
        import onnx
        import openvino

        self.metadata = {p.key: p.value for p in onnx.load(path, load_external_data=False)
                         .metadata_props}
        core = openvino.Core()
        self.compiled = core.compile_model(core.read_model(str(path)), "CPU", {
            "INFERENCE_NUM_THREADS": threads, "INFERENCE_PRECISION_HINT": "f32"})
        self.request = self.compiled.create_infer_request()

    def place(self, device: torch.device) -> None:
        assert device.type == "cpu"

    def where(self) -> str:
        return "CPU"

    def run(self, image: torch.Tensor):
        out = self.request.infer({"image": image.numpy()})
        return tuple(torch.from_numpy(out[self.compiled.output(n)].copy())
                     for n in ("boxes", "scores", "labels"))


def openvino_detector(path: Path, threads: int) -> ExportedDetector | None:
    try:
        import openvino  # noqa: F401
    except ImportError:
        return None
    return ExportedDetector(OpenVinoEngine(path, threads), path, "onnx")


# --------------------------------------------------------------------------- accuracy


def write_int8(model, fp32: bytes, ann, count: int, keep: tuple[str, ...], path: Path) -> Path:
    path.write_bytes(int8.quantize_on(fp32, model, ann, count, keep)[0])
    return path


def accuracy(args, folder: Path) -> None:
    model = load_model(args.checkpoint)
    val = load_annotations(args.data)
    if args.max_images:
        val = val.subset([im["id"] for im in val.images[:args.max_images]])
    calibrate = args.calibrate or (Path(args.data).parent / "train.json")
    ann = load_annotations(calibrate if Path(calibrate).is_file() else args.data)
    fp32 = export_bytes(model, "onnx")
    (folder / "fp32.onnx").write_bytes(fp32)
    int8_path = write_int8(model, fp32, ann, args.calib_images, int8.KEEP_FP32,
                           folder / "int8.onnx")
    rows = [["checkpoint (PyTorch fp32)", evaluate_model(model, val).mAP, "", "", ""]]
    val_images = int8.read_images(val, range(len(val.images)))
    for name, path in (("fp32 ONNX", folder / "fp32.onnx"), ("INT8 ONNX", int8_path)):
        for runtime, detector in (("onnxruntime", load_exported_model(path)),
                                  ("openvino", openvino_detector(path, args.threads[-1]))):
            if detector is None:
                continue
            agree = verify.check_int8(model, lambda im, d=detector: tuple(
                d.detect([im])[0].values()), val_images)
            rows.append([f"{name} ({runtime})", evaluate_model(detector, val).mAP,
                         f"{agree.agreement:.1%}", f"{agree.mean_iou:.3f}",
                         f"{agree.mean_score_diff:.3f}"])
    table(f"VOC07 mAP on {args.data} ({len(val.images)} images); INT8 calibrated on "
          f"{min(args.calib_images, len(ann.images))} images of {ann.path}; against the "
          "checkpoint: confident detections found by both, mean IoU, mean score difference",
          ["model", "VOC07 mAP", "found by both", "mean IoU", "score diff"], rows)
    if args.sensitivity:
        sensitivity(model, fp32, ann, val, val_images, args, folder)


def sensitivity(model, fp32: bytes, ann, val, val_images, args, folder: Path) -> None:
    rows = []
    for keep in SENSITIVITY:
        path = write_int8(model, fp32, ann, args.calib_images, keep, folder / "variant.onnx")
        detector = load_exported_model(path)
        agree = verify.check_int8(model, lambda im, d=detector: tuple(
            d.detect([im])[0].values()), val_images)
        rows.append([", ".join(int8.ROLES[k] for k in keep) or "(everything INT8)",
                     evaluate_model(detector, val).mAP, f"{agree.agreement:.1%}",
                     f"{agree.mean_iou:.3f}", f"{agree.mean_score_diff:.3f}"])
    table("INT8 with these layers kept in fp32 (onnxruntime)",
          ["kept in fp32", "VOC07 mAP", "found by both", "mean IoU", "score diff"], rows)


# --------------------------------------------------------------------------- speed


def vgg16_files(args, folder: Path):
    """The VGG16 network with random weights (seed 0), its fp32 and INT8 ONNX files, and
    torchvision's FasterRCNN built to the same recipe."""
    models, _ = models_to_time(recipe=args.recipe, num_classes=args.classes, compare=True)
    ours, theirs = models["frcnn"], models["torchvision"].eval()
    fp32 = export_bytes(ours, "onnx")
    (folder / "vgg16-fp32.onnx").write_bytes(fp32)
    h, w = args.size
    pictures = [benchmark_image(size=(h + 40 * i, w - 40 * i)) for i in range(args.vgg_calib)]
    calibration = int8.Calibration("synthetic shapes", list(range(len(pictures))))
    (folder / "vgg16-int8.onnx").write_bytes(int8.quantize(fp32, ours, pictures, calibration))
    return ours, theirs, folder / "vgg16-fp32.onnx", folder / "vgg16-int8.onnx"


def speed(args, folder: Path) -> None:
    ours, theirs, fp32_path, int8_path = vgg16_files(args, folder)
    image = benchmark_image(size=args.size)
    rows = []
    for threads in args.threads:
        torch.set_num_threads(threads)
        runs = {"torchvision fp32": lambda: theirs([image]), "frcnn fp32": lambda: ours([image]),
                "frcnn bf16 (autocast)": lambda: _bf16(ours, image)}
        for name, path in (("fp32 ONNX", fp32_path), ("INT8 ONNX", int8_path)):
            for runtime, det in (("onnxruntime", load_exported_model(path, threads=threads)),
                                 ("openvino", openvino_detector(path, threads))):
                if det is not None:
                    runs[f"{name} ({runtime})"] = lambda d=det: d.detect([image])
        times = interleaved(runs, args.runs)
        base = statistics.median(times["torchvision fp32"])
        for name, t in times.items():
            rows.append([threads, name, statistics.median(t) * 1000,
                         statistics.median(t) / base])
    table(f"{args.recipe} ({args.classes} classes, random weights), one {args.size[0]}x"
          f"{args.size[1]} image, median of {args.runs} interleaved runs; {cpu_flags()}",
          ["threads", "model", "ms per image", "/ torchvision fp32"], rows)
    profile(int8_path, image, args)


def _bf16(model, image) -> None:
    with torch.autocast("cpu", dtype=torch.bfloat16):
        model([image])


def interleaved(runs: dict, count: int) -> dict[str, list[float]]:
    """Seconds of each callable per run: one warm-up each, then ``count`` rounds, the order
    reversed every other round so that each sees the same machine load."""
    with torch.inference_mode():
        for fn in runs.values():
            fn()
        times: dict[str, list[float]] = {name: [] for name in runs}
        for i in range(count):
            for name in (list(runs) if i % 2 == 0 else list(reversed(runs))):
                times[name].append(timed(runs[name]))
    return times


# --------------------------------------------------------------------------- profile


PREPROCESS = "preprocess (resize, normalise)"
PARTS = (("model.transform", PREPROCESS), ("model.backbone", "backbone convs"),
         ("model.rpn", "RPN and proposals"), ("model.roi_heads.box_head", "fc6/fc7"))


def node_parts(proto, known: dict[str, str] | None = None) -> dict[str, str]:
    """Node name -> part of the detector (:data:`PARTS`, RoI pooling, or the class scores,
    boxes and NMS), by the module scopes the exporter recorded, else by ``known`` (the parts
    of the graph before onnxruntime fused its nodes into ``<name>_token_<n>``); any other
    node (a quantize/dequantize or layout node added later) is charged to the part of the
    node that produces its input."""
    parts: dict[str, str] = {}
    producer: dict[str, str] = {}
    for node in proto.graph.node:
        scopes = next((p.value for p in node.metadata_props
                       if p.key == "pkg.torch.onnx.name_scopes"), "")
        part = next((title for scope, title in PARTS if f"'{scope}" in scopes), None)
        if part is None and "model.roi_heads" in scopes:
            part = "RoI pooling" if node.op_type == "MaxRoiPool" else "class scores, boxes, NMS"
        part = part or (known or {}).get(node.name.split("_token_")[0])
        if part is not None:
            parts[node.name] = part
            producer.update((out, part) for out in node.output)
    for node in proto.graph.node:  # in topological order: inputs are charged first
        if node.name not in parts:
            parts[node.name] = next((producer[i] for i in node.input if i in producer),
                                    PREPROCESS)
            producer.update((out, parts[node.name]) for out in node.output)
    return parts


def profile(path: Path, image: torch.Tensor, args) -> None:
    """Milliseconds per run of each part of the INT8 file (onnxruntime's profiler, on the
    graph as onnxruntime optimised it) and its slowest nodes."""
    import onnx
    import onnxruntime

    threads = args.threads[-1]
    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = threads
    options.log_severity_level = 3
    options.enable_profiling = True
    options.profile_file_prefix = str(path.parent / "profile")
    options.optimized_model_filepath = str(path.parent / "optimized.onnx")
    session = onnxruntime.InferenceSession(str(path), options,
                                           providers=["CPUExecutionProvider"])
    for _ in range(args.runs + 1):
        session.run(None, {"image": image.numpy()})
    events = json.loads(Path(session.end_profiling()).read_text())
    parts = node_parts(onnx.load(path.parent / "optimized.onnx"), node_parts(onnx.load(path)))
    totals: dict[str, float] = {}
    nodes: dict[tuple[str, str], float] = {}
    for e in events:
        if e.get("cat") != "Node" or not e["name"].endswith("_kernel_time"):
            continue
        name = e["name"][:-len("_kernel_time")]
        part = parts.get(name, "other")
        ms = e["dur"] / 1000 / (args.runs + 1)
        totals[part] = totals.get(part, 0.0) + ms
        key = (name, e["args"].get("op_name", "?"))
        nodes[key] = nodes.get(key, 0.0) + ms
    whole = sum(totals.values())
    table(f"INT8 file, onnxruntime's profiler, {threads} thread(s): ms per image by part "
          f"(mean of {args.runs + 1} runs, warm-up included)", ["part", "ms", "share"],
          [[p, t, f"{t / whole:.1%}"] for p, t in sorted(totals.items(), key=lambda x: -x[1])])
    table("its slowest nodes", ["node", "op", "part", "ms"],
          [[n, op, parts.get(n, "other"), t]
           for (n, op), t in sorted(nodes.items(), key=lambda x: -x[1])[:12]])


# --------------------------------------------------------------------------- main


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", help="the demo model (demo/run/model.pt)")
    parser.add_argument("--data", help="validation set (demo/data/val.json)")
    parser.add_argument("--calibrate", help="calibration set (default: train.json beside "
                        "--data, else --data)")
    parser.add_argument("--calib-images", type=int, default=int8.DEFAULT_CALIB_IMAGES)
    parser.add_argument("--sensitivity", action="store_true",
                        help="also one INT8 file per choice of the layers kept in fp32")
    parser.add_argument("--recipe", default="voc07-vgg16-joint")
    parser.add_argument("--classes", type=int, default=20)
    parser.add_argument("--size", default="375x500", help="image HxW for the speed part")
    parser.add_argument("--runs", type=int, default=7)
    parser.add_argument("--threads", default="1,2", help="thread counts, comma-separated")
    parser.add_argument("--vgg-calib", type=int, default=4,
                        help="synthetic pictures the VGG16 INT8 file is calibrated on")
    parser.add_argument("--max-images", type=int, default=None,
                        help="score only the first N images of --data")
    parser.add_argument("--skip-speed", action="store_true")
    parser.add_argument("--keep", help="write the files to this folder (default: a temporary "
                        "one)")
    parser.add_argument("--smoke", action="store_true", help="seconds, not a figure: the "
                        "shapes recipe at 120x160, 1 run, 1 thread, 8 images, 2 calibration")
    args = parser.parse_args()
    if args.smoke:
        args.recipe, args.classes, args.size, args.runs, args.threads = (
            "shapes", 3, "120x160", 1, "1")
        args.calib_images, args.vgg_calib, args.max_images = 2, 2, args.max_images or 8
    args.size = tuple(int(v) for v in args.size.split("x"))
    args.threads = [int(t) for t in args.threads.split(",")]
    print(cpu_flags())
    print(f"torch {torch.__version__}, onnxruntime {_version('onnxruntime')}, "
          f"openvino {_version('openvino')}")
    with contextlib.ExitStack() as stack:
        folder = Path(args.keep) if args.keep else Path(stack.enter_context(
            tempfile.TemporaryDirectory(prefix="frcnn-int8-bench-")))
        folder.mkdir(parents=True, exist_ok=True)
        if args.checkpoint and args.data:
            torch.set_num_threads(args.threads[-1])
            accuracy(args, folder)
        if not args.skip_speed:
            speed(args, folder)


def _version(package: str) -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(package)
    except PackageNotFoundError:
        return "not installed"


if __name__ == "__main__":
    main()
