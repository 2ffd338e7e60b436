# Container images, one per node pool. Included from the Makefile: `make images`.
# REGISTRY and TAG must match config/deployment/<name>.yaml (registry, tag) so that
# `kfopt compile --deployment NAME` points at the images built here.
REGISTRY ?= us-docker.pkg.dev/my-project/kfopt
TAG ?= $(shell sed -n 's/^version = "\(.*\)"/\1/p' pyproject.toml)
PLATFORM ?= linux/amd64
DOCKER ?= docker
IMAGE_POOLS := cpu gpu tpu

define image_build
$(DOCKER) build --platform $(PLATFORM) -f images/$(1)/Dockerfile -t $(REGISTRY)/kfopt-$(1):$(TAG) .
endef

# Without a Docker engine this fails (exit 2) and prints the commands to run elsewhere: a
# "successful" make images that built nothing would let a later push or deploy use stale images.
.PHONY: images images-push
images:
	@if ! $(DOCKER) info >/dev/null 2>&1; then \
	  echo "make images: no Docker engine answers here ($(DOCKER) info failed); nothing was built." >&2; \
	  echo "Run these on a machine with Docker (build context: the repo root):" >&2; \
	  $(foreach pool,$(IMAGE_POOLS),echo "  $(call image_build,$(pool))" >&2;) \
	  exit 2; \
	fi
	$(foreach pool,$(IMAGE_POOLS),$(call image_build,$(pool)) &&) true

images-push: images
	$(foreach pool,$(IMAGE_POOLS),$(DOCKER) push $(REGISTRY)/kfopt-$(pool):$(TAG) &&) true
