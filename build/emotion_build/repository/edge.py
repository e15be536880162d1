"""The edge in front of tritonserver: an Envoy config whose request-size cap follows from the export.

Neither Triton 2.51 nor 2.55 can refuse a request for its size: the gRPC endpoint takes messages
up to 2 GiB (`SetMaxMessageSize(INT32_MAX)`, no flag; still so in 2.59+), the HTTP endpoint has no
limit before `--http-max-input-size` (2.59), and a variable dimension has no upper bound in a model
config. So the whole of an oversized request crosses gRPC and is copied into the Python backend's
shared memory before the preprocess model can refuse it (docs/hardening.md, "Oversized requests").
Envoy's buffer filter holds at most `max_request_bytes` of a request and answers 413 beyond it,
before anything reaches Triton.

The caps are the largest valid request and no more: the export's `max_samples` (written once, into
the preprocess config, from `--max-duration-s`) as float32, plus framing. Over HTTP the samples may
also travel as JSON text, which takes up to `JSON_BYTES_PER_SAMPLE` per sample.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from google.protobuf import text_format
from tritonclient.grpc import model_config_pb2 as mc

from .layout import emotion_models

__all__ = [
    "EDGE_GRPC_PORT",
    "EDGE_HTTP_PORT",
    "FRAMING_BYTES",
    "JSON_BYTES_PER_SAMPLE",
    "RequestLimits",
    "envoy_config",
    "main",
    "render",
    "repository_limits",
]

FLOAT32_BYTES = 4
FRAMING_BYTES = 64 * 1024
"""Room for everything around the samples: the gRPC frame header, the protobuf or JSON request
(model name, tensor name, shape, datatype, parameters, requested outputs), a few hundred bytes in
practice."""
JSON_BYTES_PER_SAMPLE = 25
"""The longest float32 sample as JSON text in a list: "-1.1754943508222875e-38, "."""
EDGE_GRPC_PORT = 9001
EDGE_HTTP_PORT = 9000
"""Where Envoy listens; Triton's own ports (8001, 8000) stay on loopback behind it."""
_STREAM_METHOD = "/inference.GRPCInferenceService/ModelStreamInfer"


@dataclasses.dataclass(frozen=True, slots=True)
class RequestLimits:
    """The largest request body the edge lets through, per protocol, from the export's longest clip."""

    max_samples: int
    grpc_bytes: int
    http_bytes: int

    @classmethod
    def for_samples(cls, max_samples: int) -> RequestLimits:
        if max_samples < 1:
            raise ValueError(f"max_samples must be positive, got {max_samples}")
        return cls(
            max_samples=max_samples,
            grpc_bytes=max_samples * FLOAT32_BYTES + FRAMING_BYTES,
            http_bytes=max_samples * JSON_BYTES_PER_SAMPLE + FRAMING_BYTES,
        )


def repository_limits(repository: Path) -> RequestLimits:
    """The limits of an exported repository: the largest preprocess `max_samples` of its models (one edge
    fronts them all; each model still refuses what is too long for it)."""
    models = emotion_models(repository)
    if not models:
        raise FileNotFoundError(f"{repository} holds no exported model: is it an exported model repository?")
    largest = 0
    for names in models.values():
        path = repository / names.preprocess / "config.pbtxt"
        if not path.is_file():
            raise FileNotFoundError(f"{path} does not exist: export model '{names.ensemble}' again")
        config = text_format.Parse(path.read_text(), mc.ModelConfig())
        if "max_samples" not in config.parameters:
            raise ValueError(f"{path} has no max_samples parameter; export the repository again")
        largest = max(largest, int(config.parameters["max_samples"].string_value))
    return RequestLimits.for_samples(largest)


def _typed(kind: str, **fields: Any) -> dict[str, Any]:
    return {"@type": f"type.googleapis.com/{kind}", **fields}


def _cluster(name: str, host: str, port: int, *, http2: bool) -> dict[str, Any]:
    protocol: dict[str, Any] = {"http2_protocol_options": {}} if http2 else {"http_protocol_options": {}}
    return {
        "name": name,
        "type": "STATIC",
        "connect_timeout": "2s",
        "typed_extension_protocol_options": {
            "envoy.extensions.upstreams.http.v3.HttpProtocolOptions": _typed(
                "envoy.extensions.upstreams.http.v3.HttpProtocolOptions", explicit_http_config=protocol
            )
        },
        "load_assignment": {
            "cluster_name": name,
            "endpoints": [{"lb_endpoints": [{"endpoint": {"address": _address(host, port)}}]}],
        },
    }


def _address(host: str, port: int) -> dict[str, Any]:
    return {"socket_address": {"address": host, "port_value": port}}


def _listener(name: str, port: int, cluster: str, max_bytes: int, routes: list[dict[str, Any]]) -> dict[str, Any]:
    too_large = (
        f"request refused at the edge: larger than {max_bytes} bytes, more than the server's longest clip; "
        "send a shorter clip (the SDK says how long the server accepts)"
    )
    manager = _typed(
        "envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager",
        stat_prefix=name,
        codec_type="AUTO",
        route_config={
            "name": name,
            "virtual_hosts": [
                {
                    "name": "triton",
                    "domains": ["*"],
                    "routes": [*routes, {"match": {"prefix": "/"}, "route": {"cluster": cluster, "timeout": "0s"}}],
                }
            ],
        },
        http_filters=[
            {
                "name": "envoy.filters.http.buffer",
                "typed_config": _typed("envoy.extensions.filters.http.buffer.v3.Buffer", max_request_bytes=max_bytes),
            },
            {
                "name": "envoy.filters.http.router",
                "typed_config": _typed("envoy.extensions.filters.http.router.v3.Router"),
            },
        ],
        local_reply_config={
            "mappers": [
                {
                    "filter": {
                        "status_code_filter": {
                            "comparison": {
                                "op": "EQ",
                                "value": {"default_value": 413, "runtime_key": f"edge.{name}.too_large_status"},
                            }
                        }
                    },
                    "body": {"inline_string": too_large},
                }
            ]
        },
    )
    return {
        "name": name,
        "address": _address("0.0.0.0", port),
        "filter_chains": [
            {"filters": [{"name": "envoy.filters.network.http_connection_manager", "typed_config": manager}]}
        ],
    }


def envoy_config(
    limits: RequestLimits,
    *,
    upstream_host: str = "127.0.0.1",
    upstream_grpc_port: int = 8001,
    upstream_http_port: int = 8000,
) -> dict[str, Any]:
    """Envoy's static config: gRPC on EDGE_GRPC_PORT and HTTP on EDGE_HTTP_PORT, each capped.

    gRPC streaming is refused (UNIMPLEMENTED): the buffer filter would hold a stream until the
    client closes it, and nothing here streams (the ensemble answers once per request)."""
    streaming = {
        "match": {"prefix": _STREAM_METHOD},
        "direct_response": {
            "status": 404,
            "body": {"inline_string": "streaming inference is not served here; use ModelInfer"},
        },
    }
    return {
        "static_resources": {
            "listeners": [
                _listener("grpc", EDGE_GRPC_PORT, "triton_grpc", limits.grpc_bytes, [streaming]),
                _listener("http", EDGE_HTTP_PORT, "triton_http", limits.http_bytes, []),
            ],
            "clusters": [
                _cluster("triton_grpc", upstream_host, upstream_grpc_port, http2=True),
                _cluster("triton_http", upstream_host, upstream_http_port, http2=False),
            ],
        }
    }


def render(config: dict[str, Any]) -> str:
    """JSON, which is YAML: Envoy reads the file as YAML by its extension."""
    return json.dumps(config, indent=2) + "\n"


def main(argv: Sequence[str] | None = None) -> int:
    """`python -m emotion_build.repository.edge REPOSITORY OUTPUT`: write the Envoy config of an exported repository."""
    parser = argparse.ArgumentParser(prog="python -m emotion_build.repository.edge", description=main.__doc__)
    parser.add_argument("repository", type=Path, help="an exported model repository")
    parser.add_argument("output", type=Path, help="where to write the Envoy config (envoy.yaml)")
    args = parser.parse_args(argv)
    try:
        limits = repository_limits(args.repository)
    except (FileNotFoundError, ValueError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(render(envoy_config(limits)))
    print(
        f"wrote {args.output}: requests up to {limits.max_samples} samples, "
        f"gRPC bodies <= {limits.grpc_bytes} bytes, HTTP bodies <= {limits.http_bytes} bytes"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
