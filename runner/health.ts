import http from 'node:http';
import type { AddressInfo } from 'node:net';
import type { RunnerAgent } from './agent.ts';
import type { RunnerMetrics } from './metrics.ts';

/**
 * The runner's local HTTP endpoint: `/healthz` fails (503) when the control stream is dead
 * or Docker does not answer, so an orchestrator restarts a zombie runner; `/metrics` for
 * Prometheus.
 */
export async function startHealthServer(agent: RunnerAgent, metrics: RunnerMetrics, host: string, port: number) {
  const server = http.createServer((req, res) => {
    if (req.url === '/healthz') {
      const h = agent.health();
      res.writeHead(h.ok ? 200 : 503, { 'Content-Type': 'application/json' });
      res.end(JSON.stringify({ ok: h.ok, reason: h.reason, state: agent.state, runnerId: agent.runnerId, busy: agent.busy(), slots: agent.slots }));
    } else if (req.url === '/metrics') {
      metrics.registry.metrics().then(
        (body) => {
          res.writeHead(200, { 'Content-Type': metrics.registry.contentType });
          res.end(body);
        },
        () => {
          res.writeHead(500);
          res.end();
        },
      );
    } else {
      res.writeHead(404, { 'Content-Type': 'application/json' });
      res.end('{"msg":"Not found"}');
    }
  });
  await new Promise<void>((resolve, reject) => {
    server.once('error', reject);
    server.listen(port, host, () => {
      server.off('error', reject);
      resolve();
    });
  });
  // A server error after listening (a failed accept) must not end the runner: health is a side door.
  server.on('error', () => undefined);
  return {
    port: (server.address() as AddressInfo).port,
    close: () => new Promise<void>((resolve) => server.close(() => resolve())),
  };
}
