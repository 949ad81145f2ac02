"""A GPU serving node: the real `lmdeploy serve api_server`, with the version header, `/llmops/info` and the log.

Run by the node launcher from the LMDeploy environment's interpreter (it pins torch and peft, so it never shares
the pipeline's venv) as:
    python -m infra.nodes.lmdeploy_node --served-name NAME --version V --sha256 H -- serve api_server NAME ...

Before anything loads it checks that the weights hash to the registered version (else it refuses to serve). It
then runs LMDeploy's own CLI in-process and wraps the FastAPI app LMDeploy builds just before uvicorn starts it:
every response carries `X-Llmops-Model-Version`, `/llmops/info` reports the version and hash, and each answered
user chat completion is appended to `$LLMOPS_SERVING_LOG` (request id from the gateway's `X-Request-Id`), where the
feedback API finds what a verdict refers to, as on CPU nodes. LMDeploy's own `/metrics` (`lmdeploy:*`) stays as
it is: the pool's Prometheus rules read those.
"""

from __future__ import annotations

import time

T_START = time.time()  # before any heavy import: the start-up stages below are measured from here

import sys  # noqa: E402
from typing import Any  # noqa: E402

from infra.nodes.transformers_node import instrument, verified_node_args  # noqa: E402

STAGE_MARK = "llmops-node stage"


def mark(stage: str, at: float | None = None) -> None:
    """One start-up stage with its wall-clock time, in the node log (bench/gpu/elastic.py reads them)."""
    print(f"{STAGE_MARK}={stage} t={at if at is not None else time.time():.3f}", file=sys.stderr, flush=True)


def wrap_uvicorn(served_name: str, version: str, sha256: str) -> None:
    """Patch `uvicorn.run` so that the app LMDeploy passes it is instrumented first (before it starts: Starlette
    takes no middleware on a running app)."""
    import uvicorn

    run = uvicorn.run

    def instrumented_run(app: Any = None, *a: Any, **kw: Any) -> Any:
        target = kw.pop("app", app)
        mark("engine built")  # LMDeploy has loaded the weights and warmed up; the HTTP server starts now
        if not isinstance(target, str):  # an import string is not an app object: leave it
            target = instrument(target, served_name, version, sha256, own_metrics=False)
        return run(target, *a, **kw)

    uvicorn.run = instrumented_run  # type: ignore[assignment]


def main(argv: list[str] | None = None) -> None:
    mark("interpreter up", T_START)
    args, lmdeploy_args = verified_node_args(argv, __doc__)
    mark("hash verified")
    wrap_uvicorn(args.served_name, args.version, args.sha256)
    from lmdeploy.cli import run

    mark("lmdeploy imported")

    sys.argv = ["lmdeploy", *lmdeploy_args]
    run()


if __name__ == "__main__":
    main()
