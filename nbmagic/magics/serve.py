"""``%serve``: serve a model from the kernel with its pre-processing transformer (locally or on KServe)."""

from __future__ import annotations

import html
from typing import Any

from IPython.core.error import UsageError
from IPython.core.magic import Magics, line_magic, magics_class
from IPython.core.magic_arguments import argument, magic_arguments

from nbmagic.arguments import parse
from nbmagic.errors import NbMagicError
from nbmagic.kube import SERVING_NAMESPACE


class ServerList:
    """What ``%serve --list`` shows: the live local servers."""

    def __init__(self, servers: dict[str, Any]) -> None:
        self.servers = servers

    def __repr__(self) -> str:
        if not self.servers:
            return "no live servers"
        return "\n".join(
            f"{s.name}\t{s.url}\t{s.model_type}\t{s.transformer or '-'}\t{s.status}" for s in self.servers.values()
        )

    def _repr_html_(self) -> str:
        if not self.servers:
            return "<p>no live servers</p>"
        head = "".join(f"<th>{h}</th>" for h in ("name", "URL", "model type", "transformer", "protocol", "status"))
        rows = "".join(
            "<tr>"
            + "".join(
                f"<td>{html.escape(str(v))}</td>"
                for v in (s.name, s.url, s.model_type, s.transformer or "-", s.protocol, s.status)
            )
            + "</tr>"
            for s in self.servers.values()
        )
        return f"<table class='nbmagic-servers'><tr>{head}</tr>{rows}</table>"


@magics_class
class ServeMagics(Magics):
    """The serving magic."""

    def _lookup(self, name: str, what: str) -> Any:
        ns = self.shell.user_ns
        if not name.isidentifier():
            raise UsageError(f"{what} '{name}' must be the name of a notebook variable")
        if name not in ns:
            raise UsageError(f"{what} '{name}' is not defined in the notebook")
        return ns[name]

    @magic_arguments()
    @argument(
        "model",
        nargs="?",
        help="notebook variable holding the model (sklearn, xgboost, lightgbm, "
        "pytorch, keras, or any object with predict() or __call__)",
    )
    @argument("--transformer", metavar="FN", help="notebook function applied to raw request data before predict")
    @argument(
        "--with",
        dest="with_",
        metavar="OBJ",
        nargs="+",
        action="append",
        default=[],
        help="notebook objects the transformer uses (e.g. a tokenizer), packaged with it",
    )
    @argument("--name", help="server name (lowercase, digits, '-'); default: from the model variable")
    @argument("--port", type=int, help="HTTP port on 127.0.0.1 (default: a free port)")
    @argument(
        "--split",
        action="store_true",
        help="run the transformer as its own server forwarding to the predictor (KServe's cluster layout)",
    )
    @argument("--protocol", default="v1", choices=["v1", "v2"], help="default protocol of predict() (both are served)")
    @argument(
        "--grpc",
        nargs="?",
        type=int,
        const=0,
        default=None,
        metavar="PORT",
        help="also serve gRPC (V2) on PORT (default: a free port); off unless given",
    )
    @argument("--cluster", action="store_true", help="deploy a KServe InferenceService instead of a local server")
    @argument("--namespace", default=SERVING_NAMESPACE, help="namespace of the InferenceService (--cluster)")
    @argument(
        "--storage-uri", help="where the package is uploaded: s3://, gs://, pvc://CLAIM/PATH, file:// (--cluster)"
    )
    @argument("--image", help="image with nbmagic for the transformer/custom predictor (--cluster)")
    @argument("--list", action="store_true", help="list the live local servers")
    @argument("--stop", metavar="NAME", help="stop the live local server NAME")
    @line_magic
    def serve(self, line: str = "") -> Any:
        """Serve a model from the kernel: ``server = %serve model --transformer process_features --with tokenizer``.

        Returns a handle: ``server.url``, ``server.predict(raw_rows)``, ``server.logs()``, ``server.status``,
        ``server.stop()``. Servers bind 127.0.0.1 and stop with the kernel.
        """
        try:
            return self._serve(parse(self.serve, line))
        except NbMagicError as exc:
            raise UsageError(str(exc)) from None

    def _serve(self, args: Any) -> Any:
        from nbmagic.serve import local

        if args.list:
            return ServerList(local.live())
        if args.stop:
            local.stop(args.stop)
            return None
        if not args.model:
            raise UsageError("%serve needs a model variable (or --list / --stop NAME); see %serve?")
        model = self._lookup(args.model, "model")
        transformer = self._lookup(args.transformer, "--transformer") if args.transformer else None
        names = [n for group in args.with_ for n in group]
        with_objects = {n: self._lookup(n, "--with object") for n in names}
        grpc_port = None
        if args.grpc is not None:
            grpc_port = args.grpc or local.free_port()
        from nbmagic.api import serve

        return serve(
            model,
            name=args.name,
            model_var=args.model,
            transformer=transformer,
            transformer_var=args.transformer,
            with_objects=with_objects,
            port=args.port,
            split=args.split,
            protocol=args.protocol,
            grpc_port=grpc_port,
            cluster=args.cluster,
            namespace=args.namespace,
            storage_uri=args.storage_uri,
            image=args.image,
        )


def register(ipython: Any) -> None:
    """Register ``%serve`` on ``ipython`` (called from ``load_ipython_extension``). In a kernel, the warm server
    process starts in the background, so that even the first ``%serve`` skips KServe's imports."""
    ipython.register_magics(ServeMagics)
    if getattr(ipython, "kernel", None) is not None:
        from nbmagic.serve import warm

        warm.prestart()
