"""`nvllm`, the command (a console script): the `python -m` entry points under one name, as vLLM
users type them. Every `python -m` form keeps working.

    nvllm run [group=option ...] [key=value ...]        python -m nvllm.run
    nvllm serve [--host H] [--port P] [--api-key K] [overrides ...]   python -m nvllm.serve
    nvllm bench serve [--base-url URL ...]              python -m nvllm.bench_serving
    nvllm report SWEEP_DIR [--out DIR]                  python -m nvllm.tools.report

`nvllm serve`'s options are its Hydra keys (--port 8001 is serve.port=8001, --host is serve.host,
--api-key is serve.api_key); anything else is a Hydra override, as for `nvllm run`. `nvllm run
--help` and `nvllm serve --help` list every group, option and switch."""
import sys

USAGE = __doc__.split("\n\n")[1]
SERVE_OPTIONS = {"--host": "serve.host", "--port": "serve.port", "--api-key": "serve.api_key"}


def serve_overrides(args: list[str]) -> list[str]:
    """`--port 8001` / `--port=8001` as `serve.port=8001`, for each of SERVE_OPTIONS; the rest as given."""
    out, i = [], 0
    while i < len(args):
        name, eq, value = args[i].partition("=")
        if name in SERVE_OPTIONS:
            if not eq:
                if i + 1 == len(args):
                    sys.exit(f"nvllm serve: {name} needs a value ({name} VALUE)")
                value, i = args[i + 1], i + 1
            out.append(f"{SERVE_OPTIONS[name]}={value}")
        else:
            out.append(args[i])
        i += 1
    return out


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    command, rest = (argv[0], argv[1:]) if argv else (None, [])
    if command in (None, "-h", "--help", "help"):
        print(f"usage:\n{USAGE}")
        return
    if command == "run":
        sys.argv = ["nvllm run", *rest]
        from nvllm.run import cli

        cli()
    elif command == "serve":
        sys.argv = ["nvllm serve", *serve_overrides(rest)]
        from nvllm.serve import main as serve

        serve()
    elif command == "bench":
        if rest[:1] != ["serve"]:
            sys.exit("nvllm bench: the benchmark is `nvllm bench serve [--base-url URL ...]` (--help lists its options)")
        from nvllm.tools.bench_serving import main as bench

        bench(rest[1:], prog="nvllm bench serve")
    elif command == "report":
        from nvllm.tools.report import main as report

        report(rest)
    else:
        sys.exit(f"nvllm: unknown command {command!r}; the commands:\n{USAGE}")


if __name__ == "__main__":
    main()
