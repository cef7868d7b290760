"""`ganray studio OUT`: a web page to look at a generated output (local or s3://), served on 127.0.0.1."""
from __future__ import annotations

import argparse
import os

from ganray.cli.common import UsageError, add_verbose_arg

API_KEY_ENV = "GANRAY_API_KEY"  # the face API's setting (ganray/serve/app.py): one key for both


def _studio(args: argparse.Namespace) -> int:
    from pydantic import ValidationError

    from ganray.config.studio import StudioConfig
    from ganray.studio.output import OutputError, StudioOutput
    from ganray.studio.server import serve

    flags = {"host": "--host", "port": "--port", "face_api": "--api", "human_eval": "--human-eval",
             "page_size": "--page-size", "api_key": f"${API_KEY_ENV}"}
    try:
        cfg = StudioConfig(host=args.host, port=args.port, face_api=args.face_api, human_eval=args.human_eval,
                           page_size=args.page_size, api_key=os.environ.get(API_KEY_ENV) or None)
    except ValidationError as e:
        first = e.errors()[0]
        name = flags.get(str(first["loc"][0]), str(first["loc"][0])) if first["loc"] else "studio"
        raise UsageError(f"{name}: {first['msg']}") from None
    try:
        output = StudioOutput(args.out)
    except OutputError as e:
        raise UsageError(str(e)) from None
    serve(output, cfg)
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "studio", help="a web page to look at a generated output: faces, filters, detail, charts, card",
        description="Serve a page for OUT (a finished `ganray generate` output, local or s3://): a paged grid of "
                    "faces filtered by every label, stratum, confidence and quality score; a face's row and "
                    "seed, re-rendered through a running face API with another psi; the balance report, "
                    "evaluation results and dataset card. Listens on 127.0.0.1 unless --host says otherwise. With "
                    f"${API_KEY_ENV} set (the face API's key), every /api/ request needs it in X-API-Key.")
    parser.add_argument("out", metavar="OUT", help="a finished `ganray generate` output (local path or s3://)")
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    parser.add_argument("--port", type=int, default=8770, help="port (0: any free port, printed; default 8770)")
    parser.add_argument("--api", dest="face_api", default=None, metavar="URL",
                        help="a running face API (`ganray serve`), e.g. http://127.0.0.1:8000: re-render faces")
    parser.add_argument("--human-eval", default=None, metavar="URL",
                        help="a running human pairwise page (`ganray eval human serve`) to link to")
    parser.add_argument("--page-size", type=int, default=100, metavar="N", help="faces per page (default 100)")
    add_verbose_arg(parser)
    parser.set_defaults(handler=_studio)
