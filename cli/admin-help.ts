/**
 * The server and admin commands, as `gantry --help` lists them beside the client's. They run
 * in the control plane (control-plane/admin.ts) and bin/gantry.js sends them there; the
 * command line does not load them, so this is their one-line summary only (`gantry help
 * admin` prints their full usage). test/cli/config.test.ts checks that every admin command is
 * listed.
 */
export const ADMIN_HELP = `
Server and admin commands (they work on the database directly; \`gantry help admin\` shows their options):
  start                    start the control plane (embedded PGlite unless DATABASE_URL is set)
  migrate                  apply database migrations and exit
  user create|list|quota   users and their quotas
  project create|list|limit  projects
  token create|list|revoke   OAuth tokens
  cluster create|token|list|stats|delete|reencrypt  clusters of runners
  runner list|drain        runners
  status                   the whole farm (GET /2/status, for every user)
  runner                   (as \`gantry runner\` with no verb) the runner agent
`;
