"""Generates the gRPC stubs of commerce-mesh when the package is built.

hatchling runs this hook on every wheel build (so on every `pip install`):
grpcio-tools compiles `proto/commerce` (the repository's, or the copy an sdist
carries) into `commerce_mesh/<service>/v1/*_pb2.py` and `*_pb2_grpc.py`, with
typed stubs (`.pyi`) from mypy-protobuf. Nothing generated is committed, so the
stubs cannot drift from the protos.

Only our own protos are compiled. `google/api` and `google/rpc` come from the
googleapis-common-protos package (its `.proto` files to compile against, its
modules at run time), never from the copies in `proto/google`, which exist for
the Rust build: two modules registering the same proto file would clash.

The generated imports say `commerce.fulfillment.v1`, after the proto packages;
they are rewritten to `commerce_mesh.fulfillment.v1`, so that the package owns
one top-level name that no Open edX app (edx-platform has a `commerce` app)
already uses.

Run by hand (no install): `python hatch_build.py OUT_DIR` writes
`OUT_DIR/commerce_mesh/...`.
"""

from __future__ import annotations

import re
import shutil
import stat
import sys
import tempfile
from pathlib import Path
from typing import Any

PACKAGE = "commerce_mesh"
# The proto package root every generated import starts with.
PROTO_ROOT = "commerce"
# The first line of a generated package's `__init__.py`: how an editable build finds what to replace.
GENERATED = '"""Generated from proto/commerce by clients/python/hatch_build.py: do not edit."""'


def find_protos(root: Path) -> Path:
    """The `commerce` proto directory: an sdist's copy, else the repository's."""
    for candidate in (root / "proto" / PROTO_ROOT, root.parent.parent / "proto" / PROTO_ROOT):
        if candidate.is_dir():
            return candidate
    raise RuntimeError(f"no proto/{PROTO_ROOT} beside {root} nor in the repository above it")


def googleapis_include() -> Path:
    """Where googleapis-common-protos installed `google/api/*.proto`."""
    import google.api.annotations_pb2 as annotations

    include = Path(annotations.__file__).resolve().parents[2]
    if not (include / "google" / "api" / "annotations.proto").is_file():
        raise RuntimeError(f"googleapis-common-protos has no google/api/annotations.proto under {include}")
    return include


def plugin(directory: Path, name: str, entry: str) -> Path:
    """An executable protoc plugin running mypy-protobuf's `entry` on this interpreter.

    protoc runs plugins as programs; the console scripts of an isolated build
    environment are not always on PATH, so the plugin is written beside the
    build instead.
    """
    path = directory / f"protoc-gen-{name}"
    path.write_text(f"#!{sys.executable}\nimport sys\nfrom mypy_protobuf.main import {entry}\nsys.exit({entry}())\n")
    path.chmod(path.stat().st_mode | stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH)
    return path


# `from commerce.x.v1 import y_pb2` and `import commerce.x.v1.y_pb2` (stubs).
IMPORT = re.compile(rf"^(\s*)(from|import) {PROTO_ROOT}\.", re.MULTILINE)
# The module name a `_pb2.py` registers its classes under: `'commerce.x.v1.y_pb2'`.
MODULE_NAME = re.compile(rf"(['\"]){PROTO_ROOT}((?:\.\w+)+_pb2)\1")
# What must not survive the rewrite.
LEFT_OVER = re.compile(rf"^\s*(from|import) {PROTO_ROOT}\b", re.MULTILINE)


def rewrite(text: str) -> str:
    """Moves the generated modules' references from `commerce.` to `commerce_mesh.`."""
    text = IMPORT.sub(rf"\1\2 {PACKAGE}.", text)
    return MODULE_NAME.sub(rf"\1{PACKAGE}\2\1", text)


def generate(protos: Path, package_dir: Path) -> list[Path]:
    """Compiles every `.proto` under `protos` into `package_dir`; answers the files written."""
    from grpc_tools import protoc

    with tempfile.TemporaryDirectory(prefix="commerce-mesh-protos-") as scratch:
        work = Path(scratch)
        # Only our protos on the include path, so google/* resolves to googleapis-common-protos.
        include = work / "include"
        shutil.copytree(protos, include / PROTO_ROOT)
        sources = sorted(p.relative_to(include).as_posix() for p in (include / PROTO_ROOT).rglob("*.proto"))
        if not sources:
            raise RuntimeError(f"no .proto files under {protos}")
        out = work / "out"
        out.mkdir()
        well_known = Path(protoc.__file__).resolve().parent / "_proto"
        arguments = [
            "grpc_tools.protoc",
            f"-I{include}",
            f"-I{googleapis_include()}",
            f"-I{well_known}",
            f"--plugin=protoc-gen-mypy={plugin(work, 'mypy', 'main')}",
            f"--plugin=protoc-gen-mypy_grpc={plugin(work, 'mypy_grpc', 'grpc')}",
            f"--python_out={out}",
            f"--grpc_python_out={out}",
            f"--mypy_out=quiet:{out}",
            f"--mypy_grpc_out=quiet:{out}",
            *sources,
        ]
        if protoc.main(arguments) != 0:
            raise RuntimeError(f"protoc failed on {protos} (its messages are above)")

        written = []
        generated_root = out / PROTO_ROOT
        # A proto without services gets a `_pb2_grpc` module (and stub) with nothing in it.
        empty = {p.with_suffix("") for p in generated_root.rglob("*_pb2_grpc.py") if "class " not in p.read_text()}
        for path in sorted(generated_root.rglob("*")):
            if not path.is_file() or path.with_suffix("") in empty:
                continue
            text = rewrite(path.read_text())
            if LEFT_OVER.search(text):
                raise RuntimeError(f"{path.name}: an import of `{PROTO_ROOT}.` was not rewritten")
            target = package_dir / path.relative_to(generated_root)
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_text(text)
            written.append(target)
        # Every generated directory is a regular package (mypy and tools expect it).
        for directory in sorted({p.parent for p in written}):
            while directory != package_dir:
                init = directory / "__init__.py"
                if not init.exists():
                    init.write_text(GENERATED + "\n")
                    written.append(init)
                directory = directory.parent
        return written


try:
    from hatchling.builders.hooks.plugin.interface import BuildHookInterface
except ImportError:  # run by hand, without hatchling
    BuildHookInterface = object  # type: ignore[assignment,misc]


class GenerateStubs(BuildHookInterface):  # type: ignore[misc,valid-type]
    """hatchling's build hook: generated stubs into the wheel."""

    PLUGIN_NAME = "custom"

    def initialize(self, version: str, build_data: dict[str, Any]) -> None:
        """Generates the stubs: into the source tree for an editable install, else into the wheel."""
        if self.target_name != "wheel":
            return
        root = Path(self.root)
        protos = find_protos(root)
        if version == "editable":
            # The source tree is what an editable install imports; `.gitignore` keeps these out of git.
            package_dir = root / "src" / PACKAGE
            for stale in package_dir.iterdir():
                init = stale / "__init__.py"
                if init.is_file() and init.read_text().startswith(GENERATED):
                    shutil.rmtree(stale)
            generate(protos, package_dir)
            return
        self._scratch = tempfile.mkdtemp(prefix="commerce-mesh-stubs-")
        package_dir = Path(self._scratch) / PACKAGE
        for path in generate(protos, package_dir):
            build_data["force_include"][str(path)] = f"{PACKAGE}/{path.relative_to(package_dir).as_posix()}"

    def finalize(self, version: str, build_data: dict[str, Any], artifact_path: str) -> None:
        """Removes the scratch directory the stubs were generated in."""
        scratch = getattr(self, "_scratch", None)
        if scratch:
            shutil.rmtree(scratch, ignore_errors=True)


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit("usage: python hatch_build.py OUT_DIR")
    here = Path(__file__).resolve().parent
    for written in generate(find_protos(here), Path(sys.argv[1]) / PACKAGE):
        print(written)
