"""img2img Batch: many input images (uploaded, or a folder on the server's machine) → one job each.

No gradio here. Server folders (input, output, masks) are used only while the WebUI is not reachable from the
network (no --listen, no --share), as A1111 does: otherwise any visitor could read the server's files or fill
its disk. Masks come from a folder, matched to images by file stem (a folder with one mask uses it for all).
"Take from infotext" follows A1111's "PNG info" batch option: the image's prompt is appended to the form's.
"""
from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from PIL import Image

from modules.engine.image_codec import (ImageDecodeError, effective_format, encode_image, open_image_bytes,
                                       read_image_info)
from modules.engine.images import write_atomically
from modules.engine.infotext import parse_infotext, request_fields_from_infotext
from modules.engine.request import GenerationRequest, RequestError
from modules.engine.samplers import find_sampler, find_schedule
from modules.jobs import Job, JobFailed
from modules.options import LaunchOptions

if TYPE_CHECKING:
    from modules.app import App

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp")
# A1111's "Parameters to take from png info" choices (Model hash left out: the checkpoint stays the loaded one)
INFOTEXT_FIELDS = ("Prompt", "Negative prompt", "Seed", "CFG scale", "Sampler", "Steps")
DEFAULT_INFOTEXT_FIELDS = ("Prompt", "Negative prompt")
FOLDER_LABELS = {"batch_input_dir": "Input directory", "batch_output_dir": "Output directory",
                 "batch_mask_dir": "Inpaint batch mask directory"}

MakeRequest = Callable[[Image.Image, Image.Image | None], GenerationRequest]  # (image, mask) → request


class BatchError(ValueError):
    """The batch cannot run as asked; the message says why and what to do."""


def default_batch_values() -> dict[str, Any]:
    return {"batch_files": None, "batch_input_dir": "", "batch_output_dir": "", "batch_mask_dir": "",
            "batch_use_infotext": False, "batch_infotext_fields": list(DEFAULT_INFOTEXT_FIELDS)}


# ------------------------------------------------------------------------------------------------ folders


def server_folders_allowed(options: LaunchOptions) -> bool:
    return not (options.listen or options.share)


def check_server_folders(options: LaunchOptions, folders: Mapping[str, str]) -> None:
    """Refuse any non-empty folder field (name → path) while the server is reachable from the network."""
    used = [FOLDER_LABELS.get(name, name) for name, path in folders.items() if path and path.strip()]
    if used and not server_folders_allowed(options):
        raise BatchError(f"{', '.join(used)}: folders on the server can only be used when the WebUI is not "
                         "listening on the network (--listen) or shared (--share). Upload the images instead.")


def list_images(folder: Path, what: str) -> list[Path]:
    if not folder.is_dir():
        raise BatchError(f"{what} {str(folder)!r} is not a folder")
    return sorted(path for path in folder.iterdir() if path.is_file() and path.suffix.lower() in IMAGE_SUFFIXES)


def find_mask(image: Path, masks: Sequence[Path]) -> Path | None:
    """A1111's matching: the only mask if there is one, else the mask with the image's file stem."""
    if len(masks) == 1:
        return masks[0]
    return next((mask for mask in masks if mask.stem == image.stem), None)


# -------------------------------------------------------------------------------------------------- plan


@dataclass
class BatchPlan:
    """What a batch will do, decided before anything runs (cheap: no image is decoded yet)."""

    inputs: list[Path]
    masks: dict[Path, Path] = field(default_factory=dict)  # input → its mask
    output_dir: Path | None = None
    infotext_fields: tuple[str, ...] = ()  # empty: do not read the images' infotexts
    warnings: list[str] = field(default_factory=list)


def plan_batch(options: LaunchOptions, *, uploads: Sequence[str | Path] = (), input_dir: str = "",
               output_dir: str = "", mask_dir: str = "", infotext_fields: Sequence[str] = ()) -> BatchPlan:
    check_server_folders(options, {"batch_input_dir": input_dir, "batch_output_dir": output_dir,
                                   "batch_mask_dir": mask_dir})
    if uploads and input_dir.strip():
        raise BatchError("Batch: upload images or enter an input directory, not both")
    inputs = [Path(path) for path in uploads] or (
        list_images(Path(input_dir.strip()).expanduser(), "Input directory") if input_dir.strip() else [])
    if not inputs:
        raise BatchError("Batch: upload images or enter an input directory that holds images "
                         f"({', '.join(IMAGE_SUFFIXES)})")
    unknown = [name for name in infotext_fields if name not in INFOTEXT_FIELDS]
    if unknown:
        raise BatchError(f"cannot take {', '.join(unknown)} from infotexts; choose from {', '.join(INFOTEXT_FIELDS)}")
    plan = BatchPlan(inputs, infotext_fields=tuple(infotext_fields))
    if output_dir.strip():
        plan.output_dir = Path(output_dir.strip()).expanduser()
    if mask_dir.strip():
        _match_masks(plan, list_images(Path(mask_dir.strip()).expanduser(), "Mask directory"))
    return plan


def _match_masks(plan: BatchPlan, masks: list[Path]) -> None:
    """Images without a mask are skipped (A1111 does the same), each named in a warning."""
    if not masks:
        raise BatchError("Mask directory holds no images")
    kept = []
    for image in plan.inputs:
        mask = find_mask(image, masks)
        if mask is None:
            plan.warnings.append(f"no mask named {image.stem}.* for {image.name}: skipped")
        else:
            plan.masks[image] = mask
            kept.append(image)
    if not kept:
        raise BatchError("no image has a mask with the same file name in the mask directory")
    plan.inputs = kept


def plan_from_form(options: LaunchOptions, values: Mapping[str, Any]) -> BatchPlan:
    """The img2img Batch tab's fields (see default_batch_values) → BatchPlan."""
    fields = (values.get("batch_infotext_fields") or ()) if values.get("batch_use_infotext") else ()
    return plan_batch(options, uploads=[_upload_path(upload) for upload in values.get("batch_files") or ()],
                      input_dir=str(values.get("batch_input_dir") or ""),
                      output_dir=str(values.get("batch_output_dir") or ""),
                      mask_dir=str(values.get("batch_mask_dir") or ""), infotext_fields=list(fields))


def _upload_path(upload: Any) -> str:
    return upload if isinstance(upload, (str, Path)) else getattr(upload, "name", str(upload))


# ------------------------------------------------------------------------------------------------- items


@dataclass
class BatchItem:
    path: Path
    image: Image.Image
    mask: Image.Image | None
    infotext: str | None


def load_image(path: Path) -> Image.Image:
    """Decode with the same limits as API images (pixel cap checked before decoding)."""
    try:
        return open_image_bytes(path.read_bytes())
    except (ImageDecodeError, OSError) as error:
        raise BatchError(f"{path.name}: {error}") from None


def batch_items(plan: BatchPlan) -> Iterator[BatchItem]:
    """Decoded lazily, one image at a time, so a large folder never sits in memory."""
    for path in plan.inputs:
        image = load_image(path)
        mask = load_image(plan.masks[path]) if path in plan.masks else None
        infotext = read_image_info(image)[0] if plan.infotext_fields else None
        yield BatchItem(path, image, mask, infotext)


def apply_infotext(request: GenerationRequest, infotext: str | None, fields: Sequence[str]) -> GenerationRequest:
    """A1111's batch "PNG info": append the image's prompts to the form's; take seed, CFG, sampler, steps as is."""
    if not infotext or not fields:
        return request
    parsed = request_fields_from_infotext(parse_infotext(infotext, defaults=False))
    changes: dict[str, Any] = {}
    for label, name in (("Prompt", "prompt"), ("Negative prompt", "negative_prompt")):
        if label in fields and parsed.get(name):
            changes[name] = " ".join(part for part in (getattr(request, name), parsed[name]) if part)
    for label, name in (("Seed", "seed"), ("CFG scale", "cfg_scale"), ("Steps", "steps")):
        if label in fields and name in parsed:
            changes[name] = parsed[name]
    if "Sampler" in fields and find_sampler(str(parsed.get("sampler_name", ""))) is not None:
        changes["sampler_name"] = find_sampler(parsed["sampler_name"]).name
        schedule = find_schedule(str(parsed.get("scheduler", "")))
        if schedule is not None:
            changes["scheduler"] = schedule.label
    return request.replace(**changes)


# --------------------------------------------------------------------------------------------------- run


class BatchRun:
    """The batch's jobs, submitted one at a time as the consumer asks for the next (other users' jobs can run in
    between, and an interrupt ends the batch). With an output folder, results are saved there instead of outputs/.
    """

    def __init__(self, app: App, plan: BatchPlan, make_request: MakeRequest) -> None:
        self.app, self.plan, self.make_request = app, plan, make_request
        self.warnings = list(plan.warnings)
        self.saved: list[Path] = []

    def requests(self) -> Iterator[tuple[Path, GenerationRequest]]:
        for item in batch_items(self.plan):
            try:
                request = apply_infotext(self.make_request(item.image, item.mask), item.infotext,
                                         self.plan.infotext_fields)
                request.validate()
            except RequestError as error:
                raise BatchError(f"{item.path.name}: {error}") from None
            # A1111 saves no grids in a batch; with an output folder the images go there only
            yield item.path, request.replace(save_grid=False, save_images=request.save_images and
                                             self.plan.output_dir is None)

    def __iter__(self) -> Iterator[Job]:
        for path, request in self.requests():
            job = self.app.submit(request)
            try:
                yield job
            finally:  # also when the consumer stops early (an interrupt): keep what was made
                self._save(job, path.stem)

    def _save(self, job: Job, stem: str) -> None:
        """Wait for the job (the next one is submitted only after it), then save it to the output folder."""
        try:
            result = job.wait()
        except JobFailed:
            return
        if self.plan.output_dir is not None and result is not None:
            self.saved += save_to_folder(self.app, result.images, result.infotexts, self.plan.output_dir, stem)


def save_to_folder(app: App, images: Sequence[Image.Image], infotexts: Sequence[str], folder: Path,
                   stem: str) -> list[Path]:
    """`<stem>.png` (`<stem>-<n>.png` for several images), never overwriting: `-1`, `-2`... are added (A1111)."""
    settings = app.settings
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for number, (image, infotext) in enumerate(zip(images, infotexts), start=1):
        name = stem if len(images) == 1 else f"{stem}-{number}"
        fmt = effective_format(image, settings.samples_format)
        data = encode_image(image, fmt, infotext if settings.enable_pnginfo else None)
        extension = "jpg" if fmt == "JPEG" else fmt.lower()
        path = _reserve_path(folder, name, extension)
        write_atomically(path, data)
        paths.append(path)
    return paths


def _reserve_path(folder: Path, name: str, extension: str) -> Path:
    """Create the first free `name[-N].ext` empty and exclusively ("x"), so two batches never pick the same name."""
    suffix = 0
    while True:
        path = folder / (f"{name}.{extension}" if suffix == 0 else f"{name}-{suffix}.{extension}")
        try:
            with open(path, "xb"):
                return path
        except FileExistsError:
            suffix += 1
