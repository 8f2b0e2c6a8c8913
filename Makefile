# Everyday commands; each runs what README.md and docs/ show. `make help` lists them.
# Deploy: make deploy OVERLAY=eks IMAGE=123456789012.dkr.ecr.eu-west-1.amazonaws.com/sessiond:TAG
OVERLAY ?= dev
IMAGE ?= sessiond:dev
# Compose v1 (Debian's docker-compose 1.29) or v2: COMPOSE='docker compose -p sessiond -f ...'.
COMPOSE ?= docker-compose -p sessiond -f docker/docker-compose.yml

.PHONY: help run test lint fmt bench docker docker-down image push deploy checks check-config

help:
	@echo "make run | test | lint | fmt | bench | docker | docker-down | image | push | deploy | checks | check-config"

run: ## serve on :8080 (embedded SQLite, in-process sessions unless DB_URL/REDIS_URL are set)
	cargo run --release

test: ## the whole suite (also against PostgreSQL + Redis with TEST_DATABASE_URL + TEST_REDIS_URL)
	cargo test

lint: ## what CI enforces
	cargo fmt --all -- --check
	cargo clippy --all-targets -- -D warnings

fmt:
	cargo fmt --all

bench:
	cargo bench

docker: ## PostgreSQL, Redis, migration, two replicas behind a load balancer on :8080 (docs/deployment.md, Compose quick start)
	bash ci/dev-secrets.sh
	cargo build --release --locked
	IMAGE=sessiond:local bash ci/image.sh --prebuilt
	$(COMPOSE) up -d

docker-down:
	$(COMPOSE) down

image: ## build the container image as $(IMAGE)
	IMAGE=$(IMAGE) bash ci/image.sh

push: ## build and push $(IMAGE) (docker login first)
	IMAGE=$(IMAGE) bash ci/image.sh --push

deploy: ## kustomize overlay $(OVERLAY) with $(IMAGE) to the current kubectl context
	bash ci/deploy.sh $(OVERLAY) $(IMAGE)

checks: ## deployment checks: hadolint, yamllint, actionlint, kustomize + schemas, env names
	bash ci/checks.sh

check-config: ## validate the environment and print the configuration, secrets masked
	cargo run --release -- check-config
