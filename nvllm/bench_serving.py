"""`python -m nvllm.bench_serving`: the serving benchmark client (nvllm/tools/bench_serving.py)."""
from nvllm.unshadow import unshadow

unshadow()  # before any other nvllm import: a directory named nvllm here may hide the package
from nvllm.tools.bench_serving import main

if __name__ == "__main__":
    main()
