# `make bench` (included by the Makefile): kfopt's best variant against the as-trained model (Keras or
# torch, called eagerly) and against Microsoft Olive, measured side by side on this machine; see bench/README.md.
# The script creates .venv-olive itself (pinned in bench/requirements-olive.txt) the first time, so that
# an Olive install failure is reported in the results rather than stopping the rest of the comparison.
# Extra arguments: make bench BENCH_ARGS="--configs digits_cnn_torch --rounds 5" (or --update-readme, --no-olive).
BENCH_ARGS ?=

.PHONY: bench
bench: $(RUN_STAMP)
	$(BIN)/python bench/run_bench.py $(BENCH_ARGS)
