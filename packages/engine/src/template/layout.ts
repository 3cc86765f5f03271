import { join, resolve } from 'node:path';

/**
 * The templates directory (machine-wide, /var/lib/airlock/templates by default):
 *
 *   _layers/<hex>/rootfs        one immutable filesystem layer, named by its sha256 digest.
 *                               Files are owned by the sandbox id range (uid N on the host is
 *                               N - SANDBOX_ID_BASE inside). A layer built over its parents may
 *                               hold overlayfs whiteouts (char device 0:0) and opaque
 *                               directories (xattr trusted.overlay.opaque=y); only the builder
 *                               makes those, by running steps on an overlay mount.
 *   _layers/<hex>/layer.json    {digest, parent, step, sizeBytes, createdAt}
 *   <name>/template.json        {name, digest, layers: [hex, ...] topmost first, env, workdir,
 *                               user, entrypoint, cmd, source, createdAt, sizeBytes}
 *   _logs/<name>-<time>.log     build and import logs (the newest few per name are kept)
 *   _tmp/                       work in progress: builds, imports, claims, locks. Nothing in
 *                               here is ever read as a template; leftovers of a killed process
 *                               are removed by the next build.
 *
 * A sandbox stacks its template's layers (topmost first) as overlayfs lower directories under
 * its own writable layer, so creating one copies nothing. Names starting with `_` can never be
 * template names (TEMPLATE_NAME_RE), so the store's own directories cannot collide with one.
 * Older installations kept `<name>/rootfs` with no layers; such a template still resolves (as
 * one layer) until it is rebuilt.
 */
export const LAYERS_DIR = '_layers';
export const LOGS_DIR = '_logs';
export const TMP_DIR = '_tmp';
export const MANIFEST_FILE = 'template.json';
export const LAYER_META_FILE = 'layer.json';
export const ROOTFS_DIR = 'rootfs';

export const DIGEST_HEX_RE = /^[a-f0-9]{64}$/;

export class TemplateLayout {
  readonly root: string;

  constructor(root: string) {
    this.root = resolve(root);
  }

  get layersDir(): string {
    return join(this.root, LAYERS_DIR);
  }

  get logsDir(): string {
    return join(this.root, LOGS_DIR);
  }

  get tmpDir(): string {
    return join(this.root, TMP_DIR);
  }

  layerDir(hex: string): string {
    if (!DIGEST_HEX_RE.test(hex)) throw new Error(`not a layer digest: ${hex}`);
    return join(this.layersDir, hex);
  }

  layerRootfs(hex: string): string {
    return join(this.layerDir(hex), ROOTFS_DIR);
  }

  templateDir(name: string): string {
    return join(this.root, name);
  }

  manifestPath(name: string): string {
    return join(this.root, name, MANIFEST_FILE);
  }

  /** Rootfs of a template in the pre-layer layout. */
  legacyRootfs(name: string): string {
    return join(this.root, name, ROOTFS_DIR);
  }
}
