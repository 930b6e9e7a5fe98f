"""Run one of timm's scripts with the ``spin_`` models registered.

timm's ``train.py`` / ``validate.py`` / ``inference.py`` (in a clone of timm's repository; they are not in timm's
wheel) build models by name from timm's registry, and they do not import this package. This runs such a script
after ``import spin_kernels`` (which registers every model under its ``spin_`` name), with the arguments it is given:

    python -m spin_kernels.timm_run path/to/train.py /data/imagenet --model spin_convmixer_768_32 \\
        --model-kwargs share_rate=2 mapping=strided backend=auto
"""
import runpy
import sys
from pathlib import Path


def main(argv=None) -> int:
    """Run ``argv[0]`` (a timm script) as ``__main__`` with ``argv[1:]`` as its arguments."""
    argv = sys.argv[1:] if argv is None else list(argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(__doc__.strip())
        return 0 if argv else 2
    script = Path(argv[0])
    if not script.is_file():
        print(f"script: {script} is not a file (expected timm's train.py, validate.py or inference.py)",
              file=sys.stderr)
        return 2
    import spin_kernels  # noqa: F401 - registers the spin_ models with timm

    sys.argv = [str(script), *argv[1:]]
    sys.path.insert(0, str(script.resolve().parent))  # as `python script.py` would
    runpy.run_path(str(script), run_name="__main__")
    return 0


if __name__ == "__main__":
    sys.exit(main())
