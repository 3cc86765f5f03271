/**
 * The `airlock` command tree: every command, flag and help text. Actions import their
 * implementation lazily so `airlock --help` and flag errors load nothing but commander.
 */
import { readFileSync } from 'node:fs';
import { Command, Option } from 'commander';
import {
  RUNTIMES, SANDBOX_STATES, collectAllowHost, collectDenyHost, parseBandwidth, parseNetPool, collectBlockRange, collectEnv, collectLabel, collectMount, parseCpus,
  parseDnsUpstream, parseDurationSeconds, parseFileMode, parseListen, parsePositiveInt, parseSandboxPath,
  parseSignal, parseSizeMiB, parseRuntime, collectTenantRuntime,
} from './flags.js';
import { collectMountPrefix, collectVolume, parseVolumeName } from './volume-flags.js';
import { registerFileCommands } from './file-commands.js';
import { registerTenantCommands } from './tenant-commands.js';
import { registerUsageCommand } from './usage-commands.js';
import { collectSecret, registerSecretCommands } from './secret-commands.js';
import { registerApprovalCommands } from './approval-commands.js';
import { registerAuditCommands } from './audit-commands.js';

/** Each action reports its exit status here; main exits with it after output is flushed. */
export interface ActionResult {
  exitCode: number;
}

function readVersion(): string {
  try {
    const pkg = JSON.parse(readFileSync(new URL('../../package.json', import.meta.url), 'utf8')) as { version?: string };
    return pkg.version ?? '0.0.0';
  } catch {
    return '0.0.0';
  }
}

const DATA_DIR_HELP = 'use the engine in this process on this data dir (default: the local daemon if one answers, else /var/lib/airlock)';

function addDataDir(cmd: Command): Command {
  return cmd.option('--data-dir <dir>', DATA_DIR_HELP);
}

/** The flags `run` and `sandbox create` share: what the sandbox may use, reach and see. */
function addSandboxOptions(cmd: Command): Command {
  return addDataDir(
    cmd
      .addOption(
        new Option('--runtime <name>', 'isolation: container is fastest, gvisor adds a user-space kernel, microvm its own kernel (default container)').choices(RUNTIMES),
      )
      .option('--template <name>', 'root filesystem to start from (see `airlock template ls`)', 'base')
      .option('--memory <size>', 'memory limit, e.g. 256m, 1g; k/m/g suffixes, plain number = MiB (default 512m)', (v: string) => parseSizeMiB(v, '--memory'))
      .option('--cpus <n>', 'CPU limit in cores, e.g. 0.5 (default 1)', (v: string) => parseCpus(v, '--cpus'))
      .option('--pids <n>', 'most processes and threads at once (default 256)', (v: string) => parsePositiveInt(v, '--pids'))
      .option('--disk <size>', 'disk space the sandbox may write, e.g. 500m (default 1g)', (v: string) => parseSizeMiB(v, '--disk'))
      .option('--timeout <duration>', 'sandbox lifetime, e.g. 30s, 5m, 1h; plain number = seconds (default 5m)', (v: string) =>
        parseDurationSeconds(v, '--timeout', { wholeSeconds: true }),
      )
      .option('--allow-host <host>', 'let the sandbox reach HOST: a name, *.suffix, IPv4 or CIDR, optionally :PORT (repeatable; default: no network at all)', collectAllowHost)
      .option('--deny-host <host>', 'never let it reach HOST, even if allowed (same forms; repeatable)', collectDenyHost)
      .option('--bandwidth <rate>', 'cap the sandbox\'s network each way, e.g. 10m (Mbit/s), 1g', (v: string) => parseBandwidth(v))
      .option('--mount <spec>', 'bind HOSTPATH:PATH[:ro|rw] into the sandbox, read-only by default (repeatable)', collectMount)
      .option('--volume <spec>', 'attach volume NAME:PATH[:ro|rw], read-only by default; one rw user at a time (repeatable; see `airlock volume`)', collectVolume)
      .option('--env <K=V>', 'environment variable; a bare K copies it from here (repeatable)', collectEnv)
      .option('--workdir <dir>', 'working directory inside the sandbox (default /work)', (v: string) => parseSandboxPath(v, '--workdir'))
      .option('--output-path <dir>', 'where the sandbox\'s outputs are collected from (default /work/out)', (v: string) => parseSandboxPath(v, '--output-path'))
      .option('--label <K=V>', 'metadata to find the sandbox by (repeatable)', collectLabel)
      .option('--secret <name>', 'broker the tenant\'s secret NAME: $NAME holds a placeholder the egress proxy swaps for the value, for its hosts only (repeatable; see `airlock secret`)', collectSecret)
      .option('--dns-upstream <ip:port>', 'DNS server the embedded engine asks for allowed names (default: the host resolver)', (v: string) =>
        parseDnsUpstream(v),
      ),
  );
}

type Opts = Record<string, unknown>;

export function buildProgram(result: ActionResult): Command {
  const set = (p: Promise<number>) => p.then((code) => void (result.exitCode = code));

  const program = new Command('airlock')
    .description('Airlock runs untrusted code (yours, or an AI agent\'s) in isolated, disposable sandboxes.')
    .version(readVersion(), '-V, --version', 'print the version')
    .helpOption('-h, --help', 'show help')
    .helpCommand('help [command]', 'show help for a command')
    .enablePositionalOptions()
    .exitOverride()
    .configureOutput({ outputError: (str, write) => write(str.replace(/^error: /, 'airlock: ')) })
    .addHelpText(
      'after',
      `
Examples:
  $ airlock run -- python3 -c 'print(6*7)'
  $ airlock run --memory 256m --cpus 0.5 --timeout 1m -- python3 -c 'import os; print(os.cpu_count())'
  $ id=$(airlock sandbox create --timeout 10m) && airlock sandbox exec "$id" -- ls /

Environment:
  AIRLOCK_URL, AIRLOCK_API_KEY   talk to this airlockd instead of running the engine in-process`,
    );

  program
    .command('serve')
    .description('run airlockd, the HTTP API, on this machine')
    .addOption(new Option('--listen <host:port>', 'address to listen on').default('127.0.0.1:7070').argParser((v: string) => parseListen(v)))
    .option('--data-dir <dir>', 'where the database, admin key and sandboxes live', '/var/lib/airlock')
    .option('--dns-upstream <ip:port>', 'DNS server asked for allowed names (default: the host resolver)', (v: string) => parseDnsUpstream(v))
    .option('--mount-allow <prefix>', 'host path under which --mount sources must lie, compared after resolving links (repeatable; default: anywhere but Airlock\'s own dirs)', collectMountPrefix)
    .option('--no-rw-mounts', 'refuse read-write host mounts (read-only ones stay allowed)')
    .option('--storage-size <size>', 'disk all sandboxes and volumes may claim together, e.g. 64g (default 64g; never more than half the free disk when the data dir was made)', (v: string) => parseSizeMiB(v, '--storage-size'))
    .option('--net-pool <cidr>', 'addresses for sandbox links, one /30 each (default 10.213.0.0/16)', (v: string) => parseNetPool(v))
    .option('--audit-key <file>', 'the ed25519 key file that signs audit checkpoints, ideally on another volume than the data dir (default $AIRLOCK_AUDIT_KEY, else DATA_DIR/audit-signing.key; made 0600 on first use)')
    .option('--secrets-key <file>', 'the key file that encrypts secrets at rest, ideally on another volume than the data dir (default $AIRLOCK_SECRETS_KEY, else DATA_DIR/secrets.key; made 0600 on first use)')
    .option('--block-range <cidr>', 'a destination range the egress proxy refuses; replaces the default list (loopback, link-local, RFC 1918, CGNAT, ULA, multicast…) when given (repeatable)', collectBlockRange)
    .option('--min-runtime <tier>', 'the weakest isolation tier any sandbox may use: container, gvisor or microvm (weaker requests get 422; default: any)', (v: string) => parseRuntime(v, '--min-runtime'))
    .option('--tenant-min-runtime <tenant=tier>', 'a floor for one tenant, e.g. untrusted=microvm (repeatable; the stronger of this and --min-runtime applies)', collectTenantRuntime)
    .option('--default-runtime <tier>', 'the tier of a sandbox that names none, raised to the caller\'s floor (default container)', (v: string) => parseRuntime(v, '--default-runtime'))
    .option('--max-upload <size>', 'largest file one upload may write, e.g. 2g (default 8g; uploads stream, so this bounds disk, not memory)', (v: string) => parseSizeMiB(v, '--max-upload'))
    .option('--approval-timeout <duration>', 'how long an approval request waits before it is denied, e.g. 2m (default 120s; a policy\'s approvals.timeoutSeconds wins)', (v: string) =>
      parseDurationSeconds(v, '--approval-timeout', { wholeSeconds: true }),
    )
    .option('--approval-webhook <url>', 'POST each approval request here as JSON (docs/approvals.md); a policy\'s approvals.webhookUrl wins')
    .option('--approval-webhook-secret-file <file>', 'key for the webhook\'s X-Airlock-Signature (HMAC-SHA256 of the body); unsigned without it')
    .option('--prices <file>', 'metering price sheet, JSON: {"vcpuHour","memoryGiBHour","diskGiBHour","netGiB"} (docs/metering.md; fields left out keep the defaults)')
    .option('--metrics-public', 'serve GET /metrics without a key (default: admin keys only)')
    .action((opts: Opts) => set(import('./commands/serve.js').then((m) => m.serveCommand(opts as never))));

  addSandboxOptions(
    program
      .command('run')
      .description('create a sandbox, run CMD in it with its output streamed here, then destroy it')
      .argument('<cmd...>', 'the command and its arguments (put them after --)')
      .passThroughOptions(),
  )
    .option('--exec-timeout <duration>', 'kill the command after this long (exit 124)', (v: string) => parseDurationSeconds(v, '--exec-timeout'))
    .option('--no-stdin', 'do not forward this command\'s stdin (by default piped stdin is passed on)')
    .option('--json', 'print one JSON object {sandboxId, exitCode, stdout, stderr, durationMs, reason} instead of streaming')
    .option('--outputs <local_dir>', 'after CMD exits, extract the sandbox\'s outputs (/work/out, or --output-path) into LOCAL_DIR')
    .addHelpText(
      'after',
      `
Exit status: the command's own; 124 when it or the sandbox timed out, 137 when it was
killed for memory, 130 when interrupted, 125 when Airlock itself failed.

Examples:
  $ airlock run -- echo hello
  $ airlock run --runtime gvisor --memory 512m --timeout 2m --mount ./job:/in -- python3 /in/job.py
  $ echo 'print(1+1)' | airlock run -- python3 -
  $ airlock run --json -- sh -c 'echo out; echo err >&2; exit 3'`,
    )
    .action((cmd: string[], opts: Opts) => set(import('./commands/run.js').then((m) => m.runCommand(cmd, opts))));

  const sandbox = program.command('sandbox').description('manage long-lived sandboxes');

  addSandboxOptions(sandbox.command('create').description('create a sandbox and print its id'))
    .option('--json', 'print the whole sandbox record as JSON')
    .addHelpText('after', '\nExample:\n  $ airlock sandbox create --template base --timeout 30m --label task=42')
    .action((opts: Opts) => set(import('./commands/sandbox.js').then((m) => m.createCommand(opts))));

  addDataDir(
    sandbox
      .command('ls')
      .description('list sandboxes')
      .addOption(new Option('--state <state>', 'only sandboxes in this state').choices(SANDBOX_STATES))
      .option('--label <K=V>', 'only sandboxes with this metadata (repeatable)', collectLabel)
      .option('--json', 'print JSON'),
  ).action((opts: Opts) => set(import('./commands/sandbox.js').then((m) => m.listCommand(opts))));

  addDataDir(sandbox.command('get').description('print a sandbox\'s record as JSON').argument('<id>', 'sandbox id')).action(
    (id: string, opts: Opts) => set(import('./commands/sandbox.js').then((m) => m.getCommand(id, opts))),
  );

  addDataDir(
    sandbox
      .command('network')
      .description('change what a running sandbox may reach, live (deny wins; open connections the change refuses are cut)')
      .argument('<id>', 'sandbox id')
      .option('--allow-host <host>', 'the new allowlist (repeatable; replaces the old one)', collectAllowHost)
      .option('--deny-host <host>', 'the new denylist (repeatable; replaces the old one)', collectDenyHost)
      .option('--no-network', 'take the network away (empty allowlist)')
      .option('--bandwidth <rate>', 'cap each direction, e.g. 10m', (v: string) => parseBandwidth(v))
      .option('--json', 'print the updated sandbox record')
      .addHelpText('after', `
Examples:
  $ airlock sandbox network ID --allow-host pypi.org --allow-host files.pythonhosted.org
  $ airlock sandbox network ID --deny-host pypi.org      # cuts open connections to it
  $ airlock sandbox network ID --no-network`),
  ).action((id: string, opts: Opts) => set(import('./commands/sandbox.js').then((m) => m.networkCommand(id, opts as never))));

  addDataDir(sandbox.command('kill').description('destroy a sandbox and everything in it').argument('<id>', 'sandbox id'))
    .option('--json', 'print the final record as JSON')
    .action((id: string, opts: Opts) => set(import('./commands/sandbox.js').then((m) => m.killCommand(id, opts))));

  addDataDir(sandbox.command('pause').description('freeze every process of a sandbox: no CPU, memory/files/network kept; exec and files wait for resume').argument('<id>', 'sandbox id'))
    .option('--json', 'print the record as JSON')
    .action((id: string, opts: Opts) => set(import('./commands/sandbox.js').then((m) => m.pauseCommand(id, 'pause', opts))));

  addDataDir(sandbox.command('resume').description('thaw a paused sandbox').argument('<id>', 'sandbox id'))
    .option('--json', 'print the record as JSON')
    .action((id: string, opts: Opts) => set(import('./commands/sandbox.js').then((m) => m.pauseCommand(id, 'resume', opts))));

  addDataDir(
    sandbox
      .command('exec')
      .description('run a command in a running sandbox, streaming its output')
      .argument('<id>', 'sandbox id')
      .argument('<cmd...>', 'the command and its arguments (put them after --)')
      .option('--env <K=V>', 'environment variable for this command (repeatable)', collectEnv)
      .option('--cwd <dir>', 'working directory (default: the sandbox\'s workdir)', (v: string) => parseSandboxPath(v, '--cwd'))
      .option('--timeout <duration>', 'kill the command after this long (exit 124)', (v: string) => parseDurationSeconds(v, '--timeout'))
      .option('--background', 'start it and print its pid; see `sandbox ps` and `sandbox kill-process`')
      .option('--no-stdin', 'do not forward this command\'s stdin')
      .option('--json', 'print the result {exitCode, stdout, stderr, durationMs, reason} as JSON instead of streaming'),
  )
    .addHelpText('after', '\nExample:\n  $ airlock sandbox exec k3v9x2m4p7qa --cwd /work --env DEBUG=1 -- make test')
    .action((id: string, cmd: string[], opts: Opts) => set(import('./commands/sandbox.js').then((m) => m.execCommand(id, cmd, opts))));

  addDataDir(
    sandbox
      .command('shell')
      .description('open an interactive terminal in a running sandbox (bash if it has it, else sh)')
      .argument('<id>', 'sandbox id')
      .argument('[cmd...]', 'run this program on the terminal instead of the shell (put it after --)')
      .option('--cwd <dir>', 'working directory (default: the sandbox\'s workdir)', (v: string) => parseSandboxPath(v, '--cwd'))
      .option('--env <K=V>', 'environment variable for the session (repeatable)', collectEnv),
  )
    .addHelpText('after', `
Every key goes to the sandbox (^C interrupts the program there); the window size follows
yours. The session ends when its program exits; airlock exits with its status. Without a
terminal here (piped input), lines are typed in as they come and end of input is sent as ^D;
for data, use \`sandbox exec\` (no terminal in between).

Examples:
  $ airlock sandbox shell k3v9x2m4p7qa
  $ airlock sandbox shell k3v9x2m4p7qa --cwd /tmp -- python3
  $ echo 'uname -a; exit 3' | airlock sandbox shell k3v9x2m4p7qa   # exits 3`)
    .action((id: string, cmd: string[], opts: Opts) => set(import('./commands/shell.js').then((m) => m.shellCommand(id, cmd, opts))));

  addDataDir(sandbox.command('ps').description('list the processes running in a sandbox').argument('<id>', 'sandbox id'))
    .option('--json', 'print JSON')
    .option('--snapshot', 'also store the list as a process.snapshot event (evidence)')
    .action((id: string, opts: Opts) => set(import('./commands/sandbox.js').then((m) => m.psCommand(id, opts))));

  addDataDir(sandbox.command('history').description('a sandbox\'s timeline: lifecycle, commands, file activity, network refusals, alerts').argument('<id>', 'sandbox id'))
    .option('--json', 'print JSON')
    .option('--output', 'show each command\'s recorded output (first 4 KiB per stream)')
    .action((id: string, opts: Opts) => set(import('./commands/history.js').then((m) => m.historyCommand(id, opts))));

  addDataDir(
    sandbox
      .command('kill-process')
      .description('send a signal to a process in a sandbox')
      .argument('<id>', 'sandbox id')
      .argument('<pid>', 'process id inside the sandbox (from `sandbox ps`)', (v: string) => parsePositiveInt(v, 'PID'))
      .addOption(new Option('--signal <sig>', 'signal name or number').default(parseSignal('SIGTERM'), 'SIGTERM').argParser((v: string) => parseSignal(v))),
  ).action((id: string, pid: number, opts: Opts) =>
    set(import('./commands/sandbox.js').then((m) => m.killProcessCommand(id, pid, opts as never))),
  );

  const files = program.command('files').description('copy files into and out of a sandbox');

  addDataDir(
    files
      .command('put')
      .description('copy LOCAL (- for stdin) to REMOTE inside the sandbox')
      .argument('<id>', 'sandbox id')
      .argument('<local>', 'file on this machine, or - for stdin')
      .argument('<remote>', 'absolute path inside the sandbox')
      .option('--mode <octal>', 'file mode (default: the local file\'s, 0644 for stdin)', (v: string) => parseFileMode(v)),
  ).action((id: string, local: string, remote: string, opts: Opts) =>
    set(import('./commands/files.js').then((m) => m.putCommand(id, local, remote, opts))),
  );

  addDataDir(
    files
      .command('get')
      .description('copy REMOTE from the sandbox to LOCAL (- for stdout)')
      .argument('<id>', 'sandbox id')
      .argument('<remote>', 'absolute path inside the sandbox')
      .argument('<local>', 'file on this machine, or - for stdout'),
  ).action((id: string, remote: string, local: string, opts: Opts) =>
    set(import('./commands/files.js').then((m) => m.getCommand(id, remote, local, opts))),
  );

  addDataDir(
    files
      .command('ls')
      .description('list a directory inside the sandbox')
      .argument('<id>', 'sandbox id')
      .argument('<path>', 'absolute path inside the sandbox')
      .option('--json', 'print JSON'),
  ).action((id: string, path: string, opts: Opts) => set(import('./commands/files.js').then((m) => m.lsCommand(id, path, opts))));
  registerFileCommands(files, addDataDir, set);

  const template = program.command('template').description('root filesystems sandboxes start from');
  addDataDir(template.command('ls').description('list templates with digest, size and how many sandboxes use each').option('--json', 'print JSON')).action((opts: Opts) =>
    set(import('./commands/templates.js').then((m) => m.templateListCommand(opts))),
  );
  addDataDir(
    template
      .command('build')
      .description('build a template from a recipe (YAML): debootstrap or busybox, packages, files, run steps, env, workdir; unchanged layers are reused')
      .argument('<name>', 'template name (base and tiny have built-in recipes)')
      .option('--file <recipe.yaml>', 'the recipe; files it copies are read from its directory (default: the built-in recipe of NAME)')
      .option('--force', 'rebuild even when the recipe is unchanged')
      .option('--json', 'print the template as JSON (progress goes to stderr)')
      .addHelpText('after', '\nExample:\n  $ airlock template build py --file py.yaml   # py.yaml: packages: [python3-numpy]\n  $ airlock template build base'),
  ).action((name: string, opts: Opts) => set(import('./commands/templates.js').then((m) => m.templateBuildCommand(name, opts))));
  addDataDir(
    template
      .command('import')
      .description('import an OCI image layout or `docker save` tarball (layers applied in order, whiteouts honoured)')
      .argument('<name>', 'template name')
      .argument('<image.tar>', 'the tarball, plain or gzip')
      .option('--relativize-links', 'store absolute symlinks (e.g. /etc/localtime -> /usr/share/zoneinfo/UTC) as the equivalent relative links instead of refusing the image')
      .option('--json', 'print the template as JSON'),
  ).action((name: string, tarball: string, opts: Opts) => set(import('./commands/templates.js').then((m) => m.templateImportCommand(name, tarball, opts))));
  addDataDir(
    template
      .command('rm')
      .description('remove a template (refused while sandboxes use it); layers nothing else uses are deleted')
      .argument('<name>', 'template name'),
  ).action((name: string, opts: Opts) => set(import('./commands/templates.js').then((m) => m.templateRemoveCommand(name, opts))));

  const volume = program.command('volume').description('named volumes: storage with its own quota that outlives sandboxes');
  addDataDir(
    volume
      .command('create')
      .description('create a volume; attach it with --volume NAME:PATH[:rw] on run or sandbox create')
      .argument('<name>', 'volume name (lowercase letters, digits, . _ -)', (v: string) => parseVolumeName(v))
      .requiredOption('--size <size>', 'its quota, e.g. 1g, 500m', (v: string) => parseSizeMiB(v, '--size'))
      .option('--json', 'print the volume as JSON'),
  )
    .addHelpText('after', '\nExample:\n  $ airlock volume create results --size 1g\n  $ airlock run --volume results:/work/out:rw -- sh -c \'date > /work/out/when\'')
    .action((name: string, opts: Opts) => set(import('./commands/volumes.js').then((m) => m.volumeCreateCommand(name, opts as never))));
  addDataDir(volume.command('ls').description('list volumes with size, use and attachments').option('--json', 'print JSON')).action((opts: Opts) =>
    set(import('./commands/volumes.js').then((m) => m.volumeListCommand(opts))),
  );
  addDataDir(volume.command('get').description('print a volume as JSON').argument('<name>', 'volume name')).action((name: string, opts: Opts) =>
    set(import('./commands/volumes.js').then((m) => m.volumeGetCommand(name, opts))),
  );
  addDataDir(volume.command('rm').description('delete volumes and their data (refused while a sandbox has one attached)').argument('<name...>', 'volume names')).action(
    (names: string[], opts: Opts) => set(import('./commands/volumes.js').then((m) => m.volumeRemoveCommand(names, opts))),
  );

  registerTenantCommands(program, addDataDir, set);
  registerUsageCommand(program, addDataDir, set);
  registerSecretCommands(program, addDataDir, set);
  registerApprovalCommands(program, addDataDir, set);
  registerAuditCommands(program, addDataDir, set);

  program
    .command('doctor')
    .description('check this host: runtimes, cgroups, namespaces, nftables, KVM')
    .option('--data-dir <dir>', 'data dir to check', '/var/lib/airlock')
    .option('--json', 'print the checks as JSON')
    .action((opts: Opts) => set(import('./commands/doctor.js').then((m) => m.doctorCommand(opts as never))));

  return program;
}
