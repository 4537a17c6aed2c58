"""The `genserve` command line: list, describe and call models.

    genserve models [--json] [--family F]
    genserve describe MODEL
    genserve generate --model vae-fashion -n 16 --seed 1 -o grid.png
    genserve generate --model diffusion-fashion -n 4 -o grid.png --preview-every 5
    genserve encode --model vae-fashion --images a.png b.png [--json]
    genserve reconstruct --model vae-fashion --images a.png b.png -o out.png

Errors print one line to stderr; the exit status is 2 for bad input (bad
arguments, INVALID_ARGUMENT, NOT_FOUND, unreadable files) and 1 otherwise.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
import numpy as np

from genserve.client import images as image_io
from genserve.client._progress import ProgressBar, preview_strip
from genserve.client._transport import DEFAULT_ADDR
from genserve.client.client import Client
from genserve.client.errors import GenserveError
from genserve.client.results import (
    GenerateResult,
    ModelInfo,
    Preview,
    StepProgress,
    TokenDelta,
)

_BAD_INPUT = {
    grpc.StatusCode.INVALID_ARGUMENT,
    grpc.StatusCode.OUT_OF_RANGE,
    grpc.StatusCode.NOT_FOUND,
}


class _UsageError(Exception):
    """A problem with the command's own arguments, found after parsing."""


@dataclass
class _Streamed:
    """What a streamed generation left: the result, whether its text was printed, previews."""

    result: GenerateResult
    printed: bool = False
    previews: list[Preview] = field(default_factory=list)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line.

    Args:
        argv: The arguments after the program name; default sys.argv[1:].

    Returns:
        The exit status: 0 on success, 2 for bad input, 1 for other failures.
    """
    args = _parser().parse_args(argv)
    try:
        with Client(args.addr, timeout_s=args.timeout, metadata=args.header) as client:
            return args.run(client, args)
    except GenserveError as exc:
        return _fail(str(exc), 2 if exc.code in _BAD_INPUT else 1)
    except _UsageError as exc:
        return _fail(str(exc), 2)
    except OSError as exc:
        return _fail(f"{exc.filename}: {exc.strerror}" if exc.filename else str(exc), 2)
    except ValueError as exc:
        return _fail(str(exc), 2)
    except ImportError as exc:
        return _fail(str(exc), 1)
    except KeyboardInterrupt:
        return 130


def _fail(message: str, status: int) -> int:
    print(f"error: {message}", file=sys.stderr)
    return status


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="genserve", description="Call genserve models.")
    parser.add_argument(
        "--addr",
        default=os.environ.get("GENSERVE_ADDR") or DEFAULT_ADDR,
        help=f"server address (default: $GENSERVE_ADDR, else {DEFAULT_ADDR})",
    )
    parser.add_argument("--timeout", type=float, help="deadline of each call in seconds")
    parser.add_argument(
        "-H",
        "--header",
        action="append",
        type=_header,
        default=[],
        metavar="KEY=VALUE",
        help="metadata sent with every call, e.g. 'authorization=Bearer T' (repeatable)",
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    models = commands.add_parser("models", help="list the loaded models")
    models.add_argument("--json", action="store_true", help="print JSON instead of a table")
    models.add_argument("--family", help="only models of this family")
    models.set_defaults(run=_models)

    describe = commands.add_parser("describe", help="describe one model as JSON")
    describe.add_argument("model")
    describe.set_defaults(run=_describe)

    generate = commands.add_parser("generate", help="generate samples")
    _add_generate_options(generate)
    generate.set_defaults(run=_generate)

    encode = commands.add_parser("encode", help="print the codes of images or texts")
    encode.add_argument("--model", "-m", required=True)
    source = encode.add_mutually_exclusive_group(required=True)
    source.add_argument("--images", nargs="+", type=Path, metavar="PNG")
    source.add_argument("--texts", nargs="+", metavar="TEXT")
    encode.add_argument("--json", action="store_true", help="print JSON")
    encode.set_defaults(run=_encode)

    reconstruct = commands.add_parser("reconstruct", help="reconstruct images into a PNG grid")
    reconstruct.add_argument("--model", "-m", required=True)
    reconstruct.add_argument("--images", nargs="+", type=Path, required=True, metavar="PNG")
    _add_grid_options(reconstruct, required=True)
    reconstruct.set_defaults(run=_reconstruct)

    interpolate = commands.add_parser(
        "interpolate", help="a PNG strip of frames between two seeds or two images"
    )
    interpolate.add_argument("--model", "-m", required=True)
    ends = interpolate.add_mutually_exclusive_group(required=True)
    ends.add_argument("--seeds", nargs=2, type=int, metavar=("A", "B"))
    ends.add_argument("--images", nargs=2, type=Path, metavar=("A.png", "B.png"))
    interpolate.add_argument("-k", "--frames", type=int, default=8, help="frames, ends included")
    interpolate.add_argument("--label", help="class of every frame (number or name)")
    interpolate.add_argument("--method", choices=["slerp", "lerp"], default="slerp")
    _add_grid_options(interpolate, required=True)
    interpolate.set_defaults(run=_interpolate)
    return parser


def _add_generate_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", "-m", required=True)
    parser.add_argument("-n", "--num-samples", type=int, help="samples to generate (default 1)")
    parser.add_argument("--seed", type=int, help="seed for reproducible samples")
    parser.add_argument(
        "--labels", help="class labels, numbers or names, comma-separated; repeated to fill -n"
    )
    parser.add_argument("--prompt", help="text to continue, for text models")
    parser.add_argument("--steps", type=int)
    parser.add_argument("--guidance-scale", type=float)
    parser.add_argument("--temperature", type=float)
    parser.add_argument("--top-k", type=int)
    parser.add_argument("--top-p", type=float)
    parser.add_argument("--max-new-tokens", type=int)
    parser.add_argument("--stop", action="append", help="stop sequence (repeatable)")
    parser.add_argument("--truncation", type=float)
    parser.add_argument("--eta", type=float, help="DDIM's eta for diffusion, in [0, 1]")
    parser.add_argument("--stream", action="store_true", help="show progress and text as it comes")
    parser.add_argument(
        "--preview-every",
        type=_positive_int,
        metavar="K",
        help="stream, and write the images every K steps as a strip PNG (needs -o)",
    )
    parser.add_argument(
        "--preview-out",
        type=Path,
        metavar="PATH",
        help="where to write the strip (default: beside -o, e.g. grid-previews.png)",
    )
    _add_grid_options(parser, required=False)


def _add_grid_options(parser: argparse.ArgumentParser, *, required: bool) -> None:
    parser.add_argument("-o", "--output", type=Path, required=required, help="PNG file to write")
    parser.add_argument("--nrow", type=int, help="images per row of the grid")
    parser.add_argument("--scale", type=int, default=1, help="enlarge each image this many times")


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a whole number >= 1, got {text!r}")
    return value


def _header(text: str) -> tuple[str, str]:
    key, sep, value = text.partition("=")
    if not sep or not key:
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE, got {text!r}")
    return key.strip().lower(), value.strip()


def _models(client: Client, args: argparse.Namespace) -> int:
    models = client.list_models(args.family)
    if args.json:
        print(json.dumps([m.to_dict() for m in models], indent=2))
    elif not models:
        print("no models loaded", file=sys.stderr)
    else:
        _print_table(models)
    return 0


def _print_table(models: list[ModelInfo]) -> None:
    rows = [("NAME", "FAMILY", "VERSION", "CALLS")]
    rows += [(m.name, m.family, m.version, ",".join(m.calls)) for m in models]
    widths = [max(len(row[i]) for row in rows) for i in range(3)]
    for row in rows:
        cells = [cell.ljust(w) for cell, w in zip(row[:3], widths, strict=True)]
        print("  ".join([*cells, row[3]]))


def _describe(client: Client, args: argparse.Namespace) -> int:
    print(json.dumps(client.describe_model(args.model).to_dict(), indent=2))
    return 0


def _generate(client: Client, args: argparse.Namespace) -> int:
    _check_preview_options(args)
    options: dict[str, Any] = {
        "seed": args.seed,
        "class_labels": _labels(client, args),
        "prompt": args.prompt,
        "steps": args.steps,
        "guidance_scale": args.guidance_scale,
        "temperature": args.temperature,
        "top_k": args.top_k,
        "top_p": args.top_p,
        "max_new_tokens": args.max_new_tokens,
        "stop_sequences": args.stop,
        "truncation": args.truncation,
        "eta": args.eta,
    }
    if args.stream or args.preview_every:
        streamed = _generate_streamed(client, args, options)
    else:
        streamed = _Streamed(client.generate(args.model, args.num_samples, **options))
    result = streamed.result
    print(f"seed: {result.seed}", file=sys.stderr)
    for i, stats in enumerate(result.text_stats):
        which = f"sample {i}: " if len(result.text_stats) > 1 else ""
        print(
            f"{which}finish: {stats.finish_reason} ({stats.prompt_tokens} prompt + "
            f"{stats.completion_tokens} generated tokens)",
            file=sys.stderr,
        )
    if result.texts and not streamed.printed:
        for i, text in enumerate(result.texts):
            if len(result.texts) > 1:
                print(f"--- sample {i}")
            print(text)
    if result.images is not None:
        _write_grid(result.images, args)
    if args.preview_every:
        _write_strip(streamed, args)
    return 0


def _check_preview_options(args: argparse.Namespace) -> None:
    """Before any call: the strip needs --preview-every, and -o for the final images."""
    if args.preview_out is not None and not args.preview_every:
        raise _UsageError("--preview-out needs --preview-every K")
    if args.preview_every and args.output is None:
        raise _UsageError("--preview-every needs -o FILE.png for the final images")


def _generate_streamed(
    client: Client, args: argparse.Namespace, options: dict[str, Any]
) -> _Streamed:
    """Stream a generation: a progress bar on stderr, text of a single sample as it comes."""
    live = (args.num_samples or 1) == 1
    bar = ProgressBar(sys.stderr, label=args.model)
    previews: list[Preview] = []
    tokens = False
    events = client.generate_stream(
        args.model, args.num_samples, preview_every_steps=args.preview_every or 0, **options
    )
    try:
        for event in events:
            if isinstance(event, StepProgress) and not tokens:
                bar.update(event.step, event.total_steps)
            elif isinstance(event, Preview):
                previews.append(event)
            elif isinstance(event, TokenDelta) and live:
                if not tokens:
                    bar.close()
                print(event.text, end="", flush=True)
                tokens = True
            elif isinstance(event, GenerateResult):
                bar.close()
                if tokens:
                    print()
                return _Streamed(event, tokens, previews)
    finally:
        bar.close()  # an error or Ctrl-C starts on a line of its own
    raise GenserveError("the stream ended without a result", code=grpc.StatusCode.INTERNAL)


def _labels(client: Client, args: argparse.Namespace) -> list[int] | None:
    """--labels as numbers (names looked up in the model's labels), repeated to fill -n."""
    if not args.labels:
        return None
    items = [item.strip() for item in args.labels.split(",") if item.strip()]
    if not all(item.isdigit() for item in items):
        names = client.describe_model(args.model).info.labels
        unknown = [item for item in items if not item.isdigit() and item not in names]
        if unknown:
            raise _UsageError(f"--labels: {', '.join(unknown)} not in {', '.join(names) or '[]'}")
        items = [item if item.isdigit() else str(names.index(item)) for item in items]
    labels = [int(item) for item in items]
    n = args.num_samples
    if n and len(labels) not in (1, n):
        labels = [labels[i % len(labels)] for i in range(n)]
    return labels


def _image_files(client: Client, model: str, paths: list[Path]) -> np.ndarray:
    """The files as one batch in the model's channels, read here (any format Pillow reads)."""
    channels = client.describe_model(model).info.image_shape[0]
    return np.stack([image_io.read_image(path, channels) for path in paths])


def _encode(client: Client, args: argparse.Namespace) -> int:
    if args.images:
        names = [str(path) for path in args.images]
        result = client.encode(args.model, _image_files(client, args.model, args.images))
    else:
        names = list(args.texts)
        result = client.encode(args.model, texts=args.texts)
    if args.json:
        rows = []
        for i, name in enumerate(names):
            row = {"input": name, "embedding": result.embeddings[i].tolist()}
            if result.log_variance is not None:
                row["log_variance"] = result.log_variance[i].tolist()
            rows.append(row)
        print(json.dumps(rows))
        return 0
    print(f"embeddings: {tuple(result.embeddings.shape)}", file=sys.stderr)
    for name, code in zip(names, result.embeddings, strict=True):
        text = np.array2string(code, precision=4, threshold=16, edgeitems=4, max_line_width=10**6)
        print(f"{name}\t{text}")
    return 0


def _reconstruct(client: Client, args: argparse.Namespace) -> int:
    result = client.reconstruct(args.model, _image_files(client, args.model, args.images))
    if result.images is None:
        raise GenserveError("the server sent no images", code=grpc.StatusCode.INTERNAL)
    _write_grid(result.images, args)
    return 0


def _interpolate(client: Client, args: argparse.Namespace) -> int:
    label = None
    if args.label is not None:
        args.labels, args.num_samples = args.label, 1
        label = _labels(client, args)[0]
    images = _image_files(client, args.model, args.images) if args.images else None
    frames = client.interpolate(
        args.model,
        seeds=args.seeds,
        images=images,
        frames=args.frames,
        class_label=label,
        method=args.method,
    )
    args.nrow = args.nrow or len(frames)
    _write_grid(frames, args)
    return 0


def _write_strip(streamed: _Streamed, args: argparse.Namespace) -> None:
    """The previews in step order, then the final images: a column each, a row per sample."""
    if streamed.result.images is None:
        raise _UsageError("--preview-every: the model returned no images")
    columns = [_preview_images(p) for p in streamed.previews] + [streamed.result.images]
    path = args.preview_out or args.output.with_name(
        f"{args.output.stem}-previews{args.output.suffix or '.png'}"
    )
    image_io.save_png(preview_strip(columns, scale=args.scale), path)
    steps = ", ".join(str(p.step) for p in streamed.previews)
    shown = f"previews after steps {steps} and" if steps else "no previews (none came), only"
    print(f"wrote {shown} the final images to {path}", file=sys.stderr)


def _preview_images(preview: Preview) -> np.ndarray:
    if preview.images is not None:
        return preview.images
    return np.stack([image_io.from_png_bytes(png) for png in preview.pngs])


def _write_grid(images: np.ndarray, args: argparse.Namespace) -> None:
    if args.output is None:
        raise _UsageError("the model returned images: give -o FILE.png to write them")
    image_io.save_png(image_io.grid(images, nrow=args.nrow, scale=args.scale), args.output)
    print(f"wrote {len(images)} images to {args.output}", file=sys.stderr)


if __name__ == "__main__":
    sys.exit(main())
