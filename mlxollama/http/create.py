"""`POST /api/create`, the second half of creating a model over HTTP (`http/blobs.py` is the
first): its `files` map file names to digests uploaded with `POST /api/blobs/<digest>`. The
model builder reads paths, so the blobs are presented to it through symlinks in a temporary
folder: one `<name>.gguf` for a GGUF file, or a folder of files named as given for a
safetensors model.

While a create reads an upload, gc spares it whatever its age, and once the create succeeds
it is removed unless the model refers to it (a GGUF never is: its tensors become blobs of
their own) or it was uploaded again meanwhile.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import falcon

from mlxollama import api
from mlxollama.errors import InvalidName, ModelNotFound
from mlxollama.http.errors import bad_request
from mlxollama.http.native import field, json_type, progress_answer, read_json
from mlxollama.recipes.buildspec import BuildSpec
from mlxollama.store.names import parse_digest, parse_name


class Create:
    """POST /api/create (the JSON form: `from` a stored model, or `files` uploaded as blobs)"""

    reads_model = True

    def __init__(self, runtime):
        self.runtime = runtime

    def on_post(self, req: falcon.Request, resp: falcon.Response) -> None:
        body = read_json(req)
        name = api.model_of(body)
        req.context.log_start(name or None)
        if not name:
            raise bad_request("model is required")
        parse_name(name)  # InvalidName: 400 before anything is staged
        stream = field(body, "stream", bool, True)
        store = self.runtime.store
        staged = _Staged()
        try:
            spec = build_spec(body, store, staged)
            since = store.claim_uploads(staged.uploads)
        except BaseException:
            staged.cleanup()
            raise
        try:
            build = iter(self.runtime.create(name, spec))
        except BaseException:
            store.release_uploads(staged.uploads, since, drop=False)
            staged.cleanup()
            raise
        built = [False]  # whoever consumes the progress, did the build end well?

        def tracked() -> Iterator[dict[str, Any]]:
            yield from build
            built[0] = True

        progress = tracked()

        def finish() -> str | None:
            # A build goes on when its client leaves; let it finish before its files go.
            error = None
            try:
                for _ in progress:
                    pass
            except Exception as exc:
                error = str(exc)
            staged.cleanup()
            store.release_uploads(staged.uploads, since, drop=built[0])
            return error

        progress_answer(req, resp, progress, stream, finish)


class _Staged:
    """The temporary folder of symlinks a create reads its files through."""

    def __init__(self):
        self.dir: Path | None = None
        self.uploads: list[str] = []  # the digests of the uploaded files it links to

    def folder(self) -> Path:
        if self.dir is None:
            self.dir = Path(tempfile.mkdtemp(prefix="mlxollama-create-"))
        return self.dir

    def cleanup(self) -> None:
        if self.dir is not None:
            shutil.rmtree(self.dir, ignore_errors=True)
            self.dir = None


def build_spec(body: dict[str, Any], store, staged: _Staged) -> BuildSpec:
    """Translate a create body (Ollama's JSON form) into a BuildSpec.

    Raises:
        falcon.HTTPBadRequest: a field of the wrong type, a bad file name or digest, a blob
            that was not uploaded, neither `from` nor `files`, adapters.
        InvalidName, ModelNotFound: `from` names no stored model.
        InvalidOption: `parameters` or `messages`.
    """
    source_model = field(body, "from", str, "")
    files = field(body, "files", dict, {})
    if field(body, "adapters", dict, {}):
        raise bad_request("adapters are not supported yet")
    if source_model:
        found = store.find(parse_name(source_model))
        if found is None:
            raise ModelNotFound(source_model)
        source = str(found)  # fully qualified, so it cannot be mistaken for a relative path
    elif files:
        source = str(_stage_files(files, store, staged))
    else:
        raise bad_request("neither 'from' or 'files' was specified")

    messages = field(body, "messages", list, [])
    license_ = body.get("license")
    if isinstance(license_, str):
        license_ = [license_]
    elif license_ is None:
        license_ = []
    elif not (isinstance(license_, list) and all(isinstance(t, str) for t in license_)):
        raise bad_request(
            f'invalid request: "license" must be a string or an array of strings, not {json_type(license_)}'
        )
    parameters = field(body, "parameters", dict, {})
    return BuildSpec(
        source=source,
        parameters=api.parse_options(parameters),
        template=field(body, "template", str, "") or None,
        system=field(body, "system", str, "") or None,
        messages=[api.Message.from_dict(m).to_dict() for m in messages] or None,
        license=license_,
        quantize=field(body, "quantize", str, "") or field(body, "quantization", str, "") or None,
    )


def _stage_files(files: dict[str, Any], store, staged: _Staged) -> Path:
    """Validate every file name and digest first, then link the blobs into a temp folder.

    Returns:
        the `.gguf` link for a single GGUF file, else the folder.
    """
    checked: list[tuple[str, Path]] = []
    for filename, digest in files.items():
        parts = filename.split("/")
        if any(not part or part in (".", "..") or any(c in part for c in "\\\0") for part in parts):
            raise bad_request(
                f'invalid file name "{filename}": give a relative path inside the model folder'
            )
        if not isinstance(digest, str):
            raise bad_request(f'invalid request: the digest of "{filename}" must be a string')
        try:
            digest = parse_digest(digest)
        except InvalidName:
            raise bad_request(f'invalid digest format "{digest}" for "{filename}"') from None
        path = store.blobs.path(digest)
        if not path.is_file():
            raise bad_request(
                f'blob "{digest}" for "{filename}" not found: upload it first with '
                f"POST /api/blobs/{digest}"
            )
        checked.append((filename, path.absolute()))
        staged.uploads.append(digest)
    folder = staged.folder()
    if len(checked) == 1:
        filename, path = checked[0]
        if filename.lower().endswith(".gguf") or _is_gguf(path):
            if not filename.lower().endswith(".gguf"):
                filename += ".gguf"
            link = folder / filename
            os.symlink(path, link)
            return link
    for filename, path in checked:  # sub-folders too: sentence-transformers' 1_Pooling/
        (folder / filename).parent.mkdir(parents=True, exist_ok=True)
        os.symlink(path, folder / filename)
    return folder


def _is_gguf(path: Path) -> bool:
    with open(path, "rb") as f:
        return f.read(4) == b"GGUF"
