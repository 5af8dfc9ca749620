"""Benchmark: node.volume.load_view against a plain sequential pydicom loop.

Writes (or reuses, under the temp dir) a CT series of ``--slices`` x ``--matrix``^2
slices, then loads it both ways in the same run and prints the best-of-N wall
times, their ratio (the target is >= 2x on 2 cores), and the loader's peak
memory: the tracemalloc peak of one load (Python-visible allocations, numpy
included) and the peak RSS of a child process that does nothing but that load.
It prints numbers; it asserts nothing.

    python bench/load_series.py                      # 300 x 512 x 512, uncompressed
    python bench/load_series.py --compression jpegls # JPEG-LS lossless copy
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
import tracemalloc
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pydicom
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import (
    UID,
    ExplicitVRLittleEndian,
    JPEG2000Lossless,
    JPEGLSLossless,
    RLELossless,
    generate_uid,
)

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from node.grouping import GroupingSettings, group_study  # noqa: E402
from node.headers import read_header  # noqa: E402
from node.manifest import View  # noqa: E402
from node.volume import VolumeSettings, load_view  # noqa: E402

SYNTAXES = {
    "none": None,
    "rle": RLELossless,
    "jpegls": JPEGLSLossless,
    "j2k": JPEG2000Lossless,
}


def _slice(index: int, matrix: int, series_uid: str, study_uid: str) -> Dataset:
    """One CT slice with a smooth phantom-like body plus noise (compresses realistically)."""
    rng = np.random.default_rng(index)
    yy, xx = np.mgrid[0:matrix, 0:matrix]
    r = np.hypot(yy - matrix / 2, xx - matrix / 2) / (matrix / 2)
    body = np.where(r < 0.8, 1064 + 40 * np.cos(6 * r + index / 20), 24).astype(np.int16)
    body = body + rng.integers(-20, 20, size=body.shape, dtype=np.int16)
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.SOPClassUID = ds.file_meta.MediaStorageSOPClassUID = UID("1.2.840.10008.5.1.4.1.1.2")
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    ds.StudyInstanceUID, ds.SeriesInstanceUID = study_uid, series_uid
    ds.FrameOfReferenceUID = generate_uid()
    ds.Modality, ds.SeriesNumber, ds.InstanceNumber = "CT", 2, index + 1
    ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL"]
    ds.AcquisitionTime = "120000"
    ds.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
    ds.ImagePositionPatient = [-200, -200, -index * 1.0]
    ds.PixelSpacing, ds.SliceThickness = [0.78, 0.78], 1.0
    ds.Rows = ds.Columns = matrix
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 1
    ds.RescaleSlope, ds.RescaleIntercept = 1, -1024
    ds.PixelData = body.tobytes()
    return ds


def ensure_series(folder: Path, slices: int, matrix: int, compression: str) -> list[Path]:
    """Write the series unless a complete copy with the same parameters is there."""
    marker = folder / "complete.json"
    wanted = {"slices": slices, "matrix": matrix, "compression": compression, "version": 2}
    if marker.exists() and json.loads(marker.read_text()) == wanted:
        return sorted(folder.glob("*.dcm"))
    folder.mkdir(parents=True, exist_ok=True)
    for old in folder.glob("*.dcm"):
        old.unlink()
    study, series = generate_uid(), generate_uid()
    syntax = SYNTAXES[compression]
    started = time.perf_counter()
    for index in range(slices):
        ds = _slice(index, matrix, series, study)
        if syntax is not None:
            ds.compress(syntax)
        ds.save_as(folder / f"{index:04d}.dcm", enforce_file_format=True)
    marker.write_text(json.dumps(wanted))
    print(f"wrote {slices} slices to {folder} in {time.perf_counter() - started:.1f} s")
    return sorted(folder.glob("*.dcm"))


def naive_load(paths: list[Path]) -> np.ndarray:
    """The baseline: dcmread + pixel_array + rescale in a loop, sorted by position."""
    datasets = [pydicom.dcmread(p) for p in paths]
    datasets.sort(key=lambda ds: float(ds.ImagePositionPatient[2]))
    return np.stack(
        [
            ds.pixel_array.astype(np.float32) * float(ds.RescaleSlope) + float(ds.RescaleIntercept)
            for ds in datasets
        ]
    )


def make_view(paths: list[Path]) -> View:
    manifest = group_study([read_header(p) for p in paths], GroupingSettings(max_slices_per_view=4096))
    return manifest.views[0]


def interleaved_best(repeat: int, actions: list[Callable[[], object]]) -> list[float]:
    """Best wall time of each action over ``repeat`` rounds, the actions taking turns
    in every round so that a burst of load from other processes hits them alike."""
    best = [float("inf")] * len(actions)
    for _ in range(repeat):
        for index, action in enumerate(actions):
            started = time.perf_counter()
            action()
            best[index] = min(best[index], time.perf_counter() - started)
    return best


def _status_kib(field: str) -> int:
    """A memory field of /proc/self/status in KiB (VmHWM is reset by exec, unlike
    ru_maxrss, which a child inherits from the parent that forked it)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss


def child_rss(mode: str, folder: Path, workers: int) -> float:
    """Peak RSS (MiB) of a fresh process that only imports and does one load."""
    out = subprocess.run(
        [sys.executable, __file__, "--child", mode, "--dir", str(folder), "--workers", str(workers)],
        check=True,
        capture_output=True,
        text=True,
    )
    return float(out.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--slices", type=int, default=300)
    parser.add_argument("--matrix", type=int, default=512)
    parser.add_argument("--compression", choices=sorted(SYNTAXES), default="none")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--workers", type=int, default=0, help="decode threads (0 = CPUs)")
    parser.add_argument("--dir", type=Path, default=None)
    parser.add_argument("--child", choices=["loader", "naive"], help=argparse.SUPPRESS)
    args = parser.parse_args()
    folder = args.dir or Path(tempfile.gettempdir()) / (
        f"msvlm-bench-ct-{args.slices}x{args.matrix}-{args.compression}"
    )
    settings = VolumeSettings(decode_workers=args.workers)
    if args.child:
        paths = sorted(folder.glob("*.dcm"))
        if args.child == "loader":
            view = make_view(paths)
            base = _status_kib("VmRSS")
            load_view(view, settings=settings)
        else:
            base = _status_kib("VmRSS")
            naive_load(paths)
        print(f"{(_status_kib('VmHWM') - base) / 1024:.1f}")
        return
    paths = ensure_series(folder, args.slices, args.matrix, args.compression)
    view = make_view(paths)
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    volume = load_view(view, settings=settings)  # warm the page cache for both
    reference = naive_load(paths)
    # Same numbers both ways (the baseline ascends z; the loader ascends the normal).
    same = np.array_equal(np.clip(reference, -1024, 3071), volume.pixels)
    single = VolumeSettings(decode_workers=1)
    load_before = os.getloadavg()[0]
    t_loader, t_naive, t_single = interleaved_best(
        args.repeat,
        [
            lambda: load_view(view, settings=settings),
            lambda: naive_load(paths),
            lambda: load_view(view, settings=single),
        ],
    )
    tracemalloc.start()
    load_view(view, settings=settings)
    _, traced_peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    volume_mib = volume.pixels.nbytes / 2**20
    print(
        f"series: {len(paths)} x {args.matrix}x{args.matrix}, {args.compression}, "
        f"{cpus} CPU(s), decode_workers={args.workers or 'auto'}"
    )
    print(f"load average before: {load_before:.2f} (other processes skew these timings)")
    print(f"naive sequential pydicom loop: {t_naive:.3f} s (best of {args.repeat})")
    print(f"node.volume.load_view:         {t_loader:.3f} s (best of {args.repeat})")
    print(f"load_view, 1 decode thread:    {t_single:.3f} s (best of {args.repeat})")
    print(
        f"speed-up: {t_naive / t_loader:.2f}x  (target >= 2x on 2 cores); "
        f"threads alone {t_single / t_loader:.2f}x"
    )
    print(f"identical HU volume: {same}")
    print(f"output volume: {volume_mib:.1f} MiB float32")
    print(f"loader tracemalloc peak: {traced_peak / 2**20:.1f} MiB")
    print(
        f"peak RSS growth of one load in a fresh process: loader "
        f"{child_rss('loader', folder, args.workers):.1f} MiB, naive "
        f"{child_rss('naive', folder, args.workers):.1f} MiB"
    )


if __name__ == "__main__":
    main()
