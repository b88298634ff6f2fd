# The Gantry control plane as an image. Build from the repository root:
#   docker build -f deploy/docker/control-plane.Dockerfile -t gantry/control-plane:0.1.0 .
# Run (PostgreSQL and etcd for several replicas; the README's "Production" section):
#   docker run -d -p 8080:8080 -p 9090:9090 -e DATABASE_URL=postgres://... \
#     -e ETCD_ENDPOINTS=http://etcd:2379 -e GANTRY_SECRET_KEYS=k1:... -e GANTRY_SERVER_ID=cp-1 \
#     gantry/control-plane:0.1.0
# Without DATABASE_URL it runs the embedded store (PGlite) in the volume /var/lib/gantry.
# Admin commands: docker run --rm ... gantry/control-plane:0.1.0 user create --email ...
ARG BASE_IMAGE=node:20-bookworm-slim

# Build: every dependency, then the TypeScript compiled to dist/ (npm run build).
FROM ${BASE_IMAGE} AS build
WORKDIR /src
COPY package.json package-lock.json ./
RUN npm ci --no-audit --no-fund --loglevel=error
COPY tsconfig.json tsconfig.build.json ./
COPY scripts/build.ts ./scripts/
COPY dashboard ./dashboard
COPY lib ./lib
COPY cli ./cli
COPY proto ./proto
COPY cloud-config ./cloud-config
COPY autoscaler ./autoscaler
COPY runner ./runner
COPY control-plane ./control-plane
RUN npm run build

# Runtime: production dependencies only (no tsx, no TypeScript) and the built JavaScript.
FROM ${BASE_IMAGE}
WORKDIR /opt/gantry
ENV NODE_ENV=production
COPY package.json package-lock.json ./
RUN npm ci --omit=dev --no-audit --no-fund --loglevel=error && npm cache clean --force
COPY bin ./bin
COPY --from=build /src/dist ./dist
# The image's unprivileged user (`node`, uid 1000, in node's images) owns the data directory.
RUN mkdir -p /var/lib/gantry && chown node:node /var/lib/gantry
USER node
ENV GANTRY_DATA_DIR=/var/lib/gantry GANTRY_HOST=0.0.0.0 GANTRY_PORT=8080 \
    GANTRY_GRPC_HOST=0.0.0.0 GANTRY_GRPC_PORT=9090 GANTRY_LOCAL_RUNNERS=0
VOLUME /var/lib/gantry
EXPOSE 8080 9090
HEALTHCHECK --interval=10s --timeout=3s --start-period=30s --retries=3 CMD ["node", "-e", "fetch('http://127.0.0.1:'+(process.env.GANTRY_PORT||8080)+'/healthz').then(r=>process.exit(r.ok?0:1),()=>process.exit(1))"]
# SIGTERM stops gracefully (README, "Several replicas"); allow it time: docker stop -t 60.
STOPSIGNAL SIGTERM
ENTRYPOINT ["node", "/opt/gantry/bin/gantry.js"]
CMD ["start"]
